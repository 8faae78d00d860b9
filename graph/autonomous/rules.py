"""The five autonomous actions as pure functions of a server's signals, its mood and the config.

Each rule picks the channel it would act in, checks its conditions against mood-scaled thresholds and
returns a `Proposal` with the effective rate; the engine rolls the dice. Keeping the rules free of state
and randomness makes each one readable on its own and easy to test.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import compress
from operator import not_

from graph.autonomous.config import (
    ActionRules,
    BreakSilenceRule,
    EngageUserRule,
    FomoRule,
    JoinConversationRule,
    ShareSomethingRule,
)
from graph.autonomous.decision import (
    ActionCheck,
    ActionKind,
    ChannelSignals,
    PendingView,
    ServerSignals,
)
from graph.autonomous.state import HOUR_WINDOW_S, SignalSource
from graph.brain.mood_profiles import MoodProfile


@dataclass(frozen=True, slots=True)
class MoodFactors:
    """One mood's multipliers for one action: on the rate, on waits, and on count thresholds."""

    rate: float
    wait: float
    count: float


def mood_factors(mood: MoodProfile, rules: ActionRules) -> dict[ActionKind, MoodFactors]:
    """Precomputed once per mood: the rules run for every server on every tick."""
    per_action = {
        ActionKind.JOIN_CONVERSATION: rules.join_conversation,
        ActionKind.ENGAGE_USER: rules.engage_user,
        ActionKind.FOMO: rules.fomo,
        ActionKind.BREAK_SILENCE: rules.break_silence,
        ActionKind.SHARE_SOMETHING: rules.share_something,
    }
    return {kind: MoodFactors(rule.rate_factor(mood), rule.wait_factor(mood), rule.count_factor(mood))
            for kind, rule in per_action.items()}


@dataclass(frozen=True, slots=True)
class Proposal:
    """An action's check plus what acting on it would use."""

    check: ActionCheck
    channel: ChannelSignals | None = None
    trigger_event_id: str | None = None
    signal: PendingView | None = None


def _blocked(names: tuple[str, ...], oks: tuple[bool, ...]) -> tuple[str, ...]:
    """The names of the conditions that failed (itertools in C: this runs for every server on every tick)."""
    return () if all(oks) else tuple(compress(names, map(not_, oks)))


_JOIN = ("channel_alive", "momentum", "speakers", "messages_since_miku", "gap_since_action", "fresh_trigger", "night")
_ENGAGE = ("signal", "channel_alive", "quiet", "night")
_FOMO = ("channel_alive", "messages_since_miku", "active_chat", "gap_since_action", "fresh_trigger", "night")
_BREAK = ("quiet", "gap_since_action", "unanswered", "night")
_SHARE = ("channel_alive", "low_activity_hour", "calm_now", "gap_since_action", "gap_since_miku", "night",
          "feeds_configured")


def _since(value: float | None, uptime_s: float) -> float:
    """Time since something; 'never since start-up' counts as the whole uptime (we cannot know more)."""
    return uptime_s if value is None else value


def _liveliest(signals: ServerSignals) -> ChannelSignals | None:
    return max(signals.channels, key=lambda c: (c.momentum, c.messages_5m), default=None)


def _latest_alive(signals: ServerSignals) -> ChannelSignals | None:
    """The allowed channel a human wrote in most recently, if within the last hour."""
    best = None
    for c in signals.channels:
        since = c.since_human_s
        if since is not None and since <= HOUR_WINDOW_S and (best is None or since < best.since_human_s):
            best = c
    return best


def join_conversation(s: ServerSignals, f: MoodFactors, rule: JoinConversationRule) -> Proposal:
    ch = _liveliest(s)
    need_messages = math.ceil(rule.min_messages_since_miku * f.count)
    need_gap = rule.min_gap_s * f.wait
    gap_ok = s.since_action_s is None or s.since_action_s >= need_gap
    night_ok = rule.night_allowed or not s.night
    if ch is None:
        oks = (False, False, False, False, gap_ok, False, night_ok)
    else:
        oks = (ch.alive, ch.momentum >= rule.min_momentum, ch.speakers_5m >= rule.min_speakers,
               ch.messages_since_miku >= need_messages, gap_ok, ch.fresh_trigger, night_ok)
    rate = rule.rate_per_min * f.rate
    check = ActionCheck(
        ActionKind.JOIN_CONVERSATION, ch.channel_id if ch else None, _blocked(_JOIN, oks),
        {"min_momentum": rule.min_momentum, "min_speakers": rule.min_speakers,
         "min_messages_since_miku": need_messages, "min_gap_s": (need_gap)},
        (rate),
    )
    return Proposal(check, ch, ch.last_human_event_id if ch else None)


def engage_user(s: ServerSignals, f: MoodFactors, rule: EngageUserRule) -> Proposal:
    weights = _engage_weights(rule)
    candidates = [
        p for p in s.pending
        if not p.repeat and p.age_s <= rule.max_activity_age_s and weights[p.signal.source] > 0
    ]
    # Strongest kind of signal first, newest among equals.
    pick = max(candidates, key=lambda p: (weights[p.signal.source], -p.age_s), default=None)
    ch = _latest_alive(s)
    need_quiet = rule.min_quiet_s * f.wait
    quiet = min(_since(s.since_miku_s, s.uptime_s), _since(s.since_action_s, s.uptime_s))
    oks = (pick is not None, ch is not None, quiet >= need_quiet, rule.night_allowed or not s.night)
    weight = weights[pick.signal.source] if pick else 0.0
    rate = rule.rate_per_min * f.rate * weight
    check = ActionCheck(
        ActionKind.ENGAGE_USER, ch.channel_id if ch else None, _blocked(_ENGAGE, oks),
        {"min_quiet_s": (need_quiet), "max_activity_age_s": rule.max_activity_age_s,
         "signal_weight": weight},
        (rate),
    )
    return Proposal(check, ch, pick.signal.event_id if pick else None, pick)


def fomo(s: ServerSignals, f: MoodFactors, rule: FomoRule) -> Proposal:
    ch = max(s.channels, key=lambda c: (c.messages_since_miku, c.messages_5m), default=None)
    need_messages = math.ceil(rule.min_messages_since_miku * f.count)
    need_gap = rule.min_gap_s * f.wait
    gap_ok = s.since_action_s is None or s.since_action_s >= need_gap
    night_ok = rule.night_allowed or not s.night
    if ch is None:
        oks = (False, False, False, gap_ok, False, night_ok)
    else:
        oks = (ch.alive, ch.messages_since_miku >= need_messages, ch.messages_5m >= rule.min_messages_5m,
               gap_ok, ch.fresh_trigger, night_ok)
    rate = rule.rate_per_min * f.rate
    check = ActionCheck(
        ActionKind.FOMO, ch.channel_id if ch else None, _blocked(_FOMO, oks),
        {"min_messages_since_miku": need_messages, "min_messages_5m": rule.min_messages_5m,
         "min_gap_s": (need_gap)},
        (rate),
    )
    return Proposal(check, ch, ch.last_human_event_id if ch else None)


def break_silence(s: ServerSignals, f: MoodFactors, rule: BreakSilenceRule) -> Proposal:
    home = s.channel(s.home_channel_id)
    assert home is not None, "the engine always reports the home channel"
    quiet = min(_since(home.since_human_s, s.uptime_s), _since(home.since_miku_s, s.uptime_s))
    need_quiet = rule.min_quiet_s * f.wait * rule.unanswered_backoff ** s.unanswered_breaks
    oks = (quiet >= need_quiet, _since(s.since_action_s, s.uptime_s) >= need_quiet,
           s.unanswered_breaks < rule.max_unanswered, rule.night_allowed or not s.night)
    fresh_signal = any(not p.repeat for p in s.pending)
    rate = rule.rate_per_min * f.rate * (rule.signal_rate_boost if fresh_signal else 1.0)
    check = ActionCheck(
        ActionKind.BREAK_SILENCE, home.channel_id, _blocked(_BREAK, oks),
        {"min_quiet_s": (need_quiet), "max_unanswered": rule.max_unanswered},
        (rate),
    )
    return Proposal(check, home, None)


def share_something(s: ServerSignals, f: MoodFactors, rule: ShareSomethingRule) -> Proposal:
    ch = _latest_alive(s)
    need_gap = rule.min_gap_s * f.wait
    gap_ok = _since(s.since_action_s, s.uptime_s) >= need_gap
    night_ok = rule.night_allowed or not s.night
    if ch is None:
        oks = (False, False, False, gap_ok, False, night_ok, rule.enabled)
    else:
        oks = (True, ch.messages_1h <= rule.max_messages_1h, ch.momentum <= rule.max_momentum, gap_ok,
               _since(ch.since_miku_s, s.uptime_s) >= need_gap, night_ok, rule.enabled)
    rate = rule.rate_per_min * f.rate
    check = ActionCheck(
        ActionKind.SHARE_SOMETHING, ch.channel_id if ch else None, _blocked(_SHARE, oks),
        {"max_messages_1h": rule.max_messages_1h, "max_momentum": rule.max_momentum,
         "min_gap_s": (need_gap)},
        (rate),
    )
    return Proposal(check, ch, None)


def propose_all(s: ServerSignals, factors: dict[ActionKind, MoodFactors], rules: ActionRules) -> list[Proposal]:
    """Every action's proposal, in priority order."""
    return list(iter_proposals(s, factors, rules))


def iter_proposals(s: ServerSignals, factors: dict[ActionKind, MoodFactors], rules: ActionRules):
    """Proposals in priority order, computed lazily (the engine stops at the first that fires)."""
    yield join_conversation(s, factors[ActionKind.JOIN_CONVERSATION], rules.join_conversation)
    yield engage_user(s, factors[ActionKind.ENGAGE_USER], rules.engage_user)
    yield fomo(s, factors[ActionKind.FOMO], rules.fomo)
    yield break_silence(s, factors[ActionKind.BREAK_SILENCE], rules.break_silence)
    yield share_something(s, factors[ActionKind.SHARE_SOMETHING], rules.share_something)


# ---- how long an evaluation stays true ---------------------------------------------------------
#
# At 10,000 servers the engine cannot afford to re-run every rule for every server on every tick. After
# a full evaluation, `stable_for` says how long the answer (which actions are eligible, at which rates)
# cannot change unless an event arrives; until then a tick only rolls the dice for the eligible actions.
# Each condition either only gets worse as time passes without events (momentum decays, a channel goes
# quiet, a signal ages), only gets better (gaps and quiet times grow, the hour's count falls), or flips
# at a local hour boundary (night). The bound is the earliest time any condition may flip, so it is
# conservative: at worst a server is evaluated a little early. The property test in
# tests/test_autonomous_scale.py checks that decisions are identical with and without this shortcut.

INF = math.inf
_EPS = 1e-6  # seconds shaved off "stops holding at" times against float rounding


@dataclass(frozen=True, slots=True)
class Horizon:
    """Time facts the signals do not carry, all in seconds from now (computed only when a rule asks)."""

    to_next_hour: float  # the next local hour boundary (night starts and ends only there)
    window_change: Callable[[int], float]  # channel -> until its oldest recent message leaves the 5 minutes
    hour_drop: Callable[[int, int], float]  # (channel, limit) -> until messages_1h <= limit
    repeat_ends: Callable[[PendingView], float]  # until a 'repeat' signal stops being one


def _until(need: float, have: float) -> float:
    return max(0.0, need - have)


def _decay_below(value: float, limit: float, half_life_s: float) -> float:
    """Seconds until an exponentially decaying `value` drops below `limit` (it is >= limit now)."""
    if limit <= 0:
        return INF
    return max(0.0, half_life_s * math.log2(value / limit) - _EPS) if value > 0 else 0.0


def _decay_to(value: float, limit: float, half_life_s: float) -> float:
    """Seconds until a decaying `value` is <= `limit` (0 if it already is)."""
    if value <= limit:
        return 0.0
    if limit <= 0:
        return INF
    return half_life_s * math.log2(value / limit)


def _alive_left(c: ChannelSignals) -> float:
    return max(0.0, HOUR_WINDOW_S - c.since_human_s - _EPS) if c.since_human_s is not None else 0.0


def stable_for(
    s: ServerSignals,
    checks: list[ActionCheck],
    factors: dict[ActionKind, MoodFactors],
    rules: ActionRules,
    half_life_s: float,
    h: Horizon,
) -> float:
    """Seconds during which `checks` (every action's eligibility and rate) stay as they are without events."""
    join, engage, fomo_check, break_check, share = checks  # priority order (iter_proposals)
    bound = _join_stable(s, join, factors[ActionKind.JOIN_CONVERSATION], rules.join_conversation, half_life_s, h)
    if bound > 0:
        bound = min(bound, _engage_stable(s, engage, factors[ActionKind.ENGAGE_USER], rules.engage_user, h))
    if bound > 0:
        bound = min(bound, _fomo_stable(s, fomo_check, factors[ActionKind.FOMO], rules.fomo, h))
    if bound > 0:
        bound = min(bound, _break_stable(s, break_check, factors[ActionKind.BREAK_SILENCE], rules.break_silence,
                                         rules.engage_user.max_activity_age_s, h))
    if bound > 0:
        bound = min(bound, _share_stable(s, share, factors[ActionKind.SHARE_SOMETHING], rules.share_something,
                                         half_life_s, h))
    return bound


def _night_make(s: ServerSignals, rule, h: Horizon) -> float:
    return h.to_next_hour if (not rule.night_allowed and s.night) else 0.0


def _night_break(s: ServerSignals, rule, h: Horizon) -> float:
    return h.to_next_hour if (not rule.night_allowed and not s.night) else INF


def _gap_make(s: ServerSignals, need_gap: float) -> float:
    return 0.0 if s.since_action_s is None else _until(need_gap, s.since_action_s)


def _join_stable(s, check, f, rule: JoinConversationRule, hl, h) -> float:
    need_messages = math.ceil(rule.min_messages_since_miku * f.count)
    if check.eligible:
        ch = s.channel(check.channel_id)
        return min(_alive_left(ch), _decay_below(ch.momentum, rule.min_momentum, hl),
                   h.window_change(ch.channel_id), _night_break(s, rule, h),
                   *(h.window_change(c.channel_id) for c in s.channels
                     if c is not ch and c.momentum == ch.momentum))
    best = INF
    for c in s.channels:  # any channel may be (or become) the one the rule looks at
        if (c.alive and c.momentum >= rule.min_momentum and c.speakers_5m >= rule.min_speakers
                and c.messages_since_miku >= need_messages and c.fresh_trigger):
            best = min(best, max(_gap_make(s, rule.min_gap_s * f.wait), _night_make(s, rule, h)))
    return best


def _engage_weights(rule: EngageUserRule) -> dict[SignalSource, float]:
    return {SignalSource.ACTIVITY: rule.activity_weight, SignalSource.CAME_ONLINE: rule.came_online_weight,
            SignalSource.MEMBER_JOIN: rule.member_join_weight}


def _engage_stable(s, check, f, rule: EngageUserRule, h) -> float:
    if not s.pending:
        return INF  # no signal: nothing to engage until an event brings one (eligible needs a signal)
    weights = _engage_weights(rule)
    usable = [p for p in s.pending if weights[p.signal.source] > 0 and p.age_s <= rule.max_activity_age_s]
    alive = [c for c in s.channels if c.alive]
    latest_alive_left = max((_alive_left(c) for c in alive), default=0.0)
    expiries = [max(0.0, rule.max_activity_age_s - p.age_s - _EPS) for p in usable if not p.repeat]
    repeat_ends = [h.repeat_ends(p) for p in usable if p.repeat]
    if check.eligible:
        # the pick (and so the rate) changes when a usable signal expires or a repeat one becomes usable
        return min(latest_alive_left, _night_break(s, rule, h), *expiries, *repeat_ends)
    if not alive or not usable:
        return INF
    repeats = [p for p in usable if p.repeat]
    signal_at = min([0.0] * len(expiries)
                    + [t for t, p in zip(repeat_ends, repeats) if t <= rule.max_activity_age_s - p.age_s],
                    default=INF)
    quiet = min(_since(s.since_miku_s, s.uptime_s), _since(s.since_action_s, s.uptime_s))
    return max(signal_at, _until(rule.min_quiet_s * f.wait, quiet), _night_make(s, rule, h))


def _fomo_stable(s, check, f, rule: FomoRule, h) -> float:
    need_messages = math.ceil(rule.min_messages_since_miku * f.count)
    if check.eligible:
        ch = s.channel(check.channel_id)
        return min(_alive_left(ch), h.window_change(ch.channel_id), _night_break(s, rule, h),
                   *(h.window_change(c.channel_id) for c in s.channels
                     if c is not ch and c.messages_since_miku == ch.messages_since_miku))
    best = INF
    for c in s.channels:
        if (c.alive and c.messages_since_miku >= need_messages and c.messages_5m >= rule.min_messages_5m
                and c.fresh_trigger):
            best = min(best, max(_gap_make(s, rule.min_gap_s * f.wait), _night_make(s, rule, h)))
    return best


def _break_stable(s, check, f, rule: BreakSilenceRule, max_age_s: float, h) -> float:
    # The rate boost ends when a fresh signal expires (conservatively: the first one) and starts when a
    # repeat signal stops being one.
    boost_change = min([max(0.0, max_age_s - p.age_s - _EPS) for p in s.pending if not p.repeat]
                       + [h.repeat_ends(p) for p in s.pending if p.repeat], default=INF)
    if check.eligible:
        return min(_night_break(s, rule, h), boost_change)
    if s.unanswered_breaks >= rule.max_unanswered:
        return INF
    home = s.channel(s.home_channel_id)
    quiet = min(_since(home.since_human_s, s.uptime_s), _since(home.since_miku_s, s.uptime_s))
    need_quiet = rule.min_quiet_s * f.wait * rule.unanswered_backoff ** s.unanswered_breaks
    return max(_until(need_quiet, quiet), _until(need_quiet, _since(s.since_action_s, s.uptime_s)),
               _night_make(s, rule, h))


def _share_stable(s, check, f, rule: ShareSomethingRule, hl, h) -> float:
    ch = _latest_alive(s)
    if check.eligible:
        return min(_alive_left(ch), _night_break(s, rule, h))
    if ch is None or not rule.enabled:
        return INF
    need_gap = rule.min_gap_s * f.wait
    return max(h.hour_drop(ch.channel_id, rule.max_messages_1h), _decay_to(ch.momentum, rule.max_momentum, hl),
               _until(need_gap, _since(s.since_action_s, s.uptime_s)),
               _until(need_gap, _since(ch.since_miku_s, s.uptime_s)), _night_make(s, rule, h))
