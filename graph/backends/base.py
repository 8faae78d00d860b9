"""The interfaces every model backend implements, and the by-name registry used by config.

Contract for implementers:
- Constructors take keyword options straight from config (everything but the `backend` key) and fail
  fast with a clear `ValueError`/`FileNotFoundError` naming what is wrong (missing model file, bad URL).
- Streaming methods are async generators; cancellation (`CancelledError`, `aclose()`) must stop the
  upstream work (close the HTTP response, kill the subprocess, stop the worker request).
- Failures the user should hear about raise `graph.voice.types.StageError(stage, backend, message)`.
- CPU-heavy synchronous work runs in `asyncio.to_thread` so a replica's event loop stays free.
- A backend that depends on another process (a model server, a worker, a container) implements
  `probe()`: a cheap check that it still answers, raising StageError naming it and its URL when not.
  The stage's `status()` calls it (bounded by a timeout), so /healthz names the backend that is down.
"""
from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from graph.voice.types import AudioChunk, LLMRequest, StageError, TTSOptions, VCOptions, VCResult

if TYPE_CHECKING:
    import numpy as np

    from graph.listen.types import STTOptions, Transcript


class Backend(ABC):
    """Common surface: a name for /healthz and logs, optional warm-up and clean shutdown."""

    name: str = "?"

    def describe(self) -> dict[str, Any]:
        """Facts for /healthz (never secrets): backend name, URL or model path, device, load time."""
        return {"backend": self.name}

    async def warmup(self) -> None:
        """Load and exercise the model once so the first real request is not slow."""

    async def probe(self) -> None:
        """Raise StageError when what this backend depends on no longer answers. In-process: nothing to probe."""

    async def aclose(self) -> None:
        """Release sockets, processes and models."""


class LLMBackend(Backend):
    @abstractmethod
    def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        """Yield text tokens (deltas) as the model produces them."""


class TTSBackend(Backend):
    @abstractmethod
    def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[AudioChunk]:
        """Yield mono float32 audio for `text`, first piece as early as the model allows."""


class VCBackend(Backend):
    @abstractmethod
    async def convert(self, chunk: AudioChunk, options: VCOptions, context: object | None) -> VCResult:
        """Convert one chunk of an utterance. `context` is what the previous call returned (None first)."""


class STTBackend(Backend):
    @abstractmethod
    async def transcribe(self, audio: np.ndarray, options: STTOptions) -> Transcript:
        """Transcribe one turn: mono float32 16 kHz audio in [-1, 1]."""


PROBE_TIMEOUT_S = 2.0  # a backend's health probe answers within this or the backend counts as down


def applied_pitch_shift(backend: str, base_semitones: float, options: VCOptions) -> float:
    """The shift a VC backend applies: its configured base plus the request's offset (a mood's or a client's).

    An offset, never a replacement: the base shift is what makes the voice hers ("bubbly" on WORLD's base
    4 is 4 + 2 = 6 semitones, not 2). A non-finite result is refused, so NaN can never play as silence.
    """
    total = float(base_semitones) + (float(options.pitch_shift) if options.pitch_shift is not None else 0.0)
    if not math.isfinite(total):
        raise StageError("vc", backend, f"pitch shift must be a finite number of semitones, got {total}")
    return total


# name -> "module:Class". Modules are imported on first use so optional extras stay optional.
BACKENDS: dict[str, dict[str, str]] = {
    "llm": {
        "openai": "graph.backends.llm.http_servers:OpenAIBackend",
        "llamacpp": "graph.backends.llm.http_servers:LlamaCppBackend",
        "echo": "graph.backends.llm.echo:EchoLLM",
        "simulated": "graph.backends.simulated:SimulatedLLM",
        "llama-cpp-python": "graph.backends.llm.llamacpp_python:LlamaCppPythonLLM",
    },
    "tts": {
        "espeak": "graph.backends.tts.espeak:EspeakTTS",
        "simulated": "graph.backends.simulated:SimulatedTTS",
        "soprano": "graph.backends.tts.soprano:SopranoInProcessTTS",
        "soprano-zmq": "graph.backends.tts.soprano_zmq:SopranoZmqTTS",
        "openai-speech": "graph.backends.tts.openai_speech:OpenAISpeechTTS",
        "remote-pipeline": "graph.backends.tts.remote_pipeline:RemotePipelineTTS",
    },
    "vc": {
        "world": "graph.backends.vc.world:WorldVC",
        "passthrough": "graph.backends.vc.passthrough:PassthroughVC",
        "simulated": "graph.backends.simulated:SimulatedVC",
        "rvc-onnx": "graph.backends.vc.rvc_onnx:RVCOnnxVC",
    },
    "image": {
        "openai-images": "graph.backends.image.openai_images:OpenAIImagesBackend",
        "a1111": "graph.backends.image.a1111:A1111Backend",
        "comfyui": "graph.backends.image.comfyui:ComfyUIBackend",
        "diffusers": "graph.backends.image.diffusers_local:DiffusersBackend",
    },
    "vision": {
        "openai-vision": "graph.backends.vision.openai_vision:OpenAIVisionBackend",
    },
    "stt": {
        "pocketsphinx": "graph.backends.stt.pocketsphinx:PocketsphinxSTT",
        "faster-whisper": "graph.backends.stt.faster_whisper:FasterWhisperSTT",
        "whisper-cpp": "graph.backends.stt.whisper_cpp:WhisperCppSTT",
        "openai-transcriptions": "graph.backends.stt.openai_transcriptions:OpenAITranscriptionsSTT",
    },
}


def create_backend(stage: str, config: dict[str, Any]) -> Backend:
    """Build the backend that `config["backend"]` names for `stage` ("llm", "tts", "vc", "image", "vision", "stt")."""
    if stage not in BACKENDS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(BACKENDS)}")
    options = dict(config or {})
    name = options.pop("backend", None)
    if not name:
        raise ValueError(f"{stage}: config needs a 'backend' key, one of {sorted(BACKENDS[stage])}")
    target = BACKENDS[stage].get(name)
    if target is None:
        raise ValueError(f"{stage}: unknown backend {name!r}; expected one of {sorted(BACKENDS[stage])}")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"{stage} backend {name!r} needs an optional dependency that is not installed: {exc}"
        ) from exc
    return getattr(module, class_name)(**options)
