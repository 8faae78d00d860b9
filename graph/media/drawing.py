"""From "draw me a cat" to a bounded `ImageRequest`: the persona's style added, the size and steps within
the configured bounds, a seed chosen (from an injected RNG) or taken from the user, the prompt's length
checked, and an NSFW prompt refused outside channels marked NSFW."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from graph.backends.image.base import ImageRequest, MediaError, MediaErrorKind

DEFAULT_NSFW_WORDS = ("nsfw", "nude", "naked", "nudity", "porn", "hentai", "sex", "explicit", "lewd", "topless", "裸", "色情")


@dataclass(frozen=True, kw_only=True)
class DrawingConfig:
    """The `image.limits` part of the ImageGen stage's config."""

    default_width: int = 512
    default_height: int = 512
    max_width: int = 768
    max_height: int = 768
    default_steps: int = 20
    max_steps: int = 40
    guidance: float = 7.0
    negative_prompt: str = "lowres, bad anatomy, bad hands, text, watermark, blurry"
    max_prompt_chars: int = 1000
    timeout_s: float = 300.0
    nsfw_words: tuple[str, ...] = DEFAULT_NSFW_WORDS

    def __post_init__(self) -> None:
        for name in ("default_width", "default_height", "max_width", "max_height", "default_steps", "max_steps",
                     "max_prompt_chars"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"image limits: {name} must be positive")
        if self.default_width > self.max_width or self.default_height > self.max_height:
            raise ValueError("image limits: the default size must be within the maximum")
        if self.default_steps > self.max_steps:
            raise ValueError("image limits: default_steps must be within max_steps")
        if self.timeout_s <= 0:
            raise ValueError("image limits: timeout_s must be positive")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "DrawingConfig":
        raw = dict(raw or {})
        if "nsfw_words" in raw:
            raw["nsfw_words"] = tuple(str(w) for w in raw["nsfw_words"])
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"image limits: unknown key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**raw)


@dataclass(frozen=True, kw_only=True)
class DrawOrder:
    """What the client asks for: the subject, the persona's style, optional size/steps/seed, the channel."""

    prompt: str
    style: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    nsfw_channel: bool = False


@dataclass
class DrawingPlanner:
    config: DrawingConfig
    rng: random.Random = field(default_factory=random.Random)
    stage: str = "image"
    label: str = "image"

    def _refuse(self, message: str, kind: MediaErrorKind = MediaErrorKind.BAD_REQUEST) -> MediaError:
        return MediaError(self.stage, self.label, message, kind)

    def plan(self, order: DrawOrder) -> ImageRequest:
        subject = " ".join(order.prompt.split())
        if not subject:
            raise self._refuse("tell me what to draw: the prompt is empty")
        limit = self.config.max_prompt_chars
        if len(order.prompt) > limit:
            raise self._refuse(f"the prompt is {len(order.prompt):,} characters; I can draw from at most {limit:,}")
        if not order.nsfw_channel and self.is_nsfw(subject):
            raise self._refuse("that sounds NSFW, and this channel is not marked NSFW: I won't draw it here",
                               MediaErrorKind.NSFW_CHANNEL)
        style = " ".join(order.style.split())
        prompt = f"{subject}, {style}" if style else subject
        width = self._bounded("width", order.width, self.config.default_width, self.config.max_width)
        height = self._bounded("height", order.height, self.config.default_height, self.config.max_height)
        steps = self._bounded("steps", order.steps, self.config.default_steps, self.config.max_steps)
        if order.seed is not None and not 0 <= order.seed < 2**32:
            raise self._refuse(f"the seed must be a whole number from 0 to {2**32 - 1}, got {order.seed}")
        seed = order.seed if order.seed is not None else self.rng.randrange(2**32)
        return ImageRequest(prompt=prompt, negative_prompt=self.config.negative_prompt, width=width, height=height,
                            steps=steps, seed=seed, guidance=self.config.guidance)

    def _bounded(self, name: str, value: int | None, default: int, maximum: int) -> int:
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise self._refuse(f"{name} must be a positive whole number, got {value!r}")
        if value > maximum:
            raise self._refuse(f"{name} {value} is over this graph's limit of {maximum}")
        if name in ("width", "height"):
            return max(64, value - value % 8)  # latent models work in multiples of 8 pixels
        return value

    def is_nsfw(self, text: str) -> bool:
        words = [w for w in self.config.nsfw_words if w]
        if not words:
            return False
        parts = [rf"\b{re.escape(w)}\b" if w.isascii() else re.escape(w) for w in words]
        return re.search("|".join(parts), text, re.IGNORECASE) is not None
