"""The last hour of utterance timings, for the panel's live numbers and latency plots.

The ingress adds each finished utterance's `timings_ms` (milliseconds from the prompt to each
milestone: first token, first chunk, first TTS audio, first VC audio, first frame); the panel reads
columns ready for uPlot (one time axis, one array per milestone, `null` where an utterance did not
reach it). Bounded both by age (`window_s`) and by count (`max_points`). Clock injected.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# the milestones plotted, in pipeline order; "first_frame" is the time to first audio
SERIES = ("first_token", "first_chunk", "first_tts_audio", "first_vc_audio", "first_frame")


@dataclass(frozen=True)
class LatencyPoint:
    at: float  # wall-clock seconds
    mode: str  # "prompt" or "say"
    timings_ms: Mapping[str, float]


class LatencyHistory:
    def __init__(self, window_s: float = 3600.0, max_points: int = 5000, clock: Callable[[], float] = time.time):
        if window_s <= 0 or max_points < 1:
            raise ValueError("latency history: window_s > 0 and max_points >= 1")
        self.window_s = window_s
        self._clock = clock
        self._points: deque[LatencyPoint] = deque(maxlen=max_points)

    def add(self, timings_ms: Mapping[str, float], mode: str) -> None:
        kept = {name: float(timings_ms[name]) for name in SERIES if isinstance(timings_ms.get(name), (int, float))}
        self._points.append(LatencyPoint(self._clock(), mode, kept))
        self._trim()

    def _trim(self) -> None:
        cutoff = self._clock() - self.window_s
        while self._points and self._points[0].at < cutoff:
            self._points.popleft()

    def recent_ttfa(self, count: int = 10) -> list[dict]:
        """The newest `count` utterances' time to first audio, newest first."""
        self._trim()
        out = []
        for point in reversed(self._points):
            if len(out) >= count:
                break
            out.append({"at": point.at, "mode": point.mode, "ttfa_ms": point.timings_ms.get("first_frame")})
        return out

    def columns(self, window_s: float | None = None) -> dict:
        """`{"t": [...], "<milestone>": [...]}` over the last `window_s` (at most the whole window)."""
        self._trim()
        window = min(window_s or self.window_s, self.window_s)
        cutoff = self._clock() - window
        points = [p for p in self._points if p.at >= cutoff]
        columns: dict = {"t": [p.at for p in points]}
        for name in SERIES:
            columns[name] = [p.timings_ms.get(name) for p in points]
        return {"window_s": window, "series": list(SERIES), "columns": columns}
