"""The application builder: `serve run configs/local.yaml` (or `miku serve`) calls `build_app(args)`.

`args` is the `applications[].args` mapping of a Serve config file:

    llm: {backend: ...}   tts: {backend: ...}   vc: {backend: ...}   voice: {...}

Placement (custom resources, CPUs, device env vars) lives in the same file's `deployments:` list, which
`serve run` applies natively. `deploy_config()` applies that list the same way for the CLI and the tests
and checks first that the cluster has every resource a deployment asks for, so a missing GPU resource
is reported by name instead of leaving `serve.run` waiting forever.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from ray import serve
from ray.serve import Application

from deployments.brain.deployment import Brain
from deployments.voice.ingress import VoiceGraph
from deployments.voice.stages import RVCVoice, SopranoTTS, TextLLM
from graph.voice.config import VoiceConfig

DEPLOYMENTS = {
    "TextLLM": TextLLM,
    "SopranoTTS": SopranoTTS,
    "RVCVoice": RVCVoice,
    "Brain": Brain,
    "VoiceGraph": VoiceGraph,
}
APP_ARGS = ("llm", "tts", "vc", "voice", "controller", "brain")
# Serve's proxy forwards HTTP/WebSocket traffic to the ingress over gRPC instead of Ray actor calls
# (about 10 ms less time to first audio here, docs/performance.md). Serve reads this when the proxy
# starts, so it belongs in the environment of whatever starts Ray: `ray start`, `miku serve`, tests.
# WEBSOCKETS_MAX_LINE_LENGTH: over websockets' default (8 KiB) a header line makes Serve's proxy hang
# the WebSocket handshake (uvicorn never sends the 431); with 1 MiB it reaches the ingress, which
# refuses oversized headers at once (deployments/http_guard.py)
PROXY_ENV = {"RAY_SERVE_PROXY_USE_GRPC": "1", "WEBSOCKETS_MAX_LINE_LENGTH": str(2**20)}
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def build_app(args: dict[str, Any]) -> Application:
    """The builder `serve run configs/*.yaml` calls (Serve requires exactly one parameter)."""
    return compose_app(args)


def compose_app(args: dict[str, Any], deployment_options: dict[str, dict] | None = None) -> Application:
    """Compose the graph. `deployment_options` (name -> options) mirrors a config file's `deployments:`."""
    args = dict(args or {})
    options = deployment_options or {}
    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise ValueError(f"app args: unknown key(s) {unknown}; expected {', '.join(APP_ARGS)}")
    VoiceConfig.from_dict(args.get("voice"))  # fail at build time, not in a replica
    tts_backend = (args.get("tts") or {}).get("backend")
    vc_backend = (args.get("vc") or {}).get("backend")
    if tts_backend == "remote-pipeline" and vc_backend != "passthrough":
        # the remote Soprano->RVC service already converted the voice: converting again would garble it
        raise ValueError(f"tts backend 'remote-pipeline' needs vc backend 'passthrough', got {vc_backend!r}")

    def deployment(name: str):
        return DEPLOYMENTS[name].options(**options[name]) if name in options else DEPLOYMENTS[name]

    llm = deployment("TextLLM").bind(args.get("llm") or {"backend": "echo"})
    tts = deployment("SopranoTTS").bind(args.get("tts") or {"backend": "espeak"})
    vc = deployment("RVCVoice").bind(args.get("vc") or {"backend": "world"})
    controller = dict(args.get("controller") or {})
    brain = deployment("Brain").bind(
        config=args.get("brain"),
        llm=llm,  # the brain writes its text replies with the same TextLLM deployment
        controller={"name": controller.get("actor_name", "FeatureController"), "namespace": "miku"},
    )
    return deployment("VoiceGraph").bind(llm, tts, vc, args.get("voice") or {}, controller, brain)


def load_serve_config(path: str | Path) -> dict[str, Any]:
    with open(path) as handle:
        config = yaml.safe_load(handle)
    if not isinstance(config, dict) or not config.get("applications"):
        raise ValueError(f"{path}: not a Serve config (no 'applications' list)")
    return config


def deployment_options_of(app_config: dict[str, Any]) -> dict[str, dict]:
    """A Serve config application's `deployments:` list as options for `Deployment.options()`."""
    result = {}
    for entry in app_config.get("deployments") or []:
        entry = copy.deepcopy(entry)
        name = entry.pop("name")
        if name not in DEPLOYMENTS:
            raise ValueError(f"deployments: unknown deployment {name!r}; expected one of {sorted(DEPLOYMENTS)}")
        result[name] = entry
    return result


class PlacementError(RuntimeError):
    pass


def placement_problems(deployment_options: dict[str, dict], cluster_resources: dict[str, float]) -> list[str]:
    """Which deployments cannot be placed on this cluster, and why (empty when all fit)."""
    problems = []
    for name, options in sorted(deployment_options.items()):
        actor = options.get("ray_actor_options") or {}
        wanted = dict(actor.get("resources") or {})
        if actor.get("num_gpus"):
            wanted["GPU"] = actor["num_gpus"]
        for resource, amount in sorted(wanted.items()):
            have = cluster_resources.get(resource, 0.0)
            if have < amount:
                problems.append(
                    f"{name} needs {resource}={amount:g} but the cluster has {have:g}: start Ray with "
                    f"`ray start --head --num-gpus=0 --resources='{{\"gtx1660\": 1, \"rx6800\": 1}}'` "
                    f"(or add a node that has {resource})"
                )
    return problems


def deploy_config(
    path: str | Path,
    app_name: str | None = None,
    route_prefix: str | None = None,
    overrides: dict[str, Any] | None = None,
    blocking_timeout_s: float = 120.0,
):
    """Deploy the application of a Serve config file on the connected Ray, as `serve run` would.

    Returns the ingress handle. Raises PlacementError naming each deployment that cannot be placed.
    """
    import ray

    config = load_serve_config(path)
    app_config = config["applications"][0]
    args = copy.deepcopy(app_config.get("args") or {})
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(args.get(key), dict):
            args[key] = {**args[key], **value} if "backend" not in value else dict(value)
        else:
            args[key] = value
    options = deployment_options_of(app_config)
    problems = placement_problems(options, ray.cluster_resources())
    if problems:
        raise PlacementError("cannot place the graph:\n  " + "\n  ".join(problems))
    http = config.get("http_options") or {}
    serve.start(http_options={"host": http.get("host", "127.0.0.1"), "port": http.get("port", 8000)})
    return serve.run(
        compose_app(args, options),
        name=app_name or app_config.get("name", "miku"),
        route_prefix=route_prefix if route_prefix is not None else app_config.get("route_prefix", "/"),
    )
