"""Where a message goes: the session's prompt channel speaks it, everything else asks the brain.

Each Discord message is acted on once (`SeenMessages`), even when the gateway redelivers it after a
reconnect. An unreachable graph is reported to the user only when the message was meant for Miku.
"""
from __future__ import annotations

import dataclasses
import logging

from .actions import ActionExecutor, ChatOps, ExecutionReport
from .graph_api import GraphClient, GraphError, GraphUnavailable
from .inputs import IncomingMessage, SeenMessages
from .prompts import handle_prompt
from .session import SessionManager

log = logging.getLogger(__name__)

GRAPH_DOWN_REPLY = "⚠️ I can't think right now: my graph is unreachable. Try again in a minute."


class MessageRouter:
    def __init__(
        self,
        graph: GraphClient,
        manager: SessionManager,
        executor: ActionExecutor,
        ops: ChatOps,
        *,
        bot_id: int | None = None,
        seen: SeenMessages | None = None,
    ) -> None:
        self.graph = graph
        self.manager = manager
        self.executor = executor
        self.ops = ops
        self.bot_id = bot_id
        self.seen = seen or SeenMessages()

    async def _vision_notice(self) -> str | None:
        for feature in await self.graph.features():
            if feature.name == "vision" and feature.blocked:
                return feature.message
        return None

    async def route(self, message: IncomingMessage) -> str:
        """Act on one message; returns what happened (`duplicate`, `self`, a prompt verdict, `event`,
        `event_failed`)."""
        if not self.seen.first_time(message.message_id):
            log.debug("message %s seen before; not acted on again", message.message_id)
            return "duplicate"
        if message.author_is_self or (self.bot_id is not None and message.author_id == self.bot_id):
            # Her own messages are history for the brain's memory, never prompts or things to act on.
            try:
                await self.graph.post_event(dataclasses.replace(message, author_is_self=True).to_event())
            except GraphError as exc:
                log.debug("own message %s not stored: %s", message.message_id, exc.message)
            return "self"
        session = self.manager.by_prompt_channel(message.channel_id)
        if session is not None and not message.author_is_bot:
            return await handle_prompt(session, message, self.ops, bot_id=self.bot_id,
                                       vision_notice=self._vision_notice)
        event = message.to_event()
        try:
            actions = await self.graph.post_event(event)
        except GraphError as exc:
            log.warning("event %s not handled: %s", event["event_id"], exc.message)
            if isinstance(exc, GraphUnavailable) and (message.mentions_bot or message.reply_to_bot):
                try:
                    await self.ops.reply(message.channel_id, message.message_id, GRAPH_DOWN_REPLY)
                except Exception:
                    log.debug("could not tell the user the graph is down", exc_info=True)
            return "event_failed"
        report: ExecutionReport = await self.executor.execute(actions, event)
        if report.failed:
            log.warning("actions for %s partly failed: %s", event["event_id"], report.failed)
        return "event"
