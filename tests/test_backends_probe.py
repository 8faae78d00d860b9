"""Health probes of the backends that depend on another process: against real servers that are then
stopped, the stage's status names the backend and its URL as down (a dead Soprano or RVC container must
not be reported ok)."""
import asyncio

import pytest
import websockets
from aiohttp import web

from deployments.voice.stages import probe_backend
from graph.backends import create_backend
from graph.voice.types import StageError
from tests.conftest import free_port
from tests.test_backends_zmq import Worker


class HTTPServer:
    """A real aiohttp server on 127.0.0.1 that answers every GET with `status`."""

    def __init__(self, status: int = 200):
        self.status = status
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "HTTPServer":
        async def answer(_request):
            return web.Response(status=self.status, text="hello")

        app = web.Application()
        app.router.add_get("/{tail:.*}", answer)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


HTTP_BACKENDS = [
    ("llm", {"backend": "openai"}),
    ("llm", {"backend": "llamacpp"}),
    ("tts", {"backend": "openai-speech"}),
]


@pytest.mark.parametrize("stage, config", HTTP_BACKENDS)
async def test_an_http_backend_whose_server_stops_is_reported_down_by_url(stage, config):
    server = await HTTPServer(status=404).start()  # a server that is up answers, even with a 404
    backend = create_backend(stage, {**config, "url": server.url})
    try:
        assert await probe_backend(backend) is None
        await server.stop()
        down = await probe_backend(backend)
        assert down is not None and config["backend"] in down and server.url in down and "down" in down
    finally:
        await backend.aclose()


async def test_an_http_server_answering_5xx_is_down():
    server = await HTTPServer(status=503).start()
    backend = create_backend("llm", {"backend": "openai", "url": server.url})
    try:
        with pytest.raises(StageError, match="HTTP 503"):
            await backend.probe()
    finally:
        await backend.aclose()
        await server.stop()


async def test_a_remote_pipeline_service_that_stops_is_reported_down():
    async def handler(ws):
        await ws.wait_closed()

    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws/stream"
    backend = create_backend("tts", {"backend": "remote-pipeline", "url": url})
    async with websockets.serve(handler, "127.0.0.1", port):
        assert await probe_backend(backend) is None
    down = await probe_backend(backend)
    assert down is not None and "remote-pipeline" in down and url in down and "down" in down
    await backend.aclose()


async def test_a_killed_soprano_worker_is_reported_down_by_url():
    worker = Worker(free_port(), "--backend", "simulated").start()
    backend = create_backend("tts", {"backend": "soprano-zmq", "url": worker.url, "timeout_s": 10})
    try:
        await backend.warmup()
        assert await probe_backend(backend) is None
        worker.kill()  # SIGKILL: the container died after start-up
        down = await probe_backend(backend)
        assert down is not None and "soprano-zmq" in down and worker.url in down and "down" in down
    finally:
        worker.kill()
        await backend.aclose()


@pytest.mark.parametrize("stage, config", [("vc", {"backend": "world"}), ("tts", {"backend": "espeak"}),
                                           ("llm", {"backend": "echo"})])
async def test_an_in_process_backend_has_nothing_to_probe(stage, config):
    backend = create_backend(stage, config)
    assert await probe_backend(backend) is None


async def test_a_probe_that_hangs_is_bounded_and_named():
    backend = create_backend("vc", {"backend": "passthrough"})

    async def hang():
        await asyncio.sleep(3600)

    backend.probe = hang
    down = await probe_backend(backend, timeout_s=0.05)
    assert down is not None and "passthrough" in down and "no answer" in down
