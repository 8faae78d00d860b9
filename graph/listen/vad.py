"""Voice activity detection per speaker: the silero-vad ONNX model run with onnxruntime.

The model file is the one the `silero-vad` pip package ships (`silero_vad/data/silero_vad.onnx`); we
locate it without importing the package (its Python side imports torch) and run it with onnxruntime
directly. The model is recurrent: each speaker has its own `state` (2x1x128) and the last 64 samples of
context, fed with every 512-sample (32 ms) window, exactly as silero's own OnnxWrapper does.

`SpeechDetector` turns the probabilities into events with hysteresis (speech above `threshold`, silence
below `neg_threshold`): STARTED at the first speech window, ENDED with the turn's audio after
`end_silence_ms` of silence (or when the turn reaches `max_turn_s`), DISCARDED for speech shorter than
`min_speech_ms`. Times are stream time (samples fed / 16 kHz), so tests never depend on the clock.
"""
from __future__ import annotations

import importlib.util
import threading
from collections import deque
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from graph.listen.config import ListenConfig
from graph.listen.types import LISTEN_SAMPLE_RATE, as_float_audio

WINDOW = 512   # samples per model call at 16 kHz (32 ms), the size silero-vad v5+ takes
CONTEXT = 64   # samples of the previous window prepended to each call
WINDOW_MS = WINDOW * 1000 // LISTEN_SAMPLE_RATE


def packaged_model_path(name: str = "silero_vad.onnx") -> Path:
    """The ONNX file inside the installed silero-vad package (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the silero-vad package is not installed: `pip install --no-deps silero-vad` "
                                "(only its packaged ONNX model is used)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"silero-vad is installed but has no {name} at {path}")
    return path


class SileroModel:
    """One onnxruntime session shared by every speaker (each keeps its own recurrent state)."""

    def __init__(self, model_path: str | Path | None = None, threads: int = 1):
        import onnxruntime

        self.path = Path(model_path) if model_path else packaged_model_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"silero-vad model not found: {self.path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(self.path), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"{self.path}: not a silero-vad v5+ model (inputs {sorted(names)}, expected input, state, sr)")
        self._sr = np.array(LISTEN_SAMPLE_RATE, dtype=np.int64)

    def new_state(self) -> VadState:
        return VadState()

    def probability(self, state: VadState, window: np.ndarray) -> float:
        """Speech probability of one 512-sample float32 window; advances `state`."""
        x = np.concatenate([state.context, window])[None, :]
        out, state.rnn = self.session.run(None, {"input": x, "state": state.rnn, "sr": self._sr})
        state.context = window[-CONTEXT:].copy()
        return float(out[0, 0])


@dataclass
class VadState:
    rnn: np.ndarray = None  # type: ignore[assignment]
    context: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.rnn = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)


_shared: SileroModel | None = None
_shared_lock = threading.Lock()


def shared_model() -> SileroModel:
    """The process's packaged silero model, loaded once."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SileroModel()
        return _shared


class VadEventKind(str, Enum):
    STARTED = "started"
    ENDED = "ended"
    DISCARDED = "discarded"


@dataclass(frozen=True)
class VadEvent:
    kind: VadEventKind
    at_s: float                    # stream time of the event
    speech_s: float = 0.0          # from onset to the last speech window
    audio: np.ndarray | None = None  # ENDED: the turn, float32 16 kHz, with pads
    cut: bool = False              # ENDED because the turn reached max_turn_s


class DetectorState(str, Enum):
    SILENCE = "silence"
    SPEECH = "speech"


class SpeechDetector:
    """One speaker's VAD: feed 16 kHz audio of any length, get events."""

    def __init__(self, config: ListenConfig, model: SileroModel | None = None):
        self.config = config
        self.model = model or shared_model()
        self.state = DetectorState.SILENCE
        self._vad = self.model.new_state()
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet making a whole window
        self._windows = 0
        pre = max(1, -(-config.pad_ms // WINDOW_MS))
        self._preroll: deque[np.ndarray] = deque(maxlen=pre)
        self._turn: list[np.ndarray] = []
        self._onset_window = 0
        self._last_speech_window = 0
        self._silent_windows = 0
        self._end_windows = max(1, -(-config.end_silence_ms // WINDOW_MS))
        self._tail_windows = -(-config.pad_ms // WINDOW_MS)
        self._max_turn_windows = max(1, int(config.max_turn_s * 1000 // WINDOW_MS))
        self.last_probability = 0.0

    @property
    def now_s(self) -> float:
        return self._windows * WINDOW / LISTEN_SAMPLE_RATE

    @property
    def speech_s(self) -> float:
        """Length of the current speech so far (0 in silence)."""
        if self.state is not DetectorState.SPEECH:
            return 0.0
        return (self._last_speech_window - self._onset_window + 1) * WINDOW / LISTEN_SAMPLE_RATE

    def needs_model(self, samples: int) -> bool:
        """Whether feeding `samples` more would run the model (else feed() only buffers: cheap inline)."""
        return len(self._pending) + samples >= WINDOW

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        audio = as_float_audio(samples)
        if len(self._pending):
            audio = np.concatenate([self._pending, audio])
        whole = len(audio) // WINDOW * WINDOW
        self._pending = audio[whole:].copy()
        events: list[VadEvent] = []
        for start in range(0, whole, WINDOW):
            events.extend(self._window(audio[start:start + WINDOW]))
        return events

    def flush(self) -> list[VadEvent]:
        """The stream ended (speaker left, file ended): end any speech now."""
        if self.state is DetectorState.SPEECH:
            return [self._end(self.now_s, cut=False)]
        return []

    def _window(self, window: np.ndarray) -> list[VadEvent]:
        probability = self.model.probability(self._vad, window)
        self.last_probability = probability
        index = self._windows
        self._windows += 1
        cfg = self.config
        if self.state is DetectorState.SILENCE:
            if probability >= cfg.threshold:
                self.state = DetectorState.SPEECH
                self._turn = list(self._preroll)
                self._turn.append(window)
                self._preroll.clear()
                self._onset_window = self._last_speech_window = index
                self._silent_windows = 0
                return [VadEvent(VadEventKind.STARTED, self.now_s)]
            self._preroll.append(window)
            return []
        self._turn.append(window)
        if probability >= cfg.neg_threshold:
            self._silent_windows = 0
            if probability >= cfg.threshold:
                self._last_speech_window = index
        else:
            self._silent_windows += 1
        if self._silent_windows >= self._end_windows:
            return [self._end(self.now_s, cut=False)]
        if index - self._onset_window + 1 >= self._max_turn_windows:
            return [self._end(self.now_s, cut=True)]
        return []

    def _end(self, at_s: float, cut: bool) -> VadEvent:
        speech_s = self.speech_s
        # keep `pad_ms` after the last speech window, drop the rest of the trailing silence
        keep = len(self._turn) - max(0, self._silent_windows - self._tail_windows)
        audio = np.concatenate(self._turn[:keep]) if keep > 0 else np.zeros(0, np.float32)
        self.state = DetectorState.SILENCE
        self._turn = []
        self._silent_windows = 0
        if cut:  # the speaker is still talking: the next window starts a new turn at once
            self.state = DetectorState.SPEECH
            self._onset_window = self._last_speech_window = self._windows
        if speech_s * 1000 < self.config.min_speech_ms and not cut:
            return VadEvent(VadEventKind.DISCARDED, at_s, speech_s)
        return VadEvent(VadEventKind.ENDED, at_s, speech_s, audio, cut)
