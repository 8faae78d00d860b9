"""The discord.py audio source that plays the graph's frames.

discord.py's `AudioPlayer` thread calls `read()` every 20 ms and sleeps to keep that cadence, so `read()`
must return at once with exactly one frame: it only takes the next frame out of the `JitterBuffer`
(silence on underrun) and returns `b""` only when the session has ended, which stops the player.
"""
from __future__ import annotations

import discord

from .jitter import FRAME_BYTES, JitterBuffer, JitterStats


class JitterAudioSource(discord.AudioSource):
    """16-bit 48 kHz stereo PCM from a `JitterBuffer`; one source lives as long as the voice session."""

    def __init__(self, buffer: JitterBuffer) -> None:
        self.buffer = buffer
        self.reads = 0
        self.short_reads = 0  # must stay 0: a short frame would be a bug, so it is counted, not hidden

    def read(self) -> bytes:
        frame = self.buffer.read()
        self.reads += 1
        if frame and len(frame) != FRAME_BYTES:
            self.short_reads += 1
        return frame

    def is_opus(self) -> bool:
        return False

    def cleanup(self) -> None:
        # Called by the player when it stops; the buffer belongs to the session, which closes it.
        pass

    def stats(self) -> JitterStats:
        return self.buffer.stats()
