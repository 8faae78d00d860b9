"""Time to first audio of the voice graph, side by side in one run.

  (a) inproc     the graph logic in one process, no Ray (graph.voice.pipeline with simulated model timings)
  (b) serve      the same, through the Ray Serve deployments and the WebSocket contract, as shipped: direct
                 stage links and the ingress's direct voice port (found with GET /v1/voice/direct). The
                 same run also measures every other stage transport (`--transports`) and the way in
                 through Serve's HTTP proxy (`--entries`), side by side.
  (c) sentences  (a) with sentence-only aggregation, as common voice-agent frameworks do

Runs are interleaved a, b, c, a, b, c... so machine noise hits all three alike. Also: underruns after the
first frame over a 10-minute simulated session (virtual time via looptime), and RSS growth over 500
utterances. Prints JSON as its last line.

    python benchmarks/voice_latency.py [--utterances 40] [--skip-serve]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from benchmarks.stats import percentile, summary_ms  # noqa: E402
from graph.backends.simulated import (  # noqa: E402
    DEFAULT_REPLY,
    SHORT_OPENING_REPLY,
    SimulatedLLM,
    SimulatedTTS,
    SimulatedVC,
)
from graph.backends.vc.passthrough import PassthroughVC  # noqa: E402,F401
from graph.voice.pipeline import (  # noqa: E402
    Aggregation,
    AudioFrames,
    PipelineConfig,
    StageCalls,
    Utterance,
    UtteranceEnded,
    UtteranceMode,
    UtterancePipeline,
)
from graph.voice.types import LLMRequest  # noqa: E402

PROMPT = "Tell me about your favourite song."


def summary(values: list[float]) -> dict:
    return summary_ms(values, digits=2)


def stage_configs(args, reply: str = DEFAULT_REPLY) -> dict:
    return {
        "llm": {"backend": "simulated", "first_token_s": args.llm_first_token_ms / 1000,
                "tokens_per_s": args.llm_tokens_per_s, "reply": reply},
        "tts": {"backend": "simulated", "first_audio_s": args.tts_first_audio_ms / 1000, "real_time_factor": args.tts_rtf},
        "vc": {"backend": "simulated", "latency_s": args.vc_ms / 1000},
    }


def inproc_pipeline(args, aggregation: Aggregation, sleep=asyncio.sleep, clock=time.monotonic,
                    reply: str = DEFAULT_REPLY) -> UtterancePipeline:
    cfg = stage_configs(args, reply)
    strip = lambda c: {k: v for k, v in c.items() if k != "backend"}  # noqa: E731
    calls = StageCalls.from_backends(
        SimulatedLLM(sleep=sleep, **strip(cfg["llm"])),
        SimulatedTTS(sleep=sleep, **strip(cfg["tts"])),
        SimulatedVC(sleep=sleep, **strip(cfg["vc"])),
    )
    return UtterancePipeline(calls, PipelineConfig(aggregation=aggregation), clock=clock)


MILESTONES = ("first_token", "first_chunk", "first_tts_audio", "first_vc_audio", "first_frame")


async def ttfa_inproc(pipeline: UtterancePipeline, index: int, milestones: list | None = None) -> float:
    started = time.perf_counter()
    first = None
    async for event in pipeline.run(Utterance(f"a{index}", PROMPT, UtteranceMode.PROMPT, LLMRequest(PROMPT))):
        if first is None and isinstance(event, AudioFrames):
            first = (time.perf_counter() - started) * 1000
        if isinstance(event, UtteranceEnded) and milestones is not None:
            milestones.append(event.timings_ms)
    return first


def milestone_medians(timings: list[dict]) -> dict:
    return {m: round(statistics.median(t[m] for t in timings if m in t), 1) for m in MILESTONES}


class ServeGraph:
    """The graph deployed on a fresh local Ray, reached over the WebSocket contract.

    One application per stage transport (`voice.stage_transport`), sharing the cluster, each reached
    through every entry: its direct voice port ("port") and Serve's HTTP proxy ("proxy"). The first
    transport through the first entry is (b).
    """

    token = "bench-token"

    def __init__(self, args):
        from deployments.app import PROXY_ENV

        for key, value in PROXY_ENV.items():
            os.environ.setdefault(key, value)  # what `miku serve` and `ray start` in the docs use
        for setting in args.serve_env:
            key, _, value = setting.partition("=")
            os.environ[key] = value  # inherited by Ray's processes: Serve reads its flags at start
        # the Ray the project ships: loopback only, token auth (deployments/local_ray.py)
        from deployments.local_ray import start_local_ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        from ray import serve

        from deployments.app import compose_app

        start_local_ray(num_cpus=2, resources={"gtx1660": 1, "rx6800": 1}, include_dashboard=False,
                        logging_level="ERROR", log_to_driver=False)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        # every app gets its share of the two fake GPUs, or the last one would wait forever for its replicas
        share = 0.9 / len(args.transports)
        options = {
            "TextLLM": {"ray_actor_options": {"num_cpus": 0, "resources": {"rx6800": round(share / 3, 3)}}},
            "SopranoTTS": {"ray_actor_options": {"num_cpus": 0, "resources": {"gtx1660": round(share, 3)}}},
            "RVCVoice": {"ray_actor_options": {"num_cpus": 0, "resources": {"rx6800": round(share * 2 / 3, 3)}}},
        }
        self.transports = args.transports
        self.entries = args.entries
        for transport in self.transports:
            voice = {"token": self.token, "stage_transport": transport}
            serve.run(compose_app({**stage_configs(args), "voice": voice}, options),
                      name=f"bench-{transport}", route_prefix=f"/{transport}")
        self.ws = {}

    async def connect(self):
        import aiohttp
        import websockets

        headers = {"Authorization": f"Bearer {self.token}"}
        for transport in self.transports:
            urls = {"proxy": f"ws://127.0.0.1:{self.port}/{transport}/v1/voice"}
            async with aiohttp.ClientSession() as http:  # what the bot client does to find the voice port
                async with http.get(f"http://127.0.0.1:{self.port}/{transport}/v1/voice/direct", headers=headers) as response:
                    response.raise_for_status()
                    urls["port"] = (await response.json())["voice"]
            for entry in self.entries:
                self.ws[transport, entry] = await websockets.connect(urls[entry], additional_headers=headers, max_size=None)

    @property
    def variants(self) -> list[tuple[str, str]]:
        return [(transport, entry) for transport in self.transports for entry in self.entries]

    async def ttfa(self, variant: tuple[str, str], index: int, milestones: list | None = None) -> float:
        ws = self.ws[variant]
        request = {"type": "prompt", "id": f"b{index}", "text": PROMPT}
        started = time.perf_counter()
        await ws.send(json.dumps(request))
        first = None
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                if first is None:
                    first = (time.perf_counter() - started) * 1000
                continue
            event = json.loads(message)
            if event["type"] == "error":
                raise RuntimeError(f"graph error: {event}")
            if event["type"] == "utterance.end" and event["id"] == request["id"]:
                if milestones is not None:
                    milestones.append(event["timings"])
                return first

    async def close(self):
        import ray
        from ray import serve

        for ws in self.ws.values():
            await ws.close()
        serve.shutdown()
        ray.shutdown()


def simulated_session_underruns(args, minutes: float) -> dict:
    """Back-to-back utterances for `minutes` of virtual time; count gaps after each first frame."""
    import looptime

    loop = looptime.new_event_loop(start=0, noop_cycles=42)

    async def session():
        pipeline = inproc_pipeline(args, Aggregation.EARLY_FIRST_CHUNK, sleep=asyncio.sleep, clock=loop.time)
        underruns = utterances = frames = 0
        index = 0
        while loop.time() < minutes * 60:
            index += 1
            async for event in pipeline.run(Utterance(f"s{index}", PROMPT, UtteranceMode.PROMPT, LLMRequest(PROMPT))):
                if isinstance(event, UtteranceEnded):
                    underruns += event.underruns
                    frames += event.frames
                    utterances += 1
        return {"underruns": underruns, "utterances": utterances, "audio_minutes": round(frames * 0.02 / 60, 2),
                "virtual_minutes": round(loop.time() / 60, 2)}

    try:
        return loop.run_until_complete(session())
    finally:
        loop.close()


async def rss_growth(args, utterances: int) -> dict:
    fast = argparse.Namespace(**{**vars(args), "llm_first_token_ms": 0, "llm_tokens_per_s": 1e9,
                                 "tts_first_audio_ms": 0, "tts_rtf": 0, "vc_ms": 0})
    pipeline = inproc_pipeline(fast, Aggregation.EARLY_FIRST_CHUNK)
    process = psutil.Process()

    async def one(i):
        async for _ in pipeline.run(Utterance(f"r{i}", PROMPT, UtteranceMode.PROMPT, LLMRequest(PROMPT))):
            pass

    for i in range(50):  # warm caches and allocator pools first
        await one(i)
    gc.collect()
    before = process.memory_info().rss
    for i in range(utterances):
        await one(i)
    gc.collect()
    after = process.memory_info().rss
    return {"utterances": utterances, "rss_before_mb": round(before / 2**20, 1), "rss_growth_mb": round((after - before) / 2**20, 2)}


async def main_async(args) -> dict:
    a_times, c_times, short_a, short_c = [], [], [], []
    a_marks = []
    variants = [(t, e) for t in args.transports for e in args.entries]
    b_times = {v: [] for v in variants}
    b_marks = {v: [] for v in variants}
    early = inproc_pipeline(args, Aggregation.EARLY_FIRST_CHUNK)
    sentences = inproc_pipeline(args, Aggregation.SENTENCES_ONLY)
    early_short = inproc_pipeline(args, Aggregation.EARLY_FIRST_CHUNK, reply=SHORT_OPENING_REPLY)
    sentences_short = inproc_pipeline(args, Aggregation.SENTENCES_ONLY, reply=SHORT_OPENING_REPLY)
    graph = None
    if not args.skip_serve:
        print("starting Ray and the Serve graph ...", file=sys.stderr)
        graph = ServeGraph(args)
        await graph.connect()
        for i in range(3):  # warm-up: first calls pay for connection and replica start-up
            for variant in variants:
                await graph.ttfa(variant, -i - 1)
    for i in range(3):
        await ttfa_inproc(early, -i - 1)
        await ttfa_inproc(sentences, -i - 1)
    for i in range(args.utterances):
        a_times.append(await ttfa_inproc(early, i, a_marks))
        if graph:
            for variant in variants:
                b_times[variant].append(await graph.ttfa(variant, i, b_marks[variant]))
        c_times.append(await ttfa_inproc(sentences, i))
        if i < 10:
            short_a.append(await ttfa_inproc(early_short, i))
            short_c.append(await ttfa_inproc(sentences_short, i))
        print(f"  {i + 1}/{args.utterances}", file=sys.stderr, end="\r")
    if graph:
        await graph.close()
    result = {
        "benchmark": "voice_latency",
        "serve_env": args.serve_env,
        "timings": {"llm_first_token_ms": args.llm_first_token_ms, "llm_tokens_per_s": args.llm_tokens_per_s,
                    "tts_first_audio_ms": args.tts_first_audio_ms, "tts_rtf": args.tts_rtf, "vc_ms_per_chunk": args.vc_ms},
        "a_inproc": summary(a_times),
        "c_sentences_only": summary(c_times),
    }
    result["ratio_a_over_c_p50"] = round(result["a_inproc"]["p50_ms"] / result["c_sentences_only"]["p50_ms"], 3)
    result["short_opening_reply"] = {
        "a_p50_ms": round(statistics.median(short_a), 1), "c_p50_ms": round(statistics.median(short_c), 1),
        "ratio_a_over_c_p50": round(statistics.median(short_a) / statistics.median(short_c), 3),
    }
    result["a_milestones_p50_ms"] = milestone_medians(a_marks)
    if graph:
        def overhead(times: list[float]) -> dict:
            return {
                "p50": round(statistics.median(times) - statistics.median(a_times), 2),
                "p95": round(percentile(times, 95) - percentile(a_times, 95), 2),
                "paired_median": round(statistics.median([b - a for a, b in zip(a_times, times)]), 2),
            }

        main = variants[0]
        result["b_stage_transport"], result["b_entry"] = main
        result["b_serve"] = summary(b_times[main])
        result["b_milestones_p50_ms"] = milestone_medians(b_marks[main])
        result["b_overhead_ms"] = overhead(b_times[main])
        result["b_variants"] = {
            f"{transport}+{entry}": {**summary(b_times[transport, entry]), "overhead_ms": overhead(b_times[transport, entry]),
                                     "milestones_p50_ms": milestone_medians(b_marks[transport, entry])}
            for transport, entry in variants
        }
    result["rss"] = await rss_growth(args, args.rss_utterances)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--session-minutes", type=float, default=10.0)
    parser.add_argument("--rss-utterances", type=int, default=500)
    parser.add_argument("--llm-first-token-ms", type=float, default=250)
    parser.add_argument("--llm-tokens-per-s", type=float, default=40)
    parser.add_argument("--tts-first-audio-ms", type=float, default=60)
    parser.add_argument("--tts-rtf", type=float, default=0.1)
    parser.add_argument("--vc-ms", type=float, default=25)
    parser.add_argument("--skip-serve", action="store_true", help="only the in-process runs (no Ray)")
    parser.add_argument("--transports", type=lambda text: text.split(","), default=["direct", "grpc", "actor"],
                        help="stage transports to deploy side by side; the first is (b) (default: direct,grpc,actor)")
    parser.add_argument("--entries", type=lambda text: text.split(","), default=["port", "proxy"],
                        help="ways in to deploy side by side: the ingress's direct voice port, Serve's proxy (default: port,proxy)")
    parser.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for Ray/Serve (e.g. RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    result["session"] = simulated_session_underruns(args, args.session_minutes)
    targets = {
        "ratio_a_over_c_at_most_0.6": result["ratio_a_over_c_p50"] <= 0.6,
        "zero_underruns": result["session"]["underruns"] == 0,
        "rss_growth_under_20mb": result["rss"]["rss_growth_mb"] < 20,
    }
    if "b_overhead_ms" in result:
        targets["b_overhead_p50_at_most_10ms"] = result["b_overhead_ms"]["p50"] <= 10
        targets["b_overhead_p95_at_most_25ms"] = result["b_overhead_ms"]["p95"] <= 25
    result["targets_met"] = targets
    print(json.dumps(result))


if __name__ == "__main__":
    main()
