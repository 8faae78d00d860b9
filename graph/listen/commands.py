"""Voice commands in a transcript: "Miku, leave", "Miku, stop", "Miku, be quiet" (and close variants).

A command needs her name first, so "please leave me alone" said to a friend is not one. Whisper writes
her name many ways (Miku, Miko, Mikú, Meeku); all count. What is said after "Miku, stop" ("Miku, stop.
Sing something else.") is a new request; what follows "leave" or "be quiet" is not one.
"""
from __future__ import annotations

import re

from graph.listen.types import VoiceCommand

_NAME = r"(?:hey\s+|okay\s+|ok\s+)?(?:miku|miko|mikku|meeku|mikú|mi\s?ku)"
_WORDS = {
    VoiceCommand.LEAVE: r"(?:leave|go\s+away|get\s+out|disconnect)",
    VoiceCommand.STOP: r"(?:stop|cancel|enough)",
    VoiceCommand.QUIET: r"(?:be\s+quiet|quiet|shut\s+up|hush|silence)",
}
_PATTERNS = [
    (command, re.compile(rf"\b{_NAME}\b[\s,.!?:;-]*(?:please\s+)?(?:now\s+)?{words}\b(?:\s+please)?", re.IGNORECASE))
    for command, words in _WORDS.items()
]


def find_command(text: str) -> VoiceCommand | None:
    """The first voice command in `text` (by position), or None."""
    return split_command(text)[0]


def split_command(text: str) -> tuple[VoiceCommand | None, str]:
    """The first voice command in `text` and, for "stop", the request said after it ("" if none)."""
    found = [(match.start(), match.end(), command) for command, pattern in _PATTERNS if (match := pattern.search(text or ""))]
    if not found:
        return None, ""
    _, end, command = min(found, key=lambda item: item[0])
    rest = text[end:].strip(" \t,.!?;:-") if command is VoiceCommand.STOP else ""
    return command, (rest if any(character.isalpha() for character in rest) else "")
