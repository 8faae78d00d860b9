"""`rvc-onnx` VC backend: RVC voice conversion in process with onnxruntime, from RVC's ONNX export.

Why in process and ONNX: onnxruntime runs the same exported graph on CPU, CUDA and ROCm/MIGraphX
(the RX 6800) without the RVC training code base, and keeps the stage a plain Python object.

Files (paths from config; nothing is downloaded):
- `content_encoder_path`: ContentVec/HuBERT ONNX, `[1, 1, N]` float32 at 16 kHz -> `[1, N/320, C]`
  (C = 256 for v1 models, 768 for v2), e.g. `vec-768-layer-12.onnx`.
- `model_path`: the synthesizer as RVC's `tools/export_onnx.py` writes it, inputs
  `phone [1,T,C] f32, phone_lengths [1] i64, pitch [1,T] i64 (coarse 1..255), pitchf [1,T] f32 (Hz),
  ds [1] i64 (speaker id), rnd [1,192,T] f32` at 100 frames/s, output `audio [1,1,T*sr/100]`.

f0 comes from pyworld (`dio` + stonemask, or `harvest`) at 16 kHz, shifted by `pitch_shift` semitones
(per utterance from `VCOptions`, e.g. a mood's shift). The output rate is the model's own (32/40/48
kHz), measured at warm-up from the export's frames-to-samples ratio.

Chunk joins (the way RVC's realtime tool does it): each call converts the new chunk together with
`context_ms` of the previous input, so ContentVec and f0 see across the edge; the last `crossfade_ms`
of each output is held back and crossfaded with the re-converted start of the next chunk, after a
short SOLA search (`sola_search_ms`) that aligns the two waveforms so the blend cannot comb or click.
All of that state travels in `VCResult.context` (an `RVCContext`), so replicas stay stateless.
Convert an empty chunk at the end of an utterance to get the held-back tail (faded out).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyworld
import soxr

from graph.backends.base import VCBackend, applied_pitch_shift
from graph.voice.audio import FadeShape, crossfade
from graph.voice.types import AudioChunk, StageError, VCOptions, VCResult

CONTENT_RATE = 16_000
CONTENT_HOP = 320  # ContentVec frames: 50 per second
FRAME_RATE = 100  # RVC's synthesizer frames per second (content frames repeated twice)
NOISE_CHANNELS = 192
SYNTH_INPUTS = ("phone", "phone_lengths", "pitch", "pitchf", "ds", "rnd")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "dml": "DmlExecutionProvider",
}
F0_METHODS = ("dio", "harvest")


@dataclass
class RVCContext:
    """What one utterance carries from one `convert` call to the next."""

    input_rate: int
    history: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # recent input
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # held-back output
    chunks: int = 0


def resolve_providers(providers: str | list[str] | tuple[str, ...], available: list[str]) -> list[str]:
    """Map config names ("cpu", "cuda", "rocm", "migraphx" or full provider names) to onnxruntime
    providers, failing clearly when one is not in this onnxruntime build; CPU is kept as fallback."""
    wanted = [providers] if isinstance(providers, str) else list(providers)
    if not wanted:
        raise ValueError("rvc-onnx: providers must name at least one execution provider")
    resolved = []
    for name in wanted:
        full = PROVIDER_ALIASES.get(str(name).lower(), str(name))
        if full not in available:
            raise ValueError(
                f"rvc-onnx: execution provider {name!r} ({full}) is not available in this onnxruntime build; "
                f"available: {available} (install onnxruntime-gpu for CUDA, onnxruntime-rocm/migraphx for AMD)"
            )
        if full not in resolved:
            resolved.append(full)
    if "CPUExecutionProvider" not in resolved and "CPUExecutionProvider" in available:
        resolved.append("CPUExecutionProvider")
    return resolved


def coarse_pitch(f0_hz: np.ndarray, f0_min: float = 50.0, f0_max: float = 1100.0) -> np.ndarray:
    """RVC's 1..255 mel-scale pitch bins (1 = unvoiced) for the synthesizer's `pitch` input."""
    mel_min = 1127.0 * np.log(1 + f0_min / 700)
    mel_max = 1127.0 * np.log(1 + f0_max / 700)
    mel = 1127.0 * np.log(1 + f0_hz / 700)
    voiced = mel > 0
    mel[voiced] = (mel[voiced] - mel_min) * 254 / (mel_max - mel_min) + 1
    return np.rint(np.clip(mel, 1, 255)).astype(np.int64)


class RVCOnnxVC(VCBackend):
    """RVC through onnxruntime; see the module docstring for the file layout and chunk handling."""

    name = "rvc-onnx"

    def __init__(
        self,
        model_path: str,
        content_encoder_path: str,
        sample_rate: int | None = None,
        speaker_id: int = 0,
        pitch_shift: float = 0.0,
        f0_method: str = "dio",
        f0_min: float = 50.0,
        f0_max: float = 1100.0,
        providers: str | list[str] = "cpu",
        context_ms: float = 300.0,
        crossfade_ms: float = 20.0,
        sola_search_ms: float = 10.0,
        intra_op_threads: int = 0,
        seed: int | None = None,
    ):
        self.model_path = _existing_file(model_path, "model_path (the RVC synthesizer .onnx)")
        self.content_encoder_path = _existing_file(content_encoder_path, "content_encoder_path (ContentVec/HuBERT .onnx)")
        if f0_method not in F0_METHODS:
            raise ValueError(f"rvc-onnx: f0_method must be one of {F0_METHODS}, got {f0_method!r}")
        if not 0 < f0_min < f0_max:
            raise ValueError(f"rvc-onnx: need 0 < f0_min < f0_max, got {f0_min}, {f0_max}")
        if crossfade_ms < 0 or sola_search_ms < 0 or context_ms < crossfade_ms + sola_search_ms:
            raise ValueError("rvc-onnx: need crossfade_ms >= 0, sola_search_ms >= 0 and context_ms >= crossfade_ms + sola_search_ms")
        import onnxruntime as ort

        self._ort = ort
        self.providers = resolve_providers(providers, ort.get_available_providers())
        self.expected_rate = sample_rate
        self.speaker_id = int(speaker_id)
        self.pitch_shift = float(pitch_shift)
        self.f0_method = f0_method
        self.f0_min = float(f0_min)
        self.f0_max = float(f0_max)
        self.context_s = context_ms / 1000
        self.crossfade_s = crossfade_ms / 1000
        self.sola_search_s = sola_search_ms / 1000
        self.intra_op_threads = intra_op_threads
        self._rng = np.random.default_rng(seed)
        self._content = None
        self._synth = None
        self.model_rate: int | None = None
        self.channels: int | None = None
        self.load_s: float | None = None

    # ------------------------------------------------------------------ loading

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "model_path": str(self.model_path),
            "content_encoder_path": str(self.content_encoder_path),
            "providers": self.providers,
            "f0_method": self.f0_method,
            "speaker_id": self.speaker_id,
            "pitch_shift": self.pitch_shift,
            "loaded": self._synth is not None,
        }
        if self._synth is not None:
            info["active_providers"] = self._synth.get_providers()
            info["sample_rate"] = self.model_rate
            info["content_channels"] = self.channels
        if self.load_s is not None:
            info["load_s"] = round(self.load_s, 3)
        return info

    def _session(self, path: Path):
        options = self._ort.SessionOptions()
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        try:
            return self._ort.InferenceSession(str(path), sess_options=options, providers=self.providers)
        except Exception as exc:
            raise ValueError(f"rvc-onnx: cannot load {path}: {exc}") from exc

    def _load(self) -> None:
        if self._synth is not None:
            return
        started = time.monotonic()
        content = self._session(self.content_encoder_path)
        synth = self._session(self.model_path)
        inputs = synth.get_inputs()
        if len(inputs) != len(SYNTH_INPUTS):
            raise ValueError(
                f"rvc-onnx: {self.model_path} has inputs {[i.name for i in inputs]}; expected RVC's export "
                f"signature {list(SYNTH_INPUTS)}"
            )
        channels = inputs[0].shape[-1]
        if not isinstance(channels, int):
            raise ValueError(f"rvc-onnx: {self.model_path}: the phone input needs a fixed channel size, got {inputs[0].shape}")
        self.channels = channels
        self._synth_names = [i.name for i in inputs]
        self._content_name = content.get_inputs()[0].name
        self._content, self._synth = content, synth
        # Measure the model's output rate: frames in, samples out.
        probe = 0.2 * np.sin(2 * np.pi * 220 * np.arange(CONTENT_RATE) / CONTENT_RATE).astype(np.float32)
        frames, audio = self._run(probe, 0.0)
        rate = int(round(len(audio) / frames * FRAME_RATE))
        if self.expected_rate and rate != int(self.expected_rate):
            raise ValueError(f"rvc-onnx: {self.model_path} produces {rate} Hz audio but sample_rate is set to {self.expected_rate}")
        self.model_rate = rate
        self.load_s = time.monotonic() - started

    async def warmup(self) -> None:
        await asyncio.to_thread(self._load)

    # ------------------------------------------------------------------ conversion

    def _features(self, wav16: np.ndarray) -> np.ndarray:
        """ContentVec features repeated to 100 frames/s: [1, T, C]."""
        out = self._content.run(None, {self._content_name: wav16.reshape(1, 1, -1)})[0]
        if out.ndim != 3:
            raise StageError("vc", self.name, f"the content encoder returned shape {out.shape}, expected 3-D")
        if out.shape[2] != self.channels and out.shape[1] == self.channels:
            out = out.transpose(0, 2, 1)  # some exports emit [1, C, frames]
        if out.shape[2] != self.channels:
            raise StageError("vc", self.name, f"content encoder gives {out.shape[2]} channels, the synthesizer wants {self.channels}")
        return np.repeat(out, 2, axis=1).astype(np.float32)

    def _f0(self, wav16: np.ndarray, frames: int, semitones: float) -> np.ndarray:
        x = wav16.astype(np.float64)
        if self.f0_method == "harvest":
            f0, _ = pyworld.harvest(x, CONTENT_RATE, f0_floor=self.f0_min, f0_ceil=self.f0_max, frame_period=1000 / FRAME_RATE)
        else:
            f0, t = pyworld.dio(x, CONTENT_RATE, f0_floor=self.f0_min, f0_ceil=self.f0_max, frame_period=1000 / FRAME_RATE)
            f0 = pyworld.stonemask(x, f0, t, CONTENT_RATE)
        f0 = np.pad(f0[:frames], (0, max(0, frames - len(f0))), mode="edge" if len(f0) else "constant")
        return (f0 * 2 ** (semitones / 12)).astype(np.float32)

    def _run(self, wav16: np.ndarray, semitones: float) -> tuple[int, np.ndarray]:
        """Convert 16 kHz audio (a whole number of content hops) to model-rate audio."""
        phone = self._features(wav16)
        frames = phone.shape[1]
        pitchf = self._f0(wav16, frames, semitones)
        feeds = dict(
            zip(
                self._synth_names,
                (
                    phone,
                    np.array([frames], dtype=np.int64),
                    coarse_pitch(pitchf.copy(), self.f0_min, self.f0_max).reshape(1, frames),
                    pitchf.reshape(1, frames),
                    np.array([self.speaker_id], dtype=np.int64),
                    self._rng.standard_normal((1, NOISE_CHANNELS, frames)).astype(np.float32),
                ),
            )
        )
        audio = self._synth.run(None, feeds)[0].reshape(-1)
        return frames, audio.astype(np.float32)

    def _convert_sync(self, chunk: AudioChunk, semitones: float, context: RVCContext | None) -> VCResult:
        self._load()
        out_rate = self.model_rate
        if context is None or context.input_rate != chunk.sample_rate:
            context = RVCContext(input_rate=chunk.sample_rate)
        x = chunk.samples
        if not np.isfinite(x).all():
            raise StageError("vc", self.name, "input audio contains NaN/inf")
        xfade = int(round(self.crossfade_s * out_rate))
        if len(x) == 0:  # end of utterance: release the held-back tail, faded out
            tail = context.tail
            if len(tail):
                tail = tail * np.linspace(1.0, 0.0, len(tail), dtype=np.float32)
            return VCResult(AudioChunk(tail.astype(np.float32), out_rate), RVCContext(input_rate=chunk.sample_rate))

        in_rate = chunk.sample_rate
        history = context.history
        segment = np.concatenate((history, x)) if len(history) else x
        wav16 = soxr.resample(segment, in_rate, CONTENT_RATE).astype(np.float32)
        # Pad to whole content hops plus one spare hop so the chunk's very end gets converted.
        target = (len(wav16) // CONTENT_HOP + 2) * CONTENT_HOP
        pad = target - len(wav16)
        wav16 = np.pad(wav16, (0, pad), mode="reflect" if len(wav16) > pad else "constant")
        _, converted = self._run(wav16, semitones)

        history_out = int(round(len(history) / in_rate * out_rate))
        end_out = min(int(round(len(segment) / in_rate * out_rate)), len(converted))
        search = int(round(self.sola_search_s * out_rate))
        prev_tail = context.tail
        if len(prev_tail) and history_out >= len(prev_tail) + search:
            start = history_out - len(prev_tail)
            offset = _sola_offset(prev_tail, converted[start : start + len(prev_tail) + search])
            head = converted[start + offset : start + offset + len(prev_tail)]
            body_start = start + offset + len(prev_tail)
            joined = crossfade(prev_tail, head, FadeShape.EQUAL_GAIN)
        else:
            body_start = history_out
            joined = prev_tail  # nothing to blend with (rate change or no history): play it as it was
        cut = max(end_out - xfade, body_start)
        emitted = np.concatenate((joined, converted[body_start:cut]))
        new_tail = converted[cut:end_out].copy()
        keep = int(round(self.context_s * in_rate))
        new_history = segment[-keep:].copy() if keep else np.zeros(0, np.float32)
        emitted = np.clip(emitted, -1.0, 1.0).astype(np.float32)
        return VCResult(
            AudioChunk(emitted, out_rate),
            RVCContext(input_rate=in_rate, history=new_history, tail=new_tail, chunks=context.chunks + 1),
        )

    async def convert(self, chunk: AudioChunk, options: VCOptions, context: object | None) -> VCResult:
        if context is not None and not isinstance(context, RVCContext):
            context = None  # another backend's context (config changed mid-utterance): start fresh
        semitones = applied_pitch_shift(self.name, self.pitch_shift, options)
        try:
            return await asyncio.to_thread(self._convert_sync, chunk, semitones, context)
        except StageError:
            raise
        except ValueError:
            raise
        except Exception as exc:
            raise StageError("vc", self.name, f"conversion failed: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        self._content = self._synth = None


def _sola_offset(reference: np.ndarray, candidate: np.ndarray) -> int:
    """Offset into `candidate` where a window of len(reference) best matches `reference`
    (normalised cross-correlation), as in RVC's realtime SOLA."""
    n = len(reference)
    if len(candidate) <= n:
        return 0
    corr = np.correlate(candidate, reference, mode="valid")
    energy = np.sqrt(np.convolve(candidate.astype(np.float64) ** 2, np.ones(n), mode="valid")) + 1e-8
    return int(np.argmax(corr / energy))


def _existing_file(path: str, what: str) -> Path:
    if not path:
        raise ValueError(f"rvc-onnx: {what} is required")
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"rvc-onnx: {what} not found: {resolved}")
    return resolved
