"""What a vision backend implements: answer a chat turn that carries images, in the persona's voice."""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from graph.backends.base import Backend


@dataclass(frozen=True, kw_only=True)
class VisionRequest:
    system: str
    history: tuple[tuple[str, str], ...] = ()
    text: str
    images: tuple[bytes, ...]  # JPEG frames (graph.media.frames)
    max_tokens: int = 300
    temperature: float = 0.7

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("a vision request needs at least one image")


class VisionBackend(Backend):
    stage = "vision"

    @property
    def label(self) -> str:
        return self.name

    @abstractmethod
    async def answer(self, request: VisionRequest) -> str:
        """The model's whole answer; MediaError (stage "vision") when it fails."""

    async def release(self) -> str:
        return "nothing to release"

    async def restore(self) -> str:
        return "nothing to restore"
