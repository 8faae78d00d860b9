"""The only place that reads discord.py objects: messages become `IncomingMessage`, ids become channels.

Everything here is a thin translation, so the decisions stay in plain modules (session, actions, inputs).
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import discord

from .inputs import Attachment, IncomingMessage
from .session import JoinRequest

log = logging.getLogger(__name__)

# LLM text must never ping @everyone or roles; replies do not ping their author either.
SAFE_MENTIONS = discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=False)


def to_incoming(message: discord.Message, bot_user_id: int | None) -> IncomingMessage:
    """A `discord.Message` as a plain value."""
    author = message.author
    guild = message.guild
    reference = message.reference
    reply_to_id = reference.message_id if reference is not None else None
    resolved = reference.resolved if reference is not None else None
    reply_to_bot = bool(
        resolved is not None and getattr(getattr(resolved, "author", None), "id", None) == bot_user_id
    )
    mention_names: dict[str, str] = {}
    for user in message.mentions:
        name = f"@{getattr(user, 'display_name', None) or user.name}"
        mention_names[f"<@{user.id}>"] = name
        mention_names[f"<@!{user.id}>"] = name
    for channel in getattr(message, "channel_mentions", []) or []:
        mention_names[f"<#{channel.id}>"] = f"#{channel.name}"
    for role in getattr(message, "role_mentions", []) or []:
        mention_names[f"<@&{role.id}>"] = f"@{role.name}"
    permissions = getattr(author, "guild_permissions", None)
    created = message.created_at
    return IncomingMessage(
        message_id=message.id,
        channel_id=message.channel.id,
        guild_id=guild.id if guild is not None else None,
        author_id=author.id,
        author_name=getattr(author, "display_name", None) or author.name,
        content=message.content or "",
        author_is_bot=bool(author.bot),
        author_is_self=bot_user_id is not None and author.id == bot_user_id,
        author_can_moderate=bool(permissions is not None and permissions.moderate_members),
        attachments=tuple(Attachment(a.url, a.content_type or "") for a in message.attachments),
        mentions_bot=bot_user_id is not None and any(u.id == bot_user_id for u in message.mentions),
        mentioned_user_ids=tuple(u.id for u in message.mentions),
        reply_to_id=reply_to_id,
        reply_to_bot=reply_to_bot,
        created_at=created.timestamp() if isinstance(created, dt.datetime) else 0.0,
        channel_name=getattr(message.channel, "name", "") or "",
        guild_name=guild.name if guild is not None else "",
        channel_nsfw=bool(getattr(message.channel, "is_nsfw", lambda: False)()),
        mention_names=mention_names,
    )


def channel_is_full(channel: Any, me: Any) -> bool:
    """A voice channel with a user limit that is reached, which the bot cannot bypass (move members)."""
    limit = getattr(channel, "user_limit", 0) or 0
    if not limit:
        return False
    members = getattr(channel, "members", []) or []
    if any(getattr(m, "id", None) == getattr(me, "id", object()) for m in members):
        return False
    if len(members) < limit:
        return False
    try:
        return not channel.permissions_for(me).move_members
    except Exception:
        return True


# What the bot needs in a voice channel, in the order Discord checks them: without View Channel every
# other channel permission is denied too, so only that one is named then.
_VOICE_PERMISSIONS = (("connect", "Connect"), ("speak", "Speak"))


def missing_voice_permissions(channel: Any, me: Any) -> tuple[str, ...]:
    """The permissions the bot lacks to be heard in `channel`, by their names in Discord's settings.

    Discord does not refuse a voice connection without Connect: it never answers, and discord.py times
    out. Asking first lets the bot say which permission to grant instead.
    """
    try:
        permissions = channel.permissions_for(me)
    except Exception:
        log.debug("could not read my permissions in %r", channel, exc_info=True)
        return ()  # cannot tell: let the connection try
    if not permissions.view_channel:
        return ("View Channel",)
    return tuple(label for attribute, label in _VOICE_PERMISSIONS if not getattr(permissions, attribute))


def join_request(
    *, guild: Any, author: Any, text_channel_id: int, named_channel: Any | None
) -> tuple[JoinRequest, Any | None]:
    """Resolve `!miku join [#voice-channel]`: the named channel, else the author's current one."""
    target = named_channel
    if target is None:
        voice = getattr(author, "voice", None)
        target = getattr(voice, "channel", None) if voice is not None else None
    full = target is not None and channel_is_full(target, guild.me)
    missing = missing_voice_permissions(target, guild.me) if target is not None else ()
    request = JoinRequest(
        guild_id=guild.id,
        user_id=author.id,
        text_channel_id=text_channel_id,
        voice_channel_id=target.id if target is not None else None,
        channel_full=full,
        missing_permissions=missing,
    )
    return request, target


class DiscordChatOps:
    """`ChatOps` on a live discord.py client."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client

    async def _channel(self, channel_id: int) -> Any:
        channel = self.client.get_channel(channel_id)
        if channel is None:
            channel = await self.client.fetch_channel(channel_id)
        return channel

    async def reply(self, channel_id: int, message_id: int | None, text: str) -> None:
        channel = await self._channel(channel_id)
        if message_id is None:
            await channel.send(text, allowed_mentions=SAFE_MENTIONS)
            return
        reference = channel.get_partial_message(message_id).to_reference(fail_if_not_exists=False)
        await channel.send(text, reference=reference, allowed_mentions=SAFE_MENTIONS)

    async def send(self, channel_id: int, text: str) -> None:
        channel = await self._channel(channel_id)
        await channel.send(text, allowed_mentions=SAFE_MENTIONS)

    async def react(self, channel_id: int, message_id: int, emoji: str) -> None:
        channel = await self._channel(channel_id)
        await channel.get_partial_message(message_id).add_reaction(emoji)

    async def timeout_member(self, guild_id: int, user_id: int, duration_s: int, reason: str) -> None:
        guild = self.client.get_guild(guild_id)
        if guild is None:
            raise LookupError(f"guild {guild_id} is not cached")
        member = guild.get_member(user_id) or await guild.fetch_member(user_id)
        await member.timeout(dt.timedelta(seconds=duration_s), reason=reason or None)

    async def set_nickname(self, guild_id: int, name: str) -> None:
        guild = self.client.get_guild(guild_id)
        if guild is None:
            raise LookupError(f"guild {guild_id} is not cached")
        await guild.me.edit(nick=name[:32])
