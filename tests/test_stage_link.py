"""The direct stage link (graph.voice.stage_link): calls, streams, errors, cancellation, auth and a dying peer,
over real WebSockets on loopback."""
import asyncio
import multiprocessing
import os
import signal

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from graph.voice.stage_link import (
    CallKind,
    LinkEndpoint,
    LinkLost,
    LinkMethod,
    StageLink,
    StageLinkServer,
)
from graph.voice.types import AudioChunk, StageError


class Stage:
    """A stand-in stage with the three shapes of call the graph makes, recording what happened."""

    def __init__(self):
        self.started = asyncio.Event()
        self.closed: list[str] = []
        self.produced = 0

    async def count(self, n: int, delay: float = 0.0, tag: str = ""):
        self.started.set()
        try:
            for i in range(n):
                if delay:
                    await asyncio.sleep(delay)
                self.produced += 1
                yield i
        finally:
            self.closed.append(tag)

    async def convert(self, chunk: AudioChunk, gain: float) -> AudioChunk:
        return AudioChunk(chunk.samples * gain, chunk.sample_rate)

    async def fail(self, kind: str):
        if kind == "stage":
            raise StageError("tts", "espeak", "voice not installed")
        raise ValueError("first line\nthe last line says what went wrong")
        yield  # an async generator

    def methods(self) -> dict[str, LinkMethod]:
        return {
            "count": LinkMethod(CallKind.STREAM, self.count),
            "convert": LinkMethod(CallKind.UNARY, self.convert),
            "fail": LinkMethod(CallKind.STREAM, self.fail),
        }


@pytest.fixture
async def served():
    stage = Stage()
    server = StageLinkServer(stage.methods(), stage="tts", backend="simulated")
    endpoint = await server.start()
    link = StageLink(endpoint)
    yield stage, server, link, endpoint
    await link.aclose()
    await server.aclose()


async def test_a_stream_yields_every_item_in_order(served):
    _, _, link, _ = served
    assert [item async for item in await link.start("count", 50)] == list(range(50))
    assert link.in_flight == 0


async def test_a_unary_call_carries_numpy_payloads_both_ways(served):
    _, _, link, _ = served
    samples = np.linspace(-1, 1, 48000, dtype=np.float32)
    result = await link.call("convert", AudioChunk(samples, 48000), 0.5)
    assert result.sample_rate == 48000 and np.array_equal(result.samples, samples * 0.5)


async def test_calls_are_multiplexed_on_one_link(served):
    _, _, link, _ = served

    async def collect(n):
        return [item async for item in await link.start("count", n, 0.001)]

    results = await asyncio.gather(*(collect(n) for n in (5, 20, 10)))
    assert results == [list(range(5)), list(range(20)), list(range(10))]


async def test_errors_arrive_as_stage_errors_and_the_link_stays_usable(served):
    _, _, link, _ = served
    with pytest.raises(StageError) as raised:
        [item async for item in await link.start("fail", "stage")]
    assert (raised.value.stage, raised.value.backend, raised.value.message) == ("tts", "espeak", "voice not installed")
    with pytest.raises(StageError) as raised:
        [item async for item in await link.start("fail", "other")]
    assert raised.value.stage == "tts" and raised.value.message == "the last line says what went wrong"
    with pytest.raises(StageError, match="the link has no method 'nope'"):
        await link.call("nope")
    assert [item async for item in await link.start("count", 3)] == [0, 1, 2]


async def test_stopping_early_cancels_the_call_on_the_server(served):
    stage, _, link, _ = served
    stream = await link.start("count", 10_000, 0.01, "early")
    async for item in stream:
        if item == 2:
            break
    async with asyncio.timeout(5):
        while "early" not in stage.closed:  # the server's generator was closed, not left running
            await asyncio.sleep(0.01)
    produced = stage.produced
    await asyncio.sleep(0.1)
    assert stage.produced == produced < 100


async def test_cancel_stops_a_call_that_has_not_answered_yet(served):
    stage, _, link, _ = served
    call = await link.start("count", 1, 30, "slow")
    await asyncio.wait_for(stage.started.wait(), 5)
    call.cancel()
    async with asyncio.timeout(5):
        while "slow" not in stage.closed:
            await asyncio.sleep(0.01)


async def test_a_client_that_disappears_has_its_calls_cancelled(served):
    stage, _, link, _ = served
    await link.start("count", 10_000, 0.01, "orphan")
    await asyncio.wait_for(stage.started.wait(), 5)
    await link.aclose()  # the ingress replica went away mid-utterance
    async with asyncio.timeout(5):
        while "orphan" not in stage.closed:
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_a_connection_without_the_token_is_refused_before_any_frame_is_read(served, token):
    _, _, _, endpoint = served
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with pytest.raises(InvalidStatus) as refused:
        await connect(endpoint.url, additional_headers=headers)
    assert refused.value.response.status_code == 401
    with pytest.raises(LinkLost, match="cannot open the link"):
        await StageLink(LinkEndpoint(endpoint.url, "wrong")).call("convert")


async def test_an_unreachable_endpoint_is_a_clear_error():
    with pytest.raises(LinkLost, match="cannot open the link to ws://127.0.0.1:9"):
        await StageLink(LinkEndpoint("ws://127.0.0.1:9", "t"), open_timeout=2).call("convert")


def _serve_in_child(ready) -> None:
    async def main():
        server = StageLinkServer(Stage().methods(), stage="tts", backend="simulated")
        endpoint = await server.start()
        ready.send((endpoint.url, endpoint.token, os.getpid()))
        await asyncio.Event().wait()

    asyncio.run(main())


async def test_a_replica_killed_mid_stream_breaks_the_call_at_once_and_the_link_says_so():
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_in_child, args=(child,), daemon=True)
    process.start()
    try:
        url, token, pid = await asyncio.to_thread(parent.recv)
        link = StageLink(LinkEndpoint(url, token))
        received = []
        with pytest.raises(LinkLost):
            async with asyncio.timeout(10):  # well under the ping timeout: the closed socket is noticed
                async for item in await link.start("count", 10_000, 0.01):
                    received.append(item)
                    if item == 3:
                        os.kill(pid, signal.SIGKILL)
        assert 3 <= len(received) < 10_000 and link.broken and link.in_flight == 0
        with pytest.raises(LinkLost):
            await link.call("convert")
    finally:
        process.kill()
        process.join(5)
