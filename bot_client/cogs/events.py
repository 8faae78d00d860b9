"""Listeners: prompt-channel messages go to the voice session, every other message to `POST /v1/events`;
the bot's own voice state and channel deletions end sessions that cannot go on."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from ..discord_adapter import to_incoming
from ..session import EndReason, own_voice_change, OwnVoiceChange

if TYPE_CHECKING:
    from ..bot import MikuBot

log = logging.getLogger(__name__)


class EventsCog(commands.Cog, name="Events"):
    def __init__(self, bot: "MikuBot") -> None:
        self.bot = bot

    def _is_command(self, content: str) -> bool:
        prefix = f"{self.bot.config.command_prefix}{self.bot.config.group_name}"
        return content.startswith(prefix + " ") or content == prefix

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        me = self.bot.user
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        if self._is_command(message.content or ""):
            return  # commands.Bot runs it
        incoming = to_incoming(message, me.id if me else None)
        await self.bot.router.route(incoming)

    @commands.Cog.listener()
    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        me = self.bot.user
        if me is None or member.id != me.id:
            return
        session = self.bot.manager.get(member.guild.id)
        if session is None:
            return
        change = own_voice_change(
            before.channel.id if before.channel else None,
            after.channel.id if after.channel else None,
            session.voice_channel_id,
        )
        if change is OwnVoiceChange.REMOVED:
            await session.end(EndReason.KICKED)
        elif change is OwnVoiceChange.MOVED:
            session.voice_channel_id = after.channel.id  # dragged elsewhere: keep talking there

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        session = self.bot.manager.by_prompt_channel(channel.id)
        if session is not None:
            log.info("prompt channel %s deleted; ending session %s", channel.id, session.info.session_id)
            await session.end(EndReason.PROMPT_CHANNEL_DELETED)
