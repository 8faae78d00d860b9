"""The autonomous engine V2: decides when Miku speaks up on her own, from signals and plain math.

The old behaviour (a 15-minute timer, 10% chance) spoke to empty rooms and interrupted busy ones. This
engine tracks cheap per-server signals fed by the client's events (`on_event`), and on each periodic
`tick` decides per server whether one of five actions fires, with mood-dependent thresholds and a
mood-dependent rate. It never calls an LLM: a decision carries the prompt the host should use.

Hard rules, checked before any dice are rolled: nothing during the start-up cooldown, nothing while
`is_paused()` (the session controller pauses it during voice), never two actions in one server within
`min_action_interval_s`, never in a channel outside the server's allow-list, and never twice on one
event (re-delivered event ids are dropped; a decision consumes the message or signal it acted on).
"""
from __future__ import annotations

import enum
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime

from graph.autonomous.config import AutonomousConfig, ServerSettings
from graph.autonomous.decision import (
    ActionCheck,
    ActionKind,
    AutonomousDecision,
    ChannelSignals,
    DecisionDebug,
    PendingView,
    ServerSignals,
)
from graph.autonomous.events import (
    AutonomousEvent,
    EventError,
    EventOutcome,
    MemberJoinEvent,
    MessageEvent,
    MoodEvent,
    PresenceEvent,
    PresenceKind,
)
from graph.autonomous.prompts import build_prompt
from graph.autonomous.rules import (
    MoodFactors,
    Proposal,
    iter_proposals,
    mood_factors,
    propose_all,
)
from graph.autonomous.state import (
    ChannelActivity,
    PendingSignal,
    ServerState,
    SignalSource,
)
from graph.brain.mood_profiles import TRAITS, MoodProfile

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class EngineGate(enum.Enum):
    """Whether the engine may act at all right now (checked before any server is looked at)."""

    STARTING_UP = "starting_up"
    PAUSED = "paused"
    ACTIVE = "active"


class _SeenIds:
    """Bounded memory of event ids, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._capacity = capacity

    def add(self, event_id: str) -> bool:
        """Remember an id; False if it was already known."""
        if event_id in self._ids:
            return False
        if len(self._order) >= self._capacity:
            self._ids.discard(self._order.popleft())
        self._order.append(event_id)
        self._ids.add(event_id)
        return True


class AutonomousEngine:
    """Context-aware decisions about when Miku speaks up, per server, with no LLM calls.

    `clock` returns epoch seconds (event timestamps are Discord's wall-clock times and local hours
    need a real date); `rng` makes every roll reproducible; `is_paused` is asked on every tick.
    """

    def __init__(
        self,
        config: AutonomousConfig,
        moods: Mapping[str, MoodProfile],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        is_paused: Callable[[], bool] = lambda: False,
    ) -> None:
        if config.default_mood not in moods:
            raise ValueError(f"default_mood {config.default_mood!r} has no mood profile")
        self._config = config
        self._moods = dict(moods)
        self._factors: dict[str, dict[ActionKind, MoodFactors]] = {
            name: mood_factors(profile, config.actions) for name, profile in self._moods.items()
        }
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._is_paused = is_paused
        self._started_at = clock()
        self._servers: dict[int, ServerState] = {}
        self._seen = _SeenIds(config.dedupe_window)
        for settings in config.servers:
            self.configure_server(settings)

    # ---- servers -------------------------------------------------------------------------------

    def configure_server(self, settings: ServerSettings) -> None:
        """Start tracking a server, or replace its settings (state of channels no longer allowed is dropped)."""
        state = self._servers.get(settings.guild_id)
        if state is None:
            self._servers[settings.guild_id] = ServerState(settings, self._config.default_mood)
            return
        state.settings = settings
        for channel_id in [c for c in state.channels if c not in settings.allowed_channels]:
            del state.channels[channel_id]

    def remove_server(self, guild_id: int) -> None:
        """Forget a server (the bot left it)."""
        self._servers.pop(guild_id, None)

    @property
    def tracked_servers(self) -> int:
        return len(self._servers)

    def mood_of(self, guild_id: int) -> str:
        return self._servers[guild_id].mood

    # ---- events --------------------------------------------------------------------------------

    def on_event(self, event: AutonomousEvent) -> EventOutcome:
        """Update a server's signals from one client event. Unknown moods raise EventError (nothing changes)."""
        state = self._servers.get(event.guild_id)
        if state is None:
            return EventOutcome.IGNORED
        if isinstance(event, MoodEvent) and event.mood not in self._moods:
            raise EventError(f"unknown mood {event.mood!r}; expected one of {', '.join(self._moods)}")
        if isinstance(event, MessageEvent) and event.author_is_bot and not event.is_miku:
            return EventOutcome.IGNORED  # other bots are not conversation
        if not self._seen.add(event.event_id):
            return EventOutcome.DUPLICATE
        # A client clock running ahead must not make a message look fresh for ever.
        ts = min(event.timestamp, self._clock())
        if isinstance(event, MessageEvent):
            self._on_message(state, event, ts)
        elif isinstance(event, PresenceEvent):
            source = SignalSource.ACTIVITY if event.kind is PresenceKind.ACTIVITY_STARTED else SignalSource.CAME_ONLINE
            state.add_pending(
                PendingSignal(event.event_id, event.user_id, source, ts, event.activity_name,
                              event.activity_type, event.display_name),
                self._config.pending_cap,
            )
        elif isinstance(event, MemberJoinEvent):
            state.add_pending(
                PendingSignal(event.event_id, event.user_id, SignalSource.MEMBER_JOIN, ts,
                              display_name=event.display_name),
                self._config.pending_cap,
            )
        elif isinstance(event, MoodEvent):
            state.mood = event.mood
        else:
            raise TypeError(f"not an autonomous event: {type(event).__name__}")
        return EventOutcome.APPLIED

    def _on_message(self, state: ServerState, event: MessageEvent, ts: float) -> None:
        channel = state.channel(event.channel_id)
        if event.is_miku:
            state.last_miku_ts = ts if state.last_miku_ts is None else max(state.last_miku_ts, ts)
            if channel is not None:
                channel.add_miku(ts)
            return
        state.last_human_ts = ts if state.last_human_ts is None else max(state.last_human_ts, ts)
        state.unanswered_breaks = 0
        if channel is not None:
            channel.add_human(ts, event.author_id, event.event_id,
                              self._config.momentum_half_life_s, self._config.recent_cap)

    # ---- decisions -----------------------------------------------------------------------------

    def gate(self, now: float | None = None) -> EngineGate:
        now = self._clock() if now is None else now
        if now - self._started_at < self._config.startup_cooldown_s:
            return EngineGate.STARTING_UP
        if self._is_paused():
            return EngineGate.PAUSED
        return EngineGate.ACTIVE

    def tick(self, now: float | None = None) -> list[AutonomousDecision]:
        """Evaluate every tracked server once; at most one decision per server."""
        now = self._clock() if now is None else now
        if self.gate(now) is not EngineGate.ACTIVE:
            return []
        decisions = []
        for state in self._servers.values():
            decision = self._decide(state, now)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def decide(self, guild_id: int, now: float | None = None) -> AutonomousDecision | None:
        """Evaluate one server now (e.g. right after its event); same rules as `tick`."""
        now = self._clock() if now is None else now
        state = self._servers.get(guild_id)
        if state is None or self.gate(now) is not EngineGate.ACTIVE:
            return None
        return self._decide(state, now)

    def signals(self, guild_id: int, now: float | None = None) -> ServerSignals:
        """The signals the rules would see for a server now (read-only; for debugging and dashboards)."""
        now = self._clock() if now is None else now
        return self._signals(self._servers[guild_id], now)

    def explain(self, guild_id: int, now: float | None = None) -> tuple[ActionCheck, ...]:
        """Every action's check for a server now, without rolling or changing anything."""
        now = self._clock() if now is None else now
        state = self._servers[guild_id]
        signals = self._signals(state, now)
        return tuple(p.check for p in propose_all(signals, self._factors[state.mood], self._config.actions))

    def _decide(self, state: ServerState, now: float) -> AutonomousDecision | None:
        config = self._config
        if not state.settings.enabled:
            return None
        # The roll covers the time since this server was last evaluated, so rates are per minute
        # whatever the tick period.
        window = config.default_tick_s if state.last_eval_ts is None else now - state.last_eval_ts
        window = min(window, config.max_roll_window_s)
        if window <= 0:
            return None
        state.last_eval_ts = now
        if state.last_action_ts is not None and now - state.last_action_ts < config.min_action_interval_s:
            return None
        state.expire_pending(now, config.actions.engage_user.max_activity_age_s)
        for channel in state.channels.values():
            channel.prune(now)

        signals = self._signals(state, now)
        mood = self._moods[state.mood]
        checks: list[ActionCheck] = []
        for proposal in iter_proposals(signals, self._factors[state.mood], config.actions):
            check = proposal.check
            if check.eligible and check.rate_per_min > 0:
                probability = 1.0 - math.exp(-check.rate_per_min * window / 60.0)
                check = ActionCheck(check.action, check.channel_id, check.blocked_by, check.thresholds,
                                    check.rate_per_min, probability, self._rng.random())
            checks.append(check)
            if check.fired:
                debug = DecisionDebug(signals, tuple(checks), window,
                                      {t: mood.trait(t) for t in TRAITS})
                return self._act(state, signals, mood, proposal, debug, now)
        return None

    def _act(self, state: ServerState, signals: ServerSignals, mood: MoodProfile, proposal: Proposal,
             debug: DecisionDebug, now: float) -> AutonomousDecision:
        action = proposal.check.action
        channel_signals = proposal.channel
        assert channel_signals is not None and channel_signals.channel_id in state.settings.allowed_channels
        extra: tuple[PendingView, ...] = ()
        if action is ActionKind.BREAK_SILENCE:
            # Fresh presence/join signals are the best conversation starters for a silent room.
            extra = tuple(p for p in signals.pending if not p.repeat)
        prompt = build_prompt(action, signals, mood, channel_signals, proposal.signal, extra)

        # She is about to speak: record it now so the next tick does not act on the same moment.
        channel = state.channel(channel_signals.channel_id)
        assert channel is not None
        channel.consumed_trigger_id = channel.last_human_event_id
        channel.add_miku(now)
        state.last_miku_ts = now
        state.last_action_ts = now
        state.last_action_kind = action.value
        used = {p.signal.event_id for p in extra}
        if proposal.signal is not None:
            used.add(proposal.signal.signal.event_id)
            state.remember_engaged(proposal.signal.signal, now, self._config.actions.engage_user.repeat_cooldown_s)
        if used:
            state.drop_pending(used)
        if action is ActionKind.BREAK_SILENCE:
            state.unanswered_breaks += 1
        return AutonomousDecision(
            guild_id=state.settings.guild_id,
            channel_id=channel_signals.channel_id,
            action=action,
            prompt=prompt,
            mood=state.mood,
            decided_at=now,
            trigger_event_id=proposal.trigger_event_id,
            target_user_id=proposal.signal.signal.user_id if proposal.signal else None,
            debug=debug,
        )

    # ---- signals -------------------------------------------------------------------------------

    def _signals(self, state: ServerState, now: float) -> ServerSignals:
        settings = state.settings
        local = datetime.fromtimestamp(now, settings.tz)
        weekend = local.weekday() >= 5
        night_hours = self._config.night.weekend if weekend else self._config.night.weekday
        half_life = self._config.momentum_half_life_s
        channels = [self._channel_signals(cid, act, now, half_life) for cid, act in state.channels.items()]
        if settings.home_channel not in state.channels:
            channels.append(self._channel_signals(settings.home_channel, None, now, half_life))
        cooldown = self._config.actions.engage_user.repeat_cooldown_s
        pending = tuple(
            PendingView(p, now - p.timestamp, state.recently_engaged(p, now, cooldown))
            for p in (state.pending or ())
        )
        return ServerSignals(
            guild_id=settings.guild_id,
            mood=state.mood,
            local_hour=local.hour,
            weekday=_WEEKDAYS[local.weekday()],
            weekend=weekend,
            night=night_hours.contains(local.hour),
            uptime_s=now - self._started_at,
            since_action_s=None if state.last_action_ts is None else now - state.last_action_ts,
            since_miku_s=None if state.last_miku_ts is None else now - state.last_miku_ts,
            unanswered_breaks=state.unanswered_breaks,
            home_channel_id=settings.home_channel,
            channels=tuple(channels),
            pending=pending,
        )

    @staticmethod
    def _channel_signals(channel_id: int, activity: ChannelActivity | None, now: float,
                         half_life_s: float) -> ChannelSignals:
        if activity is None:
            return ChannelSignals(channel_id, 0, 0, 0.0, 0, 0, None, None, False, None)
        return ChannelSignals(
            channel_id=channel_id,
            messages_5m=activity.messages_recent(now),
            messages_1h=activity.messages_hour(now),
            momentum=activity.momentum(now, half_life_s),
            speakers_5m=activity.speakers_recent(now),
            messages_since_miku=activity.messages_since_miku,
            since_human_s=None if activity.last_human_ts is None else now - activity.last_human_ts,
            since_miku_s=None if activity.last_miku_ts is None else now - activity.last_miku_ts,
            fresh_trigger=activity.fresh_trigger,
            last_human_event_id=activity.last_human_event_id,
        )

