"""`faster-whisper` STT: Whisper through CTranslate2 from a local converted model directory.

The directory is what `ct2-transformers-converter` (or ctranslate2's TransformersConverter) writes:
`model.bin`, `config.json`, `vocabulary.json` and the `tokenizer.json` copied beside them. Loaded with
`local_files_only`, so nothing is ever downloaded. One turn per call, without timestamps, beam 1 by
default: turns are short and the first word matters more than the last percent of accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graph.backends.stt.common import BlockingSTT
from graph.listen.types import STTOptions, VoiceCommand


@dataclass(frozen=True, kw_only=True)
class FasterWhisperOptions:
    model_path: str
    device: str = "cpu"            # "cuda" where CTranslate2 has a GPU build
    compute_type: str = "int8"     # int8 on CPU, float16 on a GPU
    beam_size: int = 1
    cpu_threads: int = 0           # 0: CTranslate2's default
    max_new_tokens: int | None = None
    # a prompt of her name helps Whisper spell it (and so find the commands)
    initial_prompt: str | None = "Miku"


class FasterWhisperSTT(BlockingSTT):
    name = "faster-whisper"

    def __init__(self, **options):
        super().__init__()
        self.options = FasterWhisperOptions(**options)
        path = Path(self.options.model_path)
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"faster-whisper: {path} is not a CTranslate2 Whisper directory (no model.bin); "
                                    "convert one with ct2-transformers-converter --copy_files tokenizer.json")
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"faster-whisper: {path} has no tokenizer.json (it would be downloaded); "
                                    "convert with --copy_files tokenizer.json")
        from faster_whisper import WhisperModel

        self.model_path = path
        self.model = WhisperModel(str(path), device=self.options.device, compute_type=self.options.compute_type,
                                  cpu_threads=self.options.cpu_threads, local_files_only=True)

    def describe(self) -> dict:
        return {"backend": self.name, "model": str(self.model_path), "device": self.options.device,
                "compute_type": self.options.compute_type}

    def _recognise(self, samples: np.ndarray, options: STTOptions) -> tuple[str, VoiceCommand | None]:
        extra = {"max_new_tokens": self.options.max_new_tokens} if self.options.max_new_tokens else {}
        segments, _info = self.model.transcribe(
            samples, language=options.language if self.model.model.is_multilingual else None,
            beam_size=self.options.beam_size, without_timestamps=True, vad_filter=False,
            condition_on_previous_text=False, initial_prompt=self.options.initial_prompt, **extra)
        return "".join(segment.text for segment in segments), None
