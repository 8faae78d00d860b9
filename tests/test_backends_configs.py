"""The two-GPU box's Serve config, the cluster launcher file and the Grafana dashboard are consistent
with the code: same application as configs/local.yaml, every model stage pinned to its card with the
right device variable, fractions that fit, backend options the backend classes accept, a cluster file
Ray's launcher validates, and dashboard queries that name metrics the code really exports."""
from __future__ import annotations

import importlib
import inspect
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from deployments.app import deployment_options_of, placement_problems
from graph.backends.base import BACKENDS

ROOT = Path(__file__).resolve().parents[1]
BOX = yaml.safe_load((ROOT / "configs" / "miku-box.yaml").read_text())
LOCAL = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
BOX_APP, LOCAL_APP = BOX["applications"][0], LOCAL["applications"][0]
OPTIONS = deployment_options_of(BOX_APP)


def test_same_application_and_deployments_as_local_yaml():
    assert BOX_APP["import_path"] == LOCAL_APP["import_path"] == "deployments.app:build_app"
    assert BOX_APP["name"] == LOCAL_APP["name"]
    assert set(BOX_APP["args"]) >= {"llm", "tts", "vc", "image", "vision"}
    assert {d["name"] for d in BOX_APP["deployments"]} == {d["name"] for d in LOCAL_APP["deployments"]}


@pytest.mark.parametrize(
    "name, resource, visible, hidden",
    [
        ("SopranoTTS", "gtx1660", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"),
        ("ImageGen", "gtx1660", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"),
        ("Vision", "gtx1660", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"),
        ("RVCVoice", "rx6800", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"),
        ("TextLLM", "rx6800", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"),
        ("SpeechToText", "rx6800", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"),
    ],
)
def test_model_stages_are_pinned_to_their_card(name, resource, visible, hidden):
    actor = OPTIONS[name]["ray_actor_options"]
    assert set(actor["resources"]) == {resource}
    env = actor["runtime_env"]["env_vars"]
    assert env[visible] == "0" and env[hidden] == ""
    assert "num_gpus" not in actor  # Ray's GPU count is 0 on the box; custom resources place


def test_fractions_and_cpus_fit_the_box():
    used = defaultdict(float)
    for name, options in OPTIONS.items():
        actor = options["ray_actor_options"]
        assert "num_cpus" in actor, f"{name} must set num_cpus (replicas default to one CPU each)"
        for resource, amount in (actor.get("resources") or {}).items():
            used[resource] += amount * options.get("num_replicas", 1)
    assert used == {"gtx1660": 1.0, "rx6800": 1.0}
    assert placement_problems(OPTIONS, {"CPU": 8, "gtx1660": 1, "rx6800": 1}) == []
    missing = placement_problems(OPTIONS, {"CPU": 8, "gtx1660": 1})
    assert len(missing) == 3 and all("rx6800" in p for p in missing)  # TextLLM, RVCVoice, SpeechToText
    assert any(p.startswith("RVCVoice") for p in missing) and any(p.startswith("TextLLM") for p in missing)


@pytest.mark.parametrize("stage", ["llm", "tts", "vc"])
def test_stage_options_are_accepted_by_the_backend_class(stage):
    config = dict(BOX_APP["args"][stage])
    module_name, class_name = BACKENDS[stage][config.pop("backend")].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    parameters = inspect.signature(cls.__init__).parameters
    unknown = set(config) - set(parameters)
    assert not unknown, f"{class_name} does not take {sorted(unknown)}"


def test_cluster_yaml_is_valid_for_ray_up_and_starts_the_box_with_both_cards():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    head = " ".join(config["head_start_ray_commands"])
    assert "--head" in head and "--num-gpus=0" in head
    assert """--resources='{"gtx1660": 1, "rx6800": 1}'""" in head
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in worker and "--resources=" in worker


def exported_metric_names() -> set[str]:
    """What Prometheus shows for the metrics the code defines (Ray adds `ray_`; counters get
    `_total`, histograms `_bucket/_sum/_count`; checked live in test_backends_telemetry.py)."""
    names = set()
    for path in (ROOT / "deployments" / "metrics.py", ROOT / "deployments" / "telemetry.py"):
        for kind, name in re.findall(r"metrics\.(Histogram|Counter|Gauge)\(\s*\"([a-z_]+)\"", path.read_text()):
            base = f"ray_{name}"
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if kind == "Histogram" else {f"{base}_total"} if kind == "Counter" else {base}
    return names


def test_dashboard_queries_name_exported_metrics():
    dashboard = json.loads((ROOT / "configs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bray_miku_[a-z_]+", e)}
    known = exported_metric_names()
    assert used <= known, f"dashboard uses metrics nobody exports: {sorted(used - known)}"
    for required in (
        "ray_miku_time_to_first_audio_ms_bucket",
        "ray_miku_stage_latency_ms_bucket",
        "ray_miku_underruns_total",
        "ray_miku_frames_sent_total",
        "ray_miku_stage_errors_total",
        "ray_miku_gpu_vram_used_bytes",
        "ray_miku_client_buffer_ms",
        "ray_miku_llm_tokens_per_second_bucket",
        "ray_miku_stage_cpu_percent",
        "ray_miku_stage_lost_total",
    ):
        assert required in used
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
