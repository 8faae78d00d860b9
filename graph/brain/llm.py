"""Adapters that turn the project's LLM backends into the brain's injected `complete(prompt, system)`.

The brain only needs whole answers (judges, plans, replies), so the adapter joins a backend's token
stream. Keeping this adapter here means the brain itself never depends on a concrete LLM client.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from graph.backends.base import LLMBackend
from graph.voice.types import LLMRequest

Complete = Callable[[str, str | None], Awaitable[str]]


def complete_from_backend(backend: LLMBackend, *, max_tokens: int = 256, temperature: float = 0.8) -> Complete:
    """`complete(prompt, system)` that streams from `backend` and returns the joined text."""

    async def complete(prompt: str, system: str | None) -> str:
        request = LLMRequest(prompt=prompt, system=system, max_tokens=max_tokens, temperature=temperature)
        parts = [token async for token in backend.stream(request)]
        return "".join(parts).strip()

    return complete
