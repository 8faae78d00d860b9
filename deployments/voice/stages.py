"""The three model-stage deployments: TextLLM, SopranoTTS and RVCVoice.

Each one hosts a backend from `graph.backends` chosen by config; placement (which GPU resource, how many
CPUs, device env vars) comes from the Serve config file, never from code. Streaming methods are async
generators called with `handle.options(stream=True)`; when the caller cancels, Serve cancels the
generator here and the backend closes its upstream (HTTP stream, subprocess, worker request).

Each replica also serves the same methods over a direct stage link (graph.voice.stage_link), the voice path's
data plane with `voice.stage_transport: direct`: the ingress asks `link_endpoint()` through its Serve
handle, then keeps a WebSocket open to this replica. A link that drops cancels its calls here too.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import ray
from ray import serve

from deployments.heap import freeze_startup_heap
from deployments.metrics import CpuMeter
from deployments.telemetry import TelemetryExporter
from graph.backends import create_backend
from graph.backends.base import PROBE_TIMEOUT_S
from graph.voice.pipeline import backend_label
from graph.voice.stage_link import CallKind, LinkEndpoint, LinkMethod, StageLinkServer
from graph.voice.types import (
    AudioChunk,
    LLMRequest,
    StageStatus,
    TTSOptions,
    VCOptions,
    VCResult,
)


WATCH_BEAT_S = 0.5  # see _BackendHost.watch
WATCH_BEATS = 4


async def probe_backend(backend, timeout_s: float = PROBE_TIMEOUT_S * 2) -> str | None:
    """None when the backend's own probe passes; else what is down, naming the backend and its URL.

    Not wired into Serve's check_health on purpose: a replica restart cannot revive a dead Soprano or RVC
    container, it would only churn replicas (and fail their warm-up) until the container is back.
    """
    try:
        await asyncio.wait_for(backend.probe(), timeout_s)
    except TimeoutError:
        return f"{backend_label(backend)} is down: no answer to its health probe within {timeout_s:g} s"
    except Exception as error:  # noqa: BLE001 - any failure of the probe is the backend being down
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        label = backend_label(backend)
        return message if label in message else f"{label}: {message}"
    return None


class _BackendHost:
    stage = "?"

    def _link_methods(self) -> dict[str, LinkMethod]:
        raise NotImplementedError

    async def _start(self, config: dict) -> None:
        started = time.monotonic()
        self.backend = create_backend(self.stage, config)
        await self.backend.warmup()
        self.ready_s = time.monotonic() - started
        # on the node's address (what Ray uses), so an ingress on another node can reach it
        self.link = StageLinkServer(self._link_methods(), stage=self.stage, backend=backend_label(self.backend),
                                    host=ray.util.get_node_ip_address())
        self.endpoint = await self.link.start()
        # each stage replica reports the GPUs it can see (absent on a CPU machine) as Ray gauges
        self.telemetry = TelemetryExporter()
        self.telemetry.start()
        self.cpu = CpuMeter(self.stage)  # process CPU of this replica, per stage, as Ray gauges
        self.cpu.start()
        freeze_startup_heap()  # last: everything set up so far lives as long as the replica

    async def link_endpoint(self) -> LinkEndpoint:
        """Where this replica's stage link listens, and its secret (only ever handed out through Ray)."""
        return self.endpoint

    async def status(self) -> StageStatus:
        context = ray.get_runtime_context()
        detail = {
            **self.backend.describe(),
            "ready_s": round(self.ready_s, 3),
            # where Serve placed this replica, so /healthz shows the GPU pinning at a glance
            "node_id": context.get_node_id(),
            "resources": {k: v for k, v in context.get_assigned_resources().items() if k != "CPU"},
        }
        if self.telemetry.latest is not None:
            detail["gpu"] = self.telemetry.latest.as_dict()
        if self.cpu.latest_percent is not None:
            detail["cpu_percent"] = self.cpu.latest_percent
        detail["pid"] = os.getpid()  # which process to look at (or kill, in the recovery tests)
        down = await probe_backend(self.backend)
        if down is not None:
            detail["error"] = down
        return StageStatus(self.stage, detail.get("backend", self.backend.name), down is None, detail)

    async def watch(self, beats: int = WATCH_BEATS) -> AsyncIterator[bool]:
        """A call that stays open while this replica lives: over the `grpc` and `actor` transports the
        ingress keeps one open per stage, so a replica that dies while Miku is idle fails it at once
        (the stage links do the same with their WebSocket). It ends by itself after a few beats and is
        opened again, so a replica draining for a redeploy is never held up for long."""
        for _ in range(max(1, min(int(beats), WATCH_BEATS))):
            yield True
            await asyncio.sleep(WATCH_BEAT_S)

    async def __del__(self) -> None:
        # getattr: a constructor that failed part-way (e.g. a missing model) still gets here
        if getattr(self, "link", None) is not None:
            await self.link.aclose()
        if getattr(self, "telemetry", None) is not None:
            await self.telemetry.stop()
        if getattr(self, "cpu", None) is not None:
            await self.cpu.stop()
        if getattr(self, "backend", None) is not None:
            await self.backend.aclose()


@serve.deployment(name="TextLLM", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)
class TextLLM(_BackendHost):
    stage = "llm"

    async def __init__(self, config: dict):
        await self._start(config)

    def _link_methods(self) -> dict[str, LinkMethod]:
        return {"stream": LinkMethod(CallKind.STREAM, self.stream)}

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        async for token in self.backend.stream(request):
            yield token


@serve.deployment(name="SopranoTTS", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)
class SopranoTTS(_BackendHost):
    stage = "tts"

    async def __init__(self, config: dict):
        await self._start(config)

    def _link_methods(self) -> dict[str, LinkMethod]:
        return {"synthesize": LinkMethod(CallKind.STREAM, self.synthesize)}

    async def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[AudioChunk]:
        async for chunk in self.backend.synthesize(text, options):
            yield chunk


@serve.deployment(name="RVCVoice", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)
class RVCVoice(_BackendHost):
    stage = "vc"

    async def __init__(self, config: dict):
        await self._start(config)

    def _link_methods(self) -> dict[str, LinkMethod]:
        return {"convert": LinkMethod(CallKind.UNARY, self.convert)}

    async def convert(self, chunk: AudioChunk, options: VCOptions, context: object | None) -> VCResult:
        return await self.backend.convert(chunk, options, context)


@serve.deployment(name="SpeechToText", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)
class SpeechToText(_BackendHost):
    """Turns heard speech into text (graph/backends/stt). Pinned to `rx6800` in config: Whisper runs on the
    AMD card during voice sessions. Called through its Serve handle (one call per turn, not per frame)."""

    stage = "stt"

    async def __init__(self, config: dict):
        await self._start(config)

    def _link_methods(self) -> dict[str, LinkMethod]:
        return {}  # one call per turn: Serve's handle is enough, and its values are not link types

    async def transcribe(self, audio, options):
        return await self.backend.transcribe(audio, options)
