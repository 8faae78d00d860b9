"""A direct, persistent link from the ingress to a stage replica: the voice path's data plane.

Serve still places, starts, health-checks and replaces the stage replicas, and the ingress finds a
replica through its Serve handle. The calls of an utterance (LLM tokens, TTS audio, VC chunks) then go
over one WebSocket per stage that the two processes keep open, instead of one Serve request per call.
On this project's 2-core test box a Serve call costs 3-8 ms a hop (router, gRPC, thread hand-offs) and a
message on an open WebSocket about 0.5 ms (benchmarks/serve_hops.py measures both side by side), and the
first audio of an utterance waits on at least three such hops.

Wire format: binary frames, each one msgpack tuple (graph.voice.link_codec: data only, a fixed list of
dataclasses and numpy arrays as raw buffers, never pickle, so a leaked secret can at worst send audio).

    client -> server   ("call", id, method, args)   ("cancel", id)
    server -> client   ("item", id, value)   ("end", id)   ("return", id, value)   ("error", id, StageError)

The server accepts only a connection that presents its secret as a bearer token; the client learns it,
with the address, from the replica through Ray. A frame that does not decode closes the connection
(code 1008): its sender is broken or hostile. A call is cancelled when
the client says so or its connection drops: an interrupted utterance or a vanished ingress stops the
backend's work (and the LLM's upstream stream) at once. Nothing here imports Ray.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import CloseCode

from graph.voice.link_codec import WireError, dumps, loads
from graph.voice.types import StageError

# a killed process's socket is closed by the kernel, so the link notices at once; a host that vanishes
# shows up within PING_INTERVAL_S + PING_TIMEOUT_S. The timeout is generous because a replica busy with
# a model (GIL-heavy work between awaits) must not lose its link for answering a ping late; a stage
# that stalls mid-utterance is the pipeline's stage_timeout_s to catch.
PING_INTERVAL_S = 10.0
PING_TIMEOUT_S = 20.0
# the largest frame either side accepts: a whole sentence of audio is a few MB; a frame bigger than
# this is refused (connection closed) instead of being buffered
MAX_FRAME_BYTES = 32 * 1024 * 1024


class CallKind(str, Enum):
    STREAM = "stream"  # an async generator: items, then "end"
    UNARY = "unary"  # a coroutine: one "return"


@dataclass(frozen=True)
class LinkMethod:
    kind: CallKind
    function: Callable[..., Any]


@dataclass(frozen=True)
class LinkEndpoint:
    """Where a stage replica's link listens, and the secret it wants (handed out through Ray only)."""

    url: str
    token: str


class LinkLost(ConnectionError):
    """The link to the replica broke (the replica died, restarted or the network failed)."""


def ws_url(host: str, port: int, path: str = "") -> str:
    """ws://host:port/path, with an IPv6 address bracketed."""
    return f"ws://[{host}]:{port}{path}" if ":" in host else f"ws://{host}:{port}{path}"


def _close_reason(error: BaseException) -> str:
    return str(error).encode()[:120].decode(errors="ignore")  # a close reason is at most 123 bytes


def _as_stage_error(error: BaseException, stage: str, backend: str) -> StageError:
    if isinstance(error, StageError):
        return StageError(error.stage, error.backend, error.message)
    lines = str(error).strip().splitlines()
    return StageError(stage, backend, lines[-1] if lines else type(error).__name__)


class StageLinkServer:
    """Serves a stage's methods over the link. Runs on the event loop of the replica's user code."""

    def __init__(self, methods: Mapping[str, LinkMethod], *, stage: str, backend: str, host: str = "127.0.0.1"):
        self.methods = dict(methods)
        self.stage = stage
        self.backend = backend
        self.host = host
        self.token = secrets.token_urlsafe(32)
        self._server: Server | None = None

    async def start(self) -> LinkEndpoint:
        self._server = await serve(
            self._serve_connection, self.host, 0, process_request=self._authorize,
            compression=None, max_size=MAX_FRAME_BYTES, ping_interval=PING_INTERVAL_S, ping_timeout=PING_TIMEOUT_S,
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        return self.endpoint(port)

    def endpoint(self, port: int) -> LinkEndpoint:
        return LinkEndpoint(ws_url(self.host, port), self.token)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _authorize(self, connection: ServerConnection, request):
        presented = request.headers.get("Authorization", "")
        if not hmac.compare_digest(presented.encode(), f"Bearer {self.token}".encode()):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong link token\n")
        return None

    async def _serve_connection(self, connection: ServerConnection) -> None:
        calls: dict[int, asyncio.Task] = {}
        try:
            async for frame in connection:
                if not isinstance(frame, bytes):
                    continue  # only our own client talks here, and it sends bytes
                try:
                    kind, call_id, *rest = loads(frame)
                    if type(call_id) is not int:
                        raise WireError("a call id is an integer")
                    if kind == "call":
                        method, args = rest
                        if not isinstance(method, str) or not isinstance(args, tuple):
                            raise WireError("a call is (\"call\", id, method name, args tuple)")
                except (WireError, ValueError) as error:
                    await connection.close(CloseCode.POLICY_VIOLATION, _close_reason(error))
                    break
                if kind == "call":
                    task = asyncio.create_task(self._run(connection, call_id, method, args))
                    calls[call_id] = task
                    task.add_done_callback(lambda _t, call_id=call_id: calls.pop(call_id, None))
                elif kind == "cancel" and call_id in calls:
                    calls[call_id].cancel()
        except ConnectionClosed:
            pass
        finally:
            # the ingress went away: nothing it asked for may keep running (an LLM would keep generating)
            for task in list(calls.values()):
                task.cancel()
            await asyncio.gather(*calls.values(), return_exceptions=True)

    async def _run(self, connection: ServerConnection, call_id: int, name: str, args: tuple) -> None:
        try:
            method = self.methods.get(name)
            if method is None:
                raise StageError(self.stage, self.backend, f"the link has no method {name!r}")
            if method.kind is CallKind.STREAM:
                async with contextlib.aclosing(method.function(*args)) as items:
                    async for item in items:
                        await connection.send(dumps(("item", call_id, item)))
                await connection.send(dumps(("end", call_id)))
            else:
                result = await method.function(*args)
                await connection.send(dumps(("return", call_id, result)))
        except ConnectionClosed:
            return
        except Exception as error:  # the caller hears about it as a StageError, never as a hang
            with contextlib.suppress(ConnectionClosed):
                await connection.send(dumps(("error", call_id, _as_stage_error(error, self.stage, self.backend))))


class LinkCall:
    """One call in flight on a link: iterate it (a stream) or await `result()` (unary); `cancel()` stops it."""

    def __init__(self, link: StageLink, call_id: int):
        self._link = link
        self.id = call_id
        self.replies: asyncio.Queue[tuple] = asyncio.Queue()
        self.done = False

    def cancel(self) -> None:
        """Tell the replica to stop the call (idempotent, non-blocking; a finished call is left alone)."""
        if not self.done:
            self.done = True
            self._link._forget(self, tell_server=True)

    async def _next_reply(self) -> tuple:
        kind, *rest = await self.replies.get()
        if kind == "lost":
            self.done = True
            raise LinkLost(f"the link to {self._link.url} broke mid-call")
        if kind == "error":
            self._finish()
            raise rest[0]
        return (kind, *rest)

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self._link._forget(self, tell_server=False)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items()

    async def _items(self) -> AsyncIterator[Any]:
        try:
            while True:
                kind, *rest = await self._next_reply()
                if kind == "end":
                    self._finish()
                    return
                yield rest[0]
        finally:
            self.cancel()  # the consumer stopped early (interrupt, error elsewhere): stop the replica's work

    async def result(self) -> Any:
        try:
            kind, *rest = await self._next_reply()
            self._finish()
            return rest[0]
        finally:
            self.cancel()


class StageLink:
    """The client side: one WebSocket to one replica, with many calls multiplexed on it."""

    def __init__(self, endpoint: LinkEndpoint, *, open_timeout: float = 5.0):
        self.url = endpoint.url
        self._token = endpoint.token
        self._open_timeout = open_timeout
        self._connection: ClientConnection | None = None
        self._connecting = asyncio.Lock()
        self._reader: asyncio.Task | None = None
        self._calls: dict[int, LinkCall] = {}
        self._ids = itertools.count(1)
        self._background: set[asyncio.Task] = set()
        self.broken = False

    async def open(self) -> None:
        async with self._connecting:
            if self._connection is not None:
                return
            if self.broken:
                raise LinkLost(f"the link to {self.url} is broken")
            try:
                self._connection = await connect(
                    self.url, additional_headers={"Authorization": f"Bearer {self._token}"},
                    open_timeout=self._open_timeout, compression=None, max_size=MAX_FRAME_BYTES,
                    ping_interval=PING_INTERVAL_S, ping_timeout=PING_TIMEOUT_S,
                )
            except (OSError, InvalidHandshake, TimeoutError) as error:
                self.broken = True
                raise LinkLost(f"cannot open the link to {self.url}: {error}") from None
            self._reader = asyncio.create_task(self._read(self._connection))

    async def call(self, method: str, *args: Any) -> Any:
        """A unary call, awaited to its result."""
        return await (await self.start(method, *args)).result()

    async def aclose(self) -> None:
        self.broken = True
        if self._connection is not None:
            await self._connection.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def start(self, method: str, *args: Any) -> LinkCall:
        """Start a call and return it: iterate it (a stream) or await `result()` (unary); it can be cancelled."""
        await self.open()
        call = LinkCall(self, next(self._ids))
        frame = dumps(("call", call.id, method, args))  # TypeError here for a value the link cannot carry
        self._calls[call.id] = call
        try:
            await self._connection.send(frame)
        except ConnectionClosed:
            self._calls.pop(call.id, None)
            call.done = True
            raise LinkLost(f"the link to {self.url} broke") from None
        return call

    def _forget(self, call: LinkCall, tell_server: bool) -> None:
        if self._calls.pop(call.id, None) is not None and tell_server and not self.broken:
            task = asyncio.ensure_future(self._send_quietly(dumps(("cancel", call.id))))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _send_quietly(self, frame: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._connection.send(frame)

    async def _read(self, connection: ClientConnection) -> None:
        try:
            async for frame in connection:
                try:
                    kind, call_id, *rest = loads(frame)
                except (WireError, ValueError) as error:  # the replica is not speaking the link's format
                    await connection.close(CloseCode.POLICY_VIOLATION, _close_reason(error))
                    break
                call = self._calls.get(call_id)
                if call is not None:  # replies to a cancelled call are dropped
                    call.replies.put_nowait((kind, *rest))
        except ConnectionClosed:
            pass
        finally:
            self.broken = True  # a new replica means a new endpoint: the owner opens a new link
            for call in list(self._calls.values()):
                call.replies.put_nowait(("lost",))
            self._calls.clear()
