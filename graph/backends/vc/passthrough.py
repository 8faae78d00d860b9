"""The `passthrough` VC backend: leaves the voice alone.

A real choice, not a test double: what you pick when the TTS voice is already the one you want (or the
remote pipeline did the conversion).
"""
from __future__ import annotations

from graph.backends.base import VCBackend
from graph.voice.types import AudioChunk, VCOptions, VCResult


class PassthroughVC(VCBackend):
    name = "passthrough"

    async def convert(self, chunk: AudioChunk, options: VCOptions, context: object | None) -> VCResult:
        return VCResult(chunk, None)
