"""Per-server activity tracking for the autonomous engine: small, bounded, and content-free.

A bot in thousands of servers cannot keep message history per server, and should not keep message
content at all. Each allowed channel keeps only: the last few minutes of human messages as one compact
`array` of packed (millisecond time, 20-bit author hash) integers capped at `recent_cap`, twelve
5-minute counters for the last hour (16-bit, saturating), an exponentially decayed message count
(momentum), and a handful of counters. Each server keeps a compact copy of its settings, its mood, a
few presence/join signals and when Miku last spoke or acted. Memory per server stays near a kilobyte
whatever the traffic (docs/performance.md has the figure).
"""
from __future__ import annotations

import enum
import sys
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from graph.autonomous.config import ServerSettings, zone

RECENT_WINDOW_S = 300.0  # "the last 5 minutes"
HOUR_WINDOW_S = 3600.0
BUCKET_S = 300.0
_BUCKETS = int(HOUR_WINDOW_S // BUCKET_S)
_BUCKET_MAX = 0xFFFF

# One recent message is one unsigned 64-bit integer: milliseconds since the epoch in the upper 44 bits
# (good until the year 2527), a hash of the author in the lower 20 (distinct-speaker counts only need
# "different or not"; two of a channel's recent speakers colliding is a one-in-a-million event).
_AUTHOR_BITS = 20
_AUTHOR_MASK = (1 << _AUTHOR_BITS) - 1


_MIX = 0x9E3779B97F4A7C15  # Fibonacci hashing: snowflakes' low bits are a counter, the product's high bits are not
_U64 = (1 << 64) - 1


def _author_hash(author_id: int) -> int:
    return ((author_id * _MIX) & _U64) >> (64 - _AUTHOR_BITS)


def _pack(ts: float, author_id: int) -> int:
    return (int(ts * 1000.0) << _AUTHOR_BITS) | _author_hash(author_id)


def _cut(ts: float) -> int:
    """The smallest packed value at or after `ts`."""
    return int(ts * 1000.0) << _AUTHOR_BITS


def _unpack_ts(value: int) -> float:
    return (value >> _AUTHOR_BITS) / 1000.0


class SignalSource(enum.Enum):
    ACTIVITY = "activity_started"
    CAME_ONLINE = "came_online"
    MEMBER_JOIN = "member_join"

    __hash__ = object.__hash__  # identity, like equality (Enum's __hash__ is slow Python code)


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
        "channel_id", "_recent", "_buckets", "_bucket_head", "_momentum", "_momentum_ts",
        "last_human_ts", "last_human_event_id", "messages_since_miku", "last_miku_ts", "consumed_trigger_id",
    )

    def __init__(self, channel_id: int = 0) -> None:
        self.channel_id = channel_id
        self._recent = array("Q")  # packed human messages of the recent window, ascending
        self._buckets: array | None = None  # messages per 5-minute bucket, ring of 12 (made on first use)
        self._bucket_head = -1  # absolute index of the newest bucket in the ring
        self._momentum = 0.0
        self._momentum_ts = 0.0
        self.last_human_ts: float | None = None
        self.last_human_event_id: str | None = None
        self.messages_since_miku = 0
        self.last_miku_ts: float | None = None
        self.consumed_trigger_id: str | None = None  # the newest message a decision already acted on

    def add_human(self, ts: float, author_id: int, event_id: str, half_life_s: float, cap: int) -> None:
        recent = self._recent
        packed = _pack(ts, author_id)
        # Keep the recent window sorted even if events arrive slightly out of order.
        if recent and packed < recent[-1]:
            packed = (recent[-1] & ~_AUTHOR_MASK) | (packed & _AUTHOR_MASK)
        recent.append(packed)
        if len(recent) > cap:
            del recent[: len(recent) - cap]
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
        if self._buckets is None:
            self._buckets = array("H", bytes(2 * _BUCKETS))
        buckets = self._buckets
        index = int(ts // BUCKET_S)
        if index > self._bucket_head:
            for step in range(min(index - self._bucket_head, _BUCKETS)):
                buckets[(index - step) % _BUCKETS] = 0
            self._bucket_head = index
        elif index <= self._bucket_head - _BUCKETS:
            return  # older than the hour the ring covers
        slot = index % _BUCKETS
        if buckets[slot] < _BUCKET_MAX:
            buckets[slot] += 1

    def prune(self, now: float) -> None:
        """Forget recent-window entries older than 5 minutes."""
        cut = bisect_left(self._recent, _cut(now - RECENT_WINDOW_S))
        if cut:
            del self._recent[:cut]

    def messages_recent(self, now: float) -> int:
        return len(self._recent) - bisect_left(self._recent, _cut(now - RECENT_WINDOW_S))

    def recent_counts(self, now: float) -> tuple[int, int]:
        """(messages, distinct speakers) in the recent window, with one search."""
        recent = self._recent
        start = bisect_left(recent, _cut(now - RECENT_WINDOW_S))
        if start == len(recent):
            return 0, 0
        return len(recent) - start, len({value & _AUTHOR_MASK for value in recent[start:]})

    def speakers_recent(self, now: float) -> int:
        recent = self._recent
        start = bisect_left(recent, _cut(now - RECENT_WINDOW_S))
        return len({value & _AUTHOR_MASK for value in recent[start:]})

    def recent_window_changes_in(self, now: float) -> float:
        """Seconds until the oldest message of the recent window leaves it (inf: the window is empty)."""
        recent = self._recent
        start = bisect_left(recent, _cut(now - RECENT_WINDOW_S))
        if start >= len(recent):
            return float("inf")
        return max(0.0, _unpack_ts(recent[start]) + RECENT_WINDOW_S - now)

    def messages_hour(self, now: float) -> int:
        """Messages in the current and previous eleven 5-minute buckets (55-60 minutes)."""
        buckets = self._buckets
        if buckets is None:
            return 0
        newest = int(now // BUCKET_S)
        oldest = max(self._bucket_head - _BUCKETS + 1, newest - _BUCKETS + 1)
        if oldest == self._bucket_head - _BUCKETS + 1:
            return sum(buckets)  # the whole ring is inside the hour
        return sum(buckets[i % _BUCKETS] for i in range(oldest, self._bucket_head + 1))

    def hour_drops_to_in(self, now: float, limit: int) -> float:
        """Seconds until `messages_hour` is at most `limit` without new messages (0: it already is)."""
        buckets = self._buckets
        if buckets is None:
            return 0.0
        newest = int(now // BUCKET_S)
        oldest = max(self._bucket_head - _BUCKETS + 1, newest - _BUCKETS + 1)
        total = sum(buckets[i % _BUCKETS] for i in range(oldest, self._bucket_head + 1))
        index = oldest
        # bucket `index` leaves the hour when bucket `index + 12` starts
        while total > limit and index <= self._bucket_head:
            total -= buckets[index % _BUCKETS]
            index += 1
        if total > limit:  # pragma: no cover - every bucket has left by then
            return float("inf")
        if index == oldest:
            return 0.0
        return max(0.0, (index - 1 + _BUCKETS) * BUCKET_S - now)

    def momentum(self, now: float, half_life_s: float) -> float:
        """Exponentially decayed message count: about 2 x (messages per minute) at half-life 90 s."""
        if now <= self._momentum_ts:
            return self._momentum
        return self._momentum * 0.5 ** ((now - self._momentum_ts) / half_life_s)

    @property
    def fresh_trigger(self) -> bool:
        """A human message no decision has acted on yet."""
        return self.last_human_event_id is not None and self.last_human_event_id != self.consumed_trigger_id


class ServerPlace:
    """A compact copy of a server's `ServerSettings` (the validated pydantic model costs ~500 bytes)."""

    __slots__ = ("guild_id", "allowed_channels", "home_channel", "timezone", "enabled")

    def __init__(self, settings: ServerSettings) -> None:
        self.guild_id = settings.guild_id
        self.allowed_channels = tuple(settings.allowed_channels)
        self.home_channel = settings.home_channel
        self.timezone = sys.intern(settings.timezone)
        self.enabled = settings.enabled

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)

    def to_settings(self) -> ServerSettings:
        return ServerSettings(guild_id=self.guild_id, allowed_channels=self.allowed_channels,
                              home_channel_id=self.home_channel, timezone=self.timezone, enabled=self.enabled)


class ServerState:
    """Everything the engine remembers about one server.

    `plan` and `plan_until` cache the last full evaluation: which actions were eligible (with their
    rates) and until when that answer cannot change without a new event. `dirty` is set by every
    event; the engine re-evaluates fully when it is set or the plan has run out.
    """

    __slots__ = (
        "settings", "mood", "channels", "pending", "engaged", "last_action_ts", "last_action_kind",
        "last_miku_ts", "last_eval_ts", "unanswered_breaks", "last_human_ts", "plan", "plan_until", "dirty",
    )

    def __init__(self, settings: ServerSettings | ServerPlace, mood: str) -> None:
        self.settings = settings if isinstance(settings, ServerPlace) else ServerPlace(settings)
        self.mood = mood
        self.channels: list[ChannelActivity] = []
        self.pending: list[PendingSignal] | None = None  # None until the first signal: saves memory
        self.engaged: list[tuple[int, str, float]] | None = None  # (user, repeat_key, when) engaged lately
        self.last_action_ts: float | None = None
        self.last_action_kind: str | None = None
        self.last_miku_ts: float | None = None
        self.last_eval_ts: float | None = None
        self.unanswered_breaks = 0
        self.last_human_ts: float | None = None
        self.plan: tuple | None = None  # ((proposal index, rate per minute), ...) eligible, in priority order
        self.plan_until = 0.0
        self.dirty = True

    def channel(self, channel_id: int) -> ChannelActivity | None:
        """The channel's tracker, created on first use; None for a channel not on the allow-list."""
        for activity in self.channels:
            if activity.channel_id == channel_id:
                return activity
        if channel_id in self.settings.allowed_channels:
            activity = ChannelActivity(channel_id)
            self.channels.append(activity)
            return activity
        return None

    def keep_channels(self, allowed: tuple[int, ...]) -> None:
        self.channels = [c for c in self.channels if c.channel_id in allowed]

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

    def engaged_until(self, signal: PendingSignal, cooldown_s: float) -> float | None:
        """When the repeat cooldown for this user+activity ends (None: not engaged lately)."""
        ends = [when + cooldown_s for user, key, when in (self.engaged or ())
                if user == signal.user_id and key == signal.repeat_key]
        return max(ends) if ends else None

    def recently_engaged(self, signal: PendingSignal, now: float, cooldown_s: float) -> bool:
        return any(
            user == signal.user_id and key == signal.repeat_key and now - when < cooldown_s
            for user, key, when in (self.engaged or ())
        )

    def remember_engaged(self, signal: PendingSignal, now: float, cooldown_s: float, cap: int = 8) -> None:
        kept = [e for e in (self.engaged or ()) if now - e[2] < cooldown_s]
        kept.append((signal.user_id, signal.repeat_key, now))
        self.engaged = kept[-cap:]
