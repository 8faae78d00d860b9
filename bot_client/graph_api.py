"""The graph's contract as seen from the bot: HTTP routes with aiohttp, the voice WebSocket with websockets.

Every call carries the bearer token. Failures come back as a few typed errors that the session and the
cogs turn into user-facing messages: the graph cannot be reached, it refused (409 with its own message),
or the session is gone (404/410). Nothing here knows about Discord, and nothing imports Ray.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection, connect

log = logging.getLogger(__name__)


class GraphError(Exception):
    """The graph answered with an error. `message` is safe to show to users."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body


class GraphUnavailable(GraphError):
    """The graph could not be reached (refused, timed out, DNS...)."""


class GraphConflict(GraphError):
    """409: a session is active or capacity is short; `message` is the graph's user-facing text."""


class SessionGone(GraphError):
    """404/410: the session ended on the graph's side (e.g. its lease expired)."""


class GraphAuthError(GraphError):
    """401/403: the bearer token is missing or wrong."""


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    lease_s: float
    blackouts: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeatureState:
    name: str
    blocked: bool
    message: str | None = None
    effect: str | None = None  # what a session does to it now (blocked, locked, paused, queued, routed...)
    route: str | None = None  # routed features: where it is served now


@dataclass(frozen=True)
class StageHealth:
    stage: str
    backend: str
    ok: bool
    placement: str = ""  # the custom resources the replica holds (which GPU), e.g. "gtx1660"


@dataclass(frozen=True)
class GraphHealth:
    ok: bool
    stages: tuple[StageHealth, ...] = ()
    raw: dict = field(default_factory=dict)

    def stage_ok(self, *names: str) -> bool:
        """True when every named stage that the graph reports is up (unreported stages count as up)."""
        by_name = {s.stage: s for s in self.stages}
        return all(by_name[n].ok for n in names if n in by_name)

    def backends(self) -> dict[str, str]:
        return {s.stage: s.backend for s in self.stages}


@dataclass(frozen=True)
class QueuedMessage:
    """A text message the controller held during a voice session, to be replayed and acknowledged."""

    queue_id: str
    event: dict


def _error_message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"]
    return fallback


def _feature_state(item: dict) -> FeatureState:
    effect, route = item.get("effect"), item.get("route")
    return FeatureState(str(item.get("name")), bool(item.get("blocked")), item.get("message"),
                        str(effect) if effect else None, str(route) if route else None)


def parse_health(body: Any) -> GraphHealth:
    """Read /healthz in the shapes the graph may use: `stages` as a list or a mapping of stage -> status."""
    if not isinstance(body, dict):
        return GraphHealth(ok=False, raw={"body": body})
    raw_stages = body.get("stages", {})
    stages: list[StageHealth] = []
    if isinstance(raw_stages, dict):
        items = [dict(v, stage=v.get("stage", k)) if isinstance(v, dict) else {"stage": k, "ok": bool(v)}
                 for k, v in raw_stages.items()]
    elif isinstance(raw_stages, list):
        items = [v for v in raw_stages if isinstance(v, dict)]
    else:
        items = []
    for item in items:
        ok = item.get("ok")
        if ok is None:
            ok = str(item.get("status", "")).lower() in ("ok", "up", "healthy", "ready")
        resources = item.get("resources")
        placement = ", ".join(sorted(resources)) if isinstance(resources, dict) else ""
        stages.append(StageHealth(str(item.get("stage", "?")), str(item.get("backend", "?")), bool(ok), placement))
    overall = body.get("ok")
    if overall is None:
        overall = str(body.get("status", "ok")).lower() in ("ok", "up", "healthy", "ready") and all(
            s.ok for s in stages
        )
    return GraphHealth(ok=bool(overall), stages=tuple(stages), raw=body)


MAX_MEDIA_LINE_BYTES = 64 * 2**20  # one NDJSON event of a media route (a picture in base64)


def _ndjson_event(line: bytes) -> dict | None:
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        log.warning("a media route sent a line that is not JSON: %r", line[:80])
        return None
    return event if isinstance(event, dict) else None


class GraphClient:
    """HTTP side of the contract. One instance per bot; `close()` when done."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        request_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        direct_voice: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.direct_voice = direct_voice
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, connect=connect_timeout_s)
        self.connect_timeout_s = connect_timeout_s
        self._http: aiohttp.ClientSession | None = None

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    async def close(self) -> None:
        if self._http is not None and not self._http.closed:
            await self._http.close()

    async def _request(
        self, method: str, path: str, *, json_body: Any = None, auth: bool = True, body_on: tuple[int, ...] = ()
    ) -> Any:
        http = await self._session()
        url = f"{self.base_url}{path}"
        try:
            async with http.request(
                method, url, json=json_body, headers=self.auth_headers if auth else None
            ) as resp:
                text = await resp.text()
                try:
                    body = json.loads(text) if text else None
                except ValueError:
                    body = {"message": text}
                if resp.status < 400 or resp.status in body_on:
                    return body
                status = resp.status
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as exc:
            raise GraphUnavailable(f"the voice graph at {self.base_url} is unreachable ({exc.__class__.__name__})") from exc
        message = _error_message(body, f"{method} {path} failed with HTTP {status}")
        if status == 409:
            raise GraphConflict(message, status, body)
        if status in (404, 410):
            raise SessionGone(message, status, body)
        if status in (401, 403):
            raise GraphAuthError(f"the graph refused the bot's token ({status})", status, body)
        if status >= 500 and status in (502, 503, 504):
            raise GraphUnavailable(message, status, body)
        raise GraphError(message, status, body)

    # --- routes ---------------------------------------------------------------------------------

    async def health(self) -> GraphHealth:
        # A degraded graph answers 503 with the same body: which stage is down is what the user needs.
        # The per-stage detail is only sent with the token (without it: {"status"} alone).
        return parse_health(await self._request("GET", "/healthz", body_on=(503,)))

    async def start_session(
        self, guild_id: int | str, voice_channel_id: int | str, text_channel_id: int | str, user_id: int | str
    ) -> SessionInfo:
        body = await self._request(
            "POST",
            "/v1/sessions",
            json_body={
                "guild_id": str(guild_id),
                "voice_channel_id": str(voice_channel_id),
                "text_channel_id": str(text_channel_id),
                "user_id": str(user_id),
            },
        )
        blackouts = body.get("blackouts") or ()
        if isinstance(blackouts, dict):
            blackouts = [k for k, v in blackouts.items() if v]
        names = tuple(b if isinstance(b, str) else str(b.get("name", b)) for b in blackouts)
        return SessionInfo(str(body["session_id"]), float(body.get("lease_s", 30.0)), names)

    async def heartbeat(self, session_id: str) -> dict:
        return await self._request("POST", f"/v1/sessions/{session_id}/heartbeat") or {}

    async def report_playback(self, underruns: int, frames_played: int, buffer_ms: float | None = None) -> None:
        """Send playback counters since the last report (deltas) to the graph's metrics."""
        body: dict[str, Any] = {"underruns": int(underruns), "frames_played": int(frames_played)}
        if buffer_ms is not None:
            body["buffer_ms"] = float(buffer_ms)
        await self._request("POST", "/v1/metrics/playback", json_body=body)

    async def end_session(self, session_id: str) -> dict:
        return await self._request("DELETE", f"/v1/sessions/{session_id}") or {}

    async def sessions(self) -> list[dict]:
        body = await self._request("GET", "/v1/sessions")
        return list(body.get("sessions", [])) if isinstance(body, dict) else list(body or [])

    async def features(self) -> list[FeatureState]:
        body = await self._request("GET", "/v1/features")
        items = body.get("features", body) if isinstance(body, dict) else body
        if isinstance(items, dict):
            items = [dict(v, name=v.get("name", k)) for k, v in items.items()]
        return [_feature_state(f) for f in items or [] if isinstance(f, dict)]

    async def check_feature(self, name: str) -> FeatureState:
        """`GET /v1/features/{name}`: the controller's `check(name)` now."""
        body = await self._request("GET", f"/v1/features/{name}")
        return _feature_state(dict(body or {}, name=name))

    async def persona_mood(self, guild_id: int | str | None) -> tuple[str | None, str | None]:
        """`GET /v1/mood`: the server's active persona and mood."""
        path = "/v1/mood" if guild_id is None else f"/v1/mood?guild_id={int(guild_id)}"
        body = await self._request("GET", path) or {}
        return body.get("persona"), body.get("mood")

    async def media_stream(self, path: str, body: dict, timeout_s: float = 360.0):
        """POST to a media route (`/v1/images`, `/v1/vision`) and yield its NDJSON events as they arrive.

        A drawing takes minutes at worst: no total timeout, but the graph must say something (progress)
        within `timeout_s`. Errors the graph streams are events (`type: error`); an unreachable graph or a
        refused request is a GraphError as for every route."""
        http = await self._session()
        url = f"{self.base_url}{path}"
        timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s, sock_read=timeout_s)
        try:
            async with http.post(url, json=body, headers=self.auth_headers, timeout=timeout) as resp:
                if resp.status >= 400:
                    text = await resp.text()
                    try:
                        detail = json.loads(text) if text else None
                    except ValueError:
                        detail = {"message": text}
                    message = _error_message(detail, f"POST {path} failed with HTTP {resp.status}")
                    if resp.status in (401, 403):
                        raise GraphAuthError(f"the graph refused the bot's token ({resp.status})", resp.status, detail)
                    raise (GraphUnavailable if resp.status in (502, 503, 504) else GraphError)(message, resp.status, detail)
                # not `async for line in resp.content`: aiohttp refuses lines over 128 KiB, and a picture's
                # line (base64 PNG) is a few MB
                pending: list[bytes] = []  # pieces of the line being received
                size = 0
                async for chunk in resp.content.iter_any():
                    if b"\n" not in chunk:
                        pending.append(chunk)
                        size += len(chunk)
                        if size > MAX_MEDIA_LINE_BYTES:
                            raise GraphError(f"POST {path}: the graph sent an event over {MAX_MEDIA_LINE_BYTES} bytes")
                        continue
                    first, *lines = chunk.split(b"\n")
                    lines = [b"".join(pending) + first, *lines]
                    pending = [lines.pop()]
                    size = len(pending[0])
                    for line in lines:
                        event = _ndjson_event(line)
                        if event is not None:
                            yield event
                event = _ndjson_event(b"".join(pending))
                if event is not None:
                    yield event
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as exc:
            raise GraphUnavailable(f"the voice graph at {self.base_url} is unreachable ({exc.__class__.__name__})") from exc

    def draw(self, order: dict):
        return self.media_stream("/v1/images", order)

    def look(self, order: dict):
        return self.media_stream("/v1/vision", order)

    async def bot_sync(self, report: dict) -> dict:
        """The admin panel's channel (bot_client/panel_link.py): a report and acks in, commands out."""
        return await self._request("POST", "/v1/bot/sync", json_body=report) or {}

    async def post_event(self, event: dict) -> list[dict]:
        body = await self._request("POST", "/v1/events", json_body=event)
        actions = (body or {}).get("actions", [])
        return [a for a in actions if isinstance(a, dict)]

    async def compose(self, instruction: str, guild_id: int | str | None = None,
                      channel_id: int | str | None = None) -> str | None:
        """`POST /v1/compose`: a message in the persona's voice from an instruction; None when none was written."""
        body = await self._request("POST", "/v1/compose", json_body={
            "instruction": instruction,
            "guild_id": str(guild_id) if guild_id is not None else None,
            "channel_id": str(channel_id) if channel_id is not None else None,
        })
        text = body.get("text") if isinstance(body, dict) else None
        return text if isinstance(text, str) and text.strip() else None

    async def enqueue(self, event: dict) -> dict:
        """Hold a text-channel message event in the controller's queue (`POST /v1/queue`).

        Returns the controller's answer: `queued` (False: no session holds the queue, handle it now),
        `warning` (user-facing text when old messages were dropped), `duplicate`.
        """
        body = {
            "channel_id": str(event.get("channel_id")),
            "author_id": str(event.get("author_id")),
            "content": str(event.get("content") or ""),
            "message_id": str(event["message_id"]) if event.get("message_id") else None,
            "guild_id": str(event["guild_id"]) if event.get("guild_id") else None,
            "sent_at": event.get("timestamp"),
            "event": event,
        }
        return await self._request("POST", "/v1/queue", json_body=body) or {}

    async def replay_batch(self, limit: int = 20) -> tuple[bool, list[QueuedMessage]]:
        """The oldest held messages (`GET /v1/queue`); `ready` is False while a session holds the queue."""
        body = await self._request("GET", f"/v1/queue?limit={int(limit)}") or {}
        out = []
        for item in body.get("messages", []):
            event = item.get("event") or item.get("payload") or {}
            if isinstance(event, dict) and "event" in event and isinstance(event["event"], dict):
                event = event["event"]
            out.append(QueuedMessage(str(item.get("queue_id")), dict(event)))
        return bool(body.get("ready", True)), out

    async def ack_queued(self, queue_ids: list[str]) -> dict:
        ids = [int(i) for i in queue_ids]
        return await self._request("POST", "/v1/queue/ack", json_body={"ids": ids}) or {}

    # --- voice WebSocket ------------------------------------------------------------------------

    def ws_url(self, path: str) -> str:
        base = self.base_url
        if base.startswith("https://"):
            base = "wss://" + base[len("https://"):]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://"):]
        return f"{base}{path}"

    async def open_voice(
        self,
        on_audio: Callable[[bytes], None],
        on_event: Callable[[dict], Awaitable[None] | None],
        on_closed: Callable[[BaseException | None], Awaitable[None] | None] | None = None,
    ) -> "VoiceStream":
        """Open the voice WebSocket: on the graph's direct voice port when it offers one, else via Serve."""
        direct = await self.direct_voice_url() if self.direct_voice else None
        if direct is not None:
            stream = VoiceStream(direct, self.auth_headers, on_audio, on_event, on_closed, open_timeout=self.connect_timeout_s)
            try:
                await stream.open()
                return stream
            except GraphUnavailable as exc:  # e.g. the port is not reachable from this host: the proxy still is
                log.warning("direct voice port %s unreachable (%s); using the graph's WS /v1/voice", direct, exc)
        stream = VoiceStream(self.ws_url("/v1/voice"), self.auth_headers, on_audio, on_event, on_closed,
                             open_timeout=self.connect_timeout_s)
        await stream.open()
        return stream

    async def direct_voice_url(self) -> str | None:
        """`GET /v1/voice/direct`: where the ingress serves WS /v1/voice itself, or None (older graph, or off)."""
        try:
            body = await self._request("GET", "/v1/voice/direct")
        except SessionGone:  # 404: this graph serves voice only through Serve's routes
            return None
        url = body.get("voice") if isinstance(body, dict) else None
        return url if isinstance(url, str) and url.startswith(("ws://", "wss://")) else None

    async def direct_listen_url(self) -> str | None:
        """`WS /v1/listen` on the ingress's direct voice port (`"listen"` in `GET /v1/voice/direct`), or None."""
        try:
            body = await self._request("GET", "/v1/voice/direct")
        except SessionGone:
            return None
        url = body.get("listen") if isinstance(body, dict) else None
        return url if isinstance(url, str) and url.startswith(("ws://", "wss://")) else None


class VoiceStream:
    """`WS /v1/voice`: prompts out, frames and events in.

    The reader hands binary messages to `on_audio` as they are (it must only copy them into the jitter
    buffer) and JSON events to `on_event` in arrival order, so audio and events never overtake each other.
    """

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        on_audio: Callable[[bytes], None],
        on_event: Callable[[dict], Awaitable[None] | None],
        on_closed: Callable[[BaseException | None], Awaitable[None] | None] | None = None,
        *,
        open_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self._headers = headers
        self._on_audio = on_audio
        self._on_event = on_event
        self._on_closed = on_closed
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._closing = False

    async def open(self) -> None:
        try:
            self._ws = await connect(
                self.url,
                additional_headers=self._headers,
                open_timeout=self._open_timeout,
                max_size=None,
                ping_interval=20,
                ping_timeout=20,
            )
        except websockets.exceptions.InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise GraphAuthError(f"the graph refused the bot's token ({status})", status) from exc
            raise GraphError(f"the voice WebSocket was refused (HTTP {status})", status) from exc
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise GraphUnavailable(f"the voice WebSocket at {self.url} is unreachable ({exc.__class__.__name__})") from exc
        self._reader = asyncio.create_task(self._read_loop(), name="miku-voice-ws-reader")

    @property
    def is_open(self) -> bool:
        return self._ws is not None and self._reader is not None and not self._reader.done()

    async def _read_loop(self) -> None:
        assert self._ws is not None
        error: BaseException | None = None
        try:
            async for message in self._ws:
                if isinstance(message, bytes):
                    self._on_audio(message)
                    continue
                try:
                    event = json.loads(message)
                except ValueError:
                    log.warning("graph sent a text message that is not JSON: %.80r", message)
                    continue
                if not isinstance(event, dict):
                    continue
                result = self._on_event(event)
                if asyncio.iscoroutine(result):
                    await result
        except websockets.exceptions.ConnectionClosed as exc:
            if not self._closing:
                error = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a handler bug must still end the stream visibly
            log.exception("voice WebSocket reader failed")
            error = exc
        if self._ws is not None and self._ws.close_code not in (None, 1000) and error is None and not self._closing:
            error = ConnectionError(f"voice WebSocket closed with code {self._ws.close_code}")
        if self._on_closed is not None and not self._closing:
            result = self._on_closed(error)
            if asyncio.iscoroutine(result):
                await result

    async def _send(self, payload: dict) -> None:
        if self._ws is None:
            raise GraphUnavailable("the voice WebSocket is not open")
        try:
            await self._ws.send(json.dumps(payload))
        except websockets.exceptions.ConnectionClosed as exc:
            raise GraphUnavailable("the voice WebSocket closed") from exc

    async def prompt(self, utterance_id: str, text: str, session_id: str | None = None, *, kind: str = "prompt") -> None:
        """Send a prompt (`kind="prompt"`) or text to speak verbatim (`kind="say"`)."""
        payload: dict[str, Any] = {"type": kind, "id": utterance_id, "text": text}
        if session_id:
            payload["session_id"] = session_id
        await self._send(payload)

    async def interrupt(self) -> None:
        await self._send({"type": "interrupt"})

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        # close() may run inside the reader itself (an event handler ending the session): never cancel that.
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
