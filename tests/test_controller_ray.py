"""Ray tests for the FeatureController actor and its HTTP routes (deployments/controller/actor.py,
deployments/controller/routes.py): SIGKILL mid-session, lease expiry, concurrent starts, the routes through a
real Serve FastAPI ingress, and a startup error for an unwritable state directory.

Each actor gets its own name and state directory so other test modules' controllers are untouched, and is
killed for good at the end.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid

import aiohttp
import pytest
from fastapi import FastAPI

from deployments import auth
from deployments.controller.actor import (
    CONTROLLER_NAMESPACE,
    ControllerStartupError,
    get_or_create_controller,
    shutdown_controller,
)
from deployments.controller.routes import router, use_controller
from graph.controller.config import ControllerConfig
from graph.controller.errors import SessionConflict, SessionGone
from graph.controller.features import CONFLICT_MESSAGE, VISION_MESSAGE, VRAM_MESSAGE
from graph.controller.limits import MAX_CONTENT_CHARS, MAX_PAGE_BYTES, SQLITE_MAX_INT
from graph.controller.sessions import SessionRequest
from graph.controller.telemetry import VramHeadroom
from graph.controller.text_queue import IncomingMessage
from tests.conftest import free_port
from tests.support.vram import SettableRx6800, telemetry_with

TOKEN = "controller-test-token"


def request(n: int) -> SessionRequest:
    return SessionRequest(guild_id="g", voice_channel_id="v", text_channel_id="t", user_id=f"u{n}")


async def wait_for(predicate, what: str, limit_s: float = 60.0, step_s: float = 0.1):
    """Poll an async predicate until it returns something truthy (a wait, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(step_s)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture(scope="module")
def controller(ray_cluster, tmp_path_factory):
    name = f"FeatureController-test-{uuid.uuid4().hex[:8]}"
    config = ControllerConfig(state_dir=str(tmp_path_factory.mktemp("controller")), lease_s=30)
    handle = get_or_create_controller(config, name=name)
    yield name, handle
    shutdown_controller(name)


@pytest.fixture
async def actor(controller):
    """The module's actor, with every session it holds ended after the test."""
    name, handle = controller
    yield handle
    for session in await handle.sessions.remote():
        await handle.end_session.remote(session.session_id)
    batch = await handle.replay.remote()
    await handle.ack.remote([m.queue_id for m in batch.messages] or [0])


async def test_get_or_create_returns_the_same_actor(controller):
    name, handle = controller
    again = get_or_create_controller({"state_dir": "/nonexistent/ignored-because-it-exists"}, name=name)
    assert await again.pid.remote() == await handle.pid.remote()


async def test_sigkill_mid_session_resumes_with_the_same_state(actor):
    started = await actor.start_session.remote(request(1))
    for n in range(5):
        await actor.enqueue.remote(IncomingMessage("t", "u", f"held {n}", message_id=f"m{n}", event={"n": n}))
    before = await asyncio.gather(
        actor.sessions.remote(), actor.features.remote(), actor.queue.remote(), actor.audit.remote()
    )
    old_pid = await actor.pid.remote()

    os.kill(old_pid, signal.SIGKILL)
    # Calls made while Ray restarts the actor are retried on the new process (max_task_retries).
    new_pid = await wait_for(
        lambda: _pid_if_changed(actor, old_pid), "the controller actor to come back in a new process"
    )
    assert new_pid != old_pid
    after = await asyncio.gather(
        actor.sessions.remote(), actor.features.remote(), actor.queue.remote(), actor.audit.remote()
    )
    assert after == before
    assert (await actor.check.remote("vision")).held_by == (started.session.session_id,)

    ended = await actor.end_session.remote(started.session.session_id)
    assert ended.ended and ended.replay_pending == 5
    batch = await actor.replay.remote()
    assert [m.content for m in batch.messages] == [f"held {n}" for n in range(5)]
    assert [m.event for m in batch.messages] == [{"n": n} for n in range(5)]

    # Killed again in the middle of the replay: acknowledged messages stay gone, the rest come back in order.
    await actor.ack.remote([m.queue_id for m in batch.messages[:2]])
    pid = await actor.pid.remote()
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: _pid_if_changed(actor, pid), "the controller actor to come back again")
    rest = await actor.replay.remote()
    assert [m.queue_id for m in rest.messages] == [m.queue_id for m in batch.messages[2:]]


async def _pid_if_changed(actor, old_pid: int) -> int | None:
    pid = await actor.pid.remote()
    return pid if pid != old_pid else None


async def test_fifty_concurrent_starts_give_exactly_one_session(actor):
    results = await asyncio.gather(
        *(actor.start_session.remote(request(n)) for n in range(50)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 49
    assert all(isinstance(e, SessionConflict) and e.cause.message == CONFLICT_MESSAGE for e in losers)
    assert [s.session_id for s in await actor.sessions.remote()] == [winners[0].session.session_id]


async def test_a_session_whose_heartbeats_stop_ends_by_itself(ray_cluster, tmp_path):
    name = f"FeatureController-lease-{uuid.uuid4().hex[:8]}"
    # the lease must outlast the test's own calls below (start, heartbeat, check) on a loaded machine
    config = ControllerConfig(state_dir=str(tmp_path), lease_s=3.0, lease_check_interval_s=0.2)
    handle = get_or_create_controller(config, name=name)
    try:
        started = await handle.start_session.remote(request(1))
        session_id = started.session.session_id
        await handle.heartbeat.remote(session_id)
        assert (await handle.check.remote("image_generation")).blocked

        # The client goes silent; nobody else calls the actor, so only its own expiry loop can end it.
        async def expired_total():
            return (await handle.stats.remote()).expired_total

        await wait_for(expired_total, "the lease to expire")
        assert await handle.sessions.remote() == ()
        assert all(r.allowed for r in await handle.features.remote())
        with pytest.raises(SessionGone):
            await handle.heartbeat.remote(session_id)
    finally:
        shutdown_controller(name)


def test_an_unwritable_state_dir_fails_startup_with_the_reason(ray_cluster, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    name = f"FeatureController-bad-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(ControllerStartupError, match="a-file"):
            get_or_create_controller(ControllerConfig(state_dir=str(blocker / "state")), name=name)
    finally:
        shutdown_controller(name)


# ------------------------------------------------------------------------------------------ HTTP
app = FastAPI()
app.include_router(router)


@pytest.fixture(scope="module")
def http_base(controller):
    from ray import serve

    name, _ = controller

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class ControllerIngress:
        def __init__(self, token: str, controller_name: str):
            auth.configure(token)
            use_controller(controller_name, CONTROLLER_NAMESPACE)

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    from ray.serve.context import _get_global_client

    port = _get_global_client().http_config.port  # Serve may already run for another module
    serve.run(ControllerIngress.bind(TOKEN, name), name="controller-test", route_prefix="/ctl")
    yield f"http://127.0.0.1:{port}/ctl"
    serve.delete("controller-test")


@pytest.fixture
async def http(http_base, actor):
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        yield session, http_base


SESSION_BODY = {"guild_id": 123456789012345678, "voice_channel_id": "42", "text_channel_id": "43", "user_id": "7"}


async def test_routes_refuse_a_missing_token_and_name_the_bad_field(http):
    client, base = http
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.post(f"{base}/v1/sessions", json=SESSION_BODY) as resp:
            assert resp.status == 401
    no_user = {k: v for k, v in SESSION_BODY.items() if k != "user_id"}
    async with client.post(f"{base}/v1/sessions", json=no_user) as resp:
        assert resp.status == 422
        assert ["body", "user_id"] in [e["loc"] for e in (await resp.json())["detail"]]
    async with client.post(f"{base}/v1/queue/ack", json={"ids": "all"}) as resp:
        assert resp.status == 422 and (await resp.json())["detail"][0]["loc"][:2] == ["body", "ids"]


async def test_session_lifecycle_over_http(http):
    client, base = http
    async with client.post(f"{base}/v1/sessions", json=SESSION_BODY) as resp:
        assert resp.status == 201
        body = await resp.json()
    session_id = body["session_id"]
    assert body["lease_s"] == 30
    assert {b["name"] for b in body["blackouts"]} >= {"vision", "image_generation", "text_inference"}

    async with client.post(f"{base}/v1/sessions", json=SESSION_BODY) as resp:
        assert resp.status == 409 and (await resp.json())["message"] == CONFLICT_MESSAGE

    async with client.get(f"{base}/v1/features") as resp:
        features = {f["name"]: f for f in (await resp.json())["features"]}
    assert features["vision"]["blocked"] and features["vision"]["message"] == VISION_MESSAGE
    assert features["profile_picture"]["blocked"] and features["profile_picture"]["message"] is None
    async with client.get(f"{base}/v1/features/text_inference") as resp:
        inference = await resp.json()
    assert not inference["blocked"] and inference["route"] == "rx6800"
    async with client.get(f"{base}/v1/features/telepathy") as resp:
        assert resp.status == 404 and "vision" in (await resp.json())["message"]

    async with client.get(f"{base}/v1/sessions") as resp:
        assert [s["session_id"] for s in (await resp.json())["sessions"]] == [session_id]
    async with client.post(f"{base}/v1/sessions/{session_id}/heartbeat") as resp:
        assert resp.status == 200 and (await resp.json())["state"] == "active"
    async with client.post(f"{base}/v1/sessions/nope/heartbeat") as resp:
        assert resp.status == 404

    async with client.delete(f"{base}/v1/sessions/{session_id}") as resp:
        assert resp.status == 200 and (await resp.json())["ended"] is True
    async with client.delete(f"{base}/v1/sessions/{session_id}") as resp:
        again = await resp.json()
    assert resp.status == 200 and again["ended"] is False and "already" in again["message"]
    async with client.post(f"{base}/v1/sessions/{session_id}/heartbeat") as resp:
        assert resp.status == 410
    async with client.delete(f"{base}/v1/sessions/nope") as resp:
        assert resp.status == 404
    async with client.get(f"{base}/v1/features") as resp:
        assert not any(f["blocked"] for f in (await resp.json())["features"])

    async with client.get(f"{base}/v1/audit", params={"limit": "1000"}) as resp:
        actions = [(e["action"], e["session_id"]) for e in (await resp.json())["entries"]]
    assert ("session_started", session_id) in actions and ("session_ended", session_id) in actions


async def test_text_queue_over_http(http):
    client, base = http
    message = {"channel_id": 43, "author_id": "7", "content": "hi", "event": {"type": "message"}}
    async with client.post(f"{base}/v1/queue", json=message) as resp:
        assert resp.status == 200 and (await resp.json())["queued"] is False  # no session: handle it now

    async with client.post(f"{base}/v1/sessions", json=SESSION_BODY) as resp:
        session_id = (await resp.json())["session_id"]
    queued = []
    for n in range(3):
        async with client.post(f"{base}/v1/queue", json=dict(message, content=f"m{n}", message_id=n + 1)) as resp:
            body = await resp.json()
        assert body["queued"] and body["warning"] is None
        queued.append(body["message"]["queue_id"])
    async with client.get(f"{base}/v1/queue") as resp:
        assert (await resp.json())["ready"] is False
    async with client.delete(f"{base}/v1/sessions/{session_id}") as resp:
        assert (await resp.json())["replay_pending"] == 3

    async with client.get(f"{base}/v1/queue", params={"limit": "2"}) as resp:
        batch = await resp.json()
    assert batch["ready"] and [m["content"] for m in batch["messages"]] == ["m0", "m1"]
    assert batch["messages"][0]["event"] == {"type": "message"} and batch["remaining"] == 3
    async with client.post(f"{base}/v1/queue/ack", json={"ids": [str(queued[0])]}) as resp:
        assert (await resp.json()) == {"acked": [queued[0]], "unknown": [], "remaining": 2}
    async with client.get(f"{base}/v1/queue") as resp:
        assert [m["queue_id"] for m in (await resp.json())["messages"]] == queued[1:]
    async with client.get(f"{base}/v1/controller") as resp:
        assert (await resp.json())["queue_length"] == 2


async def test_out_of_range_parameters_are_4xx_not_500(http):
    client, base = http
    async with client.get(f"{base}/v1/audit", params={"after_seq": str(2**63)}) as resp:
        assert resp.status == 422 and (await resp.json())["detail"][0]["loc"] == ["query", "after_seq"]
    async with client.get(f"{base}/v1/audit", params={"after_seq": str(SQLITE_MAX_INT)}) as resp:
        assert resp.status == 200 and (await resp.json()) == {"entries": [], "next_after_seq": None}
    for params in ({"limit": "0"}, {"limit": "1001"}, {"after_id": "-1"}, {"after_id": str(2**64)}):
        async with client.get(f"{base}/v1/queue", params=params) as resp:
            assert resp.status == 422, params
    long_id = "x" * 300
    for method, path in (("GET", f"/v1/sessions/{long_id}"), ("POST", f"/v1/sessions/{long_id}/heartbeat"),
                         ("DELETE", f"/v1/sessions/{long_id}"), ("GET", f"/v1/features/{long_id}")):
        async with client.request(method, f"{base}{path}") as resp:
            assert resp.status == 422, path
    async with client.get(f"{base}/v1/features", params={"persona": long_id}) as resp:
        assert resp.status == 422
    async with client.post(f"{base}/v1/queue/ack", json={"ids": [2**63]}) as resp:
        assert resp.status == 422
    # NaN in a body: a 422 that names the field and can be written as JSON (aiohttp sends NaN literally)
    nan_body = {"channel_id": "1", "author_id": "2", "content": "hi", "sent_at": float("nan")}
    async with client.post(f"{base}/v1/queue", json=nan_body) as resp:
        assert resp.status == 422
        detail = (await resp.json())["detail"]
    assert detail[0]["loc"] == ["body", "sent_at"] and detail[0]["input"] == "nan"
    async with client.post(f"{base}/v1/queue", json=dict(nan_body, sent_at=1.0, event={"x": float("inf")})) as resp:
        assert resp.status == 422 and "NaN or infinity" in (await resp.json())["message"]


async def test_oversized_messages_are_refused_with_413_or_422_and_nothing_is_queued(http):
    client, base = http
    async with client.post(f"{base}/v1/sessions", json=SESSION_BODY) as resp:
        session_id = (await resp.json())["session_id"]
    body = {"channel_id": "1", "author_id": "2", "content": "x" * (MAX_CONTENT_CHARS + 1)}
    async with client.post(f"{base}/v1/queue", json=body) as resp:
        assert resp.status == 422
        detail = (await resp.json())["detail"][0]
    assert detail["loc"] == ["body", "content"] and len(detail["input"]) < 300  # not echoed whole
    async with client.post(f"{base}/v1/queue", json=dict(body, content="hi", event={"blob": "y" * 40_000})) as resp:
        assert resp.status == 413
        refusal = await resp.json()
    assert refusal["error"] == "PayloadTooLarge" and "at most 32768" in refusal["message"]
    async with client.get(f"{base}/v1/controller") as resp:
        assert (await resp.json())["queue_length"] == 0
    async with client.delete(f"{base}/v1/sessions/{session_id}") as resp:
        assert resp.status == 200


async def test_a_queue_of_large_messages_comes_back_in_pages_under_the_budget(http):
    client, base = http
    async with client.post(f"{base}/v1/sessions", json=SESSION_BODY) as resp:
        session_id = (await resp.json())["session_id"]
    content = "ü" * MAX_CONTENT_CHARS  # the largest message, 8 kB in UTF-8, repeated in the event as the bot does
    for n in range(100):
        message = {"channel_id": "43", "author_id": "7", "content": content, "message_id": f"big{n}",
                   "event": {"type": "message", "content": content, "padding": "p" * 12_000}}
        async with client.post(f"{base}/v1/queue", json=message) as resp:
            assert resp.status == 200 and (await resp.json())["queued"]
    async with client.delete(f"{base}/v1/sessions/{session_id}") as resp:
        assert (await resp.json())["replay_pending"] == 100

    seen, after = [], 0
    while True:
        async with client.get(f"{base}/v1/queue", params={"limit": "100", "after_id": str(after)}) as resp:
            assert resp.status == 200
            raw = await resp.read()
        assert len(raw) <= MAX_PAGE_BYTES + 4096
        page = json.loads(raw)
        assert page["ready"] and page["remaining"] == 100 and page["messages"]
        seen.extend(m["message_id"] for m in page["messages"])
        if page["next_after_id"] is None:
            break
        after = page["next_after_id"]
    assert seen == [f"big{n}" for n in range(100)]
    async with client.get(f"{base}/v1/audit", params={"limit": "2"}) as resp:
        first = await resp.json()
    assert len(first["entries"]) == 2 and first["next_after_seq"] == first["entries"][-1]["seq"]


async def test_vram_limit_refuses_a_first_session_and_warns_during_one(ray_cluster, tmp_path):
    card = SettableRx6800(tmp_path / "rx6800-used-gb", used_gb=14.5)
    name = f"FeatureController-vram-{uuid.uuid4().hex[:8]}"
    config = ControllerConfig(state_dir=str(tmp_path / "state"), vram_check_interval_s=0.1)
    handle = get_or_create_controller(config, name=name, headroom=VramHeadroom(telemetry=telemetry_with(card).snapshot))
    try:
        with pytest.raises(SessionConflict) as err:
            await handle.start_session.remote(request(1))
        assert err.value.cause.message.startswith(VRAM_MESSAGE) and "rx6800 uses 14.5 GB" in err.value.cause.message

        card.set(10.0)
        started = await handle.start_session.remote(request(1))
        session_id = started.session.session_id
        _, warnings = await handle.heartbeat_report.remote(session_id)
        assert warnings == ()

        card.set(15.2)  # a session is running and the card goes over its limit

        async def over_limit():
            return (await handle.sessions_report.remote())[1]

        (warning,) = await wait_for(over_limit, "the VRAM warning")
        body = warning.to_dict()
        assert body["kind"] == "vram_over_limit" and body["resource"] == "rx6800" and body["used_gb"] == pytest.approx(15.2)
        _, beat_warnings = await handle.heartbeat_report.remote(session_id)
        assert [w.to_dict()["resource"] for w in beat_warnings] == ["rx6800"]

        card.set(12.0)

        async def cleared():
            return (await handle.sessions_report.remote())[1] == ()

        await wait_for(cleared, "the VRAM warning to clear")
        await handle.end_session.remote(session_id)
    finally:
        shutdown_controller(name)


async def test_heartbeat_and_session_list_answers_carry_warnings(http):
    client, base = http
    async with client.post(f"{base}/v1/sessions", json=SESSION_BODY) as resp:
        session_id = (await resp.json())["session_id"]
    async with client.post(f"{base}/v1/sessions/{session_id}/heartbeat") as resp:
        assert (await resp.json())["warnings"] == []  # no VRAM probe on this controller: nothing to warn about
    async with client.get(f"{base}/v1/sessions") as resp:
        assert (await resp.json())["warnings"] == []
    async with client.delete(f"{base}/v1/sessions/{session_id}") as resp:
        assert resp.status == 200


async def test_routes_answer_503_when_the_controller_actor_is_missing(ray_cluster):
    """The router in this process, served by uvicorn on loopback, pointed at an actor that does not exist."""
    import uvicorn

    local = FastAPI()
    local.include_router(router)
    auth.configure(TOKEN)
    use_controller(f"missing-{uuid.uuid4().hex[:8]}", CONTROLLER_NAMESPACE)
    server = uvicorn.Server(uvicorn.Config(local, host="127.0.0.1", port=free_port(), log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: _started(server), "uvicorn to start")
        base = f"http://127.0.0.1:{server.config.port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            async with client.get(f"{base}/v1/sessions") as resp:
                body = await resp.json()
            assert resp.status == 503 and "get_or_create_controller" in body["message"]
    finally:
        server.should_exit = True
        await serving
        use_controller()


async def _started(server) -> bool:
    return server.started
