"""The client against a real local graph (Ray Serve, `graph_server` fixture): join -> prompt -> audio
frames through discord.py's real AudioPlayer and libopus -> leave, with the controller's features blocked
during the session and restored after; a client killed mid-session is ended by the lease."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest.mock import AsyncMock

import numpy as np
import pytest

from bot_client.actions import ActionExecutor, ChatOps
from bot_client.config import BotConfig, PlaybackConfig, SessionConfig
from bot_client.graph_api import GraphAuthError, GraphClient
from bot_client.inputs import IncomingMessage
from bot_client.jitter import FRAME_BYTES
from bot_client.loopback import RecordingVoiceClient, aligned_snr_db
from bot_client.router import MessageRouter
from bot_client.session import JoinRequest, PresenceKeeper, SessionManager
from bot_client.status import format_status
from tests.conftest import GRAPH_LEASE_S, free_port

ROOT = Path(__file__).resolve().parent.parent
GUILD, USER, PROMPT_CHANNEL, VOICE_CHANNEL = 9001, 9002, 9003, 9004


async def wait_for(predicate, timeout=60.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.05)


async def blocked_features(graph: GraphClient) -> set[str]:
    return {f.name for f in await graph.features() if f.blocked}


async def active_sessions(graph: GraphClient) -> list[dict]:
    return [s for s in await graph.sessions() if s.get("state", "active") == "active"]


@pytest.fixture
async def graph(graph_server):
    client = GraphClient(graph_server.base_url, graph_server.token, request_timeout_s=30)
    # a previous test's session must not leak into this one
    for session in await active_sessions(client):
        await client.end_session(session["session_id"])
    yield client
    await client.close()


def message(text: str, message_id: int, channel: int = PROMPT_CHANNEL, **kw) -> IncomingMessage:
    return IncomingMessage(message_id=message_id, channel_id=channel, guild_id=GUILD, author_id=USER,
                           author_name="Rin", content=text, created_at=1_700_000_000.0, **kw)


async def test_join_prompt_frames_leave_with_features_blocked_and_restored(graph):
    loop = asyncio.get_running_loop()
    config = BotConfig(session=SessionConfig(heartbeat_interval_s=1.0), playback=PlaybackConfig(prebuffer_ms=100))
    presence_log: list = []

    async def apply(text):
        presence_log.append(text)

    manager = SessionManager(graph, config, PresenceKeeper(apply, "🎤 In Voice Chat"))
    ops = AsyncMock(spec=ChatOps)
    router = MessageRouter(graph, manager, ActionExecutor(ops, graph), ops, bot_id=1)
    link = RecordingVoiceClient(loop)
    notices: list[str] = []

    async def notify(text):
        notices.append(text)

    async def connect(_):
        return link

    assert not await blocked_features(graph)
    outcome = await manager.join(JoinRequest(GUILD, USER, PROMPT_CHANNEL, VOICE_CHANNEL), connect, notify)
    assert outcome.ok, outcome.message
    session = outcome.session
    assert presence_log == ["🎤 In Voice Chat"]
    blocked = await blocked_features(graph)
    assert {"vision", "image_generation"} <= blocked, blocked

    # every byte the graph sends, to compare with what comes out of Opus
    received = bytearray()
    original_write = session.buffer.write

    def recording_write(data):
        received.extend(data)
        return original_write(data)

    session.buffer.write = recording_write

    verdict = await router.route(message("Say hello to everyone in voice chat!", 1))
    assert verdict == "ok"
    ops.react.assert_awaited_once_with(PROMPT_CHANNEL, 1, "🎤")
    assert await router.route(message("Say hello to everyone in voice chat!", 1)) == "duplicate"

    await wait_for(lambda: session.history and session.history[0].ended_at is not None, what="utterance end")
    first = session.history[0]
    assert first.error is None, first.error
    assert first.spoken, "the graph reported no spoken chunk"
    await wait_for(lambda: session.buffer.stats().utterances_played >= 1, what="playback of the utterance")

    assert len(received) % FRAME_BYTES == 0 and len(received) > 0
    stats = session.buffer.stats()
    assert stats.frames_played == len(received) // FRAME_BYTES
    packets = link.audio_packets()
    assert packets and all(p.pcm_bytes == FRAME_BYTES for p in packets)
    assert source_ok(session)

    # The frames that went into the encoder are the graph's frames, unchanged and in order, with silence
    # only where the buffer had nothing (prebuffer, idle, underrun).
    fed = link.fed_pcm()
    silence = bytes(FRAME_BYTES)

    def audio_frames(pcm: bytes) -> list[bytes]:
        frames = [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
        return [f for f in frames if f != silence]

    assert audio_frames(fed) == audio_frames(bytes(received))
    # ...and libopus decodes them back to the same sound.
    decoded = np.frombuffer(link.decode_all(), dtype="<i2").reshape(-1, 2)
    reference = np.frombuffer(fed, dtype="<i2").reshape(-1, 2)
    snr = aligned_snr_db(reference[:, 0], decoded[:, 0])
    print(f"graph audio -> AudioPlayer -> Opus -> decoded: SNR {snr:.1f} dB over {len(received) / 192000:.2f} s")
    assert snr > 10.0

    status = session.status()
    assert status.recent_ttfa_ms and status.recent_ttfa_ms[0] > 0
    assert await session.report_playback()  # underruns and frames reach the graph's metrics route
    report = format_status(status, await graph.features(), await graph.health())
    assert "tts: espeak on gtx1660" in report and "Prompts waiting: 0" in report
    assert "• Looking at images and videos: off until I leave voice" in report  # the graph's real answer, in words

    assert await manager.leave(GUILD) is None
    await wait_for(lambda: link.player is not None and not link.player.is_alive(), what="player stop")
    assert presence_log == ["🎤 In Voice Chat", None]
    assert not await blocked_features(graph)
    assert not await active_sessions(graph)
    assert notices[-1].startswith("👋")


def source_ok(session) -> bool:
    return session.source.short_reads == 0


async def test_second_join_gets_the_graphs_409_message(graph):
    other = await graph.start_session(1, 2, 3, 4)  # e.g. another bot instance holds the session
    try:
        manager = SessionManager(graph, BotConfig(), PresenceKeeper(AsyncMock()))
        outcome = await manager.join(JoinRequest(GUILD, USER, PROMPT_CHANNEL, VOICE_CHANNEL),
                                     AsyncMock(), AsyncMock())
        assert not outcome.ok
        assert outcome.message == "❌ Already in a voice session! Use `!miku leave` first."
    finally:
        await graph.end_session(other.session_id)


KILLED_CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from bot_client.config import BotConfig, SessionConfig
    from bot_client.graph_api import GraphClient
    from bot_client.loopback import RecordingVoiceClient
    from bot_client.session import JoinRequest, PresenceKeeper, SessionManager

    async def main(url, token):
        graph = GraphClient(url, token)
        manager = SessionManager(graph, BotConfig(session=SessionConfig(heartbeat_interval_s=0.5)),
                                 PresenceKeeper(lambda text: asyncio.sleep(0)))
        link = RecordingVoiceClient(asyncio.get_running_loop())
        async def connect(_):
            return link
        async def notify(text):
            pass
        outcome = await manager.join(JoinRequest(1, 2, 3, 4), connect, notify)
        print("JOINED" if outcome.ok else "FAILED " + outcome.message, outcome.session.info.session_id if outcome.ok else "", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_client_killed_mid_session_is_ended_by_the_lease(graph, graph_server):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, graph_server.base_url, graph_server.token],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 90)
        assert line.startswith("JOINED"), line + proc.stderr.read() if not line else line
        session_id = line.split()[1]
        assert await blocked_features(graph)
        # heartbeats keep it alive past the lease (GRAPH_LEASE_S in the fixture)
        await asyncio.sleep(GRAPH_LEASE_S + 1)
        assert any(s["session_id"] == session_id for s in await active_sessions(graph))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    await wait_for(lambda: _none_blocked(graph), timeout=60, what="features restored by the lease")
    assert not any(s["session_id"] == session_id for s in await active_sessions(graph))


async def _none_blocked(graph: GraphClient) -> bool:
    return not await blocked_features(graph)


async def test_wrong_token_and_unreachable_graph_are_clear_errors(graph_server):
    bad = GraphClient(graph_server.base_url, "not-the-token")
    try:
        with pytest.raises(GraphAuthError):
            await bad.features()
        with pytest.raises(GraphAuthError):
            await bad.open_voice(lambda b: None, lambda e: None)
    finally:
        await bad.close()


async def test_text_chat_during_a_session_is_queued_then_replayed_once(graph):
    """A mention in another channel during voice is held by the controller and answered after `leave`."""
    from bot_client.actions import QueueReplayer

    loop = asyncio.get_running_loop()
    ops = AsyncMock(spec=ChatOps)
    executor = ActionExecutor(ops, graph)
    replayer = QueueReplayer(graph, executor)
    reports = []

    async def after_session(session, reason):
        reports.append(await replayer.replay())

    manager = SessionManager(graph, BotConfig(), PresenceKeeper(AsyncMock()), after_session=after_session)
    router = MessageRouter(graph, manager, executor, ops, bot_id=1)
    link = RecordingVoiceClient(loop)

    async def connect(_):
        return link

    outcome = await manager.join(JoinRequest(GUILD, USER, PROMPT_CHANNEL, VOICE_CHANNEL), connect, AsyncMock())
    assert outcome.ok, outcome.message
    chat = message("hey Miku, what's your favourite song?", 501, channel=777, mentions_bot=True)
    assert await router.route(chat) == "event"
    assert await router.route(chat) == "duplicate"  # redelivered after a gateway reconnect
    ready, held = await graph.replay_batch()
    assert not ready  # the session holds the queue
    replies_during = [c for c in ops.reply.await_args_list if c.args[:2] == (777, 501)]

    assert await manager.leave(GUILD) is None
    assert reports and reports[0].complete and reports[0].acked >= 1
    replies_after = [c for c in ops.reply.await_args_list if c.args[:2] == (777, 501)]
    print("during:", [c.args[2] for c in replies_during], "after:", [c.args[2] for c in replies_after])
    assert len(replies_after) == len(replies_during) + 1  # answered once, after the session
    ready, held = await graph.replay_batch()
    assert ready and not held  # acknowledged: nothing left to replay


async def test_the_bot_opens_voice_on_the_direct_port_and_falls_back_to_serves_route(graph, graph_server, monkeypatch):
    direct = await graph.direct_voice_url()
    assert direct.startswith("ws://") and direct.endswith("/v1/voice") and not direct.startswith(graph.ws_url(""))

    async def opened_url(client: GraphClient) -> str:
        stream = await client.open_voice(lambda b: None, lambda e: None)
        try:
            assert stream.is_open
            return stream.url
        finally:
            await stream.close()

    assert await opened_url(graph) == direct
    proxy_only = GraphClient(graph_server.base_url, graph_server.token, direct_voice=False)
    try:
        assert await opened_url(proxy_only) == graph.ws_url("/v1/voice")
    finally:
        await proxy_only.close()

    # a voice port this host cannot reach (e.g. a firewall) must not cost the user their voice
    async def unreachable():
        return f"ws://127.0.0.1:{free_port()}/v1/voice"

    monkeypatch.setattr(graph, "direct_voice_url", unreachable)
    assert await opened_url(graph) == graph.ws_url("/v1/voice")
