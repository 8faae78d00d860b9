"""Carry out what the graph decided, and replay the text messages held back during a voice session.

The brain (`POST /v1/events`) answers each Discord event with actions (docs/brain.md): reply, send,
react, blocked, queue, rate_limited, mute, switch_persona, draw, look. `ActionExecutor` performs them through
the small `ChatOps` protocol (the cog implements it with discord.py), one at a time and in order; one
failing action (a deleted channel, a missing permission) is logged and does not stop the others.
`QueueReplayer` hands the controller's queue back to the brain after a session, acknowledging each message
only after its actions ran, so a crash mid-replay loses nothing and repeats nothing.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from .graph_api import GraphClient, GraphError, QueuedMessage
from .inputs import split_for_discord

log = logging.getLogger(__name__)

CONFUSED = "*Miku seems confused...*"


class ChatOps(Protocol):
    """The Discord operations actions need, addressed by ids (so tests use plain stand-ins)."""

    async def reply(self, channel_id: int, message_id: int | None, text: str) -> None: ...

    async def send(self, channel_id: int, text: str) -> None: ...

    async def react(self, channel_id: int, message_id: int, emoji: str) -> None: ...

    async def timeout_member(self, guild_id: int, user_id: int, duration_s: int, reason: str) -> None: ...

    async def set_nickname(self, guild_id: int, name: str) -> None: ...


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass
class ExecutionReport:
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (action type, why)
    skipped: list[str] = field(default_factory=list)
    queued: bool = False  # the brain held the message back (voice session)


class ActionExecutor:
    """Performs a list of brain actions for the event that caused them."""

    def __init__(self, ops: ChatOps, graph: GraphClient | None = None) -> None:
        self.ops = ops
        self.graph = graph  # for `queue`: the controller holds the message until the session ends

    async def execute(self, actions: list[dict], event: dict | None = None) -> ExecutionReport:
        report = ExecutionReport()
        event = event or {}
        for action in actions:
            kind = str(action.get("type", ""))
            handler = getattr(self, f"_do_{kind}", None)
            if handler is None:
                log.warning("unknown action %r from the brain; skipped", kind)
                report.skipped.append(kind)
                continue
            try:
                outcome = await handler(action, event)
            except Exception as exc:  # one failed Discord call must not lose the rest
                log.warning("action %s failed: %r", kind, exc)
                report.failed.append((kind, f"{type(exc).__name__}: {exc}"))
                continue
            if outcome is False:
                report.skipped.append(kind)
            else:
                report.done.append(kind)
                if kind == "queue":
                    report.queued = True
        return report

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _channel(action: dict, event: dict) -> int | None:
        return _int(action.get("channel_id")) or _int(event.get("channel_id"))

    async def _reply_text(self, action: dict, event: dict, text: str) -> None:
        channel = self._channel(action, event)
        if channel is None:
            raise ValueError("action names no channel")
        reply_to = _int(action.get("reply_to_message_id"))
        if reply_to is None and "reply_to_message_id" not in action:
            reply_to = _int(event.get("message_id"))
        parts = split_for_discord(text)
        for index, part in enumerate(parts):
            # Only the first part is a Discord reply; the rest follow it as plain messages.
            if index == 0 and reply_to is not None:
                await self.ops.reply(channel, reply_to, part)
            else:
                await self.ops.send(channel, part)

    # --- one method per action type -------------------------------------------------------------

    async def _do_reply(self, action: dict, event: dict) -> bool:
        text = action.get("text")
        if not isinstance(text, str) or not text.strip():
            # The brain sends generated text; a reply without it means generation failed upstream.
            log.warning("reply action without text: %s", action)
            text = CONFUSED
        await self._reply_text(action, event, text)
        return True

    async def _do_send(self, action: dict, event: dict) -> bool:
        text = action.get("text")
        channel = self._channel(action, event)
        if not isinstance(text, str) or not text.strip() or channel is None:
            return False
        # A send may thread onto a message (autonomous ones reply to a recent human message); the
        # causing event's message is never implied: a plain send stays plain.
        reply_to = _int(action.get("reply_to_message_id"))
        for index, part in enumerate(split_for_discord(text)):
            if index == 0 and reply_to is not None:
                await self.ops.reply(channel, reply_to, part)
            else:
                await self.ops.send(channel, part)
        return True

    async def _do_react(self, action: dict, event: dict) -> bool:
        channel = self._channel(action, event)
        message = _int(action.get("message_id")) or _int(event.get("message_id"))
        emoji = action.get("emoji")
        if channel is None or message is None or not emoji:
            return False
        await self.ops.react(channel, message, str(emoji))
        return True

    async def _do_blocked(self, action: dict, event: dict) -> bool:
        message = action.get("message")
        if not isinstance(message, str) or not message.strip():
            return False  # a silent blackout (e.g. bipolar mode): nothing to tell
        await self._reply_text(action, event, message)
        return True

    async def _do_queue(self, action: dict, event: dict) -> bool:
        if self.graph is not None and event:
            result = await self.graph.enqueue(event)
            if not result.get("queued", False):
                # The session ended in between: the brain can decide on it now.
                actions = await self.graph.post_event(event)
                await self.execute([a for a in actions if a.get("type") != "queue"], event)
                return True
            warning = result.get("warning")
            channel = self._channel(action, event)
            if isinstance(warning, str) and warning.strip() and channel is not None:
                await self.ops.send(channel, warning)
            if result.get("duplicate"):
                return True
        message = action.get("message")
        if isinstance(message, str) and message.strip():
            await self._reply_text(action, event, message)
        return True

    async def _do_rate_limited(self, action: dict, event: dict) -> bool:
        channel = self._channel(action, event)
        message_id = _int(action.get("message_id")) or _int(event.get("message_id"))
        if channel is not None and message_id is not None:
            await self.ops.react(channel, message_id, str(action.get("emoji") or "⏳"))
        text = action.get("message")
        if isinstance(text, str) and text.strip():
            await self._reply_text(action, event, text)
        return True

    async def _do_no_reply(self, action: dict, event: dict) -> bool:
        return True

    async def _do_mute(self, action: dict, event: dict) -> bool:
        guild = _int(action.get("guild_id")) or _int(event.get("guild_id"))
        user = _int(action.get("user_id"))
        if guild is None or user is None:
            return False
        await self.ops.timeout_member(guild, user, int(action.get("duration_s") or 600), str(action.get("reason") or ""))
        text = action.get("text")
        if isinstance(text, str) and text.strip():
            await self._reply_text(action, event, text)
        return True

    async def _do_switch_persona(self, action: dict, event: dict) -> bool:
        guild = _int(action.get("guild_id"))
        name = action.get("display_name")
        if guild is None or not name:
            return False
        await self.ops.set_nickname(guild, str(name))
        return True

    async def _do_draw(self, action: dict, event: dict) -> bool:
        # Image generation runs elsewhere; the thin client only says so instead of going quiet.
        await self._reply_text(action, event, "🎨 I can't draw on this bot yet: no image backend is configured.")
        return True

    async def _do_look(self, action: dict, event: dict) -> bool:
        await self._reply_text(action, event, "👀 I can't look at images on this bot yet: no vision backend is configured.")
        return True


@dataclass
class ReplayReport:
    replayed: int = 0
    acked: int = 0
    failed: int = 0
    complete: bool = True  # False: stopped early (graph unreachable, or a session holds the queue)
    reason: str | None = None


class QueueReplayer:
    """After a voice session: every held message goes through the brain again, in order, then is acked."""

    def __init__(self, graph: GraphClient, executor: ActionExecutor, batch_size: int = 20) -> None:
        self.graph = graph
        self.executor = executor
        self.batch_size = batch_size
        self._lock = asyncio.Lock()

    async def replay(self) -> ReplayReport:
        report = ReplayReport()
        async with self._lock:  # two replays at once would act on a message twice
            while True:
                try:
                    ready, batch = await self.graph.replay_batch(self.batch_size)
                except GraphError as exc:
                    report.complete, report.reason = False, exc.message
                    return report
                if not ready:
                    report.complete, report.reason = False, "a voice session holds the queue"
                    return report
                if not batch:
                    return report
                for queued in batch:
                    if not await self._replay_one(queued, report):
                        return report

    async def _replay_one(self, queued: QueuedMessage, report: ReplayReport) -> bool:
        event = dict(queued.event)
        try:
            actions = await self.graph.post_event(event)
        except GraphError as exc:
            if exc.status == 422:
                # A malformed stored event can never succeed: acknowledge it so it cannot block the queue.
                log.warning("queued message %s is not a valid event (%s); dropped", queued.queue_id, exc.message)
                actions = []
            else:
                report.complete, report.reason = False, exc.message
                return False
        result = await self.executor.execute(actions, event)
        report.replayed += 1
        report.failed += len(result.failed)
        try:
            await self.graph.ack_queued([queued.queue_id])
        except GraphError as exc:
            report.complete, report.reason = False, exc.message
            return False
        report.acked += 1
        return True
