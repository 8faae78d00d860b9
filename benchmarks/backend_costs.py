"""Stage cost of each in-process production backend on tiny models, on this machine.

What it measures: the graph's own cost around the models (threads, queues, resampling, f0, context
and crossfade handling, decoding), by running the real backend code on the tiny models the tests
build and, side by side in the same run, the bare library call on the same model. Tiny models make
the model part small, so the difference is our overhead. It says nothing about model speed on the
two-GPU box: docs/deploy.md estimates that from the models' published figures.

    .venv/bin/python benchmarks/backend_costs.py [--rounds N]

Prints one JSON object as its last line (medians, p95, ratios).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stats import percentile  # noqa: E402
from graph.voice.types import AudioChunk, LLMRequest, TTSOptions, VCOptions  # noqa: E402
from tests.tiny_models import build_tiny_gguf, build_tiny_rvc, cached_tiny_soprano  # noqa: E402


def summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"median_ms": round(statistics.median(ms), 3), "p95_ms": round(percentile(ms, 95), 3), "n": len(ms)}


async def bench_soprano(rounds: int) -> dict:
    from graph.backends.tts.soprano import SopranoInProcessTTS

    tts = SopranoInProcessTTS(model_path=str(cached_tiny_soprano(10)), device="cpu")
    await tts.warmup()
    model = tts._model  # the same loaded soprano object, called directly for the baseline
    text = "Hello there, I am Miku."
    direct_first, direct_total, backend_first, backend_total = [], [], [], []
    audio_s = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for i, _piece in enumerate(model.infer_stream(text, chunk_size=1)):
            if i == 0:
                direct_first.append(time.perf_counter() - start)
        direct_total.append(time.perf_counter() - start)
        start = time.perf_counter()
        samples = 0
        async for chunk in tts.synthesize(text, TTSOptions()):
            if not samples:
                backend_first.append(time.perf_counter() - start)
            samples += len(chunk.samples)
        backend_total.append(time.perf_counter() - start)
        audio_s = samples / chunk.sample_rate
    await tts.aclose()
    return {
        "audio_s_per_utterance": audio_s,
        "direct_first_piece": summary(direct_first),
        "backend_first_piece": summary(backend_first),
        "direct_total": summary(direct_total),
        "backend_total": summary(backend_total),
        "overhead_ratio_total": round(statistics.median(backend_total) / statistics.median(direct_total), 3),
        "load_s": tts.load_s,
    }


async def bench_rvc(rounds: int, workdir: Path) -> dict:
    import onnxruntime as ort

    from graph.backends.vc.rvc_onnx import RVCOnnxVC

    files = build_tiny_rvc(workdir / "rvc", sample_rate=48_000)
    vc = RVCOnnxVC(model_path=str(files["synth"]), content_encoder_path=str(files["content"]), seed=0)
    await vc.warmup()
    rate, chunk_s = 32_000, 0.2
    t = np.arange(int(rate * chunk_s * rounds)) / rate
    speech_like = (0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(2 * np.pi * 3 * t)) * t)).astype(np.float32)
    pieces = np.array_split(speech_like, rounds)
    per_chunk, context = [], None
    for piece in pieces:
        start = time.perf_counter()
        result = await vc.convert(AudioChunk(piece, rate), VCOptions(pitch_shift=2), context)
        per_chunk.append(time.perf_counter() - start)
        context = result.context
    # Baseline: the two ONNX sessions alone on the same amount of audio (what the model costs here).
    content = ort.InferenceSession(str(files["content"]), providers=["CPUExecutionProvider"])
    synth = ort.InferenceSession(str(files["synth"]), providers=["CPUExecutionProvider"])
    frames = int((chunk_s + vc.context_s) * 100)
    wav16 = np.zeros((1, 1, frames * 160), np.float32)
    feeds = {
        "phone": np.zeros((1, frames, 768), np.float32),
        "phone_lengths": np.array([frames]),
        "pitch": np.ones((1, frames), np.int64),
        "pitchf": np.full((1, frames), 200.0, np.float32),
        "ds": np.array([0]),
        "rnd": np.zeros((1, 192, frames), np.float32),
    }
    model_only = []
    for _ in range(rounds):
        start = time.perf_counter()
        content.run(None, {"source": wav16})
        synth.run(None, feeds)
        model_only.append(time.perf_counter() - start)
    f0_only = []
    for _ in range(rounds):  # pyworld dio + stonemask on the same window (the CPU part of the stage)
        start = time.perf_counter()
        vc._f0(wav16.reshape(-1) + 0.01, frames, 2.0)
        f0_only.append(time.perf_counter() - start)
    rest = statistics.median(per_chunk) - statistics.median(model_only) - statistics.median(f0_only)
    return {
        "chunk_s": chunk_s,
        "context_s": vc.context_s,
        "backend_per_chunk": summary(per_chunk),
        "onnx_only_per_chunk": summary(model_only),
        "pyworld_f0_per_chunk": summary(f0_only),
        "graph_overhead_median_ms": round(rest * 1000, 3),
        "real_time_factor": round(statistics.median(per_chunk) / chunk_s, 4),
    }


async def bench_llama(rounds: int, workdir: Path) -> dict:
    from graph.backends.llm.llamacpp_python import LlamaCppPythonLLM

    path = build_tiny_gguf(workdir / "tiny.gguf")
    llm = LlamaCppPythonLLM(model_path=str(path), n_ctx=512, mode="completions")
    await llm.warmup()
    request = LLMRequest(prompt="hello miku", max_tokens=64, temperature=0.0)
    direct_first, direct_total, backend_first, backend_total, tokens = [], [], [], [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        for i, _part in enumerate(llm._llm.create_completion(prompt="User: hello miku\nMiku:", max_tokens=64, temperature=0.0, stream=True)):
            if i == 0:
                direct_first.append(time.perf_counter() - start)
        direct_total.append(time.perf_counter() - start)
        start = time.perf_counter()
        tokens = 0
        async for _token in llm.stream(request):
            if tokens == 0:
                backend_first.append(time.perf_counter() - start)
            tokens += 1
        backend_total.append(time.perf_counter() - start)
    await llm.aclose()
    return {
        "tokens_per_generation": tokens,
        "direct_first_token": summary(direct_first),
        "backend_first_token": summary(backend_first),
        "direct_total": summary(direct_total),
        "backend_total": summary(backend_total),
        "overhead_per_token_ms": round((statistics.median(backend_total) - statistics.median(direct_total)) / max(tokens, 1) * 1000, 4),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        result = {
            "benchmark": "backend_costs",
            "note": "tiny models: graph overhead around each backend, not model speed",
            "soprano": await bench_soprano(args.rounds),
            "rvc_onnx": await bench_rvc(args.rounds * 3, workdir),
            "llama_cpp_python": await bench_llama(args.rounds, workdir),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
