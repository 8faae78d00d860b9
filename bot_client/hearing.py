"""One voice session's listening: what the receive path hears goes up `WS /v1/listen`, and what the graph
makes of it comes back as the same actions a typed message or command would cause.

- Audio: `VoiceReceiver` (voice_receive.py) calls back from the receive worker thread; the callbacks
  only hand the data to the event loop (`call_soon_threadsafe`), where `ListenStream` queues it.
- `turn` -> spoken as a prompt exactly like a prompt-channel message (`VoiceSession.submit`), kept in the
  brain's memory like a text message (a `message` event; in voice the brain stores it and does not
  answer in text), and optionally echoed to the prompt channel.
- `pause` / `resume` -> her voice is held in place while someone starts talking over her, then goes on
  (`short`: a cough); `resume` with `no_words` after a barge-in says the cut-off rest again (`say`).
- `barge_in` -> the interrupt path (`VoiceSession.stop_speaking`): the graph cancels the utterance and the
  frames waiting in the jitter buffer are dropped, so nothing stale plays after the cut.
- `command` -> `leave`, `stop` or `quiet`, with the role checks of `!miku leave` / `!miku stop`.
- `stt_unavailable` -> said once in the prompt channel; typed prompts keep working.
- While Miku plays audio the graph is told (`speaking`), so it can tell a barge-in from a turn.

Nothing is written to disk unless `listen.record_dir` is set (`WavRecorder`, 0600 files).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from .config import BotConfig
from .graph_api import GraphClient, GraphError, GraphUnavailable
from .listen_link import ListenStream
from .permissions import is_allowed, refusal
from .voice_receive import DaveGate, ReceiveConfig, VoiceReceiver

log = logging.getLogger(__name__)

CANT_HEAR = ("🙉 I can't hear right now (my speech recognition is down). Type in this channel and I'll "
             "still answer out loud.")
COMMAND_PERMISSION = {"leave": "leave", "stop": "stop", "quiet": "stop"}  # quiet: "stop voice"
TURN_TEXT_LIMIT = 4000


@dataclass(frozen=True)
class Member:
    """What hearing needs to know about a speaker (looked up on the event loop)."""

    user_id: int
    name: str
    roles: tuple[str, ...] = ()
    is_admin: bool = False


class Tap(Protocol):
    """Where the datagrams come from (discord_receive.DiscordVoiceTap, or a test's sender)."""

    def stop(self) -> None: ...


class WavRecorder:
    """Opt-in (`listen.record_dir`): each speaker's 16 kHz audio of a session as a private WAV file."""

    def __init__(self, directory: str, session_id: str) -> None:
        from graph.files import create_private_file, ensure_private_dir

        self._dir = ensure_private_dir(Path(directory).expanduser())
        self._session_id = session_id
        self._create = create_private_file
        self._files: dict[int, wave.Wave_write] = {}

    def write(self, user_id: int, pcm: bytes) -> None:
        writer = self._files.get(user_id)
        if writer is None:
            path = self._dir / f"{self._session_id}-{user_id}.wav"
            self._create(path)  # 0600 from its first byte (an older file is tightened), then written over
            writer = wave.open(str(path), "wb")
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(16000)
            self._files[user_id] = writer
        writer.writeframes(pcm)

    def close(self) -> None:
        for writer in self._files.values():
            try:
                writer.close()
            except Exception:
                log.debug("closing a recording failed", exc_info=True)
        self._files.clear()


class Hearing:
    """Listening for one `VoiceSession`. `start()` after the session started; `close()` from `session.end`."""

    def __init__(
        self,
        session: Any,  # VoiceSession (not imported: session.py imports nothing of hearing)
        graph: GraphClient,
        config: BotConfig,
        *,
        member: Callable[[int], Member | None],
        dave: DaveGate | None = None,
        clock: Callable[[], float] = time.monotonic,
        reconnect_delays: tuple[float, ...] = (0.5, 1.0, 2.0),
    ) -> None:
        self.session = session
        self.graph = graph
        self.config = config
        self._member = member
        self.clock = clock
        self._reconnect_delays = reconnect_delays
        listen = config.listen
        self.receiver = VoiceReceiver(
            on_audio=self._audio_from_worker,
            on_speaker=self._speaker_from_worker,
            on_speaker_left=self._left_from_worker,
            dave=dave,
            config=ReceiveConfig(reorder_depth=listen.reorder_depth, max_hold_ms=listen.max_hold_ms,
                                 silence_fill_ms=listen.silence_fill_ms),
        )
        self.recorder = WavRecorder(listen.record_dir, session.info.session_id) if listen.record_dir else None
        self.stream: ListenStream | None = None
        self.tap: Tap | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._announced: dict[int, str] = {}
        self._told_cant_hear = False
        self._closed = False
        self._tasks: set[asyncio.Task] = set()
        self.turns: list[dict] = []  # the turns acted on (for status and tests), last 50
        self.counters = {"turns": 0, "commands": 0, "refused_commands": 0, "barge_ins": 0, "stt_unavailable": 0,
                         "errors": 0, "bad_events": 0, "reconnects": 0, "pauses": 0, "resumed": 0}
        self._unheard = ""  # what a barge-in cut off, said again on `resume` with reason `no_words`

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open `WS /v1/listen` and announce the channel. Raises GraphError when the route cannot be reached."""
        self._loop = asyncio.get_running_loop()
        await self._connect()
        self.session.source.speaking_listener = self._speaking_from_player

    async def _connect(self) -> None:
        """On the graph's direct voice port when it offers the route there, else through Serve's proxy."""
        urls = [self.graph.ws_url("/v1/listen")]
        if self.graph.direct_voice:
            try:
                direct = await self.graph.direct_listen_url()
            except GraphError as exc:
                log.debug("no direct listen port: %s", exc.message)
                direct = None
            if direct is not None:
                urls.insert(0, direct)
        for index, url in enumerate(urls):
            stream = ListenStream(url, self.graph.auth_headers, self._on_event, self._on_closed,
                                  open_timeout=self.graph.connect_timeout_s,
                                  max_queued_bytes=int(self.config.listen.uplink_buffer_s * 16000 * 2 * 4))
            try:
                await stream.open()
                break
            except GraphUnavailable as exc:
                if index == len(urls) - 1:
                    raise
                log.warning("direct listen port %s unreachable (%s); using the graph's WS /v1/listen", url, exc.message)
        stream.send_json({"type": "start", "guild_id": str(self.session.guild_id),
                          "channel_id": str(self.session.voice_channel_id)})
        self._announced.clear()  # a new connection knows no speakers yet
        self.stream = stream

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        source = getattr(self.session, "source", None)
        if source is not None and getattr(source, "speaking_listener", None) == self._speaking_from_player:
            source.speaking_listener = None
        if self.tap is not None:
            try:
                self.tap.stop()
            except Exception:
                log.debug("stopping the voice tap failed", exc_info=True)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self.stream is not None:
            await self.stream.close()
        if self.recorder is not None:
            self.recorder.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- from the receive worker (other thread) ---------------------------------------------------

    def _call_on_loop(self, function: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self._closed:
            return
        loop.call_soon_threadsafe(function, *args)

    def _audio_from_worker(self, user_id: int, pcm: bytes) -> None:
        if self.recorder is not None:
            try:
                self.recorder.write(user_id, pcm)
            except OSError:
                log.warning("could not record audio of %s", user_id, exc_info=True)
        self._call_on_loop(self._audio, user_id, pcm)

    def _speaker_from_worker(self, user_id: int) -> None:
        self._call_on_loop(self._announce, user_id)

    def _left_from_worker(self, user_id: int) -> None:
        self._call_on_loop(self._speaker_left, user_id)

    def _speaking_from_player(self, speaking: bool) -> None:
        self._call_on_loop(self._send_speaking, speaking)

    # --- uplink (event loop) ----------------------------------------------------------------------

    def _announce(self, user_id: int) -> None:
        if self.stream is None or self._closed:
            return
        info = self._member(user_id)
        name = info.name if info is not None else ""
        if not any(c.isalnum() for c in name):  # the graph needs a name it can say ("Ann: ...")
            name = "Someone"
        self._announced[user_id] = name
        self.stream.send_json({"type": "speaker", "user_id": str(user_id), "name": name})

    def _audio(self, user_id: int, pcm: bytes) -> None:
        if self.stream is None or self._closed:
            return
        if user_id not in self._announced:
            self._announce(user_id)
        self.stream.push_audio(user_id, pcm)

    def _speaker_left(self, user_id: int) -> None:
        if self.stream is not None and self._announced.pop(user_id, None) is not None:
            self.stream.send_json({"type": "speaker_left", "user_id": str(user_id)})

    def _send_speaking(self, speaking: bool) -> None:
        if self.stream is not None and not self._closed:
            self.stream.send_json({"type": "speaking", "value": bool(speaking)})

    def member_joined(self, user_id: int) -> None:
        """A member joined the voice channel (the events cog): hear them if their SSRC came first."""
        refresh = getattr(self.tap, "refresh", None)
        if refresh is not None:
            refresh(user_id)

    def member_left(self, user_id: int) -> None:
        """A member left the voice channel (the events cog): their stream ends and the graph is told."""
        if not self.receiver.remove_user(user_id):
            self._speaker_left(user_id)

    # --- events from the graph --------------------------------------------------------------------

    async def _on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "turn":
            await self._turn(event)
        elif kind == "barge_in":
            self.counters["barge_ins"] += 1
            self.session.source.release()
            if self.session.active:
                self._unheard = await self.session.barge_in()
        elif kind == "pause":  # someone started talking over her: hold her voice until it is a barge-in or not
            self.counters["pauses"] += 1
            self.session.source.hold()
        elif kind == "resume":
            self.session.source.release()  # "short": a cough, she plays on where she was
            unheard, self._unheard = self._unheard, ""
            if event.get("reason") == "no_words" and unheard and self.session.active:
                # A barge-in with nothing said: she says again what was cut off (`listen.no_words: resume`).
                self.counters["resumed"] += 1
                await self.session.submit(unheard, kind="say")
        elif kind == "command":
            await self._command(event)
        elif kind == "stt_unavailable":
            self.counters["stt_unavailable"] += 1
            log.warning("the graph cannot transcribe: %s", event.get("message"))
            if not self._told_cant_hear:
                self._told_cant_hear = True
                await self.session.notify(CANT_HEAR)
        elif kind == "error":
            self.counters["errors"] += 1
            log.warning("listen route error: %s", event.get("message"))
        elif kind == "vad":
            pass  # speech starts and stops: the graph decides turns and barge-ins from them
        else:
            self.counters["bad_events"] += 1
            log.debug("unknown listen event %r", kind)

    @staticmethod
    def _user_id(event: dict) -> int | None:
        try:
            value = int(str(event.get("user_id")))
        except ValueError:
            return None
        return value if 0 <= value < 1 << 64 else None

    async def _turn(self, event: dict) -> None:
        text, prompt = event.get("text"), event.get("prompt")
        user_id = self._user_id(event)
        if not isinstance(text, str) or not text.strip() or user_id is None:
            self.counters["bad_events"] += 1
            return
        text = text.strip()[:TURN_TEXT_LIMIT]
        name = event.get("name") if isinstance(event.get("name"), str) else self._announced.get(user_id, str(user_id))
        if not isinstance(prompt, str) or not prompt.strip():
            prompt = f"{name}: {text}"
        self._told_cant_hear = False  # she hears again: a later outage is said again
        self._unheard = ""  # the barge-in had words: what was cut off stays cut off
        self.counters["turns"] += 1
        self.turns = (self.turns + [{"user_id": user_id, "name": name, "text": text}])[-50:]
        if not self.session.active:
            return
        result = await self.session.submit(prompt[:self.config.session.max_prompt_chars], kind="prompt")
        if not result.accepted:  # e.g. too many prompts waiting: said as for a typed prompt
            log.info("turn of %s not spoken: %s", name, result.message)
            if result.message:
                await self.session.notify(f"{name}: {result.message}")
        if self.config.listen.echo_transcripts:
            await self.session.notify(f"🗣️ **{name}**: {text}")
        if self.config.listen.store_transcripts:
            self._spawn(self._store(user_id, name, text))

    async def _store(self, user_id: int, name: str, text: str) -> None:
        """The turn in the brain's memory, as a message in the prompt channel from its speaker."""
        event = {
            "type": "message",
            "event_id": f"voice:{uuid.uuid4().hex}",
            "guild_id": str(self.session.guild_id),
            "channel_id": str(self.session.prompt_channel_id),
            "message_id": f"voice-{uuid.uuid4().hex}",
            "author_id": str(user_id),
            "author_name": name,
            "content": text,
            "channel_name": "voice",
            "timestamp": time.time(),
        }
        try:
            actions = await self.graph.post_event(event)
        except GraphError as exc:
            log.debug("transcript not stored: %s", exc.message)
            return
        if actions:  # in a session the brain only stores it; anything else is not acted on twice
            log.debug("ignored %d actions for a stored transcript", len(actions))

    async def _command(self, event: dict) -> None:
        name = event.get("name")
        user_id = self._user_id(event)
        if name not in COMMAND_PERMISSION or user_id is None:
            self.counters["bad_events"] += 1
            return
        member = self._member(user_id)
        permission = COMMAND_PERMISSION[name]
        if member is None or not is_allowed(permission, member.roles, member.is_admin, self.config.permissions):
            self.counters["refused_commands"] += 1
            who = member.name if member is not None else "Someone"
            await self.session.notify(f"{who}: " + refusal(permission, self.config.permissions, self.config.command_name))
            return
        self.counters["commands"] += 1
        if not self.session.active:
            return
        if name == "leave":
            from .session import EndReason

            self._spawn(self.session.end(EndReason.LEAVE))  # ends this hearing too: not from inside its reader
        elif name == "stop":
            await self.session.stop_speaking()
            music = getattr(self.session, "music", None)
            if music is not None:
                music.stop()
            await self.session.notify(f"⏹️ Stopped ({member.name} asked).")
        else:
            await self.session.stop_speaking()
            await self.session.notify(f"🤫 Okay, I'll be quiet ({member.name} asked).")

    async def _on_closed(self, error: BaseException | None) -> None:
        if self._closed or not self.session.active:
            return
        log.warning("WS /v1/listen closed mid-session (%s); reconnecting", error)
        self.stream = None
        for delay in self._reconnect_delays:
            await asyncio.sleep(delay)
            if self._closed or not self.session.active:
                return
            try:
                await self._connect()
                self.counters["reconnects"] += 1
                return
            except GraphError as exc:
                log.warning("WS /v1/listen reconnect failed: %s", exc.message)
        if not self._told_cant_hear:
            self._told_cant_hear = True
            await self.session.notify(CANT_HEAR)

    def status(self) -> dict:
        return {"receive": self.receiver.stats.as_dict(), **self.counters,
                "uplink_sent": self.stream.audio_sent if self.stream else 0,
                "uplink_dropped": self.stream.audio_dropped if self.stream else 0}
