"""A real OpenAI-compatible (and llama.cpp-native) streaming HTTP server for tests, on 127.0.0.1.

It streams real SSE in the formats the graph parses, and records what happened to each request: how many
tokens it sent, whether it finished, and whether the client went away first - which is how tests prove
that an interrupt or a disconnect stops the upstream LLM.

A request for a model named `missing-...` is answered 404 (model not found), as llama-swap does.
Behaviour is chosen by markers in the prompt:
  [slow]     200 tokens, 50 ms apart (time to interrupt)
  [fail500]  HTTP 500 with a JSON error body
  [broken]   three tokens, then the connection is cut mid-line
  [error]    an OpenAI error object inside the stream
  [yes]      the one-word answer "yes" (a judge that agrees)
otherwise    REPLY, word by word, 5 ms apart

With `unload=True` it also answers llama-swap's `GET /unload` (counted in `unloads`); without, that
path is a 404 like any server that cannot release its models.
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

REPLY = "Hello from the test server! It is a lovely day to sing, isn't it? Let's talk for a while."


@dataclass
class RequestRecord:
    path: str
    prompt: str
    model: str | None
    system: str | None = None
    body: dict = field(default_factory=dict)  # the JSON body as sent (temperature, max_tokens, model...)
    tokens_sent: int = 0
    finished: bool = False
    disconnected: bool = False
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None


class LLMTestServer:
    def __init__(self, unload: bool = False) -> None:
        self.requests: list[RequestRecord] = []
        self.unload_supported = unload
        self.unloads = 0
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LLMTestServer:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="llm-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("LLM test server did not start")
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/completion", self._llamacpp)
        if self.unload_supported:
            app.router.add_get("/unload", self._unload)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def last(self, marker: str) -> RequestRecord:
        matching = [r for r in self.requests if marker in r.prompt]
        if not matching:
            raise AssertionError(f"no request with {marker!r} reached the LLM server")
        return matching[-1]

    async def settled(self, marker: str, timeout_s: float = 10.0) -> RequestRecord:
        """The last request with `marker`, once the server has finished handling it.

        The server runs on its own thread, so a client can read the final message before the
        handler resumes and records the outcome; waiting here keeps assertions free of that race.
        """
        record = self.last(marker)
        async with asyncio.timeout(timeout_s):
            while record.ended is None:
                await asyncio.sleep(0.01)
        return record

    # ---- handlers ----

    async def _unload(self, request: web.Request) -> web.Response:
        self.unloads += 1
        return web.Response(text="OK")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]

        def chunk(token: str) -> dict:
            return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": body.get("model"),
                    "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]}

        final = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), None)
        return await self._stream(request, prompt, body.get("model"), chunk, final, done_line=True, system=system)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()

        def chunk(token: str) -> dict:
            return {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": token, "finish_reason": None}]}

        final = {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}
        return await self._stream(request, body["prompt"], body.get("model"), chunk, final, done_line=True)

    async def _llamacpp(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()

        def chunk(token: str) -> dict:
            return {"content": token, "stop": False}

        return await self._stream(request, body["prompt"], None, chunk, {"content": "", "stop": True}, done_line=False)

    async def _stream(self, request, prompt, model, chunk, final, done_line: bool, system=None) -> web.StreamResponse:
        record = RequestRecord(request.path, prompt, model, system, body=await request.json())
        self.requests.append(record)
        if (model or "").startswith("missing-"):  # as llama-swap answers a model it does not serve
            record.finished = True
            record.ended = time.monotonic()
            return web.json_response({"error": {"message": f"model {model} not found", "type": "not_found"}}, status=404)
        if "[fail500]" in prompt:
            record.finished = True
            return web.json_response({"error": {"message": "model crashed", "type": "server_error"}}, status=500)
        if "[slow]" in prompt:
            tokens, delay = [f" word{i}" for i in range(200)], 0.05
        elif "[yes]" in prompt:
            tokens, delay = ["yes"], 0.005
        else:
            tokens, delay = re.findall(r"\s*\S+", REPLY), 0.005
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            for i, token in enumerate(tokens):
                if "[broken]" in prompt and i == 3:
                    await response.write(b'data: {"choices":[{"delta":{"cont')
                    request.transport.close()
                    record.disconnected = True
                    return response
                if "[error]" in prompt and i == 2:
                    await response.write(b'data: {"error":{"message":"out of memory","type":"server_error"}}\n\n')
                    break
                await response.write(f"data: {json.dumps(chunk(token))}\n\n".encode())
                record.tokens_sent += 1
                await asyncio.sleep(delay)
            else:
                # Finished means the whole reply and its final message went out; a client that
                # closes as soon as it reads them must not turn that into a disconnect.
                final_bytes = f"data: {json.dumps(final)}\n\n" + ("data: [DONE]\n\n" if done_line else "")
                await response.write(final_bytes.encode())
                record.finished = True
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            record.disconnected = True
            raise
        finally:
            record.ended = time.monotonic()
        return response
