"""GPU telemetry on a machine without GPUs ("absent", never an error), device labelling, the VRAM
headroom check the session controller calls, and the Ray gauges as Prometheus sees them."""
from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from graph.controller.headroom import HeadroomVerdict
from graph.controller.telemetry import (
    GB,
    DeviceStats,
    GpuTelemetry,
    ProbeState,
    VendorStatus,
    VramHeadroom,
    VramVerdict,
    WhenUnseen,
)


def test_no_gpu_reports_absent_not_an_error():
    snapshot = GpuTelemetry().snapshot()  # the real probes: nvidia-ml-py installed, no driver; no amdsmi
    assert snapshot.devices == ()
    assert snapshot.vendor("nvidia").state is ProbeState.ABSENT
    assert snapshot.vendor("amd").state is ProbeState.ABSENT
    report = snapshot.as_dict()
    assert report["vendors"]["nvidia"]["state"] == "absent" and report["vendors"]["amd"]["state"] == "absent"
    assert report["devices"] == []


def test_headroom_without_gpus_admits_by_default_and_refuses_when_configured():
    verdict = VramHeadroom()()
    assert isinstance(verdict, HeadroomVerdict) and verdict.admit and verdict.allowed
    assert "rx6800 not visible" in verdict.reason and "not checked" in verdict.reason
    strict = VramHeadroom(when_unseen=WhenUnseen.REFUSE)()
    assert not strict.admit and "cannot be read" in strict.reason


class ProbeReturning:
    """A vendor probe (the GpuTelemetry interface) that reports the given cards."""

    def __init__(self, vendor: str, devices: list[DeviceStats], state: ProbeState = ProbeState.OK):
        self.vendor = vendor
        self.devices = devices
        self.state = state

    def read(self):
        return VendorStatus(self.vendor, self.state), list(self.devices)


def box(rx6800_used_gb: float, gtx_used_gb: float = 1.0) -> GpuTelemetry:
    nvidia = ProbeReturning("nvidia", [DeviceStats("nvidia", 0, "NVIDIA GeForce GTX 1660 SUPER", int(gtx_used_gb * GB), 6 * GB, 40.0)])
    amd = ProbeReturning("amd", [DeviceStats("amd", 0, "AMD Radeon RX 6800", int(rx6800_used_gb * GB), 16 * GB, 75.0)])
    return GpuTelemetry(probes=(nvidia, amd), clock=lambda: 123.0)


def test_devices_are_labelled_with_their_cluster_resource():
    snapshot = box(9.0).snapshot()
    assert snapshot.taken_at == 123.0
    assert snapshot.device_for("gtx1660").name.startswith("NVIDIA GeForce GTX 1660")
    assert snapshot.device_for("rx6800").vram_used_gb == pytest.approx(9.0)
    assert snapshot.as_dict()["devices"][1]["resource"] == "rx6800"


@pytest.mark.parametrize(
    "used_gb, session_mb, admit",
    [(9.0, 1024, True), (13.5, 0, True), (13.5, 1024, False), (14.2, 0, False)],
)
def test_rx6800_must_stay_under_14_gb(used_gb, session_mb, admit):
    verdict = VramHeadroom(session_mb={"rx6800": session_mb}, telemetry=box(used_gb).snapshot)()
    assert isinstance(verdict, VramVerdict)
    assert verdict.admit is admit
    assert verdict.free_mb == pytest.approx(14 * 1024 - used_gb * 1024)
    assert verdict.needed_mb == session_mb
    assert len(verdict.devices) == 2
    if not admit:
        assert "rx6800 uses" in verdict.reason and "under 14 GB" in verdict.reason


def test_a_failing_probe_is_reported_as_error_and_the_rest_still_reads():
    class Broken:
        vendor = "nvidia"

        def read(self):
            raise RuntimeError("driver wedged")

    amd = ProbeReturning("amd", [DeviceStats("amd", 0, "AMD Radeon RX 6800", 2 * GB, 16 * GB, None)])
    snapshot = GpuTelemetry(probes=(Broken(), amd)).snapshot()
    assert snapshot.vendor("nvidia").state is ProbeState.ERROR and "driver wedged" in snapshot.vendor("nvidia").detail
    assert snapshot.device_for("rx6800") is not None


def test_bad_limits_fail_fast():
    with pytest.raises(ValueError, match="positive"):
        VramHeadroom(limits_gb={"rx6800": 0})


async def test_ray_gauges_reach_prometheus_with_the_ray_prefix(ray_cluster):
    from deployments.metrics import graph_metrics
    from deployments.telemetry import TelemetryExporter

    exporter = TelemetryExporter(telemetry=box(9.5).snapshot, interval_s=0.2)
    exporter.start()
    # the dashboard's names for the graph's own counters and histograms, as Prometheus shows them
    graph_metrics().frames_sent.inc(1)
    graph_metrics().time_to_first_audio.observe(150.0, tags={"mode": "prompt"})
    try:
        port = ray_cluster._private.worker.global_worker.node.metrics_export_port
        found = {}
        async with aiohttp.ClientSession() as session:
            for _ in range(600):  # bounded (~2 min): Ray flushes metrics to the node agent every few seconds, slower under load
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
                # other processes of the shared cluster (the graph's stage replicas) export their own,
                # GPU-less readings of the same gauges: look for this exporter's values among them
                used = [float(v) for v in re.findall(r'ray_miku_gpu_vram_used_bytes\{[^}]*resource="rx6800"[^}]*\} ([0-9.e+]+)', text)]
                available = [float(v) for v in re.findall(r'ray_miku_gpu_telemetry_available\{[^}]*vendor="amd"[^}]*\} ([0-9.e+]+)', text)]
                graph_names = {"ray_miku_frames_sent_total", "ray_miku_time_to_first_audio_ms_bucket"}
                if 1.0 in available and any(abs(u - 9.5 * GB) < 1e6 for u in used) and all(name in text for name in graph_names):
                    found = {"used": next(u for u in used if abs(u - 9.5 * GB) < 1e6), "available": 1.0}
                    break
                await asyncio.sleep(0.2)
        assert found == {"used": pytest.approx(9.5 * GB), "available": 1.0}
        assert exporter.exports >= 1 and exporter.latest.device_for("rx6800") is not None
    finally:
        await exporter.stop()


async def test_exporter_with_real_probes_on_a_gpu_less_machine(ray_cluster):
    from deployments.telemetry import TelemetryExporter

    exporter = TelemetryExporter()
    snapshot = exporter.export_once()
    assert snapshot.devices == () and {v.state for v in snapshot.vendors} == {ProbeState.ABSENT}
