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
from array import array
from collections.abc import Callable, Mapping
from datetime import datetime

from graph.autonomous.config import ActionRules, AutonomousConfig, ServerSettings, zone
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
    Horizon,
    MoodFactors,
    Proposal,
    iter_proposals,
    mood_factors,
    propose_all,
    stable_for,
)
from graph.autonomous.state import (
    ChannelActivity,
    PendingSignal,
    ServerPlace,
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
    """Bounded memory of event ids, oldest forgotten first, in two flat arrays.

    Ids are kept as their 64-bit hashes in an open-addressing table (linear probing, backward-shift
    deletion) plus a ring of the same hashes in arrival order: about 24 bytes per remembered id, and no
    string or int objects. Two different ids sharing a 64-bit hash (a one-in-10^10 event over a full
    window) would make the second look like a duplicate.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        size = 8
        while size < 2 * capacity:  # load factor <= 0.5
            size *= 2
        self._mask = size - 1
        self._table = array("q", bytes(8 * size))  # 0 marks an empty slot
        self._ring = array("q", bytes(8 * capacity))
        self._head = 0  # next ring slot to write (the oldest id once the ring is full)
        self._count = 0

    @staticmethod
    def _key(event_id: str) -> int:
        return hash(event_id) or 1

    def add(self, event_id: str) -> bool:
        """Remember an id; False if it was already known."""
        key, table, mask = self._key(event_id), self._table, self._mask
        i = key & mask
        while table[i]:
            if table[i] == key:
                return False
            i = (i + 1) & mask
        if self._count == self._capacity:
            self._delete(self._ring[self._head])
            i = key & mask
            while table[i]:
                i = (i + 1) & mask
        else:
            self._count += 1
        table[i] = key
        self._ring[self._head] = key
        self._head = (self._head + 1) % self._capacity
        return True

    def _delete(self, key: int) -> None:
        table, mask = self._table, self._mask
        i = key & mask
        while table[i] != key:
            if not table[i]:  # pragma: no cover - every ring entry is in the table
                return
            i = (i + 1) & mask
        table[i] = 0
        j = i
        while True:  # shift back the entries of the probe run that follows, so lookups still find them
            j = (j + 1) & mask
            if not table[j]:
                return
            home = table[j] & mask
            if (i < j and (home <= i or home > j)) or (i > j and j < home <= i):
                table[i], table[j] = table[j], 0
                i = j


class AutonomousEngine:
    """Context-aware decisions about when Miku speaks up, per server, with no LLM calls.

    `clock` returns epoch seconds (event timestamps are Discord's wall-clock times and local hours
    need a real date); `rng` makes every roll reproducible; `is_paused` is asked on every tick;
    `full_evaluation` turns off the per-server evaluation cache (same decisions, slower).
    """

    def __init__(
        self,
        config: AutonomousConfig,
        moods: Mapping[str, MoodProfile],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        is_paused: Callable[[], bool] = lambda: False,
        full_evaluation: bool = False,
    ) -> None:
        if config.default_mood not in moods:
            raise ValueError(f"default_mood {config.default_mood!r} has no mood profile")
        self._config = config
        self._moods = dict(moods)
        unknown = sorted(set(config.mood_overrides) - set(self._moods))
        if unknown:
            raise ValueError(f"mood_overrides name moods without a profile: {', '.join(unknown)}")
        # Per mood: the rules as they apply in it (mood_overrides merged) and its precomputed factors.
        self._rules: dict[str, ActionRules] = {name: config.actions_for(name) for name in self._moods}
        self._factors: dict[str, dict[ActionKind, MoodFactors]] = {
            name: mood_factors(profile, self._rules[name]) for name, profile in self._moods.items()
        }
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._is_paused = is_paused
        self._started_at = clock()
        self._servers: dict[int, ServerState] = {}
        self._seen = _SeenIds(config.dedupe_window)
        self._last_tick_ts: float | None = None  # the last tick that evaluated (gate active)
        self._local_cache_now: float | None = None
        self._local_cache: dict[str, datetime] = {}
        # True: run every rule for every server on every tick (the reference the shortcut is tested against)
        self._full_evaluation = full_evaluation
        for settings in config.servers:
            self.configure_server(settings)

    # ---- servers -------------------------------------------------------------------------------

    def configure_server(self, settings: ServerSettings) -> None:
        """Start tracking a server, or replace its settings (state of channels no longer allowed is dropped)."""
        state = self._servers.get(settings.guild_id)
        if state is None:
            self._servers[settings.guild_id] = ServerState(settings, self._config.default_mood)
            return
        state.settings = ServerPlace(settings)
        state.keep_channels(state.settings.allowed_channels)
        state.dirty = True

    def server_settings(self, guild_id: int) -> ServerSettings | None:
        """A tracked server's settings (rebuilt from the engine's compact copy)."""
        state = self._servers.get(guild_id)
        return None if state is None else state.settings.to_settings()

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
        state.dirty = True  # the cached evaluation no longer holds
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
        """Evaluate every tracked server once; at most one decision per server.

        A server whose last full evaluation still holds (no event since, and its `plan_until` not
        reached) costs one comparison, plus one roll per eligible action: the rules only run again
        when something may have changed (see `rules.stable_for`). Decisions and rolls are the same as
        with a full evaluation of every server (tests/test_autonomous_scale.py).
        """
        now = self._clock() if now is None else now
        if self.gate(now) is not EngineGate.ACTIVE:
            return []
        decisions = []
        previous_tick, self._last_tick_ts = self._last_tick_ts, now
        rng_random, exp = self._rng.random, math.exp
        max_window = self._config.max_roll_window_s
        for state in self._servers.values():
            if state.dirty or now >= state.plan_until or self._full_evaluation:
                decision = self._decide(state, now, previous_tick)
            elif not state.plan:
                continue  # nothing eligible, nothing rolled: skipping is exactly an evaluation
            else:
                last = state.last_eval_ts  # never None here: a plan comes from an evaluation
                window = now - (last if previous_tick is None or last > previous_tick else previous_tick)
                if window <= 0:
                    continue
                if window > max_window:
                    window = max_window
                rolls = []
                for rate in state.plan:
                    roll = rng_random()
                    rolls.append(roll)
                    if roll < 1.0 - exp(-rate * window / 60.0):
                        break
                else:
                    state.last_eval_ts = now
                    continue
                # A roll fired: the full evaluation builds the decision, reusing these rolls.
                decision = self._decide(state, now, previous_tick, rolls)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def decide(self, guild_id: int, now: float | None = None) -> AutonomousDecision | None:
        """Evaluate one server now (e.g. right after its event); same rules as `tick`."""
        now = self._clock() if now is None else now
        state = self._servers.get(guild_id)
        if state is None or self.gate(now) is not EngineGate.ACTIVE:
            return None
        return self._decide(state, now, self._last_tick_ts)

    def signals(self, guild_id: int, now: float | None = None) -> ServerSignals:
        """The signals the rules would see for a server now (read-only; for debugging and dashboards)."""
        now = self._clock() if now is None else now
        return self._signals(self._servers[guild_id], now)

    def explain(self, guild_id: int, now: float | None = None) -> tuple[ActionCheck, ...]:
        """Every action's check for a server now, without rolling or changing anything."""
        now = self._clock() if now is None else now
        state = self._servers[guild_id]
        signals = self._signals(state, now)
        return tuple(p.check for p in propose_all(signals, self._factors[state.mood], self._rules[state.mood]))

    def _local_time(self, now: float, timezone: str) -> datetime:
        """Local time in a zone, shared by every server in that zone evaluated at the same instant."""
        if self._local_cache_now != now:
            self._local_cache_now, self._local_cache = now, {}
        local = self._local_cache.get(timezone)
        if local is None:
            local = self._local_cache[timezone] = datetime.fromtimestamp(now, zone(timezone))
        return local

    def _window(self, state: ServerState, now: float, previous_tick: float | None) -> float:
        """The time a roll covers: since this server was last evaluated (a skipped server counts as
        evaluated at the previous tick), so rates are per minute whatever the tick period."""
        config = self._config
        if state.last_eval_ts is None:
            return min(config.default_tick_s, config.max_roll_window_s)
        since = state.last_eval_ts if previous_tick is None else max(state.last_eval_ts, previous_tick)
        return min(now - since, config.max_roll_window_s)

    def _decide(self, state: ServerState, now: float, previous_tick: float | None = None,
                rolls: list[float] | None = None) -> AutonomousDecision | None:
        config = self._config
        state.dirty = False
        state.plan = None
        if not state.settings.enabled:
            state.plan_until = math.inf
            return None
        window = self._window(state, now, previous_tick)
        if window <= 0:
            state.plan_until = now  # evaluated twice at one instant: look again next time
            return None
        state.last_eval_ts = now
        if state.last_action_ts is not None and now - state.last_action_ts < config.min_action_interval_s:
            state.plan_until = state.last_action_ts + config.min_action_interval_s
            return None
        if state.pending:
            state.expire_pending(now, config.actions.engage_user.max_activity_age_s)
        for channel in state.channels:
            channel.prune(now)

        local = self._local_time(now, state.settings.timezone)
        signals = self._signals(state, now, local)
        factors = self._factors[state.mood]
        pre_drawn = iter(rolls or ())
        checks: list[ActionCheck] = []
        plan: list[float] = []
        rules = self._rules[state.mood]
        for proposal in iter_proposals(signals, factors, rules):
            check = proposal.check
            if check.eligible and check.rate_per_min > 0:
                probability = 1.0 - math.exp(-check.rate_per_min * window / 60.0)
                roll = next(pre_drawn, None)
                check = ActionCheck(check.action, check.channel_id, check.blocked_by, check.thresholds,
                                    check.rate_per_min, probability, self._rng.random() if roll is None else roll)
                plan.append(check.rate_per_min)
            checks.append(check)
            if check.fired:
                mood = self._moods[state.mood]
                debug = DecisionDebug(signals, tuple(checks), window,
                                      {t: mood.trait(t) for t in TRAITS})
                decision = self._act(state, signals, mood, proposal, debug, now)
                state.plan_until = now + config.min_action_interval_s
                return decision
        state.plan = tuple(plan)
        state.plan_until = now + stable_for(signals, checks, factors, rules,
                                            config.momentum_half_life_s, self._horizon(state, now, local))
        return None

    def _horizon(self, state: ServerState, now: float, local: datetime) -> Horizon:
        into_hour = local.minute * 60 + local.second + local.microsecond / 1e6
        cooldown = self._config.actions.engage_user.repeat_cooldown_s

        def activity(channel_id: int) -> ChannelActivity | None:
            return next((c for c in state.channels if c.channel_id == channel_id), None)

        def window_change(channel_id: int) -> float:
            found = activity(channel_id)
            return math.inf if found is None else found.recent_window_changes_in(now)

        def hour_drop(channel_id: int, limit: int) -> float:
            found = activity(channel_id)
            return 0.0 if found is None else found.hour_drops_to_in(now, limit)

        def repeat_ends(view: PendingView) -> float:
            until = state.engaged_until(view.signal, cooldown)
            return 0.0 if until is None else max(0.0, until - now)

        return Horizon(
            to_next_hour=max(0.0, 3600.0 - into_hour),
            window_change=window_change,
            hour_drop=hour_drop,
            repeat_ends=repeat_ends,
        )

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
        recent_human = (channel.last_human_ts is not None
                        and now - channel.last_human_ts <= self._config.reply_window_s)
        reply_to = channel.last_human_event_id if recent_human else None
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
            reply_to_event_id=reply_to,
        )

    # ---- signals -------------------------------------------------------------------------------

    def _signals(self, state: ServerState, now: float, local: datetime | None = None) -> ServerSignals:
        settings = state.settings
        if local is None:
            local = datetime.fromtimestamp(now, settings.tz)
        weekend = local.weekday() >= 5
        night_hours = self._config.night.weekend if weekend else self._config.night.weekday
        half_life = self._config.momentum_half_life_s
        channels = [self._channel_signals(act.channel_id, act, now, half_life) for act in state.channels]
        if all(act.channel_id != settings.home_channel for act in state.channels):
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
        messages_5m, speakers_5m = activity.recent_counts(now)
        return ChannelSignals(
            channel_id=channel_id,
            messages_5m=messages_5m,
            messages_1h=activity.messages_hour(now),
            momentum=activity.momentum(now, half_life_s),
            speakers_5m=speakers_5m,
            messages_since_miku=activity.messages_since_miku,
            since_human_s=None if activity.last_human_ts is None else now - activity.last_human_ts,
            since_miku_s=None if activity.last_miku_ts is None else now - activity.last_miku_ts,
            fresh_trigger=activity.fresh_trigger,
            last_human_event_id=activity.last_human_event_id,
        )

