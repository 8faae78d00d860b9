"""What the admin panel may see and change in the brain: personas, moods, memory, the autonomous engine.

One object over a running `graph.brain.brain.Brain` (and, when the engine runs, its autonomous host), so
the Brain deployment exposes a single `admin(op, args)` entry with an allow-list of operations instead
of a method per panel button. Answers are plain JSON-ready dicts; a refused change comes back as
`{"error": message, "status": http_status}` (errors as data: they cross Ray and reach the browser).
Nothing here imports Ray.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

from graph.brain.memory import StoredMessage
from graph.brain.moods import mood_scope
from graph.brain.personas import Persona, PersonaError, parse_modelfile

SNOWFLAKE = re.compile(r"^[0-9]{1,20}$")
MAX_SEARCH_CHARS = 200
MAX_ROWS = 200
MAX_MODELFILE_CHARS = 64 * 1024


class AutonomousView(Protocol):
    def servers(self) -> list[dict[str, Any]]: ...
    def explain(self, guild_id: int) -> dict[str, Any] | None: ...
    def configure_server(self, data: Mapping[str, Any]) -> dict[str, Any]: ...


def refused(message: str, status: int = 422) -> dict[str, Any]:
    return {"error": message, "status": status}


def persona_json(persona: Persona) -> dict[str, Any]:
    return {
        "name": persona.name, "display_name": persona.display_name or persona.name,
        "description": persona.description, "base_model": persona.base_model,
        "parameters": dict(persona.parameters), "system_prompt": persona.system_prompt,
        "emoji": list(persona.emoji), "interests": list(persona.interests), "feature": persona.feature,
        "source": persona.source,
    }


def message_json(message: StoredMessage) -> dict[str, Any]:
    return {
        "message_id": message.message_id, "guild_id": message.guild_id, "channel_id": message.channel_id,
        "author_id": message.author_id, "author_name": message.author_name, "is_bot": message.is_bot,
        "is_self": message.is_self, "content": message.content, "ts": message.ts,
    }


def validate_modelfile(text: str) -> dict[str, Any]:
    """Parse a modelfile as the brain would load it: `{"ok": true, "persona": ...}` or the error with its line."""
    if len(text) > MAX_MODELFILE_CHARS:
        return {"ok": False, "error": f"a modelfile is at most {MAX_MODELFILE_CHARS} characters"}
    try:
        return {"ok": True, "persona": persona_json(parse_modelfile(text, "<panel>"))}
    except PersonaError as error:
        return {"ok": False, "error": str(error)}


def _snowflake(name: str, value: Any) -> str | None:
    text = str(value or "").strip()
    return text if SNOWFLAKE.match(text) else None


class BrainAdmin:
    OPS = ("personas", "switch_persona", "set_mood", "conversations", "delete_user_messages",
           "autonomous", "set_autonomous_paused", "configure_server", "validate_modelfile")

    def __init__(self, brain: Any, autonomous: AutonomousView | None = None):
        self.brain = brain
        self.host = autonomous

    async def call(self, op: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
        if op not in self.OPS:
            return refused(f"unknown admin operation {op!r}", 404)
        try:
            return await getattr(self, op)(**dict(args or {}))
        except TypeError as error:  # wrong or missing arguments
            return refused(f"{op}: {error}")

    # ---- personas and moods ----------------------------------------------------------------------

    async def _known_guilds(self) -> list[str]:
        guilds = {g for g in self.brain.personas.assignments() if g}
        guilds |= {scope for scope in getattr(self.brain.moods, "_current", {}) if not scope.startswith("dm:")}
        if self.host is not None:
            guilds |= {s["guild_id"] for s in self.host.servers()}
        guilds |= {c["guild_id"] for c in await self.brain.memory.channels(MAX_ROWS) if c["guild_id"]}
        return sorted(guilds)

    async def personas(self) -> dict[str, Any]:
        library, moods = self.brain.personas, self.brain.moods
        guilds = await self._known_guilds()
        return {
            "personas": [persona_json(library.personas[name]) for name in library.names()],
            "default": library.default,
            "moods": [{"name": name, "description": moods.descriptions[name]} for name in moods.names()],
            "default_mood": moods.default,
            "servers": [{"guild_id": g, "persona": library.active(g).name, "mood": moods.current(mood_scope(g)).name}
                        for g in guilds],
        }

    async def switch_persona(self, guild_id: str, persona: str) -> dict[str, Any]:
        guild = _snowflake("guild_id", guild_id)
        if guild is None:
            return refused("guild_id must be a Discord server id (digits)")
        chosen = self.brain.personas.get(str(persona or ""))
        if chosen is None:
            return refused(f"no persona {persona!r}; loaded: {', '.join(self.brain.personas.names())}", 404)
        if chosen.feature:  # e.g. bipolar mode, which a voice session blacks out
            verdict = await self.brain.check_feature(chosen.feature)
            if not verdict.allowed:
                return refused(verdict.message or f"{chosen.feature} is paused right now", 409)
        self.brain.personas.switch(guild, chosen.name)
        return {"guild_id": guild, "persona": chosen.name, "display_name": chosen.display_name or chosen.name}

    async def set_mood(self, guild_id: str, mood: str) -> dict[str, Any]:
        guild = _snowflake("guild_id", guild_id)
        if guild is None:
            return refused("guild_id must be a Discord server id (digits)")
        try:
            state = self.brain.moods.set(mood_scope(guild), str(mood or ""))
        except KeyError:
            return refused(f"no mood {mood!r}; moods: {', '.join(self.brain.moods.names())}", 404)
        return {"guild_id": guild, "mood": state.name, "description": state.description}

    async def validate_modelfile(self, text: str) -> dict[str, Any]:
        return validate_modelfile(str(text))

    # ---- memory ----------------------------------------------------------------------------------

    async def conversations(self, channel_id: str | None = None, query: str | None = None,
                            limit: int = 50) -> dict[str, Any]:
        limit = max(1, min(int(limit), MAX_ROWS))
        memory = self.brain.memory
        answer: dict[str, Any] = {"channels": await memory.channels(MAX_ROWS)}
        if query:
            if len(query) > MAX_SEARCH_CHARS:
                return refused(f"a search is at most {MAX_SEARCH_CHARS} characters")
            answer["messages"] = [message_json(m) for m in await memory.search(query, limit)]
        elif channel_id:
            channel = _snowflake("channel_id", channel_id)
            if channel is None:
                return refused("channel_id must be a Discord channel id (digits)")
            answer["messages"] = [message_json(m) for m in await memory.recent(channel, limit)]
        else:
            answer["messages"] = []
        return answer

    async def delete_user_messages(self, user_id: str) -> dict[str, Any]:
        user = _snowflake("user_id", user_id)
        if user is None:
            return refused("user_id must be a Discord user id (digits)")
        return {"user_id": user, "deleted": await self.brain.memory.delete_author(user)}

    # ---- the autonomous engine -------------------------------------------------------------------

    async def autonomous(self) -> dict[str, Any]:
        if self.host is None:
            return {"enabled": False, "servers": []}
        servers = []
        for settings in self.host.servers():
            servers.append(self.host.explain(int(settings["guild_id"])) or {"settings": settings})
        return {"enabled": True, "servers": servers}

    async def set_autonomous_paused(self, guild_id: str, paused: bool) -> dict[str, Any]:
        if self.host is None:
            return refused("the autonomous engine is disabled in this graph", 409)
        guild = _snowflake("guild_id", guild_id)
        current = next((s for s in self.host.servers() if s["guild_id"] == guild), None)
        if current is None:
            return refused(f"server {guild_id!r} is not configured for the autonomous engine", 404)
        return self.host.configure_server({**current, "enabled": not bool(paused)})

    async def configure_server(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        if self.host is None:
            return refused("the autonomous engine is disabled in this graph", 409)
        try:
            return self.host.configure_server(dict(settings))
        except ValueError as error:  # AutonomousConfigError: a bad time zone, channel, ...
            return refused(str(error))
