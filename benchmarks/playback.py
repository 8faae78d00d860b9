"""Playback cadence through discord.py's real AudioPlayer thread and real libopus.

Three producers feed a JitterBuffer the way the graph's WebSocket reader does (groups of 20 ms frames):
  steady   the graph runs ahead of real time (groups arrive faster than they play)
  jittery  groups of 100 ms arrive around real time with random network jitter (seeded)
  stall    the graph stops for --stall-ms in the middle of an utterance
For each: packet interval median/p95/max (target 20 ms), packets sent during the stall against what its
length allows (silence keeps flowing, so ~1.0; a blocking source would give ~0 and then a burst), packets
sent back to back (< 5 ms: the player thread catching up after the OS held it up), underruns, short
frames (must be 0), time spent in read() (must never block), and the SNR of the decoded Opus against the
frames fed in. Prints JSON as its last line.

    .venv/bin/python benchmarks/playback.py [--seconds 10] [--prebuffer-ms 100] [--seed 7]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot_client.jitter import FRAME_BYTES, JitterBuffer  # noqa: E402
from bot_client.loopback import RecordingVoiceClient, aligned_snr_db  # noqa: E402
from bot_client.playback import JitterAudioSource  # noqa: E402

SR = 48_000
GROUP = 5  # frames per WebSocket message


def speechlike(frames: int, rng: random.Random) -> bytes:
    """A voiced, pitch-gliding signal with syllable-like amplitude, stereo s16le."""
    t = np.arange(frames * 960) / SR
    f0 = 220 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.random())
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.25 * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t) ** 2)
    mono = (voice * envelope * 32767 * 0.5).astype("<i2")
    return np.repeat(mono[:, None], 2, axis=1).tobytes()


class TimedSource(JitterAudioSource):
    """Measures how long each read() takes (it must return at once)."""

    def __init__(self, buffer: JitterBuffer) -> None:
        super().__init__(buffer)
        self.read_s: list[float] = []

    def read(self) -> bytes:
        start = time.perf_counter()
        frame = super().read()
        self.read_s.append(time.perf_counter() - start)
        return frame


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


async def run(scenario: str, seconds: float, prebuffer_ms: int, stall_ms: int, rng: random.Random) -> dict:
    loop = asyncio.get_running_loop()
    vc = RecordingVoiceClient(loop)
    buf = JitterBuffer(prebuffer_ms=prebuffer_ms)
    source = TimedSource(buf)
    done = asyncio.Event()
    vc.play(source, after=lambda err: loop.call_soon_threadsafe(done.set))

    frames = int(seconds * 50)
    audio = speechlike(frames, rng)
    groups = [audio[i:i + GROUP * FRAME_BYTES] for i in range(0, len(audio), GROUP * FRAME_BYTES)]
    buf.begin("u")
    stall_at = len(groups) // 2
    stall_start_time = stall_end_time = None
    start = loop.time()
    for index, group in enumerate(groups):
        if scenario == "steady":
            await asyncio.sleep(0.005)  # the graph runs ~20x faster than real time
        elif scenario == "jittery":
            due = start + index * GROUP * 0.020 + rng.uniform(-0.06, 0.06)
            await asyncio.sleep(max(0.0, due - loop.time()))
        elif scenario == "stall":
            due = start + index * GROUP * 0.020 - 0.2  # a little ahead of real time
            if index == stall_at:
                stall_start_time = time.perf_counter()
                await asyncio.sleep(stall_ms / 1000)
                stall_end_time = time.perf_counter()
                start += stall_ms / 1000
                due = loop.time()
            await asyncio.sleep(max(0.0, due - loop.time()))
        buf.write(group)
    buf.end("u")
    while buf.stats().utterances_played < 1:
        await asyncio.sleep(0.02)
    buf.close()
    await asyncio.wait_for(done.wait(), 10)

    packets = vc.audio_packets()
    times = [p.at for p in packets]
    intervals_ms = [(b - a) * 1000 for a, b in zip(times, times[1:])]
    after_stall = [
        (b - a) * 1000 for a, b in zip(times, times[1:]) if stall_end_time is not None and a >= stall_end_time
    ][:25]
    fed = np.frombuffer(vc.fed_pcm(), dtype="<i2").reshape(-1, 2)[:, 0]
    decoded = np.frombuffer(vc.decode_all(), dtype="<i2").reshape(-1, 2)[:, 0]
    stats = buf.stats()
    result = {
        "packets": len(packets),
        "audio_frames": stats.frames_played,
        "silence_frames": stats.silence_frames,
        "underruns": stats.underruns,
        "stalls": stats.stalls,
        "short_frames": sum(1 for p in packets if p.pcm_bytes != FRAME_BYTES),
        "interval_ms_p50": round(statistics.median(intervals_ms), 3),
        "interval_ms_p95": round(pct(intervals_ms, 95), 3),
        "interval_ms_max": round(max(intervals_ms), 3),
        "abs_jitter_ms_p95": round(pct([abs(i - 20.0) for i in intervals_ms], 95), 3),
        "drift_ms": round((times[-1] - times[0]) * 1000 - 20.0 * (len(times) - 1), 3),
        "read_us_p50": round(pct(source.read_s, 50) * 1e6, 2),
        "read_us_p99": round(pct(source.read_s, 99) * 1e6, 2),
        "read_us_max": round(max(source.read_s) * 1e6, 2),
        "snr_db": round(aligned_snr_db(fed, decoded), 2),
    }
    # Intervals under 5 ms are the player catching up after its own thread was held up (CPU contention):
    # discord.py's AudioPlayer sends late frames back to back. read() itself never blocks (read_us_*).
    result["catch_up_packets"] = sum(1 for i in intervals_ms if i < 5.0)
    if after_stall:
        result["min_interval_after_stall_ms"] = round(min(after_stall), 3)
    if stall_start_time is not None and stall_end_time is not None:
        during = sum(1 for t in times if stall_start_time <= t < stall_end_time)
        # Silence keeps flowing at 20 ms during the stall: packets sent / packets the stall's length allows.
        result["packets_during_stall_ratio"] = round(during / ((stall_end_time - stall_start_time) / 0.020), 3)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--prebuffer-ms", type=int, default=100)
    parser.add_argument("--stall-ms", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = {}
    for scenario in ("steady", "jittery", "stall"):
        results[scenario] = await run(scenario, args.seconds, args.prebuffer_ms, args.stall_ms, rng)
        print(f"{scenario}: {results[scenario]}", file=sys.stderr)
    summary = {
        "benchmark": "playback",
        "seconds_per_scenario": args.seconds,
        "prebuffer_ms": args.prebuffer_ms,
        "scenarios": results,
        "short_frames_total": sum(r["short_frames"] for r in results.values()),
        "cadence_ok": all(15.0 <= r["interval_ms_p50"] <= 25.0 for r in results.values()),
        "silence_flows_during_stall": 0.8 <= results["stall"].get("packets_during_stall_ratio", 0.0) <= 1.2,
        "read_never_blocks": all(r["read_us_p99"] < 1000.0 for r in results.values()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
