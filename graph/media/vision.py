"""Looking at what people post: the media references of a message (attachments, embeds, image links),
fetched safely, turned into a few frames within the limits, and answered by the vision backend in the
persona's voice with the chat's context.

`VisionService.look(order)` is the whole path, Ray-free; the Vision deployment hosts it. A file that
cannot be used (not an image, too big, a bomb, a broken GIF, a host that is not allowed) is skipped with
its reason; when nothing is usable the user is told why (a MediaError of kind BAD_INPUT).
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from graph.backends.image.base import MediaError, MediaErrorKind
from graph.backends.vision.base import VisionBackend, VisionRequest
from graph.media.fetch import FetchConfig, FetchRefused, MediaFetcher
from graph.media.frames import FrameLimits, media_frames
from graph.media.images import BadImage

_LINK = re.compile(r"https?://[^\s<>()\"']+", re.IGNORECASE)
_MEDIA_PATH = re.compile(r"\.(?:png|jpe?g|gif|webp|bmp|mp4|webm|mov|m4v)(?:$|[?#])", re.IGNORECASE)
_IMAGE_HOSTS = ("cdn.discordapp.com", "media.discordapp.net", "i.imgur.com", "tenor.com", "media.tenor.com")


def image_links(text: str, limit: int = 4) -> list[str]:
    """Links in a message that point at an image or a video (by extension or a known media host)."""
    links = []
    for match in _LINK.finditer(text or ""):
        url = match.group(0).rstrip(".,!?;:")
        host = url.split("/")[2].lower() if url.count("/") >= 2 else ""
        if _MEDIA_PATH.search(url) or host in _IMAGE_HOSTS:
            links.append(url)
        if len(links) >= limit:
            break
    return links


@dataclass(frozen=True)
class MediaRef:
    url: str
    content_type: str = ""


@dataclass(frozen=True, kw_only=True)
class VisionOrder:
    media: tuple[MediaRef, ...]
    system: str = ""
    history: tuple[tuple[str, str], ...] = ()
    text: str = ""


@dataclass(frozen=True)
class VisionAnswer:
    text: str
    frames: int
    skipped: tuple[tuple[str, str], ...] = ()  # (url, why)


@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    fetch: FetchConfig = field(default_factory=FetchConfig)
    limits: FrameLimits = field(default_factory=FrameLimits)
    max_media: int = 4
    max_frames_total: int = 8
    max_text_chars: int = 2000
    max_tokens: int = 300

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "VisionConfig":
        raw = dict(raw or {})
        fetch = FetchConfig.from_dict(raw.pop("fetch", None))
        limits = FrameLimits(**(raw.pop("limits", None) or {}))
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"vision: unknown key(s) {unknown}")
        return cls(fetch=fetch, limits=limits, **raw)


class VisionService:
    def __init__(self, backend: VisionBackend, config: VisionConfig):
        self.backend = backend
        self.config = config
        self.fetcher = MediaFetcher(config.fetch)

    def _refuse(self, message: str) -> MediaError:
        return MediaError("vision", self.backend.label, message, MediaErrorKind.BAD_INPUT)

    async def _frames(self, ref: MediaRef) -> list[bytes]:
        fetched = await self.fetcher.fetch(ref.url)
        content_type = ref.content_type or fetched.content_type
        if content_type and not content_type.startswith(("image/", "video/", "application/octet-stream")):
            raise BadImage(f"it is {content_type}, not an image or a video")
        # decoding is CPU work: off the event loop
        return await asyncio.to_thread(media_frames, fetched.data, content_type, self.config.limits)

    async def look(self, order: VisionOrder) -> VisionAnswer:
        if not order.media:
            raise self._refuse("there is no image or video to look at")
        if len(order.text) > self.config.max_text_chars:
            raise self._refuse(f"the message is {len(order.text):,} characters; I read at most {self.config.max_text_chars:,}")
        frames: list[bytes] = []
        skipped: list[tuple[str, str]] = []
        for ref in order.media[: self.config.max_media]:
            try:
                frames += await self._frames(ref)
            except (FetchRefused, BadImage) as error:
                skipped.append((ref.url, str(error)))
        frames = frames[: self.config.max_frames_total]
        if not frames:
            reasons = "; ".join(why for _, why in skipped) or "nothing usable"
            raise self._refuse(f"I couldn't look at that: {reasons}")
        request = VisionRequest(system=order.system, history=order.history, text=order.text, images=tuple(frames),
                                max_tokens=self.config.max_tokens)
        text = await self.backend.answer(request)
        return VisionAnswer(text=text, frames=len(frames), skipped=tuple(skipped))

    async def aclose(self) -> None:
        await self.fetcher.aclose()
