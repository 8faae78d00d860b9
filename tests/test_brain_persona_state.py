"""The active persona and mood survive a restart (saved with the brain's state, an owner-only SQLite
file), and switching them is role-gated like the bot's voice commands."""
from __future__ import annotations

import dataclasses
import random
import stat
from pathlib import Path

import pytest

from graph.brain import Brain, BrainConfig

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def msg(n: int, text: str, guild: str | None = "g1", roles: tuple[str, ...] = (), admin: bool = False) -> dict:
    return {"type": "message", "event_id": f"e{n}", "guild_id": guild, "channel_id": f"{guild or 'dm'}-c", "message_id": f"m{n}",
            "author_id": "u1", "author_name": "Ann", "content": text, "timestamp": 1_700_000_000.0 + n,
            "author_roles": list(roles), "author_is_admin": admin}


async def open_brain(path: Path, clock: Clock, **config) -> Brain:
    base = BrainConfig.load(REPO / "configs" / "brain.yaml")
    return await Brain.create(dataclasses.replace(base, memory_path=str(path), **config), clock=clock, rng=random.Random(1))


async def test_persona_and_mood_survive_a_restart_in_an_owner_only_file(tmp_path):
    path, clock = tmp_path / "state" / "brain.sqlite3", Clock()
    brain = await open_brain(path, clock)
    try:
        await brain.handle_event(msg(1, "!modfile switch evil_miku"))
        await brain.handle_event(msg(2, "!mood excited"))
        await brain.handle_event(msg(3, "!modfile switch evil_miku", guild=None))  # the DMs' persona
        await brain.handle_event({"type": "mood", "event_id": "mood-1", "guild_id": "g2", "mood": "melancholy"})
        assert brain.personas.active("g1").name == "evil_miku"
    finally:
        await brain.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    clock.now += 3600
    again = await open_brain(path, clock)
    try:
        assert again.personas.active("g1").name == "evil_miku"
        assert again.personas.active(None).name == "evil_miku"
        assert again.personas.active("g3").name == "miku"  # untouched servers keep the default
        assert again.current_mood("g1").name == "excited" and again.current_mood("g1").since == 1_700_000_000.0
        assert again.current_mood("g2").name == "melancholy"
        # the restored persona is the one the LLM options come from
        assert again.llm_options(again.personas.active("g1")).temperature == 0.95
    finally:
        await again.close()


async def test_a_saved_name_that_no_longer_exists_falls_back_to_the_default(tmp_path):
    path, clock = tmp_path / "brain.sqlite3", Clock()
    brain = await open_brain(path, clock)
    try:
        await brain.memory.save_state("persona", "g1", "deleted_persona", clock.now)
        await brain.memory.save_state("mood", "g1", "deleted_mood", clock.now)
    finally:
        await brain.close()
    again = await open_brain(path, clock)
    try:
        assert again.personas.active("g1").name == "miku" and again.current_mood("g1").name == "neutral"
    finally:
        await again.close()


async def test_switching_persona_and_mood_is_role_gated(tmp_path):
    clock = Clock()
    brain = await open_brain(tmp_path / "b.sqlite3", clock, command_roles={"persona": ("Persona Master",), "mood": ("DJ",)})
    try:
        refused = (await brain.handle_event(msg(1, "!modfile switch evil_miku", roles=("member",))))["actions"]
        assert [a["type"] for a in refused] == ["reply"]
        assert refused[0]["text"] == "❌ You don't have permission to switch my persona: it needs one of these roles: **Persona Master**."
        assert brain.personas.active("g1").name == "miku"
        refused = (await brain.handle_event(msg(2, "!mood excited", roles=("Persona Master",))))["actions"]
        assert "change my mood" in refused[0]["text"] and brain.current_mood("g1").name == "neutral"
        # reading is never gated
        assert "Persona **Hatsune Miku**" in (await brain.handle_event(msg(3, "!modfile info")))["actions"][0]["text"]
        assert "I'm feeling neutral" in (await brain.handle_event(msg(4, "!mood")))["actions"][0]["text"]
        # the role (any case), or an admin, may
        allowed = (await brain.handle_event(msg(5, "!modfile switch evil_miku", roles=("persona master",))))["actions"]
        assert allowed[0]["type"] == "switch_persona"
        assert "excited" in (await brain.handle_event(msg(6, "!mood excited", admin=True)))["actions"][0]["text"]
        # a member's mood event is gated too; one without an author (the client itself) is not
        member = {"type": "mood", "event_id": "mv1", "guild_id": "g1", "channel_id": "g1-c", "mood": "sleepy", "author_id": "u1"}
        assert "permission" in (await brain.handle_event(member))["actions"][0]["text"]
        assert brain.current_mood("g1").name == "excited"
        await brain.handle_event({"type": "mood", "event_id": "mv2", "guild_id": "g1", "mood": "sleepy"})
        assert brain.current_mood("g1").name == "sleepy"
    finally:
        await brain.close()


async def test_admins_always_allowed_can_be_turned_off_and_bad_config_is_clear(tmp_path):
    brain = await open_brain(tmp_path / "b.sqlite3", Clock(), command_roles={"persona": ("Mods",), "mood": ()}, admins_always_allowed=False)
    try:
        refused = (await brain.handle_event(msg(1, "!modfile switch evil_miku", admin=True)))["actions"]
        assert "permission" in refused[0]["text"]
        assert "Okay" in (await brain.handle_event(msg(2, "!mood excited")))["actions"][0]["text"]  # mood: open to all
    finally:
        await brain.close()
    with pytest.raises(ValueError, match="command_roles: unknown commands"):
        BrainConfig.from_mapping({"command_roles": {"draw": ["x"]}})
    with pytest.raises(ValueError, match="list of role names"):
        BrainConfig.from_mapping({"command_roles": {"mood": "DJ"}})
    assert BrainConfig.from_mapping({"command_roles": {"mood": ["DJ"]}}).command_roles == {"persona": (), "mood": ("DJ",)}
