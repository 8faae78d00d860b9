"""The Brain Serve deployment behind `POST /v1/events`: auth, 422 validation, real actions over HTTP."""
from __future__ import annotations

import aiohttp
import pytest
from fastapi import FastAPI
from ray import serve

from deployments import auth, http_guard
from deployments.brain import routes as brain_routes
from deployments.brain.deployment import Brain

APP = "brain-test"
PREFIX = "/brain-test"
TOKEN = "brain-test-token-0123"

events_app = FastAPI()
http_guard.install(events_app)  # as the ingress app does
events_app.include_router(brain_routes.router)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(events_app)
class EventsIngress:
    """A minimal ingress for this test: the lead's VoiceGraph includes the same router."""

    def __init__(self, brain_handle):
        auth.configure(TOKEN)
        brain_routes.configure(app_name=APP)
        self.brain = brain_handle


@pytest.fixture(scope="module")
def brain_app(ray_cluster, serve_http_port, tmp_path_factory):
    memory = tmp_path_factory.mktemp("brain") / "brain.sqlite3"
    brain = Brain.bind(config={"memory_path": str(memory)}, llm={"backend": "echo"}, controller=False, tick_interval_s=1.0)
    serve.run(EventsIngress.bind(brain), name=APP, route_prefix=PREFIX)
    yield f"http://127.0.0.1:{serve_http_port}{PREFIX}"
    serve.delete(APP)


def message(**extra) -> dict:
    body = {"type": "message", "event_id": "e1", "guild_id": "g1", "channel_id": "c1", "message_id": "m1", "author_id": "u1",
            "author_name": "Ann", "author_is_bot": False, "content": "Miku, what is your favourite song?", "mentions_miku": True,
            "reply_to_miku": False, "reply_to_message_id": None, "attachments": [], "timestamp": "2024-05-01T18:00:00Z"}
    body.update(extra)
    return body


async def test_events_route_end_to_end(brain_app):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{brain_app}/v1/events", json=message()) as response:
            assert response.status == 401
        async with http.post(f"{brain_app}/v1/events", json=message(channel_id=None, timestamp="soon"), headers=headers) as response:
            assert response.status == 422
            detail = (await response.json())["detail"]
            locs = {tuple(d["loc"]) for d in detail}
            assert ("body", "message", "channel_id") in locs and ("body", "message", "timestamp") in locs
        async with http.post(f"{brain_app}/v1/events", json={"type": "wave", "event_id": "x"}, headers=headers) as response:
            assert response.status == 422
        async with http.post(f"{brain_app}/v1/events", json=message(), headers=headers) as response:
            assert response.status == 200
            actions = (await response.json())["actions"]
        reply = actions[0]
        assert reply["type"] == "reply" and reply["channel_id"] == "c1" and reply["reply_to_message_id"] == "m1"
        assert "favourite song" in reply["text"]  # the echo LLM backend speaks the prompt back: a real backend call
        assert reply["prompt"]["persona"] == "miku" and reply["prompt"]["mood"] == "neutral"
        async with http.post(f"{brain_app}/v1/events", json=message(event_id="e1-resent"), headers=headers) as response:
            assert (await response.json()) == {"actions": []}  # same message after a reconnect: decided once
        async with http.post(f"{brain_app}/v1/events", json={"type": "mood", "event_id": "mood-1", "guild_id": "g1", "mood": "sleepy"}, headers=headers) as response:
            assert response.status == 200
    handle = serve.get_deployment_handle("Brain", app_name=APP)
    assert (await handle.current_mood.remote("g1"))["name"] == "sleepy"
    prompt = await handle.voice_prompt.remote("g1", "c1", "u1", "Ann", "sing!")
    assert prompt["mood"] == "sleepy" and len(prompt["history"]) <= 4 and prompt["user"] == "Ann: sing!"
    snapshot = await handle.snapshot.remote()
    assert snapshot["stats"]["replies"] == 1 and snapshot["stats"]["duplicates"] == 1


async def test_blackouts_from_the_real_controller_actor(ray_cluster, tmp_path):
    """The deployment's controller-backed check_feature against a real FeatureController actor."""
    import dataclasses
    import random
    import uuid

    from deployments.brain.deployment import ControllerFeatureCheck
    from deployments.controller.actor import (
        get_or_create_controller,
        shutdown_controller,
    )
    from graph.brain import Brain as BrainLogic
    from graph.brain import BrainConfig
    from graph.controller.config import ControllerConfig
    from graph.controller.features import IMAGE_MESSAGE
    from graph.controller.sessions import SessionRequest

    name = f"FeatureController-brain-{uuid.uuid4().hex[:8]}"
    actor = get_or_create_controller(ControllerConfig(state_dir=str(tmp_path / "controller"), lease_s=60), name=name)
    check = ControllerFeatureCheck(name, "miku")
    config = dataclasses.replace(BrainConfig.from_mapping({}), memory_path=str(tmp_path / "brain.sqlite3"))
    brain = await BrainLogic.create(config, check_feature=check, rng=random.Random(1))
    try:
        assert (await check("image_generation")).allowed
        started = await actor.start_session.remote(SessionRequest(guild_id="g1", voice_channel_id="v", text_channel_id="c1", user_id="u1"))
        draw = (await brain.handle_event(message(message_id="d1", event_id="d1", content="Miku draw a leek")))["actions"]
        assert draw == [{"type": "blocked", "channel_id": "c1", "reply_to_message_id": "d1", "feature": "image_generation", "message": IMAGE_MESSAGE}]
        held = (await brain.handle_event(message(message_id="q1", event_id="q1")))["actions"]
        assert held[0]["type"] == "queue" and held[0]["message"] == config.queued_message
        await actor.end_session.remote(started.session.session_id)
        answered = (await brain.handle_event(message(message_id="q1", event_id="q1-replayed")))["actions"]
        assert answered[0]["type"] == "reply" and answered[0]["reply_to_message_id"] == "q1"
    finally:
        await brain.close()
        shutdown_controller(name, "miku")
    gone = ControllerFeatureCheck(name + "-absent", "miku")
    assert (await gone("image_generation")).allowed  # no controller running: nothing is blacked out


async def test_nan_and_oversized_bodies_are_4xx_not_500(brain_app):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        for body, wanted in (('{"type": "mood", "event_id": "n", "guild_id": "1", "mood": NaN}', 422),
                             ('{"type": "mood", "event_id": "n", "guild_id": "1", "mood": 1e400}', 422),
                             ("[" * 5000 + "]" * 5000, 422),
                             ('{"type": "message", "content": "' + "a" * (http_guard.MAX_BODY_BYTES + 1) + '"}', 413)):
            async with http.post(f"{brain_app}/v1/events", data=body, headers=headers) as response:
                assert response.status == wanted, await response.text()
                assert isinstance((await response.json())["detail"], str)


async def test_a_validation_error_echoing_a_non_finite_input_can_be_sent():
    """FastAPI's own 422 holds the bad input; with NaN in it the answer used to fail as a 500."""
    import json

    from fastapi.exceptions import RequestValidationError

    error = RequestValidationError([{"type": "string_type", "loc": ("body", "mood"), "msg": "Input should be a valid string",
                                     "input": float("nan")}, {"type": "x", "loc": ("body",), "msg": "m", "input": "b" * 10_000}])
    response = await http_guard.validation_error_handler(None, error)
    body = json.loads(response.body)
    assert response.status_code == 422 and body["detail"][0]["input"] == "nan" and len(body["detail"][1]["input"]) < 300


def test_large_actions_are_bounded_oldest_history_first():
    import json

    turn = ["user", "x" * 100_000]
    action = {"type": "reply", "text": "short", "prompt": {"system": "s", "history": [turn] * 10, "user": "u"}}
    bounded = brain_routes.bounded_action(action)
    assert bounded["truncated"] and bounded["text"] == "short" and 0 < len(bounded["prompt"]["history"]) < 10
    assert len(json.dumps(bounded).encode()) <= brain_routes.MAX_ACTION_BYTES
    huge = {"type": "send", "text": "y" * 2**20, "prompt": {"system": "z" * 2**20, "history": [], "user": "u"}}
    assert len(json.dumps(brain_routes.bounded_action(huge)).encode()) <= brain_routes.MAX_ACTION_BYTES
    small = {"type": "react", "channel_id": "c1", "emoji": "x"}
    assert brain_routes.bounded_action(small) is small  # small: untouched
    answer = brain_routes.bounded_answer({"actions": [action, huge], "other": 1})
    assert answer["other"] == 1 and all(a["truncated"] for a in answer["actions"])


async def test_mood_route_and_bipolar_mode_through_the_deployment(brain_app):
    """`GET /v1/mood` (the bot's profile picture follows it) and an argument written by the deployment's LLM."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{brain_app}/v1/mood?guild_id=77") as response:
            assert response.status == 401
        async with http.get(f"{brain_app}/v1/mood?guild_id=not-a-server", headers=headers) as response:
            assert response.status == 422
        async with http.post(f"{brain_app}/v1/events", headers=headers, json={
                "type": "mood", "event_id": "mood-77", "guild_id": "77", "mood": "angry"}) as response:
            assert response.status == 200
        async with http.get(f"{brain_app}/v1/mood?guild_id=77", headers=headers) as response:
            assert await response.json() == {"guild_id": "77", "persona": "miku", "display_name": "Hatsune Miku",
                                             "mood": "angry"}

        async def post(content: str, n: int, **extra) -> list[dict]:
            body = message(event_id=f"bp{n}", message_id=f"bp{n}", channel_id="c77", guild_id="77",
                           content=content, mentions_miku=False, **extra)
            async with http.post(f"{brain_app}/v1/events", json=body, headers=headers) as response:
                assert response.status == 200
                return (await response.json())["actions"]

        turned_on = await post("!bipolar on", 1, author_can_moderate=True)
        assert [a["type"] for a in turned_on] == ["reply"] and "on in this channel" in turned_on[0]["text"]
        [argument] = await post("!argue leeks or onions", 2)
    assert argument["type"] == "argument" and len(argument["lines"]) == 6
    assert [line["persona"] for line in argument["lines"][:2]] == ["miku", "evil_miku"]
    assert "leeks or onions" in argument["lines"][0]["text"]  # the echo backend wrote it from the prompt
    snapshot = await serve.get_deployment_handle("Brain", app_name=APP).snapshot.remote()
    assert snapshot["bipolar"]["channels"] == ["c77"] and snapshot["bipolar"]["stats"]["arguments"] == 1
