"""The graph's own Ray metrics. They appear on every node's metrics endpoint (and so in the dashboard
and Prometheus/Grafana) prefixed with `ray_`.

Metric objects are created lazily, once per process, because Ray metrics must be created inside the
replica that records them.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from functools import cache

from ray.util import metrics

log = logging.getLogger("ray.serve")

_LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000]
_RTF_BOUNDARIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0]
_TOKEN_RATE_BOUNDARIES = [1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500]
_BUFFER_BOUNDARIES_MS = [20, 40, 60, 80, 100, 150, 200, 300, 500, 1000, 2000, 5000]


class GraphMetrics:
    """Implements graph.voice.pipeline.StageObserver and the ingress's own counters."""

    def __init__(self) -> None:
        self.time_to_first_audio = metrics.Histogram(
            "miku_time_to_first_audio_ms",
            description="Prompt received to first Discord frame sent, per utterance.",
            boundaries=_LATENCY_BOUNDARIES_MS,
            tag_keys=("mode",),
        )
        self.stage_latency_ms = metrics.Histogram(
            "miku_stage_latency_ms",
            description="Per-stage latency: LLM first token, TTS first audio of a chunk, VC per chunk.",
            boundaries=_LATENCY_BOUNDARIES_MS,
            tag_keys=("stage",),
        )
        self.rtf = metrics.Histogram(
            "miku_real_time_factor",
            description="Synthesis time divided by audio duration (below 1 is faster than real time).",
            boundaries=_RTF_BOUNDARIES,
            tag_keys=("stage",),
        )
        self.frames_sent = metrics.Counter(
            "miku_frames_sent", description="20 ms Discord frames sent to clients."
        )
        self.underruns = metrics.Counter(
            "miku_underruns",
            description="Gaps a listener would hear: graph-side (late frames) and client-reported.",
            tag_keys=("source",),
        )
        self.errors = metrics.Counter(
            "miku_stage_errors", description="Utterances that failed, by stage.", tag_keys=("stage",)
        )
        self.utterances = metrics.Counter(
            "miku_utterances", description="Utterances finished, by status.", tag_keys=("status",)
        )
        self.stage_lost = metrics.Counter(
            "miku_stage_lost", description="Stage replicas found gone mid-utterance, by stage.", tag_keys=("stage",)
        )
        self.llm_token_rate = metrics.Histogram(
            "miku_llm_tokens_per_second",
            description="LLM generation speed per utterance: tokens after the first one per second.",
            boundaries=_TOKEN_RATE_BOUNDARIES,
        )
        self.client_buffer_ms = metrics.Gauge(
            "miku_client_buffer_ms", description="Audio buffered in the client's jitter buffer, as last reported."
        )
        self.client_buffer_hist = metrics.Histogram(
            "miku_client_buffer_fill_ms",
            description="Client jitter-buffer fill per playback report.",
            boundaries=_BUFFER_BOUNDARIES_MS,
        )
        self.underrun_log = UnderrunLog()

    def stage_latency(self, stage: str, ms: float) -> None:
        self.stage_latency_ms.observe(ms, tags={"stage": stage})

    def real_time_factor(self, stage: str, rtf: float) -> None:
        self.rtf.observe(rtf, tags={"stage": stage})

    def token_rate(self, tokens_per_s: float) -> None:
        self.llm_token_rate.observe(tokens_per_s)

    def record_underruns(self, count: int, source: str) -> None:
        """Count underruns and log them (rate-limited): a gap a listener hears belongs in the log too."""
        if count > 0:
            self.underruns.inc(count, tags={"source": source})
            self.underrun_log.add(count, source)

    def record_client_buffer(self, buffer_ms: float) -> None:
        self.client_buffer_ms.set(buffer_ms)
        self.client_buffer_hist.observe(buffer_ms)


class UnderrunLog:
    """Logs underruns at most once per `interval_s`, with the count since the last line (never a flood)."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None):
        self.interval_s = interval_s
        self.clock = clock
        self.logger = logger or log
        self._pending: dict[str, int] = {}
        self._last: float | None = None
        self.lines = 0

    def add(self, count: int, source: str) -> bool:
        """Add `count` underruns from `source`; True when this call wrote a log line."""
        self._pending[source] = self._pending.get(source, 0) + count
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            return False
        summary = ", ".join(f"{n} {where}" for where, n in sorted(self._pending.items()))
        since = "" if self._last is None else f" in the last {now - self._last:.0f} s"
        self.logger.warning("audio underruns%s: %s (a listener heard gaps)", since, summary)
        self._pending.clear()
        self._last = now
        self.lines += 1
        return True


class CpuGauges:
    """Process CPU per stage replica, as Ray gauges (created once per process, as Ray requires)."""

    def __init__(self) -> None:
        self.percent = metrics.Gauge(
            "miku_stage_cpu_percent",
            description="CPU used by a stage replica's process over the last interval (100 = one core).",
            tag_keys=("stage", "pid"),
        )
        self.seconds = metrics.Gauge(
            "miku_stage_cpu_seconds_total",
            description="CPU seconds a stage replica's process has used since it started.",
            tag_keys=("stage", "pid"),
        )


@cache
def cpu_gauges() -> CpuGauges:
    return CpuGauges()


class BackgroundLoop:
    """One asyncio task running the subclass's `_loop()` (a periodic sampler), started and stopped here."""

    _task: asyncio.Task | None = None

    def _task_name(self) -> str:
        return type(self).__name__

    async def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> asyncio.Task:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self._task_name())
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class CpuMeter(BackgroundLoop):
    """Samples this process's CPU time (user + system, all threads) and records it per stage.

    Clocks are injected: `cpu_time` (default time.process_time) and `clock` (default time.monotonic).
    """

    def __init__(self, stage: str, gauges: CpuGauges | None = None, interval_s: float = 5.0,
                 cpu_time: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.stage = stage
        self.gauges = gauges or cpu_gauges()
        self.interval_s = interval_s
        self.cpu_time = cpu_time
        self.clock = clock
        self.tags = {"stage": stage, "pid": str(os.getpid())}
        self._last = (clock(), cpu_time())
        self.latest_percent: float | None = None

    def _task_name(self) -> str:
        return f"cpu-{self.stage}"

    def sample(self) -> float | None:
        """Record CPU % since the last sample (None when no time has passed) and the running total."""
        now, used = self.clock(), self.cpu_time()
        (then, used_then), self._last = self._last, (now, used)
        self.gauges.seconds.set(used, tags=self.tags)
        if now <= then:
            return None
        self.latest_percent = round(100.0 * (used - used_then) / (now - then), 2)
        self.gauges.percent.set(self.latest_percent, tags=self.tags)
        return self.latest_percent

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a metrics hiccup must not end the loop
                log.exception("CPU sample failed")



@cache
def graph_metrics() -> GraphMetrics:
    return GraphMetrics()
