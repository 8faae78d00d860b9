"""Listening in a voice session, without Discord: the receive path -> `WS /v1/listen` -> the graph's events ->
what typed prompts and commands do. The graph is `tests/support/listen_double.py` (a test double of the
routes, on a real local aiohttp server); the bot side is the real GraphClient, SessionManager, Hearing,
ListenStream and receive path, fed with real RTP from a speaker in a real DAVE group."""
from __future__ import annotations

import os
import stat
import wave
from unittest.mock import AsyncMock, MagicMock

import discord
import numpy as np
import pytest

from bot_client.config import BotConfig, ConfigError, ListenConfig, PermissionsConfig, SessionConfig, load_config
from bot_client.graph_api import GraphClient
from bot_client.hearing import CANT_HEAR, Hearing, Member
from bot_client.jitter import FrameKind
from bot_client.session import JoinRequest, PresenceKeeper, SessionManager, SessionState
from bot_client.voice_receive import DaveGate
from bot_client.voice_rtp import XCHACHA, TransportCipher
from tests.support.listen_double import TOKEN, GraphDouble
from tests.support.voice_sender import DaveGroup, Speaker, resample_to_16k_mono, speech_48k

GUILD, ME, PROMPT_CHANNEL, VOICE_CHANNEL = 10, 20, 30, 40
BOT_USER, ANN, BEN = 1001, 2002, 3003
MEMBERS = {ANN: Member(ANN, "Ann", ("DJ",)), BEN: Member(BEN, "Ben")}


@pytest.fixture(scope="module")
def sentence():
    return speech_48k("Hello Miku, tell me about the moon.")


class Bot:
    """The bot's plain parts around one listening session."""

    def __init__(self, double: GraphDouble, config: BotConfig) -> None:
        self.double = double
        self.config = config
        self.graph = GraphClient(double.url, TOKEN, request_timeout_s=10, connect_timeout_s=5)
        self.group = DaveGroup(VOICE_CHANNEL, BOT_USER)
        self.group.add(ANN, BEN)
        self.key = os.urandom(32)
        self.notices: list[str] = []

        async def apply(text):
            pass

        self.manager = SessionManager(self.graph, config, PresenceKeeper(apply), hearing_factory=self._hearing)
        self.link = AsyncMock(spec=discord.VoiceClient)
        self.link.is_connected.return_value = True
        self.session = None
        self.now = 0.0

    async def _hearing(self, session, link) -> Hearing:
        hearing = Hearing(session, self.graph, self.config, member=MEMBERS.get, dave=DaveGate(lambda: self.group.bot),
                          reconnect_delays=(0.05, 0.1, 0.2))
        await hearing.start()
        hearing.receiver.set_key(XCHACHA, self.key)
        return hearing

    async def notify(self, text: str) -> None:
        self.notices.append(text)
        self.double._touch()

    async def join(self, listen: bool = True):
        async def connect(_channel):
            return self.link

        request = JoinRequest(guild_id=GUILD, user_id=ME, text_channel_id=PROMPT_CHANNEL,
                              voice_channel_id=VOICE_CHANNEL, listen=listen)
        outcome = await self.manager.join(request, connect, self.notify)
        assert outcome.ok, outcome.message
        self.session = outcome.session
        return outcome

    def speaker(self, user_id: int, ssrc: int) -> Speaker:
        self.session.hearing.receiver.map_ssrc(ssrc, user_id)
        return Speaker(ssrc, TransportCipher(XCHACHA, self.key), self.group.members[user_id])

    def hear(self, datagrams, tail_s: float = 1.2) -> None:
        receiver = self.session.hearing.receiver
        for datagram in datagrams:
            receiver.feed(datagram, self.now)
            self.now += 0.02
            receiver.tick(self.now)
        for _ in range(int(tail_s / 0.02)):
            self.now += 0.02
            receiver.tick(self.now)

    async def close(self) -> None:
        await self.manager.shutdown()
        await self.graph.close()


@pytest.fixture
async def double():
    server = await GraphDouble().start()
    yield server
    await server.stop()


def listening_config(**listen) -> BotConfig:
    return BotConfig(session=SessionConfig(heartbeat_interval_s=3600),
                     permissions=PermissionsConfig(leave=("DJ",), stop=("DJ",)),
                     listen=ListenConfig(servers={GUILD: True}, **listen))


@pytest.fixture
async def bot(double):
    b = Bot(double, listening_config(echo_transcripts=True))
    yield b
    await b.close()


async def test_join_says_she_listens_and_each_speaker_goes_up_the_listen_route(bot, double, sentence):
    outcome = await bot.join()
    assert "I'm listening" in outcome.message and "keep none of the audio" in outcome.message
    await double.wait_for(lambda: double.json_messages("start"), what="start")
    assert double.json_messages("start") == [{"type": "start", "guild_id": str(GUILD), "channel_id": str(VOICE_CHANNEL)}]
    ann = bot.speaker(ANN, 111)
    packets = ann.packets(sentence)
    bot.hear(packets)
    expected = (len(packets) + 40) * 640  # the utterance and (most of) the silence after it
    await double.wait_for(lambda: len(double.audio_of(ANN)) >= expected, what="Ann's audio")
    first_audio = next(i for i, m in enumerate(double.listen_messages) if isinstance(m, tuple))
    speaker = double.json_messages("speaker")
    assert speaker == [{"type": "speaker", "user_id": str(ANN), "name": "Ann"}]
    assert double.listen_messages.index(speaker[0]) < first_audio  # announced before the first audio
    heard = np.frombuffer(double.audio_of(ANN), dtype="<i2").astype(np.float32) / 32768
    reference = resample_to_16k_mono(sentence)
    lag = int(np.argmax([np.dot(heard[k:k + 16000], reference[:16000]) for k in range(0, 600)]))
    n = len(reference) - 600
    assert np.corrcoef(heard[lag:lag + n], reference[:n])[0, 1] > 0.95
    assert all(m[0] == ANN for m in double.listen_messages if isinstance(m, tuple))
    # A member leaving the channel ends their stream on the graph's side too.
    bot.session.hearing.member_left(ANN)
    await double.wait_for(lambda: double.json_messages("speaker_left"), what="speaker_left")
    assert double.json_messages("speaker_left") == [{"type": "speaker_left", "user_id": str(ANN)}]


async def test_a_turn_is_spoken_like_a_typed_prompt_stored_in_memory_and_echoed(bot, double):
    await bot.join()
    await double.wait_for(lambda: double.json_messages("start"), what="listen connection")
    await double.send({"type": "turn", "user_id": str(ANN), "name": "Ann", "text": "what is the moon made of",
                       "prompt": "Ann: what is the moon made of"})
    await double.wait_for(lambda: double.prompts, what="the prompt")
    assert double.prompts[0]["type"] == "prompt" and double.prompts[0]["text"] == "Ann: what is the moon made of"
    assert double.prompts[0]["session_id"] == "s-listen"
    await double.wait_for(lambda: double.events, what="the stored transcript")
    stored = double.events[0]
    assert stored["type"] == "message" and stored["content"] == "what is the moon made of"
    assert stored["author_id"] == str(ANN) and stored["author_name"] == "Ann"
    assert stored["channel_id"] == str(PROMPT_CHANNEL) and not stored.get("mentions_miku")
    assert "🗣️ **Ann**: what is the moon made of" in bot.notices
    # A turn without a prompt gets the speaker's name in front; a turn without text is nothing.
    await double.send({"type": "turn", "user_id": "nonsense", "text": "x"})
    await double.send({"type": "turn", "user_id": str(BEN), "name": "Ben", "text": "   "})
    await double.send({"type": "turn", "user_id": str(BEN), "name": "Ben", "text": "and the sun?"})
    await double.wait_for(lambda: len(bot.session.pending) + len(double.prompts) >= 2, what="Ben's turn")
    assert bot.session.hearing.counters["bad_events"] == 2
    assert [u.text for u in bot.session.pending] == ["Ben: and the sun?"]  # queued behind Ann's answer


async def test_barge_in_interrupts_her_and_no_frame_of_the_old_utterance_plays(bot, double):
    await bot.join()
    await double.wait_for(lambda: double.json_messages("start"), what="listen connection")
    assert (await bot.session.submit("tell me a long story")).accepted
    source = bot.session.source
    await double.wait_for(lambda: bot.session.buffer.stats().fill_frames >= 30, what="audio buffered")
    kinds = [source.buffer.read_frame()[1] for _ in range(3)]
    assert FrameKind.AUDIO in kinds
    source.read()  # the player thread's read tells hearing she speaks
    await double.wait_for(lambda: double.json_messages("speaking"), what="speaking true")
    assert double.json_messages("speaking")[0] == {"type": "speaking", "value": True}
    await double.send({"type": "barge_in", "user_id": str(ANN)})
    await double.wait_for(lambda: double.interrupts, what="the interrupt")
    assert bot.session.in_flight is None and bot.session.buffer.is_idle()
    assert bot.session.buffer.stats().dropped_frames >= 25
    for _ in range(50):  # frames still arriving from the cancelled utterance are dropped, not played
        assert source.read() == bytes(3840)
    await double.wait_for(lambda: len(double.json_messages("speaking")) >= 2, what="speaking false")
    assert double.json_messages("speaking")[-1] == {"type": "speaking", "value": False}
    assert bot.session.hearing.counters["barge_ins"] == 1


async def test_pause_holds_her_voice_in_place_and_resume_goes_on(bot, double):
    await bot.join()
    await double.wait_for(lambda: double.json_messages("start"), what="listen connection")
    assert (await bot.session.submit("tell me a long story")).accepted
    source, buffer = bot.session.source, bot.session.buffer
    await double.wait_for(lambda: buffer.stats().fill_frames >= 30, what="audio buffered")
    assert source.read() != bytes(3840)
    await double.send({"type": "pause", "user_id": str(ANN)})
    await double.wait_for(lambda: source.held, what="the hold")
    played = buffer.stats().frames_played
    assert all(source.read() == bytes(3840) for _ in range(20))
    assert buffer.stats().frames_played == played  # nothing was taken (or lost) while held
    assert len(double.json_messages("speaking")) == 1  # still speaking, for the graph's barge-in check
    await double.send({"type": "resume", "user_id": str(ANN), "reason": "short"})
    await double.wait_for(lambda: not source.held, what="the resume")
    assert source.read() != bytes(3840) and buffer.stats().frames_played == played + 1
    source.hold()  # a hold nobody resumes ends by itself
    for _ in range(source.max_hold_reads + 1):
        source.read()
    assert not source.held and double.interrupts == 0


async def test_a_barge_in_with_no_words_says_the_cut_off_rest_again(bot, double):
    await bot.join()
    await double.wait_for(lambda: double.json_messages("start"), what="listen connection")
    assert (await bot.session.submit("tell me a long story")).accepted
    source, buffer = bot.session.source, bot.session.buffer
    await double.wait_for(lambda: buffer.stats().fill_frames >= 60, what="three chunks buffered")
    for _ in range(30):  # "part 0." heard whole, "part 1." cut after 5 of its 25 frames
        source.read()
    received = len(bot.session._audible.spoken)
    await double.send({"type": "pause", "user_id": str(ANN)})
    await double.send({"type": "barge_in", "user_id": str(ANN)})
    await double.wait_for(lambda: double.interrupts, what="the interrupt")
    assert bot.session.buffer.is_idle()
    await double.send({"type": "resume", "user_id": str(ANN), "reason": "no_words"})
    await double.wait_for(lambda: len(double.prompts) == 2, what="the rest said again")
    again = double.prompts[1]
    assert again["type"] == "say"
    assert again["text"] == " ".join(f"part {i}." for i in range(1, received))
    assert bot.session.hearing.counters["resumed"] == 1
    # A resume with words heard (a turn came) or a second resume says nothing more.
    await double.send({"type": "resume", "user_id": str(ANN), "reason": "no_words"})
    await double.send({"type": "error", "message": "marker"})
    await double.wait_for(lambda: bot.session.hearing.counters["errors"], what="the marker")
    assert len(double.prompts) == 2


async def test_voice_commands_do_what_the_text_commands_do_with_the_same_role_checks(bot, double):
    await bot.join()
    await double.wait_for(lambda: double.json_messages("start"), what="listen connection")
    await bot.session.submit("say something long")
    await double.wait_for(lambda: double.prompts, what="the prompt")
    await double.send({"type": "command", "user_id": str(BEN), "name": "leave"})  # Ben has no DJ role
    await double.wait_for(lambda: any("permission" in n for n in bot.notices), what="the refusal")
    assert bot.session.active and any(n.startswith("Ben: ❌") for n in bot.notices)
    await double.send({"type": "command", "user_id": str(ANN), "name": "quiet"})
    await double.wait_for(lambda: double.interrupts, what="quiet -> interrupt")
    assert any("be quiet" in n for n in bot.notices) and bot.session.active
    await double.send({"type": "command", "user_id": str(ANN), "name": "dance"})  # not a command
    await double.send({"type": "command", "user_id": str(ANN), "name": "leave"})
    await bot.session.wait_ended()
    assert bot.session.state is SessionState.ENDED and bot.notices[-1].startswith("👋")
    assert bot.session.hearing.counters == {**bot.session.hearing.counters, "commands": 2, "refused_commands": 1,
                                            "bad_events": 1}


async def test_stt_unavailable_is_said_once_and_typed_prompts_keep_working(bot, double):
    await bot.join()
    await double.wait_for(lambda: double.json_messages("start"), what="listen connection")
    for _ in range(3):
        await double.send({"type": "stt_unavailable", "message": "speech-to-text stage is restarting"})
    await double.send({"type": "error", "message": "bad frame"})
    await double.wait_for(lambda: bot.session.hearing.counters["errors"], what="the error event")
    assert bot.notices.count(CANT_HEAR) == 1
    assert (await bot.session.submit("typed prompt")).accepted
    await double.wait_for(lambda: double.prompts, what="the typed prompt")
    assert double.prompts[0]["text"] == "typed prompt"


async def test_the_listen_connection_comes_back_after_a_drop(bot, double):
    await bot.join()
    await double.wait_for(lambda: double.json_messages("start"), what="the first start")
    await double.drop_listen()
    await double.wait_for(lambda: double.listen_connections == 2 and len(double.json_messages("start")) == 2,
                          what="a new listen connection")
    assert bot.session.active and bot.session.hearing.counters["reconnects"] == 1


async def test_without_a_listen_route_she_joins_and_says_she_cannot_hear():
    double = await GraphDouble(listen_route=False).start()
    bot = Bot(double, listening_config())
    try:
        outcome = await bot.join()
        assert "can't hear" in outcome.message and bot.session.active and bot.session.hearing is None
    finally:
        await bot.close()
        await double.stop()


async def test_servers_that_did_not_opt_in_are_not_heard(double):
    bot = Bot(double, BotConfig(session=SessionConfig(heartbeat_interval_s=3600)))
    try:
        outcome = await bot.join(listen=False)
        assert "listening" not in outcome.message and bot.session.hearing is None
        assert double.listen_connections == 0
    finally:
        await bot.close()


async def test_recording_is_off_unless_configured_and_then_private(double, sentence, tmp_path):
    bot = Bot(double, listening_config(record_dir=str(tmp_path / "heard")))
    try:
        outcome = await bot.join()
        assert "recorded" in outcome.message
        bot.hear(bot.speaker(ANN, 111).packets(sentence[: 48000]))
        await double.wait_for(lambda: len(double.audio_of(ANN)) > 16000, what="audio")
        await bot.manager.leave(GUILD)
    finally:
        await bot.close()
    files = list((tmp_path / "heard").iterdir())
    assert [f.name for f in files] == ["s-listen-2002.wav"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "heard").stat().st_mode) == 0o700
    with wave.open(str(files[0])) as reader:
        assert reader.getframerate() == 16000 and reader.getnchannels() == 1 and reader.getnframes() > 16000


def test_listen_config(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text('listen:\n  servers:\n    "123": true\n    456: false\n    789: {listen: true}\n'
                    '  echo_transcripts: true\n  silence_fill_ms: 600\n')
    listen = load_config(path).listen
    assert listen.enabled(123) and listen.enabled("789") and not listen.enabled(456) and not listen.enabled(None)
    assert listen.echo_transcripts and listen.silence_fill_ms == 600 and listen.record_dir is None
    assert not BotConfig().listen.enabled(123)  # off by default
    path.write_text("listen:\n  servers: [123, 456]\n")
    assert load_config(path).listen.servers == {123: True, 456: True}
    for bad in ("listen:\n  servers:\n    123: yes-please\n", "listen:\n  servers:\n    abc: true\n",
                "listen:\n  reorder_depth: 0\n", "listen:\n  hear: true\n"):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            load_config(path)


async def test_voice_status_shows_what_she_heard(bot, double, sentence):
    from bot_client.status import format_status

    await bot.join()
    bot.hear(bot.speaker(ANN, 111).packets(sentence[:48000]))
    await double.wait_for(lambda: len(double.audio_of(ANN)) > 16000, what="audio")
    text = format_status(bot.session.status(), None, None)
    assert "Hearing: 1 speakers, 0 turns" in text and "DAVE refused 0" in text
    assert "Hearing" not in format_status(None, None, None)


@pytest.mark.parametrize("direct", ["port", "dead"])
async def test_the_listen_route_is_taken_on_the_direct_voice_port_when_offered(direct):
    double = await GraphDouble(direct_listen=direct).start()
    bot = Bot(double, listening_config())
    try:
        await bot.join()
        await double.wait_for(lambda: double.json_messages("start"), what="the listen connection")
        expected_port = double.direct_port if direct == "port" else int(double.url.rsplit(":", 1)[1])
        assert double.listen_hosts == [f"127.0.0.1:{expected_port}"]
    finally:
        await bot.close()
        await double.stop()


@pytest.mark.parametrize("listens", [True, False])
async def test_join_asks_discord_for_audio_only_in_servers_that_opted_in(listens):
    """The cog: `listen` in the join request, and the voice connection undeafened only there."""
    from types import SimpleNamespace

    from bot_client.bot import MikuBot
    from bot_client.cogs.voice import VoiceCog
    from tests.test_bot_commands import context, member, voice_channel

    config = BotConfig(sync_app_commands=False, listen=ListenConfig(servers={1: listens}))
    bot = MikuBot(config, AsyncMock(spec=GraphClient))
    bot.manager = AsyncMock(spec=bot.manager)
    bot.manager.join.return_value = SimpleNamespace(ok=True, message="🎤 Joined!")
    await bot.add_cog(VoiceCog(bot))
    cog = bot.get_cog("Voice")
    target = voice_channel(cid=77)
    target.connect = AsyncMock()
    ctx = context(member(voice_channel=target), guild_id=1)
    await cog.join.callback(cog, ctx, None)
    request, connect = bot.manager.join.await_args.args[:2]
    assert request.listen is listens
    await connect(77)
    assert target.connect.await_args.kwargs["self_deaf"] is (not listens)


async def test_members_leaving_and_joining_the_channel_reach_hearing():
    from types import SimpleNamespace

    from bot_client.cogs.events import EventsCog
    from tests.test_bot_commands import make_bot

    bot, _ = await make_bot()
    session = SimpleNamespace(voice_channel_id=4, hearing=MagicMock(spec=Hearing))
    bot.manager.get = MagicMock(return_value=session)
    bot._connection.user = MagicMock(id=42)
    cog = bot.get_cog("Events")
    assert isinstance(cog, EventsCog)
    ann = SimpleNamespace(id=ANN, guild=SimpleNamespace(id=1))
    inside, elsewhere = SimpleNamespace(channel=SimpleNamespace(id=4)), SimpleNamespace(channel=SimpleNamespace(id=5))
    await cog.on_voice_state_update(ann, inside, elsewhere)
    session.hearing.member_left.assert_called_once_with(ANN)
    await cog.on_voice_state_update(ann, SimpleNamespace(channel=None), inside)
    session.hearing.member_joined.assert_called_once_with(ANN)
    await cog.on_voice_state_update(ann, inside, inside)  # mute/unmute: nothing
    assert session.hearing.member_left.call_count == 1 and session.hearing.member_joined.call_count == 1
