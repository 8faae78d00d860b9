"""Conversation memory (aiosqlite): context queries, retention, once-only decisions, index use;
personas (modelfile validation), moods per server and the prompt builder."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from graph.brain.memory import DEFERRED, MemoryStore, StoredMessage, importance_score
from graph.brain.moods import MoodScheduler, mood_scope
from graph.brain.personas import (
    PersonaError,
    PersonaLibrary,
    load_personas,
    parse_modelfile,
)
from graph.brain.prompts import ChatContext, PromptBuilder

REPO = Path(__file__).resolve().parents[1]
DAY = 86400.0


def msg(i: int, ts: float, channel: str = "c1", author: str = "u1", content: str = "", **extra) -> StoredMessage:
    return StoredMessage(f"m{i}", "g", channel, author, f"name-{author}", extra.get("is_bot", False), extra.get("is_self", False), content or f"text {i}", ts)


@pytest.fixture
async def memory(tmp_path):
    store = await MemoryStore.open(tmp_path / "memory.sqlite3")
    yield store
    await store.close()


async def test_channel_and_user_context(memory):
    now = 100 * DAY
    await memory.add_many(msg(i, now - 3600 * 10 + i * 60, channel="c1" if i % 2 else "c2", author=f"u{i % 3}") for i in range(100))
    ctx = await memory.channel_context("c1", now=now, hours=24, limit=5)
    assert [m.message_id for m in ctx] == ["m91", "m93", "m95", "m97", "m99"]  # last 5, oldest first
    recent = await memory.channel_context("c1", now=now - 3600 * 10 + 10 * 60, hours=0.1, limit=50)
    assert {m.message_id for m in recent} == {"m5", "m7", "m9"}  # within the last 6 minutes only
    user = await memory.user_context("u1", now=now, days=1, limit=3)
    assert [m.author_id for m in user] == ["u1"] * 3 and [m.message_id for m in user] == ["m91", "m94", "m97"]
    assert await memory.add(msg(5, now)) is False  # duplicate message id is not stored twice
    assert await memory.count() == 100


async def test_retention_deletes_only_old_messages_and_decisions(memory):
    now = 100 * DAY
    await memory.add_many([msg(1, now - 31 * DAY), msg(2, now - 29 * DAY), msg(3, now - 1)])
    await memory.claim_decision("m1", "decided", now - 31 * DAY)
    await memory.claim_decision("m3", "decided", now - 1)
    assert await memory.prune(now, 30 * DAY) == 1
    assert [m.message_id for m in await memory.channel_context("c1", now=now, hours=24 * 60, limit=10)] == ["m2", "m3"]
    assert await memory.decision("m1") is None and await memory.decision("m3") == "decided"


async def test_decisions_are_claimed_once_unless_deferred(memory):
    assert await memory.claim_decision("m1", "decided", 1.0) is True
    assert await memory.claim_decision("m1", "decided", 2.0) is False
    await memory.defer_decision("m1")
    assert await memory.decision("m1") == DEFERRED
    assert await memory.claim_decision("m1", "decided", 3.0) is True  # the replay after a voice session
    assert await memory.claim_decision("m1", "decided", 4.0) is False
    stored, claimed = await memory.record_incoming(msg(9, 5.0), claim="decided")
    assert (stored, claimed) == (True, True)
    assert await memory.record_incoming(msg(9, 5.0), claim="decided") == (False, False)


async def test_decisions_survive_reopening(tmp_path):
    path = tmp_path / "m.sqlite3"
    first = await MemoryStore.open(path)
    await first.record_incoming(msg(1, 1.0), claim="decided")
    await first.close()
    second = await MemoryStore.open(path)
    try:
        assert await second.record_incoming(msg(1, 1.0), claim="decided") == (False, False)
    finally:
        await second.close()


async def test_context_queries_use_indexes(memory):
    plan = " ".join(await memory.query_plan("SELECT * FROM messages WHERE channel_id = ? AND ts >= ? AND ts <= ? ORDER BY ts DESC LIMIT 5", ("c", 0, 1)))
    assert "idx_messages_channel_ts" in plan and "TEMP B-TREE" not in plan
    plan = " ".join(await memory.query_plan("SELECT * FROM messages WHERE author_id = ? AND ts >= ? AND ts <= ? ORDER BY ts DESC LIMIT 5", ("u", 0, 1)))
    assert "idx_messages_author_ts" in plan and "TEMP B-TREE" not in plan


def test_importance_score():
    plain = importance_score("ok", addressed=False)
    assert importance_score("hey miku what do you think?", addressed=True) > importance_score("what do you think?", addressed=False) > plain
    assert 0.0 <= importance_score("x" * 5000 + "?", addressed=True, attachments=3) <= 1.0


# -- personas ---------------------------------------------------------------------------------------

GOOD = '''# test persona
NAME tester
FROM some-model:7b
PARAMETER temperature 0.7
PARAMETER stop "</s>"
EMOJI 🎵 ✨
INTERESTS music, Leeks
SYSTEM """
Line one.
Line two.
"""
'''


def test_parse_modelfile():
    persona = parse_modelfile(GOOD, "t.modelfile")
    assert persona.name == "tester" and persona.base_model == "some-model:7b"
    assert persona.system_prompt == "Line one.\nLine two."
    assert persona.parameters == {"temperature": 0.7} and persona.stop == ("</s>",)
    assert persona.emoji == ("🎵", "✨") and persona.interests == ("music", "leeks")


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD.replace("FROM some-model:7b\n", ""), r"t\.modelfile: missing required FROM"),
        (GOOD.replace("NAME tester", "NAME Bad Name!"), r"t\.modelfile:2: NAME 'Bad Name!' must be"),
        (GOOD.replace("temperature 0.7", "temperature hot"), r"t\.modelfile:4: PARAMETER temperature must be a number in \[0, 2\], got 'hot'"),
        (GOOD.replace("temperature 0.7", "temperature 3"), r":4: PARAMETER temperature must be"),
        (GOOD.replace("temperature 0.7", "warmth 1"), r":4: unknown PARAMETER 'warmth'"),
        (GOOD.replace("EMOJI", "EMOTICON"), r":6: unknown instruction 'EMOTICON'"),
        (GOOD + "NAME again\n", r"NAME given twice \(first on line 2\)"),
        (GOOD.replace('Line two.\n"""', "Line two."), r':8: SYSTEM opens a """ block that is never closed'),
        (GOOD.replace("FROM some-model:7b", "FROM"), r":3: FROM needs a value"),
    ],
)
def test_persona_validation_errors(text, message):
    with pytest.raises(PersonaError, match=message):
        parse_modelfile(text, "t.modelfile")


def test_project_personas_load_and_library(tmp_path):
    personas = load_personas(REPO / "configs" / "personas")
    assert {"miku", "evil_miku"} <= set(personas)
    assert personas["evil_miku"].feature == "bipolar_mode"
    library = PersonaLibrary(personas, "miku")
    library.switch("g1", "Evil_Miku")
    assert library.active("g1").name == "evil_miku" and library.active("g2").name == "miku"
    with pytest.raises(KeyError):
        library.switch("g1", "nobody")
    with pytest.raises(PersonaError, match="default persona 'nobody'"):
        PersonaLibrary(personas, "nobody")
    (tmp_path / "a.modelfile").write_text(GOOD)
    (tmp_path / "b.modelfile").write_text(GOOD)
    with pytest.raises(PersonaError, match="also defined in"):
        load_personas(tmp_path)
    with pytest.raises(PersonaError, match="does not exist"):
        load_personas(tmp_path / "missing")


# -- moods and prompts --------------------------------------------------------------------------


def test_moods_per_scope_rotation_and_command():
    now = [0.0]
    moods = MoodScheduler({"neutral": "calm", "bubbly": "cheerful", "sleepy": "tired", "asleep": "zzz"}, default="neutral",
                          rotation_interval_s=(100, 200), exclude_from_rotation=["asleep"], clock=lambda: now[0], rng=random.Random(1))
    assert moods.current("g1").name == "neutral" and moods.current(mood_scope(None, "dm1")).name == "neutral"
    moods.set("g1", "Sleepy")
    assert moods.current("g1").name == "sleepy" and moods.current("g2").name == "neutral"
    with pytest.raises(KeyError):
        moods.set("g1", "furious")
    now[0] = 99.0
    assert moods.rotate_due() == []
    seen = set()
    for step in range(1, 40):
        now[0] = step * 201.0
        for scope, state in moods.rotate_due():
            seen.add(state.name)
    assert seen and "asleep" not in seen
    assert moods.current("g1").name != "asleep"
    assert mood_scope("g1", "c") == "g1" and mood_scope(None, "c") == "dm:c"


def test_prompt_builder_text_and_voice():
    persona = parse_modelfile(GOOD)
    from graph.brain.moods import MoodState

    mood = MoodState("bubbly", "You feel bubbly.", 0.0)
    history = [StoredMessage(f"m{i}", "g", "c", "u", "Ann", False, i % 3 == 0, f"line {i}", float(i)) for i in range(10)]
    builder = PromptBuilder(text_history=8)
    text = builder.build(persona=persona, mood=mood, chat=ChatContext(guild_name="S", channel_name="general"), history=history, user_name="Ann", user_text="hi Miku")
    assert "You feel bubbly." in text.system and "#general" in text.system and text.system.startswith("Line one.")
    assert len(text.history) == 8 and text.user == "Ann: hi Miku" and text.mood == "bubbly"
    assert text.history[-1] == ("assistant", "line 9") and text.history[-2] == ("user", "Ann: line 8")
    voice = builder.build(persona=persona, mood=mood, chat=ChatContext(voice=True), history=history, user_name="Ann", user_text="hi")
    assert len(voice.history) == 4 and "voice channel" in voice.system and "You feel bubbly." in voice.system
    assert voice.to_dict()["history"][0] == ["assistant", "line 6"] and voice.history[1] == ("user", "Ann: line 7")
