"""The discord.py audio source that plays the graph's frames, and pauses the player while there is nothing to say.

discord.py's `AudioPlayer` thread calls `read()` every 20 ms and sleeps to keep that cadence, so `read()`
must return at once with exactly one frame: it only takes the next frame out of the `JitterBuffer`
(silence on underrun) and returns `b""` only when the session has ended, which stops the player.

Idle, the source does not send silence for ever: after the buffer's silence tail (five frames, as Discord
asks when a transmission breaks off) it pauses the player it is attached to (`attach`), and resumes it as
soon as the next utterance is ready to play. `b""` cannot be used for this: it ends discord.py's player
for good (and the session would take it for a lost voice link). A paused player waits without reading
or sending (discord.py sends its own five Opus silence packets as it pauses); `resume()` restarts its
pacing, so the first frame of the next utterance goes out at once and nothing is skipped or bunched.

Music (bot_client/music.py) is a second input: with a `MusicPlayer` attached, each read also takes one
frame of music (never waiting) and mixes it under the voice (`MusicMixer`: ducked while an utterance
plays, limited so the sum never clips). Music playing means the source is not idle: the player keeps
running until both the voice and the music are idle (and a five-frame silence tail went out after the
music too), and a track starting or resuming wakes a paused player.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Protocol

import discord

from .jitter import FRAME_BYTES, SILENCE_TAIL_FRAMES, FrameKind, JitterBuffer, JitterStats

if TYPE_CHECKING:
    from .music import MusicMixer, MusicPlayer


class PlayerControl(Protocol):
    """What pausing needs from a voice connection; `discord.VoiceClient` has exactly this."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class JitterAudioSource(discord.AudioSource):
    """16-bit 48 kHz stereo PCM from a `JitterBuffer`; one source lives as long as the voice session.

    Without an attached player it never pauses (silence keeps flowing while idle, as benchmarks want).
    """

    def __init__(self, buffer: JitterBuffer, player: PlayerControl | None = None,
                 music: "MusicPlayer | None" = None, mixer: "MusicMixer | None" = None) -> None:
        self.buffer = buffer
        self.music = music
        if music is not None and mixer is None:
            from .music import MusicMixer

            c = music.config
            mixer = MusicMixer(c.duck_db, c.attack_ms, c.release_ms)
        self.mixer = mixer
        self._music_tail = 0  # silence frames still owed after the music stopped (player thread only)
        self.reads = 0
        self.short_reads = 0  # must stay 0: a short frame would be a bug, so it is counted, not hidden
        self.pauses = 0
        self.resumes = 0
        # Pausing (player thread) and waking (event loop) decide under one lock, each after the buffer
        # changed, so a wake can never slip in between "resting?" and "pause" and leave audio waiting.
        self._gate = threading.Lock()
        self._player = player
        self._paused = False
        # Told (on the player thread) when she starts and stops being heard, e.g. hearing.py's uplink.
        self.speaking_listener: Callable[[bool], None] | None = None
        self._speaking = False
        # A hold (someone started talking over her, hearing.py) plays silence without taking frames, so
        # she resumes where she was; it ends by itself after `max_hold_reads` in case no resume comes.
        self._hold_reads = 0
        self._held = False
        self.max_hold_reads = 150  # 3 s
        buffer.set_wake_listener(self._wake)
        if music is not None:
            music.set_wake_listener(self._wake)

    def attach(self, player: PlayerControl | None) -> None:
        """The player that `read()` feeds from now on (a new one after a voice reconnect): not paused."""
        with self._gate:
            self._player = player
            self._paused = False

    @property
    def paused(self) -> bool:
        with self._gate:
            return self._paused

    def hold(self) -> None:
        """Pause her voice in place (thread-safe): silence goes out, the waiting frames stay. Idle: nothing."""
        if self.buffer.is_idle():
            return
        self._hold_reads = 0
        self._held = True

    def release(self) -> None:
        """End a hold: the next read continues with the frame after the last one played."""
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def read(self) -> bytes:
        if self._held:
            self._hold_reads += 1
            if self._hold_reads > self.max_hold_reads or self.buffer.closed:
                self._held = False
            else:
                self.reads += 1
                silence = bytes(FRAME_BYTES)
                return self._mix(silence, FrameKind.UNDERRUN) if self.music is not None else silence
        frame, kind = self.buffer.read_frame()
        if kind.speaking is not self._speaking:
            self._speaking = kind.speaking
            listener = self.speaking_listener
            if listener is not None:
                listener(kind.speaking)
        if self.music is not None and kind is not FrameKind.END:
            frame = self._mix(frame, kind)
        self.reads += 1
        if frame and len(frame) != FRAME_BYTES:
            self.short_reads += 1
        if frame:
            self._rest_if_idle()
        return frame

    def _mix(self, voice: bytes, kind: FrameKind) -> bytes:
        assert self.music is not None and self.mixer is not None
        music = self.music.next_frame()
        if music is not None:
            self._music_tail = SILENCE_TAIL_FRAMES
        elif self._music_tail:
            self._music_tail -= 1
        return self.mixer.mix(voice, music, self.music.gain, kind.speaking)

    def _idle(self) -> bool:
        """Nothing to send: the voice is resting and no music plays (nor owes its silence tail)."""
        if not self.buffer.resting():
            return False
        return self.music is None or (not self.music.wants_playback() and self._music_tail == 0)

    def _rest_if_idle(self) -> None:
        # Runs on the player thread before it sends this frame: the player sends it, then waits paused.
        with self._gate:
            if self._player is None or self._paused or not self._idle():
                return
            self._player.pause()
            self._paused = True
            self.pauses += 1

    def _wake(self) -> None:
        # Runs on the producer's thread whenever audio arrived, an utterance ended or the buffer closed.
        with self._gate:
            if self._player is None or not self._paused or self._idle():
                return
            self._player.resume()
            self._paused = False
            self.resumes += 1

    def is_opus(self) -> bool:
        return False

    def cleanup(self) -> None:
        # Called by the player when it stops; the buffer belongs to the session, which closes it.
        pass

    def stats(self) -> JitterStats:
        return self.buffer.stats()
