"""The application builder rejects configurations that cannot work, before anything is deployed."""
import pytest

from deployments.app import build_app


def test_unknown_app_args_are_named():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lmm'\]"):
        build_app({"lmm": {"backend": "echo"}})


def test_remote_pipeline_needs_passthrough_vc():
    with pytest.raises(ValueError, match="needs vc backend 'passthrough'"):
        build_app({"tts": {"backend": "remote-pipeline", "url": "ws://127.0.0.1:8765/ws/stream"}, "vc": {"backend": "world"}})


def test_bad_voice_settings_fail_at_build_time():
    with pytest.raises(ValueError, match="max_prompt_chars must be a positive integer"):
        build_app({"voice": {"max_prompt_chars": 0}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tokn'\]"):
        build_app({"voice": {"tokn": "x"}})
    with pytest.raises(ValueError, match=r"stage_transport must be one of \['direct', 'grpc', 'actor'\], got 'http'"):
        build_app({"voice": {"stage_transport": "http"}})
    with pytest.raises(ValueError, match=r"direct_port must be a port number \(0 = any free port\), got 70000"):
        build_app({"voice": {"direct_port": 70000}})
    with pytest.raises(ValueError, match=r"direct_voice must be true or false, got 'yes'"):
        build_app({"voice": {"direct_voice": "yes"}})
    for bad in (0, -1, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="session_prompt_timeout_s must be a positive number of seconds"):
            build_app({"voice": {"session_prompt_timeout_s": bad}})


def test_a_valid_config_builds_an_application():
    app = build_app({"llm": {"backend": "echo"}, "tts": {"backend": "espeak"}, "vc": {"backend": "passthrough"}})
    assert type(app).__name__ == "Application"


def test_the_builder_takes_exactly_the_args_dict_as_serve_run_requires():
    import inspect

    from deployments.app import CONFIG_DIR, load_serve_config

    assert list(inspect.signature(build_app).parameters) == ["args"]
    for name in ("local.yaml", "miku-box.yaml"):
        assert load_serve_config(CONFIG_DIR / name)["applications"][0]["import_path"] == "deployments.app:build_app"
