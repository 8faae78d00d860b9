"""Discord messages as plain values, prompt clean-up, and "act on each message once".

The cogs turn a `discord.Message` into an `IncomingMessage` right away, so every decision after that is
made on a plain dataclass that tests build directly.
"""
from __future__ import annotations

import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Attachment:
    url: str
    content_type: str = ""


@dataclass(frozen=True)
class IncomingMessage:
    """The parts of a Discord message the client and the graph care about."""

    message_id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    author_name: str
    content: str
    author_is_bot: bool = False
    author_is_self: bool = False
    author_can_moderate: bool = False
    author_roles: tuple[str, ...] = ()  # role names: the brain gates persona and mood switching by them
    author_is_admin: bool = False
    attachments: tuple[Attachment, ...] = ()
    mentions_bot: bool = False
    mentioned_user_ids: tuple[int, ...] = ()
    reply_to_id: int | None = None
    reply_to_bot: bool = False
    created_at: float = 0.0  # POSIX seconds
    channel_name: str = ""
    guild_name: str = ""
    mention_names: Mapping[str, str] = field(default_factory=dict)  # "<@123>"-style token -> "@name"
    channel_nsfw: bool = False  # an age-restricted channel: the only place an NSFW drawing is allowed

    @property
    def event_id(self) -> str:
        # One id per Discord message: a redelivered message carries the same id, so the brain decides once.
        return f"message:{self.message_id}"

    def to_event(self) -> dict:
        """The `POST /v1/events` body for this message (docs/brain.md's `message` event)."""
        return {
            "type": "message",
            "event_id": self.event_id,
            "guild_id": str(self.guild_id) if self.guild_id is not None else None,
            "channel_id": str(self.channel_id),
            "message_id": str(self.message_id),
            "author_id": str(self.author_id),
            "author_name": self.author_name,
            "author_is_bot": self.author_is_bot,
            "author_is_self": self.author_is_self,
            "author_can_moderate": self.author_can_moderate,
            "author_roles": list(self.author_roles),
            "author_is_admin": self.author_is_admin,
            "content": self.content,
            "mentions_miku": self.mentions_bot,
            "reply_to_miku": self.reply_to_bot,
            "reply_to_message_id": str(self.reply_to_id) if self.reply_to_id is not None else None,
            "mentioned_user_ids": [str(i) for i in self.mentioned_user_ids],
            "attachments": [{"url": a.url, "content_type": a.content_type} for a in self.attachments],
            "channel_name": self.channel_name,
            "guild_name": self.guild_name,
            "timestamp": self.created_at,
            "channel_nsfw": self.channel_nsfw,
        }


class PromptVerdict:
    """Why a prompt-channel message is or is not spoken."""

    OK = "ok"
    EMPTY = "empty"  # nothing but whitespace after clean-up
    ATTACHMENT_ONLY = "attachment_only"
    TOO_LONG = "too_long"


@dataclass(frozen=True)
class PromptCheck:
    verdict: str
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == PromptVerdict.OK


_MENTION = re.compile(r"<(@!?|@&|#)(\d+)>")
_CUSTOM_EMOJI = re.compile(r"<a?:(\w+):\d+>")
_TIMESTAMP = re.compile(r"<t:(\d+)(?::[tTdDfFR])?>")


def clean_prompt(content: str, mention_names: Mapping[str, str] | None = None, bot_id: int | None = None) -> str:
    """Make a message readable as a prompt: the bot's own mention dropped, other mentions as names,
    custom emoji as `:name:`, control characters removed. Code blocks and emoji stay: the LLM reads them
    and the graph's segmenter keeps them out of speech."""
    names = mention_names or {}

    def mention(match: re.Match) -> str:
        kind, ident = match.group(1), match.group(2)
        if bot_id is not None and kind.startswith("@") and kind != "@&" and int(ident) == bot_id:
            return ""
        token = match.group(0)
        if token in names:
            return names[token]
        alt = f"<@{ident}>" if kind == "@!" else f"<@!{ident}>"
        if alt in names:
            return names[alt]
        return {"#": "#channel", "@&": "@role"}.get(kind, "@someone")

    text = _MENTION.sub(mention, content)
    text = _CUSTOM_EMOJI.sub(r":\1:", text)
    text = _TIMESTAMP.sub("a moment", text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C" or ch == "\u200d")
    return text.strip()


def check_prompt(message: IncomingMessage, max_chars: int, bot_id: int | None = None) -> PromptCheck:
    """Decide whether a prompt-channel message can be spoken; the text is the cleaned prompt."""
    text = clean_prompt(message.content, message.mention_names, bot_id)
    if not text:
        return PromptCheck(PromptVerdict.ATTACHMENT_ONLY if message.attachments else PromptVerdict.EMPTY)
    if len(text) > max_chars:
        return PromptCheck(PromptVerdict.TOO_LONG, text)
    return PromptCheck(PromptVerdict.OK, text)


class SeenMessages:
    """A bounded memory of message ids so a message redelivered after a reconnect is acted on once."""

    def __init__(self, capacity: int = 5000) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._ids: OrderedDict[int, None] = OrderedDict()

    def first_time(self, message_id: int) -> bool:
        """True the first time an id is seen; False for every repeat while it is remembered."""
        if message_id in self._ids:
            self._ids.move_to_end(message_id)
            return False
        self._ids[message_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._ids)


def split_for_discord(text: str, limit: int = 2000) -> list[str]:
    """Split a long reply into Discord-sized messages at line or word boundaries, losing nothing."""
    text = text.strip()
    if not text:
        return []
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = text.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts
