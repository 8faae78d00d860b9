"""The receive path on a live discord.py 2.7 `VoiceClient`: its UDP datagrams and voice WebSocket events
feed a `VoiceReceiver` (voice_receive.py), the way discord-ext-voice-recv taps a voice connection.

discord.py sends voice but does not hear. It does everything the receive path needs, though:

- its socket reader thread hands every datagram to registered listeners
  (`VoiceConnectionState.add_socket_listener`);
- its voice WebSocket runs a hook after each JSON message (`VoiceConnectionState.hook`, passed to every
  new WebSocket, and `DiscordVoiceWebSocket._hook` on the live one): op 4 (session description) carries
  the transport mode and key, op 5 (speaking) maps an SSRC to a user, op 13 (client disconnect) says a
  user left;
- it keeps the DAVE session (`_connection.dave_session`) through every MLS transition itself, so the
  DAVE step only has to look the current one up (`dave_gate`).

`ReceiveWorker` runs the receiver on a thread of its own: the socket reader only queues a datagram, the
event loop never decodes. Private attributes of discord.py are read here only, in one place.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from .voice_receive import FRAME_S, DaveGate, VoiceReceiver

log = logging.getLogger(__name__)

SESSION_DESCRIPTION = 4
SPEAKING = 5
CLIENT_DISCONNECT = 13


class ReceiveWorker:
    """Feeds queued datagrams to a receiver and ticks it every 20 ms, on its own thread."""

    def __init__(self, receiver: VoiceReceiver, *, clock: Callable[[], float] = time.monotonic,
                 max_queued: int = 2000) -> None:
        self.receiver = receiver
        self.clock = clock
        self._queue: queue.Queue[bytes | None] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.queued = 0
        self.processed = 0
        self.dropped = 0  # the worker fell behind (queue full): datagrams dropped, counted

    def put(self, datagram: bytes) -> None:
        """From the socket reader thread: never blocks."""
        try:
            self._queue.put_nowait(bytes(datagram))
            self.queued += 1
        except queue.Full:
            self.dropped += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="miku-voice-receive", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.5) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        next_tick = self.clock() + FRAME_S
        while not self._stop.is_set():
            try:
                datagram = self._queue.get(timeout=max(0.0, next_tick - self.clock()))
            except queue.Empty:
                datagram = None
            try:
                if datagram is not None:
                    self.receiver.feed(datagram, self.clock())
                now = self.clock()
                if now >= next_tick:
                    self.receiver.tick(now)
                    next_tick = max(next_tick + FRAME_S, now)
            except Exception:  # the receiver counts bad input itself; this is a bug, and hearing must go on
                log.exception("voice receive worker: unexpected error")
                next_tick = self.clock() + FRAME_S
            if datagram is not None:
                self.processed += 1


def dave_gate(voice_client: Any) -> DaveGate:
    """The DAVE step of this connection: its current `davey` session while DAVE is in use, else none."""
    connection = voice_client._connection

    def session() -> Any | None:
        if not getattr(connection, "dave_protocol_version", 0):
            return None
        return getattr(connection, "dave_session", None)

    return DaveGate(session)


class DiscordVoiceTap:
    """Attaches a `VoiceReceiver` to a `discord.VoiceClient`; `stop()` detaches it and ends the worker."""

    def __init__(self, voice_client: Any, receiver: VoiceReceiver, *, listens_to: Callable[[int], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.voice_client = voice_client
        self.receiver = receiver
        self.listens_to = listens_to
        self.worker = ReceiveWorker(receiver, clock=clock)
        self._previous_hook: Any = None
        self._started = False

    def start(self) -> None:
        connection = self.voice_client._connection
        mode, key = getattr(self.voice_client, "mode", None), getattr(self.voice_client, "secret_key", None)
        if isinstance(mode, str) and key:
            self.receiver.set_key(mode, bytes(key))
        self._previous_hook = connection.hook
        connection.hook = self._hook  # every WebSocket discord.py opens from now on (reconnects)
        ws = getattr(connection, "ws", None)
        if ws is not None and hasattr(ws, "_hook"):
            ws._hook = self._hook  # the live one
        self.worker.start()
        connection.add_socket_listener(self.worker.put)
        self._started = True

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        connection = self.voice_client._connection
        try:
            connection.remove_socket_listener(self.worker.put)
        except Exception:
            log.debug("could not remove the socket listener", exc_info=True)
        if connection.hook == self._hook:
            connection.hook = self._previous_hook
        self.worker.stop()

    def refresh(self, user_id: int) -> None:
        """Decide again whether `user_id` is heard (they joined the channel after their op 5 arrived:
        the voice WebSocket and the gateway do not keep each other's order)."""
        for ssrc, user in self.receiver.users().items():
            if user == user_id:
                self.receiver.map_ssrc(ssrc, user_id, listen=self.listens_to(user_id))

    async def _hook(self, ws: Any, message: dict) -> None:
        try:
            self.on_voice_message(message)
        except Exception:
            log.warning("voice WebSocket event not understood: %.200r", message, exc_info=True)
        if self._previous_hook is not None:
            await self._previous_hook(ws, message)

    def on_voice_message(self, message: dict) -> None:
        """One voice WebSocket message (also called by tests with the payloads Discord sends)."""
        op = message.get("op")
        data = message.get("d") or {}
        if op == SESSION_DESCRIPTION:
            self.receiver.set_key(str(data["mode"]), bytes(data["secret_key"]))
        elif op == SPEAKING:
            user_id, ssrc = int(data["user_id"]), int(data["ssrc"])
            self.receiver.map_ssrc(ssrc, user_id, listen=self.listens_to(user_id))
        elif op == CLIENT_DISCONNECT:
            self.receiver.remove_user(int(data["user_id"]))
