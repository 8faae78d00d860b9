"""`miku`: run the voice graph from a terminal.

    miku say "TEXT" --out FILE.wav            speak verbatim
    miku chat "PROMPT" --llm-url URL --out FILE.wav
    miku serve                                keep the graph running for clients
    miku admin set-password [--user NAME]     set an admin panel password (argon2 hash, 0600 file)
    miku transcribe FILE.wav [--stt BACKEND] [--json]   the listening stages on a recording

It connects to a running Ray cluster (RAY_ADDRESS, or one started with `ray start`) or starts a local one
with the two GPU resources declared, deploys the graph from a Serve config, and writes the exact bytes the
graph would send to Discord (48 kHz s16le stereo, 20 ms frames) as a WAV file.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"
LOCAL_RESOURCES = {"gtx1660": 1, "rx6800": 1}


class Progress:
    def __init__(self, quiet: bool = False):
        self.started = time.monotonic()
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.started:5.1f}s] {message}", file=sys.stderr, flush=True)


def ray_start_cluster_address() -> str | None:
    """The address of a cluster that `ray start` started on this machine, if one is recorded."""
    from ray._private.services import find_bootstrap_address

    return find_bootstrap_address(None)


def prepare_to_attach(address: str) -> None:
    """Before ray.init(address): send the token when one is configured, and keep a loopback address
    as it is (on Linux Ray would swap 127.0.0.1 for the external address, where a loopback-only Ray
    does not listen)."""
    from deployments.local_ray import keep_ray_on_loopback

    use_ray_token_if_available()
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        keep_ray_on_loopback()


def use_ray_token_if_available() -> None:
    """Attaching to a cluster: send Ray's token when one is configured (RAY_AUTH_TOKEN, its file)."""
    from deployments.local_ray import use_token_if_available

    use_token_if_available()


def connect_ray(address: str | None, progress: Progress, dashboard: bool = False) -> bool:
    """Connect to a cluster, or start a local one. True when this process started it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        progress(f"Connecting to Ray at {address} ...")
        prepare_to_attach(address)
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        return False
    started_by_ray_start = ray_start_cluster_address()
    if started_by_ray_start:
        # only a cluster from `ray start` (Ray records its address), never another program's ray.init()
        try:
            prepare_to_attach(started_by_ray_start)
            ray.init(address=started_by_ray_start, logging_level="ERROR", log_to_driver=False)
            progress(f"Connected to the running Ray cluster at {started_by_ray_start}.")
            return False
        except (ConnectionError, RuntimeError) as error:
            progress(f"The Ray cluster at {started_by_ray_start} does not answer ({error}); starting a local one.")
    progress("Starting a local Ray (about 5 s) with resources gtx1660 and rx6800 ...")
    from deployments.app import PROXY_ENV
    from deployments.local_ray import start_local_ray

    for key, value in PROXY_ENV.items():
        os.environ.setdefault(key, value)  # inherited by the Serve proxy this Ray will start
    token = start_local_ray(  # loopback only, Ray token auth on (deployments/local_ray.py)
        resources=dict(LOCAL_RESOURCES),
        include_dashboard=dashboard,
        logging_level="ERROR",
        log_to_driver=False,
    )
    context = ray.get_runtime_context()
    from ray._private.worker import get_dashboard_url

    dashboard_url = get_dashboard_url() if dashboard else None
    progress(f"Ray listens on 127.0.0.1 only (GCS {context.gcs_address}"
             + (f", dashboard http://{dashboard_url}" if dashboard_url else "")
             + f"); its token (for `ray`, `serve`, the dashboard) is in {token.describe()}.")
    return True


def deploy(config: Path, overrides: dict, progress: Progress, app_name: str):
    import logging

    from deployments.app import deploy_config

    # the progress lines say what happens; Serve's INFO lines (router objects, namespaces) only add noise
    logging.getLogger("ray.serve").setLevel(logging.WARNING)

    progress(f"Deploying the graph from {config} (the voice stages, speech-to-text, the brain, the ingress) ...")
    handle = deploy_config(config, app_name=app_name, route_prefix=None if app_name != "miku" else "/", overrides=overrides)
    progress("Graph is up.")
    return handle


def speak(handle, message: dict, progress: Progress) -> tuple[bytes, dict | None, list[dict]]:
    pcm = bytearray()
    end = None
    errors = []
    for item in handle.options(stream=True).speak.remote(message):
        if isinstance(item, bytes):
            pcm.extend(item)
            continue
        kind = item.get("type")
        if kind == "chunk":
            progress(f"  speaking: {item['text']}")
        elif kind == "error":
            errors.append(item)
            progress(f"  error from {item.get('stage')} ({item.get('backend', '-')}): {item['message']}")
        elif kind == "utterance.end":
            end = item
    return bytes(pcm), end, errors


def play(path: Path) -> None:
    for player in (["paplay"], ["aplay", "-q"], ["play", "-q"]):
        if shutil.which(player[0]):
            result = subprocess.run([*player, str(path)], capture_output=True, text=True)
            if result.returncode == 0:
                return
            print(f"{player[0]} could not play it: {result.stderr.strip()[:200]}", file=sys.stderr)
            return
    print("No audio player (paplay, aplay or play) found: open the WAV file in any player.", file=sys.stderr)


def run_utterance(args, message: dict, overrides: dict) -> int:
    from graph.voice.audio import write_wav

    progress = Progress(args.quiet)
    started_ray = connect_ray(args.address, progress)
    from ray import serve

    try:
        app_name = "miku"
        existing = None
        if not started_ray and not overrides:
            try:
                existing = serve.get_app_handle("miku")
                progress("Using the graph that is already running (app 'miku').")
            except Exception:
                existing = None
        if existing is None and not started_ray:
            app_name = "miku-cli"  # never replace a running graph with different settings
        handle = existing or deploy(Path(args.config), overrides, progress, app_name)
        pcm, end, errors = speak(handle, message, progress)
        if errors and not pcm:
            return 1
        out = write_wav(Path(args.out), pcm)
        seconds = len(pcm) / (48_000 * 4)
        timings = (end or {}).get("timings", {})
        progress(
            f"Wrote {out} ({seconds:.2f} s of 48 kHz stereo, {len(pcm) // 3840} frames; "
            f"first audio after {timings.get('first_frame', float('nan')):.0f} ms)."
        )
        print(f"Listen with: aplay {out}   (or open it in any audio player)")
        if args.play:
            play(out)
        return 1 if errors else 0
    finally:
        if started_ray:
            shut_down(app_name, progress)


def shut_down(app_name: str, progress: Progress) -> None:
    """Stop the graph and the Ray this process started, quietly.

    `serve.shutdown()` asks the Serve controller to shut down, and the controller ends by killing
    itself: Ray then reports the driver's pending calls to it as "Task ServeController.graceful_shutdown
    failed ... killed by `ray.kill`" - alarming, and harmless. Deleting the application instead tears
    every replica down through its own teardown (links, backends, worker subprocesses), and
    `ray.shutdown()` then stops the controller and the proxy with the rest of Ray after this driver has
    disconnected, so nothing is left to report."""
    import ray
    from ray import serve

    progress("Stopping the graph and Ray ...")
    try:
        serve.delete(app_name)
    except Exception as error:  # a graph that failed to deploy: nothing to delete, Ray still stops
        progress(f"  (the graph was not running: {error})")
    ray.shutdown()


def cmd_serve(args) -> int:
    from deployments.app import load_serve_config
    from deployments.auth import resolve_token

    progress = Progress(args.quiet)
    started_ray = connect_ray(args.address, progress, dashboard=True)
    config = load_serve_config(args.config)
    http = config.get("http_options") or {}
    token_file = ((config["applications"][0].get("args") or {}).get("voice") or {}).get("token_file", ".miku/token")
    try:
        deploy(Path(args.config), {}, progress, "miku")
        resolve_token(None, token_file)  # the ingress created it already; this only reads it
        progress(f"Serving on http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)} "
                 f"(bearer token: MIKU_GRAPH_TOKEN or {token_file}; admin panel at /admin/, password "
                 "with `miku admin set-password`). Ctrl-C stops.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if started_ray:
            shut_down("miku", progress)


def cmd_transcribe(args) -> int:
    """VAD, STT and voice-command detection on a recording: the ListenSession WS /v1/listen runs, in
    process with the STT backend of the config (or --stt), so no Ray is needed."""
    import asyncio
    import json

    from deployments.app import load_serve_config
    from graph.backends.base import create_backend
    from graph.listen.audio_in import load_wav_16k
    from graph.listen.config import ListenConfig
    from graph.listen.recording import transcribe_recording

    progress = Progress(args.quiet or args.json)
    app_args = load_serve_config(args.config)["applications"][0].get("args") or {}
    stt = dict(app_args.get("stt") or {"backend": "pocketsphinx"})
    if args.stt and args.stt != stt.get("backend"):
        stt = {"backend": args.stt}
    for option in args.stt_option or []:
        key, _, value = option.partition("=")
        if not key or not _:
            print(f"--stt-option takes KEY=VALUE, got {option!r}", file=sys.stderr)
            return 2
        stt[key] = json.loads(value) if value[:1] in "[{0123456789-" or value in ("true", "false") else value
    try:
        samples = load_wav_16k(args.file)
    except (OSError, ValueError) as error:
        print(f"cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    progress(f"Listening to {args.file} ({len(samples) / 16000:.1f} s) with {stt['backend']} ...")
    try:
        backend = create_backend("stt", stt)
    except (ValueError, ImportError, FileNotFoundError, TypeError) as error:
        print(f"cannot load the {stt['backend']} backend: {error}", file=sys.stderr)
        return 2

    async def run():
        try:
            return await transcribe_recording(samples, backend, ListenConfig.from_dict(app_args.get("listen")))
        finally:
            await backend.aclose()

    result = asyncio.run(run())
    for index, turn in enumerate(result.turns, 1):
        command = f"   [command: {turn['command']}]" if turn["command"] else ""
        print(f"turn {index}: {turn['text'] or '(no words)'}{command}")
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    if not result.turns:
        print("(no speech found)")
    if args.json:
        print(json.dumps(result.as_json()))
    return 1 if result.errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="miku", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config file (default: configs/local.yaml)")
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS, a running cluster, or a new local one)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    sub = parser.add_subparsers(dest="command", required=True)

    say = sub.add_parser("say", help="speak TEXT verbatim into a WAV file")
    say.add_argument("text")
    say.add_argument("--out", required=True)
    say.add_argument("--play", action="store_true", help="play the file afterwards where a sound device exists")

    chat = sub.add_parser("chat", help="ask the LLM and speak its answer into a WAV file")
    chat.add_argument("prompt")
    chat.add_argument("--llm-url", required=True, help="OpenAI-compatible server, e.g. http://127.0.0.1:8080")
    chat.add_argument("--model", help="model name (llama-swap routes by it)")
    chat.add_argument("--llm-backend", choices=["openai", "llamacpp"], default="openai")
    chat.add_argument("--out", required=True)
    chat.add_argument("--play", action="store_true")

    sub.add_parser("serve", help="deploy the graph and keep it running")
    from deployments.admin import cli as admin_cli

    admin_cli.add_parser(sub)

    transcribe = sub.add_parser("transcribe", help="VAD, speech-to-text and voice commands on a WAV recording")
    transcribe.add_argument("file")
    transcribe.add_argument("--stt", help="STT backend (default: the config's stt, pocketsphinx in local.yaml)")
    transcribe.add_argument("--stt-option", action="append", metavar="KEY=VALUE",
                            help="a backend option, e.g. model_path=/models/stt/whisper-ct2 (repeatable)")
    transcribe.add_argument("--json", action="store_true", help="last line: one JSON object with text and commands")
    args = parser.parse_args(argv)

    if args.command == "admin":
        return admin_cli.run(args)

    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "transcribe":
        return cmd_transcribe(args)
    request_id = f"cli-{uuid.uuid4().hex[:8]}"
    if args.command == "say":
        return run_utterance(args, {"type": "say", "id": request_id, "text": args.text}, {})
    llm = {"backend": args.llm_backend, "url": args.llm_url}
    if args.model and args.llm_backend == "openai":
        llm["model"] = args.model
    return run_utterance(args, {"type": "prompt", "id": request_id, "text": args.prompt}, {"llm": llm})


if __name__ == "__main__":
    sys.exit(main())
