"""Per-utterance timing: where the time to first audio goes.

Each utterance records the first moment it reached each milestone (prompt received, first token, first
chunk, first TTS audio, first VC audio, first frame, end). The clock is injected so tests and the
benchmark's simulated runs read exact values.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum


class Milestone(str, Enum):
    PROMPT_RECEIVED = "prompt_received"
    FIRST_TOKEN = "first_token"
    FIRST_CHUNK = "first_chunk"
    FIRST_TTS_AUDIO = "first_tts_audio"
    FIRST_VC_AUDIO = "first_vc_audio"
    FIRST_FRAME = "first_frame"
    END = "end"


@dataclass
class UtteranceTrace:
    """First-time marks of an utterance's milestones, in the injected clock's seconds."""

    clock: Callable[[], float] = time.monotonic
    marks: dict[Milestone, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mark(Milestone.PROMPT_RECEIVED)

    def mark(self, milestone: Milestone) -> bool:
        """Record `milestone` if it is the first time; True when this call recorded it."""
        if milestone in self.marks:
            return False
        self.marks[milestone] = self.clock()
        return True

    def since_start_ms(self, milestone: Milestone) -> float | None:
        if milestone not in self.marks:
            return None
        return (self.marks[milestone] - self.marks[Milestone.PROMPT_RECEIVED]) * 1000.0

    @property
    def time_to_first_audio_ms(self) -> float | None:
        return self.since_start_ms(Milestone.FIRST_FRAME)

    def as_dict_ms(self) -> dict[str, float]:
        """Milestone -> ms after the prompt arrived, for `utterance.end` events and logs."""
        return {
            m.value: round(self.since_start_ms(m), 3)  # type: ignore[arg-type]
            for m in Milestone
            if m in self.marks and m is not Milestone.PROMPT_RECEIVED
        }


@dataclass
class PlayoutMeter:
    """Counts underruns as a Discord listener would hear them.

    Playback starts when the first frames arrive; from then on audio is consumed in real time. A group of
    frames arriving after everything sent before it has already played out means the listener heard a gap.
    """

    clock: Callable[[], float] = time.monotonic
    started_at: float | None = None
    audio_sent_s: float = 0.0
    underruns: int = 0
    gap_s: float = 0.0

    def on_frames(self, seconds_of_audio: float) -> None:
        now = self.clock()
        if self.started_at is None:
            self.started_at = now
        else:
            playout_deadline = self.started_at + self.audio_sent_s
            if now > playout_deadline:
                self.underruns += 1
                self.gap_s += now - playout_deadline
                # the listener's playout restarts from now: shift the origin by the gap heard
                self.started_at += now - playout_deadline
        self.audio_sent_s += seconds_of_audio
