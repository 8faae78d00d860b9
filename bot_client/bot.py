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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import discord
from discord.ext import commands

from .actions import ActionExecutor, ChatOps, ExecutionReport, QueueReplayer
from .autonomous import AutonomousPoller
from .avatars import FEATURE_PROFILE_PICTURE, AvatarFeed, AvatarSetup, AvatarSwitcher
from .config import AutonomousConfig, AutonomousServerConfig, BotConfig
from .discord_adapter import DiscordChatOps
from .features import BotFeatures, DiscordFeatureOps, FeatureConfigs
from .graph_api import GraphClient, GraphError
from .inputs import SeenMessages
from .router import MessageRouter
from .session import EndReason, PresenceKeeper, SessionManager, VoiceSession

log = logging.getLogger(__name__)

SERVER_CONFIG = "server_config"


MAX_DEFAULT_CHANNELS = 25  # a tracked-by-default server: at most this many channels (memory per server)


def default_server(guild: Any, me: Any) -> AutonomousServerConfig | None:
    """Where she may speak up in a server nobody configured: the text channels the bot can see and write
    in (at most MAX_DEFAULT_CHANNELS), the system channel first as the home channel. None: none at all."""
    writable = []
    for channel in getattr(guild, "text_channels", ()) or ():
        try:
            perms = channel.permissions_for(me)
        except Exception:  # a channel the cache knows too little about
            continue
        if perms.view_channel and perms.send_messages:
            writable.append(channel.id)
    if not writable:
        return None
    system = getattr(guild, "system_channel", None)
    home = system.id if system is not None and system.id in writable else writable[0]
    ordered = [home] + [c for c in writable if c != home]
    return AutonomousServerConfig(guild.id, tuple(ordered[:MAX_DEFAULT_CHANNELS]), home, None)


def server_config_events(
    config: AutonomousConfig,
    guild_ids: Iterable[int],
    *,
    stop: bool = False,
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    defaults: Mapping[int, AutonomousServerConfig] | None = None,
) -> list[dict]:
    """The `server_config` events to post for the guilds the bot is in: one per guild it tracks.

    A guild's settings are its entry in `config.servers`, else (with `track_all_servers`) its entry in
    `defaults` (built by `default_server` from the guild). Guilds with neither get nothing (she never
    speaks up there). With autonomy disabled, or `stop` (the bot left the guild), tracked guilds get an
    empty allow-list, which makes the graph stop tracking them. Each event has a fresh `event_id`, so a
    re-send after a reconnect is applied again.
    """
    events = []
    for guild_id in dict.fromkeys(int(g) for g in guild_ids):
        server = config.server(guild_id)
        if server is None and config.track_all_servers and defaults:
            server = defaults.get(guild_id)
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

    def __init__(self, config: AutonomousConfig, is_paused: Callable[[], bool] = lambda: False,
                 defaults: Mapping[int, AutonomousServerConfig] | None = None) -> None:
        self.config = config
        self.is_paused = is_paused
        self.defaults = defaults if defaults is not None else {}  # servers tracked by default (track_all_servers)
        self.dropped = 0

    def server(self, guild_id: Any) -> AutonomousServerConfig | None:
        """A server's settings: configured, else tracked by default."""
        server = self.config.server(guild_id or 0)
        if server is None and self.config.track_all_servers:
            try:
                server = self.defaults.get(int(guild_id))
            except (TypeError, ValueError):
                return None
        return server

    def why_not(self, action: dict) -> str | None:
        """None when the action may be carried out, else the reason it may not."""
        if not is_autonomous(action):
            return None
        if not self.config.enabled:
            return "autonomy is disabled in the bot config"
        if self.is_paused():
            return "a voice session is running"
        server = self.server(action.get("guild_id"))
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
    def __init__(self, config: BotConfig, graph: GraphClient, feature_configs: FeatureConfigs | None = None,
                 avatars: AvatarSetup | None = None) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned_or(config.command_prefix),
            intents=minimal_intents(config),
            help_command=None,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, replied_user=False),
        )
        self.config = config
        self.graph = graph
        self.ops = DiscordChatOps(self, persona_picture=(lambda p: avatars.library.persona_image(p).data)
                                  if avatars is not None else None)
        self.presence = PresenceKeeper(self._apply_presence, config.session.presence_text)
        self.manager = SessionManager(graph, config, self.presence, after_session=self._after_session,
                                      hearing_factory=self._start_hearing)
        self.default_servers: dict[int, AutonomousServerConfig] = {}  # filled from the guilds on connect
        self.guard = AutonomyGuard(config.autonomous, is_paused=lambda: bool(self.manager.sessions),
                                   defaults=self.default_servers)
        self.executor = GuardedExecutor(self.ops, graph, self.guard)
        self.replayer = QueueReplayer(graph, self.executor)
        self.router = MessageRouter(graph, self.manager, self.executor, self.ops,
                                    seen=SeenMessages(config.seen_messages))
        self._background: set[asyncio.Task] = set()
        self.poller = AutonomousPoller(graph, self._execute_autonomous, wait_s=config.autonomous.wait_s,
                                       on_recovered=self._resync_servers)
        # Scheduled events and the figurine notifier (bot_client/features.py), when their files are there.
        self.features = (BotFeatures(feature_configs, graph, DiscordFeatureOps(self))
                         if feature_configs is not None and (feature_configs.schedule or feature_configs.figurines)
                         else None)
        self.panel_link = None  # started with the features: they report to the admin panel (panel_link.py)
        # Profile picture per mood/persona (bot_client/avatars.py); None when not configured.
        self.avatar_setup = avatars
        self.avatars: AvatarSwitcher | None = None
        self._avatar_tasks: list[asyncio.Task] = []
        if avatars is not None and avatars.settings.enabled:
            self.avatars = AvatarSwitcher.from_setup(avatars, self._apply_avatar, self._avatar_allowed)
            self.executor.on_persona = self._persona_switched

    async def setup_hook(self) -> None:
        from .cogs.draw import DrawCog
        from .cogs.events import EventsCog
        from .cogs.voice import VoiceCog

        await self.add_cog(VoiceCog(self))
        await self.add_cog(EventsCog(self))
        if self.features is not None:
            from .cogs.features import FeaturesCog

            await self.add_cog(FeaturesCog(self, self.features))
            await self.features.start()
            from .panel_link import PanelLink

            self.panel_link = PanelLink(self.graph, self.features)  # the admin panel's jobs and feeds
            self.panel_link.start()
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
        for guild in self.guilds:
            self._learn_default(guild)
        self._spawn(self.send_server_configs([g.id for g in self.guilds]))
        if self.avatars is not None and not self._avatar_tasks:  # needs self.user: started once, when ready
            feed = AvatarFeed(self.avatars, self.graph.persona_mood, self._avatar_guild)
            self._avatar_tasks = [asyncio.ensure_future(self.avatars.run()), asyncio.ensure_future(feed.run())]

    async def on_resumed(self) -> None:
        await self.presence.reapply()  # a resumed gateway session may have lost the status too

    async def on_guild_join(self, guild: discord.Guild) -> None:
        self._learn_default(guild)
        self._spawn(self.send_server_configs([guild.id]))

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        self._spawn(self._forget_guild(guild.id))

    async def _forget_guild(self, guild_id: int) -> None:
        await self.send_server_configs([guild_id], stop=True)  # the graph stops tracking it
        self.default_servers.pop(guild_id, None)

    def _learn_default(self, guild: discord.Guild) -> None:
        """Where she may speak up in this guild if the config does not say (track_all_servers)."""
        if self.config.autonomous.server(guild.id) is not None or not self.config.autonomous.track_all_servers:
            return
        server = default_server(guild, guild.me)
        if server is None:
            self.default_servers.pop(guild.id, None)
        else:
            self.default_servers[guild.id] = server

    def autonomy_server(self, guild_id: int) -> AutonomousServerConfig | None:
        """The settings the engine tracks this guild with (configured or by default), or None."""
        return self.guard.server(guild_id)

    async def send_server_configs(self, guild_ids: Iterable[int], *, stop: bool = False) -> int:
        """Post the `server_config` events for these guilds; returns how many the graph accepted.

        Failures are logged, never raised: the bot works without autonomy, and the poller's recovery
        hook sends them again once the graph answers.
        """
        sent = 0
        for event in server_config_events(self.config.autonomous, guild_ids, stop=stop, defaults=self.default_servers):
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

    async def _start_hearing(self, session: VoiceSession, link: object) -> object:
        """Listening on a live voice connection (servers with `listen.servers: {id: true}`)."""
        from .discord_receive import DiscordVoiceTap, dave_gate
        from .hearing import Hearing, Member

        if not hasattr(link, "_connection"):
            raise RuntimeError("this voice connection cannot receive audio")
        guild = self.get_guild(session.guild_id)

        def member(user_id: int) -> Member | None:
            m = guild.get_member(user_id) if guild is not None else None
            if m is None:
                return None
            perms = getattr(m, "guild_permissions", None)
            return Member(user_id, m.display_name, tuple(r.name for r in getattr(m, "roles", ()) or ()),
                          bool(perms is not None and perms.administrator))

        def listens_to(user_id: int) -> bool:
            # Only people: not bots, not herself, and only members in the session's voice channel.
            m = guild.get_member(user_id) if guild is not None else None
            if m is None or m.bot or (self.user is not None and user_id == self.user.id):
                return False
            channel = getattr(getattr(m, "voice", None), "channel", None)
            return channel is not None and channel.id == session.voice_channel_id

        hearing = Hearing(session, self.graph, self.config, member=member, dave=dave_gate(link))
        await hearing.start()
        tap = DiscordVoiceTap(link, hearing.receiver, listens_to=listens_to)
        try:
            tap.start()
        except Exception:
            tap.stop()
            await hearing.close()  # no half-started listening: the uplink closes too
            raise
        hearing.tap = tap
        return hearing

    async def _after_session(self, session: VoiceSession, reason: EndReason) -> None:
        self._spawn(self.replayer.replay())
        if self.features is not None:
            self._spawn(self.features.after_session())  # deferred scheduled runs, waiting figurine posts
        if self.avatars is not None:
            self.avatars.session_ended()  # the picture wanted now goes out once (if still wanted)

    # --- profile picture ------------------------------------------------------------------------

    def _avatar_guild(self) -> int | None:
        """The server whose mood she wears: the configured one, else the first she is in."""
        configured = self.avatar_setup.settings.guild_id if self.avatar_setup else None
        if configured is not None:
            return configured
        return min((g.id for g in self.guilds), default=None)

    async def _apply_avatar(self, data: bytes) -> None:
        if self.user is None:
            raise RuntimeError("not logged in yet")
        await self.user.edit(avatar=data)

    async def _avatar_allowed(self) -> bool:
        """`check("profile_picture")`: locked while a session runs (the bot's own, or any the controller has)."""
        if self.manager.sessions:
            return False
        return not (await self.graph.check_feature(FEATURE_PROFILE_PICTURE)).blocked

    def _persona_switched(self, guild_id: int, persona: str) -> None:
        if self.avatars is not None and guild_id == self._avatar_guild():
            self.avatars.want(persona, self.avatars.wanted_for[1])

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        # Shutdown ends every session first, so no feature stays blocked longer than needed.
        for task in self._avatar_tasks:
            task.cancel()
        try:
            await self.manager.shutdown()
        finally:
            try:
                await self.poller.stop()  # before the graph client closes: no poll outlives it
            except Exception:
                log.exception("stopping the autonomous poller failed")
            if self.panel_link is not None:
                await self.panel_link.stop()
            if self.features is not None:
                try:
                    await self.features.close()
                except Exception:
                    log.exception("stopping the scheduled events / figurine notifier failed")
            await self.graph.close()
            await super().close()
