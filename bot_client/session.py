"""Voice session lifecycle: join, speak prompts in order, keep the lease alive, and always end cleanly.

A `SessionManager` starts at most one `VoiceSession` per guild. Starting asks the graph for a session
(`POST /v1/sessions`), connects to voice, opens `WS /v1/voice` and starts discord.py's player on a
`JitterAudioSource`; any step that fails undoes the ones before it. While active, heartbeats keep the
graph's lease alive; leave, a kick, a lost voice link, an unreachable graph or the bot shutting down all go
through `VoiceSession.end`, which is idempotent. Discord itself is reached only through the small
`VoiceLink` protocol (which `discord.VoiceClient` satisfies) and plain callables, so tests use plain objects.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from .config import BotConfig, PromptMode
from .graph_api import (
    GraphAuthError,
    GraphClient,
    GraphConflict,
    GraphError,
    GraphUnavailable,
    SessionGone,
    SessionInfo,
    VoiceStream,
)
from .feature_words import session_changes
from .inputs import split_for_discord
from .jitter import FRAME_BYTES, JitterBuffer
from .music import MusicPlayer
from .playback import JitterAudioSource

log = logging.getLogger(__name__)

# User-facing texts (the plans fix the first five word for word).
TTS_UNAVAILABLE = "❌ TTS pipeline not available."
CHANNEL_FULL = "❌ Voice channel is full!"
NOT_IN_VOICE = "❌ You must be in a voice channel!"
CONFUSED = "*Miku seems confused...*"
TEXT_MODE_PREFIX = "⚠️ (Voice failed, text mode): "
ALREADY_IN_SESSION_TEMPLATE = "❌ Already in a voice session! Use `{command} leave` first."
ALREADY_IN_SESSION = ALREADY_IN_SESSION_TEMPLATE.format(command="!miku")  # with the default group_name
NOT_IN_SESSION = "❌ I'm not in a voice session here."
GRAPH_UNREACHABLE_AT_START = "❌ I can't reach my voice graph right now, so I can't join voice. Try again in a minute."
GRAPH_AUTH_FAILED = "❌ My voice graph refused my token. Ask the bot owner to check `MIKU_GRAPH_TOKEN`."
PROMPT_QUEUE_FULL = "❌ Too many prompts are waiting; give me a moment to catch up."


def missing_permissions_message(voice_channel_id: int, missing: tuple[str, ...]) -> str:
    """The refusal when Discord would silently ignore the join: which permission to grant, and where."""
    names = " and ".join(f"**{name}**" for name in missing)
    noun = "permission" if len(missing) == 1 else "permissions"
    return (f"❌ I can't join <#{voice_channel_id}>: I don't have the {names} {noun} there. "
            f"Ask a server admin to give my role {names} in that channel.")


END_NOTICES = {
    "leave": "👋 Left voice. Everything I paused is back on.",
    "kicked": "👋 I was removed from the voice channel, so the session is over. Everything I paused is back on.",
    "shutdown": "👋 I'm shutting down, so I left voice.",
    "voice_lost": "⚠️ I lost the voice connection and couldn't get it back, so I ended the session. Everything I paused is back on.",
    "graph_unreachable": "⚠️ I lost contact with my voice graph, so I left voice. Paused features come back on their own within the session lease.",
    "lease_expired": "⚠️ My voice session expired on the graph's side, so I left voice. Everything I paused is back on.",
    "prompt_channel_deleted": "",  # nowhere to say it
}


class SessionState(enum.Enum):
    STARTING = "starting"
    ACTIVE = "active"
    ENDING = "ending"
    ENDED = "ended"


class EndReason(enum.Enum):
    LEAVE = "leave"
    KICKED = "kicked"
    SHUTDOWN = "shutdown"
    VOICE_LOST = "voice_lost"
    GRAPH_UNREACHABLE = "graph_unreachable"
    LEASE_EXPIRED = "lease_expired"
    PROMPT_CHANNEL_DELETED = "prompt_channel_deleted"


class VoiceLink(Protocol):
    """What a session needs from a voice connection; `discord.VoiceClient` has exactly this."""

    def is_connected(self) -> bool: ...

    def play(self, source: Any, *, after: Callable[[BaseException | None], Any] | None = None) -> None: ...

    def stop(self) -> None: ...

    def pause(self) -> None: ...  # idle after the silence tail (called from the player thread)

    def resume(self) -> None: ...  # the next utterance is ready

    async def disconnect(self, *, force: bool = False) -> None: ...


Notify = Callable[[str], Awaitable[Any]]


class PresenceKeeper:
    """Shows "🎤 In Voice Chat" while any session is active and puts the previous presence back after.

    The gateway forgets a status set with `change_presence` when it reconnects, so the bot calls
    `reapply()` on every `on_ready` and `on_resumed`.
    """

    def __init__(self, apply: Callable[[str | None], Awaitable[None]], voice_text: str = "🎤 In Voice Chat",
                 base_text: str | None = None) -> None:
        self._apply = apply
        self.voice_text = voice_text
        self.base_text = base_text
        self._holders: set[int] = set()

    @property
    def current(self) -> str | None:
        return self.voice_text if self._holders else self.base_text

    async def enter(self, guild_id: int) -> None:
        first = not self._holders
        self._holders.add(guild_id)
        if first:
            await self._safe_apply(self.voice_text)

    async def leave(self, guild_id: int) -> None:
        if guild_id not in self._holders:
            return
        self._holders.discard(guild_id)
        if not self._holders:
            await self._safe_apply(self.base_text)

    async def reapply(self) -> bool:
        """After a gateway reconnect: Discord no longer shows what was set, so set the wanted status again.

        True when something was sent; with no session and no base text there is nothing to restore (a
        fresh gateway session starts with no status).
        """
        if not self._holders and self.base_text is None:
            return False
        await self._safe_apply(self.current)
        return True

    async def _safe_apply(self, text: str | None) -> None:
        try:
            await self._apply(text)
        except Exception:  # presence is cosmetic: never let it break a join or a leave
            log.warning("could not change presence to %r", text, exc_info=True)


def _whole_answer(event: dict, utterance: "Utterance") -> str:
    """The text to post when her voice failed: the graph's whole answer (`text`, spoken or not), else
    what was spoken before the failure (an older graph sends no `text`)."""
    text = event.get("text")
    if isinstance(text, str) and text.strip():
        return text.strip()
    return " ".join(utterance.spoken)


@dataclass
class Utterance:
    """One prompt's trip through the graph, as the client saw it."""

    utterance_id: str
    kind: str  # "prompt" or "say"
    text: str
    queued_at: float
    sent_at: float | None = None
    first_audio_at: float | None = None
    ended_at: float | None = None
    last_activity: float = 0.0
    spoken: list[str] = field(default_factory=list)
    chunk_frames: list[int] = field(default_factory=list)  # frames received before each spoken chunk began
    frames_received: int = 0
    timings: dict = field(default_factory=dict)
    error: str | None = None
    cancelled: bool = False

    @property
    def time_to_first_audio_ms(self) -> float | None:
        if self.sent_at is None or self.first_audio_at is None:
            return None
        return (self.first_audio_at - self.sent_at) * 1000.0


@dataclass(frozen=True)
class SubmitResult:
    accepted: bool
    position: int = 0  # 0: sent now; n: n-th in line
    message: str | None = None  # refusal text
    interrupted: bool = False


@dataclass(frozen=True)
class SessionStatus:
    """Everything `!miku voice-status` shows, as plain values."""

    session_id: str
    state: SessionState
    voice_channel_id: int
    prompt_channel_id: int
    age_s: float
    speaking: bool
    queue_length: int
    voice_ok: bool
    recent_ttfa_ms: tuple[float, ...]
    playback: dict
    blackouts: tuple[str, ...]
    hearing: dict | None = None  # Hearing.status() when she listens in this server


class VoiceSession:
    """One active voice session. Created by `SessionManager.join`; ended by `end()` (idempotent)."""

    def __init__(
        self,
        *,
        info: SessionInfo,
        guild_id: int,
        voice_channel_id: int,
        prompt_channel_id: int,
        graph: GraphClient,
        link: VoiceLink,
        notify: Notify,
        config: BotConfig,
        clock: Callable[[], float] = time.monotonic,
        on_ended: Callable[["VoiceSession", EndReason], Awaitable[None]] | None = None,
        id_factory: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
    ) -> None:
        self.info = info
        self.guild_id = guild_id
        self.voice_channel_id = voice_channel_id
        self.prompt_channel_id = prompt_channel_id
        self.graph = graph
        self.link = link
        self.notify_raw = notify
        self.config = config
        self.clock = clock
        self._on_ended = on_ended
        self._new_id = id_factory
        self.state = SessionState.STARTING
        self.started_at = clock()
        self.end_reason: EndReason | None = None
        self.voice_ok = True  # False while the voice link is down: replies go to text
        self.buffer = JitterBuffer(
            prebuffer_ms=config.playback.prebuffer_ms,
            max_buffer_s=config.playback.max_buffer_s,
        )
        # Music obeys the session: it is the session's, and `end` stops it. Its notices come from threads.
        self.music = MusicPlayer(config.music, notify=self._notify_from_thread) if config.music.enabled else None
        self.source = JitterAudioSource(self.buffer, music=self.music)
        self.hearing: Any | None = None  # bot_client.hearing.Hearing when Miku listens in this server
        self.stream: VoiceStream | None = None
        self.pending: deque[Utterance] = deque()
        self.in_flight: Utterance | None = None
        self._receiving: Utterance | None = None
        self._audible: Utterance | None = None  # the utterance whose audio was written last (barge-in)
        self.history: deque[Utterance] = deque(maxlen=20)
        self._by_id: dict[str, Utterance] = {}
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heartbeat_ok_at = clock()
        self._player_restarts = 0
        self._reported_underruns = 0
        self._reported_frames = 0
        self._ended = asyncio.Event()

    # --- start ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the voice WebSocket, start playback and heartbeats. Raises what the WebSocket raised."""
        self._loop = asyncio.get_running_loop()
        self.stream = await self.graph.open_voice(self._on_audio, self._on_event, self._on_stream_closed)
        self._start_player()
        self.state = SessionState.ACTIVE
        self._spawn(self._heartbeat_loop(), "heartbeat")

    def _start_player(self) -> None:
        self.source.attach(self.link)  # idle: pause this player after the silence tail, resume with audio
        self.link.play(self.source, after=self._player_after_threadsafe)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        task.set_name(f"miku-session-{self.info.session_id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def active(self) -> bool:
        return self.state is SessionState.ACTIVE

    # --- prompts --------------------------------------------------------------------------------

    async def submit(self, text: str, *, kind: str = "prompt") -> SubmitResult:
        """Speak a prompt's answer (`kind="prompt"`) or the text itself (`kind="say"`).

        While she is speaking the prompt waits its turn (queue mode) or cuts her off (interrupt mode).
        """
        if not self.active:
            return SubmitResult(False, message=NOT_IN_SESSION)
        utterance = Utterance(self._new_id(), kind, text, queued_at=self.clock())
        busy = self.in_flight is not None or self.pending or not self.buffer.is_idle()
        interrupted = False
        if busy and self.config.session.prompt_mode is PromptMode.INTERRUPT:
            await self.stop_speaking()
            interrupted = True
        elif len(self.pending) >= self.config.session.max_pending_prompts:
            return SubmitResult(False, message=PROMPT_QUEUE_FULL)
        self.pending.append(utterance)
        position = len(self.pending) - (0 if self.in_flight is not None else 1)
        await self._pump()
        return SubmitResult(True, position=max(0, position), interrupted=interrupted)

    async def stop_speaking(self) -> int:
        """Cut off what she is saying and drop waiting prompts; returns how many prompts were dropped."""
        dropped = len(self.pending)
        self.pending.clear()
        current = self.in_flight
        if current is not None:
            current.cancelled = True
            self.in_flight = None
            if self.stream is not None:
                try:
                    await self.stream.interrupt()
                except GraphError:
                    log.warning("could not send interrupt to the graph", exc_info=True)
        self.buffer.clear()
        return dropped

    def unheard_text(self) -> str:
        """What members have not heard yet of the answer playing: its chunks from the first one not
        played to the end (chunks the graph had not sent yet are not known)."""
        utterance = self._audible
        if utterance is None or not utterance.spoken or self.buffer.is_idle():
            return ""
        played = max(0, utterance.frames_received - self.buffer.stats().fill_frames)
        ends = utterance.chunk_frames[1:] + [utterance.frames_received]
        for index, end in enumerate(ends):
            if end > played:
                return " ".join(utterance.spoken[index:])
        return ""

    async def barge_in(self) -> str:
        """Someone talked over her: cut her off like `stop_speaking`; returns what was not heard."""
        unheard = self.unheard_text()
        await self.stop_speaking()
        return unheard

    async def _pump(self) -> None:
        async with self._send_lock:
            while self.in_flight is None and self.pending and self.active and self.stream is not None:
                utterance = self.pending.popleft()
                utterance.sent_at = utterance.last_activity = self.clock()
                self.in_flight = utterance
                self._by_id[utterance.utterance_id] = utterance
                while len(self._by_id) > 200:  # ids whose `utterance.end` never came (refused by the graph)
                    self._by_id.pop(next(iter(self._by_id)))
                self.history.append(utterance)
                try:
                    await self.stream.prompt(utterance.utterance_id, utterance.text, self.info.session_id,
                                             kind=utterance.kind)
                except GraphError as exc:
                    utterance.error = exc.message
                    self.in_flight = None
                    await self.notify(TEXT_MODE_PREFIX + "my voice graph is unreachable, I couldn't answer that.")
                    continue
                self._spawn(self._watchdog(utterance), f"watchdog-{utterance.utterance_id}")

    async def _watchdog(self, utterance: Utterance) -> None:
        """An utterance that shows no sign of life for `utterance_timeout_s` is given up."""
        timeout = self.config.session.utterance_timeout_s
        while self.in_flight is utterance and self.active:
            idle = self.clock() - utterance.last_activity
            if idle >= timeout:
                log.warning("utterance %s timed out after %.1fs of silence", utterance.utterance_id, idle)
                utterance.error = "timeout"
                await self._finish(utterance, failed=True)
                if self.stream is not None:
                    try:
                        await self.stream.interrupt()
                    except GraphError:
                        pass
                await self.notify(CONFUSED)
                return
            await asyncio.sleep(min(1.0, max(0.05, timeout - idle)))

    async def _finish(self, utterance: Utterance, *, failed: bool = False) -> None:
        utterance.ended_at = self.clock()
        self.buffer.end(utterance.utterance_id)
        if self._receiving is utterance:
            self._receiving = None
        if self.in_flight is utterance:
            self.in_flight = None
        if not failed and not self.voice_ok and utterance.spoken:
            await self.notify(TEXT_MODE_PREFIX + " ".join(utterance.spoken))
        await self._pump()

    # --- graph stream callbacks -----------------------------------------------------------------

    def _on_audio(self, data: bytes) -> None:
        """Runs on the WebSocket reader: only copies bytes into the jitter buffer."""
        target = self._receiving or self.in_flight
        if target is None or target.cancelled:
            return
        if target.first_audio_at is None:
            target.first_audio_at = self.clock()
        target.last_activity = self.clock()
        target.frames_received += len(data) // FRAME_BYTES
        self._audible = target
        self.buffer.write(data)

    async def _on_event(self, event: dict) -> None:
        kind = event.get("type")
        utterance = self._by_id.get(str(event.get("id"))) if event.get("id") is not None else None
        if utterance is None:
            if kind == "error":
                log.warning("graph error outside an utterance: %s", event)
            return
        utterance.last_activity = self.clock()
        if kind == "utterance.end":
            self._by_id.pop(utterance.utterance_id, None)
        if utterance.cancelled or utterance.ended_at is not None:
            return  # interrupted, or already finished by its `error` event (the graph then sends `utterance.end`)
        if kind == "utterance.start":
            self._receiving = utterance
            self.buffer.begin(utterance.utterance_id)
        elif kind == "chunk":
            text = event.get("text")
            if isinstance(text, str) and text.strip():
                utterance.spoken.append(text.strip())
                utterance.chunk_frames.append(utterance.frames_received)
        elif kind == "utterance.end":
            timings = event.get("timings")
            if isinstance(timings, dict):
                utterance.timings = timings
            await self._finish(utterance, failed=event.get("status", "ok") != "ok")
        elif kind == "error":
            await self._on_utterance_error(utterance, event)
        elif kind == "stage.lost":  # a stage's replica died; the `error` (with the whole answer) follows
            log.warning("graph stage lost during %s: %s", utterance.utterance_id, event.get("message"))

    async def _on_utterance_error(self, utterance: Utterance, event: dict) -> None:
        stage = str(event.get("stage", "")).lower()
        message = str(event.get("message") or event.get("error") or "unknown error")
        utterance.error = f"{stage or 'graph'}: {message}"
        log.warning("graph error for %s: %s", utterance.utterance_id, utterance.error)
        await self._finish(utterance, failed=True)
        if stage == "llm" or "timeout" in message.lower() or "timed out" in message.lower():
            await self.notify(CONFUSED)
        elif stage in ("tts", "vc") and (answer := _whole_answer(event, utterance)):
            for part in split_for_discord(TEXT_MODE_PREFIX + answer):  # a long answer: several messages
                await self.notify(part)
        elif stage in ("tts", "vc"):
            await self.notify(f"⚠️ My voice failed ({stage}), so I couldn't say that. Try again?")
        else:
            await self.notify(f"⚠️ I couldn't say that: {message}")

    async def _on_stream_closed(self, error: BaseException | None) -> None:
        if not self.active:
            return
        log.warning("voice WebSocket closed mid-session (%s); reconnecting", error)
        stuck = self.in_flight
        if stuck is not None:
            await self._finish(stuck, failed=True)
            await self.notify(TEXT_MODE_PREFIX + "my voice graph dropped the connection mid-answer; please ask again.")
        self.stream = None
        for attempt in range(3):
            if not self.active:
                return
            try:
                self.stream = await self.graph.open_voice(self._on_audio, self._on_event, self._on_stream_closed)
                await self._pump()
                return
            except GraphError:
                await asyncio.sleep(0.5 * (attempt + 1))
        await self.end(EndReason.GRAPH_UNREACHABLE)

    # --- voice link -----------------------------------------------------------------------------

    def _player_after_threadsafe(self, error: BaseException | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(lambda: self._spawn(self.on_player_stopped(error), "player-stopped"))

    async def on_player_stopped(self, error: BaseException | None) -> None:
        """discord.py's player stopped while the session is active: the voice link dropped or failed."""
        if not self.active:
            return
        if error is not None:
            log.warning("audio player stopped with an error: %r", error)
        await self.voice_link_lost()

    async def voice_link_lost(self) -> None:
        """Wait a grace period for discord.py to reconnect; resume playback, or end the session."""
        if not self.active or not self.voice_ok:
            return
        self.voice_ok = False
        step = 0.05
        for _ in range(max(1, int(self.config.session.voice_reconnect_grace_s / step))):
            if not self.active or self.link.is_connected():
                break
            await asyncio.sleep(step)
        if not self.active:
            return
        if self.link.is_connected() and self._player_restarts < 5:
            self._player_restarts += 1
            try:
                self._start_player()
                self.voice_ok = True
                log.info("voice link back; playback resumed")
                return
            except Exception:
                log.warning("could not restart playback", exc_info=True)
        await self.end(EndReason.VOICE_LOST)

    # --- heartbeats -----------------------------------------------------------------------------

    def heartbeat_interval(self) -> float:
        configured = self.config.session.heartbeat_interval_s
        return configured if configured else max(0.5, self.info.lease_s / 3.0)

    def playback_report(self) -> dict:
        report = self.buffer.stats().as_dict()
        report["short_reads"] = self.source.short_reads
        return report

    async def heartbeat_once(self) -> bool:
        """One heartbeat; returns False when the session had to end because of it."""
        try:
            await self.graph.heartbeat(self.info.session_id)
        except SessionGone:
            await self.end(EndReason.LEASE_EXPIRED, graph_ended=True)
            return False
        except (GraphUnavailable, GraphAuthError, GraphError) as exc:
            silent_for = self.clock() - self._heartbeat_ok_at
            log.warning("heartbeat failed (%s); no contact for %.1fs", exc.message, silent_for)
            if silent_for >= self.info.lease_s:
                # The graph has expired the lease by now and restored the features on its own.
                await self.end(EndReason.GRAPH_UNREACHABLE, graph_ended=True)
                return False
            return True
        self._heartbeat_ok_at = self.clock()
        return True

    async def _heartbeat_loop(self) -> None:
        next_report = self.clock() + self.config.playback.stats_interval_s
        while self.active:
            await asyncio.sleep(self.heartbeat_interval())
            if not self.active or not await self.heartbeat_once():
                return
            if self.clock() >= next_report:
                next_report = self.clock() + self.config.playback.stats_interval_s
                await self.report_playback()

    async def report_playback(self) -> bool:
        """Send the underruns and frames played since the last report to the graph's metrics."""
        stats = self.buffer.stats()
        underruns = stats.underruns - self._reported_underruns
        frames = stats.frames_played - self._reported_frames
        try:
            await self.graph.report_playback(underruns, frames, stats.fill_frames * 20.0)
        except GraphError as exc:
            log.debug("playback report failed: %s", exc.message)
            return False
        self._reported_underruns += underruns
        self._reported_frames += frames
        return True

    # --- end ------------------------------------------------------------------------------------

    async def notify(self, text: str) -> None:
        if not text:
            return
        try:
            await self.notify_raw(text)
        except Exception:  # the prompt channel may be gone; the session must still end cleanly
            log.warning("could not post to the prompt channel: %r", text, exc_info=True)

    def _notify_from_thread(self, text: str) -> None:
        """A notice from the player or a decoder thread (a track was skipped): post it from the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(lambda: self._spawn(self.notify(text), "music-notice"))

    async def end(self, reason: EndReason, *, graph_ended: bool = False, announce: bool = True) -> None:
        """End the session: stop audio, leave voice, release the graph's session, restore presence."""
        if self.state in (SessionState.ENDING, SessionState.ENDED):
            await self._ended.wait()
            return
        self.state = SessionState.ENDING
        self.end_reason = reason
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self.pending.clear()
        if self.hearing is not None:
            try:
                await self.hearing.close()
            except Exception:
                log.warning("stopping listening failed", exc_info=True)
        if self.music is not None:
            self.music.close()
        self.buffer.close()
        try:
            self.link.stop()
        except Exception:
            log.debug("voice stop failed", exc_info=True)
        try:
            await self.link.disconnect(force=True)
        except Exception:
            log.debug("voice disconnect failed", exc_info=True)
        if self.stream is not None:
            try:
                await self.stream.close()
            except Exception:
                log.debug("voice WebSocket close failed", exc_info=True)
        if not graph_ended:
            try:
                await self.graph.end_session(self.info.session_id)
            except SessionGone:
                pass
            except GraphError as exc:
                log.warning("could not end session %s on the graph (%s); its lease will end it",
                            self.info.session_id, exc.message)
        self.state = SessionState.ENDED
        self._ended.set()
        if announce:
            await self.notify(END_NOTICES.get(reason.value, ""))
        if self._on_ended is not None:
            try:
                await self._on_ended(self, reason)
            except Exception:
                log.exception("session end hook failed")

    async def wait_ended(self) -> None:
        await self._ended.wait()

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> SessionStatus:
        ttfa = tuple(
            round(u.time_to_first_audio_ms, 1) for u in self.history if u.time_to_first_audio_ms is not None
        )[-5:]
        return SessionStatus(
            session_id=self.info.session_id,
            state=self.state,
            voice_channel_id=self.voice_channel_id,
            prompt_channel_id=self.prompt_channel_id,
            age_s=self.clock() - self.started_at,
            speaking=self.in_flight is not None or not self.buffer.is_idle(),
            queue_length=len(self.pending),
            voice_ok=self.voice_ok,
            recent_ttfa_ms=ttfa,
            playback=self.playback_report(),
            blackouts=self.info.blackouts,
            hearing=self.hearing.status() if self.hearing is not None else None,
        )


@dataclass(frozen=True)
class JoinRequest:
    """A `!miku join`, with the Discord facts already looked up by the cog."""

    guild_id: int
    user_id: int
    text_channel_id: int
    voice_channel_id: int | None  # the named channel, else the author's current one, else None
    channel_full: bool = False
    missing_permissions: tuple[str, ...] = ()  # e.g. ("Connect",): the bot cannot join, say so at once
    listen: bool = False  # this server opted in to Miku hearing the channel (`listen.servers`)


@dataclass(frozen=True)
class JoinOutcome:
    ok: bool
    message: str
    session: VoiceSession | None = None


class SessionManager:
    """Starts and ends voice sessions; at most one per guild."""

    def __init__(
        self,
        graph: GraphClient,
        config: BotConfig,
        presence: PresenceKeeper,
        *,
        clock: Callable[[], float] = time.monotonic,
        after_session: Callable[[VoiceSession, EndReason], Awaitable[None]] | None = None,
        hearing_factory: Callable[[VoiceSession, VoiceLink], Awaitable[Any]] | None = None,
    ) -> None:
        self.hearing_factory = hearing_factory  # starts listening on a session (bot.py: Discord's receive path)
        self.graph = graph
        self.config = config
        self.presence = presence
        self.clock = clock
        self.after_session = after_session
        self.sessions: dict[int, VoiceSession] = {}
        self._joining: set[int] = set()

    def get(self, guild_id: int | None) -> VoiceSession | None:
        session = self.sessions.get(guild_id) if guild_id is not None else None
        return session if session is not None and session.active else None

    def by_prompt_channel(self, channel_id: int) -> VoiceSession | None:
        for session in self.sessions.values():
            if session.active and session.prompt_channel_id == channel_id:
                return session
        return None

    async def join(self, request: JoinRequest, connect: Callable[[int], Awaitable[VoiceLink]],
                   notify: Notify) -> JoinOutcome:
        """Start a session; every failure leaves nothing behind (no graph session, no voice link)."""
        if self.get(request.guild_id) is not None or request.guild_id in self._joining:
            return JoinOutcome(False, ALREADY_IN_SESSION_TEMPLATE.format(command=self.config.command_name))
        if request.voice_channel_id is None:
            return JoinOutcome(False, NOT_IN_VOICE)
        if request.missing_permissions:
            return JoinOutcome(False, missing_permissions_message(request.voice_channel_id,
                                                                  request.missing_permissions))
        if request.channel_full:
            return JoinOutcome(False, CHANNEL_FULL)
        self._joining.add(request.guild_id)
        try:
            return await self._join(request, connect, notify)
        finally:
            self._joining.discard(request.guild_id)

    async def _join(self, request: JoinRequest, connect: Callable[[int], Awaitable[VoiceLink]],
                    notify: Notify) -> JoinOutcome:
        try:
            health = await self.graph.health()
        except GraphUnavailable:
            return JoinOutcome(False, GRAPH_UNREACHABLE_AT_START)
        except GraphError:
            return JoinOutcome(False, TTS_UNAVAILABLE)
        if not health.ok or not health.stage_ok("tts", "vc"):
            return JoinOutcome(False, TTS_UNAVAILABLE)
        try:
            info = await self.graph.start_session(
                request.guild_id, request.voice_channel_id, request.text_channel_id, request.user_id
            )
        except GraphConflict as exc:
            return JoinOutcome(False, exc.message)
        except GraphUnavailable:
            return JoinOutcome(False, GRAPH_UNREACHABLE_AT_START)
        except GraphAuthError:
            return JoinOutcome(False, GRAPH_AUTH_FAILED)
        except GraphError as exc:
            return JoinOutcome(False, f"❌ I couldn't start a voice session: {exc.message}")

        async def release_graph_session() -> None:
            try:
                await self.graph.end_session(info.session_id)
            except GraphError:
                log.warning("could not release session %s; its lease will", info.session_id)

        try:
            link = await asyncio.wait_for(connect(request.voice_channel_id),
                                          self.config.session.voice_connect_timeout_s)
        except Exception as exc:
            await release_graph_session()
            detail = (f"no answer from Discord within {self.config.session.voice_connect_timeout_s:g} s"
                      if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__)
            return JoinOutcome(False, f"❌ I couldn't connect to the voice channel ({detail}).")

        session = VoiceSession(
            info=info,
            guild_id=request.guild_id,
            voice_channel_id=request.voice_channel_id,
            prompt_channel_id=request.text_channel_id,
            graph=self.graph,
            link=link,
            notify=notify,
            config=self.config,
            clock=self.clock,
            on_ended=self._session_ended,
        )
        try:
            await session.start()
        except Exception as exc:
            session.state = SessionState.ENDED
            if session.music is not None:
                session.music.close()
            session.buffer.close()
            try:
                link.stop()
                await link.disconnect(force=True)
            except Exception:
                log.debug("disconnect after a failed start failed", exc_info=True)
            if session.stream is not None:
                await session.stream.close()
            await release_graph_session()
            message = exc.message if isinstance(exc, GraphError) else str(exc)
            if isinstance(exc, GraphUnavailable):
                return JoinOutcome(False, GRAPH_UNREACHABLE_AT_START)
            return JoinOutcome(False, f"❌ I couldn't start speaking: {message}")
        self.sessions[request.guild_id] = session
        await self.presence.enter(request.guild_id)
        listening = ""
        if request.listen and self.hearing_factory is not None:
            listening = await self._start_hearing(session, link)
        changes = session_changes(info.blackouts)  # in plain words; silent features left out
        return JoinOutcome(
            True,
            f"🎤 Joined <#{request.voice_channel_id}>! Type in <#{request.text_channel_id}> and I'll answer out loud. "
            f"{listening}"
            + (f"{changes} " if changes else "")
            + f"Use `{self.config.command_name} leave` when you're done.",
            session,
        )

    async def _start_hearing(self, session: VoiceSession, link: VoiceLink) -> str:
        """Start listening; the join message says what members should know (she hears them, or cannot)."""
        assert self.hearing_factory is not None
        try:
            session.hearing = await self.hearing_factory(session, link)
        except Exception as exc:
            detail = exc.message if isinstance(exc, GraphError) else str(exc) or type(exc).__name__
            log.warning("could not start listening in %s: %s", session.guild_id, detail)
            return f"🙉 I can't hear the voice channel right now ({detail}), so type to me. "
        kept = ("what I hear is also recorded on my host" if self.config.listen.record_dir
                else "I hear it only to answer and keep none of the audio")
        return f"👂 I'm listening: everyone in <#{session.voice_channel_id}> can talk to me out loud ({kept}). "

    async def _session_ended(self, session: VoiceSession, reason: EndReason) -> None:
        if self.sessions.get(session.guild_id) is session:
            del self.sessions[session.guild_id]
        await self.presence.leave(session.guild_id)
        if self.after_session is not None:
            await self.after_session(session, reason)

    async def leave(self, guild_id: int | None) -> str | None:
        """End this guild's session; returns a refusal text when there is none."""
        session = self.get(guild_id)
        if session is None:
            return NOT_IN_SESSION
        await session.end(EndReason.LEAVE)
        return None

    async def shutdown(self) -> None:
        """End every session (the bot is closing)."""
        await asyncio.gather(*(s.end(EndReason.SHUTDOWN) for s in list(self.sessions.values())),
                             return_exceptions=True)


class OwnVoiceChange(enum.Enum):
    NONE = "none"
    REMOVED = "removed"  # kicked, disconnected by a moderator, or the channel was deleted
    MOVED = "moved"  # dragged to another channel


def own_voice_change(before_id: int | None, after_id: int | None, session_channel_id: int) -> OwnVoiceChange:
    """What a voice-state update of the bot itself means for its session."""
    if after_id is None and before_id is not None:
        return OwnVoiceChange.REMOVED
    if after_id is not None and after_id != session_channel_id:
        return OwnVoiceChange.MOVED
    return OwnVoiceChange.NONE
