"""Heart Flow: how much attention Miku pays, globally and per chat.

A global state (OFFLINE, PEEKING, NORMAL_CHAT, FOCUSED_CHAT) moves on a timer with weighted random
transitions and caps how many chats may be in CHAT and in FOCUSED at once. Each chat has a sub-flow
(ABSENT, CHAT, FOCUSED) driven by an interest score that every message raises and time decays.
CHAT chats reply with a probability from willingness (rises as messages come in, falls after she
speaks); FOCUSED chats run LLM cycles (see `graph.brain.brain`) whose three stages (action
modification, memory activation, processors) `FocusStages` runs in parallel; five no-replies in a row
send them back to ABSENT, and an emoji reaction counts as taking part (it resets the count). The
sub-flow manager's periodic parts: an LLM evaluation of ABSENT<->CHAT within the state's limits
(`evaluation_candidates`, `promote_to_chat`) and random deactivation (`random_deactivation`, with the
injected RNG). Promotions never exceed the current state's limits, and a state change demotes
the least interesting chats first. Per-chat reply budgets enforce the rate limit and the reply-rate
band. Time and randomness are injected: this module never reads a clock or global random itself.
"""
from __future__ import annotations

import asyncio
import enum
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class GlobalState(enum.Enum):
    OFFLINE = "offline"
    PEEKING = "peeking"
    NORMAL_CHAT = "normal_chat"
    FOCUSED_CHAT = "focused_chat"


class ChatState(enum.Enum):
    ABSENT = "absent"
    CHAT = "chat"
    FOCUSED = "focused"


@dataclass(frozen=True)
class StateLimits:
    """How many chats may be in CHAT and in FOCUSED while the global state holds."""

    chat: int
    focused: int

    def __post_init__(self) -> None:
        if self.chat < 0 or self.focused < 0:
            raise ValueError(f"limits must be >= 0, got chat={self.chat} focused={self.focused}")


DEFAULT_LIMITS = {
    GlobalState.OFFLINE: StateLimits(0, 0),
    GlobalState.PEEKING: StateLimits(1, 1),
    GlobalState.NORMAL_CHAT: StateLimits(3, 2),
    GlobalState.FOCUSED_CHAT: StateLimits(4, 4),
}
DEFAULT_DURATIONS_S = {
    GlobalState.OFFLINE: (600.0, 1800.0),
    GlobalState.PEEKING: (600.0, 1800.0),
    GlobalState.NORMAL_CHAT: (1800.0, 5400.0),
    GlobalState.FOCUSED_CHAT: (600.0, 1800.0),
}
DEFAULT_TRANSITIONS = {
    GlobalState.OFFLINE: {GlobalState.PEEKING: 0.7, GlobalState.NORMAL_CHAT: 0.3},
    GlobalState.PEEKING: {GlobalState.NORMAL_CHAT: 0.6, GlobalState.FOCUSED_CHAT: 0.2, GlobalState.OFFLINE: 0.2},
    GlobalState.NORMAL_CHAT: {GlobalState.FOCUSED_CHAT: 0.35, GlobalState.PEEKING: 0.5, GlobalState.OFFLINE: 0.15},
    GlobalState.FOCUSED_CHAT: {GlobalState.NORMAL_CHAT: 0.8, GlobalState.PEEKING: 0.2},
}


def _state(name: Any) -> GlobalState:
    if isinstance(name, GlobalState):
        return name
    try:
        return GlobalState[str(name).upper()]
    except KeyError:
        raise ValueError(f"unknown Heart Flow state {name!r}; expected one of {[s.name for s in GlobalState]}") from None


@dataclass(frozen=True)
class HeartFlowConfig:
    limits: Mapping[GlobalState, StateLimits] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    durations_s: Mapping[GlobalState, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_DURATIONS_S))
    transitions: Mapping[GlobalState, Mapping[GlobalState, float]] = field(default_factory=lambda: dict(DEFAULT_TRANSITIONS))
    initial_state: GlobalState = GlobalState.NORMAL_CHAT
    # interest
    interest_half_life_s: float = 900.0
    weight_addressed: float = 2.0
    weight_length: float = 0.4
    weight_relevance: float = 0.8
    weight_importance: float = 0.5
    weight_memory: float = 0.4  # x the share of memory (FTS5) hits: a topic talked about here before
    chat_threshold: float = 1.5  # ABSENT -> CHAT
    focus_threshold: float = 4.0  # CHAT -> FOCUSED
    absent_threshold: float = 0.4  # CHAT -> ABSENT once interest decays below
    max_consecutive_no_reply: int = 5  # the seed's number
    cleanup_after_s: float = 3600.0
    # willingness (CHAT reply probability)
    base_willingness: float = 0.1
    willingness_gain: float = 0.06
    willingness_after_reply: float = 0.3  # multiplied in after she speaks
    willingness_recovery_s: float = 600.0  # time constant back toward base
    max_reply_probability: float = 0.6
    # reply budget per chat
    rate_limit_replies: int = 6
    rate_limit_window_s: float = 60.0
    reply_ratio_window: int = 40  # human messages looked at for the reply-rate band
    reply_ratio_max: float = 0.3
    reply_ratio_min: float = 0.03
    # sub-flow manager (run from the brain's tick)
    llm_evaluation: bool = True  # ask the LLM whether to join (ABSENT -> CHAT) or leave (CHAT -> ABSENT)
    evaluation_interval_s: float = 300.0
    evaluation_min_interest: float = 0.5  # ABSENT chats below this are not worth an LLM call
    evaluation_max_chats: int = 3  # LLM evaluations per round, at most
    random_deactivation_per_hour: float = 0.1  # chance per hour that a CHAT/FOCUSED chat drifts off
    def __post_init__(self) -> None:
        missing = [s.name for s in GlobalState if s not in self.limits]
        if missing:
            raise ValueError(f"heart flow limits missing for {missing}")
        for state, (low, high) in self.durations_s.items():
            if not 0 < low <= high:
                raise ValueError(f"heart flow duration for {state.name} must be 0 < min <= max, got {(low, high)}")
        for state, targets in self.transitions.items():
            if any(w < 0 for w in targets.values()) or (targets and sum(targets.values()) <= 0):
                raise ValueError(f"heart flow transition weights for {state.name} must be >= 0 and not all 0")
        if not 0 <= self.reply_ratio_min <= self.reply_ratio_max <= 1:
            raise ValueError("reply ratio band must satisfy 0 <= min <= max <= 1")
        if not self.absent_threshold < self.chat_threshold <= self.focus_threshold:
            raise ValueError("thresholds must satisfy absent < chat <= focus")
        if self.max_consecutive_no_reply < 1:
            raise ValueError("max_consecutive_no_reply must be >= 1")
        if self.random_deactivation_per_hour < 0 or self.evaluation_interval_s <= 0 or self.evaluation_max_chats < 0:
            raise ValueError("random_deactivation_per_hour >= 0, evaluation_interval_s > 0 and evaluation_max_chats >= 0 are required")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "HeartFlowConfig":
        """Build from YAML-shaped config: state names as keys, [min, max] durations, {state: weight}."""
        data = dict(data or {})
        kwargs: dict[str, Any] = {}
        if "limits" in data:
            limits = dict(DEFAULT_LIMITS)
            for name, value in (data.pop("limits") or {}).items():
                if isinstance(value, Mapping):
                    limits[_state(name)] = StateLimits(int(value["chat"]), int(value["focused"]))
                else:
                    chat, focused = value
                    limits[_state(name)] = StateLimits(int(chat), int(focused))
            kwargs["limits"] = limits
        if "durations_s" in data:
            durations = dict(DEFAULT_DURATIONS_S)
            for name, value in (data.pop("durations_s") or {}).items():
                low, high = value
                durations[_state(name)] = (float(low), float(high))
            kwargs["durations_s"] = durations
        if "transitions" in data:
            transitions = dict(DEFAULT_TRANSITIONS)
            for name, targets in (data.pop("transitions") or {}).items():
                transitions[_state(name)] = {_state(t): float(w) for t, w in (targets or {}).items()}
            kwargs["transitions"] = transitions
        if "initial_state" in data:
            kwargs["initial_state"] = _state(data.pop("initial_state"))
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown heart_flow settings {sorted(unknown)}")
        kwargs.update(data)
        return cls(**kwargs)


@dataclass
class SubFlow:
    """One chat's attention state."""

    chat_id: str
    state: ChatState = ChatState.ABSENT
    interest: float = 0.0
    interest_at: float = 0.0
    willingness: float = 0.0
    willingness_at: float = 0.0
    consecutive_no_reply: int = 0
    last_message_at: float = 0.0
    state_since: float = 0.0
    recent_words: deque = field(default_factory=lambda: deque(maxlen=200))
    budget: "ReplyBudget" = field(default_factory=lambda: ReplyBudget())


@dataclass
class ReplyBudget:
    """A chat's recent replies (rate limit) and decided human messages (reply-rate band).

    Kept apart from the sub-flow's attention state: it outlives the cleanup of idle sub-flows, so
    a quiet channel's history of being ignored is not forgotten every hour.
    """

    reply_times: deque = field(default_factory=lambda: deque(maxlen=256))
    outcomes: deque = field(default_factory=deque)  # True if she replied to that message
    last_used: float = 0.0


class HeartFlow:
    """The global state machine plus every chat's sub-flow."""

    def __init__(self, config: HeartFlowConfig, *, clock: Callable[[], float], rng: random.Random):
        self.config = config
        self.clock = clock
        self.rng = rng
        now = clock()
        self.state = config.initial_state
        self.state_until = now + self._duration(self.state)
        self.subflows: dict[str, SubFlow] = {}
        self.budgets: dict[str, ReplyBudget] = {}
        self.transitions_log: list[tuple[float, GlobalState]] = [(now, self.state)]

    # -- global state ---------------------------------------------------------------------------

    def _duration(self, state: GlobalState) -> float:
        low, high = self.config.durations_s.get(state, (600.0, 1800.0))
        return self.rng.uniform(low, high)

    @property
    def limits(self) -> StateLimits:
        return self.config.limits[self.state]

    def set_state(self, state: GlobalState, now: float) -> None:
        self.state = state
        self.state_until = now + self._duration(state)
        self.transitions_log.append((now, state))
        self._enforce_limits(now)

    def advance(self, now: float | None = None) -> None:
        """Apply every timed transition due by `now`, decay-based demotions and cleanup."""
        now = self.clock() if now is None else now
        while now >= self.state_until:
            targets = self.config.transitions.get(self.state) or {}
            if not targets:
                self.state_until = now + self._duration(self.state)
                break
            states = list(targets)
            nxt = self.rng.choices(states, weights=[targets[s] for s in states])[0]
            at = self.state_until
            self.set_state(nxt, at)
        for sub in list(self.subflows.values()):
            if sub.state is ChatState.CHAT and self.interest(sub, now) < self.config.absent_threshold:
                self._move(sub, ChatState.ABSENT, now)
            if sub.state is ChatState.ABSENT and now - sub.last_message_at > self.config.cleanup_after_s:
                del self.subflows[sub.chat_id]
        if len(self.budgets) > len(self.subflows):
            for chat_id in [c for c, b in self.budgets.items() if c not in self.subflows and now - b.last_used > 7 * 86400]:
                del self.budgets[chat_id]

    def counts(self) -> dict[ChatState, int]:
        out = {state: 0 for state in ChatState}
        for sub in self.subflows.values():
            out[sub.state] += 1
        return out

    def within_limits(self) -> bool:
        counts = self.counts()
        return counts[ChatState.CHAT] <= self.limits.chat and counts[ChatState.FOCUSED] <= self.limits.focused

    def _enforce_limits(self, now: float) -> None:
        """After the limits shrink: demote the least interesting chats until they fit."""
        limits = self.limits
        focused = sorted((s for s in self.subflows.values() if s.state is ChatState.FOCUSED), key=lambda s: self.interest(s, now))
        while len(focused) > limits.focused:
            sub = focused.pop(0)
            self._move(sub, ChatState.CHAT, now)
        chat = sorted((s for s in self.subflows.values() if s.state is ChatState.CHAT), key=lambda s: self.interest(s, now))
        while len(chat) > limits.chat:
            self._move(chat.pop(0), ChatState.ABSENT, now)

    # -- sub-flows ------------------------------------------------------------------------------

    def subflow(self, chat_id: str, now: float) -> SubFlow:
        sub = self.subflows.get(chat_id)
        if sub is None:
            budget = self.budgets.setdefault(chat_id, ReplyBudget())
            sub = SubFlow(chat_id, interest_at=now, willingness=self.config.base_willingness, willingness_at=now, last_message_at=now, state_since=now, budget=budget)
            self.subflows[chat_id] = sub
        sub.budget.last_used = now
        return sub

    def interest(self, sub: SubFlow, now: float) -> float:
        dt = max(0.0, now - sub.interest_at)
        return sub.interest * math.pow(0.5, dt / self.config.interest_half_life_s)

    def message_interest(self, sub: SubFlow, *, addressed: bool, length: int, relevance: float, importance: float,
                         memory: float = 0.0) -> float:
        """Interest one message adds to its chat. `memory` (0..1) is how much the memory knows about its
        topic here (full-text hits). A chat where she has been below the reply-rate band for a whole
        window gets extra attention, so quiet channels are not ignored forever."""
        cfg = self.config
        score = (
            (cfg.weight_addressed if addressed else 0.0)
            + cfg.weight_length * min(length, 200) / 200
            + cfg.weight_relevance * relevance
            + cfg.weight_importance * importance
            + cfg.weight_memory * max(0.0, min(1.0, memory))
        )
        ratio = self.reply_ratio(sub)
        if ratio is not None and ratio < cfg.reply_ratio_min and len(sub.budget.outcomes) >= cfg.reply_ratio_window // 2:
            score += cfg.chat_threshold
        return score

    def _move(self, sub: SubFlow, state: ChatState, now: float) -> None:
        if sub.state is state:
            return
        sub.state = state
        sub.state_since = now
        sub.consecutive_no_reply = 0
        if state is ChatState.ABSENT:
            sub.interest = min(self.interest(sub, now), self.config.absent_threshold)
            sub.interest_at = now

    def observe(self, sub: SubFlow, interest: float, now: float) -> None:
        """A message arrived in this chat: raise interest and willingness, then try to promote."""
        cfg = self.config
        sub.interest = self.interest(sub, now) + interest
        sub.interest_at = now
        sub.last_message_at = now
        sub.willingness = min(1.0, self.willingness(sub, now) + cfg.willingness_gain * interest)
        sub.willingness_at = now
        self._promote(sub, now)

    def _promote(self, sub: SubFlow, now: float) -> None:
        counts = self.counts()
        limits = self.limits
        level = sub.interest
        if sub.state is not ChatState.FOCUSED and level >= self.config.focus_threshold and counts[ChatState.FOCUSED] < limits.focused:
            self._move(sub, ChatState.FOCUSED, now)
            return
        if sub.state is ChatState.ABSENT and level >= self.config.chat_threshold and counts[ChatState.CHAT] < limits.chat:
            self._move(sub, ChatState.CHAT, now)

    def willingness(self, sub: SubFlow, now: float) -> float:
        """Relaxes exponentially back toward the base willingness."""
        base = self.config.base_willingness
        dt = max(0.0, now - sub.willingness_at)
        return base + (sub.willingness - base) * math.exp(-dt / self.config.willingness_recovery_s)

    def reply_probability(self, sub: SubFlow, message_interest: float, now: float) -> float:
        """Chance that a CHAT chat answers an unaddressed message."""
        cfg = self.config
        p = self.willingness(sub, now) * (0.5 + message_interest)
        ratio = self.reply_ratio(sub)
        if ratio is not None and ratio < cfg.reply_ratio_min:
            p *= 2.0  # she has been too quiet here: lean in
        return max(0.0, min(cfg.max_reply_probability, p))

    # -- reply budget ---------------------------------------------------------------------------

    def reply_ratio(self, sub: SubFlow) -> float | None:
        if len(sub.budget.outcomes) < 10:
            return None
        return sum(sub.budget.outcomes) / len(sub.budget.outcomes)

    def over_ratio(self, sub: SubFlow) -> bool:
        """Replying now would push the recent reply ratio over the band's top."""
        window = self.config.reply_ratio_window
        recent = list(sub.budget.outcomes)[-(window - 1):] if window > 1 else []
        return (sum(recent) + 1) / (len(recent) + 1) > self.config.reply_ratio_max and len(recent) >= 5

    def rate_limited(self, sub: SubFlow, now: float) -> float:
        """Seconds until the next reply is allowed in this chat (0 if allowed now)."""
        cfg = self.config
        times = [t for t in sub.budget.reply_times if now - t < cfg.rate_limit_window_s]
        if len(times) < cfg.rate_limit_replies:
            return 0.0
        return max(0.0, times[-cfg.rate_limit_replies] + cfg.rate_limit_window_s - now)

    def record_outcome(self, sub: SubFlow, replied: bool, now: float) -> None:
        """A human message was decided: count it for the reply-rate band and the focus loop."""
        cfg = self.config
        sub.budget.outcomes.append(replied)
        while len(sub.budget.outcomes) > cfg.reply_ratio_window:
            sub.budget.outcomes.popleft()
        if replied:
            sub.budget.reply_times.append(now)
            sub.consecutive_no_reply = 0
            # Below the base after speaking, recovering with time: she does not talk twice in a row.
            sub.willingness = min(self.willingness(sub, now), cfg.base_willingness) * cfg.willingness_after_reply
            sub.willingness_at = now

    def record_focus_reaction(self, sub: SubFlow) -> None:
        """A focused cycle reacted with an emoji: she took part, so the no-reply count starts again."""
        sub.consecutive_no_reply = 0

    def record_focus_no_reply(self, sub: SubFlow, now: float) -> None:
        """A focused cycle did nothing; `max_consecutive_no_reply` (5) in a row send the chat to ABSENT."""
        sub.consecutive_no_reply += 1
        if sub.state is ChatState.FOCUSED and sub.consecutive_no_reply >= self.config.max_consecutive_no_reply:
            self._move(sub, ChatState.ABSENT, now)
            sub.interest = 0.0

    # -- sub-flow manager: LLM evaluation and random deactivation --------------------------------

    def evaluation_candidates(self, now: float) -> tuple[list[SubFlow], list[SubFlow]]:
        """(ABSENT chats worth asking about joining, CHAT chats worth asking about leaving), most
        interesting first, at most `evaluation_max_chats` in all; joins only while CHAT has room."""
        cfg = self.config
        budget = cfg.evaluation_max_chats
        free = self.limits.chat - self.counts()[ChatState.CHAT]
        absent = sorted(
            (s for s in self.subflows.values() if s.state is ChatState.ABSENT
             and cfg.evaluation_min_interest <= self.interest(s, now) < cfg.chat_threshold),
            key=lambda s: -self.interest(s, now))
        join = absent[:max(0, min(free, budget))]
        chatting = sorted((s for s in self.subflows.values() if s.state is ChatState.CHAT), key=lambda s: self.interest(s, now))
        leave = chatting[:max(0, budget - len(join))]
        return join, leave

    def promote_to_chat(self, sub: SubFlow, now: float) -> bool:
        """ABSENT -> CHAT on the LLM's word, only if the state's CHAT limit has room."""
        if sub.state is not ChatState.ABSENT or self.counts()[ChatState.CHAT] >= self.limits.chat:
            return False
        self._move(sub, ChatState.CHAT, now)
        sub.interest = max(self.interest(sub, now), self.config.chat_threshold)
        sub.interest_at = now
        return True

    def demote_to_absent(self, sub: SubFlow, now: float) -> None:
        self._move(sub, ChatState.ABSENT, now)

    def random_deactivation(self, elapsed_s: float) -> list[str]:
        """Each CHAT/FOCUSED chat drifts off to ABSENT with the chance of `random_deactivation_per_hour`
        over `elapsed_s` (so the rate does not depend on how often this runs). Returns the chats."""
        rate = self.config.random_deactivation_per_hour
        if rate <= 0 or elapsed_s <= 0:
            return []
        chance = 1.0 - math.exp(-rate * elapsed_s / 3600.0)
        now = self.clock()
        gone = []
        for sub in sorted(self.subflows.values(), key=lambda s: s.chat_id):
            if sub.state is not ChatState.ABSENT and self.rng.random() < chance:
                self._move(sub, ChatState.ABSENT, now)
                gone.append(sub.chat_id)
        return gone

    def snapshot(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "state": self.state.name,
            "limits": {"chat": self.limits.chat, "focused": self.limits.focused},
            "counts": {k.name: v for k, v in counts.items()},
            "chats": {s.chat_id: s.state.name for s in self.subflows.values() if s.state is not ChatState.ABSENT},
        }


# --------------------------------------------------------------------------------------------------
# The focus cycle's three stages


@dataclass
class StageResults:
    """What the three stages of one focus cycle produced, and how long each took (clock seconds)."""

    activation: Any = None
    memories: Any = None
    thought: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


class FocusStages:
    """Runs a cycle's action modification, memory activation and processors (the think step):
    gathered in parallel (the seed's `parallel_processing`), or one after another with `parallel`
    off. In parallel the processors cannot see this cycle's memories, so they get the previous
    cycle's (`earlier_memories`); serially they get this cycle's. The planner always gets this cycle's."""

    def __init__(self, parallel: bool, clock: Callable[[], float]):
        self.parallel = parallel
        self.clock = clock

    async def _timed(self, name: str, work: Awaitable[Any], seconds: dict[str, float]) -> Any:
        started = self.clock()
        try:
            return await work
        finally:
            seconds[name] = self.clock() - started

    async def run(
        self,
        modify_actions: Callable[[], Awaitable[Any]],
        activate_memory: Callable[[], Awaitable[Any]],
        process: Callable[[Any], Awaitable[str]],
        earlier_memories: Any = None,
    ) -> StageResults:
        out = StageResults()
        if self.parallel:
            out.activation, out.memories, out.thought = await asyncio.gather(
                self._timed("action_modification", modify_actions(), out.seconds),
                self._timed("memory_activation", activate_memory(), out.seconds),
                self._timed("processors", process(earlier_memories), out.seconds),
            )
        else:
            out.activation = await self._timed("action_modification", modify_actions(), out.seconds)
            out.memories = await self._timed("memory_activation", activate_memory(), out.seconds)
            out.thought = await self._timed("processors", process(out.memories), out.seconds)
        return out
