"""One client's voice conversation: prompts queue up in order, one utterance plays at a time, and an
interrupt stops the current one and drops the rest.

Transport-agnostic (the WebSocket handler gives it a `send` coroutine), so ordering, interrupt and
disconnect rules are tested without a server. Every accepted prompt ends with exactly one
`utterance.end` (status ok, error or interrupted); a rejected message gets one `error` event.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum
from typing import Any

from graph.voice.pipeline import AudioFrames, PipelineEvent, UtteranceEnded
from graph.voice.protocol import (
    InterruptRequest,
    ProtocolError,
    SpeakRequest,
    error_message,
    parse_client_message,
    to_wire,
)

log = logging.getLogger(__name__)

Send = Callable[[bytes | dict[str, Any]], Awaitable[None]]
RunUtterance = Callable[[SpeakRequest], AsyncIterator[PipelineEvent]]


class ConversationState(str, Enum):
    IDLE = "idle"
    SPEAKING = "speaking"
    CLOSED = "closed"


def _interrupted(request_id: str, frames: int = 0) -> dict[str, Any]:
    return {"type": "utterance.end", "id": request_id, "status": "interrupted", "timings": {}, "frames": frames}


class VoiceConversation:
    def __init__(
        self,
        run_utterance: RunUtterance,
        send: Send,
        max_pending: int = 16,
        max_text_chars: int = 4000,
    ):
        self._run_utterance = run_utterance
        self._raw_send = send
        self._send_lock = asyncio.Lock()
        self.max_pending = max_pending
        self.max_text_chars = max_text_chars
        self.state = ConversationState.IDLE
        self._pending: deque[SpeakRequest] = deque()
        self._wakeup = asyncio.Event()
        self._current: asyncio.Task | None = None
        self._current_request: SpeakRequest | None = None
        self._current_frames = 0

    async def send(self, message: bytes | dict[str, Any]) -> None:
        if self.state is ConversationState.CLOSED:
            return
        async with self._send_lock:
            await self._raw_send(message)

    async def handle_raw(self, raw: str | bytes) -> None:
        """Act on one message from the client."""
        try:
            request = parse_client_message(raw, self.max_text_chars)
        except ProtocolError as error:
            await self.send(error_message(error.message, error.request_id, stage="graph"))
            return
        if isinstance(request, InterruptRequest):
            await self.interrupt()
            return
        if len(self._pending) >= self.max_pending:
            await self.send(
                error_message(f"too many queued prompts (limit {self.max_pending}); wait or interrupt", request.id, stage="graph")
            )
            return
        self._pending.append(request)
        self._wakeup.set()

    async def interrupt(self) -> None:
        dropped = list(self._pending)
        self._pending.clear()
        for request in dropped:
            await self.send(_interrupted(request.id))
        if self._current is not None and not self._current.done():
            self._current.cancel()

    async def run(self) -> None:
        """Speak queued requests in order until close()."""
        while self.state is not ConversationState.CLOSED:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            request = self._pending.popleft()
            self.state = ConversationState.SPEAKING
            self._current_request = request
            self._current_frames = 0
            self._current = asyncio.create_task(self._speak(request))
            try:
                await asyncio.shield(self._current)
            except asyncio.CancelledError:
                if self._current.cancelled() and self.state is not ConversationState.CLOSED:
                    await self.send(_interrupted(request.id, self._current_frames))
                elif self.state is ConversationState.CLOSED or not self._current.done():
                    self._current.cancel()
                    raise
            except Exception:  # the pipeline reports stage failures as events; anything else is a bug
                log.exception("utterance %s failed unexpectedly", request.id)
                await self.send(error_message("internal error in the voice graph", request.id, stage="graph"))
                await self.send({"type": "utterance.end", "id": request.id, "status": "error", "timings": {}, "frames": self._current_frames})
            finally:
                self._current = None
                self._current_request = None
                if self.state is not ConversationState.CLOSED:
                    self.state = ConversationState.IDLE

    async def _speak(self, request: SpeakRequest) -> None:
        async for event in self._run_utterance(request):
            if isinstance(event, AudioFrames):
                self._current_frames += event.frame_count
            await self.send(to_wire(event))
            if isinstance(event, UtteranceEnded):
                return

    async def close(self) -> None:
        """The client is gone: stop everything in flight and send nothing more."""
        self.state = ConversationState.CLOSED
        self._pending.clear()
        self._wakeup.set()
        if self._current is not None and not self._current.done():
            self._current.cancel()
            await asyncio.gather(self._current, return_exceptions=True)
