"""ThreadedStream: a blocking generator consumed as an async iterator, with backpressure, early stop
and error propagation (the machinery under the soprano and llama-cpp-python backends)."""
from __future__ import annotations

import asyncio
import threading

import pytest

from graph.backends.threaded import ThreadedStream


def counting(limit: int, produced: list[int], step: threading.Event | None = None):
    for i in range(limit):
        if step is not None:
            step.wait(5)
        produced.append(i)
        yield i


async def test_items_arrive_in_order_and_the_thread_finishes():
    produced: list[int] = []
    stream = ThreadedStream(lambda: counting(50, produced), max_buffered=3)
    assert [i async for i in stream] == list(range(50))
    assert stream.wait_finished(5) and not stream.stopped_early


async def test_a_slow_consumer_holds_the_producer_back():
    produced: list[int] = []
    stream = ThreadedStream(lambda: counting(1000, produced), max_buffered=2)
    iterator = stream.__aiter__()
    assert await iterator.__anext__() == 0
    await asyncio.sleep(0.2)  # give the producer every chance to run ahead
    assert len(produced) <= 1 + 2 + 1  # taken + buffered + the one waiting for a slot
    await iterator.aclose()
    assert stream.wait_finished(5) and stream.stopped_early
    assert len(produced) < 10


async def test_closing_stops_the_generator_between_steps():
    produced: list[int] = []
    step = threading.Event()
    step.set()
    stream = ThreadedStream(lambda: counting(10_000, produced, step), max_buffered=1)
    iterator = stream.__aiter__()
    await iterator.__anext__()
    await iterator.aclose()
    assert stream.wait_finished(5)
    assert stream.stopped_early and len(produced) < 10


async def test_errors_in_the_generator_reach_the_consumer():
    def failing():
        yield 1
        raise RuntimeError("model exploded")

    stream = ThreadedStream(failing)
    seen = []
    with pytest.raises(RuntimeError, match="model exploded"):
        async for item in stream:
            seen.append(item)
    assert seen == [1]


def test_max_buffered_must_be_positive():
    with pytest.raises(ValueError):
        ThreadedStream(lambda: iter(()), max_buffered=0)
