"""A GPU stage that gives the card back during voice sessions: the GTX 1660 holds Soprano alone while a
session runs, so ImageGen and Vision unload their models (the backend's `release()`: the diffusers pipeline
dropped and the CUDA cache emptied, ComfyUI's `POST /free`, A1111's unload-checkpoint, llama-swap's unload)
when the session starts, and load them again (`restore()`) when it ends.

`GpuTenant` is the state machine; what tells it about sessions is injected (`watch`: a long poll on the
controller's blackout of the stage's feature), so it runs the same in a Serve replica and in a test. A
request that arrives while the model is being loaded again waits for it and is told so; a request while
the feature is blocked is refused with the controller's message (the plan's, with the 🎤).
"""
from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class TenantState(enum.Enum):
    LOADED = "loaded"
    RELEASING = "releasing"
    RELEASED = "released"
    RESTORING = "restoring"


@dataclass(frozen=True)
class Verdict:
    """What the controller says about the stage's feature now."""

    allowed: bool
    message: str | None = None


@dataclass(frozen=True)
class TenantEvent:
    action: str  # "release" or "restore"
    detail: str  # what the backend did ("POST /free"), or the error
    ok: bool = True


Watch = Callable[[bool | None], Awaitable[Verdict]]  # long poll: answers when `allowed` differs from the argument


class GpuTenant:
    def __init__(self, name: str, release: Callable[[], Awaitable[str]], restore: Callable[[], Awaitable[str]],
                 waiting_message: str, retry_s: float = 2.0, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.name = name
        self._release, self._restore = release, restore
        self.waiting_message = waiting_message
        self.retry_s = retry_s
        self._sleep = sleep
        self.state = TenantState.LOADED
        self.verdict = Verdict(True)
        self.events: list[TenantEvent] = []
        self._lock = asyncio.Lock()  # one change of state at a time
        self._settled = asyncio.Event()
        self._settled.set()
        self._task: asyncio.Task | None = None

    @property
    def blocked(self) -> bool:
        return not self.verdict.allowed

    def status(self) -> dict:
        return {"state": self.state.value, "blocked": self.blocked,
                "events": [{"action": e.action, "detail": e.detail, "ok": e.ok} for e in self.events[-6:]]}

    async def apply(self, verdict: Verdict) -> None:
        """Follow the controller: release when the feature is blocked, restore when it is allowed again."""
        self.verdict = verdict
        async with self._lock:
            if verdict.allowed and self.state is TenantState.RELEASED:
                await self._change(TenantState.RESTORING, TenantState.LOADED, "restore", self._restore)
            elif not verdict.allowed and self.state is TenantState.LOADED:
                await self._change(TenantState.RELEASING, TenantState.RELEASED, "release", self._release)

    async def _change(self, during: TenantState, after: TenantState, action: str, call) -> None:
        self.state = during
        self._settled.clear()
        try:
            detail = await call()
            self.events.append(TenantEvent(action, str(detail)))
            log.info("%s: %s (%s)", self.name, action, detail)
        except Exception as error:  # noqa: BLE001 - a backend that cannot unload must not stop the tenant
            self.events.append(TenantEvent(action, f"{type(error).__name__}: {error}", ok=False))
            log.warning("%s: %s failed: %r", self.name, action, error)
            # a failed release leaves the model where it was; a failed restore loads it on the next request
        finally:
            self.state = after
            self._settled.set()

    def start(self, watch: Watch) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(watch))

    async def _follow(self, watch: Watch) -> None:
        known: bool | None = None
        while True:
            try:
                verdict = await watch(known)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the controller restarting: ask again soon
                log.info("%s: blackout watch failed (%r); retrying", self.name, error)
                await self._sleep(self.retry_s)
                continue
            known = verdict.allowed
            await self.apply(verdict)

    async def ready(self) -> AsyncIterator[str]:
        """Before a request: yields the waiting message while the model loads again, then returns."""
        if self.state in (TenantState.RESTORING, TenantState.RELEASING) or (
                self.state is TenantState.RELEASED and not self.blocked):
            yield self.waiting_message
            if self.state is TenantState.RELEASED and not self.blocked:
                await self.apply(self.verdict)  # allowed but not restored yet (the watch is behind): do it now
            await self._settled.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with _suppress_cancel():
                await self._task


class _suppress_cancel:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is asyncio.CancelledError
