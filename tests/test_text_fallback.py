"""The text fallback end to end in one process: the real pipeline with a TTS that dies mid-answer, its
events put on the wire exactly as the graph sends them, and the bot's voice session posting the answer.
Nothing of the answer may be lost (docs/user-guide.md promises it)."""
from __future__ import annotations

from graph.backends.vc.passthrough import PassthroughVC
from graph.voice.pipeline import StageCalls, Utterance, UtteranceMode, UtterancePipeline
from graph.voice.protocol import to_wire
from tests.test_bot_session import TEXT_MODE_PREFIX, Harness
from tests.test_pipeline import FailingTTS, ScriptedLLM

ANSWER = ("Sure, here is the plan. First we warm up our voices. Then we sing the chorus twice. "
          "After that we take a short break. Finally we record the whole song in one take.")


async def test_the_bot_posts_the_whole_answer_when_tts_dies_mid_utterance():
    h = Harness()
    session = (await h.join()).session
    await session.submit("what is the plan?")
    uid = h.sent()[0][0]
    llm = ScriptedLLM(word + " " for word in ANSWER.split())
    pipeline = UtterancePipeline(StageCalls.from_backends(llm, FailingTTS(), PassthroughVC()))
    wire_events = []
    async for event in pipeline.run(Utterance(uid, "what is the plan?", UtteranceMode.PROMPT)):
        wire = to_wire(event)
        if isinstance(wire, bytes):
            h.callbacks["audio"](wire)
        else:
            wire_events.append(wire)
            await h.event(**wire)
    error = next(e for e in wire_events if e["type"] == "error")
    spoken = " ".join(e["text"] for e in wire_events if e["type"] == "chunk")
    assert error["stage"] == "tts" and "Finally" not in spoken  # the voice died before the end
    assert llm.finished
    assert h.notices == [TEXT_MODE_PREFIX + " ".join(ANSWER.split())]  # every word, once
    assert session.in_flight is None


async def test_an_older_graph_without_the_text_still_gets_what_was_spoken():
    h = Harness()
    session = (await h.join()).session
    await session.submit("tell me")
    uid = h.sent()[0][0]
    await h.event(type="utterance.start", id=uid)
    await h.event(type="chunk", id=uid, index=0, text="Hi there!")
    await h.event(type="stage.lost", id=uid, stage="tts", message="Miku is recovering: the replica died")
    await h.event(type="error", id=uid, stage="tts", message="the replica died")
    assert h.notices == [TEXT_MODE_PREFIX + "Hi there!"]


async def test_a_long_answer_is_posted_whole_in_discord_sized_messages():
    h = Harness()
    session = (await h.join()).session
    await session.submit("tell me everything")
    uid = h.sent()[0][0]
    answer = " ".join(f"word{i}" for i in range(700))  # ~5,500 characters
    await h.event(type="utterance.start", id=uid)
    await h.event(type="error", id=uid, stage="vc", message="the replica died", text=answer)
    assert len(h.notices) >= 3 and all(len(n) <= 2000 for n in h.notices)
    assert " ".join(h.notices).split() == (TEXT_MODE_PREFIX + answer).split()
