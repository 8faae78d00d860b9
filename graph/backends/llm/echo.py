"""The two trivial backends: `echo` speaks the prompt as given, `passthrough` leaves the voice alone.

They are real choices, not test doubles: `echo` turns the graph into a plain TTS service and
`passthrough` is what you pick when the TTS voice is already the one you want (or the remote pipeline
did the conversion).
"""
from __future__ import annotations

import re
from collections.abc import AsyncIterator

from graph.backends.base import LLMBackend, VCBackend
from graph.types import AudioChunk, LLMRequest, VCOptions, VCResult

_WORDS = re.compile(r"\s*\S+")


class EchoLLM(LLMBackend):
    name = "echo"

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        # word-sized tokens, as a model would send them, so segmentation behaves the same
        for match in _WORDS.finditer(request.prompt):
            yield match.group(0)


class PassthroughVC(VCBackend):
    name = "passthrough"

    async def convert(self, chunk: AudioChunk, options: VCOptions, context: object | None) -> VCResult:
        return VCResult(chunk, None)
