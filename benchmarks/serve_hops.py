"""What one hop to a stage costs, by transport: Ray's actor-task path, the replica's gRPC server, and the
direct stage link (graph/voice/stage_link.py, a WebSocket kept open to the replica).

The voice graph makes four hops on the way to the first audio (proxy -> ingress, ingress -> TextLLM,
-> SopranoTTS, -> RVCVoice), so the cost of one hop, times four, is the floor of the Serve overhead
that `voice_latency.py` measures. A caller deployment calls an echo deployment the way the ingress
calls the stages: unary (like RVCVoice.convert, with a 200 ms audio chunk) and streaming (like
TextLLM.stream and SopranoTTS.synthesize), alternating the transports call by call so machine noise
hits all alike. Prints JSON as its last line.

    python benchmarks/serve_hops.py [--calls 300]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.stats import summary_ms  # noqa: E402
from graph.voice.stage_link import CallKind, LinkMethod, StageLink, StageLinkServer  # noqa: E402
from graph.voice.types import AudioChunk, VCResult  # noqa: E402


class LinkedStage:
    """The link's calls shaped like a handle's, so one loop measures every transport."""

    def __init__(self, link: StageLink):
        self.link = link

    async def convert(self, chunk: AudioChunk) -> VCResult:
        return await self.link.call("convert", chunk)

    async def stream(self, pieces: int):
        async for item in await self.link.start("stream", pieces):
            yield item


def build(calls: int):
    from ray import serve

    from deployments.voice.ingress import with_transport

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Stage:
        async def __init__(self):
            self.link = StageLinkServer({"convert": LinkMethod(CallKind.UNARY, self.convert),
                                         "stream": LinkMethod(CallKind.STREAM, self.stream)}, stage="vc", backend="echo")
            self.endpoint = await self.link.start()

        async def link_endpoint(self):
            return self.endpoint

        async def convert(self, chunk: AudioChunk) -> VCResult:
            return VCResult(AudioChunk(chunk.samples, chunk.sample_rate))

        async def stream(self, pieces: int):
            for i in range(pieces):
                yield f" token{i}"

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Caller:
        def __init__(self, stage):
            self.stage = stage
            self.stages = {transport: with_transport(stage, transport) for transport in ("actor", "grpc")}

        async def measure(self, n: int) -> dict:
            if "direct" not in self.stages:
                self.stages["direct"] = LinkedStage(StageLink(await self.stage.link_endpoint.remote()))
            chunk = AudioChunk(np.zeros(9600, np.float32), 48_000)  # 200 ms, what VC gets per call
            times = {t: {"unary_audio": [], "stream_first": [], "stream_20": []} for t in self.stages}
            for _ in range(n):
                for transport, stage in self.stages.items():
                    linked = transport == "direct"
                    started = time.perf_counter()
                    await (stage.convert(chunk) if linked else stage.convert.remote(chunk))
                    times[transport]["unary_audio"].append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    first = None
                    async for _ in (stage.stream(20) if linked else stage.options(stream=True).stream.remote(20)):
                        if first is None:
                            first = (time.perf_counter() - started) * 1000
                    times[transport]["stream_first"].append(first)
                    times[transport]["stream_20"].append((time.perf_counter() - started) * 1000)
            return {t: {k: summary_ms(v) for k, v in kinds.items()} for t, kinds in times.items()}

    return Caller.bind(Stage.bind())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    # the Ray the project ships: loopback only, token auth (deployments/local_ray.py)
    from deployments.local_ray import start_local_ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        handle = serve.run(build(args.calls), name="hops", route_prefix=None)

        async def run() -> dict:
            await handle.measure.remote(20)  # warm-up: connections, channels, replica start
            return await handle.measure.remote(args.calls)

        result = asyncio.run(run())
    finally:
        serve.shutdown()
        ray.shutdown()
    def ratios(over: str, under: str) -> dict:
        return {kind: round(result[over][kind]["p50_ms"] / result[under][kind]["p50_ms"], 3) for kind in result[over]}

    print(json.dumps({"benchmark": "serve_hops", "calls": args.calls, **result,
                      "grpc_over_actor_p50": ratios("grpc", "actor"), "direct_over_grpc_p50": ratios("direct", "grpc")}))


if __name__ == "__main__":
    main()
