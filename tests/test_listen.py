"""The listening stages in process (no Ray): silero VAD, ordered named turns, barge-in, voice commands,
bad input and a failing STT stage. Speech is espeak-ng's; the STT is the real pocketsphinx backend."""
import asyncio
import json

import numpy as np
import pytest

from graph.backends.base import create_backend
from graph.listen.audio_in import espeak_16k, frames_20ms, silence, to_pcm16
from graph.listen.commands import find_command, split_command
from graph.listen.config import ListenConfig, NoWordsPolicy
from graph.listen.protocol import audio_frame
from graph.listen.session import ListenSession
from graph.listen.types import STTOptions, Transcript, VoiceCommand
from graph.listen.vad import SpeechDetector, VadEventKind
from graph.voice.types import StageError

ANN, BOB = 1001, 2002


@pytest.fixture(scope="module")
def sphinx():
    return create_backend("stt", {"backend": "pocketsphinx"})


@pytest.fixture(scope="module")
def speech():
    return {text: espeak_16k(text) for text in ("Miku, leave.", "Miku, stop.", "Miku, be quiet.",
                                                "Can you sing a song for me?", "Hello, how are you today?")}


class Client:
    """Collects what the session sends."""

    def __init__(self):
        self.messages: list[dict] = []
        self.changed = asyncio.Event()

    async def send(self, message: dict) -> None:
        json.dumps(message)  # what goes on the wire must be JSON
        self.messages.append(message)
        self.changed.set()

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]


async def inline(function, *args):
    return function(*args)


def session_with(transcribe, config=None):
    client = Client()
    session = ListenSession(config or ListenConfig(), transcribe, client.send, run_vad=inline)
    return session, client


async def started(session, *speakers):
    await session.handle_raw(json.dumps({"type": "start", "guild_id": "1", "channel_id": "2"}))
    for user_id, name in speakers:
        await session.handle_raw(json.dumps({"type": "speaker", "user_id": str(user_id), "name": name}))


async def feed(session, user_id, samples):
    for frame in frames_20ms(to_pcm16(samples)):
        await session.handle_raw(audio_frame(user_id, frame))


# ---- VAD ----

def test_vad_finds_speech_and_ends_it_after_the_configured_silence(speech):
    detector = SpeechDetector(ListenConfig(end_silence_ms=500))
    audio = np.concatenate([silence(0.5), speech["Hello, how are you today?"], silence(1.0)])
    events = []
    for frame in frames_20ms(audio):
        events += detector.feed(frame)
    assert [e.kind for e in events] == [VadEventKind.STARTED, VadEventKind.ENDED]
    started_at, ended = events[0].at_s, events[1]
    assert 0.4 <= started_at <= 0.8
    voiced = np.flatnonzero(np.abs(speech["Hello, how are you today?"]) > 0.02)
    speech_end = 0.5 + voiced[-1] / 16000
    # ends 500 ms (plus one 32 ms window) after the last speech, not 2 s
    assert speech_end + 0.3 <= ended.at_s <= speech_end + 0.65
    assert 0.8 * (speech_end - 0.5) <= len(ended.audio) / 16000 <= speech_end - 0.5 + 0.5


def test_vad_ignores_silence_and_noise():
    rng = np.random.default_rng(1)
    detector = SpeechDetector(ListenConfig())
    events = detector.feed(silence(2.0)) + detector.feed(rng.normal(0, 0.05, 32000).astype(np.float32))
    events += detector.feed(rng.uniform(-0.3, 0.3, 32000).astype(np.float32)) + detector.flush()
    assert events == []


def test_listen_config_is_checked():
    with pytest.raises(ValueError, match="unknown key"):
        ListenConfig.from_dict({"silence": 1})
    with pytest.raises(ValueError, match="no_words"):
        ListenConfig.from_dict({"no_words": "maybe"})
    with pytest.raises(ValueError, match="neg_threshold"):
        ListenConfig.from_dict({"threshold": 0.3, "neg_threshold": 0.5})
    assert ListenConfig.from_dict({"no_words": "let_go"}).no_words is NoWordsPolicy.LET_GO


# ---- commands ----

@pytest.mark.parametrize("text, command", [
    ("Miku, leave.", VoiceCommand.LEAVE), ("hey miku please stop", VoiceCommand.STOP),
    ("Miku be quiet!", VoiceCommand.QUIET), ("Miko, shut up", VoiceCommand.QUIET),
    ("please leave me alone", None), ("stop it", None), ("Miku, sing something", None), ("", None),
])
def test_voice_commands_need_her_name(text, command):
    assert find_command(text) is command


@pytest.mark.parametrize("text, command, after", [
    ("Miku, stop. Sing something else!", VoiceCommand.STOP, "Sing something else"),
    ("hey miku stop, what's the weather", VoiceCommand.STOP, "what's the weather"),
    ("Miku, stop.", VoiceCommand.STOP, ""), ("Miku stop ...!?", VoiceCommand.STOP, ""),
    ("Miku, leave. Bye everyone", VoiceCommand.LEAVE, ""), ("Miku, be quiet, I'm on the phone", VoiceCommand.QUIET, ""),
    ("sing something", None, ""),
])
def test_what_follows_stop_is_a_new_request(text, command, after):
    assert split_command(text) == (command, after)


async def test_a_turn_with_stop_and_a_request_gives_the_command_then_the_request():
    said = iter(["Miku, stop. Tell me about cats instead.", "Miku, leave. Bye everyone."])

    async def whisper_like(audio, options):  # a recogniser with good text and no command grammar
        return Transcript(text=next(said), backend="text")

    session, client = session_with(whisper_like)
    await started(session, (ANN, "Ann"))
    for _ in range(2):
        await feed(session, ANN, np.concatenate([espeak_16k("Miku, stop. Tell me about cats."), silence(0.8)]))
    await session.drain()
    kinds = [(m["type"], m.get("name"), m.get("text")) for m in client.messages if m["type"] in ("command", "turn")]
    assert kinds == [("command", "stop", "Miku, stop. Tell me about cats instead."),
                     ("turn", "Ann", "Tell me about cats instead"),
                     ("command", "leave", "Miku, leave. Bye everyone.")]
    assert client.of("turn")[0]["prompt"] == "Ann: Tell me about cats instead"


async def test_pocketsphinx_finds_every_command_in_synthetic_speech(sphinx, speech):
    expected = {"Miku, leave.": VoiceCommand.LEAVE, "Miku, stop.": VoiceCommand.STOP, "Miku, be quiet.": VoiceCommand.QUIET}
    for text, command in expected.items():
        for voice, wpm in (("en-us", 150), ("en-us+m3", 170), ("en", 130)):
            audio = espeak_16k(text, voice, wpm) if voice != "en-us" or wpm != 150 else speech[text]
            found = await sphinx.transcribe(np.concatenate([silence(0.2), audio, silence(0.3)]), STTOptions())
            assert found.command is command, (text, voice, found)
    plain = await sphinx.transcribe(speech["Hello, how are you today?"], STTOptions())
    assert plain.command is None and "how are you" in plain.text


# ---- sessions: turns, barge-in, commands, faults ----

async def test_two_interleaved_speakers_give_two_ordered_named_turns(sphinx, speech):
    session, client = session_with(sphinx.transcribe)
    await started(session, (ANN, "Ann"), (BOB, "Bob"))
    ann = np.concatenate([speech["Hello, how are you today?"], silence(1.0)])
    bob = np.concatenate([silence(0.6), speech["Can you sing a song for me?"], silence(1.0)])
    length = max(len(ann), len(bob))
    ann, bob = np.pad(ann, (0, length - len(ann))), np.pad(bob, (0, length - len(bob)))
    for a, b in zip(frames_20ms(to_pcm16(ann)), frames_20ms(to_pcm16(bob))):  # 20 ms of each, in turn
        await session.handle_raw(audio_frame(ANN, a))
        await session.handle_raw(audio_frame(BOB, b))
    await session.drain()
    turns = client.of("turn")
    assert [t["name"] for t in turns] == ["Ann", "Bob"]
    assert "how are you" in turns[0]["text"] and "song" in turns[1]["text"]  # never merged
    assert turns[0]["prompt"] == f"Ann: {turns[0]['text']}" and turns[1]["user_id"] == str(BOB)


async def test_miku_leave_said_in_the_channel_is_a_command_not_a_turn(sphinx, speech):
    session, client = session_with(sphinx.transcribe)
    await started(session, (ANN, "Ann"))
    await feed(session, ANN, np.concatenate([silence(0.3), speech["Miku, leave."], silence(0.8)]))
    await session.drain()
    assert [(m["name"], m["user_id"]) for m in client.of("command")] == [("leave", str(ANN))]
    assert client.of("turn") == []


async def test_barge_in_pauses_at_once_then_interrupts_after_the_minimum(sphinx, speech):
    session, client = session_with(sphinx.transcribe, ListenConfig(barge_in_min_ms=300))
    await started(session, (ANN, "Ann"))
    await session.handle_raw(json.dumps({"type": "speaking", "value": True}))
    audio = speech["Can you sing a song for me?"]
    kinds_at = []
    for index, frame in enumerate(frames_20ms(to_pcm16(audio))):
        await session.handle_raw(audio_frame(ANN, frame))
        kinds_at += [(m["type"], index) for m in client.messages[len(kinds_at):]]
    pause_at = next(i for kind, i in kinds_at if kind == "pause")
    barge_at = next(i for kind, i in kinds_at if kind == "barge_in")
    vad_at = next(i for kind, i in kinds_at if kind == "vad")
    assert pause_at == vad_at  # the same frame that started the speech holds playback
    # 300 ms of speech counted in audio, not wall time (the onset's 32 ms window began before its last frame)
    assert 300 - 32 <= (barge_at - pause_at) * 20 <= 300 + 64
    await feed(session, ANN, silence(0.8))
    await session.drain()
    assert len(client.of("barge_in")) == 1 and client.of("resume") == []
    assert "song" in client.of("turn")[0]["text"]


async def test_a_cough_pauses_and_resumes_without_interrupting(sphinx, speech):
    session, client = session_with(sphinx.transcribe)
    await started(session, (ANN, "Ann"))
    await session.handle_raw(json.dumps({"type": "speaking", "value": True}))
    burst = speech["Can you sing a song for me?"][int(0.05 * 16000):int(0.25 * 16000)]
    await feed(session, ANN, np.concatenate([burst, silence(1.0)]))
    await session.drain()
    assert [m["type"] for m in client.messages if m["type"] in ("pause", "resume", "barge_in")] == ["pause", "resume"]
    assert client.of("resume")[0]["reason"] == "short" and client.of("turn") == []


@pytest.mark.parametrize("policy, resumed", [(NoWordsPolicy.RESUME, True), (NoWordsPolicy.LET_GO, False)])
async def test_a_barge_in_without_words_resumes_or_lets_go(speech, policy, resumed):
    heard = []

    async def no_words(audio, options):  # a recogniser that found nothing in this speech
        heard.append(len(audio))
        return Transcript(text="  ", backend="none")

    session, client = session_with(no_words, ListenConfig(no_words=policy))
    await started(session, (ANN, "Ann"))
    await session.handle_raw(json.dumps({"type": "speaking", "value": True}))
    await feed(session, ANN, np.concatenate([speech["Hello, how are you today?"], silence(0.8)]))
    await session.drain()
    assert heard and len(client.of("barge_in")) == 1 and client.of("turn") == []
    assert client.of("resume") == ([{"type": "resume", "user_id": str(ANN), "reason": "no_words"}] if resumed else [])


async def test_a_dead_stt_stage_is_said_once_and_the_session_goes_on(sphinx, speech):
    failing = {"on": True}

    async def stt(audio, options):
        if failing["on"]:
            raise StageError("stt", "pocketsphinx", "the replica died")
        return await sphinx.transcribe(audio, options)

    session, client = session_with(stt)
    await started(session, (ANN, "Ann"))
    for _ in range(2):
        await feed(session, ANN, np.concatenate([speech["Hello, how are you today?"], silence(0.8)]))
    await session.drain()
    assert len(client.of("stt_unavailable")) == 1 and session.counts["stt_failures"] == 2
    failing["on"] = False
    await feed(session, ANN, np.concatenate([speech["Can you sing a song for me?"], silence(0.8)]))
    await session.drain()
    assert "song" in client.of("turn")[0]["text"]


async def test_bad_input_gets_errors_and_loses_nothing(sphinx, speech):
    session, client = session_with(sphinx.transcribe, ListenConfig(max_speakers=2))
    await session.handle_raw(audio_frame(ANN, np.zeros(320, np.int16)))  # before start
    await session.handle_raw("{not json")
    await started(session, (ANN, "Ann"))
    for bad in (b"\x00" * 3, b"\x00" * 9, b"\x00" * 70_000, json.dumps({"type": "speaker", "user_id": "x", "name": "A"}),
                json.dumps({"type": "speaking", "value": "yes"}), json.dumps({"type": "dance"}),
                json.dumps({"type": "speaker", "user_id": "5", "name": "\x00\u202e"})):
        await session.handle_raw(bad)
    await session.handle_raw(json.dumps({"type": "speaker", "user_id": "7", "name": "Cy"}))
    await session.handle_raw(json.dumps({"type": "speaker", "user_id": "8", "name": "Di"}))  # third: refused
    for _ in range(3):
        await session.handle_raw(audio_frame(999, np.zeros(320, np.int16)))  # never announced
    errors = [m["message"] for m in client.of("error")]
    assert len(errors) == 11 and "too many speakers" in errors[-2] and "999" in errors[-1]
    assert session.counts["unknown_speaker_frames"] == 3
    await feed(session, ANN, np.concatenate([speech["Can you sing a song for me?"], silence(0.8)]))
    await session.drain()
    assert [t["name"] for t in client.of("turn")] == ["Ann"]


async def test_turns_are_bounded_in_length_and_in_number(speech):
    release = asyncio.Event()

    async def slow_runaway(audio, options):  # a recogniser that is slow and then runs away
        await release.wait()
        return Transcript(text="la " * 5000, backend="runaway")

    session, client = session_with(slow_runaway, ListenConfig(max_pending_turns=2, max_turn_chars=100))
    await started(session, (ANN, "Ann"))
    for _ in range(3):
        await feed(session, ANN, np.concatenate([speech["Miku, stop."], silence(0.8)]))
    assert session.turns.pending() == 2 and session.counts["dropped_turns"] == 1
    release.set()
    await session.drain()
    turns = client.of("turn")
    assert len(turns) == 2 and all(len(t["text"]) <= 100 for t in turns) and turns[0]["prompt"] == "Ann: " + turns[0]["text"]
