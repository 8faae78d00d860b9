"""`openai-transcriptions` STT: `POST /v1/audio/transcriptions`, as speaches, faster-whisper-server and
whisper.cpp's server offer. The turn goes up as a 16 kHz mono WAV in a multipart form; the answer is
`{"text": ...}` (response_format json)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp
import numpy as np

from graph.backends.base import PROBE_TIMEOUT_S, STTBackend
from graph.backends.http import HTTPStreamClient, http_url
from graph.listen.audio_in import to_pcm16
from graph.listen.types import LISTEN_SAMPLE_RATE, STTOptions, Transcript, as_float_audio
from graph.voice.audio import wav_bytes
from graph.voice.types import StageError

MAX_ANSWER_BYTES = 256 * 1024  # a turn's transcript is a few hundred bytes


@dataclass(frozen=True, kw_only=True)
class OpenAITranscriptionsOptions:
    url: str
    model: str = "whisper-1"
    api_key: str | None = None
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    prompt: str | None = "Miku"


class OpenAITranscriptionsSTT(STTBackend):
    name = "openai-transcriptions"

    def __init__(self, **options):
        self.options = OpenAITranscriptionsOptions(**options)
        base = http_url(self.options.url, "openai-transcriptions")
        self.endpoint = f"{base}/audio/transcriptions" if base.endswith("/v1") else f"{base}/v1/audio/transcriptions"
        self.http = HTTPStreamClient(self.options.timeout_s, self.options.connect_timeout_s)

    @property
    def label(self) -> str:
        return f"{self.name} {self.endpoint}"

    def describe(self) -> dict:
        return {"backend": self.name, "url": self.endpoint, "model": self.options.model}

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}

    async def probe(self) -> None:
        root = self.endpoint.removesuffix("/v1/audio/transcriptions").removesuffix("/audio/transcriptions")
        await self.http.probe("stt", self.label, root or self.endpoint, PROBE_TIMEOUT_S, self._headers())

    async def transcribe(self, audio: np.ndarray, options: STTOptions) -> Transcript:
        samples = as_float_audio(audio)
        started = time.perf_counter()
        form = aiohttp.FormData()
        form.add_field("file", wav_bytes(to_pcm16(samples).tobytes(), LISTEN_SAMPLE_RATE, 1),
                       filename="turn.wav", content_type="audio/wav")
        form.add_field("model", self.options.model)
        form.add_field("response_format", "json")
        if options.language:
            form.add_field("language", options.language)
        if self.options.prompt:
            form.add_field("prompt", self.options.prompt)
        session = self.http._session
        if session is None or session.closed:
            session = self.http._session = aiohttp.ClientSession(timeout=self.http.timeout)
        try:
            async with session.post(self.endpoint, data=form, headers=self._headers()) as response:
                body = await response.content.read(MAX_ANSWER_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise StageError("stt", self.label, f"cannot reach the transcription server: {error or type(error).__name__}") from error
        if status != 200:
            raise StageError("stt", self.label, f"HTTP {status}: {body[:300].decode(errors='replace').strip()}")
        if len(body) > MAX_ANSWER_BYTES:
            raise StageError("stt", self.label, f"answer over {MAX_ANSWER_BYTES} bytes")
        try:
            import json

            text = json.loads(body)["text"]
            if not isinstance(text, str):
                raise TypeError("text is not a string")
        except (ValueError, KeyError, TypeError) as error:
            raise StageError("stt", self.label, f"not a transcription answer ({error}): {body[:200]!r}") from None
        return Transcript(text=" ".join(text.split()), backend=self.name, audio_s=len(samples) / LISTEN_SAMPLE_RATE,
                          compute_s=time.perf_counter() - started)

    async def aclose(self) -> None:
        await self.http.aclose()
