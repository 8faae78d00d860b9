"""The audio path from any TTS/VC output to Discord's 20 ms frames.

Every backend hands us mono float32 audio at its own sample rate, in pieces of any size. Discord
wants exactly 3840-byte frames (20 ms, 48 kHz, s16le, stereo) at a steady pace. This module does
the conversion once, for every backend, in four small steps that keep their state across pieces:

    JoinSmoother (de-click where TTS chunks join, at the source rate)
      -> StreamResampler (soxr, streaming, any rate -> 48 kHz)
      -> FrameAssembler (whole 20 ms frames; remainder carried; silence padding only at the end)
      -> s16le stereo bytes

`AudioOutput` composes them for one utterance. Smoothing happens before resampling so the
resampler's filter never sees a step (no ringing) and the join stays where the chunks meet.
Nothing here imports Ray; everything is numpy-vectorised because it runs for every chunk.
"""
from __future__ import annotations

import enum
import functools
import io
import os
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from graph.voice.types import (
    DISCORD_CHANNELS,
    DISCORD_SAMPLE_RATE,
    FRAME_BYTES,
    FRAME_SAMPLES,
    AudioChunk,
)

_INT16_SCALE = 32767.0  # symmetric: +1.0 -> 32767, -1.0 -> -32767
_EMPTY = np.zeros(0, dtype=np.float32)


def _as_mono_f32(samples: np.ndarray) -> np.ndarray:
    """Validate one piece of audio and return it as contiguous float32 (no copy when already so)."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {samples.shape}")
    return np.ascontiguousarray(samples, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# float32 mono -> s16le stereo


def to_s16_stereo(samples: np.ndarray) -> bytes:
    """Convert float32 mono in [-1, 1] to interleaved s16le stereo bytes (both channels equal).

    Values outside [-1, 1] are clipped (never wrapped); NaN becomes silence and +-inf full scale,
    so a misbehaving model can distort but never crash the voice. Scaling rounds to nearest.
    """
    x = _as_mono_f32(samples)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    scaled = np.rint(np.clip(x, -1.0, 1.0) * _INT16_SCALE).astype("<i2")
    return np.repeat(scaled, DISCORD_CHANNELS).tobytes()


def split_frames(pcm: bytes) -> list[bytes]:
    """Split a blob that is a whole number of frames into 3840-byte frames."""
    if len(pcm) % FRAME_BYTES:
        raise ValueError(f"{len(pcm)} bytes is not a whole number of {FRAME_BYTES}-byte frames")
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


# --------------------------------------------------------------------------------------------------
# Resampling


class StreamResampler:
    """Streaming resampler (soxr) from one input rate to 48 kHz, keeping filter state across pieces.

    One instance serves one continuous stream at one input rate (one utterance, or the part of
    it at that rate); it does not support the input rate changing — make a new one (AudioOutput
    does this). soxr buffers internally (tens of ms at HQ), so output lags input until
    `process(..., last=True)` or `flush()` ends the stream; the total output then matches a
    one-shot `soxr.resample`. When the rates are equal the input passes through untouched.
    """

    def __init__(self, in_rate: int, out_rate: int = DISCORD_SAMPLE_RATE, quality: str = "HQ"):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self._stream = (
            None
            if self.in_rate == self.out_rate
            else soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality=quality)
        )
        self._finished = False
        self.samples_in = 0
        self.samples_out = 0

    @property
    def finished(self) -> bool:
        return self._finished

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample one piece; `last=True` ends the stream and returns everything still buffered."""
        if self._finished:
            raise RuntimeError("StreamResampler already flushed; create a new one for a new stream")
        x = _as_mono_f32(samples)
        if self._stream is None:
            y = x
        else:
            y = self._stream.resample_chunk(x, last=last)
        self._finished = last
        self.samples_in += len(x)
        self.samples_out += len(y)
        return y

    def flush(self) -> np.ndarray:
        """End the stream: return what soxr still holds."""
        return self.process(_EMPTY, last=True)


# --------------------------------------------------------------------------------------------------
# Fades and crossfades


class FadeShape(enum.Enum):
    """EQUAL_GAIN (sin²/cos², gains sum to 1) suits correlated audio such as a VC backend's overlap
    of the same speech (RVC's realtime tool uses it); EQUAL_POWER (sin/cos, powers sum to 1) suits
    unrelated audio."""

    EQUAL_GAIN = "equal-gain"
    EQUAL_POWER = "equal-power"


@functools.lru_cache(maxsize=64)
def _fade_in_window(n: int, shape: FadeShape = FadeShape.EQUAL_GAIN) -> np.ndarray:
    """A rising window of n samples, strictly inside (0, 1) so no sample is silenced outright."""
    phase = (np.arange(1, n + 1, dtype=np.float64) / (n + 1)) * (np.pi / 2)
    w = np.sin(phase) ** 2 if shape is FadeShape.EQUAL_GAIN else np.sin(phase)
    w = w.astype(np.float32)
    w.flags.writeable = False  # shared through the cache
    return w


def crossfade(
    prev_tail: np.ndarray, next_head: np.ndarray, shape: FadeShape | str = FadeShape.EQUAL_GAIN
) -> np.ndarray:
    """Blend two overlapping pieces of equal length: `prev_tail` fades out while `next_head` fades in.

    For a VC backend that converts each chunk with extra context: keep the previous conversion's
    last N samples, convert the next chunk starting N samples early, and replace those N samples
    with `crossfade(prev_tail, next_head)`. Returns a new float32 array of the same length.
    """
    shape = FadeShape(shape)
    a = _as_mono_f32(prev_tail)
    b = _as_mono_f32(next_head)
    if len(a) != len(b):
        raise ValueError(f"crossfade needs equal lengths, got {len(a)} and {len(b)}")
    if len(a) == 0:
        return _EMPTY.copy()
    fade_in = _fade_in_window(len(a), shape)
    fade_out = fade_in[::-1]
    return a * fade_out + b * fade_in


class JoinSmoother:
    """De-click where separately generated chunks of one utterance are concatenated.

    Count-preserving: at a join the held-back tail of the previous chunk fades out and the head of
    the next fades in (a short dip, `fade_ms` long on each side), so a waveform discontinuity
    cannot click; no sample is added or removed. It holds back at most `fade_samples` of audio
    (the tail that may still need fading), which is its only latency.

    Call `push(samples, segment_start=True)` for the first piece of each new chunk and
    `segment_start=False` for further pieces of the same chunk (a streaming TTS's pieces are
    continuous and are left untouched). `finish()` returns the held tail. `fade_edges` also fades
    in the very first chunk and fades out the very end, de-clicking against the silence around
    the utterance.
    """

    def __init__(self, sample_rate: int, fade_ms: float = 5.0, fade_edges: bool = True):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if fade_ms < 0:
            raise ValueError(f"fade_ms must be >= 0, got {fade_ms}")
        self.sample_rate = int(sample_rate)
        self.fade_samples = int(round(fade_ms * sample_rate / 1000))
        self.fade_edges = fade_edges
        self._tail = _EMPTY
        self._started = False
        self._fade_in_pos: int | None = None  # position in the fade-in ramp while one is running
        self.joins = 0
        self.samples_in = 0
        self.samples_out = 0

    @property
    def held_samples(self) -> int:
        return len(self._tail)

    def push(self, samples: np.ndarray, segment_start: bool = False) -> np.ndarray:
        """Take one piece; return the audio that is now final (everything but the held tail)."""
        x = _as_mono_f32(samples)
        n_fade = self.fade_samples
        self.samples_in += len(x)
        emitted = _EMPTY
        first = not self._started
        if segment_start or first:
            if not first:
                emitted = self._faded_out_tail()
                self.joins += 1
            if n_fade and (not first or self.fade_edges):
                self._fade_in_pos = 0
            self._started = True
        if self._fade_in_pos is not None and len(x):
            x = self._apply_fade_in(x)
        if n_fade == 0:
            out = x if not len(emitted) else np.concatenate((emitted, x))
            self.samples_out += len(out)
            return out
        buf = np.concatenate((self._tail, x)) if len(self._tail) else x
        cut = max(len(buf) - n_fade, 0)
        self._tail = buf[cut:].copy()
        out = buf[:cut] if not len(emitted) else np.concatenate((emitted, buf[:cut]))
        self.samples_out += len(out)
        return out

    def finish(self, fade_out: bool | None = None) -> np.ndarray:
        """End of the stream: return the held tail, faded out when `fade_out` (default `fade_edges`)."""
        if fade_out is None:
            fade_out = self.fade_edges
        out = self._faded_out_tail() if fade_out else self._tail
        self._tail = _EMPTY
        self._started = False
        self._fade_in_pos = None
        self.samples_out += len(out)
        return out

    def _faded_out_tail(self) -> np.ndarray:
        tail, self._tail = self._tail, _EMPTY
        if not len(tail):
            return tail
        # A tail shorter than the fade (a very short chunk) still fades all the way down.
        return tail * _fade_in_window(len(tail))[::-1]

    def _apply_fade_in(self, x: np.ndarray) -> np.ndarray:
        pos = self._fade_in_pos or 0
        window = _fade_in_window(self.fade_samples)
        n = min(len(x), self.fade_samples - pos)
        x = x.copy()
        x[:n] *= window[pos : pos + n]
        pos += n
        self._fade_in_pos = None if pos >= self.fade_samples else pos
        return x


# --------------------------------------------------------------------------------------------------
# Framing


class FrameAssembler:
    """Cut 48 kHz float32 mono into whole 20 ms Discord frames, carrying the remainder forward.

    `push` returns one bytes blob holding a whole number of 3840-byte frames (possibly b""), the
    form the graph sends (groups of frames); `split_frames` cuts it when single frames are needed.
    Only `finish()` — the end of an utterance — pads the last partial frame with silence.
    Counters prove nothing is lost or invented: after `finish()`,
    `samples_out == samples_in + padding_samples` and `padding_samples < FRAME_SAMPLES`.
    """

    def __init__(self) -> None:
        self._rest = _EMPTY
        self.samples_in = 0
        self.samples_out = 0  # per channel, including padding
        self.padding_samples = 0
        self.frames_out = 0

    @property
    def buffered_samples(self) -> int:
        return len(self._rest)

    def push(self, samples: np.ndarray) -> bytes:
        x = _as_mono_f32(samples)
        self.samples_in += len(x)
        buf = np.concatenate((self._rest, x)) if len(self._rest) else x
        whole = len(buf) - len(buf) % FRAME_SAMPLES
        self._rest = buf[whole:].copy()
        return self._emit(buf[:whole])

    def finish(self) -> bytes:
        """End of utterance: pad the remainder (if any) to one whole frame with silence."""
        if not len(self._rest):
            return b""
        pad = FRAME_SAMPLES - len(self._rest)
        self.padding_samples += pad
        frame = np.concatenate((self._rest, np.zeros(pad, dtype=np.float32)))
        self._rest = _EMPTY
        return self._emit(frame)

    def _emit(self, samples: np.ndarray) -> bytes:
        if not len(samples):
            return b""
        self.samples_out += len(samples)
        self.frames_out += len(samples) // FRAME_SAMPLES
        return to_s16_stereo(samples)


# --------------------------------------------------------------------------------------------------
# One utterance, end to end


class OutputState(enum.Enum):
    OPEN = "open"
    FINISHED = "finished"


@dataclass(frozen=True)
class AudioOutputStats:
    """What one utterance's audio path has done so far (for traces, metrics and tests)."""

    input_seconds: float  # audio received, at its own rates
    samples_48k: int  # audio after resampling, before padding
    frames: int
    padding_samples: int
    joins: int
    rate_changes: int

    @property
    def output_seconds(self) -> float:
        return self.frames * FRAME_SAMPLES / DISCORD_SAMPLE_RATE


class AudioOutput:
    """One utterance's path from `AudioChunk`s (any rate, any size) to Discord frame bytes.

    `push(chunk, segment_start=...)` returns a whole number of 3840-byte frames (possibly b"");
    `finish()` returns the rest, the last frame padded with silence. Pass `segment_start=True`
    with the first audio of each new text chunk so the join is de-clicked. The resampler is made
    for the first chunk's rate; if a later chunk comes at another rate, the current smoother and
    resampler are flushed (treated as a join) and new ones made. Use one instance per utterance.
    """

    def __init__(self, fade_ms: float = 5.0, fade_edges: bool = True, quality: str = "HQ"):
        self.fade_ms = fade_ms
        self.fade_edges = fade_edges
        self.quality = quality
        self.state = OutputState.OPEN
        self._rate: int | None = None
        self._smoother: JoinSmoother | None = None
        self._resampler: StreamResampler | None = None
        self._frames = FrameAssembler()
        self._input_seconds = 0.0
        self._joins = 0
        self._rate_changes = 0

    @property
    def frames_emitted(self) -> int:
        return self._frames.frames_out

    @property
    def sample_rate(self) -> int | None:
        """The input rate currently being resampled (None before the first chunk)."""
        return self._rate

    def stats(self) -> AudioOutputStats:
        joins = self._joins + (self._smoother.joins if self._smoother else 0)
        return AudioOutputStats(
            input_seconds=self._input_seconds,
            samples_48k=self._frames.samples_in,
            frames=self._frames.frames_out,
            padding_samples=self._frames.padding_samples,
            joins=joins,
            rate_changes=self._rate_changes,
        )

    def push(self, chunk: AudioChunk, segment_start: bool = False) -> bytes:
        if self.state is OutputState.FINISHED:
            raise RuntimeError("AudioOutput is finished; use a new one for the next utterance")
        rate = int(chunk.sample_rate)
        head = b""
        if self._rate is None:
            self._open(rate, fade_in=self.fade_edges)
        elif rate != self._rate:
            # A new rate is a new stream for soxr: finish the old one cleanly (faded out) first.
            head = self._close_current(fade_out=True)
            self._rate_changes += 1
            self._joins += 1
            self._open(rate, fade_in=True)
            segment_start = False  # the rate switch already faded this join
        assert self._smoother is not None and self._resampler is not None
        self._input_seconds += len(chunk.samples) / rate
        smoothed = self._smoother.push(chunk.samples, segment_start=segment_start)
        body = self._frames.push(self._resampler.process(smoothed))
        return head + body if head else body

    def finish(self) -> bytes:
        """End of utterance: everything still held, the final frame padded with silence."""
        if self.state is OutputState.FINISHED:
            return b""
        out = self._close_current(fade_out=self.fade_edges) if self._rate is not None else b""
        self.state = OutputState.FINISHED
        return out + self._frames.finish()

    def _open(self, rate: int, fade_in: bool) -> None:
        self._rate = rate
        self._smoother = JoinSmoother(rate, fade_ms=self.fade_ms, fade_edges=fade_in)
        self._resampler = StreamResampler(rate, DISCORD_SAMPLE_RATE, quality=self.quality)

    def _close_current(self, fade_out: bool) -> bytes:
        assert self._smoother is not None and self._resampler is not None
        tail = self._smoother.finish(fade_out=fade_out)
        self._joins += self._smoother.joins
        self._smoother.joins = 0
        out = self._frames.push(self._resampler.process(tail, last=True))
        return out


# --------------------------------------------------------------------------------------------------
# WAV helpers (stdlib `wave`: PCM only)


def wav_bytes(
    pcm: bytes, sample_rate: int = DISCORD_SAMPLE_RATE, channels: int = DISCORD_CHANNELS
) -> bytes:
    """Wrap raw s16le PCM (by default Discord's 48 kHz stereo) in a WAV container."""
    if len(pcm) % (2 * channels):
        raise ValueError(f"{len(pcm)} bytes is not a whole number of {channels}-channel s16 samples")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


def write_wav(
    path: str | os.PathLike,
    pcm: bytes,
    sample_rate: int = DISCORD_SAMPLE_RATE,
    channels: int = DISCORD_CHANNELS,
) -> Path:
    """Write raw s16le PCM (by default the exact bytes sent to Discord) as a WAV file."""
    path = Path(path)
    path.write_bytes(wav_bytes(pcm, sample_rate, channels))
    return path


def read_wav(source: str | os.PathLike | bytes) -> AudioChunk:
    """Read a PCM WAV (8/16/24/32-bit integer, any channel count) as float32 mono (channels averaged).

    For backends that produce WAV (espeak-ng, OpenAI-style speech servers). Float WAVs are not
    readable by the stdlib `wave` module and raise a clear ValueError.
    """
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    try:
        with wave.open(handle, "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a readable PCM WAV: {exc}") from exc
    finally:
        handle.close()
    samples = _pcm_to_float(raw, width)
    usable = len(samples) - len(samples) % channels  # a truncated file may end mid-frame
    samples = samples[:usable].reshape(-1, channels)
    mono = samples[:, 0] if channels == 1 else samples.mean(axis=1, dtype=np.float32)
    return AudioChunk(np.ascontiguousarray(mono, dtype=np.float32), rate)


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw[: len(raw) - len(raw) % 3], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value = np.where(value & 0x800000, value - (1 << 24), value)
        return value.astype(np.float32) / float(1 << 23)
    if width == 4:
        return (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    raise ValueError(f"unsupported WAV sample width: {width} bytes")
