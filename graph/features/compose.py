"""A message Miku writes on her own from an instruction, in the active persona's voice and current mood.

Scheduled events with a `prompt` ask for it (`POST /v1/compose`, `Brain.compose`); the prompt is built
like an autonomous message's: the persona's system prompt, the server's mood, the channel's recent
messages, and the instruction as the turn. The brain's own LLM call (timeout, failure counted and
logged) writes it; None means nothing was written and the caller falls back.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from graph.brain.events import Prompt
from graph.brain.prompts import ChatContext

log = logging.getLogger(__name__)

MAX_INSTRUCTION_CHARS = 2000
SCHEDULED_NOTE = ("Nobody asked you anything: this is a message you post in the channel at a planned time. "
                  "Write only the message itself.")


@dataclass(frozen=True)
class Composed:
    text: str | None
    prompt: Prompt

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "persona": self.prompt.persona, "mood": self.prompt.mood}


async def compose_message(brain: Any, *, guild_id: str | None, channel_id: str | None, instruction: str) -> Composed:
    """`brain` is a `graph.brain.brain.Brain`; the instruction is cut to MAX_INSTRUCTION_CHARS."""
    instruction = " ".join(str(instruction).split())[:MAX_INSTRUCTION_CHARS]
    persona = brain.personas.active(guild_id)
    mood = brain.current_mood(guild_id, channel_id)
    history = []
    if channel_id:
        try:
            history = await brain.memory.channel_context(channel_id, now=brain.clock(), hours=brain.config.context_hours,
                                                         limit=brain.config.context_messages)
        except Exception:  # the message still gets written, with less context
            log.warning("no channel history for a composed message in %s", channel_id, exc_info=True)
    system = brain.prompts.system_prompt(persona, mood, ChatContext()) + "\n\n" + SCHEDULED_NOTE
    prompt = Prompt(system=system, history=brain.prompts.history(history, brain.config.context_messages),
                    user=instruction, persona=persona.name, mood=mood.name, temperature=persona.temperature,
                    max_tokens=persona.max_tokens)
    text = None
    if brain.complete is not None:
        # the brain's own call: its timeout, its failure counting, and whichever LLM endpoint it routes to
        text = await brain._llm(prompt.as_text(), prompt.system)
    text = text.strip() if isinstance(text, str) else None
    return Composed(text or None, prompt)
