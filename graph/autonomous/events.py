"""The Discord events the autonomous engine listens to, as typed values, and their JSON form.

The client posts them to `POST /v1/events`; `parse_event` turns one JSON object into one of these
values with a clear error for bad input. Message events carry no content on purpose: the engine decides
from signals (who spoke, where, when), never from what was said.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError


class EventError(ValueError):
    """An event payload is malformed; the message names the field."""


class PresenceKind(enum.Enum):
    ACTIVITY_STARTED = "activity_started"  # started a game, stream, song... (activity_name says which)
    CAME_ONLINE = "came_online"


class EventOutcome(enum.Enum):
    """What `AutonomousEngine.on_event` did with an event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # its event_id was seen before: dropped
    IGNORED = "ignored"  # not tracked (unconfigured server, disallowed channel, another bot)


_MAX_SNOWFLAKE = 2**63 - 1


def _check_ids(**ids: int) -> None:
    for name, value in ids.items():
        if not 0 <= value <= _MAX_SNOWFLAKE:
            raise ValueError(f"{name} must be a Discord id (0..2**63-1), got {value!r}")


def _check_common(event_id: str, timestamp: float) -> None:
    if not event_id:
        raise ValueError("event_id must be a non-empty string")
    if not math.isfinite(timestamp) or timestamp < 0:
        raise ValueError(f"timestamp must be finite epoch seconds, got {timestamp!r}")


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """Someone posted in a text channel (no content: only who, where and when)."""

    event_id: str
    guild_id: int
    channel_id: int
    author_id: int
    timestamp: float  # epoch seconds
    author_is_bot: bool = False
    is_miku: bool = False

    def __post_init__(self) -> None:
        _check_common(self.event_id, self.timestamp)
        _check_ids(guild_id=self.guild_id, channel_id=self.channel_id, author_id=self.author_id)


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A member started an activity (e.g. a game) or came online."""

    event_id: str
    guild_id: int
    user_id: int
    timestamp: float
    kind: PresenceKind
    activity_name: str | None = None  # "Minecraft"
    activity_type: str | None = None  # playing, streaming, listening, watching, competing, custom
    display_name: str | None = None

    def __post_init__(self) -> None:
        _check_common(self.event_id, self.timestamp)
        _check_ids(guild_id=self.guild_id, user_id=self.user_id)
        if self.kind is PresenceKind.ACTIVITY_STARTED and not self.activity_name:
            raise ValueError("activity_started needs an activity_name")


@dataclass(frozen=True, slots=True)
class MemberJoinEvent:
    """A new member joined the server."""

    event_id: str
    guild_id: int
    user_id: int
    timestamp: float
    display_name: str | None = None

    def __post_init__(self) -> None:
        _check_common(self.event_id, self.timestamp)
        _check_ids(guild_id=self.guild_id, user_id=self.user_id)


@dataclass(frozen=True, slots=True)
class MoodEvent:
    """Miku's mood in a server changed."""

    event_id: str
    guild_id: int
    mood: str
    timestamp: float

    def __post_init__(self) -> None:
        _check_common(self.event_id, self.timestamp)
        _check_ids(guild_id=self.guild_id)


AutonomousEvent = MessageEvent | PresenceEvent | MemberJoinEvent | MoodEvent

EVENT_TYPES: dict[str, type] = {
    "message": MessageEvent,
    "presence": PresenceEvent,
    "member_join": MemberJoinEvent,
    "mood": MoodEvent,
}
_ADAPTERS = {name: TypeAdapter(cls) for name, cls in EVENT_TYPES.items()}


def parse_event(payload: Mapping[str, Any]) -> AutonomousEvent:
    """One JSON event (`{"type": "message"|"presence"|"member_join"|"mood", ...}`) as a typed value.

    Discord snowflakes may come as strings or ints; `timestamp` is epoch seconds. Keys the engine does
    not use (including any message content) are dropped, never stored.
    """
    if not isinstance(payload, Mapping):
        raise EventError(f"event must be a JSON object, got {type(payload).__name__}")
    kind = payload.get("type")
    if kind not in _ADAPTERS:
        raise EventError(f"event type must be one of {', '.join(EVENT_TYPES)}, got {kind!r}")
    fields = {k: v for k, v in payload.items() if k != "type"}
    if isinstance(fields.get("event_id"), int) and not isinstance(fields["event_id"], bool):
        fields["event_id"] = str(fields["event_id"])  # Discord snowflakes are fine as ids
    try:
        return _ADAPTERS[kind].validate_python(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors()
        )
        raise EventError(f"bad {kind} event: {problems}") from None


def event_type(event: AutonomousEvent) -> str:
    """The JSON `type` of an event value."""
    for name, cls in EVENT_TYPES.items():
        if isinstance(event, cls):
            return name
    raise TypeError(f"not an autonomous event: {type(event).__name__}")
