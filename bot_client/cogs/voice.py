"""The `!miku` command group (prefix and slash): join, leave, voice-status, say, stop, and the music
commands (play, pause, resume, skip, queue, volume; `stop music`).

The group is declared as `miku` and renamed to the config's `group_name` when the cog is built (before
it is added to the bot, so both `!<group_name> ...` and `/<group_name> ...` answer and nothing else does).
Each command only gathers Discord facts and calls plain logic (SessionManager, permissions, status).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Optional

import discord
from discord.ext import commands

from ..discord_adapter import join_request
from ..graph_api import GraphError
from ..music import MusicPlayer, MusicRequestError, format_music_status, resolve_track
from ..permissions import is_allowed, refusal
from ..session import NOT_IN_SESSION, VoiceLink, VoiceSession
from ..status import format_status

if TYPE_CHECKING:
    from ..bot import MikuBot

log = logging.getLogger(__name__)


def member_roles(member: object) -> tuple[list[str], bool]:
    roles = [r.name for r in getattr(member, "roles", []) or []]
    perms = getattr(member, "guild_permissions", None)
    return roles, bool(perms is not None and perms.administrator)


def rename_group(group: commands.HybridGroup, name: str) -> None:
    """Give a hybrid group (prefix and slash side) another name; only before its cog is added to a bot."""
    group.name = name
    app_command = getattr(group, "app_command", None)
    if app_command is not None:
        app_command.name = name
        app_command._locale_name = None  # discord.py derives it from the name when translating


class VoiceCog(commands.Cog, name="Voice"):
    def __init__(self, bot: "MikuBot") -> None:
        self.bot = bot
        # `self.miku` is this cog's own copy of the group (discord.py copies commands per cog instance).
        if self.miku.name != bot.config.group_name:
            rename_group(self.miku, bot.config.group_name)

    @property
    def command(self) -> str:
        return self.bot.config.command_name

    async def _permitted(self, ctx: commands.Context, command: str) -> bool:
        roles, admin = member_roles(ctx.author)
        permissions = self.bot.config.permissions
        if is_allowed(command, roles, admin, permissions):
            return True
        await ctx.reply(refusal(command, permissions, self.command), mention_author=False)
        return False

    @commands.hybrid_group(name="miku", invoke_without_command=True, fallback="help")
    @commands.guild_only()
    async def miku(self, ctx: commands.Context) -> None:
        """Miku's voice commands."""
        c = self.command
        await ctx.reply(
            f"🎤 `{c} join [#voice-channel]`, `{c} leave`, `{c} say TEXT`, `{c} stop`, `{c} voice-status`\n"
            f"🎵 `{c} play FILE-or-URL`, `{c} pause`, `{c} resume`, `{c} skip`, `{c} queue`, `{c} volume 0-100`, "
            f"`{c} stop music`",
            mention_author=False,
        )

    @miku.command(name="join")
    @commands.guild_only()
    async def join(self, ctx: commands.Context, channel: Optional[discord.VoiceChannel] = None) -> None:
        """Join your voice channel (or the one named); this text channel becomes the prompt channel."""
        if not await self._permitted(ctx, "join"):
            return
        assert ctx.guild is not None
        request, target = join_request(
            guild=ctx.guild, author=ctx.author, text_channel_id=ctx.channel.id, named_channel=channel
        )
        listen = self.bot.config.listen.enabled(ctx.guild.id)
        request = dataclasses.replace(request, listen=listen)
        await ctx.defer()

        async def connect(_channel_id: int) -> VoiceLink:
            existing = ctx.guild.voice_client
            if existing is not None:  # a stale link from a crashed session
                await existing.disconnect(force=True)
            return await target.connect(
                # Deafened unless this server opted in to listening: Discord sends no audio to a deaf client.
                timeout=self.bot.config.session.voice_connect_timeout_s, reconnect=True, self_deaf=not listen
            )

        prompt_channel = ctx.channel.id
        outcome = await self.bot.manager.join(
            request, connect, lambda text: self.bot.ops.send(prompt_channel, text)
        )
        await ctx.reply(outcome.message, mention_author=False)

    @miku.command(name="leave")
    @commands.guild_only()
    async def leave(self, ctx: commands.Context) -> None:
        """Leave voice and switch every paused feature back on."""
        if not await self._permitted(ctx, "leave"):
            return
        session = self.bot.manager.get(ctx.guild.id if ctx.guild else None)
        if session is None:
            await ctx.reply(NOT_IN_SESSION, mention_author=False)
            return
        await ctx.defer()
        if session.prompt_channel_id == ctx.channel.id:
            await self.bot.manager.leave(ctx.guild.id)  # the session posts its goodbye here
            if ctx.interaction is not None:
                await ctx.reply("👋", mention_author=False)  # a slash command must be answered
        else:
            await self.bot.manager.leave(ctx.guild.id)
            await ctx.reply("👋 Left voice.", mention_author=False)

    @miku.command(name="stop")
    @commands.guild_only()
    async def stop(self, ctx: commands.Context, what: Optional[str] = None) -> None:
        """Stop what Miku is saying and the music; `stop voice` or `stop music` stops only that."""
        target = (what or "all").strip().lower()
        if target not in ("all", "voice", "music"):
            await ctx.reply(f"❌ `{self.command} stop` takes `voice`, `music` or nothing (both).", mention_author=False)
            return
        if not await self._permitted(ctx, "music" if target == "music" else "stop"):
            return
        session = self.bot.manager.get(ctx.guild.id if ctx.guild else None)
        if session is None:
            await ctx.reply(NOT_IN_SESSION, mention_author=False)
            return
        parts = []
        if target in ("all", "voice"):
            dropped = await session.stop_speaking()
            extra = f" (dropped {dropped} waiting prompt{'s' if dropped != 1 else ''})" if dropped else ""
            parts.append(f"⏹️ Stopped{extra}.")
        music = getattr(session, "music", None)
        if target in ("all", "music") and isinstance(music, MusicPlayer):
            tracks = music.stop()
            if tracks or target == "music":
                parts.append(f"⏹️ Music stopped{f' ({tracks} track' + ('s' if tracks != 1 else '') + ' dropped)' if tracks else ''}.")
        await ctx.reply(" ".join(parts), mention_author=False)

    # --- music ----------------------------------------------------------------------------------

    async def _music(self, ctx: commands.Context, guarded: bool = True) -> MusicPlayer | None:
        """The session's music player, after the role check; replies and returns None when there is none."""
        if guarded and not await self._permitted(ctx, "music"):
            return None
        session: VoiceSession | None = self.bot.manager.get(ctx.guild.id if ctx.guild else None)
        if session is None:
            await ctx.reply(NOT_IN_SESSION, mention_author=False)
            return None
        music = getattr(session, "music", None)
        if not isinstance(music, MusicPlayer):
            await ctx.reply("❌ Music is switched off in my configuration.", mention_author=False)
            return None
        return music

    @miku.command(name="play")
    @commands.guild_only()
    async def play(self, ctx: commands.Context, *, track: str) -> None:
        """Play a file from the music folder or an http(s) URL (queued behind what is playing)."""
        music = await self._music(ctx)
        if music is None:
            return
        try:
            # In a thread: checking a URL resolves its host name, which must not hold up the event loop.
            request = await asyncio.to_thread(resolve_track, track, self.bot.config.music)
            position = music.enqueue(request)
        except MusicRequestError as exc:
            await ctx.reply(str(exc), mention_author=False)
            return
        if position == 0:
            await ctx.reply(f"🎵 Playing **{request.title}** (volume {music.volume}).", mention_author=False)
        else:
            await ctx.reply(f"🎵 Queued **{request.title}** (#{position} in line).", mention_author=False)

    @miku.command(name="pause")
    @commands.guild_only()
    async def pause(self, ctx: commands.Context) -> None:
        """Pause the music."""
        music = await self._music(ctx)
        if music is not None:
            await ctx.reply("⏸️ Music paused." if music.pause() else "❌ No music is playing.", mention_author=False)

    @miku.command(name="resume")
    @commands.guild_only()
    async def resume(self, ctx: commands.Context) -> None:
        """Resume the paused music."""
        music = await self._music(ctx)
        if music is not None:
            await ctx.reply("▶️ Music resumed." if music.resume() else "❌ The music isn't paused.",
                            mention_author=False)

    @miku.command(name="skip")
    @commands.guild_only()
    async def skip(self, ctx: commands.Context) -> None:
        """Skip to the next track in the queue."""
        music = await self._music(ctx)
        if music is None:
            return
        title = music.skip()
        if title is None:
            await ctx.reply("❌ No music is playing.", mention_author=False)
            return
        now = music.status().current
        await ctx.reply(f"⏭️ Skipped **{title}**." + (f" Now playing **{now}**." if now else ""), mention_author=False)

    @miku.command(name="queue")
    @commands.guild_only()
    async def queue(self, ctx: commands.Context) -> None:
        """What is playing and what is waiting."""
        music = await self._music(ctx, guarded=False)
        if music is not None:
            await ctx.reply(format_music_status(music.status()), mention_author=False)

    @miku.command(name="volume")
    @commands.guild_only()
    async def volume(self, ctx: commands.Context, level: int) -> None:
        """Set the music's volume, 0-100."""
        if not 0 <= level <= 100:
            await ctx.reply("❌ The volume goes from 0 to 100.", mention_author=False)
            return
        music = await self._music(ctx)
        if music is not None:
            await ctx.reply(f"🔊 Music volume {music.set_volume(level)}.", mention_author=False)

    @miku.command(name="say")
    @commands.guild_only()
    async def say(self, ctx: commands.Context, *, text: str) -> None:
        """Speak TEXT verbatim in the voice channel."""
        session = self.bot.manager.get(ctx.guild.id if ctx.guild else None)
        if session is None:
            await ctx.reply(NOT_IN_SESSION, mention_author=False)
            return
        limit = self.bot.config.session.max_prompt_chars
        if len(text) > limit:
            await ctx.reply(f"❌ That's too long for me to say out loud ({len(text)} characters; the limit is {limit}).",
                            mention_author=False)
            return
        result = await session.submit(text, kind="say")
        if not result.accepted:
            await ctx.reply(result.message or "❌ I can't say that now.", mention_author=False)
        elif ctx.interaction is not None:
            await ctx.reply("🎤", mention_author=False)
        else:
            try:
                await ctx.message.add_reaction("🎤")
            except discord.HTTPException:
                pass

    @miku.command(name="voice-status")
    @commands.guild_only()
    async def voice_status(self, ctx: commands.Context) -> None:
        """Voice channel, prompt channel, GPU routing, blocked features, queue, session age, first-audio times."""
        session = self.bot.manager.get(ctx.guild.id if ctx.guild else None)
        features = health = None
        error = None
        try:
            health = await self.bot.graph.health()
            features = await self.bot.graph.features()
        except GraphError as exc:
            error = exc.message
        text = format_status(session.status() if session else None, features, health, error, self.command)
        await ctx.reply(text, mention_author=False)

    async def cog_command_error(self, ctx: commands.Context, error: commands.CommandError) -> None:
        if isinstance(error, commands.MissingRequiredArgument):
            example = {"track": "play song.ogg", "level": "volume 40"}.get(error.param.name, "say Hello everyone!")
            await ctx.reply(f"❌ Missing `{error.param.name}`. Try `{self.command} {example}`",
                            mention_author=False)
        elif isinstance(error, commands.BadArgument) and ctx.command is not None and ctx.command.name == "volume":
            await ctx.reply("❌ The volume is a whole number from 0 to 100.", mention_author=False)
        elif isinstance(error, (commands.ChannelNotFound, commands.BadArgument)):
            await ctx.reply("❌ I couldn't find that voice channel. Name a voice channel like `#General`.",
                            mention_author=False)
        elif isinstance(error, commands.NoPrivateMessage):
            await ctx.reply("❌ Voice commands only work in a server.", mention_author=False)
        else:
            log.exception("command %s failed", ctx.command, exc_info=error)
            await ctx.reply("*Miku seems confused...*", mention_author=False)
