"""End of speech to Miku's first audio, and barge-in reaction, side by side in one run.

  (a) ours       silero VAD ends the turn after `listen.end_silence_ms` (500 ms) of silence, the STT backend
                 transcribes the turn, the graph answers (graph.voice.pipeline with voice_latency.py's
                 simulated model timings, run for real)
  (b) fixed_2s   what open Discord voice bots do: wait for 2 s without audio energy, then the same STT and
                 the same graph

Both hear the same recorded speech (espeak-ng sentences, several voices). The time of end of speech is
the last sample louder than -34 dBFS. The end-of-turn wait is counted in audio time (each 20 ms frame
arrives at its end), plus the measured compute of the frames that ended it; STT and the graph are
measured wall time.

Barge-in reaction (the user starts speaking while Miku talks -> her frames stop): ours sends `pause` at
the VAD onset (frames held at the client; `barge_in` cuts them after 300 ms of speech, also reported);
the client's playout tick adds up to one 20 ms frame (counted as 20 ms). (b) has no barge-in: Miku talks
to the end of her answer. Network and Discord's own receive delay are not included in either.

    python benchmarks/voice_turns.py [--stt pocketsphinx] [--turns 12]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stats import summary_ms  # noqa: E402
from benchmarks.voice_latency import inproc_pipeline, ttfa_inproc  # noqa: E402
from graph.backends.base import create_backend  # noqa: E402
from graph.listen.audio_in import espeak_16k, frames_20ms, silence, to_pcm16  # noqa: E402
from graph.listen.config import ListenConfig  # noqa: E402
from graph.listen.protocol import audio_frame  # noqa: E402
from graph.listen.session import ListenSession  # noqa: E402
from graph.listen.types import STTOptions  # noqa: E402
from graph.listen.vad import SpeechDetector, VadEventKind  # noqa: E402
from graph.voice.pipeline import Aggregation  # noqa: E402

SENTENCES = [
    "Can you sing a song for me?", "What is your favourite colour?", "Hello Miku, how are you today?",
    "Tell me something about the weather.", "I had a really long day at work.", "Do you like to dance?",
]
VOICES = [("en-us", 150), ("en-us+m3", 170), ("en", 135), ("en-us+f3", 160)]
LOUD = 0.02  # -34 dBFS: what counts as audio energy (the baseline's endpointer and our "end of speech")
FRAME_S = 0.02
BASELINE_SILENCE_S = 2.0
CLIENT_TICK_MS = 20.0


def voiced_bounds(samples: np.ndarray) -> tuple[float, float]:
    loud = np.flatnonzero(np.abs(samples) > LOUD)
    return loud[0] / 16000, (loud[-1] + 1) / 16000


def ours_end_of_turn(samples: np.ndarray, config: ListenConfig) -> tuple[float, float, np.ndarray]:
    """(audio time the VAD ended the turn, compute of the frame that ended it, the turn's audio)."""
    detector = SpeechDetector(config)
    for index, frame in enumerate(frames_20ms(samples)):
        started = time.perf_counter()
        events = detector.feed(frame)
        compute = time.perf_counter() - started
        for event in events:
            if event.kind is VadEventKind.ENDED:
                return (index + 1) * FRAME_S, compute, event.audio
    raise RuntimeError("the VAD never ended the turn")


def fixed_end_of_turn(samples: np.ndarray) -> tuple[float, np.ndarray]:
    """An energy endpointer that waits 2 s without a loud 20 ms frame; the buffer it transcribes."""
    quiet_since = None
    first = None
    for index, frame in enumerate(frames_20ms(samples)):
        loud = np.max(np.abs(frame)) > LOUD
        if loud:
            first = index if first is None else first
            quiet_since = None
        elif first is not None:
            quiet_since = index if quiet_since is None else quiet_since
            if (index + 1 - quiet_since) * FRAME_S >= BASELINE_SILENCE_S:
                end = (index + 1) * FRAME_S
                return end, samples[int(first * FRAME_S * 16000):int(end * 16000)]
    raise RuntimeError("the baseline never ended the turn")


async def barge_in_reactions(samples: np.ndarray, config: ListenConfig, lead_s: float) -> tuple[float, float]:
    """(ms from speech onset to `pause` reaching the client's playout, ms to `barge_in`) through a real
    ListenSession with Miku speaking."""
    sent: list[tuple[str, float]] = []
    clock = {"audio_s": 0.0, "compute_s": 0.0}

    async def collect(message: dict) -> None:
        sent.append((message["type"], clock["audio_s"] + clock["compute_s"]))

    async def noop(audio, options):
        return None

    async def inline(function, *args):
        return function(*args)

    session = ListenSession(config, noop, collect, run_vad=inline)
    await session.handle_raw(json.dumps({"type": "start", "guild_id": "1", "channel_id": "1"}))
    await session.handle_raw(json.dumps({"type": "speaker", "user_id": "7", "name": "Ann"}))
    await session.handle_raw(json.dumps({"type": "speaking", "value": True}))
    audio = np.concatenate([silence(lead_s), samples])
    onset = lead_s + voiced_bounds(samples)[0]
    for index, frame in enumerate(frames_20ms(to_pcm16(audio))):
        clock["audio_s"] = (index + 1) * FRAME_S  # the frame arrives when its 20 ms have been spoken
        started = time.perf_counter()
        await session.handle_raw(audio_frame(7, frame))
        clock["compute_s"] = time.perf_counter() - started
        if any(kind == "barge_in" for kind, _ in sent):
            break
    await session.close()
    pause = next(at for kind, at in sent if kind == "pause")
    cut = next(at for kind, at in sent if kind == "barge_in")
    return (pause - onset) * 1000 + CLIENT_TICK_MS, (cut - onset) * 1000 + CLIENT_TICK_MS


async def main_async(args) -> dict:
    config = ListenConfig()
    stt = create_backend("stt", {"backend": args.stt, **dict(o.split("=", 1) for o in args.stt_option)})
    await stt.warmup()
    timings = SimpleNamespace(llm_first_token_ms=250, llm_tokens_per_s=40, tts_first_audio_ms=60, tts_rtf=0.1, vc_ms=25)
    pipeline = inproc_pipeline(timings, Aggregation.EARLY_FIRST_CHUNK)
    await ttfa_inproc(pipeline, -1)  # warm
    ours, fixed = {"total": [], "wait": [], "stt": [], "graph": []}, {"total": [], "wait": [], "stt": [], "graph": []}
    pause_ms, cut_ms = [], []
    rng = np.random.default_rng(7)
    for index in range(args.turns):
        sentence = SENTENCES[index % len(SENTENCES)]
        voice, wpm = VOICES[index % len(VOICES)]
        speech = espeak_16k(sentence, voice, wpm)
        lead = float(rng.uniform(0.2, 0.6))  # where the speech falls against the 32 ms VAD windows
        recording = np.concatenate([silence(lead), speech, silence(3.0)])
        end_of_speech = lead + voiced_bounds(speech)[1]
        # (a) and (b) interleaved per turn, so machine noise hits both alike
        ended_at, vad_compute, turn_audio = ours_end_of_turn(recording, config)
        started = time.perf_counter()
        await stt.transcribe(turn_audio, STTOptions())
        stt_a = time.perf_counter() - started
        graph_a = await ttfa_inproc(pipeline, index) / 1000
        wait_a = ended_at - end_of_speech + vad_compute
        baseline_end, baseline_audio = fixed_end_of_turn(recording)
        started = time.perf_counter()
        await stt.transcribe(baseline_audio, STTOptions())
        stt_b = time.perf_counter() - started
        graph_b = await ttfa_inproc(pipeline, 1000 + index) / 1000
        wait_b = baseline_end - end_of_speech
        for bucket, wait, stt_s, graph_s in ((ours, wait_a, stt_a, graph_a), (fixed, wait_b, stt_b, graph_b)):
            bucket["wait"].append(wait * 1000)
            bucket["stt"].append(stt_s * 1000)
            bucket["graph"].append(graph_s * 1000)
            bucket["total"].append((wait + stt_s + graph_s) * 1000)
        pause, cut = await barge_in_reactions(speech, config, lead)
        pause_ms.append(pause)
        cut_ms.append(cut)
    await stt.aclose()

    def report(bucket):
        return {"end_of_speech_to_first_audio": summary_ms(bucket["total"], 1), "end_of_turn_wait": summary_ms(bucket["wait"], 1),
                "stt": summary_ms(bucket["stt"], 1), "graph_first_audio": summary_ms(bucket["graph"], 1)}

    result = {
        "stt_backend": args.stt,
        "turns": args.turns,
        "ours": report(ours),
        "fixed_2s": report(fixed),
        "barge_in": {"ours_frames_stop": summary_ms(pause_ms, 1), "ours_cut": summary_ms(cut_ms, 1),
                     "fixed_2s": "no barge-in: her answer plays to its end"},
    }
    gain = result["fixed_2s"]["end_of_speech_to_first_audio"]["p50_ms"] - result["ours"]["end_of_speech_to_first_audio"]["p50_ms"]
    result["p50_gain_ms"] = round(gain, 1)
    result["targets"] = {"p50_gain_at_least_1400_ms": bool(gain >= 1400),
                         "barge_in_p95_at_most_250_ms": bool(result["barge_in"]["ours_frames_stop"]["p95_ms"] <= 250)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stt", default="pocketsphinx")
    parser.add_argument("--stt-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--turns", type=int, default=12)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
