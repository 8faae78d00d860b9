"""The admin panel's HTTP side: pages, static files and `/admin/api/*`, mounted on the ingress app.

Security (docs/admin-panel.md has the whole story):
- login with a user name and password (argon2 hashes, graph.admin.passwords), checked off the event
  loop, at most two at a time; `LoginThrottle` locks a name after repeated failures (HTTP 429);
- the session is a signed cookie `miku_admin` (HttpOnly, SameSite=Strict, Path=/admin, Max-Age, Secure
  when configured) naming a server-side session (graph.admin.sessions) that logout deletes;
- every request that changes something (any method but GET) needs the session's CSRF token in
  `X-CSRF-Token` and must not come from another site (`Origin` / `Sec-Fetch-Site`); login itself takes
  JSON only, which no cross-site form can send;
- `SecurityHeaders` gives every /admin answer a CSP without inline script (all JS is in static/), no
  framing, no sniffing, no referrer, no caching of API answers;
- the graph's bearer token opens none of this and is never shown: it keeps working on the /v1 routes.

Every change is written to the controller's audit log with the user (`audit_change`). The routes reach
the graph through an `AdminContext` that the VoiceGraph replica sets with `configure()` at start.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.admin import sections as panel_sections
from graph.admin.config import AdminConfig
from graph.admin.latency import LatencyHistory
from graph.admin.lockout import LoginThrottle, LoginVerdict
from graph.admin.passwords import MAX_PASSWORD_CHARS, PasswordBook
from graph.admin.sessions import PanelSession, PanelSessions
from graph.brain.admin import validate_modelfile

log = logging.getLogger("ray.serve")

PREFIX = "/admin"
COOKIE = "miku_admin"
CSRF_HEADER = "x-csrf-token"
STATIC_DIR = Path(__file__).resolve().parent / "static"
CALL_TIMEOUT_S = 10.0
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)


class SecurityHeaders:
    """ASGI middleware: the panel's security headers on every /admin answer (API answers not cached)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        no_store = not path.startswith(PREFIX + "/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in dict(SECURITY_HEADERS)]
                headers.extend(SECURITY_HEADERS)
                if no_store:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ------------------------------------------------------------------ what the routes reach


@dataclass
class AdminContext:
    config: AdminConfig
    passwords: PasswordBook
    throttle: LoginThrottle
    sessions: PanelSessions
    latency: LatencyHistory
    controller: Any  # the FeatureController actor handle
    brain: Any  # the Brain deployment handle, or None
    stage_health: Callable[[], Awaitable[dict[str, Any]]]
    gpu_snapshot: Callable[[], dict[str, Any]]  # blocking (NVML, amdsmi): called in a thread
    vram_limits_gb: Mapping[str, float]
    voice_settings: Callable[[], dict[str, Any]]
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.verify_slots = asyncio.Semaphore(2)  # argon2 takes ~64 MiB and tens of ms per check
        self.overview = OverviewCache(lambda: build_overview(self), self.config.overview_interval_s / 2)


_context: AdminContext | None = None


def configure(context: AdminContext | None) -> None:
    global _context
    _context = context


def context() -> AdminContext:
    if _context is None or not _context.config.enabled:
        raise HTTPException(status_code=404, detail="the admin panel is not enabled on this graph")
    return _context


class OverviewCache:
    """One overview build shared by every open panel within `max_age_s`."""

    def __init__(self, build: Callable[[], Awaitable[dict]], max_age_s: float, clock: Callable[[], float] = time.monotonic):
        self._build = build
        self._max_age_s = max_age_s
        self._clock = clock
        self._value: dict | None = None
        self._at = -1e18
        self._lock = asyncio.Lock()

    async def get(self) -> dict:
        if self._value is not None and self._clock() - self._at < self._max_age_s:
            return self._value
        async with self._lock:
            if self._value is None or self._clock() - self._at >= self._max_age_s:
                self._value = await self._build()
                self._at = self._clock()
        return self._value


# ------------------------------------------------------------------ login, CSRF, audit


def _from_this_site(request: Request) -> bool:
    """The request was not sent by another site's page (the browser says where it came from)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def panel_user(request: Request) -> PanelSession:
    """FastAPI dependency: the logged-in panel session (401 without one)."""
    session = context().sessions.resolve(request.cookies.get(COOKIE))
    if session is None:
        raise HTTPException(status_code=401, detail="log in first")
    return session


def panel_change(request: Request, session: Annotated[PanelSession, Depends(panel_user)]) -> PanelSession:
    """FastAPI dependency for every change: logged in, same site, and the session's CSRF token."""
    if not _from_this_site(request):
        raise HTTPException(status_code=403, detail="cross-site request refused")
    if not PanelSessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token")
    return session


async def audit_change(user: str, change: str, detail: Mapping[str, Any] | None = None) -> bool:
    """Write a change to the controller's audit log; False (logged) when the log could not take it."""
    try:
        await asyncio.wait_for(context().controller.record_admin.remote(user, change, dict(detail or {})), CALL_TIMEOUT_S)
        return True
    except Exception as error:  # the change happened: say so in the answer and the log
        log.error("admin change %s by %s not written to the audit log: %s", change, user, error)
        return False


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)


def _cookie(response: Response, value: str, max_age: int, secure: bool) -> None:
    response.set_cookie(COOKIE, value, max_age=max_age, path=PREFIX, httponly=True, samesite="strict", secure=secure)


router = APIRouter(prefix=PREFIX)


@router.get("", include_in_schema=False)
async def panel_root() -> RedirectResponse:
    return RedirectResponse(PREFIX + "/", status_code=307)


@router.get("/")
async def panel_page(request: Request) -> Response:
    if context().sessions.resolve(request.cookies.get(COOKIE)) is None:
        return RedirectResponse(PREFIX + "/login", status_code=303)
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/login")
async def login_page() -> Response:
    context()
    return FileResponse(STATIC_DIR / "login.html", media_type="text/html")


@router.post("/api/login")
async def login(request: Request) -> JSONResponse:
    ctx = context()
    if not _from_this_site(request):
        raise HTTPException(status_code=403, detail="cross-site request refused")
    if not request.headers.get("content-type", "").lower().startswith("application/json"):
        raise HTTPException(status_code=415, detail="send the login as application/json")
    try:
        body = LoginBody.model_validate_json(await request.body())
    except ValidationError:
        raise HTTPException(status_code=422, detail="send {\"user\": ..., \"password\": ...}") from None
    if not ctx.passwords.configured():
        raise HTTPException(status_code=503, detail="no admin password is set: run `miku admin set-password`")
    if ctx.throttle.check(body.user) is LoginVerdict.LOCKED:
        return _locked(ctx, body.user)
    async with ctx.verify_slots:
        ok = await asyncio.to_thread(ctx.passwords.verify, body.user, body.password)
    if not ok:
        if ctx.throttle.failed(body.user):
            await audit_change(body.user, "login.locked", {"after_failures": ctx.config.lockout.max_failures})
            return _locked(ctx, body.user)
        raise HTTPException(status_code=401, detail="wrong user name or password")
    ctx.throttle.succeeded(body.user)
    session, cookie = ctx.sessions.create(body.user)
    await audit_change(body.user, "login", {})
    response = JSONResponse({"user": session.user, "csrf_token": session.csrf_token})
    _cookie(response, cookie, int(ctx.config.session_lifetime_s), ctx.config.secure_cookie)
    return response


def _locked(ctx: AdminContext, user: str) -> JSONResponse:
    retry = max(1, int(ctx.throttle.retry_after_s(user)) + 1)
    return JSONResponse({"detail": f"too many failed logins: locked for {retry} s"}, status_code=429,
                        headers={"Retry-After": str(retry)})


@router.post("/api/logout")
async def logout(session: Annotated[PanelSession, Depends(panel_change)]) -> JSONResponse:
    ctx = context()
    ctx.sessions.end(session)
    await audit_change(session.user, "logout", {})
    response = JSONResponse({"logged_out": True})
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=ctx.config.secure_cookie)
    return response


@router.get("/api/session")
async def whoami(session: Annotated[PanelSession, Depends(panel_user)]) -> dict[str, Any]:
    ctx = context()
    return {"user": session.user, "csrf_token": session.csrf_token,
            "expires_at": session.created_at + ctx.config.session_lifetime_s}


@router.get("/api/sections")
async def list_sections(_: Annotated[PanelSession, Depends(panel_user)]) -> dict[str, Any]:
    return {"sections": [s.to_dict() for s in panel_sections.sections()]}


# ------------------------------------------------------------------ overview (live)


async def _call(remote, default: Any = None) -> Any:
    """An actor or handle call with a timeout; the error's last line instead of a failed overview."""
    try:
        return await asyncio.wait_for(remote, CALL_TIMEOUT_S)
    except Exception as error:
        text = str(error).strip().splitlines()
        return {"error": text[-1] if text else type(error).__name__} if default is None else default


async def build_overview(ctx: AdminContext) -> dict[str, Any]:
    report, features, stats, stages, gpus = await asyncio.gather(
        _call(ctx.controller.sessions_report.remote()),
        _call(ctx.controller.features.remote(None)),
        _call(ctx.controller.stats.remote()),
        ctx.stage_health(),
        asyncio.to_thread(ctx.gpu_snapshot),
    )
    sessions, warnings = ([], []) if isinstance(report, dict) else report
    problems = [f"session controller: {answer['error']}" for answer in (report, features, stats) if isinstance(answer, dict)]
    session_rows = []
    for session in sessions:
        row = session.to_dict()
        # who is speaking: the session's user until the listening path reports speakers itself
        row["speakers"] = list(row.get("speakers") or [row["user_id"]])
        session_rows.append(row)
    queue = {"error": stats["error"]} if isinstance(stats, dict) else {
        "length": stats.queue_length, "dropped_total": stats.dropped_total, "blocked_features": stats.blocked_features}
    devices = []
    for device in gpus.get("devices", []):
        limit = ctx.vram_limits_gb.get(device.get("resource") or "")
        devices.append({**device, "limit_gb": limit,
                        "over_limit": bool(limit is not None and device["vram_used_gb"] > limit)})
    return {
        "at": ctx.clock(),
        "sessions": session_rows,
        "warnings": [w.to_dict() for w in warnings] + [{"message": problem} for problem in problems[:1]],
        "features": features if isinstance(features, dict) else [f.to_dict() for f in features],
        "queue": queue,
        "stages": stages,
        "gpus": {"devices": devices, "vendors": gpus.get("vendors", {}), "limits_gb": dict(ctx.vram_limits_gb)},
        "recent_ttfa": ctx.latency.recent_ttfa(10),
    }


@router.get("/api/overview")
async def overview(_: Annotated[PanelSession, Depends(panel_user)]) -> dict[str, Any]:
    return await context().overview.get()


@router.get("/api/stream")
async def overview_stream(request: Request, _: Annotated[PanelSession, Depends(panel_user)]) -> StreamingResponse:
    """Server-Sent Events: `overview` every `overview_interval_s`; `logout` (then the end) once the
    session is gone, so a logged-out panel stops receiving at once."""
    ctx = context()
    cookie = request.cookies.get(COOKIE)

    async def events():
        yield "retry: 2000\n\n"
        while True:
            if ctx.sessions.resolve(cookie) is None:
                yield "event: logout\ndata: {}\n\n"
                return
            try:
                data = await ctx.overview.get()
            except Exception as error:  # a broken part must not end the stream: say so and go on
                log.exception("admin overview failed")
                yield f"event: problem\ndata: {json.dumps({'message': str(error)[:500]})}\n\n"
            else:
                yield f"event: overview\ndata: {json.dumps(data, default=str)}\n\n"
            await asyncio.sleep(ctx.config.overview_interval_s)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/api/latency")
async def latency(_: Annotated[PanelSession, Depends(panel_user)],
                  window_s: Annotated[float, Query(gt=0, le=3600)] = 3600) -> dict[str, Any]:
    return context().latency.columns(window_s)


# ------------------------------------------------------------------ the brain's sections


async def brain_op(op: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    brain = context().brain
    if brain is None:
        raise HTTPException(status_code=503, detail="this graph runs without a brain")
    result = await _call(brain.admin.remote(op, dict(args or {})))
    if isinstance(result, dict) and "error" in result:
        raise HTTPException(status_code=int(result.get("status") or 503), detail=result["error"])
    return result


Snowflake = Annotated[str, Field(pattern=r"^[0-9]{1,20}$")]


class SwitchPersonaBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    guild_id: Snowflake
    persona: str = Field(min_length=1, max_length=32)


class SetMoodBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    guild_id: Snowflake
    mood: str = Field(min_length=1, max_length=64)


class ModelfileBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=64 * 1024)


class DeleteUserBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Snowflake


class PauseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    guild_id: Snowflake
    paused: bool


@router.get("/api/personas")
async def personas(_: Annotated[PanelSession, Depends(panel_user)]) -> dict[str, Any]:
    return await brain_op("personas")


@router.post("/api/personas/validate")
async def validate_persona(body: ModelfileBody, _: Annotated[PanelSession, Depends(panel_change)]) -> dict[str, Any]:
    return validate_modelfile(body.text)  # parsing only: nothing changes, nothing to audit


@router.post("/api/personas/switch")
async def switch_persona(body: SwitchPersonaBody, session: Annotated[PanelSession, Depends(panel_change)]) -> dict[str, Any]:
    result = await brain_op("switch_persona", body.model_dump())
    return {**result, "audited": await audit_change(session.user, "persona.switch", body.model_dump())}


@router.post("/api/moods/set")
async def set_mood(body: SetMoodBody, session: Annotated[PanelSession, Depends(panel_change)]) -> dict[str, Any]:
    result = await brain_op("set_mood", body.model_dump())
    return {**result, "audited": await audit_change(session.user, "mood.set", body.model_dump())}


@router.get("/api/conversations")
async def conversations(
    _: Annotated[PanelSession, Depends(panel_user)],
    channel_id: Annotated[str | None, Query(pattern=r"^[0-9]{1,20}$")] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    return await brain_op("conversations", {"channel_id": channel_id, "query": q, "limit": limit})


@router.post("/api/conversations/delete-user")
async def delete_user_messages(body: DeleteUserBody, session: Annotated[PanelSession, Depends(panel_change)]) -> dict[str, Any]:
    result = await brain_op("delete_user_messages", body.model_dump())
    detail = {**body.model_dump(), "deleted": result.get("deleted")}
    return {**result, "audited": await audit_change(session.user, "memory.delete_user", detail)}


@router.get("/api/autonomous")
async def autonomous(_: Annotated[PanelSession, Depends(panel_user)]) -> dict[str, Any]:
    return await brain_op("autonomous")


@router.post("/api/autonomous/pause")
async def pause_autonomous(body: PauseBody, session: Annotated[PanelSession, Depends(panel_change)]) -> dict[str, Any]:
    result = await brain_op("set_autonomous_paused", body.model_dump())
    change = "autonomous.pause" if body.paused else "autonomous.resume"
    return {**result, "audited": await audit_change(session.user, change, {"guild_id": body.guild_id})}


# ------------------------------------------------------------------ audit log and settings


@router.get("/api/audit")
async def audit_log(_: Annotated[PanelSession, Depends(panel_user)],
                    limit: Annotated[int, Query(ge=1, le=500)] = 200) -> dict[str, Any]:
    page = await _call(context().controller.audit_tail.remote(limit))
    if isinstance(page, dict):
        raise HTTPException(status_code=503, detail=f"audit log unavailable: {page['error']}")
    return {"entries": [entry.to_dict() for entry in reversed(page.entries)]}  # newest first


class ServerSettingsBody(BaseModel):
    """A server's autonomous-engine settings, as the `server_config` event carries them."""

    model_config = ConfigDict(extra="forbid")
    guild_id: Snowflake
    allowed_channels: list[Snowflake] = Field(max_length=500)
    home_channel_id: Snowflake | None = None
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    enabled: bool = True


@router.get("/api/settings")
async def settings(_: Annotated[PanelSession, Depends(panel_user)]) -> dict[str, Any]:
    ctx = context()
    servers = await brain_op("autonomous") if ctx.brain is not None else {"servers": []}
    return {
        "voice": ctx.voice_settings(),
        "admin": ctx.config.redacted(),
        "vram_limits_gb": dict(ctx.vram_limits_gb),
        "servers": [s.get("settings", s) for s in servers.get("servers", [])],
    }


@router.post("/api/settings/server")
async def server_settings(body: ServerSettingsBody, session: Annotated[PanelSession, Depends(panel_change)]) -> dict[str, Any]:
    if body.home_channel_id is not None and body.home_channel_id not in body.allowed_channels:
        raise HTTPException(status_code=422, detail="the home channel must be one of the allowed channels")
    result = await brain_op("configure_server", {"settings": body.model_dump()})
    return {**result, "audited": await audit_change(session.user, "settings.server", body.model_dump())}


def install(app: FastAPI) -> None:
    """Mount the panel on `app`: headers middleware, static files, the routes."""
    app.add_middleware(SecurityHeaders)
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC_DIR), name="admin-static")
    app.include_router(router)
    # the sections of the bot's features and the media stages (their modules register themselves)
    from deployments.admin import bot_section, media_section

    app.include_router(media_section.router)
    app.include_router(bot_section.router)
    app.include_router(bot_section.sync_router)  # POST /v1/bot/sync, the bot's channel (bearer token)
