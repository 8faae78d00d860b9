"""Hostile input on every route of a real graph (the session's `graph_server`: Ray, Serve's proxy, the
ingress's direct port): oversized, deeply nested, non-finite, invalid UTF-8, control and escape sequences,
markup, huge headers. Each gets a clear refusal (an error event with the connection open, or a 4xx), while
a concurrent prober checks that `/healthz` keeps answering, and afterwards a valid prompt still speaks."""
import asyncio
import json
import time

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from deployments.http_guard import MAX_BODY_BYTES
from deployments.voice.voice_port import MAX_MESSAGE_BYTES
from graph.voice.protocol import MAX_MESSAGE_BYTES as PROTOCOL_MESSAGE_BYTES
from graph.voice.types import FRAME_BYTES

PROBE_TIMEOUT_S = 10.0  # generous: a probe that fails or times out is recorded, and none may

DEEP_ARRAY = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000


class HealthProber:
    """Polls GET /healthz the whole time the attacks run; every failure or timeout is kept."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.answered = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self):
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc):
        self._stop.set()
        await self._task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self._stop.is_set():
                try:
                    async with http.get(f"{self.base_url}/healthz") as response:
                        body = await response.json()
                        if response.status != 200 or body != {"status": "ok"}:
                            self.failures.append(f"{response.status} {body}")
                        else:
                            self.answered += 1
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    self.failures.append(repr(error))
                try:
                    await asyncio.wait_for(self._stop.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass


async def next_event(ws, timeout=30.0) -> dict:
    """The next JSON message, skipping audio."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                return json.loads(message)


async def speak(ws, request: dict, timeout=60.0) -> tuple[list[dict], int]:
    """Send a valid request; its events up to utterance.end (or a lone error), and the frames heard."""
    await ws.send(json.dumps(request))
    events, frames = [], 0
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                frames += len(message) // FRAME_BYTES
                continue
            event = json.loads(message)
            events.append(event)
            if event["type"] == "utterance.end" or (event["type"] == "error" and len(events) == 1):
                return events, frames


def say(text: str, **extra) -> str:
    return json.dumps({"type": "say", "id": "h", "text": text, **extra})


VOICE_ATTACKS = [  # (raw message, a fragment of the error event it must get)
    (DEEP_ARRAY, "nests deeper"),
    (DEEP_OBJECT, "nests deeper"),
    (DEEP_ARRAY.encode(), "nests deeper"),
    ('{"type": "say", "id": "n", "text": "hi", "pitch_shift": NaN}', "finite"),
    ('{"type": "say", "id": "n", "text": "hi", "pitch_shift": Infinity}', "finite"),
    ('{"type": "say", "id": "n", "text": "hi", "pitch_shift": -1e999}', "out of range"),
    ('{"type": "say", "id": "n", "text": "hi", "pitch_shift": 1e308}', "pitch_shift"),
    (say("a" * (PROTOCOL_MESSAGE_BYTES + 10)), "too large"),
    (say("b" * 5000), "too long"),
    (b"\xff\xfe\x00{", "not JSON"),
    ("\x00\x1b[31m", "not JSON"),
    (say("\x07\x00\u202e\x01"), "empty"),
    (json.dumps({"type": "say", "id": {"$gt": ""}, "text": "x"}), "'id'"),
    (json.dumps({"type": "<script>alert(1)</script>", "id": "m", "text": "x"}), "unknown message type"),
]
SPOKEN_ATTACKS = [  # valid messages with hostile text: answered (spoken or refused), connection open
    say("<b>bold</b> <script>alert(1)</script> \x1b[31mred\x1b[0m done."),
    b'{"type": "say", "id": "h", "text": "caf\xc3\xa9 \xff\xfe still fine."}',
    say("<think>hidden</think> Visible words."),
    say("\x1b[31m\x07\x00\u202e"),
]
STREAM_ATTACKS = [
    (DEEP_ARRAY, "nests deeper"),
    (DEEP_OBJECT.encode(), "nests deeper"),
    ('{"token": "hi", "pitch_shift": NaN}', "finite"),
    ('{"token": "hi", "pitch_shift": 1e999}', "out of range"),
    (json.dumps({"token": "x" * (PROTOCOL_MESSAGE_BYTES + 1)}), "too large"),
    (json.dumps({"token": "y" * 30_000}), "utterance too long"),
    (b"\xff\xfe", "not JSON"),
    (json.dumps({"token": 5}), "expected"),
]


async def attack_voice(url: str, headers: dict) -> None:
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        for raw, fragment in VOICE_ATTACKS:
            await ws.send(raw)
            event = await next_event(ws)
            assert event["type"] == "error" and fragment in event["message"], (raw[:60], event)
        for raw in SPOKEN_ATTACKS:
            await ws.send(raw)
            event = await next_event(ws)
            while event["type"] not in ("utterance.end", "error"):
                event = await next_event(ws)
            if event["type"] == "error" and event.get("stage") != "graph":  # failed mid-way: its end follows
                assert (await next_event(ws))["type"] == "utterance.end"
        events, frames = await speak(ws, {"type": "say", "id": "after", "text": "Still talking after all that."})
        assert events[-1]["type"] == "utterance.end" and events[-1]["status"] == "ok" and frames > 0
        await ws.send("x" * (MAX_MESSAGE_BYTES + 1))  # over the socket's limit: closed with 1009
        with pytest.raises(ConnectionClosed) as closed:
            await next_event(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def attack_stream(url: str, headers: dict) -> None:
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        for raw, fragment in STREAM_ATTACKS:
            await ws.send(raw)
            event = await next_event(ws)
            assert fragment in event.get("error", ""), (raw[:60], event)
        await ws.send(json.dumps({"token": "The stream still speaks."}))
        await ws.send(json.dumps({"flush": True}))
        samples = 0
        async with asyncio.timeout(60):
            while isinstance(message := await ws.recv(), bytes):
                samples += len(message) // 4
        assert json.loads(message) == {"flushed": True, "samples": samples} and samples > 0


async def attack_http(base_url: str, headers: dict) -> None:
    json_headers = {**headers, "Content-Type": "application/json"}
    session_body = '{"guild_id": "1", "voice_channel_id": "2", "text_channel_id": "3", "user_id": NaN}'
    cases = [  # (method, path, body, wanted status, fragment of the detail)
        ("POST", "/v1/metrics/playback", '{"underruns": 0, "buffer_ms": NaN}', 422, "finite"),
        ("POST", "/v1/metrics/playback", '{"underruns": 0, "buffer_ms": 1e999}', 422, "out of range"),
        ("POST", "/v1/metrics/playback", '{"underruns": 0, "buffer_ms": 1e300}', 422, ""),  # finite, out of range
        ("POST", "/v1/sessions", session_body, 422, "finite"),
        ("POST", "/v1/events", '{"type": "mood", "event_id": "e", "guild_id": "1", "mood": Infinity}', 422, "finite"),
        ("POST", "/v1/events", DEEP_ARRAY, 422, "nests deeper"),
        ("POST", "/v1/sessions", DEEP_OBJECT, 422, "nests deeper"),
        ("POST", "/v1/events", '{"type": "message", "content": "' + "z" * (MAX_BODY_BYTES + 1) + '"}', 413, "larger"),
        ("POST", "/v1/events", b'{"type": "mood", "event_id": "\xff\xfe", "guild_id": "1", "mood": "x"}', 422, "UTF-8"),
        ("POST", "/v1/events", '{"type": "message", "content": "<script>\\u001b[31m", "guild_id": "1"}', 422, ""),
        ("POST", "/v1/queue", '{"guild_id": 1e999}', 422, "out of range"),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, body, wanted, fragment in cases:
            async with http.request(method, f"{base_url}{path}", data=body, headers=json_headers) as response:
                text = await response.text()
                assert response.status == wanted, (path, body[:60], response.status, text[:300])
                assert fragment in json.dumps(json.loads(text)["detail"]), (path, text[:300])
        # a 60 kB header: refused at once on HTTP and on the WebSocket handshake (it used to hang > 10 s)
        big = {"X-Big": "a" * 60_000}
        async with http.get(f"{base_url}/healthz", headers=big) as response:
            assert response.status == 431
        async with http.get(f"{base_url}/v1/sessions", headers={**headers, **big}) as response:
            assert response.status == 431


async def refused_handshake(url: str, headers: dict) -> None:
    with pytest.raises((InvalidStatus, InvalidMessage)):
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await websockets.connect(url, additional_headers=headers)


async def test_hostile_inputs_on_every_route_leave_the_graph_answering_and_speaking(graph_server):
    base = graph_server.base_url
    auth = graph_server.auth_headers
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/voice/direct", headers=auth) as response:
            direct = await response.json()
    entries = {"proxy": (f"{graph_server.ws_url}/v1/voice", f"{graph_server.ws_url}/ws/stream"),
               "direct": (direct["voice"], direct["stream"])}
    async with HealthProber(base) as prober:
        started = time.monotonic()
        for voice_url, stream_url in entries.values():
            await asyncio.gather(attack_voice(voice_url, auth), attack_stream(stream_url, auth))
            await refused_handshake(voice_url, {**auth, "X-Big": "a" * 60_000})
            # past websockets' own limits (a header line over 1 MiB, more than 128 headers) Serve's proxy
            # used to hang the handshake instead of answering
            await refused_handshake(voice_url, {**auth, "X-Big": "a" * (3 * 2**20)})
            await refused_handshake(voice_url, {**auth, **{f"X-H{i}": "a" * 100 for i in range(300)}})
        await attack_http(base, auth)
        # and everything at once on both entries, while the prober keeps asking
        await asyncio.gather(*(attack_voice(v, auth) for v, _ in entries.values()),
                             *(attack_stream(s, auth) for _, s in entries.values()), attack_http(base, auth))
        while prober.answered < 3 and time.monotonic() - started < 60:  # the prober got its turns too
            await asyncio.sleep(0.1)
    assert prober.failures == [] and prober.answered >= 3
    for name, (voice_url, _) in entries.items():  # the next valid prompt speaks
        async with websockets.connect(voice_url, additional_headers=auth, max_size=None) as ws:
            events, frames = await speak(ws, {"type": "prompt", "id": f"ok-{name}", "text": "Say hello!"})
        assert events[0]["type"] == "utterance.start" and events[-1]["status"] == "ok" and frames > 0, (name, events)
