"""A pitch-keeping time-stretch for TTS backends that have no speaking-rate control of their own.

Why WORLD (pyworld, already the embedded VC's vocoder): it analyses speech into frames of f0, spectral
envelope and aperiodicity taken every `frame_period` ms; resynthesising the same frames `frame_period /
rate` ms apart plays them faster or slower while every frame keeps its f0 and formants. Resampling
would change the pitch with the speed, which is exactly what a mood's rate must not do.

`stretch_stream` applies it to a streamed synthesis: pieces are gathered into blocks of at least
`min_block_s` (WORLD needs a few frames, and each block costs one analysis; the first block is only
`first_block_s`, so the first audio is not held back long) and each block is stretched on a worker thread. At rate 1.0 the stream passes through untouched, with no added latency.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import aclosing

import numpy as np
import pyworld

from graph.voice.types import MAX_TTS_SPEED, MIN_TTS_SPEED, AudioChunk

DEFAULT_FRAME_PERIOD_MS = 5.0
DEFAULT_MIN_BLOCK_S = 0.3
# the first block is shorter: a stream's first audio waits for one block to be gathered and stretched
DEFAULT_FIRST_BLOCK_S = 0.12


def check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) \
            or not MIN_TTS_SPEED <= rate <= MAX_TTS_SPEED:
        raise ValueError(f"time-stretch rate must be a finite number within {MIN_TTS_SPEED:g}..{MAX_TTS_SPEED:g}, got {rate!r}")
    return float(rate)


def time_stretch(samples: np.ndarray, sample_rate: int, rate: float,
                 frame_period_ms: float = DEFAULT_FRAME_PERIOD_MS) -> np.ndarray:
    """`samples` played `rate` times as fast (rate 1.25 -> 80 % of the duration) at the same pitch."""
    rate = check_rate(rate)
    if rate == 1.0 or not len(samples):
        return np.asarray(samples, dtype=np.float32)
    # even a sliver of a few ms (a stream's last piece) is a frame or two WORLD can resynthesise; it is
    # stretched too, so the whole utterance's duration follows the rate exactly
    x = np.ascontiguousarray(samples, dtype=np.float64)
    f0, times = pyworld.dio(x, sample_rate, frame_period=frame_period_ms)
    f0 = pyworld.stonemask(x, f0, times, sample_rate)
    envelope = pyworld.cheaptrick(x, f0, times, sample_rate)
    aperiodicity = pyworld.d4c(x, f0, times, sample_rate)
    y = pyworld.synthesize(f0, envelope, aperiodicity, sample_rate, frame_period=frame_period_ms / rate)
    wanted = int(round(len(x) / rate))
    y = y[:wanted] if len(y) >= wanted else np.pad(y, (0, wanted - len(y)))
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    if peak > 0.99:  # resynthesis can overshoot; keep the level, never clip
        y *= 0.99 / peak
    return y.astype(np.float32)


async def stretch_stream(pieces: AsyncIterator[AudioChunk], rate: float,
                         min_block_s: float = DEFAULT_MIN_BLOCK_S,
                         frame_period_ms: float = DEFAULT_FRAME_PERIOD_MS,
                         first_block_s: float = DEFAULT_FIRST_BLOCK_S) -> AsyncIterator[AudioChunk]:
    """The stream's audio at `rate`, in blocks of at least `min_block_s` (the last may be shorter).

    Closing this stream closes `pieces` too, so an interrupt still stops the model behind it.
    """
    rate = check_rate(rate)
    async with aclosing(pieces):
        if rate == 1.0:
            async for piece in pieces:
                yield piece
            return
        async with aclosing(_stretched_blocks(pieces, rate, min_block_s, frame_period_ms, first_block_s)) as blocks:
            async for chunk in blocks:
                yield chunk


async def _stretched_blocks(pieces: AsyncIterator[AudioChunk], rate: float, min_block_s: float,
                            frame_period_ms: float, first_block_s: float) -> AsyncIterator[AudioChunk]:
    block_s = min(first_block_s, min_block_s)
    pending: list[np.ndarray] = []
    pending_rate: int | None = None
    pending_samples = 0

    async def stretched() -> AudioChunk:
        nonlocal pending, pending_samples, block_s
        block_s = min_block_s
        block = np.concatenate(pending) if len(pending) > 1 else pending[0]
        pending, pending_samples = [], 0
        audio = await asyncio.to_thread(time_stretch, block, pending_rate, rate, frame_period_ms)
        return AudioChunk(audio, pending_rate)

    async for piece in pieces:
        if not len(piece.samples):
            continue
        if pending and piece.sample_rate != pending_rate:
            yield await stretched()
        pending.append(piece.samples)
        pending_rate = piece.sample_rate
        pending_samples += len(piece.samples)
        if pending_samples >= pending_rate * block_s:
            yield await stretched()
    if pending:
        yield await stretched()
