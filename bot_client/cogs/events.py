"""Listeners: prompt-channel messages go to the voice session, every other message to `POST /v1/events`;
the bot's own voice state and channel deletions end sessions that cannot go on. With
`autonomous.presence_events` on, activity starts, members coming online and joins in configured servers
go to `POST /v1/events` too (built by `presence.py`), and the actions the graph answers are carried out
like a message's."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from ..discord_adapter import to_incoming
from ..graph_api import GraphError
from ..presence import Activity, member_join_event, presence_event
from ..session import EndReason, OwnVoiceChange, own_voice_change

if TYPE_CHECKING:
    from ..bot import MikuBot

log = logging.getLogger(__name__)


class EventsCog(commands.Cog, name="Events"):
    def __init__(self, bot: "MikuBot") -> None:
        self.bot = bot

    def _is_command(self, content: str) -> bool:
        """A message the command group runs (`!miku ...`, or a mention of the bot then `miku ...`)."""
        prefixes = [self.bot.config.command_name]
        # the scheduled-events and figurine commands (cogs/features.py), when that cog is loaded
        prefixes += [f"{self.bot.config.command_prefix}{name}" for name in ("schedule", "figures")
                     if self.bot.get_command(name) is not None]
        me = self.bot.user
        if me is not None:  # commands.when_mentioned: "<@id> " and "<@!id> " before the group name
            prefixes += [f"<@{me.id}> {self.bot.config.group_name}", f"<@!{me.id}> {self.bot.config.group_name}"]
        return any(content == prefix or content.startswith(prefix + " ") for prefix in prefixes)

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
        if me is None:
            return
        if member.id != me.id:
            self._member_moved(member, before, after)
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

    def _member_moved(self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState) -> None:
        """Someone left the channel Miku listens in: their audio stream ends there (hearing.py)."""
        session = self.bot.manager.get(member.guild.id)
        hearing = getattr(session, "hearing", None) if session is not None else None
        if hearing is None:
            return
        was_in = before.channel is not None and before.channel.id == session.voice_channel_id
        still_in = after.channel is not None and after.channel.id == session.voice_channel_id
        if was_in and not still_in:
            hearing.member_left(member.id)
        elif still_in and not was_in:
            hearing.member_joined(member.id)

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        session = self.bot.manager.by_prompt_channel(channel.id)
        if session is not None:
            log.info("prompt channel %s deleted; ending session %s", channel.id, session.info.session_id)
            await session.end(EndReason.PROMPT_CHANNEL_DELETED)

    # --- presence and joins for the autonomous engine ---------------------------------------------

    def _tracks(self, guild_id: int) -> bool:
        """Presence and joins are forwarded only when switched on and only for tracked servers."""
        autonomous = self.bot.config.autonomous
        return autonomous.enabled and autonomous.presence_events and self.bot.autonomy_server(guild_id) is not None

    def _is_self_or_bot(self, member: discord.Member) -> bool:
        me = self.bot.user
        return bool(member.bot) or (me is not None and member.id == me.id)

    @commands.Cog.listener()
    async def on_presence_update(self, before: discord.Member, after: discord.Member) -> None:
        if after.guild is None or not self._tracks(after.guild.id) or self._is_self_or_bot(after):
            return
        event = presence_event(
            after.guild.id, after.id, after.display_name, bool(after.bot),
            _status(before.status), _status(after.status),
            _activities(before.activities), _activities(after.activities),
        )
        if event is not None:
            await self._forward(event)

    @commands.Cog.listener()
    async def on_member_join(self, member: discord.Member) -> None:
        if not self._tracks(member.guild.id) or self._is_self_or_bot(member):
            return
        # The brain's welcome goes to the server's system channel, and only when she may speak there.
        server = self.bot.autonomy_server(member.guild.id)
        system = member.guild.system_channel
        welcome = system.id if system is not None and system.id in server.allowed_channels else None
        event = member_join_event(member.guild.id, member.id, member.display_name, bool(member.bot), welcome)
        if event is not None:
            await self._forward(event)

    async def _forward(self, event: dict) -> str:
        """Post the event and carry out what the graph answers; returns `event` or `event_failed`."""
        try:
            actions = await self.bot.graph.post_event(event)
        except GraphError as exc:
            log.warning("event %s not handled: %s", event["event_id"], exc.message)
            return "event_failed"
        report = await self.bot.executor.execute(actions, event)
        if report.failed:
            log.warning("actions for %s partly failed: %s", event["event_id"], report.failed)
        return "event"


def _status(status: discord.Status | str | None) -> str:
    return str(getattr(status, "value", status) or "")


def _activities(activities: tuple[discord.activity.ActivityTypes, ...] | list | None) -> list[Activity]:
    """(type name, name) of each activity, e.g. ("playing", "Minecraft"); unnamed ones are skipped."""
    out: list[Activity] = []
    for activity in activities or ():
        kind = getattr(activity, "type", None)
        name = getattr(activity, "name", None)
        if kind is not None and name:
            out.append((kind.name if isinstance(kind, discord.ActivityType) else str(kind), str(name)))
    return out
