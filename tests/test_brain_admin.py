"""The admin panel's operations on the brain (graph.brain.admin.BrainAdmin), with the real brain, memory
and autonomous host in process: conversations, search, deleting a user's messages, persona and mood
switches, modelfile validation, pausing the engine per server."""
from __future__ import annotations

import dataclasses
import random
import time

import pytest

from deployments.brain.deployment import AutonomousHost, AutonomousHosting, ControllerPause
from graph.brain.admin import BrainAdmin
from graph.brain.brain import Brain as BrainLogic
from graph.brain.brain import BrainConfig


@pytest.fixture
async def admin(tmp_path):
    config = dataclasses.replace(BrainConfig.from_mapping({}), memory_path=str(tmp_path / "memory.sqlite3"))
    brain = await BrainLogic.create(config, clock=time.time, rng=random.Random(1))
    host = AutonomousHost(brain, AutonomousHosting.from_sources({"seed": 1}), pause=ControllerPause(None))
    yield BrainAdmin(brain, host)
    await brain.close()


def message(index: int, author: str, content: str, channel: str = "2001") -> dict:
    return {"type": "message", "event_id": f"e{index}", "guild_id": "1001", "channel_id": channel,
            "message_id": f"m{index}", "author_id": author, "author_name": f"user{author}", "content": content,
            "timestamp": time.time() - 100 + index}


async def test_conversations_search_and_deleting_a_users_messages(admin):
    for index, (author, text) in enumerate([("11", "hello there"), ("12", "100% sure_thing"), ("11", "bye now")]):
        await admin.brain.handle_event(message(index, author, text))
    await admin.brain.handle_event(message(9, "12", "elsewhere", channel="2002"))
    answer = await admin.call("conversations", {"channel_id": "2001"})
    assert [m["content"] for m in answer["messages"]] == ["hello there", "100% sure_thing", "bye now"]
    assert {c["channel_id"]: c["messages"] for c in answer["channels"]} == {"2001": 3, "2002": 1}
    # LIKE wildcards in the search are literal characters
    assert [m["content"] for m in (await admin.call("conversations", {"query": "0% s"}))["messages"]] == ["100% sure_thing"]
    assert (await admin.call("conversations", {"query": "_"}))["messages"][0]["content"] == "100% sure_thing"
    assert (await admin.call("conversations", {"query": "x" * 201}))["status"] == 422
    assert (await admin.call("delete_user_messages", {"user_id": "12"})) == {"user_id": "12", "deleted": 2}
    left = (await admin.call("conversations", {"channel_id": "2001"}))["messages"]
    assert [m["author_id"] for m in left] == ["11", "11"]
    assert (await admin.call("delete_user_messages", {"user_id": "12; DROP"}))["status"] == 422


async def test_persona_and_mood_switches_are_what_the_brain_then_uses(admin):
    switched = await admin.call("switch_persona", {"guild_id": "1001", "persona": "evil_miku"})
    assert switched["persona"] == "evil_miku"
    prompt = await admin.brain.voice_prompt(guild_id="1001", channel_id=None, user_id="1", user_name="u", text="hi")
    assert prompt.persona == "evil_miku"
    assert (await admin.call("switch_persona", {"guild_id": "1001", "persona": "nobody"}))["status"] == 404
    assert (await admin.call("set_mood", {"guild_id": "1001", "mood": "sleepy"}))["mood"] == "sleepy"
    assert admin.brain.current_mood("1001").name == "sleepy"
    assert (await admin.call("set_mood", {"guild_id": "1001", "mood": "furious"}))["status"] == 404
    view = await admin.call("personas", {})
    assert {"guild_id": "1001", "persona": "evil_miku", "mood": "sleepy"} in view["servers"]
    assert {p["name"] for p in view["personas"]} >= {"miku", "evil_miku"}
    assert (await admin.call("no_such_op", {}))["status"] == 404


async def test_modelfile_validation_names_the_problem(admin):
    good = await admin.call("validate_modelfile", {"text": 'NAME tester\nFROM llama3\nSYSTEM """Be nice."""\nPARAMETER temperature 0.5'})
    assert good["ok"] and good["persona"]["name"] == "tester"
    bad = await admin.call("validate_modelfile", {"text": "NAME tester\nFROM llama3\nSYSTEM hi\nPARAMETER temperature 9"})
    assert not bad["ok"] and "temperature" in bad["error"] and bad["error"].startswith("<panel>:4:")


async def test_autonomous_engine_pauses_and_resumes_per_server(admin):
    admin.host.configure_server({"guild_id": "1001", "allowed_channels": ["2001"], "timezone": "UTC"})
    admin.host.configure_server({"guild_id": "1002", "allowed_channels": ["2002"], "timezone": "UTC"})
    paused = await admin.call("set_autonomous_paused", {"guild_id": "1001", "paused": True})
    assert paused["enabled"] is False
    view = {s["guild_id"]: s for s in (await admin.call("autonomous", {}))["servers"]}
    assert view["1001"]["settings"]["enabled"] is False and view["1002"]["settings"]["enabled"] is True
    assert "signals" in view["1001"] and "checks" in view["1001"]
    assert (await admin.call("set_autonomous_paused", {"guild_id": "1001", "paused": False}))["enabled"] is True
    assert (await admin.call("set_autonomous_paused", {"guild_id": "999", "paused": True}))["status"] == 404
    bad_zone = await admin.call("configure_server", {"settings": {"guild_id": "1001", "allowed_channels": ["2001"], "timezone": "Mars/Base"}})
    assert bad_zone["status"] == 422
