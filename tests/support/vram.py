"""A GPU telemetry probe for tests: an RX 6800 whose used VRAM the test sets, in this process or another.

The reading lives in a file, so a probe pickled into a Ray actor sees what the test writes.
"""
from __future__ import annotations

from pathlib import Path

from graph.controller.telemetry import GB, DeviceStats, GpuTelemetry, ProbeState, VendorStatus


class SettableRx6800:
    """The `GpuTelemetry` probe interface (`vendor`, `read()`), reporting one RX 6800 of 16 GB."""

    vendor = "amd"

    def __init__(self, reading_file: str | Path, used_gb: float = 0.0):
        self.reading_file = str(reading_file)
        self.set(used_gb)

    def set(self, used_gb: float) -> None:
        Path(self.reading_file).write_text(repr(float(used_gb)))

    def read(self):
        used_gb = float(Path(self.reading_file).read_text())
        card = DeviceStats("amd", 0, "AMD Radeon RX 6800", int(used_gb * GB), 16 * GB, 50.0)
        return VendorStatus(self.vendor, ProbeState.OK, "1 device(s)"), [card]


def telemetry_with(probe: SettableRx6800) -> GpuTelemetry:
    return GpuTelemetry(probes=(probe,), clock=lambda: 0.0)
