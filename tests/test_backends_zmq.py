"""`soprano-zmq` client against the real worker process (`python -m deployments.voice.soprano_worker`):
round trip, the real Soprano backend inside the worker, worker crash and restart, timeouts, cancel."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.asyncio

from graph.backends import create_backend
from graph.backends.tts.soprano_zmq import PROTOCOL, SopranoZmqTTS
from graph.voice.types import StageError, TTSOptions
from tests.conftest import free_port
from tests.tiny_models import SOPRANO_TOKEN_SAMPLES, cached_tiny_soprano

ROOT = Path(__file__).resolve().parents[1]


class Worker:
    """One worker process on 127.0.0.1, started and killed by the test."""

    def __init__(self, port: int, *args: str):
        self.port = port
        self.args = args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 120.0) -> "Worker":
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deployments.voice.soprano_worker", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("ready "):
                return self
            if not line and self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.process.stderr.read()[-2000:]}")
        raise RuntimeError("worker did not become ready")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            return self.process.wait(20)
        return self.process.returncode if self.process else 0


async def wait_until_idle(client: SopranoZmqTTS, limit_s: float = 20.0) -> dict:
    """Ping until the worker has no active request (a cancel lands asynchronously) and return its pong."""
    deadline = time.monotonic() + limit_s
    while True:
        info = await client.ping()
        if info["active_requests"] == 0 or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.05)


@pytest.fixture
def paced_worker():
    """A model-free worker whose audio comes at real-time pace (the `simulated` TTS backend)."""
    worker = Worker(free_port(), "--backend", "simulated", "--option", "real_time_factor=1.0", "--option", "piece_s=0.1").start()
    yield worker
    worker.kill()


async def test_round_trip_with_an_espeak_worker():
    worker = Worker(free_port(), "--backend", "espeak").start()
    client = create_backend("tts", {"backend": "soprano-zmq", "url": worker.url, "timeout_s": 10})
    try:
        await client.warmup()
        assert client.describe()["worker"]["backend"]["backend"] == "espeak"
        chunks = [c async for c in client.synthesize("Hello from the worker.", TTSOptions())]
        assert chunks and all(c.sample_rate == 22_050 for c in chunks)
        audio = np.concatenate([c.samples for c in chunks])
        assert len(audio) > 22_050 * 0.5 and np.abs(audio).max() > 0.01
        assert client.describe()["connected"] is True
    finally:
        await client.aclose()
        assert worker.stop() == 0  # SIGTERM: clean exit


async def test_the_worker_hosts_the_real_soprano_backend():
    model = cached_tiny_soprano(10)
    worker = Worker(free_port(), "--model-path", str(model), "--device", "cpu").start()
    client = SopranoZmqTTS(url=worker.url, timeout_s=60)
    try:
        info = await client.ping()
        assert info["backend"]["backend"] == "soprano" and info["backend"]["device"] == "cpu"
        chunks = [c async for c in client.synthesize("Hello there, I am Miku.", TTSOptions())]
        assert len(chunks) > 2 and all(c.sample_rate == 32_000 for c in chunks)
        assert len(chunks[0].samples) == SOPRANO_TOKEN_SAMPLES  # streamed token by token
        assert sum(len(c.samples) for c in chunks) == 9 * SOPRANO_TOKEN_SAMPLES
        # a mood's rate travels in the request's options; the worker's Soprano time-stretches its audio
        slow = [c async for c in client.synthesize("Hello there, I am Miku.", TTSOptions(speed=0.8))]
        assert abs(sum(len(c.samples) for c in slow) - 9 * SOPRANO_TOKEN_SAMPLES / 0.8) <= len(slow)
    finally:
        await client.aclose()
        worker.kill()


async def test_worker_crash_mid_utterance_is_an_error_and_the_next_utterance_works_after_restart(paced_worker):
    client = SopranoZmqTTS(url=paced_worker.url, timeout_s=30, connect_timeout_s=20)
    try:
        stream = client.synthesize("A long sentence that keeps the worker busy for a few seconds.", TTSOptions())
        first = await stream.__anext__()
        assert first.sample_rate == 32_000
        paced_worker.kill()
        with pytest.raises(StageError, match="went away"):
            async for _ in stream:
                pass
        paced_worker.start()  # same port: the client reconnects by itself
        chunks = [c async for c in client.synthesize("Back again.", TTSOptions())]
        assert sum(len(c.samples) for c in chunks) > 0
        assert client.describe()["failures"] == 1
    finally:
        await client.aclose()


async def test_no_worker_is_a_clear_error_not_a_hang():
    client = SopranoZmqTTS(url=f"tcp://127.0.0.1:{free_port()}", timeout_s=1, connect_timeout_s=0.5)
    try:
        with pytest.raises(StageError, match="not reachable"):
            async for _ in client.synthesize("Anyone there?", TTSOptions()):
                pass
    finally:
        await client.aclose()


async def test_a_silent_worker_times_out():
    worker = Worker(free_port(), "--backend", "simulated", "--option", "first_audio_s=30").start()
    client = SopranoZmqTTS(url=worker.url, timeout_s=0.5)
    probe = SopranoZmqTTS(url=worker.url, timeout_s=30)
    try:
        with pytest.raises(StageError, match="no audio from the Soprano worker within 0.5 s"):
            async for _ in client.synthesize("Slow.", TTSOptions()):
                pass
        # the worker dropped the request when the client gave up (cancel) and still answers; the
        # cancel travels on the old socket and the ping on a new one, so wait for it (well before the
        # 30 s after which the request would end by itself). The pings go through a patient client:
        # 0.5 s is this client's budget for audio, not the worker's for a pong under load.
        info = await wait_until_idle(probe)
        assert info["active_requests"] == 0 and info["served"] == 0
    finally:
        await client.aclose()
        await probe.aclose()
        worker.kill()


async def test_closing_the_stream_cancels_the_request_in_the_worker(paced_worker):
    client = SopranoZmqTTS(url=paced_worker.url, timeout_s=10)
    try:
        stream = client.synthesize("A long sentence that would take several seconds to speak aloud.", TTSOptions())
        await stream.__anext__()
        assert (await client.ping())["active_requests"] == 1
        await stream.aclose()
        info = await wait_until_idle(client)  # the cancel lands asynchronously
        assert info["active_requests"] == 0 and info["served"] == 0  # cancelled, not finished
        chunks = [c async for c in client.synthesize("Next.", TTSOptions())]
        assert chunks
    finally:
        await client.aclose()


async def test_wrong_format_audio_from_a_worker_is_refused():
    """A peer that speaks the protocol but sends 16-bit samples where float32 is promised."""
    port = free_port()
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"tcp://127.0.0.1:{port}")
    client = SopranoZmqTTS(url=f"tcp://127.0.0.1:{port}", timeout_s=5)

    async def bad_peer():
        identity, _tag, _kind, rid, _body = await router.recv_multipart()
        s16 = (np.sin(np.arange(3200) / 5) * 20000).astype("<i2").tobytes()
        await router.send_multipart([identity, PROTOCOL, b"audio", rid, b'{"seq": 0, "sample_rate": 32000}', s16])

    peer = asyncio.create_task(bad_peer())
    try:
        with pytest.raises(StageError, match="refused audio from the worker"):
            async for _ in client.synthesize("Hi.", TTSOptions()):
                pass
    finally:
        await peer
        await client.aclose()
        router.close(0)
        ctx.term()


def test_bad_urls_fail_fast():
    with pytest.raises(ValueError, match="tcp://"):
        SopranoZmqTTS(url="http://127.0.0.1:5555")
