"""`openai-speech` against Soprano's own OpenAI-compatible server (soprano-tts's `soprano.server`,
serving the tiny Soprano model from a local Hugging Face cache), plus malformed bodies from a peer."""
from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from graph.backends import create_backend
from graph.backends.pcm import BadAudio
from graph.backends.tts.openai_speech import OpenAISpeechTTS, WavStreamParser
from graph.voice.audio import wav_bytes
from graph.voice.types import StageError, TTSOptions
from tests.conftest import free_port
from tests.tiny_models import SOPRANO_TOKEN_SAMPLES, cached_tiny_soprano

SOPRANO_REPO = "ekwek/Soprano-1.1-80M"  # the name soprano.server loads; offline it resolves from the cache


def offline_hf_cache(root: Path, model_dir: Path) -> Path:
    """A Hugging Face hub cache holding `model_dir` as SOPRANO_REPO's main revision."""
    repo = root / "hub" / ("models--" + SOPRANO_REPO.replace("/", "--"))
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for item in model_dir.iterdir():
        (snapshot / item.name).symlink_to(item)
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def soprano_server(tmp_path_factory):
    home = offline_hf_cache(tmp_path_factory.mktemp("hf"), cached_tiny_soprano(10))
    port = free_port()
    log = (home / "server.log").open("w")
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "soprano.server:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(1200):  # bounded: loading torch + the model takes a while on 2 cores
                if process.poll() is not None:
                    raise RuntimeError((home / "server.log").read_text()[-3000:])
                try:
                    async with session.get(f"{url}/openapi.json") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("soprano server did not start")
        yield url
    finally:
        process.terminate()
        process.wait(20)
        log.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_speech_from_sopranos_own_server(soprano_server):
    tts = create_backend("tts", {"backend": "openai-speech", "url": soprano_server})
    try:
        chunks = [c async for c in tts.synthesize("Hello there, I am Miku.", TTSOptions())]
        assert chunks and all(c.sample_rate == 32_000 for c in chunks)
        audio = np.concatenate([c.samples for c in chunks])
        assert len(audio) == 9 * SOPRANO_TOKEN_SAMPLES  # the tiny model's 10 tokens, as in process
        assert np.abs(audio).max() > 0
        assert tts.describe()["sample_rate"] == 32_000
    finally:
        await tts.aclose()


@pytest.mark.asyncio(loop_scope="module")
async def test_an_http_error_from_the_server_is_a_stage_error_naming_it(soprano_server):
    tts = OpenAISpeechTTS(url=soprano_server + "/wrong-prefix")
    try:
        with pytest.raises(StageError, match="HTTP 404") as error:
            async for _ in tts.synthesize("Hi.", TTSOptions()):
                pass
        assert soprano_server in str(error.value)
    finally:
        await tts.aclose()


# ------------------------------------------------------------------ malformed bodies from a peer

def float_wav(samples: np.ndarray, rate: int = 24_000) -> bytes:
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data


TONE = (0.3 * np.sin(np.arange(4800) / 4)).astype(np.float32)
BODIES = {
    "good-pcm": (TONE * 32767).astype("<i2").tobytes(),
    "odd-pcm": (TONE * 32767).astype("<i2").tobytes() + b"\x01",
    "nan-wav": float_wav(np.concatenate([TONE, [np.nan]]).astype(np.float32)),
    "loud-wav": float_wav(TONE * 5000),
    "html": b"<html><body>Bad gateway</body></html>",
    "good-float-wav": float_wav(TONE),
    "stereo-s16-wav": wav_bytes((np.repeat(TONE, 2) * 32767).astype("<i2").tobytes(), 22_050, 2),
}


@pytest_asyncio.fixture
async def peer():
    async def speech(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        payload = BODIES[body["model"]]
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        for start in range(0, len(payload), 1000):  # in pieces, like a streaming server
            await response.write(payload[start : start + 1000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def speak(url: str, model: str, **options):
    tts = OpenAISpeechTTS(url=url, model=model, **options)
    try:
        return [c async for c in tts.synthesize("Hi.", TTSOptions())]
    finally:
        await tts.aclose()


async def test_good_bodies_decode(peer):
    pcm = await speak(peer, "good-pcm", response_format="pcm", sample_rate=24_000)
    assert sum(len(c.samples) for c in pcm) == len(TONE) and pcm[0].sample_rate == 24_000
    np.testing.assert_allclose(np.concatenate([c.samples for c in pcm]), TONE, atol=1e-4)
    floats = await speak(peer, "good-float-wav")
    np.testing.assert_allclose(np.concatenate([c.samples for c in floats]), TONE, atol=1e-6)
    stereo = await speak(peer, "stereo-s16-wav")
    assert stereo[0].sample_rate == 22_050 and sum(len(c.samples) for c in stereo) == len(TONE)


@pytest.mark.parametrize(
    "model, options, message",
    [
        ("odd-pcm", {"response_format": "pcm"}, "stray byte"),
        ("nan-wav", {}, "NaN"),
        ("loud-wav", {}, "far outside"),
        ("html", {}, "not a WAV body"),
    ],
)
async def test_wrong_format_audio_is_refused_not_played(peer, model, options, message):
    with pytest.raises(StageError, match=message):
        await speak(peer, model, **options)


def test_wav_parser_fed_byte_by_byte_matches_whole_file_decoding():
    data = wav_bytes((TONE * 32767).astype("<i2").tobytes(), 32_000, 1)
    parser = WavStreamParser()
    pieces = [parser.feed(data[i : i + 1]) for i in range(len(data))]
    parser.close()
    assert parser.format.sample_rate == 32_000
    np.testing.assert_allclose(np.concatenate(pieces), TONE, atol=1e-4)
    truncated = WavStreamParser()
    truncated.feed(data[:-1])
    with pytest.raises(BadAudio, match="stray"):
        truncated.close()


def test_bad_options_fail_fast():
    with pytest.raises(ValueError, match="http"):
        OpenAISpeechTTS(url="127.0.0.1:8000")
    with pytest.raises(ValueError, match="response_format"):
        OpenAISpeechTTS(url="http://127.0.0.1:8000", response_format="mp3")
