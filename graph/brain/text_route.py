"""Which LLM server writes the brain's text: the normal one, or the voice-session one on the RX 6800.

The voice plan moves every text reply, judge call and autonomous message off the GTX 1660 while a voice
session runs (Soprano needs that card alone): the normal endpoint (llama-swap on the GTX 1660, :8090)
serves outside sessions, the session endpoint (llama-swap-amd on the RX 6800, :8091) during them. The
session controller's `text_inference` feature says which (`Effect.ROUTED`: held by a session = session
route), and `EndpointSelector` asks it for every call, so no call can slip to the wrong card.

When the route switches to the session endpoint, the normal endpoint's models are released where the
server can do it (llama-swap's `GET /unload`), in the background: the reply does not wait for it, and a
server that cannot unload is logged, never fatal. With `keep_after_session` the text stays on the session
endpoint once a session has moved it there.

`RoutedLLMBackend` is an ordinary `LLMBackend`, so the brain's LLM adapter (graph/brain/llm.py) and every
per-call option it passes (temperature, max tokens, model) work unchanged on whichever server is chosen.
No Ray here: the check is an injected async callable (the deployment asks the controller actor).
"""
from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from graph.backends.base import LLMBackend, create_backend
from graph.backends.http import http_url
from graph.voice.types import LLMRequest

log = logging.getLogger(__name__)

TEXT_INFERENCE_FEATURE = "text_inference"
LLAMA_SWAP_UNLOAD_PATH = "/unload"  # llama-swap: GET /unload stops every running model


class TextRoute(enum.Enum):
    NORMAL = "normal"  # outside voice sessions (GTX 1660)
    SESSION = "session"  # during a voice session (RX 6800)


class TextRouteConfigError(ValueError):
    """The `text_llm` settings are wrong; the message names the field."""


@dataclass(frozen=True)
class UnloadSpec:
    """How to ask a server to release its models: an HTTP call relative to the server's URL."""

    method: str = "GET"
    path: str = LLAMA_SWAP_UNLOAD_PATH
    timeout_s: float = 10.0


@dataclass(frozen=True)
class TextEndpointsConfig:
    """The brain's `text_llm:` settings (configs/brain.yaml)."""

    normal: Mapping[str, Any]
    session: Mapping[str, Any]
    keep_after_session: bool = False
    unload: UnloadSpec | None = UnloadSpec()  # None: the normal server cannot unload (not llama-swap)
    route_poll_s: float = 2.0  # how often the deployment asks for the route without any text call

    @classmethod
    def from_mapping(cls, data: Any, source: str = "text_llm") -> TextEndpointsConfig:
        if not isinstance(data, Mapping):
            raise TextRouteConfigError(f"{source} must be a mapping, got {type(data).__name__}")
        known = {"normal", "session", "keep_after_session", "unload", "route_poll_s"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TextRouteConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        endpoints = {}
        for name in ("normal", "session"):
            value = data.get(name)
            if not isinstance(value, Mapping) or not value.get("backend"):
                raise TextRouteConfigError(f"{source}.{name} must be an LLM backend mapping with a 'backend' key, "
                                           f"got {value!r}")
            endpoints[name] = dict(value)
        keep = data.get("keep_after_session", False)
        if not isinstance(keep, bool):
            raise TextRouteConfigError(f"{source}.keep_after_session must be true or false, got {keep!r}")
        unload_raw = data.get("unload", {})
        unload: UnloadSpec | None
        if unload_raw is False or unload_raw is None:
            unload = None
        elif isinstance(unload_raw, Mapping):
            extra = sorted(set(unload_raw) - {"method", "path", "timeout_s"})
            if extra:
                raise TextRouteConfigError(f"{source}.unload: unknown key(s) {extra}")
            method = str(unload_raw.get("method", "GET")).upper()
            path = str(unload_raw.get("path", LLAMA_SWAP_UNLOAD_PATH))
            if method not in ("GET", "POST") or not path.startswith("/"):
                raise TextRouteConfigError(f"{source}.unload: method must be GET or POST and path start with '/', "
                                           f"got {method} {path!r}")
            unload = UnloadSpec(method, path, float(unload_raw.get("timeout_s", 10.0)))
        else:
            raise TextRouteConfigError(f"{source}.unload must be a mapping or false, got {unload_raw!r}")
        poll = data.get("route_poll_s", 2.0)
        if isinstance(poll, bool) or not isinstance(poll, (int, float)) or poll <= 0:
            raise TextRouteConfigError(f"{source}.route_poll_s must be a positive number, got {poll!r}")
        return cls(endpoints["normal"], endpoints["session"], keep, unload, float(poll))


def session_holds_route(result: Any) -> bool:
    """Does this `check("text_inference")` answer say a voice session holds the route?

    Reads a controller `CheckResult` (its `effect` is set only while a session holds the feature), its
    `to_dict()` form, or a plain bool (tests, simple hosts)."""
    if isinstance(result, bool):
        return result
    if isinstance(result, Mapping):
        return bool(result.get("effect") or result.get("held_by"))
    return getattr(result, "effect", None) is not None or bool(getattr(result, "held_by", ()))


RouteCheck = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class ReleaseOutcome:
    ok: bool
    detail: str


class ModelRelease:
    """Asks one server to release its models (llama-swap's unload); never raises."""

    def __init__(self, base_url: str, spec: UnloadSpec, api_key: str | None = None):
        self.url = http_url(base_url, "text_llm unload").removesuffix("/v1") + spec.path
        self.spec = spec
        self.api_key = api_key

    async def release(self) -> ReleaseOutcome:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            timeout = aiohttp.ClientTimeout(total=self.spec.timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.request(self.spec.method, self.url, headers=headers) as response:
                    body = (await response.text(errors="replace"))[:200].strip()
                    if response.status >= 300:
                        return ReleaseOutcome(False, f"{self.spec.method} {self.url} answered HTTP {response.status}: {body}")
                    return ReleaseOutcome(True, f"{self.spec.method} {self.url}: HTTP {response.status} {body}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return ReleaseOutcome(False, f"{self.spec.method} {self.url} failed: {exc or type(exc).__name__}")


class EndpointSelector:
    """Picks the backend for each call from the controller's `text_inference` route.

    The route is asked on every `select()`; a check that fails keeps the last route (logged), so a
    controller restart mid-session does not send text back to the GTX 1660. Switching to the session
    route starts one release of the normal endpoint's models.
    """

    def __init__(
        self,
        normal: LLMBackend,
        session: LLMBackend,
        check: RouteCheck,
        *,
        keep_after_session: bool = False,
        release: ModelRelease | None = None,
    ):
        self.backends = {TextRoute.NORMAL: normal, TextRoute.SESSION: session}
        self._check = check
        self.keep_after_session = keep_after_session
        self._release = release
        self.route = TextRoute.NORMAL
        self._kept = False
        self._check_failing = False
        self._tasks: set[asyncio.Task] = set()
        self.served = {TextRoute.NORMAL: 0, TextRoute.SESSION: 0}
        self.switches = 0
        self.releases: list[ReleaseOutcome] = []

    async def refresh(self) -> TextRoute:
        """Ask the controller now and switch if the answer changed; returns the route in force."""
        try:
            held = session_holds_route(await self._check())
        except Exception as exc:  # unreachable or restarting: keep the route we had
            if not self._check_failing:
                log.warning("text_inference check failed (%s: %s); text stays on the %s endpoint",
                            type(exc).__name__, exc, self.route.value)
                self._check_failing = True
            return self.route
        if self._check_failing:
            log.info("text_inference check answers again")
            self._check_failing = False
        if held:
            self._kept = self.keep_after_session
            wanted = TextRoute.SESSION
        else:
            wanted = TextRoute.SESSION if self._kept else TextRoute.NORMAL
        if wanted is not self.route:
            self._switch(wanted)
        return self.route

    async def select(self) -> LLMBackend:
        route = await self.refresh()
        self.served[route] += 1
        return self.backends[route]

    def _switch(self, route: TextRoute) -> None:
        log.info("text inference moves from the %s endpoint to the %s endpoint (%s)", self.route.value,
                 route.value, self.backends[route].describe().get("url", self.backends[route].name))
        self.route = route
        self.switches += 1
        if route is TextRoute.SESSION and self._release is not None:
            task = asyncio.get_running_loop().create_task(self._release_normal())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _release_normal(self) -> None:
        assert self._release is not None
        outcome = await self._release.release()
        self.releases.append(outcome)
        if outcome.ok:
            log.info("normal text endpoint released its models: %s", outcome.detail)
        else:
            log.warning("normal text endpoint could not release its models (it keeps them): %s", outcome.detail)

    async def settled(self) -> None:
        """Wait for background releases started so far (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def snapshot(self) -> dict[str, Any]:
        return {"route": self.route.value, "keep_after_session": self.keep_after_session,
                "served": {r.value: n for r, n in self.served.items()}, "switches": self.switches,
                "releases": [{"ok": r.ok, "detail": r.detail} for r in self.releases[-5:]]}

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for backend in self.backends.values():
            await backend.aclose()


class RoutedLLMBackend(LLMBackend):
    """An `LLMBackend` that streams each request from the endpoint the selector picks for it."""

    name = "routed"

    def __init__(self, selector: EndpointSelector):
        self.selector = selector

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "route": self.selector.route.value,
                **{route.value: backend.describe() for route, backend in self.selector.backends.items()}}

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        backend = await self.selector.select()
        stream = backend.stream(request)
        try:
            async for token in stream:
                yield token
        finally:
            await stream.aclose()  # an abandoned reply closes its HTTP stream (the server stops)

    async def probe(self) -> None:
        await self.selector.backends[self.selector.route].probe()

    async def aclose(self) -> None:
        await self.selector.aclose()


def build_routed_backend(config: TextEndpointsConfig, check: RouteCheck) -> RoutedLLMBackend:
    """Both backends from config (graph.backends registry) behind one selector."""
    normal = create_backend("llm", dict(config.normal))
    session = create_backend("llm", dict(config.session))
    release = None
    if config.unload is not None and config.normal.get("url"):
        release = ModelRelease(str(config.normal["url"]), config.unload, config.normal.get("api_key"))
    selector = EndpointSelector(normal, session, check, keep_after_session=config.keep_after_session, release=release)
    return RoutedLLMBackend(selector)
