"""The statistics every benchmark reports: nearest-rank percentiles and a p50/p95 summary in milliseconds."""
from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile `q` (0-100) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary_ms(values_ms: list[float], digits: int = 3) -> dict:
    return {"p50_ms": round(statistics.median(values_ms), digits), "p95_ms": round(percentile(values_ms, 95), digits),
            "n": len(values_ms)}
