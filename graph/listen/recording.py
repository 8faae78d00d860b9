"""The listening stages over a recording: what `miku transcribe` and the benchmark run.

The very `ListenSession` the ingress hosts for WS /v1/listen, fed the recording as one speaker's 20 ms
frames, with the STT backend called in process; what it sends is collected as turns and commands.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from graph.backends.base import STTBackend
from graph.listen.audio_in import frames_20ms, silence, to_pcm16
from graph.listen.config import ListenConfig
from graph.listen.protocol import audio_frame
from graph.listen.session import ListenSession

SPEAKER_ID = 1


@dataclass
class RecordingResult:
    turns: list[dict] = field(default_factory=list)      # {"text", "command"}: one per turn, in order
    errors: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(turn["text"] for turn in self.turns if turn["text"])

    @property
    def commands(self) -> list[dict]:
        return [{"name": turn["command"], "turn": index + 1} for index, turn in enumerate(self.turns) if turn["command"]]

    def as_json(self) -> dict:
        return {"text": self.text, "commands": self.commands, "turns": self.turns, "errors": self.errors}


async def transcribe_recording(samples: np.ndarray, backend: STTBackend, config: ListenConfig | None = None,
                               name: str = "speaker") -> RecordingResult:
    result = RecordingResult()

    async def collect(message: dict) -> None:
        kind = message["type"]
        if kind == "turn":
            result.turns.append({"text": message["text"], "command": None})
        elif kind == "command":
            result.turns.append({"text": message.get("text", ""), "command": message["name"]})
        elif kind in ("error", "stt_unavailable"):
            result.errors.append(message["message"])

    async def inline(function, *args):
        return function(*args)

    session = ListenSession(config or ListenConfig(), backend.transcribe, collect, run_vad=inline)
    await session.handle_raw(json.dumps({"type": "start", "guild_id": "0", "channel_id": "0"}))
    await session.handle_raw(json.dumps({"type": "speaker", "user_id": str(SPEAKER_ID), "name": name}))
    # a little silence after the end, so the last turn ends the way it would live
    padded = np.concatenate([np.asarray(samples, dtype=np.float32), silence(1.0)])
    for frame in frames_20ms(to_pcm16(padded)):
        await session.handle_raw(audio_frame(SPEAKER_ID, frame))
    await session.drain()
    await session.close()
    return result
