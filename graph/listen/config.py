"""The `listen:` settings (VAD thresholds, end of turn, barge-in, bounds), validated with clear errors."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any


class NoWordsPolicy(str, Enum):
    """What follows a barge-in whose speech had no recognisable words (a laugh, a cough past the minimum)."""

    RESUME = "resume"   # tell the client to say the rest of the interrupted answer
    LET_GO = "let_go"   # the interrupted answer stays cut


@dataclass(frozen=True, kw_only=True)
class ListenConfig:
    # silero-vad speech probability: speech starts above `threshold`, ends below `neg_threshold`
    threshold: float = 0.5
    neg_threshold: float = 0.35
    # speech shorter than this is not a turn (a click, a breath)
    min_speech_ms: int = 200
    # a turn ends after this much silence (open Discord bots wait 2 s)
    end_silence_ms: int = 500
    # audio kept before the detected onset and after the last speech, so STT hears whole words
    pad_ms: int = 200
    # a turn longer than this is cut and transcribed (bounds each speaker's buffer)
    max_turn_s: float = 30.0
    # barge-in: speech at least this long while Miku talks interrupts her (a cough does not)
    barge_in_min_ms: int = 300
    no_words: NoWordsPolicy = NoWordsPolicy.RESUME
    # bounds of one session
    max_speakers: int = 32
    max_name_chars: int = 64
    max_json_bytes: int = 4096
    max_binary_bytes: int = 8 + 32_000 * 2  # user id + 2 s of 16 kHz s16le
    # turns waiting for their transcript; more are dropped (and counted) rather than queued without end
    max_pending_turns: int = 8
    stt_timeout_s: float = 30.0
    max_turn_chars: int = 2000  # a transcript longer than this is cut (a recogniser that runs away)
    # look for voice commands in every turn
    commands: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ListenConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"listen config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        if "no_words" in data:
            try:
                data["no_words"] = NoWordsPolicy(data["no_words"])
            except ValueError:
                raise ValueError(f"listen config: no_words must be one of {[p.value for p in NoWordsPolicy]}, "
                                 f"got {data['no_words']!r}") from None
        config = cls(**data)
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("threshold", "neg_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"listen config: {name} must be a probability between 0 and 1, got {value!r}")
        if self.neg_threshold > self.threshold:
            raise ValueError(f"listen config: neg_threshold ({self.neg_threshold}) must not exceed threshold ({self.threshold})")
        for name in ("min_speech_ms", "end_silence_ms", "barge_in_min_ms", "max_speakers", "max_name_chars",
                     "max_json_bytes", "max_binary_bytes", "max_pending_turns", "max_turn_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"listen config: {name} must be a positive integer, got {value!r}")
        if isinstance(self.pad_ms, bool) or not isinstance(self.pad_ms, int) or self.pad_ms < 0:
            raise ValueError(f"listen config: pad_ms must be a whole number of milliseconds >= 0, got {self.pad_ms!r}")
        for name in ("max_turn_s", "stt_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"listen config: {name} must be a positive number of seconds, got {value!r}")
