"""Values of the listening path: what a speech-to-text backend is asked and what it answers.

Plain frozen dataclasses, so the same objects travel in-process (tests, the CLI, benchmarks) and through
Serve handles to the SpeechToText stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

LISTEN_SAMPLE_RATE = 16_000  # what the listen route, the VAD and every STT backend take


class VoiceCommand(str, Enum):
    """What a spoken "Miku, ..." asks for; the client runs the matching text command (same role checks)."""

    LEAVE = "leave"
    STOP = "stop"
    QUIET = "quiet"


@dataclass(frozen=True, kw_only=True)
class STTOptions:
    language: str = "en"
    # look for the voice commands too (pocketsphinx runs its command grammar beside the general model)
    detect_commands: bool = True


@dataclass(frozen=True, kw_only=True)
class Transcript:
    """One turn's words. `command` is set when the backend itself spotted a voice command (a grammar
    pass); the graph also looks for commands in `text`."""

    text: str
    command: VoiceCommand | None = None
    backend: str = "?"
    audio_s: float = 0.0
    compute_s: float = 0.0


def as_float_audio(samples: np.ndarray) -> np.ndarray:
    """Mono float32 in [-1, 1]: what every STT backend receives."""
    array = np.asarray(samples)
    if array.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {array.shape}")
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    return np.clip(array.astype(np.float32, copy=False), -1.0, 1.0)
