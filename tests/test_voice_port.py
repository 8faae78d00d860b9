"""The ingress's direct voice port (deployments/voice/voice_port.py) on its own, without Ray: routing, auth,
messages both ways, and a fixed port shared with the replica that replaces this one."""
import json
import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

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
