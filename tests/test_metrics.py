"""The graph's own Ray metrics (deployments/metrics.py): what each recording call puts on the real Ray
metric objects, with injected clocks (no timing), and the rate-limited underrun log."""
import logging

import pytest

from deployments.metrics import CpuGauges, CpuMeter, GraphMetrics, UnderrunLog


def spy(metric, method: str) -> list:
    """Record every call of `metric.method` (the real Ray metric still records it too)."""
    calls = []
    real = getattr(metric, method)

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    setattr(metric, method, recording)
    return calls


@pytest.fixture(scope="module")
def graph_metrics():
    return GraphMetrics()  # Ray metrics objects, as a replica creates them


def test_llm_token_rate_is_observed(graph_metrics):
    calls = spy(graph_metrics.llm_token_rate, "observe")
    graph_metrics.token_rate(42.5)
    assert calls == [((42.5,), {})]


def test_client_buffer_fill_sets_the_gauge_and_the_histogram(graph_metrics):
    gauge = spy(graph_metrics.client_buffer_ms, "set")
    histogram = spy(graph_metrics.client_buffer_hist, "observe")
    graph_metrics.record_client_buffer(180.0)
    assert gauge == [((180.0,), {})] and histogram == [((180.0,), {})]


def test_underruns_are_counted_by_source_and_logged(graph_metrics, caplog):
    counted = spy(graph_metrics.underruns, "inc")
    graph_metrics.underrun_log = UnderrunLog(interval_s=10, clock=lambda: 100.0, logger=logging.getLogger("test.underruns"))
    with caplog.at_level(logging.WARNING, logger="test.underruns"):
        graph_metrics.record_underruns(3, "client")
        graph_metrics.record_underruns(0, "graph")  # nothing heard: nothing counted, nothing logged
    assert counted == [((3,), {"tags": {"source": "client"}})]
    assert [r.getMessage() for r in caplog.records] == ["audio underruns: 3 client (a listener heard gaps)"]


def test_the_underrun_log_is_rate_limited_and_keeps_the_count():
    now = [0.0]
    log = UnderrunLog(interval_s=10, clock=lambda: now[0], logger=logging.getLogger("test.rate"))
    assert log.add(1, "graph") is True
    now[0] = 1.0
    assert log.add(2, "graph") is False and log.add(5, "client") is False  # within the interval: held
    now[0] = 12.0
    assert log.add(1, "graph") is True and log.lines == 2
    assert log._pending == {}


def test_cpu_meter_records_percent_and_total_per_stage():
    gauges = CpuGauges()
    percent, total = spy(gauges.percent, "set"), spy(gauges.seconds, "set")
    wall, cpu = [10.0], [2.0]
    meter = CpuMeter("tts", gauges, interval_s=5, cpu_time=lambda: cpu[0], clock=lambda: wall[0])
    wall[0], cpu[0] = 15.0, 4.5  # 2.5 CPU seconds in 5 s: half a core
    assert meter.sample() == 50.0
    assert percent[-1][0] == (50.0,) and percent[-1][1]["tags"]["stage"] == "tts"
    assert total[-1][0] == (4.5,)
    assert meter.sample() is None  # no time passed: no percentage, the total is still set
    assert len(total) == 2


def test_cpu_meter_measures_this_process_by_default():
    meter = CpuMeter("llm", CpuGauges())
    sum(i * i for i in range(300_000))  # some CPU work in this process
    meter._last = (meter._last[0] - 1.0, meter._last[1])  # pretend a second of wall time passed
    assert meter.sample() > 0
