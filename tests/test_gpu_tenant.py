"""The GPU tenant rule without Ray: a voice session's blackout releases the stage's model, its end restores
it, and a request that arrives while the model loads again waits and is told so."""
from __future__ import annotations

import asyncio

from graph.media.gpu_tenant import GpuTenant, TenantState, Verdict


class Controller:
    """A blackout a test flips; `watch` answers as the FeatureController's long poll does."""

    def __init__(self):
        self.verdict = Verdict(True)
        self.changed = asyncio.Event()

    def set(self, allowed: bool) -> None:
        self.verdict = Verdict(allowed, None if allowed else "🎤 I can't draw right now")
        self.changed.set()

    async def watch(self, known):
        while self.verdict.allowed == known:
            self.changed.clear()
            await self.changed.wait()
        return self.verdict


class Backend:
    def __init__(self):
        self.calls: list[str] = []
        self.restore_gate = asyncio.Event()
        self.restore_gate.set()

    async def release(self) -> str:
        self.calls.append("release")
        return "POST /free"

    async def restore(self) -> str:
        self.calls.append("restore")
        await self.restore_gate.wait()
        return "reloaded"


async def until(condition, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def test_session_start_releases_and_end_restores():
    controller, backend = Controller(), Backend()
    tenant = GpuTenant("image", backend.release, backend.restore, "loading again...")
    tenant.start(controller.watch)
    try:
        controller.set(False)
        await until(lambda: tenant.state is TenantState.RELEASED)
        assert backend.calls == ["release"] and tenant.blocked and tenant.verdict.message.startswith("🎤")
        controller.set(True)
        await until(lambda: tenant.state is TenantState.LOADED)
        assert backend.calls == ["release", "restore"] and not tenant.blocked
        assert [(e.action, e.detail) for e in tenant.events] == [("release", "POST /free"), ("restore", "reloaded")]
    finally:
        await tenant.aclose()


async def test_a_request_just_after_the_session_waits_for_the_model_and_says_so():
    controller, backend = Controller(), Backend()
    tenant = GpuTenant("image", backend.release, backend.restore, "⏳ loading my drawing model again")
    tenant.start(controller.watch)
    try:
        controller.set(False)
        await until(lambda: tenant.state is TenantState.RELEASED)
        backend.restore_gate.clear()
        controller.set(True)
        await until(lambda: tenant.state is TenantState.RESTORING)
        notes: list[str] = []

        async def request():
            async for note in tenant.ready():
                notes.append(note)
            return tenant.state

        waiting = asyncio.ensure_future(request())
        await until(lambda: notes)
        assert notes == ["⏳ loading my drawing model again"] and not waiting.done()
        backend.restore_gate.set()
        assert await asyncio.wait_for(waiting, 10) is TenantState.LOADED
        assert [n async for n in tenant.ready()] == []  # loaded: nothing to wait for
    finally:
        await tenant.aclose()


async def test_failed_release_is_recorded_and_the_watch_survives_controller_errors():
    controller = Controller()
    failures = {"left": 2}

    async def flaky_watch(known):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("controller restarting")
        return await controller.watch(known)

    async def release():
        raise RuntimeError("server gone")

    async def restore():
        return "ok"

    async def no_sleep(_s):
        await asyncio.sleep(0)

    tenant = GpuTenant("vision", release, restore, "...", sleep=no_sleep)
    tenant.start(flaky_watch)
    try:
        controller.set(False)
        await until(lambda: tenant.events)
        assert tenant.events[0].ok is False and "server gone" in tenant.events[0].detail and failures["left"] == 0
        assert tenant.state is TenantState.RELEASED and tenant.blocked
    finally:
        await tenant.aclose()
