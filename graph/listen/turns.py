"""Turn-taking for several speakers: each speaker's ended speech is its own turn, never merged.

Turns are numbered when their speech ends (the moment a reply could start), transcribed concurrently,
and released strictly in that order: Bob's short question that ended second waits for Ann's transcript
that ended first, so Miku answers Ann, then Bob. The prompt names the speaker ("Ann: ...").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graph.listen.types import Transcript


@dataclass
class Turn:
    seq: int
    user_id: int
    name: str
    audio: np.ndarray
    barged_in: bool = False   # this speech interrupted Miku
    transcript: Transcript | None = None
    failed: bool = False      # the STT stage could not transcribe it
    done: bool = False

    @property
    def prompt(self) -> str:
        return speaker_prompt(self.name, self.transcript.text if self.transcript else "")


def speaker_prompt(name: str, text: str) -> str:
    return f"{name}: {text}"


@dataclass
class TurnOrder:
    """Hands turns out in the order their speech ended, each once, as soon as it and all before it are done."""

    next_seq: int = 0
    _next_out: int = 0
    _waiting: dict[int, Turn] = field(default_factory=dict)

    def open(self, user_id: int, name: str, audio: np.ndarray, barged_in: bool) -> Turn:
        turn = Turn(self.next_seq, user_id, name, audio, barged_in)
        self._waiting[turn.seq] = turn
        self.next_seq += 1
        return turn

    def pending(self) -> int:
        return len(self._waiting)

    def finish(self, turn: Turn) -> list[Turn]:
        """Mark `turn` done; the turns now ready, in order."""
        turn.done = True
        ready = []
        while (head := self._waiting.get(self._next_out)) is not None and head.done:
            ready.append(self._waiting.pop(self._next_out))
            self._next_out += 1
        return ready
