"""Placement: every deployment is pinned through custom resources, and a missing resource is reported by
deployment name instead of leaving `serve.run` waiting forever."""
import copy

import pytest
import yaml

from deployments.app import (
    CONFIG_DIR,
    PlacementError,
    deploy_config,
    deployment_options_of,
    load_serve_config,
    placement_problems,
)


def test_local_config_pins_each_model_stage_to_its_gpu_resource():
    options = deployment_options_of(load_serve_config(CONFIG_DIR / "local.yaml")["applications"][0])
    assert "gtx1660" in options["SopranoTTS"]["ray_actor_options"]["resources"]
    assert "rx6800" in options["RVCVoice"]["ray_actor_options"]["resources"]
    assert "rx6800" in options["TextLLM"]["ray_actor_options"]["resources"]
    assert all(o["ray_actor_options"]["num_cpus"] == 0 for o in options.values())


def test_problems_name_the_deployment_and_the_resource():
    options = {"SopranoTTS": {"ray_actor_options": {"resources": {"gtx1660": 0.5}}},
               "RVCVoice": {"ray_actor_options": {"resources": {"rx6800": 0.2}}}}
    problems = placement_problems(options, {"CPU": 2.0, "rx6800": 1.0})
    assert len(problems) == 1 and problems[0].startswith("SopranoTTS needs gtx1660=0.5 but the cluster has 0")
    assert placement_problems(options, {"gtx1660": 1.0, "rx6800": 1.0}) == []


def test_unknown_deployment_in_config_is_an_error():
    with pytest.raises(ValueError, match="unknown deployment 'Nope'"):
        deployment_options_of({"deployments": [{"name": "Nope"}]})


def test_deploying_where_a_resource_is_missing_fails_fast_with_the_deployment_named(ray_cluster, tmp_path):
    config = load_serve_config(CONFIG_DIR / "local.yaml")
    broken = copy.deepcopy(config)
    for entry in broken["applications"][0]["deployments"]:
        if entry["name"] == "SopranoTTS":
            entry["ray_actor_options"]["resources"] = {"gtx3090": 1}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(PlacementError, match="SopranoTTS needs gtx3090=1 but the cluster has 0"):
        deploy_config(path, app_name="never", route_prefix="/never")


def test_serve_run_on_a_ray_without_the_resources_names_what_is_missing(tmp_path):
    """`serve run configs/local.yaml` on a plain Ray: the build fails with the deployment, the resource and
    the `ray start` line, instead of Serve waiting forever for a node that has gtx1660."""
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    config = load_serve_config(CONFIG_DIR / "local.yaml")
    config["applications"][0]["args"]["controller"] = {"state_dir": str(tmp_path / "controller")}
    config["applications"][0]["args"]["brain"] = {"memory_path": str(tmp_path / "brain.sqlite3")}
    config["http_options"]["port"] = __import__("tests.conftest", fromlist=["free_port"]).free_port()
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).with_name("serve")
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_ADDRESS": ""}
    process = subprocess.Popen([str(serve_cli), "run", "--address", "local", str(path)], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    try:
        line = ""
        while "cannot place the graph" not in line:
            line = lines.get(timeout=240)  # generous: Ray and the build task start on a loaded box
            assert line is not None, "serve run ended without naming what is missing:\n" + "".join(seen)[-4000:]
            seen.append(line)
        for missing in ("SopranoTTS needs gtx1660=0.5 but the cluster has 0", "RVCVoice needs rx6800=0.2",
                        "TextLLM needs rx6800=0.1"):
            assert missing in line, line
        assert "`RAY_AUTH_MODE=token ray start --head --num-gpus=0 --resources='{\"gtx1660\": 1, \"rx6800\": 1}'`" in line
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # serve run shuts Serve and its Ray down on Ctrl-C
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
