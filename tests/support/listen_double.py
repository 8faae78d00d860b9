"""A test double of the graph's routes the bot's listening uses, on a real aiohttp server on 127.0.0.1.

`GraphDouble` serves what a voice session needs (`/healthz`, `POST /v1/sessions`, heartbeats, `DELETE`,
`POST /v1/events`, `WS /v1/voice` speaking each prompt as a long run of frames until interrupted) and a
double of `WS /v1/listen` that implements the wire contract of docs/api.md: it records every client
message (JSON, and binary as `(user_id, pcm)`) and lets the test push the graph's events (`turn`,
`barge_in`, `command`, `stt_unavailable`, ...). It is a stand-in for the listening route only until
the real one is used (tests/test_listen_e2e.py runs against the real graph); it never transcribes.
"""
from __future__ import annotations

import asyncio
import json
import struct

from aiohttp import WSMsgType, web

TOKEN = "listen-double-token"
FRAME = 3840


class GraphDouble:
    def __init__(self, *, listen_route: bool = True, utterance_frames: int = 500,
                 direct_listen: str | None = None) -> None:
        self.listen_route = listen_route
        # "port": serve the routes on a second port too and offer it in GET /v1/voice/direct (as the
        # graph's direct voice port); "dead": offer a port nobody listens on; None: no direct port.
        self.direct_listen = direct_listen
        self.listen_hosts: list[str] = []
        self.utterance_frames = utterance_frames  # 10 s: long enough to be interrupted mid-way
        self.listen_messages: list[dict | tuple[int, bytes]] = []
        self.listen_connections = 0
        self.prompts: list[dict] = []
        self.interrupts = 0
        self.events: list[dict] = []
        self._listen_ws: web.WebSocketResponse | None = None
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> "GraphDouble":
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        app.router.add_post("/v1/sessions", self._session)
        app.router.add_post("/v1/sessions/{sid}/heartbeat", self._ok)
        app.router.add_delete("/v1/sessions/{sid}", self._ok)
        app.router.add_post("/v1/metrics/playback", self._ok)
        app.router.add_post("/v1/events", self._event)
        app.router.add_get("/v1/voice", self._voice)
        if self.listen_route:
            app.router.add_get("/v1/listen", self._listen)
        if self.direct_listen is not None:
            app.router.add_get("/v1/voice/direct", self._direct)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.direct_port = 0
        if self.direct_listen == "port":
            direct = web.TCPSite(self._runner, "127.0.0.1", 0)
            await direct.start()
            self.direct_port = direct._server.sockets[0].getsockname()[1]
        elif self.direct_listen == "dead":
            import socket

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.direct_port = probe.getsockname()[1]  # closed again: nothing listens there
        return self

    async def _direct(self, request: web.Request) -> web.Response:
        base = f"ws://127.0.0.1:{self.direct_port}"
        return web.json_response({"voice": f"{base}/v1/voice", "stream": f"{base}/ws/stream", "listen": f"{base}/v1/listen"})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _touch(self) -> None:
        self._changed.set()

    async def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition"):
        """Wait until `predicate()` is truthy (re-checked whenever the double saw something)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except asyncio.TimeoutError:
                pass

    @staticmethod
    def _authorised(request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "stages": {"llm": {"backend": "echo", "ok": True},
                                                         "tts": {"backend": "espeak", "ok": True},
                                                         "vc": {"backend": "passthrough", "ok": True}}})

    async def _session(self, request: web.Request) -> web.Response:
        return web.json_response({"session_id": "s-listen", "lease_s": 30, "blackouts": ["text_messages"]})

    async def _ok(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _event(self, request: web.Request) -> web.Response:
        self.events.append(await request.json())
        self._touch()
        return web.json_response({"actions": []})

    async def _voice(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.Response(status=403)
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        speaking: asyncio.Task | None = None

        async def speak(utterance_id: str) -> None:
            await ws.send_json({"type": "utterance.start", "id": utterance_id})
            sent = 0
            try:
                while sent < self.utterance_frames:
                    # Each 25-frame group is one chunk, announced before its audio as the graph does.
                    await ws.send_json({"type": "chunk", "id": utterance_id, "index": sent // 25,
                                        "text": f"part {sent // 25}."})
                    await ws.send_bytes(bytes([1, 2]) * (FRAME // 2) * 25)
                    sent += 25
                    await asyncio.sleep(0.1)
                await ws.send_json({"type": "utterance.end", "id": utterance_id, "status": "ok"})
            except asyncio.CancelledError:
                await ws.send_json({"type": "utterance.end", "id": utterance_id, "status": "interrupted"})
                raise

        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            payload = json.loads(message.data)
            if payload.get("type") in ("prompt", "say"):
                self.prompts.append(payload)
                speaking = asyncio.ensure_future(speak(payload["id"]))
            elif payload.get("type") == "interrupt":
                self.interrupts += 1
                if speaking is not None:
                    speaking.cancel()
            self._touch()
        if speaking is not None:
            speaking.cancel()
        return ws

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.Response(status=403)
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        self._listen_ws = ws
        self.listen_connections += 1
        self.listen_hosts.append(request.host)
        self._touch()
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.listen_messages.append(json.loads(message.data))
            elif message.type == WSMsgType.BINARY:
                (user_id,) = struct.unpack_from("<Q", message.data)
                self.listen_messages.append((user_id, bytes(message.data[8:])))
            self._touch()
        return ws

    # --- what tests use ---------------------------------------------------------------------------

    async def send(self, event: dict) -> None:
        assert self._listen_ws is not None, "no listen connection"
        await self._listen_ws.send_json(event)

    async def drop_listen(self) -> None:
        if self._listen_ws is not None:
            await self._listen_ws.close()

    def json_messages(self, kind: str | None = None) -> list[dict]:
        return [m for m in self.listen_messages if isinstance(m, dict) and (kind is None or m.get("type") == kind)]

    def audio_of(self, user_id: int) -> bytes:
        return b"".join(m[1] for m in self.listen_messages if isinstance(m, tuple) and m[0] == user_id)
