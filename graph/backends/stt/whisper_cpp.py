"""`whisper-cpp` STT: whisper.cpp through pywhispercpp, from a local ggml model file.

pywhispercpp's wheel is a CPU build; on the RX 6800 build it with HIP (`GGML_HIP=1 pip install
--no-binary pywhispercpp pywhispercpp`). The model is a local `ggml-*.bin` file: pywhispercpp would
download a model given by name, so a path that is not an existing file is refused here.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graph.backends.stt.common import BlockingSTT
from graph.listen.types import STTOptions, VoiceCommand


GGML_MAGIC = 0x67676D6C
GGML_FTYPES = {0, 1, 2, 3, 7, 8, 9, 10, 11, 12, 13, 14}  # f32, f16 and whisper.cpp's quantisations
QNT_VERSION_FACTOR = 1000


def check_ggml_header(path: Path) -> dict[str, int]:
    """The hyperparameters of a whisper.cpp ggml file, or a ValueError: whisper.cpp *aborts the process* on
    a file it cannot parse (ggml_abort), so a wrong file must be refused before it reaches the library."""
    names = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_text_ctx",
             "n_text_state", "n_text_head", "n_text_layer", "n_mels", "ftype")
    with open(path, "rb") as handle:
        header = handle.read(4 * (1 + len(names)))
    if len(header) < 4 * (1 + len(names)) or int.from_bytes(header[:4], "little") != GGML_MAGIC:
        raise ValueError(f"whisper-cpp: {path} is not a whisper.cpp ggml model (bad magic)")
    values = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "little", signed=True) for i in range(len(names))]
    hparams = dict(zip(names, values))
    if any(hparams[name] <= 0 for name in names[:-1]) or hparams["n_mels"] not in (80, 128) \
            or hparams["n_vocab"] > 1_000_000 or hparams["ftype"] % QNT_VERSION_FACTOR not in GGML_FTYPES:
        raise ValueError(f"whisper-cpp: {path} has an implausible ggml header {hparams}")
    return hparams


@contextlib.contextmanager
def _stderr_into(target) -> Iterator[None]:
    """whisper.cpp logs to file descriptor 2: point it at `target` for a while (pywhispercpp's own redirect
    falls back to Python's sys.stderr, which C code never writes to, when that is not a real file)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(target.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True, kw_only=True)
class WhisperCppOptions:
    model_path: str
    threads: int = 2
    initial_prompt: str | None = "Miku"


class WhisperCppSTT(BlockingSTT):
    name = "whisper-cpp"

    def __init__(self, **options):
        super().__init__()
        self.options = WhisperCppOptions(**options)
        path = Path(self.options.model_path)
        if not path.is_file():  # never a model name: pywhispercpp would download it
            raise FileNotFoundError(f"whisper-cpp: no ggml model file at {path} (models are never downloaded)")
        self.hparams = check_ggml_header(path)
        try:
            from pywhispercpp.model import Model
        except ImportError as error:
            raise ImportError(f"whisper-cpp needs pywhispercpp (`pip install pywhispercpp`, extra 'stt'): {error}") from error
        self.model_path = path
        # whisper.cpp reports a failed load only in its log, and pywhispercpp then holds a null context
        # that segfaults on the first transcription: read the log and refuse the model here instead
        with tempfile.TemporaryFile("w+b", prefix="miku-whispercpp-") as log:
            try:
                with _stderr_into(log):
                    self.model = Model(str(path), n_threads=self.options.threads, print_realtime=False,
                                       print_progress=False)
            except Exception as error:
                raise ValueError(f"whisper-cpp: cannot load {path}: {error}") from error
            log.seek(0)
            messages = log.read().decode(errors="replace")
        if "failed to load model" in messages:
            detail = [line for line in messages.splitlines() if "wrong" in line or "failed" in line or "shape" in line]
            raise ValueError(f"whisper-cpp: whisper.cpp could not load {path}: {' / '.join(detail[-3:]) or 'see its log'}")

    def describe(self) -> dict:
        return {"backend": self.name, "model": str(self.model_path), "threads": self.options.threads}

    def _recognise(self, samples: np.ndarray, options: STTOptions) -> tuple[str, VoiceCommand | None]:
        extra = {"initial_prompt": self.options.initial_prompt} if self.options.initial_prompt else {}
        segments = self.model.transcribe(samples, language=options.language, no_context=True, **extra)
        return " ".join(segment.text for segment in segments), None
