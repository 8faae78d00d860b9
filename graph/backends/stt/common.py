"""What the in-process STT backends share: one model call at a time in a worker thread, timed.

Model libraries (pocketsphinx, CTranslate2, whisper.cpp) are synchronous and not safe to call from two
threads on one model, so each backend runs its blocking `_recognise` under a lock in `asyncio.to_thread`:
the replica's event loop stays free, and calls queue in order.
"""
from __future__ import annotations

import asyncio
import threading
import time
from abc import abstractmethod

import numpy as np

from graph.backends.base import STTBackend
from graph.listen.types import LISTEN_SAMPLE_RATE, STTOptions, Transcript, VoiceCommand, as_float_audio
from graph.voice.types import StageError


class BlockingSTT(STTBackend):
    def __init__(self) -> None:
        self._lock = threading.Lock()

    async def transcribe(self, audio: np.ndarray, options: STTOptions) -> Transcript:
        samples = as_float_audio(audio)
        return await asyncio.to_thread(self._timed, samples, options)

    def _timed(self, samples: np.ndarray, options: STTOptions) -> Transcript:
        started = time.perf_counter()
        with self._lock:
            try:
                text, command = self._recognise(samples, options)
            except StageError:
                raise
            except Exception as error:  # a model failure is the stage's error, named
                raise StageError("stt", self.name, f"transcription failed: {type(error).__name__}: {error}") from None
        return Transcript(text=" ".join(text.split()), command=command, backend=self.name,
                          audio_s=len(samples) / LISTEN_SAMPLE_RATE, compute_s=time.perf_counter() - started)

    @abstractmethod
    def _recognise(self, samples: np.ndarray, options: STTOptions) -> tuple[str, VoiceCommand | None]:
        """The words in `samples` (float32 16 kHz) and a command the backend itself spotted, if any."""

    async def warmup(self) -> None:
        await self.transcribe(np.zeros(LISTEN_SAMPLE_RATE // 2, dtype=np.float32), STTOptions())
