"""The autonomous engine hosted in the Brain deployment: events in, decided actions out, paused by voice.

The Ray tests deploy a whole graph application of their own (`auto-test` at `/auto`, a controller actor
of its own) with engine overrides that make a lively conversation decide within a tick: no start-up
cooldown, a 0.5 s tick, a high join rate and a seeded random generator. Every scenario goes through
HTTP: `POST /v1/events`, `GET /v1/autonomous/actions`, `GET /v1/autonomous/explain`, `POST/DELETE
/v1/sessions`. The in-process tests drive `AutonomousHost` with the real graph brain and engine.
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid

import aiohttp
import pytest

from bot_client.actions import ActionExecutor
from bot_client.autonomous import AutonomousPoller
from bot_client.graph_api import GraphAuthError, GraphClient
from deployments.brain.deployment import (
    AutonomousHost,
    AutonomousHosting,
    ControllerPause,
    load_brain_config,
)
from graph.autonomous import AutonomousConfigError
from graph.brain.brain import Brain as BrainLogic
from graph.brain.brain import BrainConfig
from graph.brain.events import FeatureCheck

APP = "auto-test"
PREFIX = "/auto"
TOKEN = "auto-test-token-0123456789"
CONTROLLER = f"FeatureController-auto-{uuid.uuid4().hex[:6]}"

# What a test deployment passes as `brain: {autonomous: ...}` so decisions come within a tick or two.
FAST_AUTONOMOUS = {
    "startup_cooldown_s": 0,
    "tick_interval_s": 0.5,
    "seed": 7,
    "decide_on_event": False,  # decisions only from ticks, so they all land in the outbox
    "actions": {
        "join_conversation": {"rate_per_min": 1000, "min_gap_s": 0},
        "share_something": {"max_momentum": 0},  # keep the calm-channel action out of these scenarios
        "break_silence": {"min_quiet_s": 1.0e9},
    },
}
# Unaddressed messages never make the brain chime in here, so only the engine speaks.
QUIET_HEART_FLOW = {"chat_threshold": 1000.0, "focus_threshold": 2000.0}


def _guild() -> str:
    """A guild id no other test uses (the Brain replica may be shared)."""
    return str(900_000_000_000_000_000 + random.SystemRandom().randrange(10**15))


def _message(guild: str, channel: str, index: int, *, author: int | None = None, **extra) -> dict:
    body = {
        "type": "message", "event_id": f"ev-{guild}-{channel}-{index}", "guild_id": guild, "channel_id": channel,
        "message_id": f"{guild[:10]}{channel[-4:]}{index:05d}", "author_id": str(author or 500 + index % 3),
        "author_name": f"user{index % 3}", "content": "did you see the concert yesterday", "timestamp": time.time(),
    }
    body.update(extra)
    return body


# --------------------------------------------------------------------------------------------------
# In-process: AutonomousHost with the real brain and engine (no Ray)


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def host_factory(tmp_path, clock):
    brains = []

    async def make(*, decide_on_event: bool = False, complete=None, check=None, **engine) -> AutonomousHost:
        config = dataclasses.replace(
            BrainConfig.from_mapping({"heart_flow": QUIET_HEART_FLOW}),
            memory_path=str(tmp_path / f"brain-{len(brains)}.sqlite3"),
        )
        brain = await BrainLogic.create(config, complete=complete, clock=clock, rng=random.Random(1))
        brains.append(brain)
        settings = AutonomousHosting.from_sources({**FAST_AUTONOMOUS, "decide_on_event": decide_on_event, **engine})
        return AutonomousHost(brain, settings, pause=ControllerPause(check), clock=clock)

    yield make
    for brain in brains:
        await brain.close()


async def _post(host: AutonomousHost, event: dict, clock: FakeClock | None = None) -> list[dict]:
    """What the Brain deployment does for one event: the brain first, then the engine.

    With `clock`, five seconds pass before the event (a conversation at a lively human pace)."""
    if clock is not None:
        clock.now += 5.0
        event = {**event, "timestamp": clock.now}
    result = await host.brain.handle_event(event)
    return result["actions"] + await host.on_event(event, list(result["actions"]))


async def test_inline_decision_is_made_once_and_written_by_the_llm(host_factory, clock):
    seen_options = []

    async def llm(prompt: str, system: str | None, options=None) -> str:
        seen_options.append(options)
        return f"hey everyone! [{len(prompt)} chars of prompt]"

    host = await host_factory(decide_on_event=True, complete=llm)
    guild, channel = _guild(), "4242"
    host.configure_server({"guild_id": guild, "allowed_channels": [channel], "timezone": "Asia/Tokyo"})
    inline = []
    for index in range(14):
        inline += await _post(host, _message(guild, channel, index), clock)
    assert len(inline) == 1, inline  # one lively conversation, one decision
    action = inline[0]
    assert action["type"] == "send" and action["channel_id"] == channel and action["guild_id"] == guild
    assert action["text"].startswith("hey everyone!")
    assert action["autonomous"]["action"] == "join_conversation"
    assert action["autonomous"]["debug"]["fired"]["action"] == "join_conversation"
    assert "lively conversation" in action["prompt"]["user"] and action["prompt"]["persona"] == "miku"
    assert seen_options[-1].model == "llama3.1:8b-instruct" and seen_options[-1].temperature == 0.8  # the persona's
    # the same messages re-delivered, and the ticks after: nothing more to decide on
    for index in range(14):
        assert await _post(host, _message(guild, channel, index, event_id=f"again-{index}"), clock) == []
    clock.now += 30.0
    assert await host.tick() == 0 and await host.take(0) == []
    explained = host.explain(int(guild))
    assert explained["recent_decisions"][0]["action"] == "join_conversation"
    join = explained["checks"][0]
    assert join["action"] == "join_conversation" and join["blocked_by"]  # she spoke: the count starts over


async def test_without_an_llm_the_action_carries_the_prompt_and_no_text(host_factory):
    host = await host_factory()
    guild, channel = _guild(), "77"
    host.configure_server({"guild_id": guild, "allowed_channels": [channel]})
    for index in range(14):
        assert await _post(host, _message(guild, channel, index)) == []
    assert await host.tick() == 1
    [action] = await host.take(0)
    assert action["text"] is None and action["prompt"]["system"] and "Join in" in action["prompt"]["user"]
    # the client executor skips a send without text instead of posting something empty
    ops = RecordingOps()
    report = await ActionExecutor(ops).execute([action])
    assert report.skipped == ["send"] and ops.sent == []


async def test_a_brain_reply_counts_as_miku_speaking(host_factory):
    async def llm(prompt: str, system: str | None, options=None) -> str:
        return "sure!"

    host = await host_factory(complete=llm)
    guild, channel = _guild(), "88"
    host.configure_server({"guild_id": guild, "allowed_channels": [channel]})
    for index in range(13):
        await _post(host, _message(guild, channel, index))
    reply = await _post(host, _message(guild, channel, 13, content="Miku what do you think?", mentions_miku=True))
    assert [a["type"] for a in reply] == ["reply"]
    signals = host.explain(int(guild))["signals"]
    assert signals["channels"][0]["messages_since_miku"] == 0  # she just answered: no join on top of it
    assert await host.tick() == 0


async def test_presence_changes_and_moods_reach_the_engine(host_factory):
    host = await host_factory()
    guild = _guild()
    host.configure_server({"guild_id": guild, "allowed_channels": ["5"]})
    await _post(host, {"type": "presence", "event_id": "p1", "guild_id": guild, "user_id": "61", "status": "online", "activity": "Minecraft"})
    await _post(host, {"type": "presence", "event_id": "p2", "guild_id": guild, "user_id": "61", "status": "online", "activity": "Minecraft"})
    await _post(host, {"type": "presence", "event_id": "p3", "guild_id": guild, "user_id": "62", "status": "online"})
    await _post(host, {"type": "member_join", "event_id": "j1", "guild_id": guild, "user_id": "63", "user_name": "Len"})
    welcome = await _post(host, {"type": "member_join", "event_id": "j2", "guild_id": guild, "user_id": "64",
                                 "user_name": "Kaito", "channel_id": "5"})
    assert [a["type"] for a in welcome] == ["send"]  # the brain welcomed Kaito: not engaged a second time
    pending = host.explain(int(guild))["signals"]["pending"]
    assert [(p["user_id"], p["source"], p["activity"]) for p in pending] == [
        ("61", "activity_started", "Minecraft"), ("62", "came_online", None), ("63", "member_join", None)]
    await _post(host, {"type": "mood", "event_id": "m1", "guild_id": guild, "mood": "shy"})
    assert host.explain(int(guild))["mood"] == "shy"
    await _post(host, _message(guild, "5", 1, content="!mood bubbly"))  # the brain's command: the engine follows
    assert host.explain(int(guild))["mood"] == "bubbly"


async def test_server_config_validation_and_removal(host_factory):
    host = await host_factory()
    guild = _guild()
    with pytest.raises(AutonomousConfigError, match="timezone"):
        host.configure_server({"guild_id": guild, "allowed_channels": ["1"], "timezone": "Mars/Olympus"})
    with pytest.raises(AutonomousConfigError, match="home_channel_id"):
        host.configure_server({"guild_id": guild, "allowed_channels": ["1"], "home_channel_id": "2"})
    assert host.configure_server({"guild_id": guild, "allowed_channels": ["1", "2"], "home_channel_id": "2"})["home_channel_id"] == "2"
    assert host.explain(int(guild)) is not None
    assert host.configure_server({"guild_id": guild, "allowed_channels": []}) == {"guild_id": guild, "tracked": False}
    assert host.explain(int(guild)) is None


async def test_controller_pause_is_safe_when_the_controller_cannot_answer():
    answers: list = [FeatureCheck(True), FeatureCheck(False, None, True), LookupError("no controller")]

    async def check(feature: str) -> FeatureCheck:
        assert feature == "autonomous_engine"
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    pause = ControllerPause(check)
    assert pause() is True  # nothing asked yet: paused
    assert await pause.refresh() is False and pause() is False
    assert await pause.refresh() is True and pause.reason == "voice session"
    assert await pause.refresh() is True and pause.reason.startswith("controller unreachable")
    assert ControllerPause(None)() is False and await ControllerPause(None).refresh() is False


def test_hosting_settings_split_and_validate(tmp_path):
    config, autonomous = load_brain_config({"memory_path": str(tmp_path / "m.sqlite3"), "autonomous": {"tick_interval_s": 2}})
    assert config.memory_path.endswith("m.sqlite3") and autonomous == {"tick_interval_s": 2}
    settings = AutonomousHosting.from_sources("configs/autonomous.yaml", {"tick_interval_s": 2, "startup_cooldown_s": 5})
    assert settings.tick_interval_s == 2 and settings.engine_config().startup_cooldown_s == 5
    assert settings.engine_config().actions.join_conversation.min_speakers == 2  # defaults kept by the merge
    with pytest.raises(AutonomousConfigError, match="join_conversation.min_speakerz: unknown key"):
        AutonomousHosting.from_sources({"actions": {"join_conversation": {"min_speakerz": 3}}}).engine_config()
    with pytest.raises(ValueError, match="tick_interval_s"):
        AutonomousHosting.from_sources({"tick_interval_s": 0})


class RecordingOps:
    """ChatOps that records what would be posted to Discord."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.replied_to: list[int | None] = []  # the message each reply threads onto
        self.done = asyncio.Event()

    async def reply(self, channel_id: int, message_id: int | None, text: str) -> None:
        self.sent.append((channel_id, text))
        self.replied_to.append(message_id)
        self.done.set()

    async def send(self, channel_id: int, text: str) -> None:
        self.sent.append((channel_id, text))
        self.done.set()

    async def react(self, channel_id: int, message_id: int, emoji: str) -> None: ...

    async def timeout_member(self, guild_id: int, user_id: int, duration_s: int, reason: str) -> None: ...

    async def set_nickname(self, guild_id: int, name: str) -> None: ...


async def test_poller_backs_off_on_errors_and_stops_cleanly():
    from tests.conftest import free_port

    graph = GraphClient(f"http://127.0.0.1:{free_port()}", "nobody-listens")  # a closed port
    delays: list[float] = []
    four_failures = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) >= 4:
            four_failures.set()
        await asyncio.sleep(0)

    async def execute(actions: list[dict]) -> None:
        raise AssertionError("nothing to execute")

    poller = AutonomousPoller(graph, execute, wait_s=0, initial_backoff_s=1.0, max_backoff_s=3.0,
                              rng=random.Random(3), sleep=sleep)
    poller.start()
    await asyncio.wait_for(four_failures.wait(), 30)
    await poller.stop()
    assert poller.failures >= 4 and not poller.running
    assert 0.5 <= delays[0] <= 1.0 and delays[1] >= delays[0] and all(d <= 3.0 for d in delays)
    assert delays[3] >= 1.5  # capped at 3 s, jittered down to half at most


# --------------------------------------------------------------------------------------------------
# Through HTTP: the whole graph application with the Brain hosting the engine


@pytest.fixture(scope="module")
def auto_app(ray_cluster, serve_http_port, tmp_path_factory):
    from ray import serve

    from deployments.app import build_app
    from deployments.controller.actor import shutdown_controller

    args = {
        "llm": {"backend": "echo"},
        "tts": {"backend": "espeak"},
        "vc": {"backend": "passthrough"},
        "voice": {"token": TOKEN},
        "controller": {"state_dir": str(tmp_path_factory.mktemp("auto-controller")), "actor_name": CONTROLLER, "lease_s": 60},
        "brain": {
            "memory_path": str(tmp_path_factory.mktemp("auto-brain") / "memory.sqlite3"),
            "heart_flow": QUIET_HEART_FLOW,
            "autonomous": FAST_AUTONOMOUS,
        },
    }
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    try:
        yield f"http://127.0.0.1:{serve_http_port}{PREFIX}"
    finally:
        serve.delete(APP)
        shutdown_controller(CONTROLLER, "miku")


HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def _post_event(http: aiohttp.ClientSession, base: str, event: dict) -> dict:
    async with http.post(f"{base}/v1/events", json=event, headers=HEADERS) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def _configure(http: aiohttp.ClientSession, base: str, guild: str, channels: list[str]) -> None:
    body = await _post_event(http, base, {"type": "server_config", "guild_id": guild, "allowed_channels": channels,
                                          "timezone": "Europe/Berlin"})
    assert body["actions"] == [] and body["autonomous"]["tracked"] is True
    assert body["autonomous"]["allowed_channels"] == channels


async def _explain(http: aiohttp.ClientSession, base: str, guild: str) -> dict:
    async with http.get(f"{base}/v1/autonomous/explain", params={"guild_id": guild}, headers=HEADERS) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def _until(http, base, guild, condition, what: str, attempts: int = 200) -> dict:
    """Re-read explain until `condition(explained)` holds (bounded; the engine ticks every 0.5 s)."""
    for _ in range(attempts):
        explained = await _explain(http, base, guild)
        if condition(explained):
            return explained
        await asyncio.sleep(0.1)
    raise AssertionError(f"never saw {what}: {explained}")


async def _after_ticks(http, base, guild, ticks: int) -> dict:
    start = (await _explain(http, base, guild))["stats"]["ticks"]
    return await _until(http, base, guild, lambda e: e["stats"]["ticks"] >= start + ticks, f"{ticks} more ticks")


async def _take(http: aiohttp.ClientSession, base: str, guild: str, wait: float) -> list[dict]:
    params = {"wait": str(wait), "guild_id": guild}
    async with http.get(f"{base}/v1/autonomous/actions", params=params, headers=HEADERS) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["actions"]


async def _lively(http, base, guild: str, channel: str, count: int = 14) -> None:
    for index in range(count):
        body = await _post_event(http, base, _message(guild, channel, index))
        assert body["actions"] == []  # the brain stays quiet; decisions come from the ticks


async def test_routes_need_the_token_and_validate(auto_app):
    guild = _guild()
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/autonomous/actions", f"/v1/autonomous/explain?guild_id={guild}", "/v1/autonomous/servers"):
            async with http.get(f"{auto_app}{path}") as response:
                assert response.status == 401
        async with http.get(f"{auto_app}/v1/autonomous/explain", params={"guild_id": guild}, headers=HEADERS) as response:
            assert response.status == 404  # not configured
        bad = {"type": "server_config", "guild_id": guild, "allowed_channels": ["1"], "timezone": "Mars/Olympus"}
        async with http.post(f"{auto_app}/v1/events", json=bad, headers=HEADERS) as response:
            assert response.status == 422 and "Mars/Olympus" in await response.text()
        bad = {"type": "server_config", "guild_id": "not-an-id", "allowed_channels": ["1"]}
        async with http.post(f"{auto_app}/v1/events", json=bad, headers=HEADERS) as response:
            assert response.status == 422
            assert ("body", "server_config", "guild_id") in {tuple(d["loc"]) for d in (await response.json())["detail"]}
        async with http.get(f"{auto_app}/v1/autonomous/actions", params={"wait": "600"}, headers=HEADERS) as response:
            assert response.status == 422  # a long-poll is capped


async def test_lively_conversation_in_an_allowed_channel_is_joined(auto_app):
    guild, channel = _guild(), "3101"
    async with aiohttp.ClientSession() as http:
        await _configure(http, auto_app, guild, [channel])
        async with http.get(f"{auto_app}/v1/autonomous/servers", headers=HEADERS) as response:
            assert guild in {s["guild_id"] for s in (await response.json())["servers"]}
        await _lively(http, auto_app, guild, channel)
        actions = await _take(http, auto_app, guild, wait=30)
        assert len(actions) == 1, actions
        action = actions[0]
        assert action["type"] == "send" and action["channel_id"] == channel and action["guild_id"] == guild
        assert action["autonomous"]["action"] == "join_conversation"
        # written by the app's TextLLM deployment (the echo backend speaks its prompt back)
        assert "lively conversation" in action["text"] and action["prompt"]["mood"] == "neutral"
        assert await _take(http, auto_app, guild, wait=0) == []  # taken once
        explained = await _explain(http, auto_app, guild)
        assert explained["recent_decisions"][0]["debug"]["checks"][0]["fired"] is True


async def test_voice_session_pauses_the_engine_and_it_resumes_after(auto_app):
    guild, channel = _guild(), "3201"
    async with aiohttp.ClientSession() as http:
        await _configure(http, auto_app, guild, [channel])
        session = {"guild_id": guild, "voice_channel_id": "3202", "text_channel_id": "3203", "user_id": "3204"}
        async with http.post(f"{auto_app}/v1/sessions", json=session, headers=HEADERS) as response:
            assert response.status == 201, await response.text()
            session_id = (await response.json())["session_id"]
        try:
            await _until(http, auto_app, guild, lambda e: e["gate"] == "paused", "the engine paused")
            await _lively(http, auto_app, guild, channel)
            explained = await _after_ticks(http, auto_app, guild, 4)
            assert explained["gate"] == "paused" and explained["paused_reason"] == "voice session"
            assert explained["checks"][0]["blocked_by"] == []  # she would join: only the session stops her
            assert await _take(http, auto_app, guild, wait=0) == []
            assert explained["recent_decisions"] == []
        finally:
            async with http.delete(f"{auto_app}/v1/sessions/{session_id}", headers=HEADERS) as response:
                assert response.status == 200
        actions = await _take(http, auto_app, guild, wait=30)
        assert [a["autonomous"]["action"] for a in actions] == ["join_conversation"]
        assert actions[0]["channel_id"] == channel


async def test_messages_in_a_channel_not_allowed_produce_nothing(auto_app):
    guild, allowed, elsewhere = _guild(), "3301", "3302"
    async with aiohttp.ClientSession() as http:
        await _configure(http, auto_app, guild, [allowed])
        await _lively(http, auto_app, guild, elsewhere)
        explained = await _after_ticks(http, auto_app, guild, 4)
        assert explained["gate"] == "active"
        assert [c["channel_id"] for c in explained["signals"]["channels"]] in ([], [allowed])
        assert all(c["channel_id"] != elsewhere for c in explained["checks"])
        assert await _take(http, auto_app, guild, wait=0) == []
        assert explained["recent_decisions"] == []


async def test_a_missing_controller_actor_pauses_the_engine(ray_cluster):
    from deployments.brain.deployment import ControllerFeatureCheck

    pause = ControllerPause(ControllerFeatureCheck(f"absent-{uuid.uuid4().hex[:6]}", "miku", missing_allows=False))
    assert await pause.refresh() is True and pause.reason.startswith("controller unreachable (LookupError")


async def test_poller_hands_actions_to_the_client_executor(auto_app):
    guild, channel = _guild(), "3401"
    base = auto_app
    ops = RecordingOps()
    graph = GraphClient(base, TOKEN)
    poller = AutonomousPoller(graph, ActionExecutor(ops, graph).execute, wait_s=5, guild_id=guild)
    try:
        poller.start()
        async with aiohttp.ClientSession() as http:
            await _configure(http, base, guild, [channel])
            await _lively(http, base, guild, channel)
        await asyncio.wait_for(ops.done.wait(), 60)
    finally:
        await poller.stop()
        await graph.close()
    assert not poller.running and poller.executed == 1
    assert {channel_id for channel_id, _ in ops.sent} == {int(channel)}
    assert "lively conversation" in " ".join(text for _, text in ops.sent)
    # it threads onto a (the newest when it decided) human message of the conversation (DeltaBot #10)
    conversation = {int(_message(guild, channel, index)["message_id"]) for index in range(14)}
    assert len(ops.replied_to) == 1 and ops.replied_to[0] in conversation
    refused = AutonomousPoller(GraphClient(base, "wrong-token"), ActionExecutor(ops).execute)
    try:
        with pytest.raises(GraphAuthError):
            await refused.poll_once(wait_s=0)
    finally:
        await refused.stop()


async def test_the_default_graph_app_hosts_the_engine(graph_server):
    """The session's shared app (configs/local.yaml, default engine settings) serves the same routes."""
    guild = _guild()
    base, headers = graph_server.base_url, graph_server.auth_headers
    async with aiohttp.ClientSession(headers=headers) as http:
        config = {"type": "server_config", "guild_id": guild, "allowed_channels": ["3501", "3502"],
                  "home_channel_id": "3502", "timezone": "America/New_York"}
        async with http.post(f"{base}/v1/events", json=config) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["autonomous"]["home_channel_id"] == "3502"
        async with http.get(f"{base}/v1/autonomous/explain", params={"guild_id": guild}) as response:
            explained = await response.json()
        assert explained["settings"]["timezone"] == "America/New_York" and explained["mood"] == "neutral"
        assert explained["gate"] in ("starting_up", "paused", "active")
        assert [c["action"] for c in explained["checks"]] == [
            "join_conversation", "engage_user", "fomo", "break_silence", "share_something"]
        async with http.post(f"{base}/v1/events", json={**config, "allowed_channels": []}) as response:
            assert (await response.json())["autonomous"]["tracked"] is False
        async with http.get(f"{base}/v1/autonomous/explain", params={"guild_id": guild}) as response:
            assert response.status == 404
