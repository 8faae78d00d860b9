"""The five autonomous actions as pure functions of a server's signals, its mood and the config.

Each rule picks the channel it would act in, checks its conditions against mood-scaled thresholds and
returns a `Proposal` with the effective rate; the engine rolls the dice. Keeping the rules free of state
and randomness makes each one readable on its own and easy to test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
from graph.autonomous.state import SignalSource
from graph.brain.mood_profiles import MoodProfile


@dataclass(frozen=True, slots=True)
class MoodFactors:
    """One mood's multipliers for one action: on the rate, and on waits and count thresholds."""

    rate: float
    wait: float


def mood_factors(mood: MoodProfile, rules: ActionRules) -> dict[ActionKind, MoodFactors]:
    """Precomputed once per mood: the rules run for every server on every tick."""
    per_action = {
        ActionKind.JOIN_CONVERSATION: rules.join_conversation,
        ActionKind.ENGAGE_USER: rules.engage_user,
        ActionKind.FOMO: rules.fomo,
        ActionKind.BREAK_SILENCE: rules.break_silence,
        ActionKind.SHARE_SOMETHING: rules.share_something,
    }
    return {kind: MoodFactors(rule.rate_factor(mood), rule.wait_factor(mood)) for kind, rule in per_action.items()}


@dataclass(frozen=True, slots=True)
class Proposal:
    """An action's check plus what acting on it would use."""

    check: ActionCheck
    channel: ChannelSignals | None = None
    trigger_event_id: str | None = None
    signal: PendingView | None = None


def _blocked(conditions: dict[str, bool]) -> tuple[str, ...]:
    return tuple(name for name, ok in conditions.items() if not ok)


def _since(value: float | None, uptime_s: float) -> float:
    """Time since something; 'never since start-up' counts as the whole uptime (we cannot know more)."""
    return uptime_s if value is None else value


def _liveliest(signals: ServerSignals) -> ChannelSignals | None:
    return max(signals.channels, key=lambda c: (c.momentum, c.messages_5m), default=None)


def _latest_alive(signals: ServerSignals) -> ChannelSignals | None:
    """The allowed channel a human wrote in most recently, if within the last hour."""
    alive = [c for c in signals.channels if c.alive]
    return min(alive, key=lambda c: c.since_human_s, default=None)


def join_conversation(s: ServerSignals, f: MoodFactors, rule: JoinConversationRule) -> Proposal:
    ch = _liveliest(s)
    wait = f.wait
    need_messages = math.ceil(rule.min_messages_since_miku * wait)
    need_gap = rule.min_gap_s * wait
    conditions = {
        "channel_alive": ch is not None and ch.alive,
        "momentum": ch is not None and ch.momentum >= rule.min_momentum,
        "speakers": ch is not None and ch.speakers_5m >= rule.min_speakers,
        "messages_since_miku": ch is not None and ch.messages_since_miku >= need_messages,
        "gap_since_action": s.since_action_s is None or s.since_action_s >= need_gap,
        "fresh_trigger": ch is not None and ch.fresh_trigger,
        "night": rule.night_allowed or not s.night,
    }
    rate = rule.rate_per_min * f.rate
    check = ActionCheck(
        ActionKind.JOIN_CONVERSATION, ch.channel_id if ch else None, _blocked(conditions),
        {"min_momentum": rule.min_momentum, "min_speakers": rule.min_speakers,
         "min_messages_since_miku": need_messages, "min_gap_s": (need_gap)},
        (rate),
    )
    return Proposal(check, ch, ch.last_human_event_id if ch else None)


def engage_user(s: ServerSignals, f: MoodFactors, rule: EngageUserRule) -> Proposal:
    weights = {
        SignalSource.ACTIVITY: rule.activity_weight,
        SignalSource.CAME_ONLINE: rule.came_online_weight,
        SignalSource.MEMBER_JOIN: rule.member_join_weight,
    }
    candidates = [
        p for p in s.pending
        if not p.repeat and p.age_s <= rule.max_activity_age_s and weights[p.signal.source] > 0
    ]
    # Strongest kind of signal first, newest among equals.
    pick = max(candidates, key=lambda p: (weights[p.signal.source], -p.age_s), default=None)
    ch = _latest_alive(s)
    need_quiet = rule.min_quiet_s * f.wait
    quiet = min(_since(s.since_miku_s, s.uptime_s), _since(s.since_action_s, s.uptime_s))
    conditions = {
        "signal": pick is not None,
        "channel_alive": ch is not None,
        "quiet": quiet >= need_quiet,
        "night": rule.night_allowed or not s.night,
    }
    weight = weights[pick.signal.source] if pick else 0.0
    rate = rule.rate_per_min * f.rate * weight
    check = ActionCheck(
        ActionKind.ENGAGE_USER, ch.channel_id if ch else None, _blocked(conditions),
        {"min_quiet_s": (need_quiet), "max_activity_age_s": rule.max_activity_age_s,
         "signal_weight": weight},
        (rate),
    )
    return Proposal(check, ch, pick.signal.event_id if pick else None, pick)


def fomo(s: ServerSignals, f: MoodFactors, rule: FomoRule) -> Proposal:
    ch = max(s.channels, key=lambda c: (c.messages_since_miku, c.messages_5m), default=None)
    wait = f.wait
    need_messages = math.ceil(rule.min_messages_since_miku * wait)
    need_gap = rule.min_gap_s * wait
    conditions = {
        "channel_alive": ch is not None and ch.alive,
        "messages_since_miku": ch is not None and ch.messages_since_miku >= need_messages,
        "active_chat": ch is not None and ch.messages_5m >= rule.min_messages_5m,
        "gap_since_action": s.since_action_s is None or s.since_action_s >= need_gap,
        "fresh_trigger": ch is not None and ch.fresh_trigger,
        "night": rule.night_allowed or not s.night,
    }
    rate = rule.rate_per_min * f.rate
    check = ActionCheck(
        ActionKind.FOMO, ch.channel_id if ch else None, _blocked(conditions),
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
    conditions = {
        "quiet": quiet >= need_quiet,
        "gap_since_action": _since(s.since_action_s, s.uptime_s) >= need_quiet,
        "unanswered": s.unanswered_breaks < rule.max_unanswered,
        "night": rule.night_allowed or not s.night,
    }
    fresh_signal = any(not p.repeat for p in s.pending)
    rate = rule.rate_per_min * f.rate * (rule.signal_rate_boost if fresh_signal else 1.0)
    check = ActionCheck(
        ActionKind.BREAK_SILENCE, home.channel_id, _blocked(conditions),
        {"min_quiet_s": (need_quiet), "max_unanswered": rule.max_unanswered},
        (rate),
    )
    return Proposal(check, home, None)


def share_something(s: ServerSignals, f: MoodFactors, rule: ShareSomethingRule) -> Proposal:
    ch = _latest_alive(s)
    need_gap = rule.min_gap_s * f.wait
    conditions = {
        "channel_alive": ch is not None,
        "low_activity_hour": ch is not None and ch.messages_1h <= rule.max_messages_1h,
        "calm_now": ch is not None and ch.momentum <= rule.max_momentum,
        "gap_since_action": _since(s.since_action_s, s.uptime_s) >= need_gap,
        "gap_since_miku": ch is not None and _since(ch.since_miku_s, s.uptime_s) >= need_gap,
        "night": rule.night_allowed or not s.night,
    }
    rate = rule.rate_per_min * f.rate
    check = ActionCheck(
        ActionKind.SHARE_SOMETHING, ch.channel_id if ch else None, _blocked(conditions),
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
