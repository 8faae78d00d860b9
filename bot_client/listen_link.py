"""`WS /v1/listen` as seen from the bot: each speaker's 16 kHz audio up, the graph's listening events down.

The wire contract (docs/api.md, "WS /v1/listen"), same bearer auth as `WS /v1/voice`:

- client -> graph, JSON text: `{"type": "start", "guild_id", "channel_id"}` once, `{"type": "speaker",
  "user_id", "name"}` before a speaker's first audio, `{"type": "speaker_left", "user_id"}`,
  `{"type": "speaking", "value": bool}` (Miku is or is not playing audio);
- client -> graph, binary: 8-byte little-endian unsigned user id, then PCM s16le mono 16 kHz;
- graph -> client, JSON: `vad`, `turn`, `command`, `barge_in`, `stt_unavailable`, `error` (handled by
  `hearing.Hearing`).

Audio comes from the receive worker thread (`push_audio_threadsafe`); it and the JSON messages share one
FIFO queue drained by a writer task, so a speaker is always announced before their audio and nothing
waits on the network in the receive path. The queue is bounded (`max_queued_bytes`): when the graph
cannot keep up the oldest audio is dropped and counted, never memory.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections import deque
from typing import Any, Awaitable, Callable

import websockets
from websockets.asyncio.client import ClientConnection, connect

from .graph_api import GraphAuthError, GraphUnavailable

log = logging.getLogger(__name__)

USER_ID = struct.Struct("<Q")


def audio_message(user_id: int, pcm: bytes) -> bytes:
    """One binary message of the contract: the speaker's id, then their PCM."""
    return USER_ID.pack(user_id) + pcm


class ListenStream:
    """One `WS /v1/listen` connection. `open()`, then send; `close()` when the session ends."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        on_event: Callable[[dict], Awaitable[None] | None],
        on_closed: Callable[[BaseException | None], Awaitable[None] | None] | None = None,
        *,
        open_timeout: float = 5.0,
        max_queued_bytes: int = 2 * 16000 * 2 * 4,  # ~2 s of audio for four speakers at once
    ) -> None:
        self.url = url
        self._headers = headers
        self._on_event = on_event
        self._on_closed = on_closed
        self._open_timeout = open_timeout
        self._max_queued = max_queued_bytes
        self._ws: ClientConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[str | bytes] = deque()
        self._queued_audio = 0
        self._wakeup = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self._writer: asyncio.Task | None = None
        self._closing = False
        self.audio_sent = 0
        self.audio_dropped = 0  # messages dropped because the graph was not keeping up
        self.bad_events = 0

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._ws = await connect(self.url, additional_headers=self._headers, open_timeout=self._open_timeout,
                                     max_size=1 << 20, ping_interval=20, ping_timeout=20)
        except websockets.exceptions.InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise GraphAuthError(f"the graph refused the bot's token ({status})", status) from exc
            raise GraphUnavailable(f"WS /v1/listen refused with HTTP {status}", status) from exc
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise GraphUnavailable(f"WS /v1/listen is unreachable ({exc.__class__.__name__})") from exc
        self._reader = asyncio.ensure_future(self._read())
        self._writer = asyncio.ensure_future(self._write())

    # --- sending ----------------------------------------------------------------------------------

    def send_json(self, payload: dict[str, Any]) -> None:
        """Queue a JSON message (event loop only); sent in order with the audio."""
        if self._closing:
            return
        self._queue.append(json.dumps(payload))
        self._wakeup.set()

    def push_audio(self, user_id: int, pcm: bytes) -> None:
        """Queue one speaker's audio (event loop only)."""
        if self._closing or not pcm:
            return
        message = audio_message(user_id, pcm)
        self._queue.append(message)
        self._queued_audio += len(message)
        while self._queued_audio > self._max_queued:
            self._drop_oldest_audio()
        self._wakeup.set()

    def push_audio_threadsafe(self, user_id: int, pcm: bytes) -> None:
        """`push_audio` from another thread (the receive worker)."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._closing:
            return
        loop.call_soon_threadsafe(self.push_audio, user_id, pcm)

    def _drop_oldest_audio(self) -> None:
        for index, item in enumerate(self._queue):
            if isinstance(item, bytes):
                del self._queue[index]
                self._queued_audio -= len(item)
                self.audio_dropped += 1
                if self.audio_dropped == 1 or self.audio_dropped % 500 == 0:
                    log.warning("listen uplink is behind: dropped %d audio messages so far", self.audio_dropped)
                return
        self._queued_audio = 0

    async def _write(self) -> None:
        assert self._ws is not None
        try:
            while True:
                while not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                item = self._queue.popleft()
                if isinstance(item, bytes):
                    self._queued_audio -= len(item)
                    self.audio_sent += 1
                await self._ws.send(item)
        except websockets.exceptions.ConnectionClosed:
            pass  # the reader reports the close

    # --- receiving --------------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self._ws is not None
        error: BaseException | None = None
        try:
            async for message in self._ws:
                if isinstance(message, bytes):
                    self.bad_events += 1
                    continue
                try:
                    event = json.loads(message)
                except ValueError:
                    event = None
                if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                    self.bad_events += 1
                    log.warning("listen route sent something that is not an event: %.200r", message)
                    continue
                try:
                    result = self._on_event(event)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("handling listen event %s failed", event.get("type"))
        except websockets.exceptions.ConnectionClosed as exc:
            error = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
        if self._writer is not None:
            self._writer.cancel()
        if self._on_closed is not None and not self._closing:
            result = self._on_closed(error)
            if asyncio.iscoroutine(result):
                await result

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            try:
                await self._ws.close()
            except Exception:
                log.debug("closing WS /v1/listen failed", exc_info=True)
        current = asyncio.current_task()
        for task in (self._writer, self._reader):
            if task is not None and task is not current:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
