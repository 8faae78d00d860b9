"""Text inference moves to the RX 6800 during a voice session: two real OpenAI-compatible servers, the
real session controller, and the brain; each test checks which server got each request."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import random
from pathlib import Path

import pytest

from graph.brain import Brain, BrainConfig
from graph.brain.llm import complete_from_backend
from graph.brain.text_route import (
    TextEndpointsConfig,
    TextRoute,
    TextRouteConfigError,
    build_routed_backend,
)
from graph.controller.config import ControllerConfig
from graph.controller.sessions import SessionRequest
from graph.controller.state_machine import SessionController
from tests.support.llm_server import LLMTestServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_servers():
    """The normal endpoint (llama-swap on the GTX 1660: answers /unload) and the session one (RX 6800)."""
    normal, session = LLMTestServer(unload=True).start(), LLMTestServer().start()
    yield normal, session
    normal.stop()
    session.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def controller(tmp_path):
    counter = itertools.count(1)
    ctl = SessionController.open(ControllerConfig(state_dir=str(tmp_path / "ctl"), lease_s=600), clock=Clock(),
                                 id_factory=lambda: f"s{next(counter)}")
    yield ctl
    ctl.close()


def route_check(ctl: SessionController):
    async def check():
        return ctl.check("text_inference")

    return check


def start(ctl: SessionController) -> str:
    started = ctl.start_session(SessionRequest(guild_id="g", voice_channel_id="v", text_channel_id="t", user_id="u"))
    return started.session.session_id


def endpoints(normal: LLMTestServer, session: LLMTestServer, **extra) -> TextEndpointsConfig:
    return TextEndpointsConfig.from_mapping({
        "normal": {"backend": "openai", "url": normal.url, "model": "miku-1660"},
        "session": {"backend": "openai", "url": session.url, "model": "miku-6800"},
        **extra,
    })


def prompts(server: LLMTestServer, marker: str) -> list[str]:
    return [r.prompt for r in server.requests if marker in r.prompt]


def message(n: int, content: str) -> dict:
    return {"type": "message", "event_id": f"e{n}", "guild_id": "g", "channel_id": "c", "message_id": f"m{n}",
            "author_id": "u1", "author_name": "Ann", "content": content, "mentions_miku": True,
            "timestamp": 1_000_000.0 + n}


async def test_every_text_call_goes_where_the_route_says_and_back_after_the_session(gpu_servers, controller, tmp_path):
    normal, session = gpu_servers
    backend = build_routed_backend(endpoints(normal, session), route_check(controller))
    config = dataclasses.replace(BrainConfig.load(REPO / "configs" / "brain.yaml"), memory_path=":memory:")
    async def blackouts(feature: str):
        return controller.check(feature)

    brain = await Brain.create(config, complete=complete_from_backend(backend), check_feature=blackouts,
                               rng=random.Random(3))
    unloads_before = normal.unloads
    try:
        # outside a session: a text reply is written by the normal endpoint, the session one sees nothing
        actions = (await brain.handle_event(message(1, "Miku, [r1] sing for me?")))["actions"]
        assert actions[0]["type"] == "reply" and "test server" in actions[0]["text"]
        assert "user: Ann: Miku, [r1] sing for me?" in prompts(normal, "[r1]") and prompts(session, "[r1]") == []

        session_id = start(controller)
        # during it: the calls the brain makes (judges, autonomous messages: all through brain.complete)
        normal_count = len(normal.requests)
        held = (await brain.handle_event(message(3, "Miku, [q1] how was the concert? So happy!")))["actions"]
        assert held[0]["type"] == "queue"  # the message waits for the session's end
        judged = await brain.complete("[j1] is this message provoking?", "judge system")
        written = await brain.complete("[a1] say something on your own", None)
        assert judged and written
        assert len(prompts(session, "[j1]")) == 1 and len(prompts(session, "[a1]")) == 1
        assert len(normal.requests) == normal_count  # nothing reached the GTX 1660's server
        await backend.selector.settled()
        assert normal.unloads == unloads_before + 1  # its models were released once, on the switch
        await brain.complete("[j2] another judge call", None)
        await backend.selector.settled()
        assert normal.unloads == unloads_before + 1  # not again while the route stays

        controller.end_session(session_id)
        actions = (await brain.handle_event(message(2, "Miku, [r2] are you back?")))["actions"]
        assert actions[0]["type"] == "reply"
        assert "user: Ann: Miku, [r2] are you back?" in prompts(normal, "[r2]") and prompts(session, "[r2]") == []
        assert backend.selector.route is TextRoute.NORMAL and backend.selector.switches == 2
    finally:
        await brain.close()
        await backend.aclose()


async def test_keep_after_session_stays_on_the_session_endpoint(gpu_servers, controller):
    normal, session = gpu_servers
    backend = build_routed_backend(endpoints(normal, session, keep_after_session=True), route_check(controller))
    complete = complete_from_backend(backend)
    try:
        await complete("[k0] before", None)
        assert len(prompts(normal, "[k0]")) == 1
        session_id = start(controller)
        assert await backend.selector.refresh() is TextRoute.SESSION  # the deployment's route poll
        controller.end_session(session_id)
        await complete("[k1] after the session", None)
        assert prompts(normal, "[k1]") == [] and len(prompts(session, "[k1]")) == 1
    finally:
        await backend.aclose()


async def test_a_server_that_cannot_unload_is_logged_not_fatal(llm_server, gpu_servers, controller, caplog):
    _, session = gpu_servers
    # the shared test server has no /unload: it answers 404, like a plain llama.cpp server
    backend = build_routed_backend(endpoints(llm_server, session), route_check(controller))
    complete = complete_from_backend(backend)
    try:
        start(controller)
        with caplog.at_level(logging.WARNING, logger="graph.brain.text_route"):
            assert await complete("[u1] during the session", None)
            await backend.selector.settled()
        assert len(prompts(session, "[u1]")) == 1
        [outcome] = backend.selector.releases
        assert not outcome.ok and "404" in outcome.detail
        assert any("could not release" in r.getMessage() for r in caplog.records)
    finally:
        await backend.aclose()


async def test_a_failing_check_keeps_the_route_in_force(gpu_servers, controller):
    normal, session = gpu_servers
    state = {"fail": False}

    async def flaky():
        if state["fail"]:
            raise ConnectionError("controller restarting")
        return controller.check("text_inference")

    backend = build_routed_backend(endpoints(normal, session, unload=False), flaky)
    complete = complete_from_backend(backend)
    try:
        start(controller)
        await complete("[f1] in session", None)
        state["fail"] = True  # e.g. the actor was SIGKILLed mid-session: text must not go back to the 1660
        await complete("[f2] while the controller restarts", None)
        assert len(prompts(session, "[f1]")) == 1 and len(prompts(session, "[f2]")) == 1
        assert prompts(normal, "[f2]") == []
        assert backend.selector.releases == []  # unload: false
    finally:
        await backend.aclose()


@pytest.mark.parametrize("bad, field", [
    ({"normal": {"backend": "openai", "url": "http://x"}}, "text_llm.session"),
    ({"normal": {"url": "http://x"}, "session": {"backend": "openai", "url": "http://y"}}, "text_llm.normal"),
    ({"normal": {"backend": "echo"}, "session": {"backend": "echo"}, "keep_after_session": "yes"}, "keep_after_session"),
    ({"normal": {"backend": "echo"}, "session": {"backend": "echo"}, "unload": {"path": "unload"}}, "text_llm.unload"),
    ({"normal": {"backend": "echo"}, "session": {"backend": "echo"}, "gpu": 1}, "unknown key"),
])
def test_bad_settings_name_the_field(bad, field):
    with pytest.raises(TextRouteConfigError, match=field):
        TextEndpointsConfig.from_mapping(bad)


async def test_the_deployment_route_check_reads_the_real_controller_actor(ray_cluster, tmp_path):
    """The Brain deployment's check against a real FeatureController actor: held during a session only."""
    import uuid

    from deployments.brain.deployment import ControllerRouteCheck
    from deployments.controller.actor import get_or_create_controller, shutdown_controller
    from graph.brain.text_route import session_holds_route

    name = f"FeatureController-route-{uuid.uuid4().hex[:8]}"
    actor = get_or_create_controller(ControllerConfig(state_dir=str(tmp_path / "controller"), lease_s=60), name=name)
    check = ControllerRouteCheck(name, "miku")
    try:
        assert not session_holds_route(await check())
        started = await actor.start_session.remote(SessionRequest(guild_id="g1", voice_channel_id="v", text_channel_id="c1", user_id="u1"))
        assert session_holds_route(await check())
        await actor.end_session.remote(started.session.session_id)
        assert not session_holds_route(await check())
    finally:
        shutdown_controller(name, "miku")
    assert await ControllerRouteCheck(name + "-absent", "miku")() is False  # no controller: no session


async def _wait_until(predicate, what: str, limit_s: float = 120.0):
    """Wait on a condition (not a timing assertion)."""
    import asyncio

    async with asyncio.timeout(limit_s):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_the_brain_deployment_routes_text_and_silences_bipolar_across_a_controller_sigkill(
        ray_cluster, gpu_servers, tmp_path):
    """The Brain deployment's own wiring (its class, in process): `text_llm` and `bipolar` from its config, the
    real FeatureController actor, and SIGKILL of that actor in the middle of a voice session."""
    import os
    import signal
    import uuid

    from deployments.brain.deployment import Brain as BrainDeployment
    from deployments.controller.actor import get_or_create_controller, shutdown_controller

    normal, session = gpu_servers
    name = f"FeatureController-brainroute-{uuid.uuid4().hex[:8]}"
    actor = get_or_create_controller(ControllerConfig(state_dir=str(tmp_path / "controller"), lease_s=120), name=name)
    cls = BrainDeployment.func_or_class
    brain = cls.__new__(cls)
    await brain.__init__(
        config={"memory_path": str(tmp_path / "brain.sqlite3"),
                "text_llm": {"normal": {"backend": "openai", "url": normal.url, "model": "miku-1660"},
                             "session": {"backend": "openai", "url": session.url, "model": "miku-6800"},
                             "route_poll_s": 0.1},
                "bipolar": {"channels": ["c1"], "max_messages": 2}},
        controller={"name": name, "namespace": "miku"}, tick_interval_s=3600, autonomous={"enabled": False})
    selector = brain._backend.selector
    complete = brain._brain.complete

    def argue(n: int, marker: str) -> dict:
        return {"type": "message", "event_id": f"d{n}", "guild_id": "g", "channel_id": "c1", "message_id": f"dm{n}",
                "author_id": "u1", "author_name": "Ann", "content": f"!argue {marker}", "timestamp": 1_000_000.0 + n}

    try:
        assert await complete("[d1] before the session", None) and prompts(normal, "[d1]")
        unloads = normal.unloads
        started = await actor.start_session.remote(SessionRequest(guild_id="g", voice_channel_id="v", text_channel_id="t", user_id="u"))

        async def switched():  # the deployment's route poll sees the session with no text call at all
            return selector.route is TextRoute.SESSION and normal.unloads > unloads
        await _wait_until(switched, "the route poll to switch and release the GTX 1660")
        assert (await brain.handle_event(argue(2, "[d2]")))["actions"] == []  # bipolar: silent
        assert prompts(normal, "[d2]") == [] and prompts(session, "[d2]") == []

        old_pid = await actor.pid.remote()
        os.kill(old_pid, signal.SIGKILL)
        assert await complete("[d3] while the controller restarts", None)

        async def restarted():
            return await actor.pid.remote() != old_pid
        await _wait_until(restarted, "the controller actor to come back")
        assert await complete("[d4] after the restart", None)
        assert (await brain.handle_event(argue(5, "[d5]")))["actions"] == []  # the restarted actor still holds it
        for marker in ("[d3]", "[d4]", "[d5]"):
            assert prompts(normal, marker) == []
        assert prompts(session, "[d3]") and prompts(session, "[d4]")
        assert normal.unloads == unloads + 1  # released once, not again after the restart

        await actor.end_session.remote(started.session.session_id)

        async def back():
            return selector.route is TextRoute.NORMAL
        await _wait_until(back, "the route poll to go back to the normal endpoint")
        [argument] = (await brain.handle_event(argue(6, "[d6]")))["actions"]
        assert argument["type"] == "argument" and len(argument["lines"]) == 2
        assert len(prompts(normal, "[d6]")) == 2 and prompts(session, "[d6]") == []
        snapshot = await brain.snapshot()
        assert snapshot["text_route"]["route"] == "normal" and snapshot["bipolar"]["stats"]["arguments"] == 1
    finally:
        await brain.__del__()
        shutdown_controller(name, "miku")
