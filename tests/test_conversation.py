"""One client's conversation: order, interrupt, disconnect, and exactly one end per accepted prompt."""
import asyncio
import json

from graph.voice.conversation import VoiceConversation
from graph.voice.pipeline import (
    AudioFrames,
    UtteranceEnded,
    UtteranceStarted,
    UtteranceStatus,
)
from graph.voice.types import FRAME_BYTES


class ScriptedUtterances:
    """Runs each utterance as 3 frame groups; `gate` holds the second group until released."""

    def __init__(self):
        self.gate = asyncio.Event()
        self.gate.set()
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def __call__(self, request):
        self.started.append(request.id)
        try:
            yield UtteranceStarted(request.id)
            for i in range(3):
                if i == 1:
                    await self.gate.wait()
                yield AudioFrames(request.id, b"\x00" * FRAME_BYTES)
                await asyncio.sleep(0)
            yield UtteranceEnded(request.id, UtteranceStatus.OK, {"first_frame": 1.0}, 3, 1, 0)
        except asyncio.CancelledError:
            self.cancelled.append(request.id)
            raise


async def wait_for(predicate, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def ends(sent):
    return [(m["id"], m["status"]) for m in sent if isinstance(m, dict) and m.get("type") == "utterance.end"]


async def test_prompts_are_spoken_in_order_one_at_a_time():
    sent = []
    script = ScriptedUtterances()

    async def send(message):
        sent.append(message)

    conversation = VoiceConversation(script, send)
    runner = asyncio.create_task(conversation.run())
    for i in range(3):
        await conversation.handle_raw(json.dumps({"type": "say", "id": f"u{i}", "text": "hello"}))
    await wait_for(lambda: len(ends(sent)) == 3)
    assert ends(sent) == [("u0", "ok"), ("u1", "ok"), ("u2", "ok")]
    starts = [m["id"] for m in sent if isinstance(m, dict) and m["type"] == "utterance.start"]
    assert starts == ["u0", "u1", "u2"]
    # frames of one utterance all arrive between its start and its end
    order = [m["id"] if isinstance(m, dict) else "frame" for m in sent]
    assert order[:5] == ["u0", "frame", "frame", "frame", "u0"]
    await conversation.close()
    await asyncio.gather(runner, return_exceptions=True)


async def test_interrupt_stops_the_current_utterance_and_drops_the_queue():
    sent = []
    script = ScriptedUtterances()
    script.gate.clear()

    async def send(message):
        sent.append(message)

    conversation = VoiceConversation(script, send)
    runner = asyncio.create_task(conversation.run())
    await conversation.handle_raw(json.dumps({"type": "say", "id": "long", "text": "a"}))
    await conversation.handle_raw(json.dumps({"type": "say", "id": "queued", "text": "b"}))
    await wait_for(lambda: script.started == ["long"] and any(isinstance(m, bytes) for m in sent))
    await conversation.handle_raw(json.dumps({"type": "interrupt"}))
    await wait_for(lambda: len(ends(sent)) == 2)
    assert sorted(ends(sent)) == [("long", "interrupted"), ("queued", "interrupted")]
    assert script.cancelled == ["long"] and script.started == ["long"]
    # the connection still works afterwards
    script.gate.set()
    await conversation.handle_raw(json.dumps({"type": "say", "id": "after", "text": "c"}))
    await wait_for(lambda: ("after", "ok") in ends(sent))
    await conversation.close()
    await asyncio.gather(runner, return_exceptions=True)


async def test_bad_message_gets_an_error_and_the_connection_stays_usable():
    sent = []
    script = ScriptedUtterances()

    async def send(message):
        sent.append(message)

    conversation = VoiceConversation(script, send, max_pending=1)
    runner = asyncio.create_task(conversation.run())
    await conversation.handle_raw("{oops")
    assert sent[-1]["type"] == "error" and "not JSON" in sent[-1]["message"]
    await conversation.handle_raw(json.dumps({"type": "say", "id": "ok", "text": "fine"}))
    await wait_for(lambda: ("ok", "ok") in ends(sent))
    await conversation.close()
    await asyncio.gather(runner, return_exceptions=True)


async def test_close_cancels_in_flight_work_and_sends_nothing_more():
    sent = []
    script = ScriptedUtterances()
    script.gate.clear()

    async def send(message):
        sent.append(message)

    conversation = VoiceConversation(script, send)
    runner = asyncio.create_task(conversation.run())
    await conversation.handle_raw(json.dumps({"type": "say", "id": "x", "text": "a"}))
    await wait_for(lambda: script.started == ["x"])
    await conversation.close()
    count = len(sent)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert script.cancelled == ["x"]
    assert len(sent) == count and not ends(sent)


async def test_queue_is_bounded():
    sent = []
    script = ScriptedUtterances()
    script.gate.clear()

    async def send(message):
        sent.append(message)

    conversation = VoiceConversation(script, send, max_pending=2)
    runner = asyncio.create_task(conversation.run())
    await conversation.handle_raw(json.dumps({"type": "say", "id": "playing", "text": "a"}))
    await wait_for(lambda: script.started == ["playing"])
    for i in range(3):
        await conversation.handle_raw(json.dumps({"type": "say", "id": f"q{i}", "text": "a"}))
    errors = [m for m in sent if isinstance(m, dict) and m["type"] == "error"]
    assert [e["id"] for e in errors] == ["q2"] and "too many queued" in errors[0]["message"]
    await conversation.close()
    await asyncio.gather(runner, return_exceptions=True)
