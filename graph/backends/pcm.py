"""Decoding and checking raw audio that arrives from another process or server.

Why: a remote that sends audio of the wrong format (s16 read as float32, a truncated frame, a
NaN-producing model) would otherwise be played to the voice channel as loud noise. Every remote TTS
backend decodes through here and turns bad bytes into a clear error instead.
"""
from __future__ import annotations

import numpy as np

# Speech in [-1, 1] that overshoots a little (a resampler's ringing) is normal; 16-bit samples read
# as float32 or garbage bytes give values in the thousands or 1e30s.
MAX_ABS_AMPLITUDE = 2.0


class BadAudio(ValueError):
    """Bytes that are not the audio format the protocol promises."""


def decode_float32(data: bytes, max_abs: float = MAX_ABS_AMPLITUDE) -> np.ndarray:
    """Little-endian float32 mono samples -> array, refusing anything that is not plausibly audio."""
    if len(data) % 4:
        raise BadAudio(f"{len(data)} bytes is not a whole number of float32 samples")
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    return check_samples(samples, max_abs)


def decode_s16(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit mono samples -> float32 in [-1, 1)."""
    if len(data) % 2:
        raise BadAudio(f"{len(data)} bytes is not a whole number of 16-bit samples")
    return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)


def check_samples(samples: np.ndarray, max_abs: float = MAX_ABS_AMPLITUDE) -> np.ndarray:
    if samples.size == 0:
        return samples
    if not np.isfinite(samples).all():
        raise BadAudio("audio contains NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > max_abs:
        raise BadAudio(f"audio peak {peak:.3g} is far outside [-1, 1] (wrong sample format?)")
    return samples
