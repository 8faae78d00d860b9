"""`openai-speech` TTS backend: `POST {url}/v1/audio/speech`, the OpenAI speech API that Soprano's own
server (`soprano.server`) and many other TTS servers speak.

Why: it lets the graph use a TTS server someone already runs, on any machine. The response body is
decoded while it downloads (servers that stream their WAV/PCM give early audio; servers that answer
all at once still work). `response_format` "wav" (16/24/32-bit integer or 32-bit float, any channel
count, mixed to mono) or "pcm" (raw s16le mono at `sample_rate`, OpenAI's 24 kHz by default).
Bad bytes (a truncated sample, NaN, absurd amplitude, a non-WAV body) become a StageError that names
the server; they are never played.
"""
from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from graph.backends.base import PROBE_TIMEOUT_S, TTSBackend
from graph.backends.http import (
    HTTPStreamClient,
    end_response,
    http_url,
    raise_for_status,
)
from graph.backends.pcm import BadAudio, check_samples
from graph.backends.tts.stretch import stretch_stream
from graph.voice.types import AudioChunk, StageError, TTSOptions

_FORMAT_PCM, _FORMAT_FLOAT, _FORMAT_EXTENSIBLE = 1, 3, 0xFFFE
RATE_CONTROLS = ("server", "stretch")


@dataclass(frozen=True)
class WavFormat:
    sample_rate: int
    channels: int
    bits: int
    is_float: bool

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits // 8

    def decode(self, data: bytes) -> np.ndarray:
        """Whole frames of interleaved samples -> float32 mono."""
        if self.is_float:
            samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        elif self.bits == 16:
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        elif self.bits == 32:
            samples = (np.frombuffer(data, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
        else:  # 24-bit
            b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            samples = (np.where(value & 0x800000, value - (1 << 24), value) / float(1 << 23)).astype(np.float32)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        return samples


class WavStreamParser:
    """Incremental WAV reader: `feed(bytes)` returns decoded samples as soon as whole frames are in.

    Streaming servers often write an unknown data length (0 or 0xFFFFFFFF); the data then runs to the
    end of the body.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.format: WavFormat | None = None
        self._in_data = False

    def feed(self, data: bytes) -> np.ndarray:
        self._buffer += data
        if not self._in_data:
            self._parse_header()
            if not self._in_data:
                return np.zeros(0, np.float32)
        usable = len(self._buffer) - len(self._buffer) % self.format.frame_bytes
        frames, self._buffer = self._buffer[:usable], self._buffer[usable:]
        return self.format.decode(frames)

    def close(self) -> None:
        if not self._in_data:
            raise BadAudio("the body ended before the WAV data started (not a WAV file?)")
        if self._buffer:
            raise BadAudio(f"the WAV data ends with {len(self._buffer)} stray bytes (truncated sample)")

    def _parse_header(self) -> None:
        buf = self._buffer
        if len(buf) < 12:
            return
        if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
            raise BadAudio(f"not a WAV body (starts with {buf[:12]!r})")
        pos = 12
        while len(buf) >= pos + 8:
            chunk_id, size = buf[pos : pos + 4], struct.unpack("<I", buf[pos + 4 : pos + 8])[0]
            if chunk_id == b"data":
                if self.format is None:
                    raise BadAudio("WAV data chunk before its fmt chunk")
                self._buffer = buf[pos + 8 :]
                self._in_data = True
                return
            if len(buf) < pos + 8 + size:
                return  # wait for the rest of this chunk
            if chunk_id == b"fmt ":
                self.format = _parse_fmt(buf[pos + 8 : pos + 8 + size])
            pos += 8 + size + (size & 1)


def _parse_fmt(body: bytes) -> WavFormat:
    if len(body) < 16:
        raise BadAudio("WAV fmt chunk too short")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _FORMAT_EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the real tag
    if tag == _FORMAT_FLOAT and bits == 32:
        is_float = True
    elif tag == _FORMAT_PCM and bits in (16, 24, 32):
        is_float = False
    else:
        raise BadAudio(f"unsupported WAV encoding (format tag {tag}, {bits} bits)")
    if channels < 1 or not 8000 <= rate <= 192_000:
        raise BadAudio(f"implausible WAV format: {channels} channels at {rate} Hz")
    return WavFormat(rate, channels, bits, is_float)


class OpenAISpeechTTS(TTSBackend):
    """Options: `url` (server root, e.g. http://127.0.0.1:8001), `model`, `voice`, `response_format`
    ("wav" or "pcm"), `sample_rate` (pcm only), `api_key`, `timeout_s` (longest wait for bytes),
    `piece_ms` (how much audio to gather before yielding a piece), `rate_control` (how a speaking rate
    other than 1.0 is applied: "server" sends the API's `speed` field; "stretch" time-stretches the
    received audio here, keeping its pitch, for servers that ignore `speed` as soprano-tts's own does)."""

    name = "openai-speech"

    def __init__(
        self,
        url: str,
        model: str = "soprano",
        voice: str | None = None,
        response_format: str = "wav",
        sample_rate: int = 24_000,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        piece_ms: float = 100.0,
        rate_control: str = "server",
    ):
        base = http_url(url, "openai-speech")
        if rate_control not in RATE_CONTROLS:
            raise ValueError(f"openai-speech: rate_control must be one of {', '.join(RATE_CONTROLS)}, got {rate_control!r}")
        self.rate_control = rate_control
        if response_format not in ("wav", "pcm"):
            raise ValueError(f"openai-speech: response_format must be 'wav' or 'pcm', got {response_format!r}")
        self.endpoint = f"{base}/audio/speech" if base.endswith("/v1") else f"{base}/v1/audio/speech"
        self.model = model
        self.voice = voice
        self.response_format = response_format
        self.pcm_rate = int(sample_rate)
        self.api_key = api_key
        self.piece_ms = piece_ms
        self.http = HTTPStreamClient(timeout_s, connect_timeout_s)
        self.sample_rate: int | None = self.pcm_rate if response_format == "pcm" else None

    @property
    def label(self) -> str:
        return f"{self.name} {self.endpoint}"

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "url": self.endpoint,
            "model": self.model,
            "voice": self.voice,
            "response_format": self.response_format,
            "sample_rate": self.sample_rate,
            "rate_control": self.rate_control,
        }

    async def warmup(self) -> None:
        async for _ in self.synthesize("Ready.", TTSOptions()):
            pass

    async def probe(self) -> None:
        # the server's root: cheap, and answered by any HTTP server that is up (no synthesis)
        root = self.endpoint.removesuffix("/v1/audio/speech").removesuffix("/audio/speech")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        await self.http.probe("tts", self.label, root or self.endpoint, PROBE_TIMEOUT_S, headers)

    def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[AudioChunk]:
        if self.rate_control == "server":
            native = self._synthesize_native(text, options.voice, options.speed)
            stretch = 1.0
        else:
            native = self._synthesize_native(text, options.voice, 1.0)
            stretch = options.speed
        return stretch_stream(native, stretch)  # closing it closes the native stream

    async def _synthesize_native(self, text: str, voice: str | None, speed: float) -> AsyncIterator[AudioChunk]:
        text = text.strip()
        if not text:
            return
        body: dict[str, Any] = {"model": self.model, "input": text, "response_format": self.response_format}
        voice = voice or self.voice
        if voice:
            body["voice"] = voice
        if speed != 1.0:
            body["speed"] = speed  # OpenAI's field: 0.25..4.0, 1.0 = normal
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        response = await self.http.post("tts", self.label, self.endpoint, body, headers, "cannot reach the speech server")
        finished = False
        try:
            await raise_for_status(response, "tts", self.label)
            async for chunk in self._decode(response):
                yield chunk
            finished = True
        except BadAudio as exc:
            raise StageError("tts", self.label, f"refused the server's audio: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StageError("tts", self.label, f"the audio stream broke: {exc or type(exc).__name__}") from exc
        finally:
            end_response(response, finished)

    async def _decode(self, response: aiohttp.ClientResponse) -> AsyncIterator[AudioChunk]:
        wav = WavStreamParser() if self.response_format == "wav" else None
        pending: list[np.ndarray] = []
        pending_samples = 0
        leftover = b""
        async for data in response.content.iter_any():
            if wav is not None:
                samples = wav.feed(data)
                rate = wav.format.sample_rate if wav.format else None
            else:
                data = leftover + data
                usable = len(data) - len(data) % 2
                leftover = data[usable:]
                samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
                rate = self.pcm_rate
            if not len(samples):
                continue
            check_samples(samples)
            self.sample_rate = rate
            pending.append(samples)
            pending_samples += len(samples)
            if pending_samples >= rate * self.piece_ms / 1000:
                yield AudioChunk(np.concatenate(pending), rate)
                pending, pending_samples = [], 0
        if wav is not None:
            wav.close()
        elif leftover:
            raise BadAudio("the PCM body ends with a stray byte (truncated 16-bit sample)")
        if pending:
            yield AudioChunk(np.concatenate(pending), self.sample_rate)

    async def aclose(self) -> None:
        await self.http.aclose()
