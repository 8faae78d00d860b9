"""A thread-safe jitter buffer between the graph's WebSocket (event loop) and discord.py's player thread.

The WebSocket reader only copies bytes in (`write`); the player thread takes exactly one 20 ms frame per
tick (`read`), which never blocks: a frame of audio, a frame of silence, or `b""` once the session is over.
Audio is kept per utterance so that each one starts only when a small prebuffer is there (or the whole
utterance already arrived), which turns network jitter into a short fixed delay instead of stutter.

Silence has two meanings here. Mid-utterance (the producer is late) it is an underrun and keeps flowing at
20 ms, so speech resumes in step. With nothing to play (idle) only `silence_tail_frames` of it are handed
out, as Discord asks after speech ends; after that the buffer is *resting* (`resting()`), the player may
pause, and the `wake` listener hears as soon as audio is ready to play again.
"""
from __future__ import annotations

import enum
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

FRAME_MS = 20
FRAME_BYTES = 3840  # 20 ms of s16le stereo at 48 kHz
SILENCE_FRAME = bytes(FRAME_BYTES)
SILENCE_TAIL_FRAMES = 5  # Discord: "send five frames of silence" when a transmission breaks off


class FrameKind(enum.Enum):
    """What a read handed out; the mixer ducks music while an utterance plays (audio or underrun)."""

    AUDIO = "audio"
    UNDERRUN = "underrun"  # mid-utterance silence: she is still speaking
    IDLE = "idle"  # silence with nothing to say
    END = "end"  # b"": the session is over

    @property
    def speaking(self) -> bool:
        return self in (FrameKind.AUDIO, FrameKind.UNDERRUN)


class SegmentState(enum.Enum):
    PREBUFFERING = "prebuffering"  # waiting for the prebuffer (or the end of the utterance)
    PLAYING = "playing"


@dataclass
class _Segment:
    """The frames of one utterance, in order."""

    utterance_id: str | None
    frames: deque[bytes] = field(default_factory=deque)
    ended: bool = False
    state: SegmentState = SegmentState.PREBUFFERING


@dataclass(frozen=True)
class JitterStats:
    """Counters for the graph's metrics and `!miku voice-status`."""

    frames_played: int
    silence_frames: int
    idle_silence_frames: int  # silence handed out with nothing to play (the tail after speech, prebuffering)
    underruns: int  # reads that found an utterance playing but no frame ready
    stalls: int  # separate underrun episodes (a run of underrun reads counts once)
    dropped_frames: int  # frames discarded by interrupts or overflow
    fill_frames: int  # frames waiting right now
    max_fill_frames: int
    utterances_started: int
    utterances_played: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class JitterBuffer:
    """Frames of audio waiting to be played, grouped by utterance. Every method is thread-safe.

    `on_utterance_played(utterance_id)` is called from the reading thread when an utterance's last frame
    has been handed out; it must only hand the news on (e.g. `loop.call_soon_threadsafe`).
    """

    def __init__(
        self,
        prebuffer_ms: int = 100,
        max_buffer_s: float = 120.0,
        on_utterance_played: Callable[[str | None], None] | None = None,
        silence_tail_frames: int = SILENCE_TAIL_FRAMES,
    ) -> None:
        if prebuffer_ms < 0:
            raise ValueError("prebuffer_ms must not be negative")
        if silence_tail_frames < 1:
            raise ValueError("silence_tail_frames must be at least 1 (the encoder needs it to flush)")
        self.silence_tail_frames = silence_tail_frames
        self.prebuffer_frames = max(1, -(-prebuffer_ms // FRAME_MS))
        self.max_frames = max(self.prebuffer_frames, int(max_buffer_s * 1000 // FRAME_MS))
        self._on_played = on_utterance_played
        self._on_wake: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._segments: deque[_Segment] = deque()
        self._partial = bytearray()
        self._fill = 0
        self._closed = False
        self._drain_on_close = False
        self._in_stall = False
        self._frames_played = 0
        self._silence_frames = 0
        self._idle_silence = 0
        self._idle_run = 0  # idle silence frames in a row since the last audio (or underrun)
        self._underruns = 0
        self._stalls = 0
        self._dropped = 0
        self._max_fill = 0
        self._started = 0
        self._played = 0

    # --- producer side (event loop) -------------------------------------------------------------

    def set_wake_listener(self, listener: Callable[[], None] | None) -> None:
        """`listener()` runs (outside the lock, on the producer's thread) after audio was added, an
        utterance ended or the buffer closed: whatever may end a rest. It must not block."""
        self._on_wake = listener

    def _wake(self) -> None:
        if self._on_wake is not None:
            self._on_wake()

    def begin(self, utterance_id: str | None) -> None:
        """An utterance starts: its frames are held until the prebuffer is reached or it ends."""
        with self._lock:
            self._seal_partial_locked()
            # Utterances arrive one after another: a new one means the previous ones are complete.
            for segment in self._segments:
                segment.ended = True
            self._segments.append(_Segment(utterance_id))
            self._started += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Add PCM bytes to the utterance being received; returns how many whole frames were added.

        Bytes that do not fill a frame are kept for the next write, so nothing is lost or invented.
        """
        with self._lock:
            if self._closed:
                return 0
            if not self._segments or self._segments[-1].ended:
                # Audio without an announced utterance still plays (with its own prebuffer).
                self._segments.append(_Segment(None))
                self._started += 1
            segment = self._segments[-1]
            self._partial += data
            whole = len(self._partial) // FRAME_BYTES
            if not whole:
                return 0
            view = memoryview(self._partial)
            for i in range(whole):
                segment.frames.append(bytes(view[i * FRAME_BYTES:(i + 1) * FRAME_BYTES]))
            view.release()
            del self._partial[: whole * FRAME_BYTES]
            self._fill += whole
            self._trim_locked()
            self._max_fill = max(self._max_fill, self._fill)
        self._wake()
        return whole

    def end(self, utterance_id: str | None = None) -> None:
        """The utterance being received is complete (its last partial frame is padded with silence)."""
        with self._lock:
            self._seal_partial_locked()
            for segment in reversed(self._segments):
                if not segment.ended and (utterance_id is None or segment.utterance_id in (utterance_id, None)):
                    segment.ended = True
                    break
        self._wake()

    def clear(self) -> int:
        """Drop everything waiting (an interrupt); returns how many frames were dropped."""
        with self._lock:
            dropped = self._fill
            self._dropped += dropped
            self._segments.clear()
            self._partial.clear()
            self._fill = 0
            return dropped

    def close(self, drain: bool = False) -> None:
        """The session is over: `read` returns `b""` (after the waiting audio if `drain`)."""
        with self._lock:
            self._seal_partial_locked()
            for segment in self._segments:
                segment.ended = True
            self._closed = True
            self._drain_on_close = drain
        self._wake()  # a resting player must read once more to see the end

    # --- consumer side (player thread) ----------------------------------------------------------

    def read(self) -> bytes:
        """One 20 ms frame, never blocking: audio, silence, or `b""` when the session has ended."""
        return self.read_frame()[0]

    def read_frame(self) -> tuple[bytes, FrameKind]:
        """`read()`, and what kind of frame it was."""
        finished: list[str | None] = []
        try:
            with self._lock:
                return self._read_locked(finished)
        finally:
            if self._on_played is not None:
                for utterance_id in finished:
                    self._on_played(utterance_id)

    def _read_locked(self, finished: list[str | None]) -> tuple[bytes, FrameKind]:
        if self._closed and (not self._drain_on_close or self._fill == 0):
            return b"", FrameKind.END
        while self._segments:
            segment = self._segments[0]
            if segment.state is SegmentState.PREBUFFERING:
                if segment.ended or len(segment.frames) >= self.prebuffer_frames:
                    segment.state = SegmentState.PLAYING
                else:
                    break  # still filling: silence, and not an underrun
            if segment.frames:
                self._fill -= 1
                self._frames_played += 1
                self._in_stall = False
                self._idle_run = 0
                return segment.frames.popleft(), FrameKind.AUDIO
            if segment.ended:
                self._segments.popleft()
                self._played += 1
                finished.append(segment.utterance_id)
                continue
            # Playing, nothing ready, more to come: the producer is late. Mid-speech: not idle.
            self._underruns += 1
            self._idle_run = 0
            if not self._in_stall:
                self._stalls += 1
                self._in_stall = True
            self._silence_frames += 1
            return SILENCE_FRAME, FrameKind.UNDERRUN
        if self._closed and self._fill == 0:
            return b"", FrameKind.END
        self._silence_frames += 1
        self._idle_silence += 1
        self._idle_run += 1
        return SILENCE_FRAME, FrameKind.IDLE

    # --- inspection -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def resting(self) -> bool:
        """True once the silence tail is out and nothing is ready to play: no need to keep reading."""
        with self._lock:
            return not self._closed and self._idle_run >= self.silence_tail_frames and not self._ready_locked()

    def is_idle(self) -> bool:
        """True when nothing is waiting or playing."""
        with self._lock:
            return not self._segments

    def stats(self) -> JitterStats:
        with self._lock:
            return JitterStats(
                frames_played=self._frames_played,
                silence_frames=self._silence_frames,
                idle_silence_frames=self._idle_silence,
                underruns=self._underruns,
                stalls=self._stalls,
                dropped_frames=self._dropped,
                fill_frames=self._fill,
                max_fill_frames=self._max_fill,
                utterances_started=self._started,
                utterances_played=self._played,
            )

    # --- helpers (lock held) --------------------------------------------------------------------

    def _ready_locked(self) -> bool:
        """The head utterance would play now (or is playing): its prebuffer is there or it has ended."""
        for segment in self._segments:
            if segment.frames or not segment.ended:
                return (segment.state is SegmentState.PLAYING or segment.ended
                        or len(segment.frames) >= self.prebuffer_frames)
        return False  # nothing, or only finished utterances waiting to be popped

    def _seal_partial_locked(self) -> None:
        if self._partial and self._segments:
            frame = bytes(self._partial) + bytes(FRAME_BYTES - len(self._partial))
            self._segments[-1].frames.append(frame)
            self._fill += 1
        self._partial.clear()

    def _trim_locked(self) -> None:
        # A runaway producer must not grow memory without bound: drop the oldest waiting audio.
        while self._fill > self.max_frames and self._segments:
            head = self._segments[0]
            if head.frames:
                head.frames.popleft()
                self._fill -= 1
                self._dropped += 1
            elif len(self._segments) > 1:
                self._segments.popleft()
            else:
                break
