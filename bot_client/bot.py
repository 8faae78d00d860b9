"""`MikuBot`: the `commands.Bot` that wires the plain parts (graph client, sessions, router) to Discord."""
from __future__ import annotations

import asyncio
import logging

import discord
from discord.ext import commands

from .actions import ActionExecutor, QueueReplayer
from .config import BotConfig
from .discord_adapter import DiscordChatOps
from .graph_api import GraphClient
from .inputs import SeenMessages
from .router import MessageRouter
from .session import EndReason, PresenceKeeper, SessionManager, VoiceSession

log = logging.getLogger(__name__)


def minimal_intents() -> discord.Intents:
    """Guilds, guild messages with their content (prompts and prefix commands), and voice states."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.message_content = True
    intents.voice_states = True
    return intents


class MikuBot(commands.Bot):
    def __init__(self, config: BotConfig, graph: GraphClient) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned_or(config.command_prefix),
            intents=minimal_intents(),
            help_command=None,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, replied_user=False),
        )
        self.config = config
        self.graph = graph
        self.ops = DiscordChatOps(self)
        self.presence = PresenceKeeper(self._apply_presence, config.session.presence_text)
        self.manager = SessionManager(graph, config, self.presence, after_session=self._after_session)
        self.executor = ActionExecutor(self.ops, graph)
        self.replayer = QueueReplayer(graph, self.executor)
        self.router = MessageRouter(graph, self.manager, self.executor, self.ops,
                                    seen=SeenMessages(config.seen_messages))
        self._background: set[asyncio.Task] = set()

    async def setup_hook(self) -> None:
        from .cogs.events import EventsCog
        from .cogs.voice import VoiceCog

        await self.add_cog(VoiceCog(self))
        await self.add_cog(EventsCog(self))
        if self.config.sync_app_commands:
            try:
                await self.tree.sync()
            except discord.HTTPException:
                log.warning("could not sync slash commands; prefix commands still work", exc_info=True)

    async def on_ready(self) -> None:
        self.router.bot_id = self.user.id if self.user else None
        log.info("logged in as %s", self.user)
        if not self.manager.sessions:
            self._spawn(self.replayer.replay())  # messages left queued by a crash during a session

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
            await self.graph.close()
            await super().close()
