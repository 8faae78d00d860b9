"""The ingress's direct voice port (deployments/voice/voice_port.py) on its own, without Ray: routing, auth,
messages both ways, and a fixed port shared with the replica that replaces this one."""
import asyncio
import json
import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from deployments import auth
from deployments.voice.voice_port import DirectVoicePort
from tests.conftest import free_port

TOKEN = "voice-port-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def echo_route(send, messages):
    async for raw in messages:
        await send({"echo": raw})
        await send(b"\x00\x01")


@pytest.fixture(autouse=True)
def token():
    auth.configure(TOKEN)


async def test_a_route_gets_the_clients_messages_and_sends_json_and_audio():
    port = DirectVoicePort({"/v1/voice": echo_route}, "127.0.0.1")
    await port.start()
    try:
        async with connect(port.url("/v1/voice"), additional_headers=HEADERS) as ws:
            await ws.send("hello")
            assert json.loads(await ws.recv()) == {"echo": "hello"}
            assert await ws.recv() == b"\x00\x01"
    finally:
        await port.aclose()


async def test_unknown_paths_and_bad_tokens_are_refused_at_the_handshake():
    port = DirectVoicePort({"/v1/voice": echo_route}, "127.0.0.1")
    await port.start()
    try:
        for path, headers, status in (("/v1/other", HEADERS, 404), ("/v1/voice", {}, 401),
                                      ("/v1/voice", {"Authorization": "Bearer wrong"}, 401)):
            with pytest.raises(InvalidStatus) as refused:
                await connect(port.url(path), additional_headers=headers)
            assert refused.value.response.status_code == status
    finally:
        await port.aclose()


async def test_a_fixed_port_is_shared_with_a_replacement_but_not_with_another_program():
    fixed = free_port()
    old, new = (DirectVoicePort({"/v1/voice": echo_route}, "127.0.0.1", fixed) for _ in range(2))
    await old.start()
    try:
        await new.start()  # a redeploy: the new replica opens the port while the old one still serves
        await old.aclose()
        async with connect(new.url("/v1/voice"), additional_headers=HEADERS) as ws:
            await ws.send("still here")
            assert json.loads(await ws.recv()) == {"echo": "still here"}
    finally:
        await old.aclose()
        await new.aclose()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        with pytest.raises(OSError):
            await DirectVoicePort({"/v1/voice": echo_route}, "127.0.0.1", squatter.getsockname()[1]).start()


async def test_the_token_may_come_as_a_query_parameter_only_where_allowed():
    port = DirectVoicePort({"/v1/voice": echo_route, "/ws/stream": echo_route}, "127.0.0.1", query_token_routes={"/ws/stream"})
    await port.start()
    try:
        async with connect(port.url("/ws/stream") + f"?token={TOKEN}") as ws:  # no headers at all
            await ws.send("hi")
            assert json.loads(await ws.recv()) == {"echo": "hi"}
        for url in (port.url("/ws/stream") + "?token=wrong", port.url("/ws/stream") + "?other=1",
                    port.url("/v1/voice") + f"?token={TOKEN}"):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url)
            assert refused.value.response.status_code == 401
    finally:
        await port.aclose()


async def test_oversized_headers_and_messages_are_refused():
    from deployments.voice.voice_port import MAX_HEADER_BYTES, MAX_MESSAGE_BYTES

    port = DirectVoicePort({"/v1/voice": echo_route}, "127.0.0.1")
    await port.start()
    try:
        # many header lines under websockets' own line limit, together over the port's total
        big = {f"X-Pad-{i}": "a" * 4000 for i in range(MAX_HEADER_BYTES // 4000 + 1)}
        with pytest.raises(InvalidStatus) as refused:
            await connect(port.url("/v1/voice"), additional_headers={**HEADERS, **big})
        assert refused.value.response.status_code == 431
        # one 60 kB line: refused with an answer (not a hung handshake), whatever the line limit is
        reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
        writer.write(b"GET /v1/voice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     b"X-Big: " + b"a" * 60_000 + b"\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status_line.split()[1] == b"431"
        async with connect(port.url("/v1/voice"), additional_headers=HEADERS, max_size=None) as ws:
            await ws.send("x" * (MAX_MESSAGE_BYTES + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 1009  # message too big
        async with connect(port.url("/v1/voice"), additional_headers=HEADERS) as ws:  # the port still serves
            await ws.send("after")
            assert json.loads(await ws.recv()) == {"echo": "after"}
    finally:
        await port.aclose()
