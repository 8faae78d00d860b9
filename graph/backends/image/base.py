"""What every image-generation backend implements, the values it takes and yields, and its errors.

A backend gets one `ImageRequest` (prompt with the persona's style already in it, size, steps, seed: all
bounded by `graph.media.drawing`) and yields `ImageProgress` while it works and one `GeneratedImage` at the
end. Failures are `MediaError`s whose `kind` says what failed in the words the user sees: the backend is
unreachable (with its URL), it timed out, its safety filter refused, it returned something that is not an
image. `release()` frees the GPU (a voice session needs the card), `restore()` loads the model again.
"""
from __future__ import annotations

import asyncio
import enum
from abc import abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from graph.backends.base import Backend
from graph.media.images import BadImage, ImageLimits, to_png
from graph.voice.types import StageError


class MediaErrorKind(enum.Enum):
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    REFUSED = "refused"  # the backend's safety filter
    NSFW_CHANNEL = "nsfw_channel"
    BAD_REQUEST = "bad_request"  # the prompt or options (too long, bad size...)
    BAD_INPUT = "bad_input"  # what a user posted for vision (not an image, too big, a bomb...)
    BAD_OUTPUT = "bad_output"  # the backend answered with something that is not what it should be
    BLOCKED = "blocked"  # a voice session holds the GPU
    FAILED = "failed"  # anything else the backend reported


class MediaError(StageError):
    """A StageError with a kind. `stage` is "image" or "vision"; `message` is shown to the user as is."""

    def __init__(self, stage: str, backend: str, message: str, kind: MediaErrorKind = MediaErrorKind.FAILED):
        super().__init__(stage, backend, message)
        self.kind = MediaErrorKind(kind)

    def __reduce__(self):
        return (type(self), (self.stage, self.backend, self.message, self.kind))


@dataclass(frozen=True, kw_only=True)
class ImageRequest:
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    seed: int = 0
    guidance: float = 7.0

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("an image request needs a prompt")
        if self.width <= 0 or self.height <= 0 or self.steps <= 0:
            raise ValueError("width, height and steps must be positive")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in 0..2**32-1, got {self.seed}")


@dataclass(frozen=True)
class ImageProgress:
    """How far the drawing is: `fraction` 0..1 when the backend knows, and a line for the user."""

    message: str
    fraction: float | None = None


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes
    seed: int
    prompt: str
    width: int
    height: int
    backend: str


OUTPUT_LIMITS = ImageLimits(max_bytes=40 * 2**20, max_pixels=16_000_000)


def checked_output(stage: str, label: str, data: bytes, request: ImageRequest, seed: int | None = None) -> GeneratedImage:
    """The backend's bytes as a PNG GeneratedImage, or a MediaError when they are not an image."""
    try:
        png, width, height = to_png(data, OUTPUT_LIMITS)
    except BadImage as error:
        raise MediaError(stage, label, f"{label} returned something that is not an image: {error}",
                         MediaErrorKind.BAD_OUTPUT) from None
    return GeneratedImage(png=png, seed=request.seed if seed is None else seed, prompt=request.prompt,
                          width=width, height=height, backend=label)


async def checked_output_off_loop(stage: str, label: str, data: bytes, request: ImageRequest,
                                  seed: int | None = None) -> GeneratedImage:
    """`checked_output` in a worker thread: decoding and re-encoding a picture must not hold the event loop."""
    return await asyncio.to_thread(checked_output, stage, label, data, request, seed)


class ImageGenBackend(Backend):
    stage = "image"

    @property
    def label(self) -> str:
        """The backend's name and, for servers, its URL (what error messages name)."""
        return self.name

    @abstractmethod
    def generate(self, request: ImageRequest) -> AsyncIterator[ImageProgress | GeneratedImage]:
        """Yield progress, then exactly one GeneratedImage; raise MediaError on failure."""

    async def release(self) -> str:
        """Free the GPU for a voice session; returns what was done (for logs and /healthz)."""
        return "nothing to release"

    async def restore(self) -> str:
        """Load the model again after the session."""
        return "nothing to restore"
