"""The brain's wire contract: Discord events in (`POST /v1/events`), actions out.

Events are pydantic models so a bad body becomes one clear error listing every wrong field (a 422
at the route) and nothing half-parsed reaches the brain. Actions are small frozen dataclasses with
`to_dict()`: the Discord client carries them out exactly, so their shapes are documented here and in
docs/brain.md. `FeatureCheck` is what the session controller's blackout check answers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

# --------------------------------------------------------------------------------------------------
# Events in


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)

    event_id: str = Field(min_length=1, max_length=200)


def _to_unix_seconds(value: Any) -> float:
    """Accept unix seconds (int/float) or an ISO-8601 string (discord.py's `created_at.isoformat()`)."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be unix seconds or an ISO-8601 string, not a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"timestamp {value!r} is neither unix seconds nor ISO-8601") from None
    raise ValueError("timestamp must be unix seconds or an ISO-8601 string")


class Attachment(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    content_type: str = ""
    url: str = Field(min_length=1)

    @property
    def is_visual(self) -> bool:
        return self.content_type.startswith(("image/", "video/"))


class MessageEvent(_EventBase):
    """A message seen in a guild channel or a DM (`guild_id` null)."""

    type: Literal["message"]
    guild_id: str | None = None
    channel_id: str = Field(min_length=1)
    message_id: str = Field(min_length=1)
    author_id: str = Field(min_length=1)
    author_name: str = ""
    author_is_bot: bool = False
    author_is_self: bool = False  # the client sets this for Miku's own messages
    author_can_moderate: bool = False  # the author's roles allow moderation (mute)
    author_roles: tuple[Annotated[str, Field(max_length=100)], ...] = Field(default=(), max_length=250)  # role names (persona/mood gating)
    author_is_admin: bool = False  # the author has the administrator permission
    content: str = Field(default="", max_length=8000)
    mentions_miku: bool = False
    reply_to_miku: bool = False
    reply_to_message_id: str | None = None
    mentioned_user_ids: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    channel_name: str = ""
    guild_name: str = ""
    channel_nsfw: bool = False  # the channel is age-restricted (`!meme` may then show NSFW posts)
    timestamp: float

    @field_validator("timestamp", mode="before")
    @classmethod
    def _parse_timestamp(cls, value: Any) -> float:
        return _to_unix_seconds(value)

    @property
    def is_dm(self) -> bool:
        return self.guild_id is None

    @property
    def addressed_to_miku(self) -> bool:
        """A direct mention, a reply to her, or a DM: she must answer (or say why not)."""
        return self.mentions_miku or self.reply_to_miku or self.is_dm


class PresenceEvent(_EventBase):
    type: Literal["presence"]
    guild_id: str | None = None
    user_id: str = Field(min_length=1)
    status: str = ""
    activity: str | None = None
    timestamp: float | None = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _parse_timestamp(cls, value: Any) -> float | None:
        return None if value is None else _to_unix_seconds(value)


class MemberJoinEvent(_EventBase):
    type: Literal["member_join"]
    guild_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    user_name: str = ""
    channel_id: str | None = None  # where a welcome goes (the guild's system channel); none = no welcome
    timestamp: float | None = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _parse_timestamp(cls, value: Any) -> float | None:
        return None if value is None else _to_unix_seconds(value)


class MoodEvent(_EventBase):
    """Change a server's (or a DM's) mood: a name, or null to rotate to a random other mood."""

    type: Literal["mood"]
    guild_id: str | None = None
    channel_id: str | None = None  # where to confirm; DMs are scoped by channel
    mood: str | None = None
    author_id: str | None = None
    author_roles: tuple[Annotated[str, Field(max_length=100)], ...] = Field(default=(), max_length=250)
    author_is_admin: bool = False


Event = Annotated[Union[MessageEvent, PresenceEvent, MemberJoinEvent, MoodEvent], Field(discriminator="type")]
_EVENT_ADAPTER: TypeAdapter = TypeAdapter(Event)


class EventValidationError(ValueError):
    """The event body is malformed; `errors` lists each problem as {"loc", "msg", "type"}."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        lines = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors)
        super().__init__(f"invalid event: {lines}")


def parse_event(raw: Any) -> MessageEvent | PresenceEvent | MemberJoinEvent | MoodEvent:
    """Validate a raw event (a dict from JSON) into its typed model, or raise EventValidationError."""
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    try:
        return _EVENT_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise EventValidationError(
            [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        ) from None


# --------------------------------------------------------------------------------------------------
# Feature checks (the session controller's blackouts)


@dataclass(frozen=True)
class FeatureCheck:
    """The controller's answer for one feature: allowed, else a user-facing message (unless silent)."""

    allowed: bool
    message: str | None = None
    silent: bool = False

    @classmethod
    def coerce(cls, result: Any) -> "FeatureCheck":
        """Accept a FeatureCheck, an `(allowed, message[, silent])` tuple or a dict with those keys."""
        if isinstance(result, FeatureCheck):
            return result
        if isinstance(result, dict):
            return cls(bool(result["allowed"]), result.get("message"), bool(result.get("silent", False)))
        if isinstance(result, (tuple, list)) and len(result) in (2, 3):
            return cls(bool(result[0]), result[1], bool(result[2]) if len(result) == 3 else False)
        if hasattr(result, "allowed"):
            return cls(bool(result.allowed), getattr(result, "message", None), bool(getattr(result, "silent", False)))
        raise TypeError(f"cannot read a feature check from {result!r}")


ALLOW = FeatureCheck(True)

# Feature ids the brain asks the controller about.
FEATURE_IMAGE_GENERATION = "image_generation"
FEATURE_VISION = "vision"
FEATURE_TEXT_MESSAGES = "text_channel_messages"
FEATURE_AUTONOMOUS = "autonomous_engine"
FEATURE_BIPOLAR = "bipolar_mode"
FEATURE_PROFILE_PICTURE = "profile_picture"


# --------------------------------------------------------------------------------------------------
# Actions out


@dataclass(frozen=True)
class Prompt:
    """What an LLM is asked: a system prompt, short history of (role, content), and the user turn."""

    system: str
    history: tuple[tuple[str, str], ...]
    user: str
    persona: str = ""
    mood: str = ""
    temperature: float = 0.8
    max_tokens: int = 256

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "history": [list(turn) for turn in self.history],
            "user": self.user,
            "persona": self.persona,
            "mood": self.mood,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def as_text(self) -> str:
        """One plain-text rendering for completion-style LLM calls."""
        lines = [f"{role}: {content}" for role, content in self.history]
        lines.append(f"user: {self.user}")
        return "\n".join(lines)


@dataclass(frozen=True)
class BrainAction:
    """Base of every action; `type` names what the client does."""

    type: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if "prompt" in out and isinstance(getattr(self, "prompt", None), Prompt):
            out["prompt"] = self.prompt.to_dict()  # type: ignore[attr-defined]
        return out


@dataclass(frozen=True)
class ReplyAction(BrainAction):
    """Post a Discord reply to `reply_to_message_id`. `text` is set when the brain generated it;
    otherwise the client generates it from `prompt`."""

    channel_id: str = ""
    reply_to_message_id: str | None = None
    text: str | None = None
    prompt: Prompt | None = None
    type: str = "reply"


@dataclass(frozen=True)
class SendAction(BrainAction):
    """Post a plain message (not a reply) in `channel_id`."""

    channel_id: str = ""
    text: str = ""
    type: str = "send"


@dataclass(frozen=True)
class ReactAction(BrainAction):
    channel_id: str = ""
    message_id: str = ""
    emoji: str = ""
    type: str = "react"


@dataclass(frozen=True)
class BlockedAction(BrainAction):
    """A feature is blacked out (voice session): post `message` as a reply so the user knows."""

    channel_id: str = ""
    reply_to_message_id: str | None = None
    feature: str = ""
    message: str = ""
    type: str = "blocked"


@dataclass(frozen=True)
class QueueAction(BrainAction):
    """Hold this message until text chat is allowed again, then send the same event again.
    `message` (when set) tells the user their message waits."""

    channel_id: str = ""
    message_id: str = ""
    event_id: str = ""
    feature: str = FEATURE_TEXT_MESSAGES
    message: str | None = None
    type: str = "queue"


@dataclass(frozen=True)
class RateLimitedAction(BrainAction):
    """Miku is replying too often in this chat: react with `emoji`; post `message` when set."""

    channel_id: str = ""
    message_id: str = ""
    emoji: str = "⏳"
    message: str | None = None
    retry_after_s: float = 0.0
    type: str = "rate_limited"


@dataclass(frozen=True)
class DrawAction(BrainAction):
    """Generate an image from `prompt` in `style` and post it as a reply."""

    channel_id: str = ""
    reply_to_message_id: str | None = None
    prompt: str = ""
    style: str = ""
    type: str = "draw"


@dataclass(frozen=True)
class LookAction(BrainAction):
    """Look at the attached images/videos (and image links, embeds) and answer as a reply. `prompt` is the
    persona's reply prompt (system, recent history, the user's words): the vision model answers in her voice
    with the chat's context."""

    channel_id: str = ""
    reply_to_message_id: str | None = None
    attachments: tuple[dict[str, str], ...] = ()
    prompt: Prompt | None = None
    type: str = "look"


@dataclass(frozen=True)
class MuteAction(BrainAction):
    """Time out `user_id` in `guild_id` for `duration_s`; post `text` as a reply when set."""

    guild_id: str = ""
    channel_id: str = ""
    user_id: str = ""
    duration_s: int = 600
    reason: str = ""
    reply_to_message_id: str | None = None
    text: str | None = None
    type: str = "mute"


@dataclass(frozen=True)
class SwitchPersonaAction(BrainAction):
    """The active persona changed for `guild_id` (null = DMs): the client may update nickname/avatar."""

    guild_id: str | None = None
    persona: str = ""
    display_name: str = ""
    type: str = "switch_persona"


@dataclass
class ActionList:
    """Actions produced for one event, in the order the client should carry them out."""

    actions: list[BrainAction] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"actions": [a.to_dict() for a in self.actions]}
