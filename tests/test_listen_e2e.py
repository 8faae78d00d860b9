"""Miku hears, end to end without Discord, against the real graph (`graph_server`: silero VAD and the
pocketsphinx SpeechToText stage of configs/local.yaml): espeak-ng speaks -> libopus -> a real DAVE
group's frame encryption -> RTP sealed with the transport mode -> the bot's receive path -> the real
`WS /v1/listen` -> a named turn whose transcript holds the sentence's key words -> the brain's prompt ->
the answer plays through discord.py's real AudioPlayer; then "Miku, leave." ends the session."""
from __future__ import annotations

import asyncio
import os

from bot_client.config import BotConfig, ListenConfig, SessionConfig
from bot_client.graph_api import GraphClient
from bot_client.hearing import Hearing, Member
from bot_client.loopback import RecordingVoiceClient
from bot_client.session import JoinRequest, PresenceKeeper, SessionManager, SessionState
from bot_client.voice_receive import DaveGate
from bot_client.voice_rtp import XCHACHA, TransportCipher
from tests.support.voice_sender import DaveGroup, Speaker, speech_48k

GUILD, USER, PROMPT_CHANNEL, VOICE_CHANNEL = 9101, 9102, 9103, 9104
BOT_USER, ANN = 9100, 9105


async def wait_for(predicate, timeout=120.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_spoken_words_reach_the_graph_and_miku_answers_out_loud(graph_server):
    graph = GraphClient(graph_server.base_url, graph_server.token, request_timeout_s=30)
    for session in await graph.sessions():  # a previous test's session must not leak into this one
        await graph.end_session(session["session_id"])
    config = BotConfig(session=SessionConfig(heartbeat_interval_s=1.0),
                       listen=ListenConfig(servers={GUILD: True}))
    group = DaveGroup(VOICE_CHANNEL, BOT_USER)
    group.add(ANN)
    key = os.urandom(32)

    async def hearing_factory(session, link):
        hearing = Hearing(session, graph, config, member={ANN: Member(ANN, "Ann")}.get,
                          dave=DaveGate(lambda: group.bot))
        await hearing.start()
        hearing.receiver.set_key(XCHACHA, key)
        hearing.receiver.map_ssrc(4321, ANN)  # what the SPEAKING op does
        return hearing

    async def apply(text):
        pass

    manager = SessionManager(graph, config, PresenceKeeper(apply), hearing_factory=hearing_factory)
    link = RecordingVoiceClient(asyncio.get_running_loop())
    notices: list[str] = []

    async def notify(text):
        notices.append(text)

    async def connect(_):
        return link

    outcome = await manager.join(JoinRequest(GUILD, USER, PROMPT_CHANNEL, VOICE_CHANNEL, listen=True), connect, notify)
    assert outcome.ok and "I'm listening" in outcome.message, outcome.message
    session = outcome.session
    hearing = session.hearing
    speaker = Speaker(4321, TransportCipher(XCHACHA, key), group.members[ANN])
    clock = [0.0]

    def say(text: str) -> None:
        """Ann's packets, 20 ms apart on the receiver's clock, then the silence after her."""
        for datagram in speaker.packets(speech_48k(text)):
            hearing.receiver.feed(datagram, clock[0])
            clock[0] += 0.02
            hearing.receiver.tick(clock[0])
        for _ in range(60):
            clock[0] += 0.02
            hearing.receiver.tick(clock[0])
        speaker.timestamp += 48000  # a second of silence on the sender's side

    try:
        say("Can you sing a song for me?")
        await wait_for(lambda: hearing.turns, what="the turn")
        turn = hearing.turns[0]
        assert turn["name"] == "Ann" and "song" in turn["text"].split(), turn
        assert hearing.receiver.stats.dave_failures == 0 and hearing.receiver.stats.frames_decoded > 50
        # Spoken like a typed prompt: the brain's prompt reaches the LLM with Ann's words, the answer plays.
        await wait_for(lambda: session.history and session.history[0].ended_at is not None, what="the answer")
        answer = session.history[0]
        assert answer.text.startswith("Ann: ") and answer.error is None, (answer.text, answer.error)
        assert any("song" in r.prompt for r in graph_server.llm_server.requests)
        await wait_for(lambda: session.buffer.stats().utterances_played >= 1, what="the answer played")
        assert link.audio_packets(), "no frame of the answer went to Discord"

        say("Miku, leave.")
        await wait_for(lambda: session.state is SessionState.ENDED, what="the voice command")
        assert hearing.counters["commands"] == 1 and notices[-1].startswith("👋")
    finally:
        await manager.shutdown()
        await graph.close()
