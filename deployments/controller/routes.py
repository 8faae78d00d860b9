"""HTTP routes for voice sessions, feature blackouts, the text queue and the audit log.

A FastAPI `APIRouter` the VoiceGraph ingress includes (`app.include_router(router)`). Every route needs the
bearer token (deployments.auth) and forwards to the `FeatureController` actor; the actor's refusals become
JSON bodies `{"message": ..., "error": ...}` with the status the refusal names (404 unknown session,
409 conflict or capacity, 410 expired session, 413 a queued message too large, 422 a value out of range,
503 controller or checkpoint unavailable). Malformed bodies and parameters out of range are FastAPI's 422
with the offending field in `detail[].loc`: every integer is within SQLite's range, every id and name of
bounded length, every limit bounded, and large answers come in pages under a byte budget (graph.controller.
limits) with a cursor to the next page, so no answer nears the gRPC proxy's 4 MiB.

Routes (the first five are the graph's fixed contract):
    POST   /v1/sessions                      start -> 201 {"session_id", "lease_s", "blackouts", ...}
    POST   /v1/sessions/{id}/heartbeat       renew the lease
    DELETE /v1/sessions/{id}                 end (ending twice is a no-op that says so)
    GET    /v1/sessions                      {"sessions": [...]}
    GET    /v1/features                      {"features": [{"name", "blocked", "message", ...}]}
    GET    /v1/sessions/{id}                 one session, active or recently ended
    GET    /v1/features/{name}               check(name): allowed, message, silent, route
    POST   /v1/queue                         enqueue a text-channel message (or learn to handle it now)
    GET    /v1/queue?limit=N&after_id=       fetch for replay, oldest first (nothing is removed), paged
    POST   /v1/queue/ack                     {"ids": [...]} remove replayed messages for good
    GET    /v1/audit?after_seq=&limit=       the audit log, oldest first, paged
    GET    /v1/controller                    counters: active sessions, blocked features, queue, drops, expiries
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Annotated, Any

import ray
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, Field
from ray.actor import ActorHandle

from deployments import auth
from deployments.controller.actor import CONTROLLER_NAME, CONTROLLER_NAMESPACE
from graph.controller.errors import ControllerError
from graph.controller.limits import (
    MAX_CONTENT_CHARS,
    MAX_DISCORD_ID_CHARS,
    MAX_ID_CHARS,
    MAX_PAGE_ITEMS,
    SQLITE_MAX_INT,
)
from graph.controller.sessions import SessionRequest
from graph.controller.text_queue import IncomingMessage


class ControllerUnavailable(Exception):
    """The controller actor cannot be reached (not created, or gone for good)."""


_ECHO_CHARS = 200  # how much of a refused value a 422 repeats back


def _safe_validation_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's 422 `detail`, made answerable whatever was sent: the offending `input` is cut short (a 1 MB
    string is not echoed back) and non-finite numbers become text (NaN cannot be written as JSON)."""
    safe = []
    for error in errors[:50]:
        entry = {k: v for k, v in error.items() if k not in ("input", "ctx", "url")}
        entry["loc"] = [part if isinstance(part, (str, int)) else str(part) for part in error.get("loc", ())]
        value = error.get("input")
        if isinstance(value, float) and not math.isfinite(value):
            entry["input"] = str(value)
        elif isinstance(value, (bool, int, float)) or value is None:
            entry["input"] = value
        else:
            text = value if isinstance(value, str) else repr(value)
            entry["input"] = text[:_ECHO_CHARS] + ("..." if len(text) > _ECHO_CHARS else "")
        entry["msg"] = str(error.get("msg", ""))[:_ECHO_CHARS * 2]
        safe.append(entry)
    return safe


class _ControllerRoute(APIRoute):
    """Turns the controller's refusals into `{"message": ...}` bodies with the right status code, and bad
    parameters into a 422 that can always be written (the app's default handler fails on NaN inputs)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return JSONResponse(
                    {"detail": _safe_validation_errors(exc.errors())},
                    status_code=422,
                )
            except ControllerUnavailable as exc:
                _forget_controller()
                return JSONResponse(
                    {"message": f"session controller unavailable: {exc}", "error": "ControllerUnavailable"},
                    status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                )
            except Exception as exc:
                cause = getattr(exc, "cause", exc)  # Ray wraps the actor's exception; `.cause` is the original
                if isinstance(cause, ControllerError):
                    return JSONResponse(
                        {"message": cause.message, "error": type(cause).__name__}, status_code=cause.http_status
                    )
                if isinstance(exc, ray.exceptions.RayActorError):
                    _forget_controller()
                    return JSONResponse(
                        {"message": f"session controller unavailable: {exc}", "error": "ControllerUnavailable"},
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                    )
                raise

        return handle


# ------------------------------------------------------------------ the actor handle
_target = {"name": CONTROLLER_NAME, "namespace": CONTROLLER_NAMESPACE}
_cached: ActorHandle | None = None


def use_controller(name: str = CONTROLLER_NAME, namespace: str = CONTROLLER_NAMESPACE) -> None:
    """Point the routes at another controller actor (tests, or a second app on one cluster)."""
    global _cached
    _target.update(name=name, namespace=namespace)
    _cached = None


def _forget_controller() -> None:
    global _cached
    _cached = None


def get_controller() -> ActorHandle:
    """FastAPI dependency: the controller actor's handle, looked up once and cached."""
    global _cached
    if _cached is None:
        try:
            _cached = ray.get_actor(_target["name"], namespace=_target["namespace"])
        except ValueError as exc:
            raise ControllerUnavailable(
                f"no actor {_target['namespace']}/{_target['name']} (create it with get_or_create_controller)"
            ) from exc
    return _cached


Controller = Annotated[ActorHandle, Depends(get_controller)]


# ------------------------------------------------------------------ bodies
def _id_text(value: Any) -> Any:
    """Discord ids arrive as strings or integers; keep them as strings (snowflakes overflow JS numbers)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


DiscordId = Annotated[str, BeforeValidator(_id_text), Field(min_length=1, max_length=MAX_DISCORD_ID_CHARS)]
Name = Annotated[str, Field(max_length=MAX_ID_CHARS)]  # personas, request ids ("" means none, as before)
StoredInt = Annotated[int, Field(ge=0, le=SQLITE_MAX_INT)]
# Path and query parameters, bounded before anything reaches the actor or SQLite.
SessionId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)]
FeatureName = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)]
PersonaQuery = Annotated[str | None, Query(max_length=MAX_ID_CHARS)]
# The newest Discord timestamps are ~1.8e9 s; the bound only keeps the value finite and sane.
EpochSeconds = Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False)]


class StartSessionBody(BaseModel):
    guild_id: DiscordId
    voice_channel_id: DiscordId
    text_channel_id: DiscordId
    user_id: DiscordId
    persona: Name | None = None
    request_id: Name | None = None  # idempotency key for retried starts


class EnqueueBody(BaseModel):
    channel_id: DiscordId
    author_id: DiscordId
    # Discord's longest message; the event's size (it repeats the content) is checked by bytes in the
    # controller (413), since only its JSON encoding says what it costs to store.
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    message_id: DiscordId | None = None
    guild_id: DiscordId | None = None
    sent_at: EpochSeconds | None = None  # epoch seconds (Discord's timestamp)
    event: dict[str, Any] = Field(default_factory=dict)  # handed back verbatim for replay
    persona: Name | None = None  # for the dropped-messages warning's wording


class AckBody(BaseModel):
    ids: list[StoredInt] = Field(min_length=1, max_length=MAX_PAGE_ITEMS)


# ------------------------------------------------------------------ routes
router = APIRouter(route_class=_ControllerRoute, dependencies=[Depends(auth.require_token)], tags=["sessions"])


@router.post("/v1/sessions", status_code=status.HTTP_201_CREATED)
async def start_session(body: StartSessionBody, controller: Controller) -> dict[str, Any]:
    request = SessionRequest(
        guild_id=body.guild_id,
        voice_channel_id=body.voice_channel_id,
        text_channel_id=body.text_channel_id,
        user_id=body.user_id,
        persona=body.persona,
        # Ray may re-run the call on a restarted actor: the key makes that re-run return the same session.
        request_id=body.request_id or uuid.uuid4().hex,
    )
    started = await controller.start_session.remote(request)
    return started.to_dict()


@router.post("/v1/sessions/{session_id}/heartbeat")
async def heartbeat(session_id: SessionId, controller: Controller) -> dict[str, Any]:
    session, warnings = await controller.heartbeat_report.remote(session_id)
    return {
        "session_id": session.session_id,
        "state": session.state.value,
        "lease_s": session.lease_s,
        "expires_at": session.expires_at,
        "warnings": [w.to_dict() for w in warnings],  # e.g. the RX 6800 over its VRAM limit
    }


@router.delete("/v1/sessions/{session_id}")
async def end_session(session_id: SessionId, controller: Controller) -> dict[str, Any]:
    ended = await controller.end_session.remote(session_id)
    return ended.to_dict()


@router.get("/v1/sessions")
async def list_sessions(controller: Controller) -> dict[str, Any]:
    sessions, warnings = await controller.sessions_report.remote()
    return {"sessions": [s.to_dict() for s in sessions], "warnings": [w.to_dict() for w in warnings]}


@router.get("/v1/sessions/{session_id}")
async def get_session(session_id: SessionId, controller: Controller) -> dict[str, Any]:
    session = await controller.session.remote(session_id)
    return session.to_dict()


@router.get("/v1/features")
async def list_features(controller: Controller, persona: PersonaQuery = None) -> dict[str, Any]:
    results = await controller.features.remote(persona)
    return {"features": [r.to_dict() for r in results]}


@router.get("/v1/features/{feature}")
async def check_feature(feature: FeatureName, controller: Controller, persona: PersonaQuery = None) -> dict[str, Any]:
    result = await controller.check.remote(feature, persona)
    return result.to_dict()


@router.post("/v1/queue")
async def enqueue(body: EnqueueBody, controller: Controller) -> dict[str, Any]:
    message = IncomingMessage(
        channel_id=body.channel_id,
        author_id=body.author_id,
        content=body.content,
        message_id=body.message_id,
        guild_id=body.guild_id,
        sent_at=body.sent_at,
        event=body.event,
    )
    result = await controller.enqueue.remote(message, body.persona)
    return result.to_dict()


@router.get("/v1/queue")
async def fetch_for_replay(
    controller: Controller,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE_ITEMS)] = None,
    after_id: Annotated[int, Query(ge=0, le=SQLITE_MAX_INT)] = 0,
) -> dict[str, Any]:
    batch = await controller.replay.remote(limit, after_id)
    return batch.to_dict()


@router.post("/v1/queue/ack")
async def acknowledge(body: AckBody, controller: Controller) -> dict[str, Any]:
    result = await controller.ack.remote(body.ids)
    return result.to_dict()


@router.get("/v1/audit")
async def audit_log(
    controller: Controller,
    after_seq: Annotated[int, Query(ge=0, le=SQLITE_MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_ITEMS)] = 100,
) -> dict[str, Any]:
    page = await controller.audit_page.remote(after_seq, limit)
    return page.to_dict()


@router.get("/v1/controller")
async def controller_stats(controller: Controller) -> dict[str, Any]:
    stats = await controller.stats.remote()
    return {
        "active_sessions": stats.active_sessions,
        "blocked_features": stats.blocked_features,
        "queue_length": stats.queue_length,
        "dropped_total": stats.dropped_total,
        "expired_total": stats.expired_total,
    }
