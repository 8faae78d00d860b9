"""`remote-pipeline` against a WebSocket service on 127.0.0.1 that speaks the Soprano->RVC `/ws/stream`
protocol: good audio (with and without the end marker), errors, wrong-format audio, a dying service."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import pytest_asyncio
import websockets

from graph.backends import create_backend
from graph.backends.tts.remote_pipeline import RemotePipelineTTS
from graph.voice.types import StageError, TTSOptions
from tests.conftest import free_port

RATE = 48_000


class Service:
    """The service's behaviour is chosen per test: `mode` says what it answers to a flush."""

    def __init__(self) -> None:
        self.mode = "good"
        self.received: list[dict] = []
        self.connections = 0
        self.closed_early = asyncio.Event()

    def audio(self, text: str) -> np.ndarray:
        seconds = 0.05 * len(text)
        return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * RATE)) / RATE)).astype("<f4")

    async def handler(self, ws) -> None:
        self.connections += 1
        text = ""
        try:
            async for raw in ws:
                message = json.loads(raw)
                self.received.append(message)
                if "token" in message:
                    text += message["token"]
                    continue
                audio = self.audio(text)
                text = ""
                if self.mode == "error":
                    await ws.send(json.dumps({"error": "RVC model not loaded"}))
                    continue
                if self.mode == "odd-bytes":
                    await ws.send(audio.tobytes()[:-1])
                    continue
                if self.mode == "nan":
                    audio[100] = np.nan
                if self.mode == "loud":
                    audio = audio * 1000
                if self.mode == "s16":  # 16-bit samples where float32 is promised: absurd values
                    await ws.send((audio * 32767).astype("<i2").tobytes() + (audio * 32767).astype("<i2").tobytes())
                    continue
                pieces = np.array_split(audio, 4)
                for i, piece in enumerate(pieces):
                    await ws.send(piece.tobytes())
                    if self.mode == "die" and i == 1:
                        await ws.close()
                        return
                    if self.mode == "slow":
                        await asyncio.sleep(0.5)
                if self.mode in ("good", "slow"):
                    await ws.send(json.dumps({"flushed": True, "samples": len(audio)}))
                # mode "no-marker": the original service sends audio and nothing else
        except websockets.ConnectionClosed:
            self.closed_early.set()


@pytest_asyncio.fixture
async def service():
    state = Service()
    port = free_port()
    async with websockets.serve(state.handler, "127.0.0.1", port):
        state.url = f"ws://127.0.0.1:{port}/ws/stream"
        yield state


async def speak(tts, text="Hello there!"):
    return [c async for c in tts.synthesize(text, TTSOptions())]


async def test_audio_streams_at_48k_and_the_connection_is_reused(service):
    tts = create_backend("tts", {"backend": "remote-pipeline", "url": service.url, "pitch_shift": 3})
    try:
        chunks = await speak(tts)
        assert len(chunks) == 4 and all(c.sample_rate == 48_000 for c in chunks)
        np.testing.assert_allclose(np.concatenate([c.samples for c in chunks]), service.audio("Hello there!"), atol=1e-7)
        assert service.received[:2] == [{"token": "Hello there!", "pitch_shift": 3}, {"flush": True}]
        await speak(tts, "Again.")
        assert service.connections == 1
        assert tts.describe()["final_voice"] is True and tts.describe()["utterances"] == 2
    finally:
        await tts.aclose()


async def test_a_service_without_end_marker_ends_after_idle_silence(service):
    service.mode = "no-marker"
    # the service writes its pieces back to back; 0.3 s between two of them is what a loaded machine
    # can make of that, so the silence that counts as the end is far longer
    tts = RemotePipelineTTS(url=service.url, end_idle_s=2.0)
    try:
        chunks = await speak(tts)
        assert sum(len(c.samples) for c in chunks) == len(service.audio("Hello there!"))
    finally:
        await tts.aclose()


@pytest.mark.parametrize(
    "mode, message",
    [
        ("error", "RVC model not loaded"),
        ("odd-bytes", "not a whole number of float32 samples"),
        ("nan", "NaN"),
        ("loud", "far outside"),
        ("s16", "refused audio from the remote pipeline"),
        ("die", "closed the connection mid-utterance"),
    ],
)
async def test_failures_and_wrong_format_audio_become_errors_and_the_next_utterance_works(service, mode, message):
    service.mode = mode
    tts = RemotePipelineTTS(url=service.url, timeout_s=10, end_idle_s=2.0)  # "die" must not look like an idle end
    try:
        with pytest.raises(StageError, match=message):
            await speak(tts)
        assert tts.describe()["failures"] == 1
        service.mode = "good"
        assert sum(len(c.samples) for c in await speak(tts)) == len(service.audio("Hello there!"))
    finally:
        await tts.aclose()


async def test_interrupt_closes_the_connection_so_the_service_stops(service):
    service.mode = "slow"
    tts = RemotePipelineTTS(url=service.url)
    stream = tts.synthesize("A long line to speak slowly.", TTSOptions())
    await stream.__anext__()
    await stream.aclose()
    await asyncio.wait_for(service.closed_early.wait(), 5)
    await tts.aclose()


async def test_an_unreachable_service_is_a_clear_error():
    tts = RemotePipelineTTS(url=f"ws://127.0.0.1:{free_port()}/ws/stream", connect_timeout_s=1)
    with pytest.raises(StageError, match="cannot connect"):
        await speak(tts)


def test_bad_options_fail_fast():
    with pytest.raises(ValueError, match="ws://"):
        RemotePipelineTTS(url="http://127.0.0.1:8765/ws/stream")
    with pytest.raises(ValueError, match="pitch_shift"):
        RemotePipelineTTS(pitch_shift=40)


async def test_a_speaking_rate_time_stretches_the_final_audio_keeping_its_pitch(service):
    # the service's protocol carries no rate: a mood's rate is a WORLD time-stretch of its 48 kHz audio
    import pyworld

    tts = create_backend("tts", {"backend": "remote-pipeline", "url": service.url})
    text = "A longer sentence for the stretch."
    try:
        chunks = [c async for c in tts.synthesize(text, TTSOptions(speed=0.8))]
    finally:
        await tts.aclose()
    native = service.audio(text)
    audio = np.concatenate([c.samples for c in chunks])
    assert all(c.sample_rate == 48_000 for c in chunks) and np.isfinite(audio).all()
    assert abs(len(audio) - len(native) / 0.8) <= len(chunks)  # a sample of rounding per block
    assert service.received[0] == {"token": text}  # nothing new on the wire
    f0, _ = pyworld.harvest(audio.astype(np.float64), RATE, f0_floor=200.0, f0_ceil=800.0)
    assert np.median(f0[f0 > 0]) == pytest.approx(440.0, rel=0.03)  # the service's 440 Hz, not 352 Hz
