"""The espeak TTS backend's pieces: cut where the audio is quiet, the same however the pipe's reads arrive."""
import asyncio

import numpy as np
import pytest

from graph.backends.tts.espeak import EspeakTTS, QuietCutter
from graph.voice.types import TTSOptions

RATE = 22_050
SENTENCE = "Hello everyone, it is so nice to sing with all of you tonight."


def _espeak_pcm(text: str = SENTENCE, speed: float = 1.0) -> bytes:
    """espeak-ng's 16-bit audio for `text`, as the bytes its pipe carries."""
    async def synth():
        return [p.samples async for p in EspeakTTS().synthesize(text, TTSOptions(speed=speed))]
    samples = np.concatenate(asyncio.run(synth()))
    return (np.round(samples * 32768.0)).astype("<i2").tobytes()


def _cut(pcm: bytes, read_sizes) -> list[int]:
    """Piece lengths (samples) when `pcm` arrives in reads of the given sizes (cycled)."""
    cutter = QuietCutter(RATE, 200, 250, 1000, -40.0)
    lengths, offset, i = [], 0, 0
    while offset < len(pcm):
        size = read_sizes[i % len(read_sizes)]
        lengths += [len(p) for p in cutter.feed(pcm[offset: offset + size])]
        offset += size
        i += 1
    last = cutter.finish()
    return lengths + ([len(last)] if last is not None else [])


def _rms_db(samples: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(samples, dtype=np.float64))) + 1e-12)


@pytest.mark.parametrize("speed", [1.25, 0.85])
def test_the_same_audio_gives_the_same_pieces_whatever_the_read_sizes(speed):
    pcm = _espeak_pcm(speed=speed)
    rng = np.random.default_rng(7)
    reference = _cut(pcm, [len(pcm)])  # all at once
    for sizes in ([1], [3], [4096], [4410], [8191, 17], list(rng.integers(1, 9000, 50))):
        assert _cut(pcm, sizes) == reference, sizes
    assert sum(reference) == len(pcm) // 2 and len(reference) >= 4


def test_pieces_end_at_quiet_points_within_their_bounds():
    pcm = _espeak_pcm()
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    lengths = _cut(pcm, [4096])
    assert 0.2 * RATE <= lengths[0] <= 0.25 * RATE  # early first audio
    assert all(0.2 * RATE <= n <= 1.0 * RATE for n in lengths[1:-1])
    edges = np.cumsum(lengths)[:-1]
    # the comma's pause and the stop closures: most cuts fall in a 10 ms window below -40 dBFS
    quiet = [_rms_db(samples[e - 110: e + 110]) < -40 for e in edges]
    assert sum(quiet) >= len(edges) - 1, [round(_rms_db(samples[e - 110: e + 110])) for e in edges]


def test_a_cut_lands_in_the_quietest_part_of_a_pause():
    t = np.arange(int(0.5 * RATE)) / RATE
    vowel = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    pause = np.concatenate([np.full(441, 0.004, np.float32), np.zeros(441, np.float32), np.full(441, 0.004, np.float32)])
    audio = np.concatenate([vowel, pause, vowel])
    pcm = (audio * 32768).astype("<i2").tobytes()
    edges = np.cumsum(_cut(pcm, [1000]))[:-1]
    # one cut in the pause, in the middle of a 10 ms window of its silent part (not at its -48 dB edge)
    in_pause = [e for e in edges if len(vowel) <= e < len(vowel) + len(pause)]
    assert len(in_pause) == 1 and np.all(audio[in_pause[0] - 110: in_pause[0] + 110] == 0), edges


def test_without_a_quiet_point_a_piece_ends_at_its_quietest_window_by_the_maximum():
    t = np.arange(int(2.0 * RATE)) / RATE
    # a continuous vowel whose loudness dips at 0.6 s and at 1.5 s
    envelope = 0.3 - 0.2 * np.exp(-((t - 0.6) / 0.02) ** 2) - 0.2 * np.exp(-((t - 1.5) / 0.02) ** 2)
    audio = (envelope * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    lengths = _cut((audio * 32768).astype("<i2").tobytes(), [2048])
    assert lengths[0] <= 0.25 * RATE  # the first piece's shorter maximum
    dip = lengths[0] + lengths[1]
    assert abs(dip / RATE - 0.6) < 0.01  # the dip, not wherever a maximum happened to end
    assert sum(lengths) == len(audio)


def test_synthesis_gives_the_same_pieces_every_run():
    async def pieces():
        return [len(p.samples) async for p in EspeakTTS().synthesize(SENTENCE, TTSOptions(speed=0.85))]
    runs = [asyncio.run(pieces()) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


def test_piece_bounds_must_be_ordered():
    with pytest.raises(ValueError, match="piece_ms <= first_piece_max_ms <= piece_max_ms"):
        EspeakTTS(piece_ms=300, first_piece_max_ms=250)
