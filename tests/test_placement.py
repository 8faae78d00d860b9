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
