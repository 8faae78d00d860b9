"""`remote-pipeline` TTS backend: an existing Soprano->RVC service (`ws://HOST:8765/ws/stream`) that
stands in for the TTS and VC stages together, for users who keep that container.

Why: that service already converts to Miku's voice, so its audio is final: it yields 48 kHz float32
mono and the VC stage must be `passthrough` in this setup (configs say so; see docs/deploy.md).

Protocol (the service's, also served by this graph's own `/ws/stream`):
    -> {"token": str, "pitch_shift"?: int}     text to speak (sent once per chunk of text here)
    -> {"flush": true}                          speak what was sent
    <- binary: float32 little-endian mono samples at 48 kHz
    <- {"error": str}
    <- {"flushed": true, "samples": int}        end marker (this graph's server sends it; the
                                                original service may not: then `end_idle_s` of
                                                silence after the flush ends the utterance)

Every binary message is checked before it becomes audio: a byte count that is not a whole number
of float32 samples, NaN/inf or an absurd amplitude is a StageError naming the service, never noise.
The protocol carries no speaking rate, so `TTSOptions.speed` (a mood's rate) is applied here, as a
pitch-keeping WORLD time-stretch of the received audio (graph/backends/tts/stretch.py).
One connection per utterance at a time; an idle connection is kept for the next one, and any failure
or interrupt closes it (closing is how the service learns to stop).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from graph.backends.base import PROBE_TIMEOUT_S, TTSBackend
from graph.backends.pcm import BadAudio, decode_float32
from graph.backends.tts.stretch import stretch_stream
from graph.voice.types import AudioChunk, StageError, TTSOptions

REMOTE_SAMPLE_RATE = 48_000


class RemotePipelineTTS(TTSBackend):
    """Options: `url` (ws://HOST:8765/ws/stream), `pitch_shift` (semitones sent with each chunk, or
    None for the service's default), `timeout_s` (longest wait for the first/next audio), `end_idle_s`
    (silence after the flush that counts as the end when the service sends no end marker),
    `connect_timeout_s`, `sample_rate` (what the service sends; 48000)."""

    name = "remote-pipeline"

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765/ws/stream",
        pitch_shift: int | None = None,
        timeout_s: float = 15.0,
        end_idle_s: float = 1.0,
        connect_timeout_s: float = 5.0,
        sample_rate: int = REMOTE_SAMPLE_RATE,
        headers: dict[str, str] | None = None,
    ):
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"remote-pipeline: url must start with ws:// or wss://, got {url!r}")
        if pitch_shift is not None and (isinstance(pitch_shift, bool) or not -24 <= pitch_shift <= 24):
            raise ValueError(f"remote-pipeline: pitch_shift must be within -24..24 semitones, got {pitch_shift!r}")
        if timeout_s <= 0 or end_idle_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("remote-pipeline: timeouts must be positive")
        self.url = url
        self.pitch_shift = pitch_shift
        self.timeout_s = timeout_s
        self.end_idle_s = end_idle_s
        self.connect_timeout_s = connect_timeout_s
        self.sample_rate = int(sample_rate)
        self.headers = headers or {}
        self._idle: Any = None  # one open connection kept for the next utterance
        self.utterances = 0
        self.failures = 0

    @property
    def label(self) -> str:
        return f"{self.name} {self.url}"

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "url": self.url,
            "sample_rate": self.sample_rate,
            "pitch_shift": self.pitch_shift,
            "final_voice": True,  # the VC stage must be passthrough
            "utterances": self.utterances,
            "failures": self.failures,
        }

    async def probe(self) -> None:
        """A TCP connect to the service (a WebSocket session would start work there); refused or silent is down."""
        parsed = urlsplit(self.url)
        port = parsed.port or (443 if parsed.scheme == "wss" else 80)
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(parsed.hostname, port), PROBE_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise StageError("tts", self.label, f"the remote pipeline at {self.url} is down: {exc or type(exc).__name__}") from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _connect(self):
        idle, self._idle = self._idle, None
        if idle is not None and idle.state.name == "OPEN":
            return idle
        try:
            return await asyncio.wait_for(
                websockets.connect(self.url, additional_headers=self.headers, max_size=None, open_timeout=None),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self.failures += 1
            raise StageError("tts", self.label, f"cannot connect to the remote pipeline: {exc or type(exc).__name__}") from exc

    async def warmup(self) -> None:
        connection = await self._connect()
        self._idle = connection

    def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[AudioChunk]:
        # the service's protocol has no rate: a mood's rate is a pitch-keeping time-stretch of its final audio
        return stretch_stream(self._synthesize_native(text), options.speed)  # closing it closes the native stream

    async def _synthesize_native(self, text: str) -> AsyncIterator[AudioChunk]:
        text = text.strip()
        if not text:
            return
        connection = await self._connect()
        clean = False
        try:
            message: dict[str, Any] = {"token": text}
            if self.pitch_shift is not None:
                message["pitch_shift"] = int(self.pitch_shift)
            await connection.send(json.dumps(message))
            await connection.send(json.dumps({"flush": True}))
            received = 0
            while True:
                wait = self.timeout_s if received == 0 else max(self.end_idle_s, 0.0)
                try:
                    frame = await asyncio.wait_for(connection.recv(), wait)
                except TimeoutError:
                    if received == 0:
                        raise StageError("tts", self.label, f"no audio from the remote pipeline within {self.timeout_s:g} s") from None
                    # The original service sends no end marker: this much silence after audio ends it.
                    # The connection may still carry late audio, so it is not reused.
                    break
                if isinstance(frame, bytes):
                    try:
                        samples = decode_float32(frame)
                    except BadAudio as exc:
                        raise StageError("tts", self.label, f"refused audio from the remote pipeline: {exc}") from exc
                    if len(samples):
                        received += len(samples)
                        yield AudioChunk(np.clip(samples, -1.0, 1.0), self.sample_rate)
                    continue
                event = _parse_event(frame)
                if "error" in event:
                    raise StageError("tts", self.label, f"the remote pipeline failed: {event['error']}")
                if event.get("flushed"):
                    clean = True
                    break
            self.utterances += 1
        except ConnectionClosed as exc:
            self.failures += 1
            raise StageError("tts", self.label, f"the remote pipeline closed the connection mid-utterance ({exc})") from exc
        except StageError:
            self.failures += 1
            raise
        finally:
            if clean and self._idle is None:
                self._idle = connection
            else:
                await connection.close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None:
            await idle.close()


def _parse_event(frame: str) -> dict[str, Any]:
    try:
        event = json.loads(frame)
    except ValueError:
        return {"error": f"unreadable text message {frame[:80]!r}"}
    return event if isinstance(event, dict) else {"error": f"unexpected message {frame[:80]!r}"}
