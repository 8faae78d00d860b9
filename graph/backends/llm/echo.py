"""The `echo` LLM backend: speaks the prompt as given.

A real choice, not a test double: it turns the graph into a plain TTS service (`miku say`, `type: say`).
"""
from __future__ import annotations

import re
from collections.abc import AsyncIterator

from graph.backends.base import LLMBackend
from graph.voice.types import LLMRequest

_WORDS = re.compile(r"\s*\S+")


class EchoLLM(LLMBackend):
    name = "echo"

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        # word-sized tokens, as a model would send them, so segmentation behaves the same
        for match in _WORDS.finditer(request.prompt):
            yield match.group(0)
