"""A voice client that records packets instead of sending them over UDP.

It has the part of `discord.VoiceClient` that `discord.player.AudioPlayer` uses (`send_audio_packet`,
`is_connected`, `wait_until_connected`, `timeout`, `ws.speak`, `client.loop`) and what a session calls
(`play`, `stop`, `pause`, `resume`, `disconnect`), so discord.py's real player thread and real libopus
encoder run end to end where no Discord exists: the tests and
benchmarks/playback.py. `send_audio_packet` encodes exactly as discord.py does and records each packet
with the time it was sent.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import discord
from discord import opus
from discord.player import AudioPlayer

if TYPE_CHECKING:  # numpy is imported where it is used, off the bot's start-up path
    import numpy as np


def ensure_opus() -> None:
    """Load libopus (Debian `libopus0`) when discord.py did not find it on its own."""
    if not opus.is_loaded():
        opus.load_opus("libopus.so.0")


@dataclass(frozen=True)
class SentPacket:
    at: float  # clock() when the player handed the frame over
    pcm_bytes: int  # size of the PCM frame the source returned (0 for pre-encoded packets)
    opus: bytes
    pcm: bytes = b""  # the PCM frame itself, as it went into the encoder


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
            self.packets.append(SentPacket(at, len(data) if encode else 0, encoded, bytes(data) if encode else b""))

    # --- what a session calls (the VoiceLink protocol) ------------------------------------------

    def play(self, source: discord.AudioSource, *, after: Callable[[BaseException | None], Any] | None = None) -> None:
        if self._player is not None and self._player.is_alive():
            raise discord.ClientException("Already playing audio.")
        self._player = AudioPlayer(source, self, after=after)  # type: ignore[arg-type]
        self._player.start()

    def stop(self) -> None:
        if self._player is not None:
            self._player.stop()

    def pause(self) -> None:
        if self._player is not None:
            self._player.pause()

    def resume(self) -> None:
        if self._player is not None:
            self._player.resume()

    def is_paused(self) -> bool:
        return self._player is not None and self._player.is_paused()

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
        """Packets from PCM frames (discord.py's own 5 silence packets at pause and stop are pre-encoded)."""
        with self._lock:
            return [p for p in self.packets if p.pcm_bytes]

    def opus_silence_packets(self) -> int:
        """How many pre-encoded silence packets discord.py sent itself (five per pause and at the stop)."""
        with self._lock:
            return sum(1 for p in self.packets if not p.pcm_bytes)

    def fed_pcm(self) -> bytes:
        """Every PCM frame that went into the encoder, in order (audio and silence alike)."""
        return b"".join(p.pcm for p in self.audio_packets())

    def decode_all(self) -> bytes:
        """Decode every PCM-born packet back with libopus, in order."""
        decoder = opus.Decoder()
        return b"".join(decoder.decode(p.opus, fec=False) for p in self.audio_packets())


def aligned_snr_db(reference: "np.ndarray", decoded: "np.ndarray", max_lag: int = 2000, skip: int = 960) -> float:
    """SNR (dB) of `decoded` against `reference` (1-D int16 arrays) after finding the codec's delay.

    Opus adds a fixed look-ahead delay; the lag with the highest correlation is used. The first `skip`
    samples (the encoder's warm-up) are left out.
    """
    import numpy as np

    ref = reference.astype(np.float64)
    dec = decoded.astype(np.float64)
    # Correlate on the loudest half second of the reference (leading silence carries no information).
    size = min(len(ref), 24_000)
    energy = np.convolve(ref ** 2, np.ones(960), mode="valid")[::960] if len(ref) >= 960 else np.array([0.0])
    start = int(np.argmax(energy)) * 960 if len(ref) > size else 0
    start = max(0, min(start - size // 2, len(ref) - size))
    window = ref[start: start + size]
    best_lag, best = 0, -np.inf
    for lag in range(0, max_lag):
        seg = dec[start + lag: start + lag + size]
        if len(seg) < size:
            break
        score = float(np.dot(seg, window))
        if score > best:
            best, best_lag = score, lag
    n = min(len(ref), len(dec) - best_lag)
    ref, out = ref[skip:n], dec[best_lag + skip: best_lag + n]
    noise = float(np.sum((out - ref) ** 2))
    return float(10 * np.log10(np.sum(ref ** 2) / max(noise, 1e-9)))
