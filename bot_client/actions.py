"""Carry out what the graph decided, and replay the text messages held back during a voice session.

The brain (`POST /v1/events`) answers each Discord event with actions (docs/brain.md): reply, send,
react, blocked, queue, rate_limited, mute, switch_persona, draw, look, argument (bipolar mode). `ActionExecutor` performs them through
the small `ChatOps` protocol (the cog implements it with discord.py), one at a time and in order; one
failing action (a deleted channel, a missing permission) is logged and does not stop the others.
`draw` and `look` go to the graph's media routes (`POST /v1/images`, `/v1/vision`): the channel shows the
typing indicator and a progress message that is edited as the drawing goes (at most every
`progress_interval_s`), then the picture is posted as a reply with its prompt and seed, or the progress
message becomes the error, which names what failed.
`QueueReplayer` hands the controller's queue back to the brain after a session, acknowledging each message
only after its actions ran, so a crash mid-replay loses nothing and repeats nothing.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .graph_api import GraphClient, GraphError, QueuedMessage
from .inputs import split_for_discord

log = logging.getLogger(__name__)

CONFUSED = "*Miku seems confused...*"
GPU_FEATURES = ("image_generation", "vision")  # the GTX 1660's features a voice session blocks


class ChatOps(Protocol):
    """The Discord operations actions need, addressed by ids (so tests use plain stand-ins)."""

    async def reply(self, channel_id: int, message_id: int | None, text: str) -> None: ...

    async def send(self, channel_id: int, text: str) -> None: ...

    async def react(self, channel_id: int, message_id: int, emoji: str) -> None: ...

    async def timeout_member(self, guild_id: int, user_id: int, duration_s: int, reason: str) -> None: ...

    async def set_nickname(self, guild_id: int, name: str) -> None: ...

    # Optional (bipolar mode): post as a persona, through a channel webhook with its name and picture.
    # async def send_as(self, channel_id: int, persona: str, display_name: str, text: str) -> None: ...

    # drawing and looking (media actions)
    async def typing(self, channel_id: int) -> None: ...  # show "Miku is typing..." (~10 s)

    async def reply_progress(self, channel_id: int, message_id: int | None, text: str) -> int | None: ...

    async def edit(self, channel_id: int, message_id: int, text: str) -> None: ...

    async def delete(self, channel_id: int, message_id: int) -> None: ...

    async def reply_image(self, channel_id: int, message_id: int | None, text: str, filename: str, data: bytes) -> None: ...


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

    def __init__(self, ops: ChatOps, graph: GraphClient | None = None, *, progress_interval_s: float = 1.5,
                 typing_every_s: float = 8.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ops = ops
        self.graph = graph  # for `queue` (the controller holds the message) and the media routes
        self.on_persona: Callable[[int, str], None] | None = None  # a switch_persona was carried out (avatars)
        self.sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep  # injectable (tests)
        self.progress_interval_s = progress_interval_s  # Discord allows ~5 edits per 5 s per channel
        self.typing_every_s = typing_every_s
        self.clock = clock

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
        if action.get("feature") in GPU_FEATURES:
            # the plan's 🎤 on the request: drawing and vision wait for the voice session to end
            channel = self._channel(action, event)
            target = _int(action.get("reply_to_message_id")) or _int(event.get("message_id"))
            if channel is not None and target is not None:
                with contextlib.suppress(Exception):
                    await self.ops.react(channel, target, "🎤")
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
        if self.on_persona is not None and action.get("persona"):
            self.on_persona(guild, str(action["persona"]))
        return True

    async def _do_argument(self, action: dict, event: dict) -> bool:
        """Bipolar mode: each line as its persona (a webhook with that name and picture), in order."""
        channel = self._channel(action, event)
        lines = [line for line in action.get("lines") or [] if isinstance(line, dict) and str(line.get("text", "")).strip()]
        if channel is None or not lines:
            return False
        send_as = getattr(self.ops, "send_as", None)
        try:
            pace = min(max(float(action.get("pace_s") or 0.0), 0.0), 10.0)
        except (TypeError, ValueError):
            pace = 0.0
        for index, line in enumerate(lines):
            if index and pace:
                await self.sleep(pace)  # a pause between speakers, so it reads like a chat
            persona, name = str(line.get("persona") or ""), str(line.get("display_name") or line.get("persona") or "")
            for part in split_for_discord(str(line["text"])):
                if send_as is not None:
                    await send_as(channel, persona, name, part)
                else:  # no webhooks here: the name in bold says who speaks
                    await self.ops.send(channel, f"**{name}**: {part}")
        return True

    async def _do_draw(self, action: dict, event: dict) -> bool:
        channel = self._channel(action, event)
        if channel is None:
            raise ValueError("draw action names no channel")
        reply_to = _int(action.get("reply_to_message_id")) or _int(event.get("message_id"))
        subject = str(action.get("prompt") or "").strip()
        order: dict[str, Any] = {"prompt": subject, "style": str(action.get("style") or ""),
                                 "nsfw_channel": bool(event.get("channel_nsfw", False))}
        for key in ("seed", "width", "height", "steps"):
            if isinstance(action.get(key), int):
                order[key] = action[key]
        progress = ProgressMessage(self.ops, channel, reply_to, self.clock, self.progress_interval_s)
        if self.graph is None:
            await progress.finish("❌ I can't draw: this bot is not connected to a graph.")
            return True
        await progress.start(f"🎨 Drawing *{_short(subject, 120)}*...")
        async with self._typing(channel):
            try:
                async for item in self.graph.draw(order):
                    kind = item.get("type")
                    if kind == "progress":
                        await progress.update(f"🎨 {item.get('message') or 'drawing...'}")
                    elif kind == "image":
                        try:
                            data = base64.b64decode(str(item.get("png_b64") or ""), validate=True)
                        except (binascii.Error, ValueError):
                            await progress.finish("❌ I couldn't draw that: the graph sent a broken picture.")
                            return True
                        await self.ops.reply_image(channel, reply_to, image_caption(subject, item), "miku-drawing.png", data)
                        await progress.remove()
                        return True
                    elif kind == "error":
                        await progress.finish(media_error_text("draw", item))
                        return True
                await progress.finish("❌ I couldn't draw that: the graph ended the drawing without a picture.")
            except GraphError as exc:
                await progress.finish(f"❌ I couldn't draw that: {exc.message}")
        return True

    async def _do_look(self, action: dict, event: dict) -> bool:
        channel = self._channel(action, event)
        if channel is None:
            raise ValueError("look action names no channel")
        reply_to = _int(action.get("reply_to_message_id")) or _int(event.get("message_id"))
        media = [{"url": str(a.get("url", "")), "content_type": str(a.get("content_type", ""))}
                 for a in action.get("attachments") or [] if isinstance(a, dict) and a.get("url")]
        prompt = action.get("prompt") if isinstance(action.get("prompt"), dict) else {}
        order = {"media": media[:10], "system": str(prompt.get("system") or ""),
                 "history": [list(turn)[:2] for turn in prompt.get("history") or [] if len(turn) >= 2][-20:],
                 "text": str(prompt.get("user") or event.get("content") or "")}
        progress = ProgressMessage(self.ops, channel, reply_to, self.clock, self.progress_interval_s)
        if self.graph is None or not media:
            await self._reply_text(action, event, "❌ I can't look at that: nothing to look at here.")
            return True
        async with self._typing(channel):
            try:
                async for item in self.graph.look(order):
                    kind = item.get("type")
                    if kind == "progress":
                        await (progress.update if progress.message_id else progress.start)(str(item.get("message") or ""))
                    elif kind == "answer":
                        await progress.remove()
                        await self._reply_text(action, event, str(item.get("text") or CONFUSED))
                        return True
                    elif kind == "error":
                        text = media_error_text("look", item)
                        if progress.message_id:
                            await progress.finish(text)
                        else:
                            await self._reply_text(action, event, text)
                        return True
                await self._reply_text(action, event, "❌ I couldn't look at that: the graph sent no answer.")
            except GraphError as exc:
                await progress.remove()
                await self._reply_text(action, event, f"❌ I couldn't look at that: {exc.message}")
        return True

    @contextlib.asynccontextmanager
    async def _typing(self, channel: int):
        """The typing indicator for as long as the block runs (Discord shows it ~10 s per call)."""
        async def typing_once() -> bool:
            try:
                await self.ops.typing(channel)
                return True
            except Exception as exc:  # noqa: BLE001 - a missing permission must not stop the drawing
                log.debug("typing indicator failed: %r", exc)
                return False

        async def keep_typing() -> None:
            while True:
                await asyncio.sleep(self.typing_every_s)
                if not await typing_once():
                    return

        started = await typing_once()
        task = asyncio.ensure_future(keep_typing() if started else asyncio.sleep(0))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def image_caption(subject: str, image: dict) -> str:
    """What is posted with the picture: the request, the full prompt and the seed (so it can be redone)."""
    details = [f"seed `{image.get('seed')}`"]
    if image.get("width") and image.get("height"):
        details.append(f"{image['width']}×{image['height']}")
    if image.get("steps"):
        details.append(f"{image['steps']} steps")
    return (f"🎨 **{_short(subject, 200)}**\n"
            f"prompt: {_short(str(image.get('prompt') or subject), 1200)}\n" + " · ".join(details))[:1900]


def media_error_text(verb: str, event: dict) -> str:
    """A media route's error event as the user reads it: blocked (the controller's own words) or what failed."""
    message = str(event.get("message") or "something went wrong")
    if event.get("kind") == "blocked":
        return message
    if message.startswith("I couldn't"):
        return f"❌ {message}"  # already says it
    what = "draw that" if verb == "draw" else "look at that"
    return f"❌ I couldn't {what}: {message}"


class ProgressMessage:
    """The one message that shows how a drawing goes: posted, edited (throttled), then removed or final."""

    def __init__(self, ops: ChatOps, channel_id: int, reply_to: int | None, clock: Callable[[], float],
                 interval_s: float) -> None:
        self.ops, self.channel_id, self.reply_to = ops, channel_id, reply_to
        self.clock, self.interval_s = clock, interval_s
        self.message_id: int | None = None
        self.text = ""
        self._edited_at = float("-inf")

    async def start(self, text: str) -> None:
        self.text = text
        self.message_id = await self.ops.reply_progress(self.channel_id, self.reply_to, text)
        self._edited_at = self.clock()

    async def update(self, text: str) -> None:
        if self.message_id is None or text == self.text or self.clock() - self._edited_at < self.interval_s:
            return
        self.text = text
        self._edited_at = self.clock()
        await self.ops.edit(self.channel_id, self.message_id, text)

    async def finish(self, text: str) -> None:
        """The last word: the progress message becomes `text` (or `text` is posted when there is none)."""
        if self.message_id is None:
            await self.ops.reply(self.channel_id, self.reply_to, text)
            return
        self.text = text
        await self.ops.edit(self.channel_id, self.message_id, text)

    async def remove(self) -> None:
        if self.message_id is not None:
            message_id, self.message_id = self.message_id, None
            with contextlib.suppress(Exception):  # already gone: nothing to clean up
                await self.ops.delete(self.channel_id, message_id)


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
