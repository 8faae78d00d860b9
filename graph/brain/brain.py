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
import dataclasses
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
from graph.brain.activation import ActionModifier, ActivationResult, JudgePrefilter
from graph.brain.buffer import MessageBuffer
from graph.brain.draw_request import is_draw_command
from graph.brain.events import (
    ALLOW,
    FEATURE_AUTONOMOUS,
    FEATURE_TEXT_MESSAGES,
    BlockedAction,
    BrainAction,
    FeatureCheck,
    LookAction,
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
from graph.brain.heartflow import ChatState, FocusStages, HeartFlow, HeartFlowConfig, SubFlow
from graph.brain.judge import JUDGE_SYSTEM, JudgeCache, LLMJudge, parse_judge_answer
from graph.brain.llm import LLMCallOptions, ModelRouting
from graph.brain.memory import MemoryStore, StoredMessage, importance_score
from graph.brain.moods import (
    MoodScheduler,
    MoodState,
    load_mood_descriptions,
    mood_scope,
)
from graph.brain.personas import Persona, PersonaLibrary, load_personas
from graph.brain.prompts import ChatContext, PromptBuilder
from graph.web import WEB_COMMANDS, WebCommands, WebConfig

log = logging.getLogger(__name__)

Complete = Callable[..., Awaitable[str]]  # complete(prompt, system, options: LLMCallOptions | None = None)
CheckFeature = Callable[[str], Awaitable[FeatureCheck]]

REPO_ROOT = Path(__file__).resolve().parents[2]
DM_PERSONA_SCOPE = "dm"  # DMs share one persona; servers have their own (by guild id)


def _persona_scope(guild_id: str | None) -> str:
    return DM_PERSONA_SCOPE if guild_id is None else guild_id
_WORD = re.compile(r"[^\W\d_]{4,}|[\u4e00-\u9fff]{2,}", re.UNICODE)


# Features whose check failing means "no": they need the GPUs a voice session may be using.
FAIL_CLOSED_FEATURES = frozenset({"image_generation", "vision"})


async def allow_everything(feature: str) -> FeatureCheck:
    """The blackout check when no controller is wired: nothing is blacked out."""
    return ALLOW


# what the vision model is told besides the persona's prompt (graph/media, the Vision stage)
LOOK_INSTRUCTIONS = ("The user shared the attached image(s) or video frames. Look at them and answer in "
                     "character, briefly, as a chat message; mention what you actually see.")


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
    normal_judge: str = "judge"  # LLM_JUDGE actions in NORMAL mode: "judge" (with a warning) or "keywords"
    judge_short_message_chars: int = 4  # pre-filter: no judge for complex actions on shorter messages
    judge_description_fit: bool = True  # pre-filter: no judge when a concrete action's words miss the message
    judge_cache_ttl_s: float = 30.0
    llm_timeout_s: float = 60.0
    generate_replies: bool = True
    think_step: bool = True
    max_replans: int = 2
    replan_probability: float = 0.8  # new messages during a cycle: chance that it re-plans (else they wait)
    parallel_stages: bool = True  # focus cycle: action modification, memory activation, processors gathered
    memory_activation_messages: int = 3  # relevant older messages (FTS5) for the think and plan prompts
    memory_activation_days: float = 30.0
    # Message buffer: a user's parts (lines, images) within this window are decided as one message.
    # 0 = off. It delays every decision by the window, so 1-2 s is the useful range.
    message_buffer_s: float = 0.0
    message_buffer_max_parts: int = 8
    message_buffer_max_wait_s: float = 6.0
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
    model_routing: ModelRouting = field(default_factory=ModelRouting)  # persona FROM/ADAPTER -> server names
    # Who may switch the persona (`!modfile switch`) and set the mood (`!mood NAME`, member mood events):
    # role names per command, empty = everyone (like the bot's voice-command permissions).
    command_roles: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {"persona": (), "mood": ()})
    admins_always_allowed: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.replan_probability <= 1.0:
            raise ValueError(f"replan_probability must be in [0, 1], got {self.replan_probability}")
        if self.memory_activation_messages < 0 or self.memory_activation_days <= 0:
            raise ValueError("memory_activation_messages must be >= 0 and memory_activation_days > 0")
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
            elif key == "model_routing":
                value = ModelRouting.from_mapping(value)
            elif key == "command_roles":
                value = dict(value or {})
                unknown_commands = set(value) - {"persona", "mood"}
                if unknown_commands:
                    raise ValueError(f"command_roles: unknown commands {sorted(unknown_commands)}; expected persona, mood")
                if not all(isinstance(v, (list, tuple)) and all(isinstance(r, str) for r in v) for v in value.values()):
                    raise ValueError("command_roles: each command needs a list of role names")
                value = {"persona": (), "mood": (), **{k: tuple(v) for k, v in value.items()}}
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
    memories: list[StoredMessage] | None = None  # the last cycle's activated memories (for parallel thinking)
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
        sleep: Callable[[float], Awaitable[None]] | None = None,
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
        self.modifier = ActionModifier(
            self.actions, self.judge, self.rng, normal_judge=config.normal_judge,
            prefilter=JudgePrefilter(config.judge_short_message_chars, config.judge_description_fit))
        self.stages = FocusStages(config.parallel_stages, clock)
        self.buffer = MessageBuffer(config.message_buffer_s, clock=clock, sleep=sleep or asyncio.sleep,
                                    max_parts=config.message_buffer_max_parts, max_wait_s=max(config.message_buffer_max_wait_s, config.message_buffer_s))
        self.prompts = PromptBuilder(text_history=config.context_messages, memory_lines=config.user_memory_messages)
        self.web = WebCommands(WebConfig.from_mapping(config.web), rng=self.rng)
        self._seen_messages: OrderedDict[str, None] = OrderedDict()
        self._seen_events: OrderedDict[str, None] = OrderedDict()
        self._focus: dict[str, _FocusLoop] = {}
        self._rate_notice_until: dict[str, float] = {}
        self._last_retention = clock()
        self._last_manage = self._last_evaluation = clock()
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
            "replans_skipped": 0,
            "buffered_parts": 0,
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
        sleep: Callable[[float], Awaitable[None]] | None = None,
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
        brain = cls(config, memory=memory, personas=personas, moods=moods, registry=registry, complete=complete,
                    check_feature=check_feature, clock=clock, rng=rng, sleep=sleep)
        await brain.restore_state()  # the active persona and mood survive a restart
        return brain

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
            actions = await self._on_mood(event)
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
        for scope, mood in rotated:
            await self._save_mood(scope, mood)
        pruned = 0
        if now - self._last_retention >= self.config.retention_interval_s:
            pruned = await self.memory.prune(now, self.config.retention_days * 86400.0)
            self._last_retention = now
        drifted = self.heartflow.random_deactivation(now - self._last_manage)
        self._last_manage = now
        evaluated = None
        if now - self._last_evaluation >= self.config.heart_flow.evaluation_interval_s:
            self._last_evaluation = now
            evaluated = await self._evaluate_chats(now)
        return {"state": self.heartflow.state.name, "moods_rotated": len(rotated), "pruned": pruned,
                "deactivated": drifted, "evaluated": evaluated}

    async def _evaluate_chats(self, now: float) -> dict[str, list[str]] | None:
        """The sub-flow manager's LLM evaluation: should she join an ABSENT chat that is warming up
        (only while the state's CHAT limit has room), and is a CHAT chat still worth her attention?"""
        if not self.config.heart_flow.llm_evaluation or self.complete is None:
            return None
        join, leave = self.heartflow.evaluation_candidates(now)
        out: dict[str, list[str]] = {"joined": [], "left": []}

        async def ask(sub: SubFlow, question: str) -> bool | None:
            """The LLM's strict yes/no; None (change nothing) when there is no chat to show or no answer."""
            recent = await self.memory.channel_context(sub.chat_id, now=now, hours=self.config.context_hours, limit=8)
            if not recent:
                return None
            persona = self.personas.active(recent[-1].guild_id)
            prompt = f"Recent chat:\n{self._render(recent)}\n\n{question} Answer yes or no."
            answer = await self._llm(prompt, JUDGE_SYSTEM, self.llm_options(persona))
            return None if answer is None else parse_judge_answer(answer)

        join_votes = await asyncio.gather(*(ask(s, "Should Miku join this conversation now?") for s in join))
        stay_votes = await asyncio.gather(*(ask(s, "Should Miku stay in this conversation?") for s in leave))
        for sub, yes in zip(join, join_votes):
            if yes is True and self.heartflow.promote_to_chat(sub, now):  # re-checks the limit: votes ran at once
                out["joined"].append(sub.chat_id)
        for sub, yes in zip(leave, stay_votes):
            if yes is False and sub.state is ChatState.CHAT:  # a failed call is not a "leave"
                self.heartflow.demote_to_absent(sub, now)
                out["left"].append(sub.chat_id)
        return out

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
            "judges": {"calls": self.judge.calls, "saved_by_prefilter": self.modifier.judge_calls_saved,
                       "saved_by_reason": dict(self.modifier.saved)},
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

        if self.buffer.enabled:
            # A multi-part message (lines or images within the window) is decided once, as one.
            merged = await self.buffer.submit(ev)
            if merged is None:
                self.stats["buffered_parts"] += 1
                return []
            ev = merged
            now = self.clock()

        sub = self.heartflow.subflow(ev.channel_id, now)
        interest = await self._message_interest(ev, sub, stored.importance)
        self.heartflow.observe(sub, interest, now)
        if ev.addressed_to_miku or is_draw_command(ev.content):  # `/draw ...`, `!draw ...` need no mention
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

    async def _message_interest(self, ev: MessageEvent, sub: SubFlow, importance: float) -> float:
        words = self._words(ev.content)
        persona = self.personas.active(ev.guild_id)
        known = set(persona.interests) | set(sub.recent_words)
        relevance = min(1.0, len(words & known) / 3.0) if words else 0.0
        return self.heartflow.message_interest(
            sub, addressed=ev.addressed_to_miku, length=len(ev.content), relevance=relevance, importance=importance,
            memory=await self._memory_weight(ev),
        )

    async def _memory_weight(self, ev: MessageEvent) -> float:
        """0..1: how much of this chat's memory is about what the message says (FTS5 hits, of 3)."""
        if self.config.heart_flow.weight_memory <= 0:
            return 0.0
        try:
            hits = await self.memory.topic_hits(ev.channel_id, [ev.content], limit=3, exclude=ev.message_id)
        except Exception as exc:
            log.warning("memory weight failed (%s: %s)", type(exc).__name__, exc)
            return 0.0
        return hits / 3.0

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
            llm_options=self.llm_options(persona),
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
        # the vision model answers in her voice, with the chat's context: it gets the reply prompt
        return [dataclasses.replace(a, prompt=await self._reply_prompt(ctx.message, LOOK_INSTRUCTIONS))
                if isinstance(a, LookAction) and a.prompt is None else a for a in actions]

    async def _reply(self, ev: MessageEvent, extra_instructions: str = "") -> ReplyAction:
        prompt = await self._reply_prompt(ev, extra_instructions)
        text = None
        if self.config.generate_replies and self.complete is not None:
            text = await self._llm(prompt.as_text(), prompt.system, self.llm_options(self.personas.active(ev.guild_id)))
        self.stats["replies"] += 1
        return ReplyAction(channel_id=ev.channel_id, reply_to_message_id=ev.message_id, text=text, prompt=prompt)

    async def _reply_prompt(self, ev: MessageEvent, extra_instructions: str = "") -> Prompt:
        answered = {ev.message_id, *self.buffer.earlier_parts(ev.message_id)}  # a merged message's parts are the turn
        history = [m for m in await self._context_messages(ev, self.config.context_messages + 1 + len(answered) - 1) if m.message_id not in answered]
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
        return prompt

    @staticmethod
    def llm_options(persona: Persona) -> LLMCallOptions:
        """What the persona says about every LLM call: its FROM model, ADAPTER, temperature, token limit."""
        return LLMCallOptions(model=persona.base_model, adapter=persona.adapter, temperature=persona.temperature,
                              max_tokens=persona.max_tokens, stop=persona.stop)

    async def _llm(self, prompt: str, system: str | None, options: LLMCallOptions | None = None) -> str | None:
        """Call the injected LLM with a timeout; None on failure (the caller degrades, never crashes)."""
        if self.complete is None:
            return None
        self.stats["llm_calls"] += 1
        try:
            return await asyncio.wait_for(self.complete(prompt, system, options), self.config.llm_timeout_s)
        except Exception as exc:
            self.stats["llm_failures"] += 1
            log.warning("LLM call failed (%s: %s)", type(exc).__name__, exc)
            return None

    async def _judge_complete(self, prompt: str, system: str | None, options: LLMCallOptions | None = None) -> str:
        assert self.complete is not None
        self.stats["llm_calls"] += 1
        return await self.complete(prompt, system, options)

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
                persona = self.personas.active(latest.guild_id)
                options = self.llm_options(persona)

                async def think(memories: list[StoredMessage] | None) -> str:
                    if not self.config.think_step:
                        return ""
                    return await self._llm(self._think_prompt(latest, context_text, memories), persona.system_prompt, options) or ""

                stages = await self.stages.run(
                    lambda: self.modifier.select(ctx),
                    lambda: self._activate_memory(latest, batch, recent),
                    think,
                    earlier_memories=loop.memories,
                )
                activation, thought, loop.memories = stages.activation, stages.thought, stages.memories
                plan_text = await self._llm(self._plan_prompt(latest, context_text, thought, activation, stages.memories), None, options)
                if loop.pending and replans < self.config.max_replans:
                    # New messages came in while she planned: look again (with the configured chance),
                    # else they wait for the next cycle.
                    if self.rng.random() < self.config.replan_probability:
                        batch = batch + tuple(loop.pending)
                        loop.pending.clear()
                        replans += 1
                        self.stats["replans"] += 1
                        continue
                    self.stats["replans_skipped"] += 1
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
        if not replied and any(a.type == "react" for a in actions):
            hf.record_focus_reaction(sub)  # an emoji is taking part: the no-reply count starts again
        elif not replied:
            hf.record_focus_no_reply(sub, now)
        return actions

    async def _activate_memory(self, latest: MessageEvent, batch: tuple[MessageEvent, ...], recent: list[StoredMessage]) -> list[StoredMessage]:
        """Memory activation: older messages of this chat about what the new ones talk about (FTS5),
        minus what the recent context already shows. A failing search only loses the memories."""
        if self.config.memory_activation_messages <= 0:
            return []
        try:
            return await self.memory.relevant(
                latest.channel_id, [m.content for m in batch], now=max(latest.timestamp, self.clock()),
                days=self.config.memory_activation_days, limit=self.config.memory_activation_messages,
                exclude=[m.message_id for m in recent] + [m.message_id for m in batch])
        except Exception as exc:
            log.warning("memory activation failed (%s: %s)", type(exc).__name__, exc)
            return []

    def _memory_text(self, memories: list[StoredMessage] | None) -> str:
        if not memories:
            return ""
        return "\n\nYou remember from earlier in this chat:\n" + "\n".join(
            f"- {'you' if m.is_self else (m.author_name or m.author_id)}: {self.prompts._clip(m.content)}" for m in memories)

    def _think_prompt(self, latest: MessageEvent, context_text: str, memories: list[StoredMessage] | None = None) -> str:
        mood = self.current_mood(latest.guild_id, latest.channel_id)
        return (
            f"You are reading this chat (your mood: {mood.name}).\n{context_text}{self._memory_text(memories)}\n\n"
            "In one or two sentences, think privately about what is going on and whether you want to say something."
        )

    def _plan_prompt(self, latest: MessageEvent, context_text: str, thought: str, activation: ActivationResult,
                     memories: list[StoredMessage] | None = None) -> str:
        options = "\n".join(
            f"- {name}: {self.actions[name].spec.description}" + (" (can run alongside another action)" if self.actions[name].spec.parallel_action else "")
            for name in activation.usable
        )
        return (
            f"Chat so far:\n{context_text}\n\nYour thought: {thought or '(none)'}{self._memory_text(memories)}\n\n"
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
                refused = self._refuse("persona", ev.author_roles, ev.author_is_admin)
                if refused:
                    return [say(refused)]
                persona = self.personas.get(args[1])
                if persona is None:
                    return [say(f"I don't know a persona called {args[1]!r}. Try one of: {', '.join(self.personas.names())}")]
                if persona.feature:
                    verdict = await self.check_feature(persona.feature)
                    if not verdict.allowed:
                        message = verdict.message or f"I can't switch to {persona.display_name or persona.name} right now."
                        return [BlockedAction(channel_id=ev.channel_id, reply_to_message_id=ev.message_id, feature=persona.feature, message=message)]
                self.personas.switch(ev.guild_id, persona.name)
                await self._save("persona", _persona_scope(ev.guild_id), persona.name)
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
            refused = self._refuse("mood", ev.author_roles, ev.author_is_admin)
            if refused:
                return [say(refused)]
            try:
                mood = self.moods.set(scope, args[0])
            except KeyError:
                return [say(f"I don't have a mood called {args[0]!r}. Moods: {', '.join(self.moods.names())}")]
            await self._save_mood(scope, mood)
            return [say(f"Okay, now I'm feeling {mood.name}.")]
        if name in WEB_COMMANDS:
            return [say(await self.web.run(name, " ".join(args), nsfw=ev.channel_nsfw, write=self._web_writer(ev)))]
        return None

    def _refuse(self, command: str, roles: tuple[str, ...], is_admin: bool) -> str | None:
        """None when the author may run `command` ("persona" or "mood"), else the refusal to reply.

        Gated like the voice commands: an empty role list lets everyone; admins may always (by default)."""
        wanted = self.config.command_roles.get(command, ())
        if not wanted or (is_admin and self.config.admins_always_allowed):
            return None
        have = {r.casefold() for r in roles}
        if any(r.casefold() in have for r in wanted):
            return None
        what = "switch my persona" if command == "persona" else "change my mood"
        return f"❌ You don't have permission to {what}: it needs one of these roles: " + ", ".join(f"**{r}**" for r in wanted) + "."

    async def _save(self, kind: str, scope: str, value: str) -> None:
        """Persist a setting with the brain's state (SQLite, 0600); a failed write is logged, not fatal."""
        try:
            await self.memory.save_state(kind, scope, value, self.clock())
        except Exception as exc:
            log.warning("could not save %s for %s (%s: %s)", kind, scope, type(exc).__name__, exc)

    async def _save_mood(self, scope: str, mood: MoodState) -> None:
        await self._save("mood", scope, mood.name)

    async def restore_state(self) -> dict[str, int]:
        """Put back the active personas and moods saved before a restart (unknown names are skipped)."""
        restored = {"personas": 0, "moods": 0}
        for scope, (name, _) in (await self.memory.load_state("persona")).items():
            try:
                self.personas.switch(None if scope == DM_PERSONA_SCOPE else scope, name)
                restored["personas"] += 1
            except KeyError:
                log.warning("saved persona %r for %s no longer exists: using the default", name, scope)
        for scope, (name, since) in (await self.memory.load_state("mood")).items():
            if self.moods.restore(scope, name, since):
                restored["moods"] += 1
            else:
                log.warning("saved mood %r for %s no longer exists: using the default", name, scope)
        return restored

    def _web_writer(self, ev: MessageEvent):
        """The LLM in the active persona's voice and mood, for the web commands' summaries (None: no LLM)."""
        if not self.config.generate_replies or self.complete is None:
            return None

        async def write(instruction: str) -> str | None:
            persona = self.personas.active(ev.guild_id)
            chat = ChatContext(guild_name=ev.guild_name, channel_name=ev.channel_name, is_dm=ev.is_dm)
            system = self.prompts.system_prompt(persona, self.current_mood(ev.guild_id, ev.channel_id), chat)
            return await self._llm(instruction, system, self.llm_options(persona))

        return write

    async def _on_mood(self, ev: MoodEvent) -> list[BrainAction]:
        scope = mood_scope(ev.guild_id, ev.channel_id)
        if ev.author_id is not None:  # a member asked (no author: the client or an operator did)
            refused = self._refuse("mood", ev.author_roles, ev.author_is_admin)
            if refused:
                return [SendAction(channel_id=ev.channel_id, text=refused)] if ev.channel_id else []
        try:
            mood = self.moods.set(scope, ev.mood)
        except KeyError:
            if ev.channel_id:
                return [SendAction(channel_id=ev.channel_id, text=f"Unknown mood {ev.mood!r}. Moods: {', '.join(self.moods.names())}")]
            return []
        await self._save_mood(scope, mood)
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
