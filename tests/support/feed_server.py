"""A real HTTP server for feed tests (aiohttp, 127.0.0.1, a free port), run on the test's own event loop.

Each path serves whatever the test last put there: a feed file with its ETag and Last-Modified (answering
304 to a matching conditional GET, as real servers do), a status code, garbage, a stream of junk far
larger than any feed, or an answer that never comes. Every request is recorded with its headers, so a
test can assert what the client really sent.
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from aiohttp import web

FEEDS = Path(__file__).resolve().parent.parent / "data" / "feeds"


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/rss+xml"
    etag: str | None = None
    last_modified: str | None = None
    junk_bytes: int = 0  # > 0: stream this many bytes of junk, no Content-Length
    hang: bool = False  # never answer (until the server stops)


@dataclass(frozen=True)
class SeenRequest:
    path: str
    if_none_match: str | None
    if_modified_since: str | None


@dataclass
class FeedServer:
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[SeenRequest] = field(default_factory=list)
    junk_sent: int = 0
    _runner: web.AppRunner | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve_file(self, path: str, name: str, *, content_type: str | None = None, version: int = 1) -> str:
        """Serve tests/data/feeds/<name> at `path` with an ETag of its content and a Last-Modified per version."""
        body = (FEEDS / name).read_bytes()
        kind = content_type or ("application/atom+xml" if "atom" in name else "application/rss+xml")
        self.routes[path] = Route(body=body, content_type=kind, etag=f'"{hashlib.sha1(body).hexdigest()[:16]}"',
                                  last_modified=formatdate(1_700_000_000 + version * 3600, usegmt=True))
        return self.url(path)

    def set(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.url(path)

    def hits(self, path: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(SeenRequest(request.path, request.headers.get("If-None-Match"),
                                         request.headers.get("If-Modified-Since")))
        route = self.routes.get(request.path)
        if route is None:
            return web.Response(status=404, text="no such feed")
        if route.hang:
            await self._stop.wait()
            return web.Response(status=503)
        if route.junk_bytes:
            resp = web.StreamResponse(headers={"Content-Type": "application/rss+xml"})
            await resp.prepare(request)
            block = b"\xde\xad<junk>" * 6000
            try:
                while self.junk_sent < route.junk_bytes:
                    await resp.write(block)
                    self.junk_sent += len(block)
            except (ConnectionResetError, RuntimeError):
                pass  # the client stopped reading: what a bounded reader does
            return resp
        if route.status != 200:
            return web.Response(status=route.status, body=route.body)
        headers = {}
        if route.etag:
            headers["ETag"] = route.etag
        if route.last_modified:
            headers["Last-Modified"] = route.last_modified
        if route.etag and request.headers.get("If-None-Match") == route.etag:
            return web.Response(status=304, headers=headers)
        if (not route.etag and route.last_modified
                and request.headers.get("If-Modified-Since") == route.last_modified):
            return web.Response(status=304, headers=headers)
        return web.Response(body=route.body, headers={**headers, "Content-Type": route.content_type})

    async def start(self) -> "FeedServer":
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._runner is not None:
            await self._runner.cleanup()
