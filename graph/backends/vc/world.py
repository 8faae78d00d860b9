"""`world` VC: a WORLD vocoder (pyworld) pitch and formant shift, the embedded voice-conversion default.

It moves any TTS voice toward a higher, brighter one: f0 up by `pitch_shift` semitones and the spectral
envelope stretched by `formant_shift` (>1 raises formants, as a smaller vocal tract would). Each piece
is analysed on its own, with no context from the pieces around it: f0 analysis at a piece edge that
falls inside a vowel is off, so a TTS backend feeding it should cut its pieces where the audio is quiet
(espeak does: graph/backends/tts/espeak.py), and then pieces join at near-silence.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pyworld

from graph.backends.base import VCBackend, applied_pitch_shift
from graph.voice.types import AudioChunk, StageError, VCOptions, VCResult


class WorldVC(VCBackend):
    name = "world"

    def __init__(self, pitch_shift: float = 4.0, formant_shift: float = 1.12, frame_period_ms: float = 5.0):
        if not 0.5 <= formant_shift <= 2.0:
            raise ValueError(f"world VC: formant_shift must be within 0.5..2.0, got {formant_shift}")
        self.pitch_shift = pitch_shift
        self.formant_shift = formant_shift
        self.frame_period_ms = frame_period_ms

    def describe(self) -> dict:
        return {"backend": self.name, "pitch_shift": self.pitch_shift, "formant_shift": self.formant_shift}

    async def warmup(self) -> None:
        tone = np.sin(2 * np.pi * 200 * np.arange(4410) / 22050).astype(np.float32) * 0.3
        await self.convert(AudioChunk(tone, 22050), VCOptions(), None)

    async def convert(self, chunk: AudioChunk, options: VCOptions, context: object | None) -> VCResult:
        semitones = applied_pitch_shift(self.name, self.pitch_shift, options)
        # WORLD needs a few frames to analyse; shorter pieces are passed through unchanged
        if len(chunk.samples) < chunk.sample_rate * 0.05:
            return VCResult(chunk, None)
        try:
            converted = await asyncio.to_thread(self._convert, chunk, float(semitones))
        except Exception as error:  # pyworld raises plain errors on degenerate input
            raise StageError("vc", self.name, f"WORLD analysis failed: {error}") from error
        return VCResult(AudioChunk(converted, chunk.sample_rate), None)

    def _convert(self, chunk: AudioChunk, semitones: float) -> np.ndarray:
        x = np.ascontiguousarray(chunk.samples, dtype=np.float64)
        fs = chunk.sample_rate
        f0, times = pyworld.dio(x, fs, frame_period=self.frame_period_ms)
        f0 = pyworld.stonemask(x, f0, times, fs)
        envelope = pyworld.cheaptrick(x, f0, times, fs)
        aperiodicity = pyworld.d4c(x, f0, times, fs)
        shifted_f0 = f0 * (2.0 ** (semitones / 12.0))
        warped = np.ascontiguousarray(_warp_envelope(envelope, self.formant_shift))
        y = pyworld.synthesize(shifted_f0, warped, aperiodicity, fs, frame_period=self.frame_period_ms)
        y = y[: len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))
        peak = float(np.max(np.abs(y))) if len(y) else 0.0
        if peak > 0.99:  # synthesis can overshoot; keep the level, avoid clipping
            y *= 0.99 / peak
        return y.astype(np.float32)


def _warp_envelope(envelope: np.ndarray, ratio: float) -> np.ndarray:
    """Stretch each frame's spectral envelope along frequency by `ratio` (formant shift)."""
    if abs(ratio - 1.0) < 1e-6:
        return envelope
    bins = envelope.shape[1]
    source = np.arange(bins) / ratio
    lower = np.clip(np.floor(source).astype(np.int64), 0, bins - 2)
    fraction = np.clip(source - lower, 0.0, 1.0)
    warped = envelope[:, lower] * (1.0 - fraction) + envelope[:, lower + 1] * fraction
    return np.maximum(warped, 1e-16)
