"""Voice session lifecycle with plain objects and AsyncMock(spec=...) stand-ins (no Discord, no graph)."""
from __future__ import annotations

import asyncio
from unittest.mock import AsyncMock

import discord
import pytest

from bot_client.config import BotConfig, PromptMode, SessionConfig
from bot_client.graph_api import (
    GraphClient,
    GraphConflict,
    GraphHealth,
    GraphUnavailable,
    SessionGone,
    SessionInfo,
    StageHealth,
    VoiceStream,
)
from bot_client.jitter import FRAME_BYTES
from bot_client.session import (
    ALREADY_IN_SESSION,
    CHANNEL_FULL,
    CONFUSED,
    NOT_IN_VOICE,
    TEXT_MODE_PREFIX,
    TTS_UNAVAILABLE,
    EndReason,
    JoinRequest,
    OwnVoiceChange,
    PresenceKeeper,
    SessionManager,
    SessionState,
    own_voice_change,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, *, lease=30.0, mode=PromptMode.QUEUE, **session_kw):
        self.clock = FakeClock()
        self.config = BotConfig(session=SessionConfig(prompt_mode=mode, heartbeat_interval_s=3600,
                                                      voice_reconnect_grace_s=1.0, **session_kw))
        self.graph = AsyncMock(spec=GraphClient)
        self.graph.health.return_value = GraphHealth(
            ok=True, stages=(StageHealth("llm", "echo", True), StageHealth("tts", "espeak", True),
                             StageHealth("vc", "world", True)))
        self.graph.start_session.return_value = SessionInfo("s1", lease, ("vision", "image_generation"))
        self.stream = AsyncMock(spec=VoiceStream)
        self.callbacks: dict = {}

        async def open_voice(on_audio, on_event, on_closed=None):
            self.callbacks = {"audio": on_audio, "event": on_event, "closed": on_closed}
            return self.stream

        self.graph.open_voice.side_effect = open_voice
        self.presence_calls: list = []

        async def apply(text):
            self.presence_calls.append(text)

        self.presence = PresenceKeeper(apply, "🎤 In Voice Chat", base_text="Listening to you")
        self.ended: list = []

        async def after(session, reason):
            self.ended.append(reason)

        self.manager = SessionManager(self.graph, self.config, self.presence, clock=self.clock, after_session=after)
        self.link = AsyncMock(spec=discord.VoiceClient)
        self.link.is_connected.return_value = True
        self.notices: list[str] = []

    async def notify(self, text):
        self.notices.append(text)

    async def connect(self, channel_id):
        return self.link

    async def join(self, **kw):
        request = JoinRequest(guild_id=1, user_id=2, text_channel_id=3, voice_channel_id=kw.pop("voice", 4), **kw)
        return await self.manager.join(request, self.connect, self.notify)

    def sent(self):
        return [(c.args[0], c.args[1], c.kwargs.get("kind", "prompt")) for c in self.stream.prompt.await_args_list]

    async def event(self, **event):
        await self.callbacks["event"](event)


async def test_join_starts_playback_heartbeat_and_presence_then_leave_restores_everything():
    h = Harness()
    outcome = await h.join()
    assert outcome.ok and outcome.session is not None
    session = outcome.session
    assert session.state is SessionState.ACTIVE
    assert h.manager.get(1) is session and h.manager.by_prompt_channel(3) is session
    h.graph.start_session.assert_awaited_once_with(1, 4, 3, 2)
    h.link.play.assert_called_once()
    assert h.link.play.call_args.args[0] is session.source
    assert h.presence_calls == ["🎤 In Voice Chat"]
    assert "While I'm in voice, I won't draw or look at images." in outcome.message
    assert "vision" not in outcome.message and "image_generation" not in outcome.message  # no feature ids

    assert await h.manager.leave(1) is None
    assert session.state is SessionState.ENDED and session.end_reason is EndReason.LEAVE
    h.graph.end_session.assert_awaited_once_with("s1")
    h.link.disconnect.assert_awaited_once()
    h.stream.close.assert_awaited()
    assert session.buffer.read() == b""  # the player stops
    assert h.presence_calls == ["🎤 In Voice Chat", "Listening to you"]
    assert h.ended == [EndReason.LEAVE]
    assert h.manager.get(1) is None
    assert h.notices and h.notices[-1].startswith("👋")


async def test_end_is_idempotent():
    h = Harness()
    session = (await h.join()).session
    await asyncio.gather(session.end(EndReason.LEAVE), session.end(EndReason.KICKED))
    await session.end(EndReason.SHUTDOWN)
    h.graph.end_session.assert_awaited_once()
    assert session.end_reason is EndReason.LEAVE and h.ended == [EndReason.LEAVE]


@pytest.mark.parametrize(
    "kw, expected",
    [({"voice": None}, NOT_IN_VOICE), ({"channel_full": True}, CHANNEL_FULL)],
)
async def test_join_refusals_before_any_graph_call(kw, expected):
    h = Harness()
    outcome = await h.join(**kw)
    assert not outcome.ok and outcome.message == expected
    h.graph.start_session.assert_not_awaited()


async def test_tts_down_refuses_with_the_plans_message_and_starts_nothing():
    h = Harness()
    h.graph.health.return_value = GraphHealth(ok=False, stages=(StageHealth("tts", "espeak", False),))
    outcome = await h.join()
    assert outcome.message == TTS_UNAVAILABLE
    h.graph.start_session.assert_not_awaited()
    assert h.presence_calls == []


async def test_already_in_session_shows_the_graphs_409_message():
    h = Harness()
    h.graph.start_session.side_effect = GraphConflict("❌ Already in a voice session! Use `!miku leave` first.", 409)
    outcome = await h.join()
    assert not outcome.ok and outcome.message == "❌ Already in a voice session! Use `!miku leave` first."
    h.link.play.assert_not_called()


async def test_second_join_in_the_same_guild_is_refused_locally():
    h = Harness()
    assert (await h.join()).ok
    outcome = await h.join()
    assert outcome.message == ALREADY_IN_SESSION
    assert h.graph.start_session.await_count == 1


async def test_graph_unreachable_at_start_gives_a_clear_message():
    h = Harness()
    h.graph.health.side_effect = GraphUnavailable("down")
    outcome = await h.join()
    assert not outcome.ok and "can't reach my voice graph" in outcome.message


async def test_voice_connect_failure_releases_the_graph_session():
    h = Harness()

    async def failing_connect(_):
        raise discord.ClientException("Already connected to a voice channel.")

    outcome = await h.manager.join(JoinRequest(1, 2, 3, 4), failing_connect, h.notify)
    assert not outcome.ok and "couldn't connect" in outcome.message
    h.graph.end_session.assert_awaited_once_with("s1")
    assert h.manager.get(1) is None


async def test_voice_websocket_failure_undoes_voice_and_session():
    h = Harness()
    h.graph.open_voice.side_effect = GraphUnavailable("ws down")
    outcome = await h.join()
    assert not outcome.ok
    h.link.disconnect.assert_awaited()
    h.graph.end_session.assert_awaited_once_with("s1")
    assert h.presence_calls == []


async def test_prompts_queue_in_order_while_she_speaks():
    h = Harness()
    session = (await h.join()).session
    results = [await session.submit(t) for t in ("one", "two", "three")]
    assert [r.position for r in results] == [0, 1, 2]
    assert [s[1] for s in h.sent()] == ["one"]
    first = h.sent()[0][0]
    await h.event(type="utterance.start", id=first)
    h.callbacks["audio"](bytes(FRAME_BYTES * 3))
    await h.event(type="utterance.end", id=first, status="ok", timings={"first_frame": 100})
    assert [s[1] for s in h.sent()] == ["one", "two"]
    second = h.sent()[1][0]
    await h.event(type="utterance.start", id=second)
    await h.event(type="error", id=second, stage="graph", message="boom")
    await h.event(type="utterance.end", id=second, status="error")  # the graph always ends it too
    assert [s[1] for s in h.sent()] == ["one", "two", "three"]
    assert session.buffer.stats().fill_frames == 3
    assert session.status().queue_length == 0


async def test_interrupt_mode_cuts_her_off_and_drops_late_audio():
    h = Harness(mode=PromptMode.INTERRUPT)
    session = (await h.join()).session
    await session.submit("long story")
    first = h.sent()[0][0]
    await h.event(type="utterance.start", id=first)
    h.callbacks["audio"](bytes(FRAME_BYTES * 10))
    result = await session.submit("actually, stop")
    assert result.accepted and result.interrupted
    h.stream.interrupt.assert_awaited_once()
    assert [s[1] for s in h.sent()] == ["long story", "actually, stop"]
    assert session.buffer.stats().fill_frames == 0
    h.callbacks["audio"](bytes(FRAME_BYTES * 4))  # late frames of the interrupted utterance
    await h.event(type="utterance.end", id=first, status="interrupted")
    assert session.buffer.stats().fill_frames == 0
    second = h.sent()[1][0]
    await h.event(type="utterance.start", id=second)
    h.callbacks["audio"](bytes(FRAME_BYTES * 2))
    assert session.buffer.stats().fill_frames == 2


async def test_stop_interrupts_and_drops_waiting_prompts():
    h = Harness()
    session = (await h.join()).session
    for text in ("a", "b", "c"):
        await session.submit(text, kind="say")
    assert h.sent()[0][2] == "say"
    assert await session.stop_speaking() == 2
    h.stream.interrupt.assert_awaited_once()
    assert session.status().queue_length == 0 and not session.status().speaking


async def test_llm_failure_says_miku_is_confused():
    h = Harness()
    session = (await h.join()).session
    await session.submit("hello")
    uid = h.sent()[0][0]
    await h.event(type="utterance.start", id=uid)
    await h.event(type="error", id=uid, stage="llm", message="openai http://x: timed out after 30 s")
    assert h.notices == [CONFUSED]
    assert session.in_flight is None


async def test_tts_failure_mid_utterance_posts_the_text_instead():
    h = Harness()
    session = (await h.join()).session
    await session.submit("tell me")
    uid = h.sent()[0][0]
    await h.event(type="utterance.start", id=uid)
    await h.event(type="chunk", id=uid, index=0, text="Hi there!")
    await h.event(type="chunk", id=uid, index=1, text="Nice to meet you.")
    await h.event(type="error", id=uid, stage="tts", message="espeak crashed")
    assert h.notices == [TEXT_MODE_PREFIX + "Hi there! Nice to meet you."]


async def test_silent_utterance_times_out_with_the_confused_message():
    h = Harness(utterance_timeout_s=0.2)
    session = (await h.join()).session
    await session.submit("hello")
    h.clock.now += 5  # nothing came back for 5 s
    await _wait(lambda: CONFUSED in h.notices)  # the watchdog runs on its own task
    h.stream.interrupt.assert_awaited()
    assert session.in_flight is None


async def test_heartbeat_410_ends_the_session_without_a_second_delete():
    h = Harness()
    session = (await h.join()).session
    h.graph.heartbeat.side_effect = SessionGone("expired", 410)
    assert await session.heartbeat_once() is False
    assert session.end_reason is EndReason.LEASE_EXPIRED
    h.graph.end_session.assert_not_awaited()
    assert h.presence_calls[-1] == "Listening to you"


async def test_graph_unreachable_mid_session_ends_it_after_the_lease():
    h = Harness(lease=30.0)
    session = (await h.join()).session
    h.graph.heartbeat.side_effect = GraphUnavailable("down")
    h.clock.now += 10
    assert await session.heartbeat_once() is True  # within the lease: keep trying
    assert session.active
    h.clock.now += 25
    assert await session.heartbeat_once() is False
    assert session.end_reason is EndReason.GRAPH_UNREACHABLE
    assert any("lost contact" in n for n in h.notices)


async def test_voice_link_lost_for_good_ends_the_session():
    h = Harness()
    session = (await h.join()).session
    h.link.is_connected.return_value = False
    await session.on_player_stopped(None)
    assert session.end_reason is EndReason.VOICE_LOST
    h.graph.end_session.assert_awaited_once()


async def test_voice_link_that_comes_back_resumes_playback():
    h = Harness()
    session = (await h.join()).session
    h.link.is_connected.return_value = False

    async def reconnect_soon():
        await asyncio.sleep(0.05)
        h.link.is_connected.return_value = True

    asyncio.ensure_future(reconnect_soon())
    await session.on_player_stopped(None)
    assert session.active and session.voice_ok
    assert h.link.play.call_count == 2


async def test_replies_go_to_text_while_the_voice_link_is_down():
    h = Harness()
    session = (await h.join()).session
    session.voice_ok = False
    await session.submit("hi")
    uid = h.sent()[0][0]
    await h.event(type="utterance.start", id=uid)
    await h.event(type="chunk", id=uid, index=0, text="Hello!")
    await h.event(type="utterance.end", id=uid, status="ok", timings={})
    assert h.notices == [TEXT_MODE_PREFIX + "Hello!"]


async def test_voice_websocket_drop_reconnects_and_keeps_the_session():
    h = Harness()
    session = (await h.join()).session
    await session.submit("hi")
    await h.callbacks["closed"](ConnectionError("reset"))
    assert session.active and h.graph.open_voice.await_count == 2
    assert any(TEXT_MODE_PREFIX in n for n in h.notices)  # the answer in flight is reported lost
    await session.submit("again")
    assert h.sent()[-1][1] == "again"


async def test_voice_websocket_that_cannot_come_back_ends_the_session():
    h = Harness()
    session = (await h.join()).session
    h.graph.open_voice.side_effect = GraphUnavailable("down")
    await h.callbacks["closed"](ConnectionError("reset"))
    assert session.end_reason is EndReason.GRAPH_UNREACHABLE


async def test_shutdown_ends_every_session():
    h = Harness()
    session = (await h.join()).session
    await h.manager.shutdown()
    assert session.end_reason is EndReason.SHUTDOWN
    h.graph.end_session.assert_awaited_once()


async def test_playback_report_sends_deltas():
    h = Harness()
    session = (await h.join()).session
    session.buffer.begin("x")
    session.buffer.write(bytes(FRAME_BYTES))
    session.buffer.end("x")
    session.buffer.read()
    assert await session.report_playback()
    assert await session.report_playback()
    first, second = h.graph.report_playback.await_args_list
    assert first.args[:2] == (0, 1) and second.args[:2] == (0, 0)


async def test_status_reports_time_to_first_audio():
    h = Harness()
    session = (await h.join()).session
    await session.submit("hi")
    uid = h.sent()[0][0]
    await h.event(type="utterance.start", id=uid)
    h.clock.now += 0.25
    h.callbacks["audio"](bytes(FRAME_BYTES))
    await h.event(type="utterance.end", id=uid, status="ok", timings={})
    assert session.status().recent_ttfa_ms == (250.0,)


def test_own_voice_change_classification():
    assert own_voice_change(4, None, 4) is OwnVoiceChange.REMOVED
    assert own_voice_change(4, 5, 4) is OwnVoiceChange.MOVED
    assert own_voice_change(4, 4, 4) is OwnVoiceChange.NONE
    assert own_voice_change(None, 4, 4) is OwnVoiceChange.NONE


async def _wait(predicate, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_real_player_losing_the_voice_link_for_good_ends_the_session():
    from bot_client.loopback import RecordingVoiceClient

    h = Harness()
    h.link = RecordingVoiceClient(asyncio.get_running_loop(), timeout=0.2)
    session = (await h.join()).session
    await _wait(lambda: len(h.link.audio_packets()) >= 3)  # silence while idle: the player runs
    h.link.drop_connection()
    await _wait(lambda: session.state is SessionState.ENDED)
    assert session.end_reason is EndReason.VOICE_LOST
    h.graph.end_session.assert_awaited_once_with("s1")
    assert h.presence_calls[-1] == "Listening to you"


async def test_real_player_resumes_when_the_voice_link_comes_back():
    from bot_client.loopback import RecordingVoiceClient

    h = Harness()
    h.link = RecordingVoiceClient(asyncio.get_running_loop(), timeout=0.1)
    session = (await h.join()).session
    await _wait(lambda: session.source.paused)  # idle: after the silence tail the player waits, paused
    first_player = h.link.player
    h.link.drop_connection()
    # The next utterance wakes the player, which finds the link gone, waits `timeout` and gives up.
    session.buffer.begin("u1")
    session.buffer.write(b"\x01" * FRAME_BYTES * 20)
    session.buffer.end("u1")
    await _wait(lambda: not first_player.is_alive())
    h.link.restore_connection()
    await _wait(lambda: h.link.player is not first_player and session.voice_ok)
    await _wait(lambda: session.buffer.stats().utterances_played == 1)  # the new player plays the rest
    assert [p.pcm for p in h.link.audio_packets()].count(b"\x01" * FRAME_BYTES) >= 19
    assert session.active
    await session.end(EndReason.LEAVE)
