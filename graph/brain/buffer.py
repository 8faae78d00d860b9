"""Message buffer: a user's multi-part message handed on as one.

People often split one thought over several Discord messages a second apart ("hey miku" / "can you
draw a cat" / an image). Deciding on each part alone answers half a sentence, or answers twice. The
buffer holds a user's message in a channel for `window_s`; each further part from the same user in the
same channel within the window restarts the wait (bounded by `max_parts` and `max_wait_s`), then the
parts go on as one message: contents joined by newlines, attachments together, addressed if any part
was, answering the newest part. Every part is still stored in memory on its own by the caller.

Each part's caller waits in `submit`; the caller of the last part gets the merged message and the
others get None. The wait is the injected `sleep` measured on the injected clock, so tests drive it
without real sleeps; a clock that does not move while sleeping ends the wait (never a busy loop).
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from graph.brain.events import MessageEvent

MAX_CONTENT_CHARS = 8000  # the event model's limit for one message's content


@dataclass
class _Pending:
    parts: list[MessageEvent]
    first_at: float
    last_at: float
    done: bool = field(default=False)


def merge_parts(parts: list[MessageEvent]) -> MessageEvent:
    """One message from several parts of the same author, answering (and identified by) the newest."""
    if len(parts) == 1:
        return parts[0]
    last = parts[-1]
    content = "\n".join(p.content for p in parts if p.content.strip())[:MAX_CONTENT_CHARS]
    mentioned: list[str] = []
    for part in parts:
        mentioned += [u for u in part.mentioned_user_ids if u not in mentioned]
    return last.model_copy(update={
        "content": content,
        "attachments": tuple(a for p in parts for a in p.attachments),
        "mentions_miku": any(p.mentions_miku for p in parts),
        "reply_to_miku": any(p.reply_to_miku for p in parts),
        "reply_to_message_id": next((p.reply_to_message_id for p in parts if p.reply_to_message_id), None),
        "mentioned_user_ids": tuple(mentioned),
    })


class MessageBuffer:
    """Holds each (channel, author)'s latest parts until `window_s` passes without another one."""

    def __init__(
        self,
        window_s: float,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_parts: int = 8,
        max_wait_s: float = 6.0,
    ):
        if window_s < 0 or max_parts < 1 or max_wait_s < window_s:
            raise ValueError("message buffer: window_s >= 0, max_parts >= 1 and max_wait_s >= window_s are required")
        self.window_s = window_s
        self.max_parts = max_parts
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.sleep = sleep
        self._pending: dict[tuple[str, str], _Pending] = {}
        self.merged = 0  # parts folded into a later one
        self._earlier_parts: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # merged id -> the parts before it

    def earlier_parts(self, message_id: str) -> tuple[str, ...]:
        """The ids of the parts a merged message carries besides its own (so history can leave them out)."""
        return self._earlier_parts.get(message_id, ())

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    def waiting(self) -> int:
        return sum(len(p.parts) for p in self._pending.values())

    async def submit(self, ev: MessageEvent) -> MessageEvent | None:
        """The merged message once this part is the last of its burst; None if a later part took it."""
        if not self.enabled:
            return ev
        key = (ev.channel_id, ev.author_id)
        now = self.clock()
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending([ev], now, now)
        else:
            pending.parts.append(ev)
            pending.last_at = now
            self.merged += 1
        mine = len(pending.parts)
        while len(pending.parts) < self.max_parts:
            deadline = min(pending.last_at + self.window_s, pending.first_at + self.max_wait_s)
            before = self.clock()
            if deadline - before <= 0:
                break
            await self.sleep(deadline - before)
            if len(pending.parts) != mine or pending.done:
                return None  # a later part (or a full burst) carries this one
            if self.clock() <= before:
                break  # the clock did not move: waiting longer would never end
        if len(pending.parts) != mine or pending.done:
            return None
        pending.done = True
        if self._pending.get(key) is pending:
            del self._pending[key]
        if len(pending.parts) > 1:
            self._earlier_parts[ev.message_id] = tuple(p.message_id for p in pending.parts[:-1])
            while len(self._earlier_parts) > 1024:
                self._earlier_parts.popitem(last=False)
        return merge_parts(pending.parts)
