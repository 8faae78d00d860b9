"""The graph's own Ray metrics. They appear on every node's metrics endpoint (and so in the dashboard
and Prometheus/Grafana) prefixed with `ray_`.

Metric objects are created lazily, once per process, because Ray metrics must be created inside the
replica that records them.
"""
from __future__ import annotations

from functools import cache

from ray.util import metrics

_LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000]
_RTF_BOUNDARIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0]


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

    def stage_latency(self, stage: str, ms: float) -> None:
        self.stage_latency_ms.observe(ms, tags={"stage": stage})

    def real_time_factor(self, stage: str, rtf: float) -> None:
        self.rtf.observe(rtf, tags={"stage": stage})


@cache
def graph_metrics() -> GraphMetrics:
    return GraphMetrics()
