"""A voice client that records packets instead of sending them over UDP.

It has the part of `discord.VoiceClient` that `discord.player.AudioPlayer` uses (`send_audio_packet`,
`is_connected`, `wait_until_connected`, `timeout`, `ws.speak`, `client.loop`), so discord.py's real player
thread and real libopus encoder run end to end where no Discord exists: the tests and
benchmarks/playback.py. `send_audio_packet` encodes exactly as discord.py does and records each packet
with the time it was sent.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import discord
from discord import opus
from discord.player import AudioPlayer


def ensure_opus() -> None:
    """Load libopus (Debian `libopus0`) when discord.py did not find it on its own."""
    if not opus.is_loaded():
        opus.load_opus("libopus.so.0")


@dataclass(frozen=True)
class SentPacket:
    at: float  # clock() when the player handed the frame over
    pcm_bytes: int  # size of the PCM frame the source returned (0 for pre-encoded packets)
    opus: bytes


class _SpeakRecorder:
    def __init__(self) -> None:
        self.states: list[Any] = []

    async def speak(self, state: Any = True) -> None:
        self.states.append(state)


class RecordingVoiceClient:
    """Stands in for `discord.VoiceClient` at the UDP boundary; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.perf_counter,
                 timeout: float = 0.5) -> None:
        ensure_opus()
        self.client = type("_Client", (), {"loop": loop})()
        self.ws = _SpeakRecorder()
        self.timeout = timeout
        self.clock = clock
        self.encoder = opus.Encoder()  # discord.py's defaults for VoiceClient.play
        self.packets: list[SentPacket] = []
        self._connected = threading.Event()
        self._connected.set()
        self._lock = threading.Lock()
        self._player: AudioPlayer | None = None

    # --- what AudioPlayer calls -----------------------------------------------------------------

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_until_connected(self, timeout: float | None = 30.0) -> bool:
        return self._connected.wait(timeout)

    def send_audio_packet(self, data: bytes, *, encode: bool = True) -> None:
        at = self.clock()
        encoded = self.encoder.encode(data, self.encoder.SAMPLES_PER_FRAME) if encode else bytes(data)
        with self._lock:
            self.packets.append(SentPacket(at, len(data) if encode else 0, encoded))

    # --- what a session calls (the VoiceLink protocol) ------------------------------------------

    def play(self, source: discord.AudioSource, *, after: Callable[[BaseException | None], Any] | None = None) -> None:
        if self._player is not None and self._player.is_alive():
            raise discord.ClientException("Already playing audio.")
        self._player = AudioPlayer(source, self, after=after)  # type: ignore[arg-type]
        self._player.start()

    def stop(self) -> None:
        if self._player is not None:
            self._player.stop()

    async def disconnect(self, *, force: bool = False) -> None:
        self.stop()
        self._connected.clear()

    # --- test controls --------------------------------------------------------------------------

    def drop_connection(self) -> None:
        """Simulate a voice link that went away (the player waits `timeout`, then gives up)."""
        self._connected.clear()

    def restore_connection(self) -> None:
        self._connected.set()

    @property
    def player(self) -> AudioPlayer | None:
        return self._player

    def audio_packets(self) -> list[SentPacket]:
        """Packets from PCM frames (discord.py's own 5 silence packets at stop are pre-encoded)."""
        with self._lock:
            return [p for p in self.packets if p.pcm_bytes]

    def decode_all(self) -> bytes:
        """Decode every PCM-born packet back with libopus, in order."""
        decoder = opus.Decoder()
        return b"".join(decoder.decode(p.opus, fec=False) for p in self.audio_packets())
