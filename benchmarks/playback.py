"""Playback cadence through discord.py's real AudioPlayer thread and real libopus.

Three producers feed a JitterBuffer the way the graph's WebSocket reader does (groups of 20 ms frames):
  steady   the graph runs ahead of real time (groups arrive faster than they play)
  jittery  groups of 100 ms arrive around real time with random network jitter (seeded)
  stall    the graph stops for --stall-ms in the middle of an utterance
For each: packet interval median/p95/max (target 20 ms), packets sent during the stall against what its
length allows (silence keeps flowing, so ~1.0; a blocking source would give ~0 and then a burst), packets
sent back to back (< 5 ms: the player thread catching up after the OS held it up), underruns, short
frames (must be 0), time spent in read() (must never block), and the SNR of the decoded Opus against the
frames fed in.

Then music + voice, side by side in the same run: the same voice (utterances with pauses between them,
groups arriving with network jitter) once with the music mixer off and once with a track playing under
it (a 44.1 kHz stereo FLAC written with PyAV, so decoding and resampling run in their thread as in a
session; ducked while she speaks, limited). Both report packet cadence, read() p50/p99/max, voice
underruns and short frames; the mixer-on side also music frames starved (decoder behind) and frames the
limiter touched. Prints JSON as its last line.

    .venv/bin/python benchmarks/playback.py [--seconds 10] [--prebuffer-ms 100] [--seed 7] [--music-rounds 2]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot_client.config import MusicConfig  # noqa: E402
from bot_client.jitter import FRAME_BYTES, JitterBuffer  # noqa: E402
from bot_client.music import MusicPlayer, resolve_track  # noqa: E402
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

    def __init__(self, buffer: JitterBuffer, music: MusicPlayer | None = None) -> None:
        super().__init__(buffer, music=music)
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


def write_music(path: Path, seconds: float) -> Path:
    """A stereo chord at 44.1 kHz in FLAC (PyAV), so the session's decode + resample path runs."""
    import av

    rate = 44_100
    t = np.arange(int(seconds * rate)) / rate
    left = 0.3 * np.sin(2 * np.pi * 261.6 * t) + 0.2 * np.sin(2 * np.pi * 329.6 * t)
    right = 0.3 * np.sin(2 * np.pi * 392.0 * t) + 0.2 * np.sin(2 * np.pi * 523.3 * t)
    pcm = (np.stack([left, right], axis=1) * 32767).astype("<i2")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=rate, layout="stereo")
        for start in range(0, len(pcm), 4096):
            frame = av.AudioFrame.from_ndarray(pcm[start:start + 4096].reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


async def run_music(mixer_on: bool, seconds: float, prebuffer_ms: int, music_dir: Path, seed: int) -> dict:
    """Utterances of 1-2 s with 0.3-1 s pauses, groups arriving around real time with jitter."""
    rng = random.Random(seed)  # the same voice on both sides
    loop = asyncio.get_running_loop()
    vc = RecordingVoiceClient(loop)
    buf = JitterBuffer(prebuffer_ms=prebuffer_ms)
    music = MusicPlayer(MusicConfig(directory=str(music_dir), volume=80)) if mixer_on else None
    source = TimedSource(buf, music)
    done = asyncio.Event()
    vc.play(source, after=lambda err: loop.call_soon_threadsafe(done.set))
    if music is not None:
        music.enqueue(resolve_track("music.flac", music.config))
    start = loop.time()
    sent_frames = utterances = 0
    while loop.time() - start < seconds:
        frames = rng.randint(50, 100)
        audio = speechlike(frames, rng)
        buf.begin(f"u{utterances}")
        begun = loop.time()
        for index, offset in enumerate(range(0, len(audio), GROUP * FRAME_BYTES)):
            due = begun + index * GROUP * 0.020 + rng.uniform(-0.04, 0.04)
            await asyncio.sleep(max(0.0, due - loop.time()))
            buf.write(audio[offset:offset + GROUP * FRAME_BYTES])
        buf.end(f"u{utterances}")
        utterances += 1
        sent_frames += frames
        while buf.stats().utterances_played < utterances:
            await asyncio.sleep(0.01)
        await asyncio.sleep(rng.uniform(0.3, 1.0))
    if music is not None:
        music.close()
    buf.close()
    await asyncio.wait_for(done.wait(), 10)

    packets = vc.audio_packets()
    times = [p.at for p in packets]
    intervals_ms = [(b - a) * 1000 for a, b in zip(times, times[1:])]
    stats = buf.stats()
    samples = np.frombuffer(vc.fed_pcm(), dtype="<i2")
    result = {
        "packets": len(packets),
        "utterances": utterances,
        "voice_frames": stats.frames_played,
        "underruns": stats.underruns,
        "short_frames": sum(1 for p in packets if p.pcm_bytes != FRAME_BYTES) + source.short_reads,
        "interval_ms_p50": round(statistics.median(intervals_ms), 3),
        "interval_ms_p95": round(pct(intervals_ms, 95), 3),
        "interval_ms_max": round(max(intervals_ms), 3),
        "abs_jitter_ms_p95": round(pct([abs(i - 20.0) for i in intervals_ms], 95), 3),
        "catch_up_packets": sum(1 for i in intervals_ms if i < 5.0),
        "read_us_p50": round(pct(source.read_s, 50) * 1e6, 2),
        "read_us_p99": round(pct(source.read_s, 99) * 1e6, 2),
        "read_us_max": round(max(source.read_s) * 1e6, 2),
        "peak_abs": int(np.abs(samples.astype(np.int32)).max()) if len(samples) else 0,
    }
    if music is not None:
        result["music_frames"] = music.frames_played
        result["music_starved_frames"] = music.starved_frames
        result["limited_frames"] = source.mixer.limited_frames if source.mixer is not None else 0
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--prebuffer-ms", type=int, default=100)
    parser.add_argument("--stall-ms", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--music-rounds", type=int, default=2, help="runs per side of music+voice (ABBA order)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = {}
    for scenario in ("steady", "jittery", "stall"):
        results[scenario] = await run(scenario, args.seconds, args.prebuffer_ms, args.stall_ms, rng)
        print(f"{scenario}: {results[scenario]}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as music_dir:
        write_music(Path(music_dir) / "music.flac", args.seconds + 5.0)
        # Off, on, on, off (ABBA): a load burst from elsewhere on the machine hits both sides alike.
        music_results: dict[str, list[dict]] = {"mixer_off": [], "mixer_on": []}
        order = [False, True, True, False] if args.music_rounds > 1 else [False, True]
        for round_index in range(max(1, args.music_rounds // 2)):
            for mixer_on in order:
                label = "mixer_on" if mixer_on else "mixer_off"
                result = await run_music(mixer_on, args.seconds, args.prebuffer_ms, Path(music_dir),
                                         args.seed + round_index)
                music_results[label].append(result)
                print(f"music+voice {label}: {result}", file=sys.stderr)
    summary = {
        "benchmark": "playback",
        "seconds_per_scenario": args.seconds,
        "prebuffer_ms": args.prebuffer_ms,
        "scenarios": results,
        "short_frames_total": sum(r["short_frames"] for r in results.values()),
        "cadence_ok": all(15.0 <= r["interval_ms_p50"] <= 25.0 for r in results.values()),
        "silence_flows_during_stall": 0.8 <= results["stall"].get("packets_during_stall_ratio", 0.0) <= 1.2,
        "read_never_blocks": all(r["read_us_p99"] < 1000.0 for r in results.values()),
        "music_voice": music_results,
        "music_cadence_ok": all(15.0 <= r["interval_ms_p50"] <= 25.0 for runs in music_results.values() for r in runs),
        "music_read_p99_under_1ms": all(r["read_us_p99"] < 1000.0 for runs in music_results.values() for r in runs),
        "music_short_frames": sum(r["short_frames"] for runs in music_results.values() for r in runs),
        "music_no_clipping": all(r["peak_abs"] < 32767 for r in music_results["mixer_on"]),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
