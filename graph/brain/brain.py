"""The brain: one Discord event in, the actions to carry out back — the decision side of text chat.

`Brain.handle_event` validates the event, stores it in memory, and decides once per message:
never on her own messages or other bots (unless allow-listed); commands (`!modfile`, `!mood`) first;
a mention, a reply to her or a DM is always answered unless a blackout (voice session -> `queue`,
draw/look -> `blocked`) or the per-chat rate limit says otherwise, and then the user is told;
other messages go through Heart Flow (CHAT: reply by probability; FOCUSED: an LLM
observe -> think -> plan -> execute cycle that re-plans when messages arrive while it plans).
The LLM (`complete`) and the blackout check (`check_feature`) are injected async callables, and so
are the clock and the random generator, so every rule is testable with deterministic fakes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from graph.brain.actions import (
    CORE_ACTIONS,
    ActionContext,
    ActionRegistry,
    BaseAction,
    ChatMode,
    default_registry,
)
from graph.brain.activation import ActionModifier, ActivationResult
from graph.brain.events import (
    ALLOW,
    FEATURE_AUTONOMOUS,
    FEATURE_TEXT_MESSAGES,
    BlockedAction,
    BrainAction,
    FeatureCheck,
    MemberJoinEvent,
    MessageEvent,
    MoodEvent,
    PresenceEvent,
    Prompt,
    QueueAction,
    RateLimitedAction,
    ReplyAction,
    SendAction,
    SwitchPersonaAction,
    parse_event,
)
from graph.brain.heartflow import ChatState, HeartFlow, HeartFlowConfig, SubFlow
from graph.brain.judge import JudgeCache, LLMJudge
from graph.brain.memory import MemoryStore, StoredMessage, importance_score
from graph.brain.moods import (
    MoodScheduler,
    MoodState,
    load_mood_descriptions,
    mood_scope,
)
from graph.brain.personas import PersonaLibrary, load_personas
from graph.brain.prompts import ChatContext, PromptBuilder
from graph.web import WEB_COMMANDS, WebCommands, WebConfig

log = logging.getLogger(__name__)

Complete = Callable[[str, str | None], Awaitable[str]]
CheckFeature = Callable[[str], Awaitable[FeatureCheck]]

REPO_ROOT = Path(__file__).resolve().parents[2]
_WORD = re.compile(r"[^\W\d_]{4,}|[\u4e00-\u9fff]{2,}", re.UNICODE)


# Features whose check failing means "no": they need the GPUs a voice session may be using.
FAIL_CLOSED_FEATURES = frozenset({"image_generation", "vision"})


async def allow_everything(feature: str) -> FeatureCheck:
    """The blackout check when no controller is wired: nothing is blacked out."""
    return ALLOW


@dataclass(frozen=True)
class BrainConfig:
    """Everything configurable about the brain (configs/brain.yaml)."""

    self_user_id: str | None = None
    bot_allow_list: tuple[str, ...] = ()
    memory_path: str = ".miku/brain.sqlite3"
    retention_days: float = 30.0
    retention_interval_s: float = 3600.0
    persona_dir: str = "configs/personas"
    default_persona: str = "miku"
    moods_path: str = "configs/moods.yaml"
    default_mood: str = "neutral"
    mood_rotation_s: tuple[float, float] = (3 * 3600.0, 6 * 3600.0)
    mood_exclude_from_rotation: tuple[str, ...] = ("asleep",)
    heart_flow: HeartFlowConfig = field(default_factory=HeartFlowConfig)
    actions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    judge_timeout_s: float = 5.0
    judge_cache_ttl_s: float = 30.0
    llm_timeout_s: float = 60.0
    generate_replies: bool = True
    think_step: bool = True
    max_replans: int = 2
    context_hours: float = 6.0
    context_messages: int = 12
    judge_context_messages: int = 3  # newest messages of a cycle that judges see
    user_memory_days: float = 7.0
    user_memory_messages: int = 5
    mute_duration_s: int = 600
    dedup_cache_size: int = 100_000
    welcome_members: bool = True
    command_prefix: str = "!"
    rate_limited_message: str | None = "I'm getting lots of messages here, give me a moment and ask me again! ⏳"
    queued_message: str | None = "🎤 I'm in a voice chat right now; I'll answer this when I'm back!"
    welcome_message: str = "Welcome, {name}! 🎵"
    web: Mapping[str, Any] = field(default_factory=dict)  # !news/!meme/!search sources (graph.web.WebConfig)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, base_dir: str | Path | None = None) -> "BrainConfig":
        """Build from YAML-shaped data; relative paths are resolved against `base_dir` (default: repo root)."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown brain settings {sorted(unknown)}; expected some of {sorted(known)}")
        base = Path(base_dir) if base_dir is not None else REPO_ROOT
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "heart_flow":
                value = HeartFlowConfig.from_mapping(value)
            elif key in ("bot_allow_list", "mood_exclude_from_rotation"):
                value = tuple(str(v) for v in (value or ()))
            elif key == "mood_rotation_s":
                low, high = value
                value = (float(low), float(high))
            elif key in ("persona_dir", "moods_path", "memory_path") and value not in (None, ":memory:"):
                path = Path(str(value)).expanduser()
                value = str(path if path.is_absolute() else base / path)
            elif key == "self_user_id" and value is not None:
                value = str(value)
            kwargs[key] = value
        for key in ("persona_dir", "moods_path", "memory_path"):
            if key not in kwargs and getattr(cls, key, None):
                default = Path(getattr(cls, key))
                kwargs[key] = str(default if default.is_absolute() else base / default)
        return cls(**kwargs)

    @staticmethod
    def read_file(path: str | Path) -> dict[str, Any]:
        """The `brain:` mapping of a config file (or the whole file when it has no `brain:` key)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"brain config {path} not found") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: the brain config must be a mapping")
        return dict(data.get("brain", data))

    @classmethod
    def load(cls, path: str | Path) -> "BrainConfig":
        return cls.from_mapping(cls.read_file(path))


@dataclass(frozen=True)
class Plan:
    """What a focused cycle's planner chose."""

    action: str
    parallel: tuple[str, ...] = ()
    reason: str = ""


def parse_plan(text: str | None, usable: list[str]) -> Plan:
    """Read the planner's JSON (`{"action": ..., "parallel": [...], "reason": ...}`) strictly.

    Anything unparsable or naming an unusable action means no_reply: she never acts on a guess.
    """
    if not text:
        return Plan("no_reply", reason="empty plan")
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("action"), str):
            action = obj["action"].strip().lower()
            if action not in usable:
                return Plan("no_reply", reason=f"planner chose unusable action {action!r}")
            parallel = obj.get("parallel") or []
            parallel = tuple(p for p in parallel if isinstance(p, str) and p in usable and p != action) if isinstance(parallel, list) else ()
            return Plan(action, parallel, str(obj.get("reason", ""))[:300])
    return Plan("no_reply", reason="no JSON plan")


@dataclass
class _FocusLoop:
    """Per focused chat: messages waiting for the next cycle and the lock that serialises cycles."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: list[MessageEvent] = field(default_factory=list)
    cycles: int = 0
    replans: int = 0


class Brain:
    """Decides what Miku does for each Discord event. Build with `await Brain.create(config, ...)`."""

    def __init__(
        self,
        config: BrainConfig,
        *,
        memory: MemoryStore,
        personas: PersonaLibrary,
        moods: MoodScheduler,
        registry: ActionRegistry | None = None,
        complete: Complete | None = None,
        check_feature: CheckFeature | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.memory = memory
        self.personas = personas
        self.moods = moods
        self.complete = complete
        self._check_feature = check_feature or allow_everything
        self.clock = clock
        self.rng = rng or random.Random()
        self.heartflow = HeartFlow(config.heart_flow, clock=clock, rng=self.rng)
        self.actions: dict[str, BaseAction] = (registry or default_registry()).build(config.actions)
        self.judge_cache = JudgeCache(config.judge_cache_ttl_s, clock)
        self.judge = LLMJudge(self._judge_complete if complete else None, self.judge_cache, config.judge_timeout_s)
        self.modifier = ActionModifier(self.actions, self.judge, self.rng)
        self.prompts = PromptBuilder(text_history=config.context_messages, memory_lines=config.user_memory_messages)
        self.web = WebCommands(WebConfig.from_mapping(config.web), rng=self.rng)
        self._seen_messages: OrderedDict[str, None] = OrderedDict()
        self._seen_events: OrderedDict[str, None] = OrderedDict()
        self._focus: dict[str, _FocusLoop] = {}
        self._rate_notice_until: dict[str, float] = {}
        self._last_retention = clock()
        self.presence: dict[str, str] = {}
        self.stats: dict[str, int] = {
            "events": 0,
            "messages": 0,
            "duplicates": 0,
            "ignored_self": 0,
            "ignored_bots": 0,
            "replies": 0,
            "rate_limited": 0,
            "queued": 0,
            "blocked": 0,
            "focus_cycles": 0,
            "replans": 0,
            "llm_calls": 0,
            "llm_failures": 0,
        }

    @classmethod
    async def create(
        cls,
        config: BrainConfig | None = None,
        *,
        complete: Complete | None = None,
        check_feature: CheckFeature | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        registry: ActionRegistry | None = None,
        memory: MemoryStore | None = None,
        mood_descriptions: Mapping[str, str] | None = None,
    ) -> "Brain":
        """Load personas and moods, open memory, and build a brain."""
        config = config or BrainConfig.from_mapping({})
        personas = PersonaLibrary(load_personas(config.persona_dir), config.default_persona)
        descriptions = dict(mood_descriptions) if mood_descriptions is not None else load_mood_descriptions(config.moods_path)
        rng = rng or random.Random()
        moods = MoodScheduler(
            descriptions,
            default=config.default_mood,
            rotation_interval_s=config.mood_rotation_s,
            exclude_from_rotation=config.mood_exclude_from_rotation,
            clock=clock,
            rng=rng,
        )
        memory = memory or await MemoryStore.open(config.memory_path)
        return cls(config, memory=memory, personas=personas, moods=moods, registry=registry, complete=complete, check_feature=check_feature, clock=clock, rng=rng)

    async def close(self) -> None:
        await self.web.close()
        await self.memory.close()

    async def check_feature(self, feature: str) -> FeatureCheck:
        """The injected blackout check, made safe: if the controller cannot answer, text chat stays
        open (never silent on mentions) and the GPU-heavy features stay closed (never overload voice)."""
        try:
            return FeatureCheck.coerce(await self._check_feature(feature))
        except Exception as exc:
            log.warning("feature check for %s failed (%s: %s)", feature, type(exc).__name__, exc)
            if feature in FAIL_CLOSED_FEATURES:
                return FeatureCheck(False, "I can't do that right now, please try again later.", False)
            return ALLOW

    # -- public API -------------------------------------------------------------------------------

    async def handle_event(self, raw: Any) -> dict[str, Any]:
        """Validate and handle one event; returns `{"actions": [...]}`. Raises EventValidationError."""
        event = parse_event(raw)
        self.stats["events"] += 1
        self.heartflow.advance(self.clock())
        if isinstance(event, MessageEvent):
            actions = await self._on_message(event)
        elif not self._first_time(self._seen_events, event.event_id):
            self.stats["duplicates"] += 1
            actions = []
        elif isinstance(event, MoodEvent):
            actions = self._on_mood(event)
        elif isinstance(event, MemberJoinEvent):
            actions = await self._on_member_join(event)
        else:
            actions = self._on_presence(event)
        return {"actions": [a.to_dict() for a in actions]}

    async def tick(self) -> dict[str, Any]:
        """Periodic work: Heart Flow timers and cleanup, mood rotation, memory retention."""
        now = self.clock()
        self.heartflow.advance(now)
        for chat_id in [c for c in self._focus if c not in self.heartflow.subflows]:
            if not self._focus[chat_id].lock.locked():
                del self._focus[chat_id]
        rotated = self.moods.rotate_due(now)
        pruned = 0
        if now - self._last_retention >= self.config.retention_interval_s:
            pruned = await self.memory.prune(now, self.config.retention_days * 86400.0)
            self._last_retention = now
        return {"state": self.heartflow.state.name, "moods_rotated": len(rotated), "pruned": pruned}

    def current_mood(self, guild_id: str | None, channel_id: str | None = None) -> MoodState:
        """The mood of a server (or of one DM channel); the voice graph reads this for its prompt."""
        return self.moods.current(mood_scope(guild_id, channel_id))

    async def voice_prompt(self, *, guild_id: str | None, channel_id: str | None, user_id: str, user_name: str, text: str) -> Prompt:
        """The prompt for a spoken reply: same persona and mood, four messages of history."""
        now = self.clock()
        history = await self.memory.channel_context(channel_id, now=now, hours=self.config.context_hours, limit=self.prompts.voice_history) if channel_id else []
        return self.prompts.build(
            persona=self.personas.active(guild_id),
            mood=self.current_mood(guild_id, channel_id),
            chat=ChatContext(voice=True),
            history=history,
            user_name=user_name,
            user_text=text,
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "heart_flow": self.heartflow.snapshot(),
            "stats": dict(self.stats),
            "judge_cache": {"hits": self.judge_cache.hits, "misses": self.judge_cache.misses, "hit_rate": self.judge_cache.hit_rate},
        }

    # -- messages ---------------------------------------------------------------------------------

    def _first_time(self, seen: OrderedDict[str, None], key: str) -> bool:
        if key in seen:
            return False
        seen[key] = None
        if len(seen) > self.config.dedup_cache_size:
            seen.popitem(last=False)
        return True

    def _is_self(self, ev: MessageEvent) -> bool:
        return ev.author_is_self or (self.config.self_user_id is not None and ev.author_id == self.config.self_user_id)

    async def _on_message(self, ev: MessageEvent) -> list[BrainAction]:
        self.stats["messages"] += 1
        # Claim before the first await: a duplicate arriving concurrently sees the claim.
        if not self._first_time(self._seen_messages, ev.message_id):
            self.stats["duplicates"] += 1
            return []
        is_self = self._is_self(ev)
        ignored_bot = ev.author_is_bot and not is_self and ev.author_id not in self.config.bot_allow_list
        stored = StoredMessage(
            message_id=ev.message_id,
            guild_id=ev.guild_id,
            channel_id=ev.channel_id,
            author_id=ev.author_id,
            author_name=ev.author_name,
            is_bot=ev.author_is_bot,
            is_self=is_self,
            content=ev.content,
            ts=ev.timestamp,
            importance=importance_score(ev.content, addressed=ev.addressed_to_miku, attachments=len(ev.attachments)),
        )
        decides = not (is_self or ignored_bot)
        _, claimed = await self.memory.record_incoming(stored, claim="decided" if decides else None)
        now = self.clock()
        if is_self:
            self.stats["ignored_self"] += 1
            self.heartflow.subflow(ev.channel_id, now).recent_words.extend(self._words(ev.content))
            return []
        if ignored_bot:
            self.stats["ignored_bots"] += 1
            return []
        if not claimed:  # decided before a restart or reconnect
            self.stats["duplicates"] += 1
            return []

        if ev.content.startswith(self.config.command_prefix):
            command = await self._command(ev)
            if command is not None:
                return command

        sub = self.heartflow.subflow(ev.channel_id, now)
        interest = self._message_interest(ev, sub, stored.importance)
        self.heartflow.observe(sub, interest, now)
        if ev.addressed_to_miku:
            sub.recent_words.extend(self._words(ev.content))
            return await self._answer_addressed(ev, sub, now)
        if sub.state is ChatState.CHAT:
            return await self._maybe_chime_in(ev, sub, interest, now)
        if sub.state is ChatState.FOCUSED:
            return await self._focused(ev, sub)
        self.heartflow.record_outcome(sub, False, now)
        return []

    @staticmethod
    def _words(text: str) -> set[str]:
        return {w.lower() for w in _WORD.findall(text)}

    def _message_interest(self, ev: MessageEvent, sub: SubFlow, importance: float) -> float:
        words = self._words(ev.content)
        persona = self.personas.active(ev.guild_id)
        known = set(persona.interests) | set(sub.recent_words)
        relevance = min(1.0, len(words & known) / 3.0) if words else 0.0
        return self.heartflow.message_interest(
            sub, addressed=ev.addressed_to_miku, length=len(ev.content), relevance=relevance, importance=importance
        )

    async def _answer_addressed(self, ev: MessageEvent, sub: SubFlow, now: float) -> list[BrainAction]:
        """Mentions, replies to her and DMs: always answered, or the user is told why not."""
        text_ok = await self.check_feature(FEATURE_TEXT_MESSAGES)
        if not text_ok.allowed:
            # In voice: a draw/look request gets its own blocked message now; anything else waits.
            ctx = self._action_context(ev, (ev,), ChatMode.NORMAL)
            special = self._special_choice(await self.modifier.select(ctx))
            if special is not None:
                actions = await self._execute(special, ctx)
                if actions:
                    self.heartflow.record_outcome(sub, True, now)
                    return actions
            self.stats["queued"] += 1
            self._seen_messages.pop(ev.message_id, None)
            await self.memory.defer_decision(ev.message_id)
            return [
                QueueAction(
                    channel_id=ev.channel_id,
                    message_id=ev.message_id,
                    event_id=ev.event_id,
                    message=text_ok.message or self.config.queued_message,
                )
            ]
        wait = self.heartflow.rate_limited(sub, now)
        if wait > 0:
            self.stats["rate_limited"] += 1
            self.heartflow.record_outcome(sub, False, now)
            notice = None
            if now >= self._rate_notice_until.get(ev.channel_id, 0.0):
                notice = self.config.rate_limited_message
                self._rate_notice_until[ev.channel_id] = now + wait
            return [RateLimitedAction(channel_id=ev.channel_id, message_id=ev.message_id, message=notice, retry_after_s=round(wait, 1))]
        mode = ChatMode.FOCUS if sub.state is ChatState.FOCUSED else ChatMode.NORMAL
        actions = await self._respond(ev, (ev,), mode, allow_special=True)
        self.heartflow.record_outcome(sub, True, now)
        return actions

    async def _maybe_chime_in(self, ev: MessageEvent, sub: SubFlow, interest: float, now: float) -> list[BrainAction]:
        """CHAT state: answer an unaddressed message with a probability from willingness."""
        hf = self.heartflow
        if hf.rate_limited(sub, now) > 0 or hf.over_ratio(sub):
            hf.record_outcome(sub, False, now)
            return []
        if self.rng.random() >= hf.reply_probability(sub, interest, now):
            hf.record_outcome(sub, False, now)
            return []
        if not (await self.check_feature(FEATURE_TEXT_MESSAGES)).allowed:
            hf.record_outcome(sub, False, now)  # in voice: she does not chime in, nothing to queue
            return []
        actions = await self._respond(ev, (ev,), ChatMode.NORMAL, allow_special=False)
        hf.record_outcome(sub, True, now)
        return actions

    def _action_context(self, ev: MessageEvent, batch: tuple[MessageEvent, ...], mode: ChatMode) -> ActionContext:
        """Judges see only the new messages (what activation is about), which also lets the 30 s
        cache answer repeated short messages without another LLM call."""
        persona = self.personas.active(ev.guild_id)
        return ActionContext(
            mode=mode,
            message=ev,
            new_messages=batch,
            context_text="\n".join(m.content for m in batch[-self.config.judge_context_messages:]),
            persona_emoji=persona.emoji,
            image_style=persona.image_style,
            mute_duration_s=self.config.mute_duration_s,
        )

    async def _context_messages(self, ev: MessageEvent, limit: int) -> list[StoredMessage]:
        return await self.memory.channel_context(ev.channel_id, now=max(ev.timestamp, self.clock()), hours=self.config.context_hours, limit=limit)

    @staticmethod
    def _render(messages: list[StoredMessage]) -> str:
        return "\n".join(f"{'Miku' if m.is_self else (m.author_name or m.author_id)}: {m.content}" for m in messages)

    async def _respond(self, ev: MessageEvent, batch: tuple[MessageEvent, ...], mode: ChatMode, *, allow_special: bool) -> list[BrainAction]:
        """Answer `ev`: the highest-priority special action if one activates (addressed only), else a reply;
        parallel actions (emoji) run alongside."""
        ctx = self._action_context(ev, batch, mode)
        activation = await self.modifier.select(ctx)
        special = self._special_choice(activation) if allow_special else None
        actions: list[BrainAction] = []
        if special is not None:
            actions += await self._execute(special, ctx)
        if not actions:
            actions.append(await self._reply(ev))
        for name in activation.usable:
            if self.actions[name].spec.parallel_action:
                actions += await self._execute(name, ctx)
        return actions

    def _special_choice(self, activation: ActivationResult) -> str | None:
        candidates = [n for n in activation.usable if n not in CORE_ACTIONS and not self.actions[n].spec.parallel_action]
        if not candidates:
            return None
        return max(candidates, key=lambda n: self.actions[n].spec.priority)

    async def _execute(self, name: str, ctx: ActionContext) -> list[BrainAction]:
        actions = await self.actions[name].execute(ctx, self.check_feature)
        self.stats["blocked"] += sum(isinstance(a, BlockedAction) for a in actions)
        return actions

    async def _reply(self, ev: MessageEvent, extra_instructions: str = "") -> ReplyAction:
        history = [m for m in await self._context_messages(ev, self.config.context_messages + 1) if m.message_id != ev.message_id]
        user_memory = []
        if self.config.user_memory_messages > 0:
            user_memory = [
                m
                for m in await self.memory.user_context(ev.author_id, now=max(ev.timestamp, self.clock()), days=self.config.user_memory_days, limit=self.config.user_memory_messages + self.config.context_messages)
                if m.channel_id != ev.channel_id
            ]
        prompt = self.prompts.build(
            persona=self.personas.active(ev.guild_id),
            mood=self.current_mood(ev.guild_id, ev.channel_id),
            chat=ChatContext(guild_name=ev.guild_name, channel_name=ev.channel_name, is_dm=ev.is_dm),
            history=history[-self.config.context_messages:],
            user_name=ev.author_name,
            user_text=ev.content,
            user_memory=user_memory,
            extra_instructions=extra_instructions,
        )
        text = None
        if self.config.generate_replies and self.complete is not None:
            text = await self._llm(prompt.as_text(), prompt.system)
        self.stats["replies"] += 1
        return ReplyAction(channel_id=ev.channel_id, reply_to_message_id=ev.message_id, text=text, prompt=prompt)

    async def _llm(self, prompt: str, system: str | None) -> str | None:
        """Call the injected LLM with a timeout; None on failure (the caller degrades, never crashes)."""
        if self.complete is None:
            return None
        self.stats["llm_calls"] += 1
        try:
            return await asyncio.wait_for(self.complete(prompt, system), self.config.llm_timeout_s)
        except Exception as exc:
            self.stats["llm_failures"] += 1
            log.warning("LLM call failed (%s: %s)", type(exc).__name__, exc)
            return None

    async def _judge_complete(self, prompt: str, system: str | None) -> str:
        assert self.complete is not None
        self.stats["llm_calls"] += 1
        return await self.complete(prompt, system)

    # -- focused chats ----------------------------------------------------------------------------

    async def _focused(self, ev: MessageEvent, sub: SubFlow) -> list[BrainAction]:
        """One observe -> think -> plan -> execute cycle over the messages waiting in this chat.

        Messages that arrive while the cycle plans are folded in and the cycle re-plans (bounded);
        an event whose message a running cycle already took returns no actions.
        """
        hf = self.heartflow
        now = self.clock()
        if hf.rate_limited(sub, now) > 0 or hf.over_ratio(sub):
            hf.record_outcome(sub, False, now)
            hf.record_focus_no_reply(sub, now)  # no LLM spent while over budget
            return []
        loop = self._focus.setdefault(sub.chat_id, _FocusLoop())
        loop.pending.append(ev)
        async with loop.lock:
            if not loop.pending:
                return []
            batch = tuple(loop.pending)
            loop.pending.clear()
            replans = 0
            while True:
                latest = batch[-1]
                recent = await self._context_messages(latest, self.config.context_messages)
                context_text = self._render(recent)
                ctx = self._action_context(latest, batch, ChatMode.FOCUS)
                activation = await self.modifier.select(ctx)
                thought = ""
                if self.config.think_step:
                    thought = await self._llm(self._think_prompt(latest, context_text), self.personas.active(latest.guild_id).system_prompt) or ""
                plan_text = await self._llm(self._plan_prompt(latest, context_text, thought, activation), None)
                if loop.pending and replans < self.config.max_replans:
                    batch = batch + tuple(loop.pending)
                    loop.pending.clear()
                    replans += 1
                    self.stats["replans"] += 1
                    continue
                break
            loop.cycles += 1
            self.stats["focus_cycles"] += 1
            plan = parse_plan(plan_text, activation.usable)
            return await self._execute_plan(plan, latest, batch, sub, ctx, thought)

    async def _execute_plan(self, plan: Plan, latest: MessageEvent, batch: tuple[MessageEvent, ...], sub: SubFlow, ctx: ActionContext, thought: str) -> list[BrainAction]:
        hf = self.heartflow
        now = self.clock()
        actions: list[BrainAction] = []
        if plan.action == "reply":
            if (await self.check_feature(FEATURE_TEXT_MESSAGES)).allowed:
                actions.append(await self._reply(latest, f"Your private thought about this chat: {thought}" if thought else ""))
        elif plan.action != "no_reply":
            actions += await self._execute(plan.action, ctx)
        for name in plan.parallel:
            if self.actions[name].spec.parallel_action:
                actions += await self._execute(name, ctx)
        replied = any(not a.type == "react" for a in actions)
        for index, _ in enumerate(batch):
            hf.record_outcome(sub, replied and index == len(batch) - 1, now)
        if not replied:
            hf.record_focus_no_reply(sub, now)
        return actions

    def _think_prompt(self, latest: MessageEvent, context_text: str) -> str:
        mood = self.current_mood(latest.guild_id, latest.channel_id)
        return (
            f"You are reading this chat (your mood: {mood.name}).\n{context_text}\n\n"
            "In one or two sentences, think privately about what is going on and whether you want to say something."
        )

    def _plan_prompt(self, latest: MessageEvent, context_text: str, thought: str, activation: ActivationResult) -> str:
        options = "\n".join(
            f"- {name}: {self.actions[name].spec.description}" + (" (can run alongside another action)" if self.actions[name].spec.parallel_action else "")
            for name in activation.usable
        )
        return (
            f"Chat so far:\n{context_text}\n\nYour thought: {thought or '(none)'}\n\n"
            f"Available actions:\n{options}\n\n"
            'Answer with JSON only: {"action": "<one action>", "parallel": ["<actions that run alongside>"], "reason": "<short>"}'
        )

    # -- commands and other events ------------------------------------------------------------------

    async def _command(self, ev: MessageEvent) -> list[BrainAction] | None:
        """`!modfile switch NAME`, `!modfile info`, `!modfile list`, `!mood [NAME]`; None if not a command."""
        words = ev.content[len(self.config.command_prefix):].split()
        if not words:
            return None
        name, args = words[0].lower(), words[1:]

        def say(text: str) -> ReplyAction:
            return ReplyAction(channel_id=ev.channel_id, reply_to_message_id=ev.message_id, text=text)

        if name == "modfile":
            sub = args[0].lower() if args else "info"
            if sub == "info":
                return [say(self.personas.active(ev.guild_id).info())]
            if sub == "list":
                return [say("Personas: " + ", ".join(self.personas.names()))]
            if sub == "switch" and len(args) == 2:
                persona = self.personas.get(args[1])
                if persona is None:
                    return [say(f"I don't know a persona called {args[1]!r}. Try one of: {', '.join(self.personas.names())}")]
                if persona.feature:
                    verdict = await self.check_feature(persona.feature)
                    if not verdict.allowed:
                        message = verdict.message or f"I can't switch to {persona.display_name or persona.name} right now."
                        return [BlockedAction(channel_id=ev.channel_id, reply_to_message_id=ev.message_id, feature=persona.feature, message=message)]
                self.personas.switch(ev.guild_id, persona.name)
                return [
                    SwitchPersonaAction(guild_id=ev.guild_id, persona=persona.name, display_name=persona.display_name or persona.name),
                    say(f"Switched to {persona.display_name or persona.name}."),
                ]
            return [say("Usage: `!modfile info`, `!modfile list` or `!modfile switch NAME`")]
        if name == "mood":
            scope = mood_scope(ev.guild_id, ev.channel_id)
            if not args:
                mood = self.moods.current(scope)
                return [say(f"I'm feeling {mood.name} right now. ({mood.description})")]
            try:
                mood = self.moods.set(scope, args[0])
            except KeyError:
                return [say(f"I don't have a mood called {args[0]!r}. Moods: {', '.join(self.moods.names())}")]
            return [say(f"Okay, now I'm feeling {mood.name}.")]
        if name in WEB_COMMANDS:
            return [say(await self.web.run(name, " ".join(args), nsfw=ev.channel_nsfw, write=self._web_writer(ev)))]
        return None

    def _web_writer(self, ev: MessageEvent):
        """The LLM in the active persona's voice and mood, for the web commands' summaries (None: no LLM)."""
        if not self.config.generate_replies or self.complete is None:
            return None

        async def write(instruction: str) -> str | None:
            persona = self.personas.active(ev.guild_id)
            chat = ChatContext(guild_name=ev.guild_name, channel_name=ev.channel_name, is_dm=ev.is_dm)
            system = self.prompts.system_prompt(persona, self.current_mood(ev.guild_id, ev.channel_id), chat)
            return await self._llm(instruction, system)

        return write

    def _on_mood(self, ev: MoodEvent) -> list[BrainAction]:
        scope = mood_scope(ev.guild_id, ev.channel_id)
        try:
            mood = self.moods.set(scope, ev.mood)
        except KeyError:
            if ev.channel_id:
                return [SendAction(channel_id=ev.channel_id, text=f"Unknown mood {ev.mood!r}. Moods: {', '.join(self.moods.names())}")]
            return []
        if ev.channel_id:
            return [SendAction(channel_id=ev.channel_id, text=f"Mood changed to {mood.name}.")]
        return []

    async def _on_member_join(self, ev: MemberJoinEvent) -> list[BrainAction]:
        if not (self.config.welcome_members and ev.channel_id):
            return []
        if not (await self.check_feature(FEATURE_AUTONOMOUS)).allowed:
            return []  # autonomous posts pause during voice sessions
        return [SendAction(channel_id=ev.channel_id, text=self.config.welcome_message.format(name=ev.user_name or f"<@{ev.user_id}>"))]

    def _on_presence(self, ev: PresenceEvent) -> list[BrainAction]:
        self.presence[ev.user_id] = ev.status
        return []


__all__ = ["Brain", "BrainConfig", "Plan", "parse_plan", "allow_everything"]
