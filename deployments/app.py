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
from deployments.media.stages import ImageGen, Vision
from deployments.voice.ingress import VoiceGraph
from deployments.voice.stages import RVCVoice, SopranoTTS, SpeechToText, TextLLM
from graph.admin.config import AdminConfig
from graph.listen.config import ListenConfig
from graph.voice.config import VoiceConfig

DEPLOYMENTS = {
    "TextLLM": TextLLM,
    "SopranoTTS": SopranoTTS,
    "RVCVoice": RVCVoice,
    "SpeechToText": SpeechToText,
    "Brain": Brain,
    "VoiceGraph": VoiceGraph,
    "ImageGen": ImageGen,
    "Vision": Vision,
}
# image/vision are optional: without them the graph has no ImageGen/Vision deployment (their routes say so)
APP_ARGS = ("llm", "tts", "vc", "voice", "controller", "brain", "image", "vision", "admin", "stt", "listen")
# Serve's proxy forwards HTTP/WebSocket traffic to the ingress over gRPC instead of Ray actor calls
# (about 10 ms less time to first audio here, docs/performance.md). Serve reads this when the proxy
# starts, so it belongs in the environment of whatever starts Ray: `ray start`, `miku serve`, tests.
# WEBSOCKETS_MAX_LINE_LENGTH / WEBSOCKETS_MAX_NUM_HEADERS: when a WebSocket upgrade breaks websockets'
# own limits (a header line over 8 KiB, more than 128 headers), Serve's proxy (uvicorn's sans-io
# websockets protocol) never answers: the handshake hangs until the client leaves. uvicorn has already
# buffered the whole request by then (it puts no bound on HTTP headers either), so these limits only
# decide whether the request reaches the ingress, which refuses more than 16 KiB of headers at once
# (deployments/http_guard.py). They are set past anything a client can usefully send; the direct voice
# port sets its own, tight ones (deployments/voice/voice_port.py).
PROXY_ENV = {
    "RAY_SERVE_PROXY_USE_GRPC": "1",
    "WEBSOCKETS_MAX_LINE_LENGTH": str(2**30),
    "WEBSOCKETS_MAX_NUM_HEADERS": str(2**20),
}
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BUILDER_IMPORT_PATH = "deployments.app:build_app"


def build_app(args: dict[str, Any]) -> Application:
    """The builder `serve run configs/*.yaml` calls (Serve requires exactly one parameter).

    Serve applies the config's `deployments:` placement after the builder returns, and a replica whose
    resource no node has waits forever without a word. So the builder looks up the config being
    deployed (the Serve controller has it) and fails the deployment, naming the deployment, the missing
    resource and the `ray start` line, when the cluster cannot place it."""
    app = compose_app(args)
    options = deployment_options_of(_config_being_deployed(args) or {})
    if options:
        import ray

        problems = placement_problems(options, ray.cluster_resources())
        if problems:
            raise placement_error(options, problems)
    return app


def _config_being_deployed(args: dict[str, Any]) -> dict[str, Any] | None:
    """The application config (with its `deployments:` list) that Serve is building with these args."""
    import ray

    if not ray.is_initialized():
        return None  # built outside Serve (a test, a script): deploy_config() checks placement itself
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        details = client.get_serve_details() if client is not None else {}
    except Exception:  # no controller to ask: Serve itself is not deploying anything
        return None
    for app in (details.get("applications") or {}).values():
        config = app.get("deployed_app_config") or {}
        if config.get("import_path") == BUILDER_IMPORT_PATH and (config.get("args") or {}) == (args or {}):
            return config
    return None


def compose_app(args: dict[str, Any], deployment_options: dict[str, dict] | None = None) -> Application:
    """Compose the graph. `deployment_options` (name -> options) mirrors a config file's `deployments:`."""
    args = dict(args or {})
    options = deployment_options or {}
    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise ValueError(f"app args: unknown key(s) {unknown}; expected {', '.join(APP_ARGS)}")
    VoiceConfig.from_dict(args.get("voice"))  # fail at build time, not in a replica
    AdminConfig.from_dict(args.get("admin"))
    ListenConfig.from_dict(args.get("listen"))
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
    # how the brain and the GPU tenants find the session controller actor
    controller_ref = {"name": controller.get("actor_name", "FeatureController"), "namespace": "miku"}
    brain = deployment("Brain").bind(
        config=args.get("brain"),
        llm=llm,  # the brain writes its text replies with the same TextLLM deployment
        controller=controller_ref,
    )
    media = {}
    if args.get("image"):
        media["image"] = deployment("ImageGen").bind(args["image"], controller_ref)
    if args.get("vision"):
        media["vision"] = deployment("Vision").bind(args["vision"], controller_ref)
    stt = deployment("SpeechToText").bind(args.get("stt") or {"backend": "pocketsphinx"})
    return deployment("VoiceGraph").bind(llm, tts, vc, args.get("voice") or {}, controller, brain,
                                         admin=args.get("admin") or {}, stt=stt, listen=args.get("listen") or {},
                                         **media)


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


RAY_BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


def ray_start_line(resources: list[str]) -> str:
    """The `ray start` command that gives a one-machine Ray these custom resources."""
    declared = ", ".join(f'"{name}": 1' for name in resources)
    return f"RAY_AUTH_MODE=token ray start --head --num-gpus=0 --resources='{{{declared}}}'"


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
                problems.append(f"{name} needs {resource}={amount:g} but the cluster has {have:g}")
    return problems


def placement_error(deployment_options: dict[str, dict], problems: list[str]) -> PlacementError:
    """One line (Ray folds similar log lines together): what is missing, then how to start Ray."""
    custom = sorted({resource for options in deployment_options.values()
                     for resource in ((options.get("ray_actor_options") or {}).get("resources") or {})
                     if resource not in RAY_BUILTIN_RESOURCES})
    return PlacementError(
        f"cannot place the graph: {'; '.join(problems)}. Start Ray with those resources: "
        f"`{ray_start_line(custom)}` (scripts/start-local-ray.sh does that on loopback only), "
        "or add a node that has them."
    )


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
        raise placement_error(options, problems)
    http = config.get("http_options") or {}
    serve.start(http_options={"host": http.get("host", "127.0.0.1"), "port": http.get("port", 8000)})
    return serve.run(
        compose_app(args, options),
        name=app_name or app_config.get("name", "miku"),
        route_prefix=route_prefix if route_prefix is not None else app_config.get("route_prefix", "/"),
    )
