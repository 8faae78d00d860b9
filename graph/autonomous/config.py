"""Thresholds and per-server settings of the autonomous engine, loaded from `configs/autonomous.yaml`.

The engine's behaviour is tuned here, not in code: every threshold, rate and mood weighting is a field
of a validated, frozen model. Unknown keys and out-of-range values fail at load time with the path of
the offending field, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from graph.brain.mood_profiles import TRAITS, MoodProfile

DEFAULT_AUTONOMOUS_CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "autonomous.yaml"


class AutonomousConfigError(ValueError):
    """The engine config (or a server's settings) is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_weights(weights: Mapping[str, float]) -> Mapping[str, float]:
    unknown = sorted(set(weights) - set(TRAITS))
    if unknown:
        raise ValueError(f"unknown trait(s) {', '.join(unknown)}; expected some of {', '.join(TRAITS)}")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return weights


class MoodScaling(_Strict):
    """How a mood stretches one action's timing.

    - drive: trait weights; the action's rate is `rate_per_min * (rate_floor + (1 - rate_floor) * drive)`,
      so even a mood with none of the driving traits keeps `rate_floor` of the rate (every mood can act).
    - eagerness: trait weights; waits are multiplied by `1 + wait_scale * (1 - eagerness)` and count
      thresholds by `1 + count_scale * (1 - eagerness)` (`count_scale` defaults to `wait_scale`), so a
      shy mood needs more messages (and, with a `wait_scale`, a longer gap).
    """

    rate_per_min: float = Field(gt=0)
    rate_floor: float = Field(gt=0, le=1)
    drive: dict[str, float]
    eagerness: dict[str, float]
    wait_scale: float = Field(ge=0)
    count_scale: float | None = Field(default=None, ge=0)
    night_allowed: bool = True

    @field_validator("drive", "eagerness")
    @classmethod
    def _trait_weights(cls, value: dict[str, float]) -> dict[str, float]:
        return dict(_check_weights(value))

    def weighted(self, weights: Mapping[str, float], mood: MoodProfile) -> float:
        """The mood's traits averaged with `weights` (0..1)."""
        return sum(w * mood.trait(t) for t, w in weights.items()) / sum(weights.values())

    def rate_factor(self, mood: MoodProfile) -> float:
        """Multiplier on `rate_per_min` for this mood, never below `rate_floor`."""
        return self.rate_floor + (1.0 - self.rate_floor) * self.weighted(self.drive, mood)

    def wait_factor(self, mood: MoodProfile) -> float:
        """Multiplier on waits for this mood (1 for a fully eager mood)."""
        return 1.0 + self.wait_scale * (1.0 - self.weighted(self.eagerness, mood))

    def count_factor(self, mood: MoodProfile) -> float:
        """Multiplier on count thresholds (messages) for this mood (1 for a fully eager mood)."""
        scale = self.wait_scale if self.count_scale is None else self.count_scale
        return 1.0 + scale * (1.0 - self.weighted(self.eagerness, mood))


class JoinConversationRule(MoodScaling):
    """A lively conversation she has not been part of for several messages."""

    min_momentum: float = Field(gt=0)
    min_speakers: int = Field(ge=1)
    min_messages_since_miku: int = Field(ge=1)
    min_gap_s: float = Field(ge=0)


class EngageUserRule(MoodScaling):
    """Someone started an activity (a game...), came online or joined, and she has been quiet a while."""

    max_activity_age_s: float = Field(gt=0)
    min_quiet_s: float = Field(ge=0)
    repeat_cooldown_s: float = Field(ge=0)
    activity_weight: float = Field(ge=0, le=1)
    came_online_weight: float = Field(ge=0, le=1)
    member_join_weight: float = Field(ge=0, le=1)


class FomoRule(MoodScaling):
    """Many messages without her in a chat that is still active."""

    min_messages_since_miku: int = Field(ge=1)
    min_messages_5m: int = Field(ge=1)
    min_gap_s: float = Field(ge=0)


class BreakSilenceRule(MoodScaling):
    """The home channel has been quiet for a while; energy decides how long she bears it."""

    min_quiet_s: float = Field(gt=0)
    unanswered_backoff: float = Field(ge=1)
    max_unanswered: int = Field(ge=1)
    signal_rate_boost: float = Field(ge=1)  # a fresh presence/join signal is a reason to speak sooner


class ShareSomethingRule(MoodScaling):
    """A calm (not dead) hour and a long gap since she last said anything: she shares a post.

    The post is a real item from the configured share feeds (the host's `share_feeds`); the host turns
    this off (`enabled: false`) when it has none, so she never shares an invented topic.
    """

    enabled: bool = True
    max_messages_1h: int = Field(ge=1)
    max_momentum: float = Field(ge=0)
    min_gap_s: float = Field(ge=0)


class ActionRules(_Strict):
    join_conversation: JoinConversationRule
    engage_user: EngageUserRule
    fomo: FomoRule
    break_silence: BreakSilenceRule
    share_something: ShareSomethingRule


class NightHours(_Strict):
    """Local hours [start, end) when she does not start talking to a quiet room (wraps past midnight)."""

    start: int = Field(ge=0, le=23)
    end: int = Field(ge=0, le=23)

    def contains(self, hour: int) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end


class Night(_Strict):
    weekday: NightHours
    weekend: NightHours


@lru_cache(maxsize=None)
def zone(name: str) -> ZoneInfo:
    """A ZoneInfo by IANA name, shared by every server in that zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name like 'Europe/Berlin')") from exc


class ServerSettings(_Strict):
    """Where the engine may act in one server, and the server's local time zone.

    `allowed_channels` is an allow-list: the engine never acts (and keeps no per-channel state) anywhere
    else. `home_channel_id` is where she breaks silence; it defaults to the first allowed channel.
    """

    guild_id: int = Field(ge=0)
    allowed_channels: tuple[int, ...] = Field(min_length=1)
    home_channel_id: int | None = None
    timezone: str = "UTC"
    enabled: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value

    @model_validator(mode="after")
    def _home_is_allowed(self) -> "ServerSettings":
        if self.home_channel_id is not None and self.home_channel_id not in self.allowed_channels:
            raise ValueError(f"home_channel_id {self.home_channel_id} is not in allowed_channels")
        return self

    @property
    def home_channel(self) -> int:
        return self.home_channel_id if self.home_channel_id is not None else self.allowed_channels[0]

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)


class AutonomousConfig(_Strict):
    """Everything the engine needs besides moods, clock, random generator and the pause switch."""

    startup_cooldown_s: float = Field(ge=0)
    min_action_interval_s: float = Field(ge=0)
    default_mood: str
    default_tick_s: float = Field(gt=0)
    max_roll_window_s: float = Field(gt=0)
    momentum_half_life_s: float = Field(gt=0)
    recent_cap: int = Field(ge=4, le=4096)
    pending_cap: int = Field(ge=1, le=64)
    dedupe_window: int = Field(ge=16)
    reply_window_s: float = Field(default=300.0, ge=0)  # she replies to a human message at most this old
    night: Night
    actions: ActionRules
    # Per mood, action settings that replace the ones above for that mood (validated as a whole rule):
    # `{shy: {join_conversation: {min_messages_since_miku: 40, count_scale: 0}}}`.
    mood_overrides: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    servers: tuple[ServerSettings, ...] = ()

    @model_validator(mode="after")
    def _valid_overrides(self) -> "AutonomousConfig":
        for mood in self.mood_overrides:
            self.actions_for(mood)
        return self

    def actions_for(self, mood: str) -> ActionRules:
        """The action rules as they apply in `mood` (`mood_overrides` merged over `actions`)."""
        override = self.mood_overrides.get(mood)
        if not override:
            return self.actions
        unknown = sorted(set(override) - set(ActionRules.model_fields))
        if unknown:
            raise ValueError(f"mood_overrides.{mood}: unknown action(s) {', '.join(unknown)}")
        merged = self.actions.model_dump()
        for action, values in override.items():
            merged[action] = {**merged[action], **values}
        try:
            return ActionRules.model_validate(merged)
        except ValidationError as exc:
            raise ValueError(f"mood_overrides.{mood}: " + "; ".join(describe_error(e) for e in exc.errors())) from None

    @model_validator(mode="after")
    def _unique_servers(self) -> "AutonomousConfig":
        ids = [s.guild_id for s in self.servers]
        dupes = sorted({g for g in ids if ids.count(g) > 1})
        if dupes:
            raise ValueError(f"servers listed twice: {dupes}")
        return self


def parse_autonomous_config(data: Any, source: str = "<autonomous>") -> AutonomousConfig:
    """Validate an already-parsed config mapping; raises AutonomousConfigError naming each bad field."""
    if not isinstance(data, Mapping):
        raise AutonomousConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    try:
        return AutonomousConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise AutonomousConfigError(f"{source}: " + "; ".join(describe_error(e) for e in exc.errors())) from None


def load_autonomous_config(path: str | Path = DEFAULT_AUTONOMOUS_CONFIG_PATH) -> AutonomousConfig:
    """Read and validate `configs/autonomous.yaml` (or another file of the same shape)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AutonomousConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise AutonomousConfigError(f"{path}: not valid YAML ({exc})") from exc
    return parse_autonomous_config(data, source=str(path))


def server_settings(data: Mapping[str, Any]) -> ServerSettings:
    """Validate one server's settings (e.g. from the bot's per-server config) with a clear error."""
    try:
        return ServerSettings.model_validate(dict(data))
    except ValidationError as exc:
        raise AutonomousConfigError("server settings: " + "; ".join(describe_error(e) for e in exc.errors())) from None


def describe_error(err: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in err.get("loc", ())) or "config"
    kind = err.get("type")
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required field is missing"
    return f"{where}: {err.get('msg')} (got {err.get('input')!r})"
