"""One listening client (`WS /v1/listen`): per-speaker VAD, ordered turns, barge-in, voice commands.

Transport-agnostic like `graph.voice.conversation`: the host hands it each raw client message and a
`send` coroutine, and a `transcribe` coroutine that reaches the SpeechToText stage. So the rules are
tested without a server, and `miku transcribe` and the benchmark run exactly this code.

Barge-in has two steps so that a cough never costs Miku her answer and the reaction is still quick:
speech that starts while Miku talks sends `pause` at once (the client holds playback, its buffered frames
kept); speech that lasts `barge_in_min_ms` sends `barge_in` (the client interrupts through WS /v1/voice:
every stage cancelled, the jitter buffer dropped); speech that ends before that sends `resume`. A
barge-in whose words turn out empty sends `resume` with reason `no_words` under `no_words: resume`
(the client says the unheard rest again) and nothing under `let_go`.

Faults are counted and logged and the session goes on: bad frames, unknown speakers, and an STT stage
that fails (the client hears `stt_unavailable` once, until a transcription succeeds again).
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from graph.listen.commands import split_command
from graph.listen.config import ListenConfig, NoWordsPolicy
from graph.listen.protocol import (
    ListenProtocolError,
    MikuSpeaking,
    Speaker,
    SpeakerLeft,
    Start,
    parse_audio,
    parse_text,
)
from graph.listen.turns import Turn, TurnOrder, speaker_prompt
from graph.listen.types import STTOptions, Transcript
from graph.listen.vad import SileroModel, SpeechDetector, VadEvent, VadEventKind

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Transcribe = Callable[[np.ndarray, STTOptions], Awaitable[Transcript]]
STT_UNAVAILABLE = "Miku can't hear right now: speech-to-text is down. The text prompt channel still works."
MAX_UNKNOWN_REPORTED = 64  # unknown user ids we tell the client about (each once); more are only counted


class SessionState(str, Enum):
    WAITING = "waiting"    # no `start` yet: audio is refused
    LISTENING = "listening"
    CLOSED = "closed"


@dataclass
class SpeakerState:
    user_id: int
    name: str
    detector: SpeechDetector
    paused: bool = False      # this speaker's speech paused Miku's playback
    barged_in: bool = False   # ... and lasted long enough to interrupt her


class ListenSession:
    def __init__(self, config: ListenConfig, transcribe: Transcribe, send: Send,
                 model: SileroModel | None = None, stt_options: STTOptions | None = None,
                 run_vad: Callable[..., Awaitable[Any]] | None = None):
        self.config = config
        self._transcribe = transcribe
        self._raw_send = send
        self._send_lock = asyncio.Lock()
        self._model = model
        self.stt_options = stt_options or STTOptions(detect_commands=config.commands)
        # VAD runs off the event loop by default (asyncio.to_thread); tests and the CLI may run it inline
        self._run_vad = run_vad or asyncio.to_thread
        self.state = SessionState.WAITING
        self.place: Start | None = None
        self.speakers: dict[int, SpeakerState] = {}
        self.miku_speaking = False
        self.turns = TurnOrder()
        self._tasks: set[asyncio.Task] = set()
        self._stt_down_said = False
        self._unknown_reported: set[int] = set()
        self.counts: Counter[str] = Counter()

    # ---- input ----

    async def handle_raw(self, raw: str | bytes) -> None:
        if self.state is SessionState.CLOSED:
            return
        try:
            if isinstance(raw, (bytes, bytearray, memoryview)):
                await self._audio(bytes(raw))
            else:
                await self._control(parse_text(raw, self.config.max_json_bytes, self.config.max_name_chars))
        except ListenProtocolError as error:
            self.counts["bad_messages"] += 1
            await self.send({"type": "error", "message": error.message})

    async def _control(self, message) -> None:
        if isinstance(message, Start):
            self.place = message
            self.state = SessionState.LISTENING
            return
        if isinstance(message, Speaker):
            existing = self.speakers.get(message.user_id)
            if existing is not None:
                existing.name = message.name
                return
            if len(self.speakers) >= self.config.max_speakers:
                raise ListenProtocolError(f"too many speakers (limit {self.config.max_speakers}); send speaker_left first")
            self.speakers[message.user_id] = SpeakerState(message.user_id, message.name,
                                                          SpeechDetector(self.config, self._model))
            return
        if isinstance(message, SpeakerLeft):
            speaker = self.speakers.pop(message.user_id, None)
            if speaker is not None:
                await self._events(speaker, speaker.detector.flush())
            return
        if isinstance(message, MikuSpeaking):
            self.miku_speaking = message.value
            if not message.value:
                for speaker in self.speakers.values():
                    speaker.paused = False

    async def _audio(self, raw: bytes) -> None:
        frame = parse_audio(raw, self.config.max_binary_bytes)
        if self.state is not SessionState.LISTENING:
            raise ListenProtocolError("send {\"type\": \"start\", ...} before audio")
        speaker = self.speakers.get(frame.user_id)
        if speaker is None:
            self.counts["unknown_speaker_frames"] += 1
            if frame.user_id not in self._unknown_reported and len(self._unknown_reported) < MAX_UNKNOWN_REPORTED:
                self._unknown_reported.add(frame.user_id)
                raise ListenProtocolError(f"audio for user {frame.user_id}, who was not announced with a speaker message; dropped")
            return
        self.counts["frames"] += 1
        detector = speaker.detector
        # the model runs off the loop; a frame that completes no 32 ms window is only buffered, inline
        events = await self._run_vad(detector.feed, frame.pcm) if detector.needs_model(len(frame.pcm)) \
            else detector.feed(frame.pcm)
        await self._events(speaker, events)
        await self._check_barge_in(speaker)

    # ---- VAD events -> vad, pause/resume, barge_in, turns ----

    async def _events(self, speaker: SpeakerState, events: list[VadEvent]) -> None:
        for event in events:
            if event.kind is VadEventKind.STARTED:
                await self.send({"type": "vad", "user_id": str(speaker.user_id), "speaking": True})
                if self.miku_speaking and not speaker.paused:
                    speaker.paused = True
                    await self.send({"type": "pause", "user_id": str(speaker.user_id)})
                continue
            if event.kind is VadEventKind.ENDED and event.cut:
                self._open_turn(speaker, event.audio, speaker.barged_in)
                continue  # still speaking: the next part is a new turn
            await self.send({"type": "vad", "user_id": str(speaker.user_id), "speaking": False})
            barged_in = speaker.barged_in
            if speaker.paused and not barged_in:
                await self.send({"type": "resume", "user_id": str(speaker.user_id), "reason": "short"})
            speaker.paused = speaker.barged_in = False
            if event.kind is VadEventKind.ENDED:
                self._open_turn(speaker, event.audio, barged_in)
            else:
                self.counts["short_speech"] += 1

    async def _check_barge_in(self, speaker: SpeakerState) -> None:
        if not self.miku_speaking or speaker.barged_in:
            return
        if speaker.detector.speech_s * 1000 >= self.config.barge_in_min_ms:
            speaker.barged_in = True
            self.counts["barge_ins"] += 1
            await self.send({"type": "barge_in", "user_id": str(speaker.user_id)})

    # ---- turns ----

    def _open_turn(self, speaker: SpeakerState, audio: np.ndarray, barged_in: bool) -> None:
        if self.turns.pending() >= self.config.max_pending_turns:
            self.counts["dropped_turns"] += 1
            log.warning("listen: %d turns already wait for speech-to-text; dropped %s's", self.turns.pending(), speaker.name)
            return
        turn = self.turns.open(speaker.user_id, speaker.name, audio, barged_in)
        task = asyncio.create_task(self._transcribe_turn(turn), name=f"stt-turn-{turn.seq}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _transcribe_turn(self, turn: Turn) -> None:
        try:
            turn.transcript = await asyncio.wait_for(self._transcribe(turn.audio, self.stt_options),
                                                     self.config.stt_timeout_s)
            self._stt_down_said = False
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a dead STT stage must not end the session
            turn.failed = True
            self.counts["stt_failures"] += 1
            log.warning("listen: speech-to-text failed for %s's turn: %s", turn.name, error)
            if not self._stt_down_said:
                self._stt_down_said = True
                await self.send({"type": "stt_unavailable", "message": STT_UNAVAILABLE})
        for ready in self.turns.finish(turn):
            await self._deliver(ready)

    async def _deliver(self, turn: Turn) -> None:
        if turn.failed or turn.transcript is None:
            return
        # a hallucinating recogniser must not hand the LLM a novel: a turn is at most max_turn_chars
        text = " ".join(turn.transcript.text.split())[:self.config.max_turn_chars]
        command, request = turn.transcript.command, ""
        if command is None and self.config.commands:
            command, request = split_command(text)
        user_id = str(turn.user_id)
        if command is not None:
            self.counts["commands"] += 1
            await self.send({"type": "command", "user_id": user_id, "name": command.value, "text": text})
            if not request:
                return
            text = request  # "Miku, stop. Sing something else.": she stops, then hears the new request
        if text:
            self.counts["turns"] += 1
            await self.send({"type": "turn", "user_id": user_id, "name": turn.name, "text": text, "prompt": speaker_prompt(turn.name, text)})
            return
        self.counts["empty_turns"] += 1
        if turn.barged_in and self.config.no_words is NoWordsPolicy.RESUME:
            await self.send({"type": "resume", "user_id": user_id, "reason": "no_words"})

    # ---- output and end ----

    async def send(self, message: dict[str, Any]) -> None:
        if self.state is SessionState.CLOSED:
            return
        async with self._send_lock:
            await self._raw_send(message)

    async def drain(self) -> None:
        """End every speaker's speech and wait for all transcripts (the end of a file, a test)."""
        for speaker in list(self.speakers.values()):
            await self._events(speaker, speaker.detector.flush())
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        self.state = SessionState.CLOSED
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
