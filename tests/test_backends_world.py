"""The WORLD VC backend: the shift it applies, measured on its output with pyworld's own f0 analysis."""
import numpy as np
import pytest
import pyworld

from graph.backends.vc.world import WorldVC
from graph.brain.mood_profiles import load_moods
from graph.voice.types import AudioChunk, StageError, VCOptions

RATE = 22_050


def median_f0(samples: np.ndarray) -> float:
    x = samples.astype(np.float64)
    f0, times = pyworld.dio(x, RATE, frame_period=5.0)
    f0 = pyworld.stonemask(x, f0, times, RATE)
    return float(np.median(f0[f0 > 0]))


def tone(hz: float = 200.0, seconds: float = 1.0) -> AudioChunk:
    t = np.arange(int(seconds * RATE)) / RATE
    # a harmonic-rich voiced tone (like a vowel), so WORLD's analysis has a clear f0
    wave = sum(np.sin(2 * np.pi * hz * k * t) / k for k in range(1, 6))
    return AudioChunk((0.2 * wave).astype(np.float32), RATE)


def semitones(ratio: float) -> float:
    return 12 * np.log2(ratio)


@pytest.mark.parametrize("base, offset, expected", [(4.0, None, 4.0), (4.0, 2.0, 6.0), (4.0, -4.0, 0.0), (0.0, 3.0, 3.0)])
async def test_the_requests_shift_is_an_offset_on_the_base_shift(base, offset, expected):
    source = tone()
    result = await WorldVC(pitch_shift=base, formant_shift=1.0).convert(source, VCOptions(pitch_shift=offset), None)
    measured = semitones(median_f0(result.audio.samples) / median_f0(source.samples))
    assert abs(measured - expected) < 0.3, measured


async def test_the_bubbly_mood_plays_above_the_default_voice():
    mood = load_moods()["bubbly"]
    assert mood.pitch_shift  # the mood does nudge the pitch
    source = tone()
    vc = WorldVC()  # the default backend's base shift
    plain = await vc.convert(source, VCOptions(), None)
    bubbly = await vc.convert(source, VCOptions(pitch_shift=mood.pitch_shift), None)
    measured = semitones(median_f0(bubbly.audio.samples) / median_f0(source.samples))
    assert abs(measured - (vc.pitch_shift + mood.pitch_shift)) < 0.3
    assert median_f0(bubbly.audio.samples) > median_f0(plain.audio.samples)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
async def test_a_non_finite_shift_is_refused_not_played_as_silence(bad):
    with pytest.raises(StageError, match="finite"):
        await WorldVC().convert(tone(), VCOptions(pitch_shift=bad), None)
