"""The audio path: framing, s16 conversion, streaming resampling, join smoothing, WAV helpers."""
from __future__ import annotations

import io
import random
import wave

import numpy as np
import pytest
import soxr

from graph.voice.audio import (
    AudioOutput,
    FadeShape,
    FrameAssembler,
    JoinSmoother,
    StreamResampler,
    crossfade,
    read_wav,
    split_frames,
    to_s16_stereo,
    wav_bytes,
    write_wav,
)
from graph.voice.types import FRAME_BYTES, FRAME_SAMPLES, AudioChunk

RATES = [16000, 22050, 24000, 32000, 44100]


def random_pieces(x: np.ndarray, rng: random.Random, max_piece: int = 3000) -> list[np.ndarray]:
    """Cut x at random places, including empty and one-sample pieces."""
    pieces, i = [], 0
    while i < len(x):
        n = rng.choice([0, 1, 2, rng.randint(1, 959), 960, 961, rng.randint(1, max_piece)])
        pieces.append(x[i : i + n])
        i += n
    return pieces


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def decode(pcm: bytes) -> np.ndarray:
    """s16le stereo bytes -> (n, 2) int16."""
    return np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


# --- s16 stereo ------------------------------------------------------------------------------------


def test_s16_stereo_channels_equal_and_little_endian():
    x = np.linspace(-1, 1, 1001, dtype=np.float32)
    pcm = to_s16_stereo(x)
    assert len(pcm) == len(x) * 4
    frames = decode(pcm)
    assert np.array_equal(frames[:, 0], frames[:, 1])
    assert frames[0, 0] == -32767 and frames[-1, 0] == 32767
    assert pcm[-4:] == (32767).to_bytes(2, "little", signed=True) * 2


def test_s16_clips_rounds_and_survives_nan():
    x = np.array([1.5, -2.0, 1.6 / 32767, -1.6 / 32767, 0.4 / 32767, np.nan, np.inf, -np.inf], np.float32)
    left = decode(to_s16_stereo(x))[:, 0]
    # clipped (not wrapped), rounded (not truncated: 1.6 -> 2), NaN silent, inf full scale
    assert left.tolist() == [32767, -32767, 2, -2, 0, 0, 32767, -32767]


def test_s16_rejects_non_mono():
    with pytest.raises(ValueError, match="mono"):
        to_s16_stereo(np.zeros((10, 2), np.float32))


# --- framing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_frames_are_whole_and_no_sample_lost_or_invented(seed):
    rng = random.Random(seed)
    total = rng.randint(0, 20_000)
    x = np.random.default_rng(seed).uniform(-1, 1, total).astype(np.float32)
    asm = FrameAssembler()
    blobs = []
    for piece in random_pieces(x, rng):
        blob = asm.push(piece)
        assert len(blob) % FRAME_BYTES == 0
        assert asm.buffered_samples < FRAME_SAMPLES
        assert asm.samples_in == asm.samples_out + asm.buffered_samples  # nothing padded yet
        blobs.append(blob)
    streamed = b"".join(blobs)
    # Before finish every emitted sample is real input, in order.
    assert streamed == to_s16_stereo(x[: len(streamed) // 4])
    last = asm.finish()
    assert len(last) in (0, FRAME_BYTES)
    frames = split_frames(streamed + last)
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert asm.frames_out == len(frames)
    assert asm.padding_samples < FRAME_SAMPLES
    assert asm.samples_out == total + asm.padding_samples
    assert len(frames) == -(-total // FRAME_SAMPLES)
    # The only padding is silence at the very end.
    expected = np.concatenate([x, np.zeros(asm.padding_samples, np.float32)])
    assert streamed + last == to_s16_stereo(expected)


def test_finish_adds_nothing_when_input_is_whole_frames():
    asm = FrameAssembler()
    out = asm.push(np.full(FRAME_SAMPLES * 3, 0.25, np.float32))
    assert len(out) == 3 * FRAME_BYTES
    assert asm.finish() == b""
    assert asm.padding_samples == 0


def test_split_frames_rejects_partial_frame():
    with pytest.raises(ValueError):
        split_frames(b"\0" * (FRAME_BYTES + 2))


# --- resampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
def test_streaming_resample_keeps_frequency_and_matches_one_shot(rate):
    freq = 1000.0 if rate == 16000 else 3150.0
    x = sine(freq, rate, 1.0)
    rs = StreamResampler(rate)
    rng = random.Random(rate)
    out = [rs.process(p) for p in random_pieces(x, rng)]
    out.append(rs.flush())
    y = np.concatenate(out)
    one_shot = soxr.resample(x, rate, 48000)
    assert len(y) == len(one_shot)
    assert np.allclose(y, one_shot, atol=1e-5)
    assert abs(peak_hz(y, 48000) - freq) <= 2.0
    assert rs.samples_in == len(x) and rs.samples_out == len(y)


def test_resampler_identity_at_48k_and_single_use():
    rs = StreamResampler(48000)
    x = sine(440, 48000, 0.1)
    assert np.array_equal(rs.process(x), x)
    assert len(rs.flush()) == 0
    with pytest.raises(RuntimeError):
        rs.process(x)


# --- join smoothing --------------------------------------------------------------------------------


def test_join_smoother_removes_step_and_preserves_length():
    rate = 24000
    a = np.full(3000, 0.8, np.float32)
    b = np.full(2500, -0.8, np.float32)
    js = JoinSmoother(rate, fade_ms=5.0, fade_edges=False)
    rng = random.Random(3)
    out = []
    for chunk in (a, b):
        for i, piece in enumerate(random_pieces(chunk, rng, max_piece=700)):
            out.append(js.push(piece, segment_start=(i == 0)))
            assert js.samples_in - js.samples_out <= js.fade_samples  # bounded hold-back
    out.append(js.finish())
    y = np.concatenate(out)
    raw = np.concatenate([a, b])
    assert len(y) == len(raw)
    assert np.max(np.abs(np.diff(raw))) == pytest.approx(1.6)
    assert np.max(np.abs(np.diff(y))) < 0.02
    # Away from the join the audio is untouched.
    n = js.fade_samples
    assert np.array_equal(y[: len(a) - n], a[: len(a) - n])
    assert np.array_equal(y[len(a) + n :], b[n:])
    assert js.joins == 1


def test_join_smoother_leaves_continuous_pieces_untouched():
    x = sine(440, 32000, 0.5)
    js = JoinSmoother(32000, fade_ms=4.0, fade_edges=False)
    rng = random.Random(7)
    pieces = random_pieces(x, rng)
    y = np.concatenate([js.push(p, segment_start=(i == 0)) for i, p in enumerate(pieces)] + [js.finish()])
    assert np.array_equal(y, x)


def test_join_smoother_edges_fade_from_and_to_silence():
    x = np.full(4800, 0.9, np.float32)
    js = JoinSmoother(48000, fade_ms=5.0, fade_edges=True)
    y = np.concatenate([js.push(x[:100], segment_start=True), js.push(x[100:]), js.finish()])
    assert len(y) == len(x)
    assert abs(y[0]) < 0.01 and abs(y[-1]) < 0.01
    assert np.max(np.abs(np.diff(y))) < 0.01
    assert y[len(y) // 2] == pytest.approx(0.9)


def test_crossfade_shapes():
    x = sine(300, 48000, 0.01)
    # Equal-gain windows sum to one: crossfading a signal with itself returns it.
    assert np.allclose(crossfade(x, x), x, atol=1e-6)
    a, b = np.ones(480, np.float32), -np.ones(480, np.float32)
    y = crossfade(a, b)
    assert y[0] > 0.99 and y[-1] < -0.99
    assert np.max(np.abs(np.diff(y))) < 0.01
    # Equal power: uncorrelated noise keeps its level through the fade.
    rng = np.random.default_rng(0)
    n1, n2 = rng.standard_normal(48000).astype(np.float32), rng.standard_normal(48000).astype(np.float32)
    mid = crossfade(n1, n2, FadeShape.EQUAL_POWER)[20000:28000]
    assert np.std(mid) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError):
        crossfade(a, b[:10])


# --- one utterance ---------------------------------------------------------------------------------


def test_audio_output_frames_chunks_and_keeps_pitch():
    rate = 24000
    out = AudioOutput(fade_ms=5.0)
    rng = random.Random(11)
    sent = []
    expected_len = 0
    for seg, freq in enumerate([440.0, 440.0, 440.0]):
        x = sine(freq, rate, 0.7, phase=seg * 1.3)  # phase jumps at each join
        expected_len += len(x) * 2
        for i, piece in enumerate(random_pieces(x, rng)):
            blob = out.push(AudioChunk(piece, rate), segment_start=(i == 0))
            assert len(blob) % FRAME_BYTES == 0
            sent.append(blob)
    tail = out.finish()
    assert len(tail) % FRAME_BYTES == 0
    pcm = b"".join(sent) + tail
    stats = out.stats()
    assert stats.frames == len(pcm) // FRAME_BYTES == out.frames_emitted
    assert stats.samples_48k == expected_len
    assert stats.frames == -(-expected_len // FRAME_SAMPLES)
    assert stats.joins == 2
    assert stats.input_seconds == pytest.approx(2.1)
    left = decode(pcm)[:, 0].astype(np.float32) / 32767
    assert abs(peak_hz(left, 48000) - 440.0) <= 2.0
    # The phase jumps at the joins are de-clicked: no sample-to-sample jump beyond the sine's own.
    max_sine_step = 0.5 * 2 * np.pi * 440 / 48000
    assert np.max(np.abs(np.diff(left))) < max_sine_step * 1.5
    assert out.finish() == b""
    with pytest.raises(RuntimeError):
        out.push(AudioChunk(np.zeros(10, np.float32), rate))


def test_audio_output_handles_rate_change():
    out = AudioOutput()
    a = sine(500, 22050, 0.3)
    b = sine(500, 32000, 0.3)
    pcm = out.push(AudioChunk(a, 22050), segment_start=True)
    pcm += out.push(AudioChunk(b, 32000), segment_start=True)
    pcm += out.finish()
    stats = out.stats()
    assert stats.rate_changes == 1 and stats.joins == 1
    assert out.sample_rate == 32000
    expected = len(soxr.resample(a, 22050, 48000)) + len(soxr.resample(b, 32000, 48000))
    assert stats.samples_48k == expected
    assert len(pcm) == -(-expected // FRAME_SAMPLES) * FRAME_BYTES
    left = decode(pcm)[:, 0].astype(np.float32) / 32767
    assert abs(peak_hz(left, 48000) - 500) <= 3.0


def test_audio_output_empty_utterance_sends_nothing():
    out = AudioOutput()
    assert out.finish() == b""
    assert out.stats().frames == 0


# --- WAV -------------------------------------------------------------------------------------------


def test_wav_roundtrip(tmp_path):
    x = sine(440, 48000, 0.1)
    pcm = to_s16_stereo(x)
    path = write_wav(tmp_path / "out.wav", pcm)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 48000)
        assert w.readframes(w.getnframes()) == pcm
    chunk = read_wav(path)
    assert chunk.sample_rate == 48000 and chunk.samples.dtype == np.float32
    assert np.allclose(chunk.samples, x, atol=1e-4)
    assert np.allclose(read_wav(wav_bytes(pcm)).samples, chunk.samples)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_widths_and_mixdown(width):
    left = np.array([0.5, -0.25, 0.0, 0.75])
    right = np.array([0.0, -0.25, 0.5, -0.75])
    scale = {1: 127, 2: 32767, 3: 8388607, 4: 2147483647}[width]
    ints = np.rint(np.stack([left, right], axis=1).ravel() * scale).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(width)
        w.setframerate(22050)
        w.writeframes(raw)
    chunk = read_wav(buf.getvalue())
    assert chunk.sample_rate == 22050
    assert np.allclose(chunk.samples, (left + right) / 2, atol=1.5 / 127)


def test_read_wav_rejects_garbage():
    with pytest.raises(ValueError, match="WAV"):
        read_wav(b"this is not a wav file")
