"""The `soprano` TTS backend's real loading and streaming code on a tiny Soprano model built here."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import pytest_asyncio

from graph.backends import create_backend
from graph.backends.tts.soprano import (
    SOPRANO_SAMPLE_RATE,
    SopranoInProcessTTS,
    check_model_dir,
)
from graph.voice.types import StageError, TTSOptions
from tests.tiny_models import SOPRANO_TOKEN_SAMPLES, cached_tiny_soprano

TOKENS = 10  # the tiny LM speaks exactly this many audio tokens per sentence


@pytest.fixture(scope="module")
def model_dir():
    return cached_tiny_soprano(TOKENS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tts(model_dir):
    backend = create_backend("tts", {"backend": "soprano", "model_path": str(model_dir), "device": "cpu"})
    await backend.warmup()
    yield backend
    await backend.aclose()


@pytest.mark.asyncio(loop_scope="module")
async def test_loads_from_the_local_directory_and_reports_device_and_load_time(tts, model_dir):
    assert isinstance(tts, SopranoInProcessTTS)
    info = tts.describe()
    assert info["loaded"] is True
    assert info["device"] == "cpu"
    assert info["engine"] == "transformers"
    assert info["model_path"] == str(model_dir)
    assert info["load_s"] > 0 and info["warmup_s"] > 0
    assert info["sample_rate"] == SOPRANO_SAMPLE_RATE


@pytest.mark.asyncio(loop_scope="module")
async def test_streams_32k_mono_pieces_before_the_sentence_is_finished(tts):
    pieces = [chunk async for chunk in tts.synthesize("Hello there, I am Miku.", TTSOptions())]
    assert len(pieces) > 2  # streamed, not one blob at the end
    for piece in pieces:
        assert piece.sample_rate == 32_000
        assert piece.samples.ndim == 1 and piece.samples.dtype == np.float32
        assert np.isfinite(piece.samples).all() and np.abs(piece.samples).max() <= 1.0
    # chunk_size=1: the first piece is one LM token's worth of audio, the rest follows token by token
    assert len(pieces[0].samples) == SOPRANO_TOKEN_SAMPLES
    total = sum(len(p.samples) for p in pieces)
    assert total == (TOKENS - 1) * SOPRANO_TOKEN_SAMPLES  # soprano drops the first token's audio
    assert np.abs(np.concatenate([p.samples for p in pieces])).max() > 0  # not silence


@pytest.mark.asyncio(loop_scope="module")
async def test_closing_the_stream_stops_the_model_and_the_next_utterance_works(tts):
    before = tts.describe()["interrupted"]
    stream = tts.synthesize("A sentence that will be interrupted after its first piece.", TTSOptions())
    first = await stream.__anext__()
    assert len(first.samples) == SOPRANO_TOKEN_SAMPLES
    await stream.aclose()
    assert tts.describe()["interrupted"] == before + 1
    again = [c async for c in tts.synthesize("Still here.", TTSOptions())]
    assert sum(len(c.samples) for c in again) == (TOKENS - 1) * SOPRANO_TOKEN_SAMPLES


@pytest.mark.asyncio(loop_scope="module")
async def test_empty_text_yields_nothing(tts):
    assert [c async for c in tts.synthesize("   ", TTSOptions())] == []


@pytest.mark.parametrize("missing", ["decoder.pth", "config.json", "model.safetensors", "tokenizer.json"])
def test_incomplete_model_dir_names_the_missing_file(model_dir, tmp_path, missing):
    partial = tmp_path / "model"
    partial.mkdir()
    for item in model_dir.iterdir():
        if item.name != missing:
            (partial / item.name).symlink_to(item)
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        SopranoInProcessTTS(model_path=str(partial), device="cpu")


def test_missing_model_dir_is_a_startup_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_backend("tts", {"backend": "soprano", "model_path": str(tmp_path / "nope")})


def test_bad_options_fail_fast(model_dir):
    with pytest.raises(ValueError, match="device"):
        SopranoInProcessTTS(model_path=str(model_dir), device="tpu")
    with pytest.raises(ValueError, match="engine"):
        SopranoInProcessTTS(model_path=str(model_dir), engine="onnx")
    assert check_model_dir(model_dir) == model_dir


async def test_corrupt_weights_are_a_clear_startup_error(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken, ignore=shutil.ignore_patterns("decoder.pth"))
    (broken / "decoder.pth").write_bytes(b"not a state dict")
    backend = SopranoInProcessTTS(model_path=str(broken), device="cpu")
    with pytest.raises(StageError, match="cannot load the Soprano model"):
        await backend.warmup()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_speaking_rate_time_stretches_the_stream_and_closing_it_closes_the_model_stream(tts):
    # soprano-tts has no speed parameter: TTSOptions.speed is a WORLD time-stretch of what it streams
    slow = [c async for c in tts.synthesize("Hello there, I am Miku.", TTSOptions(speed=0.8))]
    native = (TOKENS - 1) * SOPRANO_TOKEN_SAMPLES
    assert all(c.sample_rate == 32_000 and np.isfinite(c.samples).all() for c in slow)
    assert abs(sum(len(c.samples) for c in slow) - native / 0.8) <= len(slow)  # rounding: a sample per block
    # closing the stretched stream closes the model's stream: its cleanup has run (the synthesis is
    # counted, the model lock is free) by the time aclose returns, and the next utterance works
    before = tts.describe()["utterances"]
    stream = tts.synthesize("A sentence that will be interrupted after its first block.", TTSOptions(speed=1.25))
    await stream.__anext__()
    await stream.aclose()
    assert tts.describe()["utterances"] == before + 1
    again = [c async for c in tts.synthesize("Still here.", TTSOptions(speed=1.25))]
    assert abs(sum(len(c.samples) for c in again) - native / 1.25) <= len(again)
