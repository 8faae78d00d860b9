"""The Soprano worker process: hosts a TTS backend behind a ZeroMQ ROUTER socket for `soprano-zmq`.

    python -m deployments.voice.soprano_worker --port 5555 --model-path /models/soprano-1.1-80m --device cuda
    python -m deployments.voice.soprano_worker --port 5555 --backend espeak     # model-free, for testing

Why it exists: the existing setup runs Soprano in its own process/container on port 5555; this is
that process, speaking the `miku-tts/1` protocol documented in `graph/backends/tts/soprano_zmq.py`. It
hosts any `TTSBackend` from the registry (Soprano by default), loads and warms it before binding, so
a client that can connect can be served at once. No Ray here: it is a plain process.

Each `synth` request runs as its own task; `cancel` (or the client going away) cancels the task,
which closes the backend's stream and so stops the model. SIGTERM/SIGINT stop it cleanly.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from graph.backends import create_backend
from graph.backends.base import TTSBackend
from graph.backends.tts.soprano_zmq import (
    AUDIO,
    CANCEL,
    END,
    ERROR,
    PING,
    PONG,
    SYNTH,
    decode,
    encode,
)
from graph.voice.types import StageError, TTSOptions

log = logging.getLogger("soprano_worker")


class SopranoWorker:
    """Serve one TTS backend on a ROUTER socket. `run()` until `stop()`."""

    def __init__(self, backend: TTSBackend, bind: str):
        self.backend = backend
        self.bind = bind
        self._context = zmq.asyncio.Context()
        self._socket: zmq.asyncio.Socket | None = None
        self._requests: dict[tuple[bytes, str], asyncio.Task] = {}
        self._send_lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        self.served = 0

    async def run(self) -> None:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished client raises instead of vanishing
        sock.bind(self.bind)
        self._socket = sock
        log.info("serving %s on %s", self.backend.describe(), self.bind)
        print(f"ready {self.bind}", flush=True)  # supervisors and tests wait for this line
        receiver = asyncio.create_task(self._receive(sock))
        await self._stopped.wait()
        receiver.cancel()
        for task in list(self._requests.values()):
            task.cancel()
        await asyncio.gather(receiver, *self._requests.values(), return_exceptions=True)
        sock.close(linger=0)
        self._context.term()

    def stop(self) -> None:
        self._stopped.set()

    async def _receive(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            identity, *frames = await sock.recv_multipart()
            try:
                kind, rid, rest = decode(frames)
            except ValueError as exc:
                log.warning("ignoring a malformed message: %s", exc)
                continue
            key = (identity, rid)
            if kind == SYNTH:
                if key in self._requests:
                    await self._send(identity, encode(ERROR, rid, {"message": "duplicate request id"}))
                    continue
                task = asyncio.create_task(self._synthesize(identity, rid, rest))
                self._requests[key] = task
                task.add_done_callback(lambda _t, key=key: self._requests.pop(key, None))
            elif kind == CANCEL:
                task = self._requests.get(key)
                if task is not None:
                    task.cancel()
            elif kind == PING:
                info = {
                    "backend": self.backend.describe(),
                    "sample_rate": getattr(self.backend, "sample_rate", None),
                    "active_requests": len(self._requests),
                    "served": self.served,
                }
                await self._send(identity, encode(PONG, rid, info))
            else:
                await self._send(identity, encode(ERROR, rid, {"message": f"unknown request kind {kind!r}"}))

    async def _send(self, identity: bytes, frames: list[bytes]) -> bool:
        async with self._send_lock:
            try:
                await self._socket.send_multipart([identity, *frames])
                return True
            except zmq.ZMQError as exc:  # EHOSTUNREACH: that client is gone
                log.info("client went away: %s", exc)
                return False

    async def _synthesize(self, identity: bytes, rid: str, rest: list[bytes]) -> None:
        try:
            body = json.loads(rest[0]) if rest else {}
            text = body.get("text")
            if not isinstance(text, str):
                raise ValueError("'text' must be a string")
            raw = body.get("options") or {}
            options = TTSOptions(voice=raw.get("voice"), speed=float(raw.get("speed", 1.0)))
        except (ValueError, TypeError, AttributeError) as exc:
            await self._send(identity, encode(ERROR, rid, {"message": f"bad request: {exc}"}))
            return
        seq = samples = 0
        stream = self.backend.synthesize(text, options)
        try:
            async for chunk in stream:
                pcm = np.ascontiguousarray(chunk.samples, dtype="<f4").tobytes()
                header = {"seq": seq, "sample_rate": chunk.sample_rate}
                if not await self._send(identity, encode(AUDIO, rid, header, pcm)):
                    return  # the client is gone: closing the stream stops the model
                seq += 1
                samples += len(chunk.samples)
            await self._send(identity, encode(END, rid, {"chunks": seq, "samples": samples}))
            self.served += 1
        except asyncio.CancelledError:
            raise
        except StageError as exc:
            await self._send(identity, encode(ERROR, rid, {"message": exc.message}))
        except Exception as exc:  # noqa: BLE001 - the client hears about any failure
            log.exception("synthesis failed")
            await self._send(identity, encode(ERROR, rid, {"message": f"{type(exc).__name__}: {exc}"}))
        finally:
            await stream.aclose()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deployments.voice.soprano_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5555)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 inside a container)")
    parser.add_argument("--backend", default="soprano", help="TTS backend to host (default soprano)")
    parser.add_argument("--model-path", help="Soprano model directory (config.json, weights, tokenizer, decoder.pth)")
    parser.add_argument("--device", default=None, help="soprano device: cuda, cpu, mps, auto")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="extra backend option (JSON value or plain string), repeatable",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def backend_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {"backend": args.backend}
    if args.model_path:
        config["model_path"] = args.model_path
    if args.device:
        config["device"] = args.device
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option needs KEY=VALUE, got {item!r}")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    if args.backend == "soprano" and "model_path" not in config:
        raise SystemExit("the soprano backend needs --model-path (a local model directory; nothing is downloaded)")
    return config


async def serve(args: argparse.Namespace) -> None:
    backend = create_backend("tts", backend_config(args))
    await backend.warmup()
    worker = SopranoWorker(backend, f"tcp://{args.host}:{args.port}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await backend.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(serve(args))
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"soprano_worker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
