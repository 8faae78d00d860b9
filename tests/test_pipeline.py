"""The utterance pipeline in one process: real espeak-ng and WORLD, injected faults, cancellation."""
import asyncio

import numpy as np
import pytest

from graph.backends.base import LLMBackend, TTSBackend, VCBackend
from graph.backends.llm.echo import EchoLLM
from graph.backends.simulated import SimulatedTTS
from graph.backends.tts.espeak import EspeakTTS
from graph.backends.vc.passthrough import PassthroughVC
from graph.backends.vc.world import WorldVC
from graph.voice.pipeline import (
    AudioFrames,
    ChunkSpoken,
    PipelineConfig,
    StageCalls,
    Utterance,
    UtteranceEnded,
    UtteranceFailed,
    UtteranceMode,
    UtterancePipeline,
    UtteranceStarted,
    UtteranceStatus,
)
from graph.voice.types import FRAME_BYTES, AudioChunk, LLMRequest, StageError, VCResult


async def collect(pipeline, utterance):
    return [event async for event in pipeline.run(utterance)]


def frames_of(events):
    return b"".join(e.pcm for e in events if isinstance(e, AudioFrames))


async def test_say_through_espeak_and_world_gives_whole_frames_and_a_trace():
    pipeline = UtterancePipeline(StageCalls.from_backends(EchoLLM(), EspeakTTS(), WorldVC()))
    events = await collect(pipeline, Utterance("u1", "Hello there, I am Miku. Nice to meet you!", UtteranceMode.SAY))
    assert isinstance(events[0], UtteranceStarted)
    end = events[-1]
    assert isinstance(end, UtteranceEnded) and end.status is UtteranceStatus.OK
    chunks = [e.text for e in events if isinstance(e, ChunkSpoken)]
    assert len(chunks) >= 2 and "Miku" in " ".join(chunks)
    pcm = frames_of(events)
    assert len(pcm) > 0 and len(pcm) % FRAME_BYTES == 0
    assert all(len(e.pcm) % FRAME_BYTES == 0 and e.pcm for e in events if isinstance(e, AudioFrames))
    assert end.frames == len(pcm) // FRAME_BYTES
    samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)
    assert np.array_equal(samples[:, 0], samples[:, 1]) and np.abs(samples).max() > 1000  # real speech, stereo
    for milestone in ("first_chunk", "first_tts_audio", "first_vc_audio", "first_frame", "end"):
        assert milestone in end.timings_ms
    assert end.timings_ms["first_chunk"] <= end.timings_ms["first_frame"] <= end.timings_ms["end"]


class FailingLLM(LLMBackend):
    name = "failing"

    def __init__(self, fail_after: int):
        self.fail_after = fail_after

    async def stream(self, request: LLMRequest):
        for i, word in enumerate("One two three, four five six. Seven eight nine.".split()):
            if i == self.fail_after:
                raise StageError("llm", "failing http://x", "connection reset by peer")
            yield word + " "


class FailingTTS(TTSBackend):
    """Speaks the first chunk, then dies like a crashed model server."""

    name = "dying"

    def __init__(self):
        self.inner = SimulatedTTS(first_audio_s=0, real_time_factor=0, sample_rate=24000)
        self.calls = 0

    async def synthesize(self, text, options):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("CUDA error: device lost")
        async for chunk in self.inner.synthesize(text, options):
            yield chunk


async def test_llm_failure_mid_stream_is_an_error_event_and_the_next_utterance_works():
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0)
    pipeline = UtterancePipeline(StageCalls.from_backends(FailingLLM(fail_after=7), tts, PassthroughVC()))
    events = await collect(pipeline, Utterance("bad", "hi", UtteranceMode.PROMPT))
    failure = next(e for e in events if isinstance(e, UtteranceFailed))
    assert failure.stage == "llm" and "connection reset" in failure.message and "failing http://x" in failure.backend
    assert events[-1].status is UtteranceStatus.ERROR
    assert frames_of(events)  # what was already said before the failure is kept
    good = UtterancePipeline(StageCalls.from_backends(EchoLLM(), tts, PassthroughVC()))
    assert (await collect(good, Utterance("next", "All good now.", UtteranceMode.PROMPT)))[-1].status is UtteranceStatus.OK


async def test_tts_crash_mid_utterance_drops_the_rest_cleanly():
    tts = FailingTTS()
    pipeline = UtterancePipeline(StageCalls.from_backends(EchoLLM(), tts, PassthroughVC()))
    text = "This first sentence is spoken fine. The second one hits a dead model. The third never starts."
    events = await collect(pipeline, Utterance("u", text, UtteranceMode.SAY))
    failure = next(e for e in events if isinstance(e, UtteranceFailed))
    assert failure.stage == "tts" and "device lost" in failure.message
    end = events[-1]
    assert end.status is UtteranceStatus.ERROR and end.frames > 0
    spoken = [e.text for e in events if isinstance(e, ChunkSpoken)]
    assert not any("third" in chunk for chunk in spoken)
    assert len(frames_of(events)) % FRAME_BYTES == 0


class BrokenVC(VCBackend):
    name = "broken"

    async def convert(self, chunk, options, context):
        raise ValueError("onnx session failed")


async def test_vc_exception_becomes_a_vc_error_event():
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0)
    events = await collect(
        UtterancePipeline(StageCalls.from_backends(EchoLLM(), tts, BrokenVC())),
        Utterance("u", "Hello there.", UtteranceMode.SAY),
    )
    failure = next(e for e in events if isinstance(e, UtteranceFailed))
    assert failure.stage == "vc" and "onnx session failed" in failure.message


class EndlessLLM(LLMBackend):
    name = "endless"

    def __init__(self):
        self.closed = asyncio.Event()
        self.tokens = 0

    async def stream(self, request):
        try:
            while True:
                self.tokens += 1
                yield f"word{self.tokens}, "
                await asyncio.sleep(0.01)
        finally:
            self.closed.set()


async def test_cancelling_the_consumer_closes_the_llm_stream():
    llm = EndlessLLM()
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0)
    pipeline = UtterancePipeline(StageCalls.from_backends(llm, tts, PassthroughVC()))

    async def consume():
        async for event in pipeline.run(Utterance("u", "go", UtteranceMode.PROMPT)):
            pass

    task = asyncio.create_task(consume())
    while llm.tokens < 20:
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.wait_for(llm.closed.wait(), 2)
    count = llm.tokens
    await asyncio.sleep(0.1)
    assert llm.tokens == count  # nothing generates after the interrupt


class SilentLLM(LLMBackend):
    name = "silent"

    async def stream(self, request):
        await asyncio.sleep(3600)
        yield "never"


async def test_a_stalled_stage_times_out_with_an_error_naming_it():
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0)
    pipeline = UtterancePipeline(
        StageCalls.from_backends(SilentLLM(), tts, PassthroughVC()), PipelineConfig(stage_timeout_s=0.2)
    )
    events = await collect(pipeline, Utterance("u", "hello", UtteranceMode.PROMPT))
    failure = next(e for e in events if isinstance(e, UtteranceFailed))
    assert failure.stage == "llm" and "no answer within" in failure.message


async def test_next_chunk_is_synthesised_while_the_previous_one_is_converted():
    log = []
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0, piece_s=10)
    release = asyncio.Event()

    class SlowVC(VCBackend):
        name = "slow"

        async def convert(self, chunk, options, context):
            log.append("vc-start")
            await release.wait()
            log.append("vc-end")
            return (await PassthroughVC().convert(chunk, options, context))

    async def tts_call(text, options):
        log.append(f"tts:{text}")
        if len([e for e in log if e.startswith("tts:")]) == 2:
            release.set()  # VC of chunk 1 may only finish once chunk 2's synthesis has begun
        async for piece in tts.synthesize(text, options):
            yield piece

    calls = StageCalls(llm=EchoLLM().stream, tts=tts_call, vc=SlowVC().convert)
    # a pipeline that waited for chunk 1's conversion before synthesising chunk 2 would deadlock here
    events = await asyncio.wait_for(
        collect(UtterancePipeline(calls), Utterance("u", "First sentence here. Second sentence here.", UtteranceMode.SAY)), 10
    )
    assert events[-1].status is UtteranceStatus.OK
    second_tts = [i for i, e in enumerate(log) if e.startswith("tts:")][1]
    assert second_tts < log.index("vc-end")


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 32000, 44100, 48000])
async def test_any_tts_rate_comes_out_as_48k_frames(rate):
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0, sample_rate=rate)
    events = await collect(
        UtterancePipeline(StageCalls.from_backends(EchoLLM(), tts, PassthroughVC())),
        Utterance("u", "A sentence of about two seconds of speech.", UtteranceMode.SAY),
    )
    pcm = frames_of(events)
    seconds = len(pcm) / FRAME_BYTES * 0.02
    expected = sum(max(0.2, len(e.text) / 14.0) for e in events if isinstance(e, ChunkSpoken))
    assert abs(seconds - expected) < 0.05  # resampled, framed, padded by less than one frame


class TailHoldingVC(VCBackend):
    """Like RVC: keeps the last 480 samples of each call back for a crossfade; an empty chunk flushes them."""

    name = "tail"

    def __init__(self):
        self.calls = []

    async def convert(self, chunk, options, context):
        self.calls.append(len(chunk.samples))
        held = context if context is not None else np.zeros(0, np.float32)
        joined = np.concatenate([held, chunk.samples])
        if len(chunk.samples) == 0:
            return VCResult(AudioChunk(joined, chunk.sample_rate), None)
        return VCResult(AudioChunk(joined[:-480], chunk.sample_rate), joined[-480:])


async def test_a_stateful_vc_is_flushed_at_the_end_so_nothing_is_lost():

    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0, sample_rate=48000)
    vc = TailHoldingVC()
    events = await collect(
        UtterancePipeline(StageCalls.from_backends(EchoLLM(), tts, vc)),
        Utterance("u", "One short sentence.", UtteranceMode.SAY),
    )
    assert vc.calls[-1] == 0  # the flush call
    spoken = sum(max(0.2, len(e.text) / 14.0) for e in events if isinstance(e, ChunkSpoken))
    pcm_seconds = len(frames_of(events)) / FRAME_BYTES * 0.02
    assert abs(pcm_seconds - spoken) < 0.021  # only end padding, the held tail was not dropped


async def test_tts_pieces_that_are_already_waiting_go_to_vc_together():
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0, sample_rate=32000, piece_s=0.064)
    calls = []

    class CountingVC(VCBackend):
        name = "counting"

        async def convert(self, chunk, options, context):
            calls.append(chunk.duration_s)
            await asyncio.sleep(0.01)  # while VC works, more TTS pieces queue up
            return VCResult(chunk, None)

    events = await collect(
        UtterancePipeline(StageCalls.from_backends(EchoLLM(), tts, CountingVC())),
        Utterance("u", "A sentence long enough to make many small pieces of audio.", UtteranceMode.SAY),
    )
    pieces = sum(int(np.ceil(max(0.2, len(e.text) / 14.0) / 0.064)) for e in events if isinstance(e, ChunkSpoken))
    assert len(calls) < pieces and max(calls) <= 0.2 + 0.064 + 1e-6
    assert events[-1].status is UtteranceStatus.OK


class StepTTS(TTSBackend):
    """Each chunk is a constant level, alternating sign: joined raw, the chunks would click."""

    name = "step"

    def __init__(self):
        self.sign = 1.0

    async def synthesize(self, text, options):
        self.sign = -self.sign
        yield AudioChunk(np.full(4800, 0.5 * self.sign, np.float32), 48000)


async def test_chunks_of_an_utterance_are_de_clicked_where_they_join():
    events = await collect(
        UtterancePipeline(StageCalls.from_backends(EchoLLM(), StepTTS(), PassthroughVC())),
        Utterance("u", "First sentence here. Second sentence here.", UtteranceMode.SAY),
    )
    assert sum(isinstance(e, ChunkSpoken) for e in events) == 2
    left = np.frombuffer(frames_of(events), dtype="<i2").reshape(-1, 2)[:, 0].astype(np.int32)
    # a raw -0.5 -> +0.5 join would jump by ~32767 in one sample; the fade keeps every step small
    assert np.abs(np.diff(left)).max() < 2000


class ScriptedLLM(LLMBackend):
    """Streams the given tokens; records whether it was allowed to finish."""

    name = "scripted"

    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.finished = False

    async def stream(self, request):
        for token in self.tokens:
            await asyncio.sleep(0)
            yield token
        self.finished = True


@pytest.mark.parametrize("reply", ["🎉🎉 ✨", "<think>I should greet them warmly.</think>", "<think>hm</think> 🙂"])
async def test_a_reply_with_nothing_speakable_is_an_error_saying_so(reply):
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0)
    pipeline = UtterancePipeline(StageCalls.from_backends(ScriptedLLM([reply[:5], reply[5:]]), tts, PassthroughVC()))
    events = await collect(pipeline, Utterance("u", "hi", UtteranceMode.PROMPT))
    failure = next(e for e in events if isinstance(e, UtteranceFailed))
    assert "nothing to say" in failure.message and "no speakable text" in failure.message
    assert events[-1].status is UtteranceStatus.ERROR and events[-1].frames == 0


async def test_say_with_only_emoji_is_an_error_not_ok():
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0)
    events = await collect(UtterancePipeline(StageCalls.from_backends(EchoLLM(), tts, PassthroughVC())),
                           Utterance("u", "🎶🎶", UtteranceMode.SAY))
    assert any(isinstance(e, UtteranceFailed) and "nothing to say" in e.message for e in events)
    assert events[-1].status is UtteranceStatus.ERROR


ANSWER = ("The first sentence is spoken fine. The second one hits a dead model. "
          "The third one is never spoken. And the fourth is the end of it.")


async def test_a_tts_failure_lets_the_llm_finish_and_the_error_carries_the_whole_answer():
    llm = ScriptedLLM(word + " " for word in ANSWER.split())
    pipeline = UtterancePipeline(StageCalls.from_backends(llm, FailingTTS(), PassthroughVC()))
    events = await collect(pipeline, Utterance("u", "tell me", UtteranceMode.PROMPT))
    failure = next(e for e in events if isinstance(e, UtteranceFailed))
    assert failure.stage == "tts" and "device lost" in failure.message
    assert llm.finished  # the LLM was not cancelled
    assert failure.text.split() == ANSWER.split()  # every word, spoken or not
    spoken = " ".join(e.text for e in events if isinstance(e, ChunkSpoken))
    assert "fourth" not in spoken and events[-1].status is UtteranceStatus.ERROR


async def test_a_vc_failure_also_keeps_the_whole_answer():
    llm = ScriptedLLM(word + " " for word in ANSWER.split())
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0)
    events = await collect(UtterancePipeline(StageCalls.from_backends(llm, tts, BrokenVC())),
                           Utterance("u", "tell me", UtteranceMode.PROMPT))
    failure = next(e for e in events if isinstance(e, UtteranceFailed))
    assert failure.stage == "vc" and llm.finished and failure.text.split() == ANSWER.split()


async def test_the_wait_for_the_rest_of_the_answer_is_bounded():
    llm = EndlessLLM()
    pipeline = UtterancePipeline(StageCalls.from_backends(llm, FailingTTS(), PassthroughVC()),
                                 PipelineConfig(text_fallback_s=0.3))
    events = await collect(pipeline, Utterance("u", "go", UtteranceMode.PROMPT))
    failure = next(e for e in events if isinstance(e, UtteranceFailed))
    assert failure.stage == "tts" and "word1" in failure.text
    await asyncio.wait_for(llm.closed.wait(), 5)  # the endless LLM is stopped after the bound


async def test_a_lost_stage_is_announced_before_the_answer_is_waited_for():
    from graph.voice.pipeline import RECOVERING, StageLostNotice
    from graph.voice.types import StageLost

    gate = asyncio.Event()

    class GatedLLM(LLMBackend):
        name = "gated"

        async def stream(self, request):
            yield "First part is spoken. "
            yield "Second part is spoken. "
            yield "Third part"  # settles the second sentence, so it reaches the TTS before the gate
            await gate.wait()  # the rest comes only after the client has heard about the lost stage
            yield "And the rest arrives later."

    class LostTTS(TTSBackend):
        name = "lost"
        calls = 0

        async def synthesize(self, text, options):
            LostTTS.calls += 1
            if LostTTS.calls > 1:
                raise StageLost("tts", "lost", "the link to the stage's replica broke; Serve is restarting it")
            yield AudioChunk(np.zeros(2400, np.float32), 24000)

    pipeline = UtterancePipeline(StageCalls.from_backends(GatedLLM(), LostTTS(), PassthroughVC()))
    events = []
    async for event in pipeline.run(Utterance("u", "go", UtteranceMode.PROMPT)):
        events.append(event)
        if isinstance(event, StageLostNotice):
            gate.set()
    notice = next(e for e in events if isinstance(e, StageLostNotice))
    failure = next(e for e in events if isinstance(e, UtteranceFailed))
    assert events.index(notice) < events.index(failure)
    assert notice.stage == "tts" and notice.message.startswith(RECOVERING) and "restarting" in notice.message
    assert "rest arrives later" in failure.text


async def test_token_rate_is_observed_for_a_streamed_answer():
    rates = []

    class Observer:
        def stage_latency(self, stage, ms): pass
        def real_time_factor(self, stage, rtf): pass
        def token_rate(self, tokens_per_s): rates.append(tokens_per_s)

    ticks = iter(range(10_000))
    tts = SimulatedTTS(first_audio_s=0, real_time_factor=0)
    pipeline = UtterancePipeline(StageCalls.from_backends(ScriptedLLM(["Hello ", "there ", "friend."]), tts, PassthroughVC()),
                                 clock=lambda: float(next(ticks)), observer=Observer())
    events = await collect(pipeline, Utterance("u", "hi", UtteranceMode.PROMPT))
    assert events[-1].status is UtteranceStatus.OK
    assert len(rates) == 1 and rates[0] > 0


async def test_without_a_text_fallback_the_error_comes_at_once():
    """/ws/stream's client holds the text itself: text_fallback_s=0 does not wait for the rest of it. The
    LLM here never finishes and no stage timeout would fire for an hour, so only not waiting ends it."""
    closed = asyncio.Event()

    class StuckLLM(LLMBackend):
        name = "stuck"

        async def stream(self, request):
            try:
                yield "This first sentence is spoken fine. The second one hits a dead model. And then "
                await asyncio.Event().wait()
            finally:
                closed.set()

    pipeline = UtterancePipeline(StageCalls.from_backends(StuckLLM(), FailingTTS(), PassthroughVC()),
                                 PipelineConfig(text_fallback_s=0, stage_timeout_s=3600))
    async with asyncio.timeout(60):  # a hang guard only
        events = await collect(pipeline, Utterance("u", "go", UtteranceMode.PROMPT))
    assert next(e for e in events if isinstance(e, UtteranceFailed)).stage == "tts"
    assert closed.is_set()  # and the LLM was stopped
