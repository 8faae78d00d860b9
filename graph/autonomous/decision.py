"""What the autonomous engine hands out: signal snapshots, per-action checks, and the decision itself.

Every decision carries its whole reasoning (the signals it saw, each action's mood-scaled thresholds,
the probability and the roll), so "why did she say that?" is answered from the decision alone.
All values are plain frozen dataclasses with a `to_dict()` for the JSON reply of `POST /v1/events`.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graph.autonomous.state import HOUR_WINDOW_S, PendingSignal


class ActionKind(enum.Enum):
    """The actions, in priority order: the first one whose conditions and roll pass wins."""

    JOIN_CONVERSATION = "join_conversation"
    ENGAGE_USER = "engage_user"
    FOMO = "fomo"
    BREAK_SILENCE = "break_silence"
    SHARE_SOMETHING = "share_something"

    # Members are singletons compared by identity: hash them the same way (Enum's own __hash__ is a
    # Python-level call, and the rules look actions up on every evaluation of every server).
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class ChannelSignals:
    """One allowed channel at evaluation time. `since_*` are None when never seen since start-up."""

    channel_id: int
    messages_5m: int
    messages_1h: int
    momentum: float
    speakers_5m: int
    messages_since_miku: int
    since_human_s: float | None
    since_miku_s: float | None
    fresh_trigger: bool
    last_human_event_id: str | None

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__slots__}
        data["channel_id"] = str(self.channel_id)
        return data

    @property
    def alive(self) -> bool:
        """A human wrote here within the last hour."""
        return self.since_human_s is not None and self.since_human_s <= HOUR_WINDOW_S


@dataclass(frozen=True, slots=True)
class PendingView:
    """A pending presence/join signal as the rules see it."""

    signal: PendingSignal
    age_s: float
    repeat: bool  # the same user+activity was engaged within the repeat cooldown


@dataclass(frozen=True, slots=True)
class ServerSignals:
    """Everything the rules look at for one server (no message content anywhere)."""

    guild_id: int
    mood: str
    local_hour: int
    weekday: str
    weekend: bool
    night: bool
    uptime_s: float
    since_action_s: float | None  # since her last autonomous action here; None if none since start-up
    since_miku_s: float | None  # since she last spoke here (any channel)
    unanswered_breaks: int
    home_channel_id: int
    channels: tuple[ChannelSignals, ...]
    pending: tuple[PendingView, ...]

    def channel(self, channel_id: int) -> ChannelSignals | None:
        return next((c for c in self.channels if c.channel_id == channel_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "guild_id": str(self.guild_id),
            "mood": self.mood,
            "local_hour": self.local_hour,
            "weekday": self.weekday,
            "weekend": self.weekend,
            "night": self.night,
            "uptime_s": self.uptime_s,
            "since_action_s": self.since_action_s,
            "since_miku_s": self.since_miku_s,
            "unanswered_breaks": self.unanswered_breaks,
            "home_channel_id": str(self.home_channel_id),
            "channels": [c.to_dict() for c in self.channels],
            "pending": [
                {
                    "event_id": p.signal.event_id,
                    "user_id": str(p.signal.user_id),
                    "source": p.signal.source.value,
                    "activity": p.signal.activity_name,
                    "age_s": p.age_s,
                    "repeat": p.repeat,
                }
                for p in self.pending
            ],
        }


@dataclass(frozen=True, slots=True)
class ActionCheck:
    """One action's evaluation: conditions, effective thresholds, and the roll if it got that far."""

    action: ActionKind
    channel_id: int | None
    blocked_by: tuple[str, ...]  # names of the conditions that failed; empty = eligible
    thresholds: Mapping[str, float]
    rate_per_min: float
    probability: float | None = None
    roll: float | None = None

    @property
    def eligible(self) -> bool:
        return not self.blocked_by

    @property
    def fired(self) -> bool:
        return self.roll is not None and self.probability is not None and self.roll < self.probability

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "channel_id": None if self.channel_id is None else str(self.channel_id),
            "blocked_by": list(self.blocked_by),
            "thresholds": dict(self.thresholds),
            "rate_per_min": self.rate_per_min,
            "probability": self.probability,
            "roll": self.roll,
            "fired": self.fired,
        }


@dataclass(frozen=True, slots=True)
class DecisionDebug:
    """Why a decision was made: the signals, every action checked (in priority order) and the rolls."""

    signals: ServerSignals
    checks: tuple[ActionCheck, ...]
    roll_window_s: float
    traits: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "signals": self.signals.to_dict(),
            "checks": [c.to_dict() for c in self.checks],
            "roll_window_s": self.roll_window_s,
            "traits": dict(self.traits),
        }


@dataclass(frozen=True, slots=True)
class AutonomousDecision:
    """Miku should say something now: where, which kind of action, and the prompt to write it with.

    `prompt` is a persona-neutral instruction built from signals only; the host adds the persona and the
    channel's recent messages when it asks the LLM to write the message.
    """

    guild_id: int
    channel_id: int
    action: ActionKind
    prompt: str
    mood: str
    decided_at: float
    trigger_event_id: str | None  # the event this decision consumed (None for time-driven actions)
    target_user_id: int | None
    debug: DecisionDebug
    # The newest human message in the channel when it is recent (within `reply_window_s`): her message
    # replies to it (DeltaBot #10). None: she posts plainly.
    reply_to_event_id: str | None = None

    def to_dict(self, include_debug: bool = True) -> dict[str, Any]:
        """JSON form (ids as strings: snowflakes overflow JavaScript numbers)."""
        data: dict[str, Any] = {
            "type": "autonomous",
            "action": self.action.value,
            "guild_id": str(self.guild_id),
            "channel_id": str(self.channel_id),
            "prompt": self.prompt,
            "mood": self.mood,
            "decided_at": self.decided_at,
            "trigger_event_id": self.trigger_event_id,
            "target_user_id": None if self.target_user_id is None else str(self.target_user_id),
            "reply_to_event_id": self.reply_to_event_id,
        }
        if include_debug:
            data["debug"] = self.debug.to_dict()
        return data
