"""WS /v1/listen on the deployed graph (configs/local.yaml: silero VAD in the ingress, pocketsphinx in the
SpeechToText stage pinned to rx6800): auth, a spoken voice command, a named turn, bad input."""
import asyncio
import json

import numpy as np
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from graph.listen.audio_in import espeak_16k, frames_20ms, silence, to_pcm16
from graph.listen.protocol import audio_frame

ANN = 111111111111111111


async def _events_until(ws, predicate, timeout=120.0):
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            seen.append(message)
            if predicate(message):
                return seen


async def _speak(ws, user_id, samples):
    for frame in frames_20ms(to_pcm16(samples)):
        await ws.send(audio_frame(user_id, frame))


async def test_listen_needs_the_token(graph_server):
    for headers in ({}, {"Authorization": "Bearer nope"}):
        with pytest.raises(InvalidStatus) as caught:
            await websockets.connect(f"{graph_server.ws_url}/v1/listen", additional_headers=headers)
        assert caught.value.response.status_code == 403


async def test_listen_hears_a_voice_command_and_a_named_turn(graph_server):
    async with websockets.connect(f"{graph_server.ws_url}/v1/listen", additional_headers=graph_server.auth_headers,
                                  max_size=None) as ws:
        # bad input first: each gets an error and the session goes on
        await ws.send(audio_frame(ANN, np.zeros(320, np.int16)))  # before start
        assert (await _events_until(ws, lambda m: m["type"] == "error"))[-1]["message"].startswith("send")
        await ws.send(json.dumps({"type": "start", "guild_id": "1", "channel_id": "2"}))
        await ws.send(b"\x01\x02")
        assert "8-byte" in (await _events_until(ws, lambda m: m["type"] == "error"))[-1]["message"]
        await ws.send(json.dumps({"type": "speaker", "user_id": str(ANN), "name": "Ann"}))
        await _speak(ws, ANN, np.concatenate([silence(0.3), espeak_16k("Miku, leave."), silence(0.8)]))
        seen = await _events_until(ws, lambda m: m["type"] in ("command", "turn"))
        assert [m for m in seen if m["type"] == "vad"] == [
            {"type": "vad", "user_id": str(ANN), "speaking": True}, {"type": "vad", "user_id": str(ANN), "speaking": False}]
        assert seen[-1]["type"] == "command" and seen[-1]["name"] == "leave" and seen[-1]["user_id"] == str(ANN)
        await _speak(ws, ANN, np.concatenate([espeak_16k("Can you sing a song for me?"), silence(0.8)]))
        turn = (await _events_until(ws, lambda m: m["type"] in ("command", "turn")))[-1]
        assert turn["type"] == "turn" and turn["name"] == "Ann" and turn["prompt"] == f"Ann: {turn['text']}"
        assert "song" in turn["text"].split()


async def test_listen_is_also_on_the_direct_voice_port(graph_server):
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{graph_server.base_url}/v1/voice/direct", headers=graph_server.auth_headers) as response:
            url = (await response.json())["listen"]
    assert url.endswith("/v1/listen") and not url.startswith(graph_server.ws_url)
    with pytest.raises(InvalidStatus) as caught:
        await websockets.connect(url)
    assert caught.value.response.status_code == 401
    async with websockets.connect(url, additional_headers=graph_server.auth_headers) as ws:
        await ws.send(json.dumps({"type": "start", "guild_id": "1", "channel_id": "2"}))
        await ws.send(json.dumps({"type": "speaker", "user_id": str(ANN), "name": "Ann"}))
        await ws.send(json.dumps({"type": "speaking", "value": True}))
        await _speak(ws, ANN, np.concatenate([espeak_16k("Can you sing a song for me?"), silence(0.8)]))
        seen = await _events_until(ws, lambda m: m["type"] in ("command", "turn"))
        kinds = [m["type"] for m in seen]
        assert kinds.index("pause") < kinds.index("barge_in") < kinds.index("turn")
