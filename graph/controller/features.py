"""The features a voice session switches, what it does to each (`Effect`), their default messages, and
the answer to `check(feature)`.

One table, so the controller, the HTTP routes and the client read the same list; configs/controller.yaml
may override the messages per persona.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

TEXT_QUEUE_FEATURE = "text_channel_messages"


class Effect(enum.Enum):
    """What a voice session does to a feature while it holds it."""

    BLOCKED = "blocked"  # refused, with a user-facing message
    DISABLED = "disabled"  # refused silently
    LOCKED = "locked"  # refused silently
    PAUSED = "paused"  # background job skips its runs
    QUEUED = "queued"  # not handled now: enqueue for replay after the session
    ROUTED = "routed"  # allowed, but served by another backend (`route`)

    @property
    def allows(self) -> bool:
        return self is Effect.ROUTED

    @property
    def silent(self) -> bool:
        return self is not Effect.BLOCKED


@dataclass(frozen=True)
class FeatureSpec:
    """One feature a session switches, with its default user-facing message (BLOCKED features only)."""

    feature_id: str
    effect: Effect
    message: str | None = None
    normal_route: str | None = None  # ROUTED features: the route outside sessions
    session_route: str | None = None  # ROUTED features: the route during a session

    def __post_init__(self) -> None:
        if not self.feature_id:
            raise ValueError("feature_id must not be empty")
        if self.effect is Effect.ROUTED and not self.session_route:
            raise ValueError(f"routed feature {self.feature_id!r} needs a session_route")


VISION_MESSAGE = (
    "🎤 I can't look at images or videos right now, I'm talking in voice chat! Send it again after I leave."
)
IMAGE_MESSAGE = (
    "🎤 I can't draw right now, I'm talking in voice chat! Ask me again after I leave the voice channel."
)
CONFLICT_MESSAGE = "❌ Already in a voice session! Use `!miku leave` first."
CAPACITY_MESSAGE = "❌ Not enough GPU memory for another voice session right now."
VRAM_MESSAGE = "❌ Not enough GPU memory to start a voice session right now; try again in a while."
QUEUE_DROPPED_MESSAGE = (
    "⚠️ I'm in voice chat and my message queue is full, so the oldest {count} message(s) were dropped "
    "and I won't reply to them."
)

DEFAULT_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("vision", Effect.BLOCKED, VISION_MESSAGE),
    FeatureSpec("image_generation", Effect.BLOCKED, IMAGE_MESSAGE),
    FeatureSpec("bipolar_mode", Effect.DISABLED),
    FeatureSpec("profile_picture", Effect.LOCKED),
    FeatureSpec("autonomous_engine", Effect.PAUSED),
    FeatureSpec("scheduled_events", Effect.PAUSED),
    FeatureSpec("figurine_notifier", Effect.PAUSED),
    FeatureSpec(TEXT_QUEUE_FEATURE, Effect.QUEUED),
    FeatureSpec("text_inference", Effect.ROUTED, normal_route="default", session_route="rx6800"),
)

# Message keys that are not feature ids.
MESSAGE_KEYS = ("session_conflict", "capacity_short", "vram_short", "queue_dropped")


@dataclass(frozen=True)
class CheckResult:
    """The answer to `check(feature)`: may it run now, and if not, what (if anything) to tell the user."""

    feature: str
    allowed: bool
    message: str | None  # user-facing text to post when refused; None when allowed or silent
    silent: bool  # refused without telling the user
    effect: Effect | None  # the blackout in force, None outside any session
    route: str | None = None  # for routed features: which backend to use now
    held_by: tuple[str, ...] = ()  # sessions holding the blackout

    @property
    def blocked(self) -> bool:
        return not self.allowed

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.feature,
            "allowed": self.allowed,
            "blocked": self.blocked,
            "message": self.message,
            "silent": self.silent,
            "effect": self.effect.value if self.effect else None,
            "route": self.route,
            "held_by": list(self.held_by),
        }
