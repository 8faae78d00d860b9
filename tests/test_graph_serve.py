"""The whole graph on a real local Ray with Serve: WS /v1/voice, /ws/stream, /healthz, auth, interrupt,
disconnect, upstream failures and metrics. The LLM stage talks to a real SSE server (tests/support)."""
import asyncio
import copy
import json
import time

import aiohttp
import numpy as np
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from graph.brain.mood_profiles import load_moods
from graph.voice.types import FRAME_BYTES
from tests.conftest import METRICS_PORT


@pytest.fixture(params=["serve", "direct"])
async def voice_entry(request, graph_server):
    """The voice routes as a client reaches them: through Serve's proxy, or on the ingress's direct port
    (found the way clients find it, GET /v1/voice/direct)."""
    if request.param == "serve":
        return graph_server
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{graph_server.base_url}/v1/voice/direct", headers=graph_server.auth_headers) as response:
            assert response.status == 200
            urls = await response.json()
    assert urls["voice"].endswith("/v1/voice") and urls["stream"].endswith("/ws/stream")
    direct = copy.copy(graph_server)
    direct.ws_url = urls["voice"].removesuffix("/v1/voice")
    assert direct.ws_url != graph_server.ws_url
    return direct


async def open_voice(graph, token=None):
    headers = {"Authorization": f"Bearer {token or graph.token}"}
    return await websockets.connect(f"{graph.ws_url}/v1/voice", additional_headers=headers, max_size=None)


async def utterance(ws, request: dict, timeout=60.0):
    """Send one request; collect (json events, audio bytes) until its utterance.end or error-only answer."""
    await ws.send(json.dumps(request))
    events, audio = [], bytearray()
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                assert len(message) % FRAME_BYTES == 0 and message
                audio.extend(message)
                continue
            event = json.loads(message)
            events.append(event)
            if event["type"] == "utterance.end" and event["id"] == request.get("id"):
                return events, bytes(audio)
            if event["type"] == "error" and not any(e["type"] == "utterance.start" for e in events):
                return events, bytes(audio)


async def test_healthz_is_public_liveness_and_the_detail_needs_the_token(graph_server):
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.get(f"{graph_server.base_url}/healthz", headers=headers) as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok"}  # nothing about sessions, nodes or paths
        async with http.get(f"{graph_server.base_url}/healthz", headers=graph_server.auth_headers) as response:
            assert response.status == 200
            body = await response.json()
    assert body["status"] == "ok"
    assert body["stages"]["llm"]["backend"] == "openai" and body["stages"]["llm"]["url"] == graph_server.llm_server.url
    assert body["stages"]["tts"]["backend"] == "espeak" and body["stages"]["vc"]["backend"] == "world"
    # drawing and vision are listed (optional: they never make the voice graph degraded), with the card's state
    assert body["stages"]["image"]["backend"] == "a1111" and body["stages"]["image"]["optional"] is True
    assert body["stages"]["vision"]["gpu_tenant"]["state"] in ("loaded", "releasing", "released", "restoring")


async def test_docs_and_openapi_are_not_served(graph_server):
    async with aiohttp.ClientSession() as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            for headers in ({}, graph_server.auth_headers):
                async with http.get(f"{graph_server.base_url}{path}", headers=headers) as response:
                    assert response.status == 404, path


def test_check_health_cannot_answer_while_the_replicas_event_loop_is_blocked():
    """Serve calls check_health on the replica's event loop: a stuck loop makes it time out (and Serve
    replace the replica) instead of the replica reporting HEALTHY while every route hangs."""
    import concurrent.futures
    import threading

    from deployments.voice.ingress import VoiceGraph
    from graph.voice.config import VoiceConfig

    graph = object.__new__(VoiceGraph.func_or_class)
    graph.config, graph.voice_port = VoiceConfig(direct_voice=False), None
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    blocked, release = threading.Event(), threading.Event()

    def block_the_loop():  # what a CPU-bound call on the loop does
        blocked.set()
        release.wait(120)

    try:
        assert asyncio.run_coroutine_threadsafe(graph.check_health(), loop).result(timeout=30) is None
        loop.call_soon_threadsafe(block_the_loop)
        assert blocked.wait(30)
        pending = asyncio.run_coroutine_threadsafe(graph.check_health(), loop)
        with pytest.raises(concurrent.futures.TimeoutError):
            pending.result(timeout=2)  # cannot complete: the loop is held until release
        assert not pending.done()
        release.set()
        assert pending.result(timeout=30) is None
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


async def test_check_health_fails_when_the_direct_voice_port_stopped():
    from deployments.voice.ingress import VoiceGraph
    from deployments.voice.voice_port import DirectVoicePort
    from graph.voice.config import VoiceConfig

    graph = object.__new__(VoiceGraph.func_or_class)
    graph.config = VoiceConfig(direct_voice=True)
    graph.voice_port = DirectVoicePort({}, "127.0.0.1")
    await graph.voice_port.start()
    await graph.check_health()
    await graph.voice_port.aclose()
    with pytest.raises(RuntimeError, match="direct voice port"):
        await graph.check_health()


async def test_missing_or_wrong_token_is_rejected_before_any_work(voice_entry, graph_server):
    before = len(voice_entry.llm_server.requests)
    # Serve's route refuses the handshake with 403; the direct port answers 401 before upgrading
    refused = 403 if voice_entry is graph_server else 401
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": voice_entry.token}):
        with pytest.raises(InvalidStatus) as caught:
            await websockets.connect(f"{voice_entry.ws_url}/v1/voice", additional_headers=headers)
        assert caught.value.response.status_code == refused
        with pytest.raises(InvalidStatus):
            await websockets.connect(f"{voice_entry.ws_url}/ws/stream", additional_headers=headers)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{voice_entry.base_url}/v1/metrics/playback", json={"underruns": 1}) as response:
            assert response.status == 401
        async with http.get(f"{voice_entry.base_url}/v1/voice/direct") as response:
            assert response.status == 401  # where the voice port is, is not public either
    assert len(voice_entry.llm_server.requests) == before


async def test_the_direct_voice_port_serves_only_the_voice_routes(graph_server):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{graph_server.base_url}/v1/voice/direct", headers=graph_server.auth_headers) as response:
            port_base = (await response.json())["voice"].removesuffix("/v1/voice")
    for path in ("/healthz", "/v1/sessions", "/v1/voice/extra"):
        with pytest.raises(InvalidStatus) as caught:
            await websockets.connect(f"{port_base}{path}", additional_headers=graph_server.auth_headers)
        assert caught.value.response.status_code == 404


async def test_prompt_streams_llm_tokens_to_discord_frames(voice_entry):
    async with await open_voice(voice_entry) as ws:
        events, audio = await utterance(ws, {"type": "prompt", "id": "p1", "text": "Say hello!"})
    kinds = [e["type"] for e in events]
    assert kinds[0] == "utterance.start" and kinds[-1] == "utterance.end" and "chunk" in kinds
    spoken = " ".join(e["text"] for e in events if e["type"] == "chunk")
    assert "Hello from the test server" in spoken
    end = events[-1]
    assert end["status"] == "ok" and end["frames"] == len(audio) // FRAME_BYTES > 25
    for milestone in ("first_token", "first_chunk", "first_tts_audio", "first_vc_audio", "first_frame", "end"):
        assert milestone in end["timings"]
    request = await voice_entry.llm_server.settled("Say hello!")
    assert request.finished and request.model == "miku-test" and request.path == "/v1/chat/completions"
    pcm = np.frombuffer(audio, dtype="<i2").reshape(-1, 2)
    assert np.array_equal(pcm[:, 0], pcm[:, 1]) and np.abs(pcm).max() > 1000


async def test_say_speaks_verbatim_without_the_llm(voice_entry):
    before = len(voice_entry.llm_server.requests)
    async with await open_voice(voice_entry) as ws:
        events, audio = await utterance(ws, {"type": "say", "id": "s1", "text": "Testing, one two three."})
    assert events[-1]["status"] == "ok" and len(audio) >= 25 * FRAME_BYTES
    assert " ".join(e["text"] for e in events if e["type"] == "chunk").replace(" ,", ",").startswith("Testing")
    assert len(voice_entry.llm_server.requests) == before


async def wait_until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_interrupt_stops_the_upstream_llm(voice_entry):
    server = voice_entry.llm_server
    async with await open_voice(voice_entry) as ws:
        await ws.send(json.dumps({"type": "prompt", "id": "long", "text": "[slow] interrupt me"}))
        async with asyncio.timeout(30):
            while not isinstance(await ws.recv(), bytes):
                pass
        await ws.send(json.dumps({"type": "interrupt"}))
        async with asyncio.timeout(30):
            while True:
                message = await ws.recv()
                if isinstance(message, str) and json.loads(message)["type"] == "utterance.end":
                    assert json.loads(message)["status"] == "interrupted"
                    break
        record = server.last("[slow] interrupt me")
        await wait_until(lambda: record.disconnected)
        assert not record.finished and record.tokens_sent < 200
        sent = record.tokens_sent
        await asyncio.sleep(0.3)
        assert record.tokens_sent == sent
        # the same connection keeps working
        events, audio = await utterance(ws, {"type": "say", "id": "after", "text": "Still here."})
        assert events[-1]["status"] == "ok" and audio


async def test_client_disconnect_stops_the_upstream_llm(voice_entry):
    server = voice_entry.llm_server
    ws = await open_voice(voice_entry)
    await ws.send(json.dumps({"type": "prompt", "id": "gone", "text": "[slow] then I vanish"}))
    async with asyncio.timeout(30):
        while not isinstance(await ws.recv(), bytes):
            pass
    await ws.close()
    record = server.last("[slow] then I vanish")
    await wait_until(lambda: record.disconnected)
    assert not record.finished and record.tokens_sent < 200


@pytest.mark.parametrize(
    "marker, fragment",
    [("[fail500]", "HTTP 500"), ("[broken]", "the stream from"), ("[error]", "out of memory")],
)
async def test_failing_llm_gives_an_error_naming_it_and_the_connection_stays_usable(graph_server, marker, fragment):
    async with await open_voice(graph_server) as ws:
        events, _ = await utterance(ws, {"type": "prompt", "id": "f", "text": f"{marker} please"})
        error = next(e for e in events if e["type"] == "error")
        assert error["stage"] == "llm" and fragment in error["message"]
        assert graph_server.llm_server.url in error["backend"] or graph_server.llm_server.url in error["message"]
        assert events[-1]["type"] == "utterance.end" and events[-1]["status"] == "error"
        events, audio = await utterance(ws, {"type": "say", "id": "ok", "text": "Recovered."})
        assert events[-1]["status"] == "ok" and audio


async def test_unreachable_llm_is_reported_by_url(ray_cluster, serve_http_port):
    from ray import serve

    from deployments.app import build_app

    app = build_app(
        {"llm": {"backend": "openai", "url": "http://127.0.0.1:9"}, "tts": {"backend": "espeak"},
         "vc": {"backend": "passthrough"}, "voice": {"token": "t"}}
    )
    handle = serve.run(app, name="miku-unreachable", route_prefix="/unreachable")
    try:
        messages = [m async for m in handle.options(stream=True).speak.remote({"type": "prompt", "id": "x", "text": "hi"})]
        error = next(m for m in messages if isinstance(m, dict) and m["type"] == "error")
        assert error["stage"] == "llm" and "127.0.0.1:9" in error["message"] and "cannot reach" in error["message"]
    finally:
        serve.delete("miku-unreachable")


@pytest.mark.parametrize("kind, text", [("say", "🎉🎉 ✨"), ("say", "<think>only thinking</think>")])
async def test_nothing_speakable_is_an_error_saying_so_and_the_connection_stays_usable(voice_entry, kind, text):
    async with await open_voice(voice_entry) as ws:
        events, audio = await utterance(ws, {"type": kind, "id": "e", "text": text})
        error = next(e for e in events if e["type"] == "error")
        assert "nothing to say" in error["message"] and not audio
        assert events[-1]["type"] == "utterance.end" and events[-1]["status"] == "error"
        events, audio = await utterance(ws, {"type": "say", "id": "ok", "text": "Now in words."})
        assert events[-1]["status"] == "ok" and audio


async def test_bad_messages_get_errors_and_the_connection_stays_open(voice_entry):
    async with await open_voice(voice_entry) as ws:
        for raw, fragment in (("{not json", "not JSON"), (json.dumps({"type": "say", "id": "e", "text": ""}), "empty"),
                              (json.dumps({"type": "say", "id": "l", "text": "a" * 4001}), "too long")):
            await ws.send(raw)
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert event["type"] == "error" and fragment in event["message"]
        events, audio = await utterance(ws, {"type": "say", "id": "fine", "text": "Still fine."})
        assert events[-1]["status"] == "ok" and audio


async def test_ws_stream_compatibility_route(voice_entry):
    headers = {"Authorization": f"Bearer {voice_entry.token}"}
    async with websockets.connect(f"{voice_entry.ws_url}/ws/stream", additional_headers=headers, max_size=None) as ws:
        await ws.send("nonsense")
        assert "error" in json.loads(await asyncio.wait_for(ws.recv(), 10))
        for token in ["Hello", " there,", " this is", " the old", " API."]:
            await ws.send(json.dumps({"token": token, "pitch_shift": 2}))
        await ws.send(json.dumps({"flush": True}))
        audio = bytearray()
        async with asyncio.timeout(60):
            while True:
                message = await ws.recv()
                if isinstance(message, bytes):
                    audio.extend(message)
                else:
                    done = json.loads(message)
                    assert "error" not in done
                    break
    assert done["flushed"] and done["samples"] * 4 == len(audio)
    samples = np.frombuffer(bytes(audio), dtype="<f4")
    assert len(samples) > 48_000 * 0.5 and np.all(np.abs(samples) <= 1.0) and np.abs(samples).max() > 0.03


async def test_an_existing_rvc_api_client_sends_its_token_in_the_url(voice_entry):
    """Exactly the old Soprano->RVC protocol: no headers, `{"token"}` pieces, `{"flush": true}`, float32 back."""
    url = f"{voice_entry.ws_url}/ws/stream?token={voice_entry.token}"
    async with websockets.connect(url, max_size=None) as ws:
        for token in ["Hello", " from", " an old", " client."]:
            await ws.send(json.dumps({"token": token}))
        await ws.send(json.dumps({"flush": True}))
        audio = bytearray()
        async with asyncio.timeout(60):
            while isinstance(message := await ws.recv(), bytes):
                audio.extend(message)
        done = json.loads(message)
    assert done == {"flushed": True, "samples": len(audio) // 4} and len(audio) > 4 * 48_000 * 0.3
    samples = np.frombuffer(bytes(audio), dtype="<f4")
    assert np.all(np.isfinite(samples)) and np.abs(samples).max() > 0.03
    for bad in ("?token=wrong", "?token=", "?tok=" + voice_entry.token):
        with pytest.raises(InvalidStatus):
            await websockets.connect(f"{voice_entry.ws_url}/ws/stream{bad}")
    with pytest.raises(InvalidStatus):  # the query token is for the old API's route only
        await websockets.connect(f"{voice_entry.ws_url}/v1/voice?token={voice_entry.token}")


async def test_ws_stream_caps_an_utterance_and_keeps_what_it_accepted(voice_entry):
    headers = {"Authorization": f"Bearer {voice_entry.token}"}
    async with websockets.connect(f"{voice_entry.ws_url}/ws/stream", additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"token": "Kept words."}))
        await ws.send(json.dumps({"token": " la" * 2663 + " la"}))  # 11 + 7,992 characters: over the 8,000
        await ws.send(json.dumps({"token": " And these.", "pitch_shift": None}))
        await ws.send(json.dumps({"flush": True}))
        errors, audio = [], bytearray()
        async with asyncio.timeout(120):
            while True:
                message = await ws.recv()
                if isinstance(message, bytes):
                    audio.extend(message)
                    continue
                event = json.loads(message)
                if "flushed" in event:
                    break
                errors.append(event["error"])
    assert len(errors) == 1 and "utterance too long" in errors[0] and "limit is 8000" in errors[0]
    assert event["samples"] * 4 == len(audio) > 0


async def test_graph_metrics_reach_rays_metrics_endpoint(graph_server):
    async with await open_voice(graph_server) as ws:
        await utterance(ws, {"type": "say", "id": "m", "text": "Counting frames."})
        await utterance(ws, {"type": "prompt", "id": "m2", "text": "Count tokens."})
    wanted = ["miku_time_to_first_audio_ms", "miku_stage_latency_ms", "miku_frames_sent", "miku_utterances",
              "miku_llm_tokens_per_second", "miku_stage_cpu_percent", "miku_stage_cpu_seconds_total",
              "miku_client_buffer_ms", "miku_client_buffer_fill_ms"]
    deadline = time.monotonic() + 60
    text = ""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{graph_server.base_url}/v1/metrics/playback", headers=graph_server.auth_headers,
                             json={"underruns": 1, "frames_played": 50, "buffer_ms": 120.0}) as response:
            assert response.status == 200
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{METRICS_PORT}/metrics") as response:
                    text = await response.text()
            except aiohttp.ClientError:
                text = ""
            if all(name in text for name in wanted):
                break
            await asyncio.sleep(2)
    missing = [name for name in wanted if name not in text]
    assert not missing, f"metrics not exported: {missing}"


async def test_a_session_prompt_uses_the_brains_persona_and_mood(graph_server):
    body = {"guild_id": "g-voice-prompt", "voice_channel_id": "vc1", "text_channel_id": "tc1", "user_id": "u1"}
    async with aiohttp.ClientSession(headers=graph_server.auth_headers) as http:
        async with http.post(f"{graph_server.base_url}/v1/sessions", json=body) as response:
            assert response.status == 201, await response.text()
            session_id = (await response.json())["session_id"]
        try:
            spoken = {}
            async with await open_voice(graph_server) as ws:
                await _set_mood(http, graph_server, body["guild_id"], "excited")
                events, spoken["excited"] = await utterance(
                    ws, {"type": "prompt", "id": "sp", "text": "What do you like to sing?", "session_id": session_id}
                )
                assert events[-1]["status"] == "ok" and spoken["excited"]
                # the mood changes between two utterances: the next one is spoken in the new mood
                await _set_mood(http, graph_server, body["guild_id"], "sleepy")
                # a later prompt of the same session (its place is remembered by then) gets the persona too
                events, spoken["sleepy"] = await utterance(
                    ws, {"type": "prompt", "id": "sp2", "text": "And after that?", "session_id": session_id}
                )
                assert events[-1]["status"] == "ok" and spoken["sleepy"]
            for prompt, mood in (("What do you like to sing?", "excited"), ("And after that?", "sleepy")):
                record = graph_server.llm_server.last(prompt)
                assert "Hatsune Miku" in record.system and "mood" in record.system.lower()
                assert record.system.count(load_moods()[mood].description) == 1
            # the test LLM answers both with the same REPLY: the two moods' pitch and rate are what differ
            _assert_spoken_in_moods(spoken["excited"], spoken["sleepy"], load_moods()["excited"], load_moods()["sleepy"])
        finally:
            async with http.delete(f"{graph_server.base_url}/v1/sessions/{session_id}") as response:
                assert response.status == 200


async def _set_mood(http, graph_server, guild_id: str, mood: str) -> None:
    event = {"type": "mood", "event_id": f"mood-{guild_id}-{mood}", "guild_id": guild_id, "mood": mood}
    async with http.post(f"{graph_server.base_url}/v1/events", json=event) as response:
        assert response.status == 200, await response.text()


def _assert_spoken_in_moods(first: bytes, second: bytes, first_mood, second_mood) -> None:
    """The same text spoken in two moods (espeak + WORLD, configs/local.yaml): f0 and duration follow them."""
    from tests.test_mood_voice import _median_f0, _speech_only

    def mono(pcm: bytes) -> np.ndarray:
        return _speech_only(np.frombuffer(pcm, dtype="<i2").astype(np.float32).reshape(-1, 2).mean(axis=1) / 32768.0, 48_000)

    a, b = mono(first), mono(second)
    semitones = first_mood.pitch_shift - second_mood.pitch_shift
    # in semitones, within half of one (3 %, as tests/test_mood_voice.py): espeak cuts its pieces at quiet
    # points, so the same text gives the same audio every run (4.6 for these 5: harvest on WORLD's output
    # also calls a few unvoiced frames voiced); a mood that did not reach the voice gives 0
    measured = 12.0 * np.log2(_median_f0(a, 48_000) / _median_f0(b, 48_000))
    assert abs(measured - semitones) <= 0.5, (measured, semitones)
    assert len(b) / len(a) == pytest.approx(first_mood.speaking_rate / second_mood.speaking_rate, rel=0.10)


def _crash_app(llm_server, transport: str, tts: dict | None = None):
    from deployments.app import build_app

    return build_app(
        {"llm": {"backend": "openai", "url": llm_server.url},
         "tts": tts or {"backend": "simulated", "first_audio_s": 0, "real_time_factor": 0},
         "vc": {"backend": "passthrough"}, "voice": {"token": "t", "stage_timeout_s": 20, "stage_transport": transport}}
    )


def _replicas(app: str, deployment: str) -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}")]


async def _sigkill_replica(app: str, deployment: str) -> int:
    """SIGKILL the replica's process (what `kill -9` does to a stage in `miku serve`); its pid comes from status()."""
    import os
    import signal
    from pathlib import Path

    from ray import serve

    status = await serve.get_deployment_handle(deployment, app_name=app).status.remote()
    pid = status.detail["pid"]
    os.kill(pid, signal.SIGKILL)
    stat = Path(f"/proc/{pid}/stat")
    async with asyncio.timeout(30):  # dead (gone, or a zombie until its parent reaps it) before the test goes on
        while stat.exists():
            try:
                if stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    break
            except OSError:
                break
            await asyncio.sleep(0.01)
    return pid


async def _until_it_speaks_again(handle) -> list:
    """Say something until Serve has replaced the replica; every failure on the way must be a clear error."""
    async with asyncio.timeout(90):
        while True:
            replies = [m async for m in handle.options(stream=True).speak.remote({"type": "say", "id": "r", "text": "Hi."})]
            if replies[-1].get("status") == "ok":
                return replies
            error = next(m for m in replies if isinstance(m, dict) and m["type"] == "error")
            assert "restart" in error["message"] or "replica" in error["message"], error
            await asyncio.sleep(1)


@pytest.mark.parametrize("transport", ["direct", "grpc", "actor"])
async def test_a_stage_replica_killed_mid_utterance_is_announced_and_the_whole_answer_kept(ray_cluster, llm_server, transport):
    """SIGKILL of the TTS replica while it speaks: a `stage.lost` event says at once that Miku is
    recovering, the LLM is allowed to finish so the `error` carries the whole answer for the text
    fallback, and once Serve has replaced the replica the next utterance plays."""
    from ray import serve

    # a TTS that takes seconds per chunk, so the kill lands inside a synthesize call
    app = _crash_app(llm_server, transport, {"backend": "simulated", "chars_per_second": 2, "piece_s": 0.1,
                                             "real_time_factor": 1.0})
    handle = serve.run(app, name="miku-crash", route_prefix="/crash")  # the app's own replicas, killed freely
    try:
        [victim] = _replicas("miku-crash", "SopranoTTS")
        messages = []
        async with asyncio.timeout(60):
            stream = handle.options(stream=True).speak.remote({"type": "prompt", "id": "k", "text": "[slow] crash"})
            async for message in stream:
                messages.append(message)
                if isinstance(message, bytes) and sum(isinstance(m, bytes) for m in messages) == 1:
                    await _sigkill_replica("miku-crash", "SopranoTTS")
        events = [m for m in messages if isinstance(m, dict)]
        lost = next(e for e in events if e["type"] == "stage.lost")
        error = next(e for e in events if e["type"] == "error")
        end = events[-1]
        assert lost["stage"] == "tts" and "recovering" in lost["message"].lower(), lost
        assert events.index(lost) < events.index(error)
        assert error["stage"] == "tts" and "replica" in error["message"], error
        assert end["type"] == "utterance.end" and end["status"] == "error"
        record = await llm_server.settled("[slow] crash", timeout_s=30)
        assert record.finished and not record.disconnected  # the answer was not cut off ...
        assert "word0" in error["text"] and "word199" in error["text"]  # ... and all of it is in the error
        replies = await _until_it_speaks_again(handle)
        assert any(isinstance(m, bytes) for m in replies) and _replicas("miku-crash", "SopranoTTS") != [victim]
    finally:
        serve.delete("miku-crash")


@pytest.mark.parametrize("transport", ["direct", "grpc"])
async def test_a_vc_replica_killed_between_prompts_fails_the_next_prompt_fast_saying_it_restarts(ray_cluster, llm_server, transport):
    """VC dies while Miku is idle: the next prompt is told at once that the stage is lost and restarting
    (not left waiting for Serve to notice), still gets the whole answer as text, and voice comes back.
    The direct stage link sees the dead replica on its WebSocket; over the `grpc` (and `actor`)
    transports the ingress's watch call to each stage fails when the replica dies, where Serve's router
    used to hold the next prompt's call until the replacement was up (~9.5 s measured here)."""
    from ray import serve

    handle = serve.run(_crash_app(llm_server, transport), name="miku-vc-crash", route_prefix="/vc-crash")
    try:
        first = [m async for m in handle.options(stream=True).speak.remote({"type": "say", "id": "a", "text": "Hello."})]
        assert first[-1]["status"] == "ok"
        await _sigkill_replica("miku-vc-crash", "RVCVoice")
        if transport != "direct":  # the watch call noticed the death with no prompt in flight
            async with asyncio.timeout(30):
                while "vc" not in await handle.recovering_stages.remote():
                    await asyncio.sleep(0.05)
        async with asyncio.timeout(60):
            messages = [m async for m in handle.options(stream=True).speak.remote({"type": "prompt", "id": "b", "text": "hello"})]
        events = [m for m in messages if isinstance(m, dict)]
        lost = next(e for e in events if e["type"] == "stage.lost")
        error = next(e for e in events if e["type"] == "error")
        assert lost["stage"] == "vc" and "recovering" in lost["message"].lower()
        assert error["stage"] == "vc" and ("restart" in error["message"]), error
        assert error["text"].split() == "Hello from the test server! It is a lovely day to sing, isn't it? Let's talk for a while.".split()
        assert events[-1]["type"] == "utterance.end" and events[-1]["status"] == "error"
        await _until_it_speaks_again(handle)
    finally:
        serve.delete("miku-vc-crash")


async def test_a_stage_whose_server_is_down_reports_it_in_status(ray_cluster):
    """The LLM server is not there: the TextLLM stage's status (what /healthz shows) names it and its URL."""
    from ray import serve

    from deployments.app import build_app

    app = build_app({"llm": {"backend": "openai", "url": "http://127.0.0.1:9"}, "tts": {"backend": "espeak"},
                     "vc": {"backend": "passthrough"}, "voice": {"token": "t"}})
    serve.run(app, name="miku-down", route_prefix="/down")
    try:
        status = await serve.get_deployment_handle("TextLLM", app_name="miku-down").status.remote()
        assert not status.ok and "http://127.0.0.1:9" in status.detail["error"] and "down" in status.detail["error"]
        tts = await serve.get_deployment_handle("SopranoTTS", app_name="miku-down").status.remote()
        assert tts.ok and "error" not in tts.detail
    finally:
        serve.delete("miku-down")
