"""The direct stage link (graph.voice.stage_link): calls, streams, errors, cancellation, auth and a dying peer,
over real WebSockets on loopback."""
import asyncio
import multiprocessing
import os
import signal
import struct

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from graph.voice.link_codec import WireError, dumps, loads
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


# -- the wire format: data only (graph.voice.link_codec) -------------------------------------------------


class _Exploit:
    """Unpickling this would run code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


async def _refused(endpoint, frame: bytes) -> int:
    """Send one raw frame with the right token; the server's close code."""
    async with connect(endpoint.url, additional_headers={"Authorization": f"Bearer {endpoint.token}"}) as ws:
        await ws.send(frame)
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                await ws.recv()
        return ws.close_code


async def test_a_pickled_payload_is_refused_and_never_executed(served, tmp_path):
    import pickle

    stage, _, link, endpoint = served
    marker = tmp_path / "pwned"
    frame = pickle.dumps(("call", 1, "count", (_Exploit(str(marker)),)))
    assert await _refused(endpoint, frame) == 1008
    assert not marker.exists() and not stage.started.is_set()
    assert [item async for item in await link.start("count", 2)] == [0, 1]  # other connections unaffected


def frame_of(message, buffers: bytes = b"") -> bytes:
    """A frame in the link's layout: [u32 body length][msgpack body][array bytes]."""
    body = msgpack.packb(message)
    return struct.pack("<I", len(body)) + body + buffers


def array_ext(dtype: str, shape: tuple, offset: int, size: int) -> msgpack.ExtType:
    return msgpack.ExtType(1, msgpack.packb((dtype, shape, offset, size)))


@pytest.mark.parametrize("frame", [
    frame_of(("call", 1, "count", (msgpack.ExtType(9, b"x"),))),  # an unknown extension type
    frame_of(("call", 1, "count", (msgpack.ExtType(2, msgpack.packb(("os.system", ("id",)))),))),  # unknown tag
    frame_of(("call", 1, "count", (array_ext("|O8", (1,), 0, 8),)), b"\0" * 8),  # object arrays unpickle
    frame_of(("call", 1, "count", (array_ext("<f4", (4,), 0, 16),)), b"\0" * 12),  # bytes beyond the frame
    frame_of(("call", 1, "count", (array_ext("<f4", (4,), 0, 12),)), b"\0" * 12),  # shape and size disagree
    frame_of(("call", "x", "count", ())),  # a call id that is not an integer
    frame_of(("call", 1, "count")),  # no args
    frame_of(["call", 1, "count", ()])[:-2],  # a truncated body
    b"\xc1 not msgpack",
], ids=["unknown-ext", "unknown-tag", "object-dtype", "out-of-frame", "size-mismatch", "bad-id", "no-args",
        "truncated", "garbage"])
async def test_a_frame_with_anything_but_allowed_data_closes_the_connection(served, frame):
    stage, _, link, endpoint = served
    assert await _refused(endpoint, frame) == 1008
    assert not stage.started.is_set()
    assert await link.call("convert", AudioChunk(np.zeros(4, np.float32), 16000), 2.0)


def test_decoding_never_builds_a_class_outside_the_registry():
    from graph.voice.link_codec import ALLOWED_DATACLASSES

    assert set(ALLOWED_DATACLASSES) == {"llm.request", "tts.options", "vc.options", "audio.chunk", "vc.result",
                                        "vc.rvc_context"}
    with pytest.raises(WireError, match="type tag 'builtins.dict' is not allowed"):
        loads(frame_of(("item", 1, msgpack.ExtType(2, msgpack.packb(("builtins.dict", ()))))))
    with pytest.raises(WireError, match="extension type 7"):
        loads(frame_of(("item", 1, msgpack.ExtType(7, b""))))
    with pytest.raises(TypeError, match="cannot carry a _Exploit"):
        dumps(("item", 1, _Exploit("x")))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "uint8", "complex64", ">i4", "bool"])
def test_numpy_arrays_round_trip_exactly_with_dtype_and_shape(dtype):
    rng = np.random.default_rng(7)
    array = (rng.standard_normal((3, 5, 2)) * 1000).astype(dtype)
    decoded = loads(dumps(("item", 1, array)))[2]
    assert decoded.dtype == array.dtype and decoded.shape == array.shape and np.array_equal(decoded, array)
    decoded += decoded  # writable, as a pickled array was
    sliced = array[:, ::2]  # not contiguous
    scalar, empty = np.array(3, dtype=dtype), np.zeros((0, 4), dtype=dtype)
    many = loads(dumps(("item", 1, (sliced, scalar, empty, array))))[2]
    assert [a.shape for a in many] == [sliced.shape, (), (0, 4), array.shape]
    assert np.array_equal(many[0], sliced) and many[1] == scalar and np.array_equal(many[3], array)


def test_nan_inf_and_signed_zero_survive_bit_for_bit():
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45, np.finfo(np.float32).max], dtype=np.float32)
    decoded = loads(dumps(("item", 1, AudioChunk(special, 48000))))[2].samples
    assert decoded.tobytes() == special.tobytes()


def test_every_type_that_crosses_a_link_round_trips():
    from graph.backends.vc.rvc_onnx import RVCContext
    from graph.voice.types import LLMRequest, TTSOptions, VCOptions, VCResult

    samples = np.random.default_rng(1).uniform(-1, 1, 9600).astype(np.float32)
    context = RVCContext(input_rate=16000, history=samples[:160].copy(), tail=samples[:48].copy(), chunks=3)
    request = LLMRequest("hi", system="be Miku", history=(("user", "a"), ("assistant", "b")), max_tokens=7,
                         temperature=0.5, stop=("\n",))
    values = (request, TTSOptions("en-us+f3", 1.25), VCOptions(2.5), VCOptions(None), None, True, 3, "Miku 🎤")
    assert loads(dumps(("call", 1, "m", values)))[3] == values
    result = loads(dumps(("return", 1, VCResult(AudioChunk(samples, 48000), context))))[2]
    assert isinstance(result, VCResult) and result.audio.sample_rate == 48000
    assert np.array_equal(result.audio.samples, samples) and result.audio.samples.dtype == np.float32
    assert isinstance(result.context, RVCContext) and result.context.chunks == 3 and result.context.input_rate == 16000
    assert np.array_equal(result.context.history, context.history) and np.array_equal(result.context.tail, context.tail)
    error = loads(dumps(("error", 1, StageError("vc", "rvc", "model missing"))))[2]
    assert isinstance(error, StageError) and (error.stage, error.backend, error.message) == ("vc", "rvc", "model missing")


def test_a_dataclass_that_refuses_its_fields_is_a_wire_error():
    frame = frame_of(("item", 1, msgpack.ExtType(2, msgpack.packb(("audio.chunk", ("not audio", 48000))))))
    with pytest.raises(WireError):
        loads(frame)
