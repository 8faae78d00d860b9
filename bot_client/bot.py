"""`MikuBot`: the `commands.Bot` that wires the plain parts (graph client, sessions, router) to Discord.

It also connects the graph's autonomous engine (docs/autonomous.md, "Hosting"): on every `on_ready` and
`on_guild_join` it tells the graph where Miku may speak up on her own (`server_config` events built by
`server_config_events`), an `AutonomousPoller` fetches what the engine decided, and `AutonomyGuard`
makes sure an autonomous message only ever goes to a channel this bot's config allows.
With `autonomous.presence_events` on, `minimal_intents` adds the privileged presences and members
intents and the events cog forwards activity starts and joins (`presence.py`).
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable

import discord
from discord.ext import commands

from .actions import ActionExecutor, ChatOps, ExecutionReport, QueueReplayer
from .autonomous import AutonomousPoller
from .config import AutonomousConfig, BotConfig
from .discord_adapter import DiscordChatOps
from .graph_api import GraphClient, GraphError
from .inputs import SeenMessages
from .router import MessageRouter
from .session import EndReason, PresenceKeeper, SessionManager, VoiceSession

log = logging.getLogger(__name__)

SERVER_CONFIG = "server_config"


def server_config_events(
    config: AutonomousConfig,
    guild_ids: Iterable[int],
    *,
    stop: bool = False,
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> list[dict]:
    """The `server_config` events to post for the guilds the bot is in: one per guild configured here.

    Guilds without settings get nothing (she never speaks up there). With autonomy disabled, or `stop`
    (the bot left the guild), configured guilds get an empty allow-list, which makes the graph stop
    tracking them. Each event has a fresh `event_id`, so a re-send after a reconnect is applied again.
    """
    events = []
    for guild_id in dict.fromkeys(int(g) for g in guild_ids):
        server = config.server(guild_id)
        if server is None:
            continue
        channels = server.allowed_channels if config.enabled and not stop else ()
        event: dict = {
            "type": SERVER_CONFIG,
            "event_id": f"{SERVER_CONFIG}:{guild_id}:{new_id()}",
            "guild_id": str(guild_id),
            "allowed_channels": [str(c) for c in channels],
        }
        if channels and server.home_channel_id is not None:
            event["home_channel_id"] = str(server.home_channel_id)
        if channels and server.timezone:
            event["timezone"] = server.timezone
        events.append(event)
    return events


def is_autonomous(action: dict) -> bool:
    """Autonomous decisions arrive as `send` actions carrying an `autonomous` record (docs/autonomous.md)."""
    return isinstance(action.get("autonomous"), dict)


class AutonomyGuard:
    """Drops autonomous actions this bot must not carry out, whatever the graph decided.

    Allowed: autonomy enabled, no voice session running (the graph pauses too, but an action taken just
    before a session started must not talk over it), and the action's channel in its guild's allow-list.
    Other actions (replies to messages and so on) always pass.
    """

    def __init__(self, config: AutonomousConfig, is_paused: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.is_paused = is_paused
        self.dropped = 0

    def why_not(self, action: dict) -> str | None:
        """None when the action may be carried out, else the reason it may not."""
        if not is_autonomous(action):
            return None
        if not self.config.enabled:
            return "autonomy is disabled in the bot config"
        if self.is_paused():
            return "a voice session is running"
        server = self.config.server(action.get("guild_id") or 0)
        if server is None:
            return f"server {action.get('guild_id')} has no autonomous settings"
        try:
            channel = int(action.get("channel_id"))
        except (TypeError, ValueError):
            return "the action names no channel"
        if channel not in server.allowed_channels:
            return f"channel {channel} is not in the allow-list of server {server.guild_id}"
        return None

    def filter(self, actions: list[dict]) -> list[dict]:
        kept = []
        for action in actions:
            reason = self.why_not(action)
            if reason is None:
                kept.append(action)
            else:
                self.dropped += 1
                log.info("autonomous %s action dropped: %s", action.get("type"), reason)
        return kept


class GuardedExecutor(ActionExecutor):
    """`ActionExecutor` whose every batch (event answers, replays, polled actions) passes the guard first."""

    def __init__(self, ops: ChatOps, graph: GraphClient | None, guard: AutonomyGuard) -> None:
        super().__init__(ops, graph)
        self.guard = guard

    async def execute(self, actions: list[dict], event: dict | None = None) -> ExecutionReport:
        return await super().execute(self.guard.filter(actions), event)


def minimal_intents(config: BotConfig | AutonomousConfig | None = None) -> discord.Intents:
    """Guilds, guild messages with their content (prompts and prefix commands), and voice states.

    With `autonomous.presence_events` on, also presences and members (both privileged: they must be
    enabled in the Discord developer portal too), so presence updates and member joins arrive for the
    autonomous engine.
    """
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.message_content = True
    intents.voice_states = True
    autonomous = config.autonomous if isinstance(config, BotConfig) else config
    if autonomous is not None and autonomous.presence_events:
        intents.presences = True
        intents.members = True
    return intents


class MikuBot(commands.Bot):
    def __init__(self, config: BotConfig, graph: GraphClient) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned_or(config.command_prefix),
            intents=minimal_intents(config),
            help_command=None,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, replied_user=False),
        )
        self.config = config
        self.graph = graph
        self.ops = DiscordChatOps(self)
        self.presence = PresenceKeeper(self._apply_presence, config.session.presence_text)
        self.manager = SessionManager(graph, config, self.presence, after_session=self._after_session)
        self.guard = AutonomyGuard(config.autonomous, is_paused=lambda: bool(self.manager.sessions))
        self.executor = GuardedExecutor(self.ops, graph, self.guard)
        self.replayer = QueueReplayer(graph, self.executor)
        self.router = MessageRouter(graph, self.manager, self.executor, self.ops,
                                    seen=SeenMessages(config.seen_messages))
        self._background: set[asyncio.Task] = set()
        self.poller = AutonomousPoller(graph, self._execute_autonomous, wait_s=config.autonomous.wait_s,
                                       on_recovered=self._resync_servers)

    async def setup_hook(self) -> None:
        from .cogs.draw import DrawCog
        from .cogs.events import EventsCog
        from .cogs.voice import VoiceCog

        await self.add_cog(VoiceCog(self))
        await self.add_cog(EventsCog(self))
        await self.add_cog(DrawCog(self))  # /draw (typed /draw and !draw messages reach the brain as they are)
        if self.config.sync_app_commands:
            try:
                await self.tree.sync()
            except discord.HTTPException:
                log.warning("could not sync slash commands; prefix commands still work", exc_info=True)
        if self.config.autonomous.enabled:
            self.poller.start()

    async def on_ready(self) -> None:
        self.router.bot_id = self.user.id if self.user else None
        log.info("logged in as %s", self.user)
        await self.presence.reapply()  # a new gateway session shows no status: "🎤 In Voice Chat" again
        if not self.manager.sessions:
            self._spawn(self.replayer.replay())  # messages left queued by a crash during a session
        # The graph keeps server settings in memory only: send them after every (re)connect.
        self._spawn(self.send_server_configs([g.id for g in self.guilds]))

    async def on_resumed(self) -> None:
        await self.presence.reapply()  # a resumed gateway session may have lost the status too

    async def on_guild_join(self, guild: discord.Guild) -> None:
        self._spawn(self.send_server_configs([guild.id]))

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        self._spawn(self.send_server_configs([guild.id], stop=True))  # the graph stops tracking it

    async def send_server_configs(self, guild_ids: Iterable[int], *, stop: bool = False) -> int:
        """Post the `server_config` events for these guilds; returns how many the graph accepted.

        Failures are logged, never raised: the bot works without autonomy, and the poller's recovery
        hook sends them again once the graph answers.
        """
        sent = 0
        for event in server_config_events(self.config.autonomous, guild_ids, stop=stop):
            try:
                await self.graph.post_event(event)
                sent += 1
            except GraphError as exc:
                log.warning("could not send autonomous settings of server %s: %s", event["guild_id"], exc.message)
            except Exception:
                log.exception("could not send autonomous settings of server %s", event["guild_id"])
        return sent

    async def _resync_servers(self) -> None:
        await self.send_server_configs([g.id for g in self.guilds])

    async def _execute_autonomous(self, actions: list[dict]) -> ExecutionReport:
        # No Discord message caused these: the executor addresses them by their own channel_id.
        return await self.executor.execute(actions)

    async def on_command_error(self, context: commands.Context, exception: commands.CommandError) -> None:
        # `!mood`, `!modfile` and friends are the brain's commands: they arrive as messages, not here.
        if isinstance(exception, commands.CommandNotFound):
            return
        await super().on_command_error(context, exception)

    async def _apply_presence(self, text: str | None) -> None:
        activity = discord.CustomActivity(name=text) if text else None
        await self.change_presence(activity=activity)

    async def _after_session(self, session: VoiceSession, reason: EndReason) -> None:
        self._spawn(self.replayer.replay())

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        # Shutdown ends every session first, so no feature stays blocked longer than needed.
        try:
            await self.manager.shutdown()
        finally:
            try:
                await self.poller.stop()  # before the graph client closes: no poll outlives it
            except Exception:
                log.exception("stopping the autonomous poller failed")
            await self.graph.close()
            await super().close()
