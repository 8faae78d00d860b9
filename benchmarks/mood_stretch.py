"""What a mood's speaking rate costs on backends that get it as a WORLD time-stretch (soprano,
soprano-zmq, remote-pipeline, openai-speech with `rate_control: stretch`).

It measures, side by side in one run on the same espeak-ng sentence: the stretch's compute per block
(ms, and its real-time factor) at the stream block size (graph/backends/tts/stretch.py, 300 ms after a
120 ms first block) and at
the rates the moods use, at 32 kHz (Soprano) and 48 kHz (remote-pipeline); and the added time to first
audio of a stream that delivers 64 ms pieces (Soprano's streaming step) at rate 1.0 (passthrough) vs
rate 1.25, when pieces arrive faster than real time (the stretch waits for a whole block first).

    .venv/bin/python benchmarks/mood_stretch.py [--rounds N]

Prints one JSON object as its last line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stats import percentile  # noqa: E402
from graph.backends.tts.espeak import EspeakTTS  # noqa: E402
from graph.backends.tts.stretch import DEFAULT_MIN_BLOCK_S, stretch_stream, time_stretch  # noqa: E402
from graph.voice.types import AudioChunk, TTSOptions  # noqa: E402

SENTENCE = "Hello everyone, it is so nice to sing with all of you tonight."
PIECE_S = 0.064  # soprano's streamed piece
PIECE_GAP_S = 0.0064  # a piece every 6.4 ms: Soprano at a real-time factor of 0.1


async def _espeak() -> AudioChunk:
    pieces = [p.samples async for p in EspeakTTS().synthesize(SENTENCE, TTSOptions())]
    return AudioChunk(np.concatenate(pieces), 22_050)


async def _first_audio_s(audio: np.ndarray, rate_hz: int, speed: float) -> float:
    step = int(rate_hz * PIECE_S)

    async def pieces():
        for start in range(0, len(audio), step):
            await asyncio.sleep(PIECE_GAP_S)
            yield AudioChunk(audio[start: start + step], rate_hz)

    started = time.perf_counter()
    stream = stretch_stream(pieces(), speed)
    await anext(stream)
    elapsed = time.perf_counter() - started
    await stream.aclose()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    speech = asyncio.run(_espeak())
    result: dict = {"block_s": DEFAULT_MIN_BLOCK_S, "rounds": args.rounds, "stretch": {}, "first_audio_ms": {}}
    for rate_hz in (32_000, 48_000):
        audio = soxr.resample(speech.samples, speech.sample_rate, rate_hz).astype(np.float32)
        block = audio[int(rate_hz * 0.5): int(rate_hz * (0.5 + DEFAULT_MIN_BLOCK_S))]  # a voiced 300 ms
        for speed in (0.78, 1.25):
            times = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                time_stretch(block, rate_hz, speed)
                times.append(time.perf_counter() - started)
            result["stretch"][f"{rate_hz}Hz_rate{speed}"] = {
                "block_ms_median": round(statistics.median(times) * 1000, 2),
                "block_ms_p95": round(percentile(times, 95) * 1000, 2),
                "rtf_median": round(statistics.median(times) / DEFAULT_MIN_BLOCK_S, 3),
            }
        for speed in (1.0, 1.25):
            firsts = [asyncio.run(_first_audio_s(audio, rate_hz, speed)) for _ in range(args.rounds)]
            result["first_audio_ms"][f"{rate_hz}Hz_rate{speed}"] = round(statistics.median(firsts) * 1000, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
