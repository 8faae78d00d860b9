"""`schedule` and `figures` commands (prefix and slash): the scheduled events and the figurine notifier.

`!schedule list | add | remove | pause | resume | run` is for server admins and the roles in
`admin_roles` of configs/schedule.yaml. `!figures here | off` subscribes the channel (admins and the
file's `admin_roles`); `!figures dm | nodm` is anyone's own DM subscription; `!figures` shows the state.
Each command only gathers Discord facts and calls the plain services in bot_client/features.py.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable

import discord
from discord.ext import commands

from graph.features.figurines import Target
from graph.features.gate import GateState
from graph.features.schedule import ScheduleConfigError, job_from_command
from graph.features.scheduler import RunOutcome

from ..features import RUN_REPLIES, BotFeatures, add_fields, format_jobs, format_next
from .voice import member_roles

if TYPE_CHECKING:
    from ..bot import MikuBot

log = logging.getLogger(__name__)

OFF = "❌ {what} are switched off in my configuration."


def may_administer(member: object, roles: Iterable[str], admins_always: bool = True) -> bool:
    """Server admins (and members with Manage Server) always; otherwise one of `roles` (none: nobody else)."""
    names, admin = member_roles(member)
    perms = getattr(member, "guild_permissions", None)
    if (admin or bool(perms is not None and perms.manage_guild)) and admins_always:
        return True
    have = {n.casefold() for n in names}
    return any(r.casefold() in have for r in roles)


class FeaturesCog(commands.Cog, name="Features"):
    def __init__(self, bot: "MikuBot", features: BotFeatures) -> None:
        self.bot = bot
        self.features = features

    async def _reply(self, ctx: commands.Context, text: str) -> None:
        await ctx.reply(text, mention_author=False)

    async def _admin(self, ctx: commands.Context, roles: Iterable[str], what: str) -> bool:
        roles = tuple(roles)
        if may_administer(ctx.author, roles, self.bot.config.permissions.admins_always_allowed):
            return True
        needed = ", ".join(f"**{r}**" for r in roles) or "server admins only"
        await self._reply(ctx, f"❌ You don't have permission to {what}: {needed}.")
        return False

    # ---- scheduled events ----------------------------------------------------------------------

    async def _scheduler(self, ctx: commands.Context):
        scheduler = self.features.scheduler
        if scheduler is None:
            await self._reply(ctx, OFF.format(what="Scheduled events"))
            return None
        if not await self._admin(ctx, scheduler.config.admin_roles, "manage scheduled events"):
            return None
        return scheduler

    def _own(self, scheduler, ctx: commands.Context, job_id: str):
        spec = scheduler.get(job_id.strip().lower())
        return spec if spec is not None and ctx.guild is not None and spec.guild_id == ctx.guild.id else None

    async def _job(self, ctx: commands.Context, job_id: str):
        """(scheduler, this server's job `job_id`), or None after telling the author why not."""
        scheduler = await self._scheduler(ctx)
        if scheduler is None:
            return None
        spec = self._own(scheduler, ctx, job_id)
        if spec is None:
            await self._reply(ctx, RUN_REPLIES[RunOutcome.UNKNOWN].format(job=job_id))
            return None
        return scheduler, spec

    @commands.hybrid_group(name="schedule", invoke_without_command=True, fallback="list")
    @commands.guild_only()
    async def schedule(self, ctx: commands.Context) -> None:
        """List this server's scheduled events."""
        scheduler = await self._scheduler(ctx)
        if scheduler is None:
            return
        await scheduler.gate.is_open()
        paused = scheduler.gate.state is not GateState.OPEN
        await self._reply(ctx, format_jobs(scheduler.jobs(ctx.guild.id), paused_by_voice=paused))

    @schedule.command(name="add")
    @commands.guild_only()
    async def add(self, ctx: commands.Context, job_id: str, channel: discord.TextChannel, when: str,
                  kind: str, *, content: str) -> None:
        """Add a job: ID #channel "0 9 * * mon"|"every 6h" text|random|prompt CONTENT (random: a | b | c)."""
        scheduler = await self._scheduler(ctx)
        if scheduler is None:
            return
        try:
            spec = job_from_command(add_fields(job_id, ctx.guild.id, channel.id, when, kind, content), scheduler.config)
            scheduler.add(spec)
        except (ScheduleConfigError, ValueError) as exc:
            await self._reply(ctx, f"❌ {exc}")
            return
        next_run = scheduler.jobs(ctx.guild.id)
        view = next((v for v in next_run if v.spec.job_id == spec.job_id), None)
        await self._reply(ctx, f"✅ Added `{spec.job_id}`: {spec.trigger.describe()} ({spec.timezone}) in "
                               f"<#{spec.channel_id}>, {format_next(view.next_run if view else None)}.")

    @schedule.command(name="remove")
    @commands.guild_only()
    async def remove(self, ctx: commands.Context, job_id: str) -> None:
        """Remove a job added by command."""
        found = await self._job(ctx, job_id)
        if found is None:
            return
        scheduler, spec = found
        try:
            scheduler.remove(spec.job_id)
        except ValueError as exc:
            await self._reply(ctx, f"❌ {exc}")
            return
        await self._reply(ctx, f"🗑️ Removed `{spec.job_id}`.")

    @schedule.command(name="pause")
    @commands.guild_only()
    async def pause(self, ctx: commands.Context, job_id: str) -> None:
        """Pause a job until `schedule resume`."""
        found = await self._job(ctx, job_id)
        if found is None:
            return
        scheduler, spec = found
        scheduler.pause(spec.job_id)
        await self._reply(ctx, f"⏸️ Paused `{spec.job_id}`.")

    @schedule.command(name="resume")
    @commands.guild_only()
    async def resume(self, ctx: commands.Context, job_id: str) -> None:
        """Resume a paused job."""
        found = await self._job(ctx, job_id)
        if found is None:
            return
        scheduler, spec = found
        await self._reply(ctx, f"▶️ Resumed `{spec.job_id}`, {format_next(scheduler.resume(spec.job_id))}.")

    @schedule.command(name="run")
    @commands.guild_only()
    async def run(self, ctx: commands.Context, job_id: str) -> None:
        """Run a job now (during a voice session: once when it ends)."""
        found = await self._job(ctx, job_id)
        if found is None:
            return
        scheduler, spec = found
        await ctx.defer()
        outcome = await scheduler.fire(spec, manual=True)
        await self._reply(ctx, RUN_REPLIES[outcome].format(job=spec.job_id))

    # ---- figurine notifier ---------------------------------------------------------------------

    async def _notifier(self, ctx: commands.Context):
        if self.features.figurines is None:
            await self._reply(ctx, OFF.format(what="Figurine notifications"))
        return self.features.figurines

    @commands.hybrid_group(name="figures", invoke_without_command=True, fallback="status")
    async def figures(self, ctx: commands.Context) -> None:
        """What the figurine notifier watches and who gets its posts."""
        notifier = await self._notifier(ctx)
        if notifier is None:
            return
        targets = notifier.targets()
        channels = [t for t in targets if t.kind == "channel"]
        dm = any(t.kind == "user" and t.id == ctx.author.id for t in targets)
        errors = notifier.store.feed_errors()
        await notifier.gate.is_open()
        lines = [f"**🎁 Figurine notifier** · {len(notifier.config.feeds)} feed(s) · keywords: "
                 + ", ".join(notifier.config.keywords),
                 "Channels: " + (", ".join(f"<#{t.id}>" for t in channels) or "none"),
                 f"Your DMs: {'on' if dm else 'off'} (`!figures dm` / `!figures nodm`)",
                 f"Waiting posts: {notifier.store.waiting_count()}"
                 + (" (I'm in voice chat: they go out when I leave)" if notifier.gate.state is not GateState.OPEN else "")]
        if errors:
            lines.append(f"⚠️ {len(errors)} feed(s) failing, retried with backoff")
        await self._reply(ctx, "\n".join(lines))

    @figures.command(name="here")
    @commands.guild_only()
    async def here(self, ctx: commands.Context) -> None:
        """Post new figures in this channel."""
        notifier = await self._notifier(ctx)
        if notifier is None or not await self._admin(ctx, notifier.config.admin_roles, "subscribe this channel"):
            return
        added = notifier.subscribe(Target("channel", ctx.channel.id))
        await self._reply(ctx, "🎁 New Miku figures will be posted here." if added else "🎁 This channel is already subscribed.")

    @figures.command(name="off")
    @commands.guild_only()
    async def off(self, ctx: commands.Context) -> None:
        """Stop posting new figures in this channel."""
        notifier = await self._notifier(ctx)
        if notifier is None or not await self._admin(ctx, notifier.config.admin_roles, "unsubscribe this channel"):
            return
        removed = notifier.unsubscribe(Target("channel", ctx.channel.id))
        await self._reply(ctx, "🔕 No more figure posts here." if removed else "🔕 This channel was not subscribed.")

    @figures.command(name="dm")
    async def dm(self, ctx: commands.Context) -> None:
        """Get new figures in your DMs."""
        notifier = await self._notifier(ctx)
        if notifier is None:
            return
        added = notifier.subscribe(Target("user", ctx.author.id))
        await self._reply(ctx, "📬 I'll DM you new Miku figures." if added else "📬 You're already subscribed.")

    @figures.command(name="nodm")
    async def nodm(self, ctx: commands.Context) -> None:
        """Stop the DMs."""
        notifier = await self._notifier(ctx)
        if notifier is None:
            return
        removed = notifier.unsubscribe(Target("user", ctx.author.id))
        await self._reply(ctx, "📭 No more figure DMs." if removed else "📭 You weren't subscribed.")

    async def cog_command_error(self, ctx: commands.Context, error: commands.CommandError) -> None:
        if isinstance(error, commands.MissingRequiredArgument):
            await self._reply(ctx, f"❌ Missing `{error.param.name}`. Example: `!schedule add monday-video #general "
                                   f"\"0 9 * * mon\" random https://youtu.be/a | https://youtu.be/b`")
        elif isinstance(error, (commands.ChannelNotFound, commands.BadArgument)):
            await self._reply(ctx, "❌ I couldn't find that text channel.")
        elif isinstance(error, commands.NoPrivateMessage):
            await self._reply(ctx, "❌ That only works in a server.")
        else:
            log.exception("command %s failed", ctx.command, exc_info=error)
            await self._reply(ctx, "*Miku seems confused...*")

