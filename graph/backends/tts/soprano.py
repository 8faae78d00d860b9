"""`soprano` TTS backend: soprano-tts in this process, from a local model directory only.

Why in process: on the GTX 1660 Soprano's streaming first audio is a few tens of milliseconds, so
anything between the graph and the model (sockets, serialisation) would be a visible share of it.

The model directory holds what soprano-tts loads (`SopranoTTS(model_path=...)`):

    config.json                 transformers config of the small causal LM (hidden size 512)
    model.safetensors           its weights (or pytorch_model.bin, or a sharded *.index.json)
    tokenizer.json              its tokenizer (or tokenizer.model)
    decoder.pth                 the Vocos decoder's state dict (hidden states -> 32 kHz audio)

Nothing is ever fetched from a hub: a missing file is a startup error naming it, and the Hugging Face
libraries are put in offline mode before loading. `synthesize` streams with `infer_stream`, so the
first audio of a chunk leaves after a handful of LM steps, long before the chunk is finished.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from graph.backends.base import TTSBackend
from graph.backends.threaded import ThreadedStream
from graph.backends.tts.stretch import stretch_stream
from graph.voice.types import AudioChunk, StageError, TTSOptions

SOPRANO_SAMPLE_RATE = 32_000

# Each entry: the alternatives that satisfy one requirement of the model directory.
_REQUIRED_FILES: tuple[tuple[str, ...], ...] = (
    ("config.json",),
    ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    ("tokenizer.json", "tokenizer.model"),
    ("decoder.pth",),
)
_DEVICES = ("cpu", "cuda", "mps", "auto")
_ENGINES = ("auto", "transformers", "lmdeploy")  # soprano-tts's own `backend` argument


def check_model_dir(model_path: str | os.PathLike) -> Path:
    """Return the directory if it holds a complete Soprano model; else raise naming what is missing."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"soprano: model directory {str(path)!r} does not exist (set tts.model_path)")
    for alternatives in _REQUIRED_FILES:
        if not any((path / name).is_file() for name in alternatives):
            wanted = " or ".join(alternatives)
            raise FileNotFoundError(f"soprano: model directory {str(path)!r} is incomplete: missing {wanted}")
    return path


class SopranoInProcessTTS(TTSBackend):
    """soprano-tts in process. Options (from config): `model_path` (required), `device` ("cuda",
    "cpu", "mps", "auto"), `engine` (soprano-tts's own `backend`: "auto", "transformers",
    "lmdeploy"; named differently because `backend` picks this class in config), `chunk_size` (LM tokens per
    streamed piece; 1 = lowest latency), sampling `temperature`/`top_p`/`repetition_penalty`.

    Soprano has one voice and no speed control (soprano-tts 0.2's `infer_stream` takes none):
    `TTSOptions.voice` is ignored (the RVC stage makes the voice) and `TTSOptions.speed` (a mood's
    speaking rate) is a pitch-keeping time-stretch of the streamed audio (graph/backends/tts/stretch.py). The model loads in `warmup()` (the deployment calls it at start; `synthesize` loads on first use
    otherwise). soprano-tts warms itself up with one sentence while loading; `warmup()` also runs one
    streamed sentence so the streaming path is hot before the first user.
    """

    name = "soprano"
    sample_rate = SOPRANO_SAMPLE_RATE

    def __init__(
        self,
        model_path: str,
        device: str = "cuda",
        engine: str = "transformers",
        chunk_size: int = 1,
        temperature: float = 0.0,
        top_p: float = 0.95,
        repetition_penalty: float = 1.2,
        cache_size_mb: int = 100,
        warmup_text: str = "Hello! I'm Miku.",
    ):
        if device not in _DEVICES:
            raise ValueError(f"soprano: device must be one of {_DEVICES}, got {device!r}")
        if engine not in _ENGINES:
            raise ValueError(f"soprano: engine must be one of {_ENGINES}, got {engine!r}")
        if chunk_size < 1:
            raise ValueError(f"soprano: chunk_size must be >= 1, got {chunk_size}")
        self.model_path = check_model_dir(model_path)
        self.device = device
        self.engine = engine
        self.chunk_size = int(chunk_size)
        self.sampling = {"temperature": temperature, "top_p": top_p, "repetition_penalty": repetition_penalty}
        self.cache_size_mb = cache_size_mb
        self.warmup_text = warmup_text
        self._model: Any = None
        self._load_lock = threading.Lock()
        # One utterance at a time on the model: keeps VRAM flat on the 6 GB card and the
        # per-chunk latency predictable; the graph already pipelines TTS against VC.
        self._infer_lock = asyncio.Lock()
        self.load_s: float | None = None
        self.warmup_s: float | None = None
        self.utterances = 0
        self.interrupted = 0  # syntheses closed early whose model loop really stopped before the end

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "model_path": str(self.model_path),
            "device": getattr(self._model, "device", self.device),
            "engine": getattr(self._model, "backend", self.engine),
            "sample_rate": self.sample_rate,
            "loaded": self._model is not None,
        }
        if self.load_s is not None:
            info["load_s"] = round(self.load_s, 3)
        if self.warmup_s is not None:
            info["warmup_s"] = round(self.warmup_s, 3)
        info["utterances"] = self.utterances
        info["interrupted"] = self.interrupted
        return info

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is not None:
                return self._model
            # Never touch a hub: everything comes from model_path (checked again: it may have changed).
            check_model_dir(self.model_path)
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            try:
                from soprano import SopranoTTS
            except ImportError as exc:
                raise ImportError("soprano backend needs the 'soprano' extra (soprano-tts, torch, transformers)") from exc
            started = time.monotonic()
            self._model = SopranoTTS(
                model_path=str(self.model_path),
                device=self.device,
                backend=self.engine,
                cache_size_mb=self.cache_size_mb,
            )
            self.load_s = time.monotonic() - started
            return self._model

    async def warmup(self) -> None:
        try:
            await asyncio.to_thread(self._load)
        except (FileNotFoundError, ImportError, ValueError):
            raise
        except Exception as exc:  # a broken config.json or state dict: say which directory
            raise StageError("tts", self.name, f"cannot load the Soprano model from {self.model_path}: {exc}") from exc
        started = time.monotonic()
        async for _ in self.synthesize(self.warmup_text, TTSOptions()):
            pass
        self.warmup_s = time.monotonic() - started

    def _stream_pieces(self, text: str):
        model = self._load()
        for piece in model.infer_stream(text, chunk_size=self.chunk_size, **self.sampling):
            yield piece.detach().to("cpu").float().numpy().reshape(-1)

    def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[AudioChunk]:
        # Soprano has no speed control: a mood's rate is a pitch-keeping WORLD time-stretch of its audio
        return stretch_stream(self._synthesize_native(text), options.speed)  # closing it closes the native stream

    async def _synthesize_native(self, text: str) -> AsyncIterator[AudioChunk]:
        text = text.strip()
        if not text:
            return
        async with self._infer_lock:
            stream = ThreadedStream(lambda: self._stream_pieces(text), name="soprano-infer")
            try:
                async for piece in stream:
                    if not np.isfinite(piece).all():
                        raise StageError("tts", self.name, "the model produced non-finite audio (NaN/inf)")
                    yield AudioChunk(np.clip(piece, -1.0, 1.0).astype(np.float32), self.sample_rate)
            except StageError:
                raise
            except (FileNotFoundError, ImportError):
                raise
            except Exception as exc:
                raise StageError("tts", self.name, f"synthesis failed: {type(exc).__name__}: {exc}") from exc
            finally:
                stream.stop()  # interrupt: the thread stops the LM after its current step
                await asyncio.to_thread(stream.wait_finished, 30.0)  # hold the lock until it has
                self.utterances += 1
                self.interrupted += int(stream.stopped_early)

    async def aclose(self) -> None:
        self._model = None
