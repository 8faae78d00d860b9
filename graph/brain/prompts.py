"""The one place prompts are built: persona + mood + memory + chat context -> (system, history, user).

Text replies, focused-chat thinking/planning and the voice graph all use this builder so Miku sounds
like the same person everywhere. The voice path keeps only the last four messages of history, as the
plan says: every extra token of prompt is latency before the first spoken word.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from graph.brain.events import Prompt
from graph.brain.memory import StoredMessage
from graph.brain.moods import MoodState
from graph.brain.personas import Persona

VOICE_HISTORY_MESSAGES = 4


@dataclass(frozen=True)
class ChatContext:
    """Where the conversation happens, for the system prompt."""

    guild_name: str = ""
    channel_name: str = ""
    is_dm: bool = False
    voice: bool = False


class PromptBuilder:
    """Builds prompts; `text_history` / `voice_history` cap how many past messages go in."""

    def __init__(self, text_history: int = 12, voice_history: int = VOICE_HISTORY_MESSAGES, memory_lines: int = 5, max_line_chars: int = 400):
        self.text_history = text_history
        self.voice_history = voice_history
        self.memory_lines = memory_lines
        self.max_line_chars = max_line_chars

    def _clip(self, text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= self.max_line_chars else text[: self.max_line_chars - 1] + "…"

    def system_prompt(self, persona: Persona, mood: MoodState, chat: ChatContext, user_memory: Sequence[StoredMessage] = (), user_name: str = "") -> str:
        parts = [persona.system_prompt.strip(), f"Current mood ({mood.name}): {mood.description}"]
        if chat.voice:
            parts.append("You are talking out loud in a voice channel: answer in one or two short spoken sentences, no emoji or markdown.")
        elif chat.is_dm:
            parts.append("You are in a private direct message conversation.")
        elif chat.guild_name or chat.channel_name:
            parts.append(f"You are chatting in #{chat.channel_name or 'chat'} on the server {chat.guild_name or 'a server'}.")
        if user_memory:
            remembered = "\n".join(f"- {self._clip(m.content)}" for m in list(user_memory)[-self.memory_lines:] if m.content)
            if remembered:
                parts.append(f"Things {user_name or 'this user'} said recently elsewhere:\n{remembered}")
        return "\n\n".join(parts)

    def history(self, messages: Sequence[StoredMessage], limit: int) -> tuple[tuple[str, str], ...]:
        turns = []
        for message in list(messages)[-limit:] if limit > 0 else []:
            if message.is_self:
                turns.append(("assistant", self._clip(message.content)))
            else:
                turns.append(("user", f"{message.author_name or message.author_id}: {self._clip(message.content)}"))
        return tuple(turns)

    def build(
        self,
        *,
        persona: Persona,
        mood: MoodState,
        chat: ChatContext,
        history: Sequence[StoredMessage],
        user_name: str,
        user_text: str,
        user_memory: Sequence[StoredMessage] = (),
        extra_instructions: str = "",
    ) -> Prompt:
        """The prompt for answering `user_text`. `history` excludes the message being answered."""
        system = self.system_prompt(persona, mood, chat, user_memory, user_name)
        if extra_instructions:
            system = f"{system}\n\n{extra_instructions.strip()}"
        limit = self.voice_history if chat.voice else self.text_history
        return Prompt(
            system=system,
            history=self.history(history, limit),
            user=f"{user_name}: {self._clip(user_text)}" if user_name else self._clip(user_text),
            persona=persona.name,
            mood=mood.name,
            temperature=persona.temperature,
            max_tokens=min(persona.max_tokens, 120) if chat.voice else persona.max_tokens,
        )
