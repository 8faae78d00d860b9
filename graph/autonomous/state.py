"""Per-server activity tracking for the autonomous engine: small, bounded, and content-free.

A bot in thousands of servers cannot keep message history per server, and should not keep message
content at all. Each allowed channel keeps only: the timestamps and author ids of the last few minutes
(compact `array`s capped at `recent_cap`), twelve 5-minute counters for the last hour, an exponentially
decayed message count (momentum), and a handful of counters. Each server keeps its mood, a few
presence/join signals and when Miku last spoke or acted. Memory per server stays near a kilobyte
whatever the traffic.
"""
from __future__ import annotations

import enum
from array import array
from bisect import bisect_left
from dataclasses import dataclass

from graph.autonomous.config import ServerSettings

RECENT_WINDOW_S = 300.0  # "the last 5 minutes"
HOUR_WINDOW_S = 3600.0
_BUCKET_S = 300.0
_BUCKETS = int(HOUR_WINDOW_S // _BUCKET_S)


class SignalSource(enum.Enum):
    ACTIVITY = "activity_started"
    CAME_ONLINE = "came_online"
    MEMBER_JOIN = "member_join"


@dataclass(frozen=True, slots=True)
class PendingSignal:
    """A presence change or member join waiting to be engaged with (expires after a while)."""

    event_id: str
    user_id: int
    source: SignalSource
    timestamp: float
    activity_name: str | None = None
    activity_type: str | None = None
    display_name: str | None = None

    @property
    def repeat_key(self) -> str:
        """What counts as 'the same thing' for the engage-user repeat cooldown."""
        return f"{self.source.value}:{(self.activity_name or '').casefold()}"


class ChannelActivity:
    """Human activity in one allowed channel, in constant memory."""

    __slots__ = (
        "_times", "_authors", "_buckets", "_bucket_head", "_momentum", "_momentum_ts",
        "last_human_ts", "last_human_event_id", "messages_since_miku", "last_miku_ts", "consumed_trigger_id",
    )

    def __init__(self) -> None:
        self._times = array("d")  # human message times in the recent window, ascending
        self._authors = array("q")  # their authors (Discord snowflakes fit in a signed 64-bit int)
        self._buckets = array("I", bytes(4 * _BUCKETS))  # messages per 5-minute bucket, ring of 12
        self._bucket_head = -1  # absolute index of the newest bucket in the ring
        self._momentum = 0.0
        self._momentum_ts = 0.0
        self.last_human_ts: float | None = None
        self.last_human_event_id: str | None = None
        self.messages_since_miku = 0
        self.last_miku_ts: float | None = None
        self.consumed_trigger_id: str | None = None  # the newest message a decision already acted on

    def add_human(self, ts: float, author_id: int, event_id: str, half_life_s: float, cap: int) -> None:
        # Keep the recent arrays sorted even if events arrive slightly out of order.
        if self._times and ts < self._times[-1]:
            ts_sorted = self._times[-1]
        else:
            ts_sorted = ts
        self._times.append(ts_sorted)
        self._authors.append(author_id)
        if len(self._times) > cap:
            del self._times[: len(self._times) - cap]
            del self._authors[: len(self._authors) - cap]
        self._count_in_bucket(ts)
        if ts >= self._momentum_ts:
            self._momentum = self._momentum * 0.5 ** ((ts - self._momentum_ts) / half_life_s) + 1.0
            self._momentum_ts = ts
        else:
            self._momentum += 0.5 ** ((self._momentum_ts - ts) / half_life_s)
        if self.last_human_ts is None or ts >= self.last_human_ts:
            self.last_human_ts = ts
            self.last_human_event_id = event_id
        self.messages_since_miku += 1

    def add_miku(self, ts: float) -> None:
        self.messages_since_miku = 0
        if self.last_miku_ts is None or ts > self.last_miku_ts:
            self.last_miku_ts = ts

    def _count_in_bucket(self, ts: float) -> None:
        index = int(ts // _BUCKET_S)
        if index > self._bucket_head:
            for step in range(min(index - self._bucket_head, _BUCKETS)):
                self._buckets[(index - step) % _BUCKETS] = 0
            self._bucket_head = index
        elif index <= self._bucket_head - _BUCKETS:
            return  # older than the hour the ring covers
        self._buckets[index % _BUCKETS] += 1

    def prune(self, now: float) -> None:
        """Forget recent-window entries older than 5 minutes."""
        cut = bisect_left(self._times, now - RECENT_WINDOW_S)
        if cut:
            del self._times[:cut]
            del self._authors[:cut]

    def messages_recent(self, now: float) -> int:
        return len(self._times) - bisect_left(self._times, now - RECENT_WINDOW_S)

    def speakers_recent(self, now: float) -> int:
        start = bisect_left(self._times, now - RECENT_WINDOW_S)
        return len(set(self._authors[start:]))

    def messages_hour(self, now: float) -> int:
        """Messages in the current and previous eleven 5-minute buckets (55-60 minutes)."""
        newest = int(now // _BUCKET_S)
        oldest = max(self._bucket_head - _BUCKETS + 1, newest - _BUCKETS + 1)
        return sum(self._buckets[i % _BUCKETS] for i in range(oldest, self._bucket_head + 1))

    def momentum(self, now: float, half_life_s: float) -> float:
        """Exponentially decayed message count: about 2 x (messages per minute) at half-life 90 s."""
        if now <= self._momentum_ts:
            return self._momentum
        return self._momentum * 0.5 ** ((now - self._momentum_ts) / half_life_s)

    @property
    def fresh_trigger(self) -> bool:
        """A human message no decision has acted on yet."""
        return self.last_human_event_id is not None and self.last_human_event_id != self.consumed_trigger_id


class ServerState:
    """Everything the engine remembers about one server."""

    __slots__ = (
        "settings", "mood", "channels", "pending", "engaged", "last_action_ts", "last_action_kind",
        "last_miku_ts", "last_eval_ts", "unanswered_breaks", "last_human_ts",
    )

    def __init__(self, settings: ServerSettings, mood: str) -> None:
        self.settings = settings
        self.mood = mood
        self.channels: dict[int, ChannelActivity] = {}
        self.pending: list[PendingSignal] | None = None  # None until the first signal: saves memory
        self.engaged: list[tuple[int, str, float]] | None = None  # (user, repeat_key, when) engaged lately
        self.last_action_ts: float | None = None
        self.last_action_kind: str | None = None
        self.last_miku_ts: float | None = None
        self.last_eval_ts: float | None = None
        self.unanswered_breaks = 0
        self.last_human_ts: float | None = None

    def channel(self, channel_id: int) -> ChannelActivity | None:
        """The channel's tracker, created on first use; None for a channel not on the allow-list."""
        activity = self.channels.get(channel_id)
        if activity is None and channel_id in self.settings.allowed_channels:
            activity = self.channels[channel_id] = ChannelActivity()
        return activity

    def add_pending(self, signal: PendingSignal, cap: int) -> None:
        kept = [p for p in (self.pending or ()) if p.user_id != signal.user_id]  # newest per user wins
        kept.append(signal)
        self.pending = kept[-cap:]

    def drop_pending(self, event_ids: set[str]) -> None:
        if self.pending:
            self.pending = [p for p in self.pending if p.event_id not in event_ids] or None

    def expire_pending(self, now: float, max_age_s: float) -> None:
        if self.pending:
            self.pending = [p for p in self.pending if now - p.timestamp <= max_age_s] or None

    def recently_engaged(self, signal: PendingSignal, now: float, cooldown_s: float) -> bool:
        return any(
            user == signal.user_id and key == signal.repeat_key and now - when < cooldown_s
            for user, key, when in (self.engaged or ())
        )

    def remember_engaged(self, signal: PendingSignal, now: float, cooldown_s: float, cap: int = 8) -> None:
        kept = [e for e in (self.engaged or ()) if now - e[2] < cooldown_s]
        kept.append((signal.user_id, signal.repeat_key, now))
        self.engaged = kept[-cap:]
