"""`soprano-zmq` TTS backend: talk to a Soprano worker process (`python -m deployments.voice.soprano_worker`)
over ZeroMQ, the way the existing setup runs Soprano in its own process or container on port 5555.

Why a separate process: Soprano's CUDA context, its memory and any crash stay out of the graph's
replica; the worker can live in another container with its own CUDA build.

Protocol `miku-tts/1` (a DEALER client, one ROUTER worker; every message is multipart, frame 0 the
protocol tag, frame 1 the kind, frame 2 the request id chosen by the client, ASCII):

    client -> worker
      [tag, b"synth",  rid, json {"text": str, "options": {"voice": str|null, "speed": float}}]
      [tag, b"cancel", rid]                           stop that request (the worker stops its model)
      [tag, b"ping",   rid]
    worker -> client
      [tag, b"audio", rid, json {"seq": int, "sample_rate": int}, float32 little-endian mono samples]
      [tag, b"end",   rid, json {"chunks": int, "samples": int}]
      [tag, b"error", rid, json {"message": str}]     the request failed; nothing more comes for rid
      [tag, b"pong",  rid, json {"backend": {...describe()}, "sample_rate": int|null}]

Audio pieces are streamed as the model produces them (Soprano: 32 kHz; the header carries the rate
so a worker may host any TTS backend). Client side: the socket reconnects by itself (ZeroMQ); a
request fails with a StageError when the worker is not reachable, when it disconnects mid-utterance
(seen at once through a socket monitor), or when no message arrives for `timeout_s`; after any such
failure the socket is rebuilt so stale replies cannot leak into the next utterance. Audio that is not
finite float32 within [-2, 2] is refused, never played.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from graph.backends.base import PROBE_TIMEOUT_S, TTSBackend
from graph.backends.pcm import BadAudio, decode_float32
from graph.voice.types import AudioChunk, StageError, TTSOptions

log = logging.getLogger(__name__)

PROTOCOL = b"miku-tts/1"
SYNTH, CANCEL, PING = b"synth", b"cancel", b"ping"
AUDIO, END, ERROR, PONG = b"audio", b"end", b"error", b"pong"
# How long a dropped socket still tries to deliver what was queued on it (a just-sent cancel): with
# linger 0 ZeroMQ discards it, and a worker under load would keep synthesising for nobody.
CLOSE_LINGER_MS = 500


def encode(kind: bytes, request_id: str, *parts: bytes | dict) -> list[bytes]:
    """One protocol message: dict parts become JSON frames, bytes parts go as they are."""
    frames = [PROTOCOL, kind, request_id.encode("ascii")]
    for part in parts:
        frames.append(json.dumps(part).encode() if isinstance(part, dict) else part)
    return frames


def decode(frames: list[bytes]) -> tuple[bytes, str, list[bytes]]:
    """(kind, request id, remaining frames); ValueError for anything that is not this protocol."""
    if len(frames) < 3 or frames[0] != PROTOCOL:
        raise ValueError(f"not a {PROTOCOL.decode()} message ({len(frames)} frames)")
    return frames[1], frames[2].decode("ascii", errors="replace"), frames[3:]


class _Disconnected:
    """Put into every pending request's queue when the worker's connection drops."""


class SopranoZmqTTS(TTSBackend):
    """Client of the Soprano worker. Options: `url` (default tcp://127.0.0.1:5555), `timeout_s`
    (longest silence between two messages of one request, first audio included), `connect_timeout_s`
    (how long a request waits for the worker to be reachable)."""

    name = "soprano-zmq"

    def __init__(self, url: str = "tcp://127.0.0.1:5555", timeout_s: float = 10.0, connect_timeout_s: float = 3.0):
        if not url.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"soprano-zmq: url must be tcp://HOST:PORT or ipc://PATH, got {url!r}")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("soprano-zmq: timeouts must be positive")
        self.url = url
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._context = zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, asyncio.Queue] = {}
        self._connected: asyncio.Event | None = None  # created with the socket (bound to its loop)
        self.reconnects = 0
        self.failures = 0
        self.worker_info: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.name} {self.url}"

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "url": self.url,
            "connected": bool(self._connected is not None and self._connected.is_set()),
            "reconnects": self.reconnects,
            "failures": self.failures,
        }
        if self.worker_info:
            info["worker"] = self.worker_info
        return info

    # ------------------------------------------------------------------ socket lifecycle

    def _ensure_socket(self) -> zmq.asyncio.Socket:
        loop = asyncio.get_running_loop()
        if self._socket is not None and self._loop is loop:
            return self._socket
        if self._socket is not None:
            self._reset()  # built under another event loop
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue a request for a worker that is not there
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.url)
        self._socket, self._loop = sock, loop
        self._connected = asyncio.Event()
        self._tasks = [loop.create_task(self._read_replies(sock)), loop.create_task(self._watch(self._monitor))]
        return sock

    def _reset(self) -> None:
        """Drop the socket (and everything queued on it); the next request builds a fresh one."""
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._socket is not None:
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._socket.close(linger=CLOSE_LINGER_MS)
            self.reconnects += 1
        if self._monitor is not None:
            self._monitor.close(linger=0)
        self._socket = self._monitor = None
        self._fail_pending()

    def _fail_pending(self) -> None:
        for queue in self._pending.values():
            queue.put_nowait(_Disconnected())

    async def _read_replies(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            try:
                kind, rid, rest = decode(frames)
            except ValueError as exc:
                log.warning("soprano-zmq: ignoring a malformed message from %s: %s", self.url, exc)
                continue
            queue = self._pending.get(rid)
            if queue is not None:  # replies for requests we gave up on are dropped
                queue.put_nowait((kind, rest))

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            if event["event"] == zmq.EVENT_CONNECTED:
                self._connected.set()
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._connected.clear()
                self._fail_pending()

    async def _send(self, frames: list[bytes]) -> None:
        sock = self._ensure_socket()
        try:
            await asyncio.wait_for(self._connected.wait(), self.connect_timeout_s)
            await asyncio.wait_for(sock.send_multipart(frames), self.connect_timeout_s)
        except TimeoutError:
            self.failures += 1
            self._reset()
            raise StageError("tts", self.label, f"the Soprano worker at {self.url} is not reachable") from None

    # ------------------------------------------------------------------ requests

    async def _request(self, kind: bytes, payload: dict | None) -> tuple[str, asyncio.Queue]:
        rid = uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        self._pending[rid] = queue
        try:
            await self._send(encode(kind, rid, *([payload] if payload is not None else [])))
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return rid, queue

    async def _next(self, rid: str, queue: asyncio.Queue, what: str) -> tuple[bytes, list[bytes]]:
        try:
            item = await asyncio.wait_for(queue.get(), self.timeout_s)
        except TimeoutError:
            self.failures += 1
            self._cancel(rid)  # a slow (not dead) worker should stop working for nobody
            self._reset()
            raise StageError("tts", self.label, f"no {what} from the Soprano worker within {self.timeout_s:g} s") from None
        if isinstance(item, _Disconnected):
            self.failures += 1
            self._reset()
            raise StageError("tts", self.label, f"the Soprano worker at {self.url} is down: it went away mid-request")
        return item

    async def ping(self) -> dict[str, Any]:
        """Ask the worker what it hosts; raises StageError when it does not answer."""
        rid, queue = await self._request(PING, None)
        try:
            kind, rest = await self._next(rid, queue, "pong")
        finally:
            self._pending.pop(rid, None)
        if kind != PONG:
            raise StageError("tts", self.label, f"unexpected {kind!r} reply to ping")
        self.worker_info = json.loads(rest[0]) if rest else {}
        return self.worker_info

    async def warmup(self) -> None:
        await self.ping()

    async def probe(self) -> None:
        try:
            await asyncio.wait_for(self.ping(), PROBE_TIMEOUT_S)
        except TimeoutError:
            raise StageError("tts", self.label, f"the Soprano worker at {self.url} is down: no pong within {PROBE_TIMEOUT_S:g} s") from None

    async def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[AudioChunk]:
        text = text.strip()
        if not text:
            return
        body = {"text": text, "options": {"voice": options.voice, "speed": options.speed}}
        rid, queue = await self._request(SYNTH, body)
        finished = False
        expected_seq = 0
        try:
            while True:
                kind, rest = await self._next(rid, queue, "audio" if expected_seq == 0 else "further audio")
                if kind == AUDIO:
                    chunk = self._audio(rest, expected_seq)
                    expected_seq += 1
                    yield chunk
                elif kind == END:
                    finished = True
                    return
                elif kind == ERROR:
                    finished = True
                    message = json.loads(rest[0]).get("message", "unknown error") if rest else "unknown error"
                    raise StageError("tts", self.label, f"the Soprano worker failed: {message}")
                else:
                    raise StageError("tts", self.label, f"unexpected {kind!r} message from the worker")
        finally:
            self._pending.pop(rid, None)
            if not finished:
                self._cancel(rid)  # interrupt or failure: tell the worker to stop its model

    def _cancel(self, rid: str) -> None:
        """Best effort, never blocks: a worker that is gone needs no cancel."""
        if self._socket is None:
            return
        try:
            self._socket.send_multipart(encode(CANCEL, rid), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _audio(self, rest: list[bytes], expected_seq: int) -> AudioChunk:
        if len(rest) != 2:
            raise StageError("tts", self.label, f"audio message with {len(rest)} frames, expected header + samples")
        header = json.loads(rest[0])
        if header.get("seq") != expected_seq:
            raise StageError("tts", self.label, f"audio piece {header.get('seq')} arrived, expected {expected_seq}")
        rate = header.get("sample_rate")
        if not isinstance(rate, int) or not 8000 <= rate <= 192_000:
            raise StageError("tts", self.label, f"implausible sample_rate {rate!r} in an audio header")
        try:
            samples = decode_float32(rest[1])
        except BadAudio as exc:
            raise StageError("tts", self.label, f"refused audio from the worker: {exc}") from exc
        return AudioChunk(np.clip(samples, -1.0, 1.0), rate)

    async def aclose(self) -> None:
        self._reset()
