"""Export GPU telemetry (`graph.controller.telemetry`) as Ray metrics gauges, from inside any replica or actor.

Why: VRAM and utilisation per card belong next to the graph's latency metrics in Grafana, and the
numbers must come from the node that owns the card (each replica reports the GPUs its process can
see). In Prometheus the gauges appear with Ray's `ray_` prefix:

    ray_miku_gpu_vram_used_bytes{vendor, index, name, resource}
    ray_miku_gpu_vram_total_bytes{vendor, index, name, resource}
    ray_miku_gpu_utilization_percent{vendor, index, name, resource}
    ray_miku_gpu_telemetry_available{vendor}          1 = readable, 0 = absent or failing

Usage in a deployment: `self.exporter = TelemetryExporter(); self.exporter.start()` in `__init__`
(an asyncio task on the replica's loop, `interval_s` apart), `await self.exporter.stop()` on
shutdown; `exporter.latest` holds the last snapshot for `/healthz`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import cache

from ray.util import metrics

from deployments.metrics import BackgroundLoop
from graph.controller.telemetry import GpuTelemetry, ProbeState, TelemetrySnapshot

log = logging.getLogger(__name__)

_DEVICE_TAGS = ("vendor", "index", "name", "resource")


class TelemetryGauges:
    """The Ray gauge objects (created once per process, as Ray requires)."""

    def __init__(self) -> None:
        self.vram_used = metrics.Gauge(
            "miku_gpu_vram_used_bytes", description="VRAM in use per GPU.", tag_keys=_DEVICE_TAGS
        )
        self.vram_total = metrics.Gauge(
            "miku_gpu_vram_total_bytes", description="VRAM size per GPU.", tag_keys=_DEVICE_TAGS
        )
        self.utilization = metrics.Gauge(
            "miku_gpu_utilization_percent", description="GPU busy percentage.", tag_keys=_DEVICE_TAGS
        )
        self.available = metrics.Gauge(
            "miku_gpu_telemetry_available",
            description="1 when this vendor's telemetry library can read its GPUs, 0 when absent/failing.",
            tag_keys=("vendor",),
        )

    def record(self, snapshot: TelemetrySnapshot) -> None:
        for vendor in snapshot.vendors:
            self.available.set(1.0 if vendor.state is ProbeState.OK else 0.0, tags={"vendor": vendor.vendor})
        for device in snapshot.devices:
            tags = {
                "vendor": device.vendor,
                "index": str(device.index),
                "name": device.name,
                "resource": device.resource or "",
            }
            self.vram_used.set(float(device.vram_used_bytes), tags=tags)
            self.vram_total.set(float(device.vram_total_bytes), tags=tags)
            if device.utilization_pct is not None:
                self.utilization.set(device.utilization_pct, tags=tags)


@cache
def telemetry_gauges() -> TelemetryGauges:
    return TelemetryGauges()


class TelemetryExporter(BackgroundLoop):
    """Periodically snapshot the GPUs and set the gauges; never raises into the replica."""

    def __init__(
        self,
        telemetry: Callable[[], TelemetrySnapshot] | None = None,
        interval_s: float = 5.0,
        gauges: TelemetryGauges | None = None,
    ):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.telemetry = telemetry or GpuTelemetry().snapshot
        self.interval_s = interval_s
        self.gauges = gauges or telemetry_gauges()
        self.latest: TelemetrySnapshot | None = None
        self.exports = 0

    def _task_name(self) -> str:
        return "gpu-telemetry"

    def export_once(self) -> TelemetrySnapshot:
        snapshot = self.telemetry()
        self.gauges.record(snapshot)
        self.latest = snapshot
        self.exports += 1
        return snapshot

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.export_once)
            except Exception:  # noqa: BLE001 - a telemetry hiccup must not end the loop
                log.exception("GPU telemetry export failed")
            await asyncio.sleep(self.interval_s)

