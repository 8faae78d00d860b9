"""A protocol server for `POST /v1/audio/transcriptions` (OpenAI's shape, as speaches, faster-whisper-server
and whisper.cpp's server answer it), named as such: none of those servers can run here (no model
downloads), so this one speaks their protocol and transcribes for real with the pocketsphinx backend.

It parses the multipart form like they do (file, model, response_format, language, prompt), refuses what
they refuse (no file, not a WAV: 400), and records every request for the tests.
"""
from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from graph.backends.base import create_backend
from graph.listen.audio_in import load_wav_16k
from graph.listen.types import STTOptions


class TranscriptionProtocolServer:
    def __init__(self):
        self.requests: list[dict] = []
        self.fail_with: int | None = None  # answer every request with this status (a broken server)
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.backend = create_backend("stt", {"backend": "pocketsphinx"})

    async def _transcriptions(self, request: web.Request) -> web.Response:
        form = await request.post()
        record = {key: (value if isinstance(value, str) else "<file>") for key, value in form.items()}
        record["authorization"] = request.headers.get("Authorization")
        self.requests.append(record)
        if self.fail_with:
            return web.json_response({"error": {"message": "model crashed"}}, status=self.fail_with)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return web.json_response({"error": {"message": "file is required"}}, status=400)
        try:
            samples = load_wav_16k(upload.file.read())
        except ValueError as error:
            return web.json_response({"error": {"message": str(error)}}, status=400)
        transcript = await self.backend.transcribe(samples, STTOptions(detect_commands=False))
        return web.json_response({"text": transcript.text})

    async def _root(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def start(self) -> TranscriptionProtocolServer:
        self._thread = threading.Thread(target=self._serve, name="transcription-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the transcription protocol server did not start")
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=8 * 2**20)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_get("/", self._root)

        async def setup():
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()

        self._loop.run_until_complete(setup())
        self._loop.run_forever()

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
