"""The utterance pipeline: tokens -> speakable chunks -> TTS audio -> VC audio -> 20 ms frames.

This is the voice graph's core, free of Ray. Three stages run concurrently, joined by small bounded
queues, so chunk n+1 is being synthesised while chunk n is converted and framed:

    text stage (LLM tokens or `say` text -> SpeechSegmenter) --text_q--> TTS stage --audio_q--> VC + framing

`StageCalls` says how the stages are reached: in-process backends (tests, the benchmark's baseline) or
Ray Serve handles (deployments/voice/ingress.py). Cancelling the consumer cancels every stage task, and each
stage closes its upstream iterator so the model server stops generating too.

When TTS or VC fails mid-utterance the LLM is *not* cancelled: the text stage keeps running (bounded by
`text_fallback_s`) so the `error` event carries the whole answer and the client can post it as text.
A stage whose replica is gone (`StageLost`) is announced at once with a `StageLostNotice`, before that
wait. An utterance that produced no speakable text at all ends with an `error` saying so, never `ok`.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np

from graph.voice.audio import AudioOutput
from graph.voice.segmenter import SegmenterConfig, SentenceAggregator, SpeechSegmenter
from graph.voice.trace import Milestone, PlayoutMeter, UtteranceTrace
from graph.voice.types import (
    FRAME_BYTES,
    FRAME_MS,
    AudioChunk,
    LLMRequest,
    StageError,
    StageLost,
    TTSOptions,
    VCOptions,
    VCResult,
)

LLMCall = Callable[[LLMRequest], AsyncIterator[str]]
TTSCall = Callable[[str, TTSOptions], AsyncIterator[AudioChunk]]
VCCall = Callable[[AudioChunk, VCOptions, object | None], Awaitable[VCResult]]


@dataclass
class StageCalls:
    """How the pipeline reaches its three model stages."""

    llm: LLMCall
    tts: TTSCall
    vc: VCCall
    llm_name: str = "llm"
    tts_name: str = "tts"
    vc_name: str = "vc"

    @classmethod
    def from_backends(cls, llm, tts, vc) -> StageCalls:
        """Call backends (graph.backends) directly, in this process."""
        return cls(
            llm=llm.stream,
            tts=tts.synthesize,
            vc=vc.convert,
            llm_name=backend_label(llm),
            tts_name=backend_label(tts),
            vc_name=backend_label(vc),
        )


def backend_label(backend) -> str:
    """How errors name a backend: its kind, and its URL where it has one."""
    described = backend.describe()
    url = described.get("url")
    return f"{described.get('backend', backend.name)} {url}" if url else str(described.get("backend"))


class UtteranceMode(str, Enum):
    PROMPT = "prompt"  # the LLM writes the words
    SAY = "say"  # speak the given text


class Aggregation(str, Enum):
    EARLY_FIRST_CHUNK = "early"  # our segmenter: first clause early, then sentences
    SENTENCES_ONLY = "sentences"  # what common voice-agent frameworks do (benchmark baseline)


@dataclass
class PipelineConfig:
    text_queue_size: int = 2
    audio_queue_size: int = 4
    max_frames_per_message: int = 25  # 500 ms of audio per binary message at most
    stage_timeout_s: float = 30.0  # no token / audio from a stage for this long -> StageError
    vc_group_s: float = 0.2  # TTS pieces already waiting are sent to VC together, up to this much audio
    # after a TTS/VC failure, wait this long at most for the rest of the answer (well under the bot's 60 s
    # utterance watchdog, which sees no event while the text is awaited)
    text_fallback_s: float = 30.0
    aggregation: Aggregation = Aggregation.EARLY_FIRST_CHUNK
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    mode: UtteranceMode
    llm_request: LLMRequest | None = None
    tts_options: TTSOptions = TTSOptions()
    vc_options: VCOptions = VCOptions()


class UtteranceStatus(str, Enum):
    OK = "ok"
    ERROR = "error"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class UtteranceStarted:
    utterance_id: str


@dataclass(frozen=True)
class ChunkSpoken:
    utterance_id: str
    index: int
    text: str


@dataclass(frozen=True)
class AudioFrames:
    """A whole number of 3840-byte Discord frames (s16le stereo 48 kHz)."""

    utterance_id: str
    pcm: bytes

    @property
    def frame_count(self) -> int:
        return len(self.pcm) // FRAME_BYTES


@dataclass(frozen=True)
class StageLostNotice:
    """Sent the moment a stage's replica is found gone, before the utterance's `error` (which may wait for
    the rest of the answer's text): the client can say at once that Miku is recovering."""

    utterance_id: str
    stage: str
    backend: str
    message: str


@dataclass(frozen=True)
class UtteranceFailed:
    utterance_id: str
    stage: str
    backend: str
    message: str
    text: str = ""  # the whole answer's text (what was spoken and what could not be), for a text fallback


NOTHING_TO_SAY = "nothing to say: the reply had no speakable text"
RECOVERING = "Miku is recovering"


@dataclass(frozen=True)
class UtteranceEnded:
    utterance_id: str
    status: UtteranceStatus
    timings_ms: dict[str, float]
    frames: int
    chunks: int
    underruns: int


PipelineEvent = UtteranceStarted | ChunkSpoken | AudioFrames | StageLostNotice | UtteranceFailed | UtteranceEnded


class StageObserver(Protocol):
    """Where per-stage figures go (Ray metrics in deployments; nothing in-process by default)."""

    def stage_latency(self, stage: str, ms: float) -> None: ...

    def real_time_factor(self, stage: str, rtf: float) -> None: ...

    def token_rate(self, tokens_per_s: float) -> None: ...


class _NoObserver:
    def stage_latency(self, stage: str, ms: float) -> None:
        pass

    def real_time_factor(self, stage: str, rtf: float) -> None:
        pass

    def token_rate(self, tokens_per_s: float) -> None:
        pass


@dataclass(frozen=True)
class _StageFailure:
    error: StageError


_END = object()


def describe_error(error: BaseException) -> str:
    """A one-line description of an unexpected failure for an `error` event."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1]}" if text else type(error).__name__


class UtterancePipeline:
    """Runs one utterance at a time through the stages; `run()` yields its events in order."""

    def __init__(
        self,
        calls: StageCalls,
        config: PipelineConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: StageObserver | None = None,
    ):
        self.calls = calls
        self.config = config or PipelineConfig()
        self.clock = clock
        self.observer = observer or _NoObserver()

    def _new_segmenter(self):
        if self.config.aggregation is Aggregation.SENTENCES_ONLY:
            return SentenceAggregator(self.config.segmenter)
        return SpeechSegmenter(self.config.segmenter)

    async def run(self, utterance: Utterance) -> AsyncIterator[PipelineEvent]:
        trace = UtteranceTrace(self.clock)
        meter = PlayoutMeter(self.clock)
        text_q: asyncio.Queue = asyncio.Queue(maxsize=self.config.text_queue_size)
        audio_q: asyncio.Queue = asyncio.Queue(maxsize=self.config.audio_queue_size)
        output = AudioOutput()
        frames = chunks = 0
        answer: list[str] = []  # every chunk of text the segmenter gave, spoken or not
        yield UtteranceStarted(utterance.id)
        text_task = asyncio.create_task(self._text_stage(utterance, trace, text_q, answer))
        tts_task = asyncio.create_task(self._tts_stage(utterance, trace, text_q, audio_q))
        tasks = [text_task, tts_task]
        status = UtteranceStatus.OK

        def framed(pcm: bytes) -> list[AudioFrames]:
            """`pcm` as frame messages, counted for the trace, the playout meter and the end event."""
            nonlocal frames
            messages = self._frame_messages(utterance.id, pcm)
            for message in messages:
                trace.mark(Milestone.FIRST_FRAME)
                meter.on_frames(message.frame_count * FRAME_MS / 1000.0)
                frames += message.frame_count
            return messages

        try:
            context: object | None = None
            segment_start = False
            lookahead: list = []
            while True:
                item = lookahead.pop() if lookahead else await audio_q.get()
                if item is _END:
                    if context is not None:
                        # a stateful VC (RVC) holds back a short tail for its crossfade: an empty chunk flushes it
                        flushed = await self._convert(AudioChunk(np.zeros(0, np.float32), output.sample_rate or 48_000), utterance, context)
                        for message in framed(output.push(flushed.audio)):
                            yield message
                    break
                if isinstance(item, _StageFailure):
                    raise item.error
                if isinstance(item, ChunkSpoken):
                    chunks += 1
                    segment_start = True  # a new TTS chunk: de-click where it joins the last one
                    yield item
                    continue
                item = self._coalesce(item, audio_q, lookahead)
                started = self.clock()
                result = await self._convert(item, utterance, context)
                self.observer.stage_latency("vc", (self.clock() - started) * 1000.0)
                context = result.context
                trace.mark(Milestone.FIRST_VC_AUDIO)
                pcm = output.push(result.audio, segment_start)
                segment_start = False
                for message in framed(pcm):
                    yield message
            for message in framed(output.finish()):
                yield message
            if not answer:
                raise StageError("graph", "", NOTHING_TO_SAY)
        except StageError as error:
            status = UtteranceStatus.ERROR
            if isinstance(error, StageLost):
                yield StageLostNotice(utterance.id, error.stage, error.backend, f"{RECOVERING}: {error.message}")
            if error.stage in ("tts", "vc"):
                await self._rest_of_the_answer(tts_task, text_task, text_q)
            yield UtteranceFailed(utterance.id, error.stage, error.backend, error.message, " ".join(answer))
        except asyncio.CancelledError:
            status = UtteranceStatus.INTERRUPTED
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        trace.mark(Milestone.END)
        yield UtteranceEnded(
            utterance.id, status, trace.as_dict_ms(), frames, chunks, meter.underruns
        )

    async def _rest_of_the_answer(self, tts_task: asyncio.Task, text_task: asyncio.Task, text_q: asyncio.Queue) -> None:
        """The voice failed: stop TTS, but let the text stage finish (bounded) so no words are lost."""
        tts_task.cancel()
        await asyncio.gather(tts_task, return_exceptions=True)
        try:
            async with asyncio.timeout(self.config.text_fallback_s):
                while True:
                    while not text_q.empty():
                        text_q.get_nowait()  # already in the answer; reading it lets the text stage go on
                    if text_task.done():
                        return
                    getter = asyncio.ensure_future(text_q.get())
                    await asyncio.wait({getter, text_task}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        await asyncio.gather(getter, return_exceptions=True)
        except TimeoutError:
            pass  # what arrived until now is posted; the finally block stops the LLM

    def _coalesce(self, first: AudioChunk, audio_q: asyncio.Queue, lookahead: list) -> AudioChunk:
        """Join TTS pieces that are already waiting (never wait for more) into one VC call.

        Small TTS pieces (Soprano streams ~64 ms) would each pay a VC call and its context overhead.
        """
        pieces = [first]
        seconds = first.duration_s
        while seconds < self.config.vc_group_s and not audio_q.empty():
            following = audio_q.get_nowait()
            if not isinstance(following, AudioChunk) or following.sample_rate != first.sample_rate:
                lookahead.append(following)  # a chunk marker, the end or a failure: handled next turn
                break
            pieces.append(following)
            seconds += following.duration_s
        if len(pieces) == 1:
            return first
        return AudioChunk(np.concatenate([p.samples for p in pieces]), first.sample_rate)

    async def _convert(self, chunk: AudioChunk, utterance: Utterance, context: object | None) -> VCResult:
        try:
            return await self._timed(self.calls.vc(chunk, utterance.vc_options, context), "vc", self.calls.vc_name)
        except StageError:
            raise
        except Exception as error:  # a crashed backend or replica, not a user error
            raise StageError("vc", self.calls.vc_name, describe_error(error)) from error

    def _frame_messages(self, utterance_id: str, pcm: bytes) -> list[AudioFrames]:
        step = self.config.max_frames_per_message * FRAME_BYTES
        return [AudioFrames(utterance_id, pcm[i : i + step]) for i in range(0, len(pcm), step)]

    async def _timed(self, awaitable, stage: str, backend: str):
        try:
            async with asyncio.timeout(self.config.stage_timeout_s):
                return await awaitable
        except TimeoutError:
            raise StageError(stage, backend, f"no answer within {self.config.stage_timeout_s:g} s") from None

    async def _next(self, iterator: AsyncIterator, stage: str, backend: str):
        """The iterator's next item with the stage timeout, or _END when it is exhausted."""
        try:
            return await self._timed(anext(iterator), stage, backend)
        except StopAsyncIteration:
            return _END

    async def _text_stage(self, utterance: Utterance, trace: UtteranceTrace, text_q: asyncio.Queue,
                          answer: list[str]) -> None:
        segmenter = self._new_segmenter()

        async def emit(chunks: list[str]) -> None:
            for chunk in chunks:
                trace.mark(Milestone.FIRST_CHUNK)
                answer.append(chunk)
                await text_q.put(chunk)

        try:
            if utterance.mode is UtteranceMode.SAY:
                await emit(segmenter.feed(utterance.text))
            else:
                request = utterance.llm_request or LLMRequest(prompt=utterance.text)
                started = self.clock()
                count = 0
                async with aclosing(self.calls.llm(request)) as tokens:
                    while (token := await self._next(tokens, "llm", self.calls.llm_name)) is not _END:
                        count += 1
                        if trace.mark(Milestone.FIRST_TOKEN):
                            self.observer.stage_latency("llm", (self.clock() - started) * 1000.0)
                        await emit(segmenter.feed(token))
                self._observe_token_rate(trace, count)
            await emit(segmenter.flush())
        except StageError as error:
            await text_q.put(_StageFailure(error))
            return
        except Exception as error:  # a backend bug must still end the utterance with an error event
            await text_q.put(_StageFailure(StageError("llm", self.calls.llm_name, describe_error(error))))
            return
        await text_q.put(_END)

    def _observe_token_rate(self, trace: UtteranceTrace, tokens: int) -> None:
        """Tokens per second after the first one: the LLM's generation speed, not its time to first token."""
        first = trace.marks.get(Milestone.FIRST_TOKEN)
        elapsed = self.clock() - first if first is not None else 0.0
        if tokens > 1 and elapsed > 0:
            self.observer.token_rate((tokens - 1) / elapsed)

    async def _tts_stage(
        self,
        utterance: Utterance,
        trace: UtteranceTrace,
        text_q: asyncio.Queue,
        audio_q: asyncio.Queue,
    ) -> None:
        index = 0
        while True:
            chunk = await text_q.get()
            if chunk is _END or isinstance(chunk, _StageFailure):
                await audio_q.put(chunk)
                return
            await audio_q.put(ChunkSpoken(utterance.id, index, chunk))
            index += 1
            started = self.clock()
            first = True
            audio_s = 0.0
            try:
                async with aclosing(self.calls.tts(chunk, utterance.tts_options)) as pieces:
                    while (piece := await self._next(pieces, "tts", self.calls.tts_name)) is not _END:
                        if first:
                            self.observer.stage_latency("tts", (self.clock() - started) * 1000.0)
                            first = False
                        trace.mark(Milestone.FIRST_TTS_AUDIO)
                        audio_s += piece.duration_s
                        await audio_q.put(piece)
            except StageError as error:
                await audio_q.put(_StageFailure(error))
                return
            except Exception as error:
                await audio_q.put(_StageFailure(StageError("tts", self.calls.tts_name, describe_error(error))))
                return
            if audio_s > 0:
                self.observer.real_time_factor("tts", (self.clock() - started) / audio_s)
