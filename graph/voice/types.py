"""Typed values that flow between the stages of the voice graph.

They are plain dataclasses so the same objects travel in-process (tests, benchmarks) and through
Ray Serve handles (pickled), and so each stage's contract is visible in one place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DISCORD_SAMPLE_RATE = 48_000
DISCORD_CHANNELS = 2
FRAME_MS = 20
FRAME_SAMPLES = DISCORD_SAMPLE_RATE * FRAME_MS // 1000  # 960 samples per channel
FRAME_BYTES = FRAME_SAMPLES * DISCORD_CHANNELS * 2  # s16le stereo: 3840 bytes


@dataclass(frozen=True)
class AudioChunk:
    """Mono float32 audio in [-1, 1] at `sample_rate`, one piece of a longer stream."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.samples.ndim != 1:
            raise ValueError(f"audio must be mono (1-D), got shape {self.samples.shape}")
        if self.samples.dtype != np.float32:
            object.__setattr__(self, "samples", self.samples.astype(np.float32))

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class LLMRequest:
    """What the text LLM stage is asked to continue."""

    prompt: str
    system: str | None = None
    history: tuple[tuple[str, str], ...] = ()  # (role, content) pairs, oldest first
    max_tokens: int = 256
    temperature: float = 0.8
    stop: tuple[str, ...] = ()
    # Routing (the brain's persona): `model` picks the model by name on llama-swap / an OpenAI-compatible
    # server (None = the backend's configured model); `adapter` is a LoRA GGUF the in-process
    # llama-cpp-python backend loads alongside its model (remote servers get it mapped to a model name).
    model: str | None = None
    adapter: str | None = None


# A speaking rate a mood or a client may ask for (1.0 = normal); outside it speech turns mushy or dragging.
MIN_SPEAKING_RATE = 0.7
MAX_SPEAKING_RATE = 1.4
# Any speaking rate a stage accepts (OpenAI's speech API takes the same range); moods stay well inside it.
MIN_TTS_SPEED = 0.25
MAX_TTS_SPEED = 4.0


@dataclass(frozen=True)
class TTSOptions:
    voice: str | None = None
    # speaking rate, 1.0 = the voice's normal pace: espeak's words per minute, a speech server's `speed`,
    # or a pitch-keeping time-stretch of the audio (graph/backends/tts/stretch.py) where neither exists
    speed: float = 1.0

    def __post_init__(self) -> None:
        speed = self.speed
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed) \
                or not MIN_TTS_SPEED <= speed <= MAX_TTS_SPEED:
            raise ValueError(f"TTS speed must be a finite number within {MIN_TTS_SPEED:g}..{MAX_TTS_SPEED:g}, got {speed!r}")
        object.__setattr__(self, "speed", float(speed))


@dataclass(frozen=True)
class VCOptions:
    # semitones added to the backend's own configured shift (a mood or a client nudges her voice, it
    # never replaces the voice's base pitch); None -> the backend's shift alone
    pitch_shift: float | None = None


@dataclass
class VCResult:
    """Converted audio plus the context the backend wants back with the next chunk of the utterance.

    Passing context explicitly keeps VC replicas stateless, so any replica can take any chunk.
    """

    audio: AudioChunk
    context: object | None = None


class StageError(RuntimeError):
    """A stage failed in a way the user should hear about (it becomes an `error` event).

    `stage` is one of "llm", "tts", "vc", "graph"; `backend` names the backend (and its URL where it has one).
    """

    def __init__(self, stage: str, backend: str, message: str):
        super().__init__(f"{stage} ({backend}): {message}")
        self.stage = stage
        self.backend = backend
        self.message = message

    def __reduce__(self):
        # keep the three fields when Ray pickles the error across processes
        return (type(self), (self.stage, self.backend, self.message))


class StageLost(StageError):
    """The stage's replica is gone (killed, crashed, being replaced): Miku is recovering.

    The pipeline tells the client at once (a `stage.lost` event) and calls to the stage fail fast until
    the replacement answers, rather than hanging while Serve replaces it.
    """


@dataclass
class StageStatus:
    """One stage's entry in /healthz."""

    stage: str
    backend: str
    ok: bool
    detail: dict = field(default_factory=dict)
