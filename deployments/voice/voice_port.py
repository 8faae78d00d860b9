"""The ingress's direct voice port: `WS /v1/voice` and `WS /ws/stream` served by the ingress replica itself.

Through Serve's HTTP proxy every client message reaches the replica over a proxy hop plus an actor
long-poll, and every frame goes back through the proxy: about 10 ms per round trip on the 2-core box this
project is measured on (benchmarks/voice_latency.py, variants "+port" against "+proxy"). Voice is the one path where those
milliseconds are heard, so the ingress also serves its two WebSocket routes on a port of its own, from
the event loop that runs the pipeline (no proxy, no thread hand-off). Same protocol, same bearer token
(and, on the routes given as `query_token_routes`, the same `?token=` query parameter).

Everything a client can send is bounded here before any route sees it: the handshake (websockets'
own limits on request line and header sizes, `open_timeout`), each message (`max_size`: a bigger
one closes the connection with 1009 "message too big"; the protocol's own, smaller limit answers
with an error event and keeps it open) and the messages queued unread (`max_queue`).

Clients find the port with `GET /v1/voice/direct` on the Serve port; that call also picks the ingress
replica, so connections spread over replicas the way Serve spreads requests. Every other route, and any
client that does not ask, stays on Serve's proxy, which keeps working unchanged.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from http import HTTPStatus
from urllib.parse import urlsplit

from websockets import http11
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from deployments import auth
from graph.voice.stage_link import ws_url

# the protocol refuses messages over graph.voice.protocol.MAX_MESSAGE_BYTES (64 KiB) with an error
# event and the connection open; only far bigger ones close it (1009), so a client that overshoots
# by a little hears why, and nothing buffers megabytes
MAX_MESSAGE_BYTES = 2**20
MAX_QUEUED_MESSAGES = 16  # read, not yet handled: websockets stops reading the socket past this
HANDSHAKE_TIMEOUT_S = 5.0
MAX_HEADER_BYTES = 16 * 1024  # all request headers together, checked in _admit
# websockets' own parser limits, which it reads from WEBSOCKETS_MAX_LINE_LENGTH / _NUM_HEADERS when
# imported. PROXY_ENV (deployments/app.py) raises those for Serve's proxy and this replica inherits the
# environment, so this port puts its own back: a longer line or more headers is refused by websockets
# (HTTP 400/431) before anything is buffered past these bounds.
http11.MAX_LINE_LENGTH = MAX_HEADER_BYTES
http11.MAX_NUM_HEADERS = 128

Send = Callable[[bytes | dict], Awaitable[None]]
# a route's session: given how to send and the client's raw messages, run until the client is gone
VoiceRoute = Callable[[Send, AsyncIterator[str | bytes]], Awaitable[None]]


class DirectVoicePort:
    """A WebSocket server for the voice routes, on the replica's own event loop."""

    def __init__(self, routes: dict[str, VoiceRoute], host: str, port: int = 0, advertised_host: str | None = None,
                 query_token_routes: Iterable[str] = ()):
        self.routes = dict(routes)
        self.query_token_routes = frozenset(query_token_routes)
        self.host = host
        self.port = port
        self.advertised_host = advertised_host or host
        self._server: Server | None = None

    async def start(self) -> int:
        self._server = await serve(
            self._serve_connection, self.host, self.port, process_request=self._admit,
            max_size=MAX_MESSAGE_BYTES, max_queue=MAX_QUEUED_MESSAGES, open_timeout=HANDSHAKE_TIMEOUT_S,
            compression=None, ping_interval=20, ping_timeout=20,
            # a fixed port is shared (SO_REUSEPORT) so a replica replacing this one can open it before
            # this one has gone; the old replica keeps its connections until Serve stops it
            reuse_port=self.port != 0,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self.port

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def url(self, path: str) -> str:
        return ws_url(self.advertised_host, self.port, path)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _admit(self, connection: ServerConnection, request):
        # the route and the token are checked before the handshake completes: a refused client costs nothing
        header_bytes = sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items())
        if header_bytes > MAX_HEADER_BYTES:
            return connection.respond(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                      f"request headers of {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}\n")
        url = urlsplit(request.path)
        if url.path not in self.routes:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no voice route {url.path[:200]}; this port serves {sorted(self.routes)}\n")
        if not auth.request_authorized(request.headers.get("Authorization"), url.query, url.path in self.query_token_routes):
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token\n")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return None

    async def _serve_connection(self, connection: ServerConnection) -> None:
        route = self.routes[urlsplit(connection.request.path).path]

        async def send(message: bytes | dict) -> None:
            await connection.send(message if isinstance(message, bytes) else json.dumps(message))

        try:
            await route(send, _messages(connection))
        except ConnectionClosed:
            pass  # the client went away while we were sending; the route has already cleaned up


async def _messages(connection: ServerConnection) -> AsyncIterator[str | bytes]:
    try:
        async for message in connection:
            yield message
    except ConnectionClosed:
        return
