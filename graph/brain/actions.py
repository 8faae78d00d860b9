"""Actions Miku can take in a chat, how each one says when it may be used, and the registry plugins use.

An action class declares its activation settings as class attributes (as plugins in the systems this
comes from do). The registry turns each class plus config overrides into a frozen `ActionSpec` and an
instance holding it, so overrides never mutate a class (two brains with different configs can share
the classes). Built-ins: reply, no_reply, emoji (reaction), draw (image generation), look (vision)
and mute (moderation). Execution returns wire actions (`graph.brain.events`); blackouts are checked
through the injected `check_feature` so voice sessions block draw/look with the controller's message.
"""
from __future__ import annotations

import enum
import functools
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from graph.brain.events import (
    FEATURE_IMAGE_GENERATION,
    FEATURE_VISION,
    BlockedAction,
    BrainAction,
    DrawAction,
    FeatureCheck,
    LookAction,
    MessageEvent,
    MuteAction,
    ReactAction,
    ReplyAction,
)
from graph.brain.draw_request import detect_draw_request
from graph.media.vision import image_links

DRAW_WHAT_MESSAGE = "🎨 What should I draw? Tell me, like `draw me a cat on a piano`."


class ActivationType(enum.Enum):
    ALWAYS = "always"
    NEVER = "never"
    RANDOM = "random"
    LLM_JUDGE = "llm_judge"
    KEYWORD = "keyword"


class ChatMode(enum.Enum):
    FOCUS = "focus"
    NORMAL = "normal"
    ALL = "all"  # only meaningful as an action's `mode_enable`


# reply/no_reply are the planner's basic choices: never filtered away by anything.
CORE_ACTIONS = frozenset({"reply", "no_reply"})


@dataclass(frozen=True)
class ActionSpec:
    """The effective activation settings of one action (class defaults + config overrides)."""

    name: str
    description: str
    focus_activation_type: ActivationType = ActivationType.ALWAYS
    normal_activation_type: ActivationType = ActivationType.ALWAYS
    activation_keywords: tuple[str, ...] = ()
    keyword_case_sensitive: bool = False
    random_activation_probability: float = 0.0
    llm_judge_prompt: str = ""
    mode_enable: ChatMode = ChatMode.ALL
    parallel_action: bool = False
    enable_plugin: bool = True
    intent: str = ""  # actions with the same intent cover each other (pre-filter)
    priority: int = 0  # among non-parallel actions activated together, the highest wins

    def __post_init__(self) -> None:
        if not 0.0 <= self.random_activation_probability <= 1.0:
            raise ValueError(
                f"action {self.name!r}: random_activation_probability must be in [0, 1], "
                f"got {self.random_activation_probability}"
            )
        if self.mode_enable not in ChatMode:
            raise ValueError(f"action {self.name!r}: bad mode_enable {self.mode_enable!r}")

    def activation_type(self, mode: ChatMode) -> ActivationType:
        return self.focus_activation_type if mode is ChatMode.FOCUS else self.normal_activation_type

    def enabled_in(self, mode: ChatMode) -> bool:
        return self.enable_plugin and self.mode_enable in (ChatMode.ALL, mode)

    def judge_config(self) -> dict[str, Any]:
        """What shapes this action's LLM judge question: part of the judge cache key."""
        return {
            "name": self.name,
            "description": self.description,
            "llm_judge_prompt": self.llm_judge_prompt,
            "activation_keywords": list(self.activation_keywords),
            "keyword_case_sensitive": self.keyword_case_sensitive,
        }

    def matches_keywords(self, texts: Iterable[str]) -> bool:
        """True when any keyword occurs in any of `texts` (ASCII keywords match whole words)."""
        if not self.activation_keywords:
            return False
        pattern = _keyword_pattern(self.activation_keywords, self.keyword_case_sensitive)
        return any(pattern.search(text) for text in texts)


@functools.lru_cache(maxsize=256)
def _keyword_pattern(keywords: tuple[str, ...], case_sensitive: bool) -> re.Pattern[str]:
    """One alternation per keyword set; ASCII keywords match whole words, CJK ones anywhere."""
    parts = [rf"\b{re.escape(k)}\b" if k.isascii() else re.escape(k) for k in keywords if k]
    return re.compile("|".join(parts) or r"(?!x)x", 0 if case_sensitive else re.IGNORECASE)


_ENUM_FIELDS = {
    "focus_activation_type": ActivationType,
    "normal_activation_type": ActivationType,
    "mode_enable": ChatMode,
}
_SPEC_FIELDS = {f.name for f in fields(ActionSpec)} - {"name"}


def _coerce_override(action: str, key: str, value: Any) -> Any:
    if key not in _SPEC_FIELDS:
        raise ValueError(f"action {action!r}: unknown setting {key!r}; expected one of {sorted(_SPEC_FIELDS)}")
    enum_type = _ENUM_FIELDS.get(key)
    if enum_type is not None and not isinstance(value, enum_type):
        try:
            return enum_type[str(value).upper()]
        except KeyError:
            raise ValueError(
                f"action {action!r}: {key} must be one of {[m.name for m in enum_type]}, got {value!r}"
            ) from None
    if key == "activation_keywords":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"action {action!r}: activation_keywords must be a list of strings")
        return tuple(str(k) for k in value)
    if key == "random_activation_probability":
        return float(value)
    if key in ("keyword_case_sensitive", "parallel_action", "enable_plugin") and not isinstance(value, bool):
        raise ValueError(f"action {action!r}: {key} must be true or false, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# Execution


@dataclass(frozen=True)
class ActionContext:
    """What an action sees when it is activated and executed for one message."""

    mode: ChatMode
    message: MessageEvent  # the message being answered (the newest one)
    new_messages: tuple[MessageEvent, ...]  # messages not seen by the previous cycle (keywords match these)
    context_text: str  # recent history rendered for judges and the planner
    persona_emoji: tuple[str, ...] = ("🎵",)
    image_style: str = ""
    mute_duration_s: int = 600
    llm_options: Any = None  # the persona's LLMCallOptions for judge calls (graph.brain.llm)


CheckFeature = Callable[[str], Awaitable[FeatureCheck]]


class BaseAction:
    """Subclass, set the class attributes, implement `execute`; register with `ActionRegistry.register`."""

    action_name: ClassVar[str] = ""
    action_description: ClassVar[str] = ""
    focus_activation_type: ClassVar[ActivationType] = ActivationType.ALWAYS
    normal_activation_type: ClassVar[ActivationType] = ActivationType.ALWAYS
    activation_keywords: ClassVar[tuple[str, ...]] = ()
    keyword_case_sensitive: ClassVar[bool] = False
    random_activation_probability: ClassVar[float] = 0.0
    llm_judge_prompt: ClassVar[str] = ""
    mode_enable: ClassVar[ChatMode] = ChatMode.ALL
    parallel_action: ClassVar[bool] = False
    enable_plugin: ClassVar[bool] = True
    intent: ClassVar[str] = ""
    priority: ClassVar[int] = 0

    def __init__(self, spec: ActionSpec):
        self.spec = spec

    @classmethod
    def default_spec(cls) -> ActionSpec:
        return ActionSpec(
            name=cls.action_name,
            description=cls.action_description,
            focus_activation_type=cls.focus_activation_type,
            normal_activation_type=cls.normal_activation_type,
            activation_keywords=tuple(cls.activation_keywords),
            keyword_case_sensitive=cls.keyword_case_sensitive,
            random_activation_probability=cls.random_activation_probability,
            llm_judge_prompt=cls.llm_judge_prompt,
            mode_enable=cls.mode_enable,
            parallel_action=cls.parallel_action,
            enable_plugin=cls.enable_plugin,
            intent=cls.intent,
            priority=cls.priority,
        )

    def applies(self, ctx: ActionContext) -> bool:
        """Can this action apply to the message at all (pre-filter)? Default: yes."""
        return True

    def keyword_match(self, ctx: ActionContext) -> bool:
        """The keyword layer: do the new messages ask for this action? Default: any keyword occurs."""
        return self.spec.matches_keywords(m.content for m in ctx.new_messages)

    async def execute(self, ctx: ActionContext, check_feature: CheckFeature) -> list[BrainAction]:
        """Return the wire actions that carry this action out. reply is executed by the brain itself."""
        return []


class ActionRegistry:
    """Action classes by name. `build(overrides)` makes instances with effective specs; classes stay as declared."""

    def __init__(self) -> None:
        self._classes: dict[str, type[BaseAction]] = {}

    def register(self, cls: type[BaseAction]) -> type[BaseAction]:
        """Register an action class (usable as a decorator). A name may only be registered once."""
        if not cls.action_name:
            raise ValueError(f"{cls.__name__} has no action_name")
        if cls.action_name in self._classes and self._classes[cls.action_name] is not cls:
            raise ValueError(f"an action named {cls.action_name!r} is already registered")
        cls.default_spec()  # validate the declaration now, not at first use
        self._classes[cls.action_name] = cls
        return cls

    def names(self) -> list[str]:
        return list(self._classes)

    def build(self, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, BaseAction]:
        """Instances for every registered action, with `overrides` ({name: {setting: value}}) applied."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(self._classes)
        if unknown:
            raise ValueError(f"overrides for unknown actions {sorted(unknown)}; registered: {self.names()}")
        built: dict[str, BaseAction] = {}
        for name, cls in self._classes.items():
            spec = cls.default_spec()
            changes = {k: _coerce_override(name, k, v) for k, v in (overrides.get(name) or {}).items()}
            built[name] = cls(replace(spec, **changes) if changes else spec)
        return built

    def copy(self) -> "ActionRegistry":
        other = ActionRegistry()
        other._classes = dict(self._classes)
        return other


# --------------------------------------------------------------------------------------------------
# Built-in actions


def _visual_attachments(ctx: ActionContext) -> list[dict[str, str]]:
    """Images and videos of the new messages: attachments and embeds (the client sends both as attachments)
    and links to images in the text."""
    found = [
        {"content_type": a.content_type, "url": a.url}
        for m in ctx.new_messages
        for a in m.attachments
        if a.is_visual
    ]
    seen = {item["url"] for item in found}
    for message in ctx.new_messages:
        for url in image_links(message.content):
            if url not in seen:
                seen.add(url)
                found.append({"content_type": "", "url": url})
    return found


async def _blocked_or(
    ctx: ActionContext, check_feature: CheckFeature, feature: str, allowed: Callable[[], BrainAction]
) -> list[BrainAction]:
    """Run `allowed()` if the feature is available; otherwise tell the user (unless the block is silent)."""
    verdict = await check_feature(feature)
    if verdict.allowed:
        return [allowed()]
    if verdict.silent:
        return []
    return [
        BlockedAction(
            channel_id=ctx.message.channel_id,
            reply_to_message_id=ctx.message.message_id,
            feature=feature,
            message=verdict.message or f"{feature.replace('_', ' ')} is unavailable right now.",
        )
    ]


class ReplyActionDef(BaseAction):
    action_name = "reply"
    action_description = "Reply to the chat with a message."
    priority = 0


class NoReplyActionDef(BaseAction):
    action_name = "no_reply"
    action_description = "Stay quiet and keep listening."
    priority = -1


class EmojiActionDef(BaseAction):
    action_name = "emoji"
    action_description = "React to the message with an emoji that fits the mood."
    focus_activation_type = ActivationType.LLM_JUDGE
    normal_activation_type = ActivationType.RANDOM
    random_activation_probability = 0.15
    llm_judge_prompt = "The message expresses a clear emotion or is funny, cute or exciting."
    parallel_action = True
    intent = "reaction"

    async def execute(self, ctx: ActionContext, check_feature: CheckFeature) -> list[BrainAction]:
        # Deterministic per message so replays and retries pick the same emoji.
        emoji = ctx.persona_emoji[zlib.crc32(ctx.message.message_id.encode()) % len(ctx.persona_emoji)] if ctx.persona_emoji else "🎵"
        return [ReactAction(channel_id=ctx.message.channel_id, message_id=ctx.message.message_id, emoji=emoji)]


class DrawActionDef(BaseAction):
    """An explicit request for a picture (graph.brain.draw_request), never a mere mention of drawings.

    The keyword layer is the request detector; the keywords stay as the judge's hint in Focus mode."""

    action_name = "draw"
    action_description = "Draw a picture the user asks for (image generation)."
    focus_activation_type = ActivationType.LLM_JUDGE
    normal_activation_type = ActivationType.KEYWORD
    activation_keywords = ("draw", "paint", "sketch", "画")
    llm_judge_prompt = (
        "The user explicitly asks Miku to draw, paint or generate a new picture (talking about a drawing, "
        "a draw in a game or a lottery is not a request)."
    )
    intent = "image_generation"
    priority = 10

    def keyword_match(self, ctx: ActionContext) -> bool:
        return any(detect_draw_request(m.content) is not None for m in ctx.new_messages)

    @staticmethod
    def _subject(ctx: ActionContext) -> str:
        for message in reversed(ctx.new_messages):
            request = detect_draw_request(message.content)
            if request is not None:
                return request.subject
        return ctx.message.content.strip()  # the LLM judge said it is a request in its own words

    async def execute(self, ctx: ActionContext, check_feature: CheckFeature) -> list[BrainAction]:
        subject = self._subject(ctx)
        if not subject:
            return [ReplyAction(channel_id=ctx.message.channel_id, reply_to_message_id=ctx.message.message_id,
                                text=DRAW_WHAT_MESSAGE)]
        return await _blocked_or(
            ctx,
            check_feature,
            FEATURE_IMAGE_GENERATION,
            lambda: DrawAction(
                channel_id=ctx.message.channel_id,
                reply_to_message_id=ctx.message.message_id,
                prompt=subject,
                style=ctx.image_style,
            ),
        )


class LookActionDef(BaseAction):
    action_name = "look"
    action_description = "Look at an attached image or video and talk about it (vision)."
    focus_activation_type = ActivationType.LLM_JUDGE
    normal_activation_type = ActivationType.ALWAYS
    activation_keywords = ("look", "see", "picture", "photo", "video", "看")
    llm_judge_prompt = "The new message shares an image or video that Miku should look at and comment on."
    intent = "vision"
    priority = 20

    def applies(self, ctx: ActionContext) -> bool:
        return bool(_visual_attachments(ctx))

    async def execute(self, ctx: ActionContext, check_feature: CheckFeature) -> list[BrainAction]:
        return await _blocked_or(
            ctx,
            check_feature,
            FEATURE_VISION,
            lambda: LookAction(
                channel_id=ctx.message.channel_id,
                reply_to_message_id=ctx.message.message_id,
                attachments=tuple(_visual_attachments(ctx)),
            ),
        )


class MuteActionDef(BaseAction):
    action_name = "mute"
    action_description = "Time out a member who breaks the rules (moderators only)."
    focus_activation_type = ActivationType.LLM_JUDGE
    normal_activation_type = ActivationType.LLM_JUDGE  # falls back to the keywords in NORMAL mode
    activation_keywords = ("mute", "timeout", "time out", "禁言")
    llm_judge_prompt = "A moderator asks Miku to mute or time out a specific member."
    intent = "moderation"
    priority = 30

    def applies(self, ctx: ActionContext) -> bool:
        message = ctx.message
        return message.guild_id is not None and message.author_can_moderate and len(self._targets(message)) == 1

    @staticmethod
    def _targets(message: MessageEvent) -> list[str]:
        return [u for u in message.mentioned_user_ids if u != message.author_id]

    async def execute(self, ctx: ActionContext, check_feature: CheckFeature) -> list[BrainAction]:
        message = ctx.message
        target = self._targets(message)[0]
        return [
            MuteAction(
                guild_id=message.guild_id or "",
                channel_id=message.channel_id,
                user_id=target,
                duration_s=ctx.mute_duration_s,
                reason=message.content[:200],
                reply_to_message_id=message.message_id,
                text=f"Okay, <@{target}> is muted for {ctx.mute_duration_s // 60} minutes.",
            )
        ]


BUILTIN_ACTIONS: tuple[type[BaseAction], ...] = (
    ReplyActionDef,
    NoReplyActionDef,
    EmojiActionDef,
    DrawActionDef,
    LookActionDef,
    MuteActionDef,
)


def default_registry() -> ActionRegistry:
    """A fresh registry with the built-in actions; plugins `register` more on it."""
    registry = ActionRegistry()
    for cls in BUILTIN_ACTIONS:
        registry.register(cls)
    return registry
