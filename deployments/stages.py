"""The three model-stage deployments: TextLLM, SopranoTTS and RVCVoice.

Each one hosts a backend from `graph.backends` chosen by config; placement (which GPU resource, how many
CPUs, device env vars) comes from the Serve config file, never from code. Streaming methods are async
generators called with `handle.options(stream=True)`; when the caller cancels, Serve cancels the
generator here and the backend closes its upstream (HTTP stream, subprocess, worker request).
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator

import ray
from ray import serve

from deployments.telemetry import TelemetryExporter
from graph.backends import create_backend
from graph.types import AudioChunk, LLMRequest, StageStatus, TTSOptions, VCOptions, VCResult


class _BackendHost:
    stage = "?"

    async def _start(self, config: dict) -> None:
        started = time.monotonic()
        self.backend = create_backend(self.stage, config)
        await self.backend.warmup()
        self.ready_s = time.monotonic() - started
        # each stage replica reports the GPUs it can see (absent on a CPU machine) as Ray gauges
        self.telemetry = TelemetryExporter()
        self.telemetry.start()

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
        return StageStatus(self.stage, detail.get("backend", self.backend.name), True, detail)

    async def __del__(self) -> None:
        await self.telemetry.stop()
        await self.backend.aclose()


@serve.deployment(name="TextLLM", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)
class TextLLM(_BackendHost):
    stage = "llm"

    async def __init__(self, config: dict):
        await self._start(config)

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        async for token in self.backend.stream(request):
            yield token


@serve.deployment(name="SopranoTTS", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)
class SopranoTTS(_BackendHost):
    stage = "tts"

    async def __init__(self, config: dict):
        await self._start(config)

    async def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[AudioChunk]:
        async for chunk in self.backend.synthesize(text, options):
            yield chunk


@serve.deployment(name="RVCVoice", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)
class RVCVoice(_BackendHost):
    stage = "vc"

    async def __init__(self, config: dict):
        await self._start(config)

    async def convert(self, chunk: AudioChunk, options: VCOptions, context: object | None) -> VCResult:
        return await self.backend.convert(chunk, options, context)
