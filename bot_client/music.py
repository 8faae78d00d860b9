"""Background music in the voice channel: a queue of tracks decoded ahead in threads, mixed under her voice.

discord.py's player thread reads one 20 ms frame every tick and must never wait, so nothing here blocks
it: each track is opened and decoded (PyAV: FFmpeg's libraries from the wheel) by its own daemon thread,
resampled to 48 kHz s16 stereo and put into a small bounded queue (`buffer_s` ahead at most). The player
thread only takes what is there (`MusicPlayer.next_frame`); a track that has nothing ready plays silence,
and one that stays starved for `stall_s` worth of frames is given up (its thread ends when FFmpeg's own
read timeout fires) and the next one starts. Failures are reported through a thread-safe `notify`.

What may be played is checked before anything is opened (`resolve_track`): files only under the
configured music directory (resolved, so `..` and symlinks out of it are refused) and http(s) URLs only
(FFmpeg may then use only the http/https/tcp/tls protocols, and no demuxer may open further files).

The mix (`MusicMixer`) adds music under the voice: it is ducked by `duck_db` with attack/release ramps
while a voice utterance is playing, scaled by the volume, and a per-frame peak limiter keeps the sum
under full scale (no wrap-around).
"""
from __future__ import annotations

import enum
import ipaddress
import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np

from .config import MusicConfig

try:  # C sample arithmetic, several times cheaper per frame than numpy for the common case (a scalar gain)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # removed in 3.13; discord.py imports it too
        import audioop
except ImportError:  # pragma: no cover - Python >= 3.13 without audioop-lts: numpy does it all
    audioop = None
from .jitter import FRAME_BYTES, FRAME_MS, SILENCE_FRAME

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
FRAME_SAMPLES = FRAME_BYTES // 4  # per channel
FULL_SCALE = 32767.0
LIMITER_CEILING = 0.97 * FULL_SCALE  # the limiter's target peak, a little under full scale
URL_PROTOCOLS = "http,https,tcp,tls"  # FFmpeg may use nothing else for a URL (no file://, no pipes)
# Demuxers for audio files; excludes playlist/concat/image2 style ones that open further files or URLs.
AUDIO_FORMATS = ("wav,w64,flac,ogg,mp3,aac,aiff,caf,au,wv,ape,tta,asf,matroska,webm,mov,mp4,m4a,3gp,3g2,mj2,"
                 "opus,amr,dts,ac3,eac3,mpc,mpc8,tak,spdif,xwma")


class MusicRequestError(ValueError):
    """A `play` request that is refused before anything is opened; the message is for the user."""


class TrackKind(enum.Enum):
    FILE = "file"
    URL = "url"


@dataclass(frozen=True)
class Track:
    """Something to play: a checked path under the music directory, or an http(s) URL."""

    kind: TrackKind
    location: str  # absolute resolved path, or the URL
    title: str  # what the user sees


def _is_private_host(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # unresolvable: FFmpeg fails to connect and the track is skipped with a message
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if address.is_private or address.is_loopback or address.is_link_local or address.is_reserved:
            return True
    return False


def resolve_track(request: str, config: MusicConfig) -> Track:
    """Check a `play` argument; raises `MusicRequestError` (with a message for the user) when refused."""
    text = request.strip().strip("<>")  # Discord users wrap URLs in <> to suppress embeds
    if not text:
        raise MusicRequestError("❌ Tell me what to play: a file from the music folder or an http(s) URL.")
    parts = urlsplit(text)
    if parts.scheme and len(parts.scheme) > 1:  # one letter would be a Windows drive, not a scheme
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise MusicRequestError("❌ I can only play http:// or https:// links (or files from the music folder).")
        if not config.allow_private_urls and _is_private_host(parts.hostname):
            raise MusicRequestError("❌ I won't fetch music from a private or local network address.")
        name = Path(parts.path).name or parts.hostname
        return Track(TrackKind.URL, text, name)
    if not config.directory:
        raise MusicRequestError("❌ No music folder is configured, so I can only play http(s) links.")
    root = Path(config.directory).expanduser().resolve()
    candidate = Path(text)
    if candidate.is_absolute():
        raise MusicRequestError("❌ Name a file inside the music folder (a relative path), not an absolute path.")
    target = (root / candidate).resolve()  # follows symlinks: one pointing out of the folder is refused
    if target != root and root not in target.parents:
        raise MusicRequestError("❌ That path leads outside the music folder.")
    if not target.is_file():
        raise MusicRequestError(f"❌ There's no file `{text}` in the music folder.")
    return Track(TrackKind.FILE, str(target), target.relative_to(root).as_posix())


class DecoderState(enum.Enum):
    LOADING = "loading"  # opening the file or connecting
    DECODING = "decoding"  # frames are being produced
    ENDED = "ended"  # every frame is in the queue
    FAILED = "failed"


def _refuse_nested_open(url: str, flags: int, options: dict) -> Any:
    raise PermissionError(f"a music file may not open other files ({url})")


class TrackDecoder:
    """Decodes one track to 20 ms frames in a daemon thread, at most `frames_ahead` frames ahead."""

    def __init__(self, track: Track, config: MusicConfig) -> None:
        self.track = track
        self.config = config
        self.capacity = max(2, int(config.buffer_s * 1000 // FRAME_MS))
        # A deque: the player thread's popleft takes no lock and wakes nobody, except when the buffer drops
        # to half, when it lets the decoder refill it in one go (fewer, shorter turns holding the GIL).
        self._frames: deque[bytes] = deque()
        self._space = threading.Event()
        self.state = DecoderState.LOADING
        self.error: str | None = None
        self.frames_decoded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"miku-music-{track.title[:20]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; it does at its next frame (or when FFmpeg's read timeout fires)."""
        self._stop.set()
        self._space.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def take(self) -> bytes | None:
        """The next frame if one is ready; never waits."""
        try:
            frame = self._frames.popleft()
        except IndexError:
            return None
        if len(self._frames) <= self.capacity // 2 and not self._space.is_set():
            self._space.set()
        return frame

    @property
    def has_frames(self) -> bool:
        return bool(self._frames)

    @property
    def drained(self) -> bool:
        return self.state is DecoderState.ENDED and not self._frames

    def _put(self, frame: bytes) -> bool:
        while len(self._frames) >= self.capacity:
            if self._stop.is_set():
                return False
            self._space.clear()
            if len(self._frames) >= self.capacity:  # the reader may have taken one in between
                self._space.wait(0.1)  # full: decoding is far enough ahead, wait for the player
        if self._stop.is_set():
            return False
        self._frames.append(frame)
        self.frames_decoded += 1
        return True

    def _open(self) -> Any:
        import av  # imported here: only a session that plays music pays for loading FFmpeg

        timeout = (self.config.open_timeout_s, self.config.read_timeout_s)
        options = {"format_whitelist": AUDIO_FORMATS}
        if self.track.kind is TrackKind.URL:
            options["protocol_whitelist"] = URL_PROTOCOLS
            return av.open(self.track.location, options=options, timeout=timeout)
        # A file is handed over as an open file object, so FFmpeg never parses its name as a URL.
        handle = open(self.track.location, "rb")
        try:
            return av.open(handle, options=options, io_open=_refuse_nested_open)
        except BaseException:
            handle.close()
            raise

    def _run(self) -> None:
        container = None
        try:
            import av

            container = self._open()
            if not container.streams.audio:
                raise ValueError("it has no audio")
            stream = container.streams.audio[0]
            # Mono is copied to both channels as it is: FFmpeg's upmix would lower it by 3 dB.
            mono = stream.codec_context.layout.nb_channels == 1
            resampler = av.AudioResampler(format="s16", layout="mono" if mono else "stereo", rate=SAMPLE_RATE)
            self.state = DecoderState.DECODING
            pending = bytearray()

            def emit(frames: Any) -> bool:
                for out in frames:
                    samples = out.to_ndarray()  # packed s16: one plane, interleaved
                    if mono:
                        samples = np.repeat(samples.reshape(-1, 1), 2, axis=1)
                    pending.extend(samples.astype("<i2", copy=False).tobytes())
                    while len(pending) >= FRAME_BYTES:
                        if not self._put(bytes(pending[:FRAME_BYTES])):
                            return False
                        del pending[:FRAME_BYTES]
                return True

            for packet in container.demux(stream):
                if self._stop.is_set():
                    return
                for frame in packet.decode():
                    if not emit(resampler.resample(frame)):
                        return
                time.sleep(0)  # hand the GIL over between packets: the player thread may be waiting for it
            if not emit(resampler.resample(None)):
                return
            if pending and not self._put(bytes(pending) + bytes(FRAME_BYTES - len(pending))):
                return
            if self.frames_decoded == 0:
                raise ValueError("it has no audio")
            self.state = DecoderState.ENDED
        except Exception as exc:  # any failure skips the track; the message names what went wrong
            self.error = _describe(exc)
            self.state = DecoderState.FAILED
            log.info("music track %s failed: %s", self.track.title, self.error)
        finally:
            if container is not None:
                try:
                    container.close()
                except Exception:
                    pass


def _describe(exc: Exception) -> str:
    import av.error

    if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)):  # PyAV's timeout interrupted FFmpeg
        return "the stream stalled: no data within the timeout"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


class MusicState(enum.Enum):
    IDLE = "idle"  # nothing playing or queued
    PLAYING = "playing"
    PAUSED = "paused"


@dataclass(frozen=True)
class MusicStatus:
    state: MusicState
    current: str | None
    queued: tuple[str, ...]
    volume: int
    played: int
    skipped: int


class MusicPlayer:
    """The session's music: a queue of tracks, the one playing, pause and volume. Thread-safe.

    `notify(text)` is called from the player or a decoder thread; it must only hand the text on.
    `set_wake_listener` is how the audio source hears that music wants the (paused) player running.
    """

    def __init__(self, config: MusicConfig, notify: Callable[[str], None] | None = None,
                 decoder_factory: Callable[[Track, MusicConfig], TrackDecoder] = TrackDecoder) -> None:
        self.config = config
        self._notify = notify
        self._new_decoder = decoder_factory
        self._lock = threading.Lock()
        self._queue: deque[Track] = deque()
        self._current: TrackDecoder | None = None
        self._starved = 0  # reads in a row that found the current track with nothing ready
        self._paused = False
        self._stopped = False
        self._volume = max(0, min(100, int(config.volume)))
        self._on_wake: Callable[[], None] | None = None
        self.played = 0
        self.skipped = 0
        self.frames_played = 0
        self.starved_frames = 0

    def set_wake_listener(self, listener: Callable[[], None] | None) -> None:
        self._on_wake = listener

    def _wake(self) -> None:
        if self._on_wake is not None:
            self._on_wake()

    def _say(self, text: str) -> None:
        if self._notify is not None:
            try:
                self._notify(text)
            except Exception:
                log.warning("could not report a music message", exc_info=True)

    # --- commands (event loop) ------------------------------------------------------------------

    def enqueue(self, track: Track) -> int:
        """Add a track; returns its place (0: it plays now). Raises `MusicRequestError` when full."""
        with self._lock:
            if self._stopped:
                raise MusicRequestError("❌ The music has ended with the session.")
            if len(self._queue) >= self.config.max_queue:
                raise MusicRequestError(f"❌ The music queue is full ({self.config.max_queue} tracks).")
            self._queue.append(track)
            position = len(self._queue)  # n-th in line behind the track playing
            if self._current is None:
                self._advance_locked()
                position = 0
        self._wake()
        return position

    def pause(self) -> bool:
        with self._lock:
            if self._current is None or self._paused:
                return False
            self._paused = True
            return True

    def resume(self) -> bool:
        with self._lock:
            if not self._paused:
                return False
            self._paused = False
        self._wake()
        return True

    def skip(self) -> str | None:
        """Skip the current track; returns its title (None when nothing was playing)."""
        with self._lock:
            if self._current is None:
                return None
            title = self._current.track.title
            self._current.stop()
            self._current = None
            self._advance_locked()
        self._wake()
        return title

    def stop(self) -> int:
        """Stop the music and drop the queue; returns how many tracks were dropped (current included)."""
        with self._lock:
            dropped = len(self._queue) + (1 if self._current is not None else 0)
            self._queue.clear()
            if self._current is not None:
                self._current.stop()
                self._current = None
            self._paused = False
        return dropped

    def close(self) -> None:
        """The session ended: stop for good (later `enqueue` calls are refused)."""
        with self._lock:
            self._stopped = True
        self.stop()

    def set_volume(self, volume: int) -> int:
        with self._lock:
            self._volume = max(0, min(100, int(volume)))
            return self._volume

    @property
    def volume(self) -> int:
        return self._volume

    @property
    def gain(self) -> float:
        """The volume as a linear amplitude factor (100 = the track's own level)."""
        return self._volume / 100.0

    def status(self) -> MusicStatus:
        with self._lock:
            current = self._current.track.title if self._current is not None else None
            state = MusicState.IDLE if current is None else MusicState.PAUSED if self._paused else MusicState.PLAYING
            return MusicStatus(state, current, tuple(t.title for t in self._queue), self._volume,
                               self.played, self.skipped)

    @property
    def current(self) -> TrackDecoder | None:
        """The decoder of the track playing (or loading), if any."""
        with self._lock:
            return self._current

    # --- player thread --------------------------------------------------------------------------

    def wants_playback(self) -> bool:
        """True while a track is playing (or loading) and not paused: the player must keep running."""
        with self._lock:
            return self._current is not None and not self._paused

    def next_frame(self) -> bytes | None:
        """One 20 ms frame of music, silence while a track is loading or starved, None when none plays."""
        notices: list[str] = []
        try:
            with self._lock:
                return self._next_locked(notices)
        finally:
            for text in notices:
                self._say(text)

    def _next_locked(self, notices: list[str]) -> bytes | None:
        stall_frames = max(1, int(self.config.stall_s * 1000 // FRAME_MS))
        open_frames = int(self.config.open_timeout_s * 1000 // FRAME_MS)
        while self._current is not None and not self._paused:
            decoder = self._current
            frame = decoder.take()
            if frame is not None:
                self._starved = 0
                self.frames_played += 1
                return frame
            if decoder.state is DecoderState.ENDED and not decoder.has_frames:
                self.played += 1
                self._current = None
                self._advance_locked()
                continue
            if decoder.state is DecoderState.FAILED and not decoder.has_frames:
                notices.append(f"⚠️ Skipped **{decoder.track.title}**: I couldn't play it ({decoder.error}).")
                self._skip_current_locked()
                continue
            self._starved += 1
            self.starved_frames += 1
            # Opening a URL may take up to its connect timeout before the stall clock applies.
            limit = stall_frames if decoder.state is not DecoderState.LOADING else max(stall_frames, open_frames)
            if self._starved >= limit:
                notices.append(f"⚠️ Skipped **{decoder.track.title}**: the stream stalled "
                               f"(nothing for {self.config.stall_s:g} s).")
                decoder.stop()
                self._skip_current_locked()
                continue
            return bytes(FRAME_BYTES)  # loading or late: silence, and the player keeps its pace
        return None

    def _skip_current_locked(self) -> None:
        self.skipped += 1
        self._current = None
        self._advance_locked()

    def _advance_locked(self) -> None:
        self._starved = 0
        if self._current is None and self._queue and not self._stopped:
            self._current = self._new_decoder(self._queue.popleft(), self.config)
            self._current.start()  # a thread start: quick, and the decoding itself runs there


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


class MusicMixer:
    """Voice + ducked, volume-scaled music, then a peak limiter. Used only by the player thread.

    Ducking follows `voice_active` per frame with linear gain ramps (`attack_ms` down, `release_ms` back
    up). The limiter computes each frame's gain from that frame's peak (no look-ahead needed: the gain
    never exceeds ceiling/peak within the frame, so no sample can pass the ceiling) and recovers over
    `limiter_release_ms`.
    """

    def __init__(self, duck_db: float = 12.0, attack_ms: float = 50.0, release_ms: float = 300.0,
                 limiter_release_ms: float = 100.0) -> None:
        self.duck_gain = db_to_gain(-abs(duck_db))
        depth = 1.0 - self.duck_gain
        self._attack_step = depth / max(1.0, attack_ms * SAMPLE_RATE / 1000.0)
        self._release_step = depth / max(1.0, release_ms * SAMPLE_RATE / 1000.0)
        self._limiter_step = 1.0 / max(1.0, limiter_release_ms * SAMPLE_RATE / 1000.0)
        self._ramp = np.arange(1, FRAME_SAMPLES + 1, dtype=np.float32)
        self._work = np.zeros((FRAME_SAMPLES, 2), dtype=np.float32)
        self.duck = 1.0  # the music's ducking gain at the end of the last frame
        self.limiter = 1.0
        self.limited_frames = 0

    def _duck_curve(self, voice_active: bool) -> float | np.ndarray:
        """This frame's ducking gain: a scalar once the ramp is over (the cheap, common case)."""
        target = self.duck_gain if voice_active else 1.0
        if self.duck == target:
            return target
        if voice_active:
            curve = np.maximum(self.duck - self._attack_step * self._ramp, self.duck_gain)
        else:
            curve = np.minimum(self.duck + self._release_step * self._ramp, 1.0)
        end = float(curve[-1])
        # float32 ramps end a rounding step off the float64 target; snap, so the scalar path takes over
        self.duck = target if abs(end - target) < 1e-6 else end
        return curve

    def mix(self, voice: bytes, music: bytes | None, music_gain: float, voice_active: bool) -> bytes:
        """One output frame. With no music and the limiter at rest the voice frame passes unchanged.

        Few numpy calls on preallocated arrays: this runs on the player thread every 20 ms.
        """
        duck = self._duck_curve(voice_active)  # the ramps move on even without music
        if music is not None and audioop is not None and isinstance(duck, float) and self.limiter >= 1.0:
            # Steady state: one gain for the whole frame and the limiter at rest. audioop.add saturates,
            # so a sum near full scale is redone below, where the limiter brings it down smoothly.
            scaled = audioop.mul(music, 2, duck * music_gain)
            mixed = scaled if voice is SILENCE_FRAME else audioop.add(scaled, voice, 2)
            if audioop.max(mixed, 2) <= LIMITER_CEILING:
                return mixed
        work = self._work
        if music is None:
            if self.limiter >= 1.0:
                return voice
            np.copyto(work, np.frombuffer(voice, dtype="<i2").reshape(-1, 2), casting="unsafe")
        else:
            samples = np.frombuffer(music, dtype="<i2").reshape(-1, 2)
            if isinstance(duck, float):
                np.multiply(samples, np.float32(duck * music_gain), out=work, casting="unsafe")
            else:
                np.multiply(samples, (duck * np.float32(music_gain))[:, None], out=work, casting="unsafe")
            if voice is not SILENCE_FRAME:
                np.add(work, np.frombuffer(voice, dtype="<i2").reshape(-1, 2), out=work, casting="unsafe")
        peak = max(float(work.max()), -float(work.min()))
        target = min(1.0, LIMITER_CEILING / peak) if peak > 0 else 1.0
        if target < self.limiter:
            self.limiter = target  # attack at once: this very frame is brought under the ceiling
            work *= np.float32(target)
            self.limited_frames += 1
        elif self.limiter < 1.0:
            gains = np.minimum(self.limiter + self._limiter_step * self._ramp, target)
            self.limiter = float(gains[-1])
            work *= gains[:, None]
            self.limited_frames += 1
        # Every sample is within the ceiling (3% under full scale) now, so the cast cannot wrap around.
        return work.astype("<i2").tobytes()


def format_music_status(status: MusicStatus) -> str:
    """`!miku queue`: what is playing, what waits, the volume."""
    if status.state is MusicState.IDLE and not status.queued:
        return f"🎵 No music playing (volume {status.volume})."
    lines = []
    if status.current is not None:
        marker = "⏸️ Paused" if status.state is MusicState.PAUSED else "▶️ Playing"
        lines.append(f"{marker}: **{status.current}** (volume {status.volume})")
    for index, title in enumerate(status.queued[:10], start=1):
        lines.append(f"{index}. {title}")
    if len(status.queued) > 10:
        lines.append(f"... and {len(status.queued) - 10} more")
    return "\n".join(lines)
