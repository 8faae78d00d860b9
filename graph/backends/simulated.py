"""Backends that take the time real models take, without the models: for benchmarks and load tests.

`simulated` LLM/TTS/VC follow configurable timings (first token after 250 ms then 40 tokens/s; TTS first
audio after 60 ms then a real-time factor of 0.1; VC 25 ms a chunk by default) and produce real audio
(a voiced tone), so the rest of the graph - segmentation, resampling, framing, Serve hops - does its real
work. The sleep function is injected so the same code runs on a virtual clock.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np

from graph.backends.base import LLMBackend, TTSBackend, VCBackend
from graph.voice.types import AudioChunk, LLMRequest, TTSOptions, VCOptions, VCResult

Sleep = Callable[[float], Awaitable[None]]

# A typical chat-model answer: the first sentence runs on for a while before its full stop.
DEFAULT_REPLY = (
    "Oh, that's such a fun question, and honestly I could talk about music all day long because it's "
    "my favourite thing in the whole world! Did you know that I love singing, especially with all of my "
    "friends? We could practise a new song together, or just chat for a while. What would you like to do?"
)
SHORT_OPENING_REPLY = (
    "Hi there! I'm Miku, and I'm so happy you came to talk to me today. "
    "We could practise a new song together, or just chat for a while. What would you like to do?"
)


class SimulatedLLM(LLMBackend):
    name = "simulated"

    def __init__(
        self,
        first_token_s: float = 0.25,
        tokens_per_s: float = 40.0,
        reply: str = DEFAULT_REPLY,
        sleep: Sleep = asyncio.sleep,
    ):
        self.first_token_s = first_token_s
        self.tokens_per_s = tokens_per_s
        self.reply = reply
        self.sleep = sleep

    def describe(self) -> dict:
        return {"backend": self.name, "first_token_s": self.first_token_s, "tokens_per_s": self.tokens_per_s}

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        tokens = re.findall(r"\s*\S+", self.reply)
        await self.sleep(self.first_token_s)
        for i, token in enumerate(tokens):
            if i:
                await self.sleep(1.0 / self.tokens_per_s)
            yield token


class SimulatedTTS(TTSBackend):
    name = "simulated"

    def __init__(
        self,
        first_audio_s: float = 0.06,
        real_time_factor: float = 0.1,
        sample_rate: int = 32_000,
        chars_per_second: float = 14.0,
        piece_s: float = 0.5,
        sleep: Sleep = asyncio.sleep,
    ):
        self.first_audio_s = first_audio_s
        self.real_time_factor = real_time_factor
        self.sample_rate = sample_rate
        self.chars_per_second = chars_per_second
        self.piece_s = piece_s
        self.sleep = sleep

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "first_audio_s": self.first_audio_s,
            "real_time_factor": self.real_time_factor,
            "sample_rate": self.sample_rate,
        }

    async def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[AudioChunk]:
        total_s = max(0.2, len(text) / self.chars_per_second)
        n_total = int(total_s * self.sample_rate)
        t = np.arange(n_total, dtype=np.float32) / self.sample_rate
        audio = (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
        step = int(self.piece_s * self.sample_rate)
        await self.sleep(self.first_audio_s)
        for i, start in enumerate(range(0, n_total, step)):
            piece = audio[start : start + step]
            if i:
                await self.sleep(len(piece) / self.sample_rate * self.real_time_factor)
            yield AudioChunk(piece, self.sample_rate)


class SimulatedVC(VCBackend):
    name = "simulated"

    def __init__(self, latency_s: float = 0.025, sleep: Sleep = asyncio.sleep):
        self.latency_s = latency_s
        self.sleep = sleep

    def describe(self) -> dict:
        return {"backend": self.name, "latency_s": self.latency_s}

    async def convert(self, chunk: AudioChunk, options: VCOptions, context: object | None) -> VCResult:
        await self.sleep(self.latency_s)
        return VCResult(chunk, None)
