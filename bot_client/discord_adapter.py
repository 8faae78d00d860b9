"""The only place that reads discord.py objects: messages become `IncomingMessage`, ids become channels.

Everything here is a thin translation, so the decisions stay in plain modules (session, actions, inputs).
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
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
        attachments=tuple(Attachment(a.url, a.content_type or "") for a in message.attachments) + embed_media(message),
        author_roles=tuple(r.name for r in getattr(author, "roles", []) or [] if getattr(r, "name", "") != "@everyone"),
        author_is_admin=bool(permissions is not None and permissions.administrator),
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


def embed_media(message: Any) -> tuple[Attachment, ...]:
    """The pictures and videos of a message's embeds (link previews, GIF pickers) as attachments, so the
    graph can look at them like any other; `image/*` or `video/*` says which (the type is not known)."""
    found = []
    for embed in getattr(message, "embeds", None) or []:
        for part, kind in ((getattr(embed, "image", None), "image/*"), (getattr(embed, "thumbnail", None), "image/*"),
                           (getattr(embed, "video", None), "video/*")):
            url = getattr(part, "proxy_url", None) or getattr(part, "url", None)
            if url and url not in {a.url for a in found}:
                found.append(Attachment(str(url), kind))
    return tuple(found[:4])


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


WEBHOOK_PREFIX = "miku-persona:"  # the webhooks bipolar mode creates are named this + the persona


class DiscordChatOps:
    """`ChatOps` on a live discord.py client.

    `persona_picture(persona)` gives the bytes of a persona's picture (configs/avatars) for the webhook
    bipolar mode creates per channel and persona; without it the webhook has Discord's default picture.
    """

    def __init__(self, client: discord.Client,
                 persona_picture: Callable[[str], bytes | None] | None = None) -> None:
        self.client = client
        self.persona_picture = persona_picture
        self._webhooks: dict[tuple[int, str], discord.Webhook] = {}
        self._webhooks_refused: set[int] = set()

    async def _persona_webhook(self, channel: Any, persona: str, display_name: str) -> discord.Webhook:
        key = (channel.id, persona)
        hook = self._webhooks.get(key)
        if hook is None:
            name = f"{WEBHOOK_PREFIX}{persona}"[:80]
            me = self.client.user
            for existing in await channel.webhooks():
                if existing.name == name and (me is None or getattr(existing.user, "id", None) == me.id):
                    hook = existing
                    break
            if hook is None:
                picture = self.persona_picture(persona) if self.persona_picture else None
                hook = await channel.create_webhook(name=name, avatar=picture, reason="Miku's bipolar mode")
            self._webhooks[key] = hook
        return hook

    async def send_as(self, channel_id: int, persona: str, display_name: str, text: str) -> None:
        """Post `text` as the persona: a webhook with its name and picture (needs Manage Webhooks). Without
        that permission, a plain message with the name in bold (logged once per channel)."""
        channel = await self._channel(channel_id)
        if channel_id not in self._webhooks_refused and hasattr(channel, "create_webhook"):  # threads have none
            try:
                hook = await self._persona_webhook(channel, persona, display_name)
                await hook.send(text, username=display_name[:80] or persona, allowed_mentions=SAFE_MENTIONS, wait=True)
                return
            except discord.Forbidden:
                log.warning("no Manage Webhooks permission in channel %s: personas speak as the bot there", channel_id)
                self._webhooks_refused.add(channel_id)
            except discord.NotFound:
                self._webhooks.pop((channel_id, persona), None)  # deleted by someone: made again next time
                raise
        await channel.send(f"**{display_name}**: {text}", allowed_mentions=SAFE_MENTIONS)

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

    async def typing(self, channel_id: int) -> None:
        channel = await self._channel(channel_id)
        await channel.typing()

    async def reply_progress(self, channel_id: int, message_id: int | None, text: str) -> int | None:
        channel = await self._channel(channel_id)
        reference = (channel.get_partial_message(message_id).to_reference(fail_if_not_exists=False)
                     if message_id is not None else None)
        sent = await channel.send(text, reference=reference, allowed_mentions=SAFE_MENTIONS)
        return sent.id

    async def edit(self, channel_id: int, message_id: int, text: str) -> None:
        channel = await self._channel(channel_id)
        await channel.get_partial_message(message_id).edit(content=text, allowed_mentions=SAFE_MENTIONS)

    async def delete(self, channel_id: int, message_id: int) -> None:
        channel = await self._channel(channel_id)
        await channel.get_partial_message(message_id).delete()

    async def reply_image(self, channel_id: int, message_id: int | None, text: str, filename: str, data: bytes) -> None:
        import io

        channel = await self._channel(channel_id)
        reference = (channel.get_partial_message(message_id).to_reference(fail_if_not_exists=False)
                     if message_id is not None else None)
        await channel.send(text, file=discord.File(io.BytesIO(data), filename=filename), reference=reference,
                           allowed_mentions=SAFE_MENTIONS)

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
