"""Hearing the voice channel: per-speaker 16 kHz mono PCM out of Discord's encrypted RTP datagrams.

Each datagram goes through the layers in the order Discord applied them, undone from the outside in:
transport decryption (`voice_rtp.TransportCipher`, the negotiated AEAD mode), then, for the speaker the
packet's SSRC belongs to, DAVE end-to-end decryption through the voice connection's `davey` session
(`decrypt(user_id, MediaType.audio, frame)`), then a small per-speaker reorder buffer, Opus decoding
(`discord.opus.Decoder`, with in-band FEC for a single lost packet and packet-loss concealment for a
few), a down-mix to mono and soxr resampling from 48 kHz to 16 kHz.

Discord stops sending while someone is silent (after five Opus silence frames), so a speaker's stream is
topped up with real-time silence for `silence_fill_ms` after their last packet: the graph's VAD then
sees the pause that ends a turn, instead of a stream that simply stops.

Nothing here raises on bad input: garbage, truncated packets, unknown SSRCs, frames DAVE refuses (an
epoch change mid-speech) and Opus that does not decode are counted in `ReceiveStats`, logged (the first
time, then every `LOG_EVERY`-th), and the session goes on. The class is plain: `feed(datagram, now)` and
`tick(now)` run on one worker thread (`discord_receive.py`); mapping calls may come from the event loop,
so everything is under one lock. The clock is injected, so tests drive it packet by packet.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import soxr

from .voice_rtp import OPUS_PAYLOAD_TYPE, DecryptError, PacketError, TransportCipher, is_rtcp, parse_rtp

log = logging.getLogger(__name__)

OPUS_SILENCE = b"\xf8\xff\xfe"  # Discord's Opus silence frame; DAVE passes it through unencrypted
IN_RATE = 48000
OUT_RATE = 16000
FRAME_S = 0.020
IN_FRAME_SAMPLES = 960  # per channel, 20 ms at 48 kHz
OUT_FRAME_BYTES = 640  # 20 ms of s16le mono at 16 kHz
LOG_EVERY = 500


@dataclass(frozen=True)
class ReceiveConfig:
    """Knobs of the receive path (the bot config's `listen:` section sets the first three)."""

    reorder_depth: int = 3  # packets held behind a gap before it is declared lost (3: 60 ms of jitter)
    max_hold_ms: float = 60.0  # ... or this long, whichever comes first
    silence_fill_ms: float = 1000.0  # real-time silence after a speaker's last packet (lets the VAD end the turn)
    fill_after_ms: float = 200.0  # no packet for this long: the speaker paused (not a network hiccup)
    max_conceal_frames: int = 5  # a longer gap is not filled with concealment (it is a pause, or a reset)
    max_sequence_jump: int = 100  # a jump this big means the sender restarted: start over, conceal nothing
    unknown_ssrc_packets: int = 25  # packets kept per SSRC not yet mapped to a user (0.5 s)
    max_unknown_ssrcs: int = 16
    max_speakers: int = 64


@dataclass
class ReceiveStats:
    """What the receive path saw; every bad input has its counter."""

    datagrams: int = 0
    rtcp: int = 0
    malformed: int = 0  # not RTP, cut off, bad extension or padding
    other_payload: int = 0  # RTP that is not Opus audio (video, probes)
    no_key: int = 0  # before the voice WebSocket handed over the secret key
    transport_failures: int = 0  # did not authenticate: forged, damaged, or a stale key
    unknown_ssrc: int = 0  # held until the SSRC's user is known
    unknown_ssrc_dropped: int = 0  # never mapped in time
    ignored: int = 0  # bots, Miku herself, people outside the channel
    dave_failures: int = 0  # DAVE refused the frame (no key yet, an epoch change, not encrypted)
    opus_failures: int = 0  # garbage or truncated Opus
    late_or_duplicate: int = 0
    reordered: int = 0  # arrived after a later packet and still played in order
    lost: int = 0  # sequence numbers that never came
    fec_recovered: int = 0
    concealed_frames: int = 0  # packet-loss concealment frames
    silence_packets: int = 0
    frames_decoded: int = 0
    fill_frames: int = 0  # silence added after a speaker's last packet
    resets: int = 0  # sequence jumps that restarted a speaker's stream
    speakers_started: int = 0
    speakers_left: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class DaveGate:
    """The DAVE step: the voice connection's current `davey` session, looked up for every frame.

    discord.py replaces or re-initialises the session on every DAVE transition, so the session is never
    kept here. `session()` returning None means DAVE is not in use on this connection (protocol version
    0): frames are plain Opus then.
    """

    def __init__(self, session: Callable[[], Any | None]) -> None:
        self._session = session
        self._media = None

    def open(self, user_id: int, frame: bytes) -> bytes:
        session = self._session()
        if session is None or frame == OPUS_SILENCE:
            return frame
        if self._media is None:
            import davey

            self._media = davey.MediaType.audio
        return session.decrypt(user_id, self._media, frame)


def _plain_dave() -> None:
    return None


@dataclass
class _Held:
    frame: bytes | None  # None: the packet came but could not be decrypted (concealed when its turn comes)
    arrived: float


@dataclass
class _Speaker:
    """One SSRC's audio: reorder buffer, Opus decoder and resampler (the decoder keeps state per stream)."""

    user_id: int
    ssrc: int
    decoder: Any
    resampler: Any
    held: dict[int, _Held] = field(default_factory=dict)
    next_seq: int | None = None
    last_packet_at: float = 0.0
    emitted_until: float = 0.0  # stream time (on the injected clock) covered by audio sent so far
    fill_left: int = 0  # silence frames still owed after the last packet
    highest: int = -1
    jump: tuple[int, bytes | None, float] | None = None  # a far-off packet: a restart if the next follows


class VoiceReceiver:
    """Datagrams in, `on_audio(user_id, pcm16k_mono_s16le)` out, one 20 ms frame at a time.

    `on_speaker(user_id)` is called when a user's first audio of a stream is about to be delivered (the
    uplink announces them), `on_speaker_left(user_id)` when they were removed. All callbacks run on the
    thread that calls `feed`/`tick`/`remove_user` and must only hand data on.
    """

    def __init__(
        self,
        *,
        on_audio: Callable[[int, bytes], None],
        on_speaker: Callable[[int], None] | None = None,
        on_speaker_left: Callable[[int], None] | None = None,
        dave: DaveGate | None = None,
        config: ReceiveConfig = ReceiveConfig(),
        decoder_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self.stats = ReceiveStats()
        self._on_audio = on_audio
        self._on_speaker = on_speaker
        self._on_speaker_left = on_speaker_left
        self.dave = dave or DaveGate(_plain_dave)
        self._decoder_factory = decoder_factory or _opus_decoder
        self._lock = threading.RLock()
        self._cipher: TransportCipher | None = None
        self._users: dict[int, int] = {}  # ssrc -> user id
        self._ignored: set[int] = set()  # ssrcs of users not listened to
        self._unknown: dict[int, deque[tuple[int, bytes, float]]] = {}
        self._speakers: dict[int, _Speaker] = {}  # ssrc -> stream
        self._logged: dict[str, int] = {}

    # --- setup (any thread) ---------------------------------------------------------------------

    def set_key(self, mode: str, secret_key: bytes | list[int]) -> None:
        """The transport mode and key from the voice WebSocket's session description (again on every resume)."""
        cipher = TransportCipher(mode, secret_key)
        with self._lock:
            self._cipher = cipher

    def map_ssrc(self, ssrc: int, user_id: int, *, listen: bool = True) -> None:
        """SSRC `ssrc` belongs to `user_id` (the SPEAKING op); `listen=False` for users never listened to."""
        with self._lock:
            old = self._users.get(ssrc)
            if old is not None and old != user_id:
                self._drop_stream(ssrc)
            self._users[ssrc] = user_id
            if not listen:
                self._ignored.add(ssrc)
                self._drop_stream(ssrc)
                self._unknown.pop(ssrc, None)
                return
            self._ignored.discard(ssrc)
            waiting = self._unknown.pop(ssrc, None)
            for sequence, frame, arrived in waiting or ():
                self._deliver(ssrc, user_id, sequence, frame, arrived)

    def remove_user(self, user_id: int) -> bool:
        """The user left the channel (or is no longer listened to): their streams end, nothing more is sent."""
        with self._lock:
            ssrcs = [s for s, u in self._users.items() if u == user_id]
            had_stream = any(s in self._speakers for s in ssrcs)
            for ssrc in ssrcs:
                self._drop_stream(ssrc)
                self._users.pop(ssrc, None)
                self._ignored.discard(ssrc)
            if had_stream:
                self.stats.speakers_left += 1
        if had_stream:
            if self._on_speaker_left is not None:
                self._on_speaker_left(user_id)
        return had_stream

    def users(self) -> dict[int, int]:
        with self._lock:
            return dict(self._users)

    # --- the receive path (worker thread) -------------------------------------------------------

    def feed(self, datagram: bytes, now: float) -> None:
        """One datagram from the voice socket. Never raises."""
        with self._lock:
            try:
                self._feed(datagram, now)
            except Exception:  # a bug must not end hearing for everyone: count it, say it once
                self._note("malformed", "unexpected error on a packet", exc_info=True)

    def _feed(self, datagram: bytes, now: float) -> None:
        stats = self.stats
        stats.datagrams += 1
        if is_rtcp(datagram):
            stats.rtcp += 1
            return
        try:
            packet = parse_rtp(datagram)
        except PacketError as exc:
            self._note("malformed", str(exc))
            return
        if packet.payload_type != OPUS_PAYLOAD_TYPE:
            stats.other_payload += 1
            return
        if packet.ssrc in self._ignored:
            stats.ignored += 1
            return
        if self._cipher is None:
            self._note("no_key", "audio before the secret key")
            return
        try:
            frame = self._cipher.open(packet)
        except DecryptError as exc:
            self._note("transport_failures", f"ssrc {packet.ssrc}: {exc}")
            return
        except PacketError as exc:
            self._note("malformed", str(exc))
            return
        user_id = self._users.get(packet.ssrc)
        if user_id is None:
            self._hold_unknown(packet.ssrc, packet.sequence, frame, now)
            return
        self._deliver(packet.ssrc, user_id, packet.sequence, frame, now)

    def _hold_unknown(self, ssrc: int, sequence: int, frame: bytes, now: float) -> None:
        queue = self._unknown.get(ssrc)
        if queue is None:
            if len(self._unknown) >= self.config.max_unknown_ssrcs:
                self._note("unknown_ssrc_dropped", f"too many unknown SSRCs; dropped a packet of {ssrc}")
                return
            queue = self._unknown[ssrc] = deque()
        if frame == OPUS_SILENCE:
            return  # nothing to hear, not worth a slot
        self._note("unknown_ssrc", f"packet from SSRC {ssrc} before its user is known")
        queue.append((sequence, frame, now))
        while len(queue) > self.config.unknown_ssrc_packets:
            queue.popleft()
            self.stats.unknown_ssrc_dropped += 1

    def _deliver(self, ssrc: int, user_id: int, sequence: int, frame: bytes, now: float) -> None:
        if frame == OPUS_SILENCE:
            self.stats.silence_packets += 1
            opus: bytes | None = frame
        else:
            try:
                opus = self.dave.open(user_id, frame)
            except Exception as exc:  # davey raises ValueError("Failed to decrypt: ...")
                self._note("dave_failures", f"user {user_id}: {exc}")
                opus = None
        speaker = self._speakers.get(ssrc)
        if speaker is None:
            if opus is None or opus == OPUS_SILENCE:
                return  # no stream starts on something we cannot hear
            if len(self._speakers) >= self.config.max_speakers:
                self._note("ignored", f"more than {self.config.max_speakers} speakers")
                return
            speaker = self._new_stream(ssrc, user_id, now)
        self._push(speaker, sequence, opus, now)

    def tick(self, now: float) -> None:
        """Called every ~20 ms: release packets held too long behind a gap, and top silent speakers up."""
        with self._lock:
            for speaker in list(self._speakers.values()):
                try:
                    if speaker.held and now - min(h.arrived for h in speaker.held.values()) >= self.config.max_hold_ms / 1000.0:
                        self._drain(speaker, now, force=True)
                    self._fill_silence(speaker, now)
                except Exception:
                    self._note("malformed", f"unexpected error on the stream of user {speaker.user_id}", exc_info=True)
            for ssrc, queue in list(self._unknown.items()):
                while queue and now - queue[0][2] > self.config.unknown_ssrc_packets * FRAME_S:
                    queue.popleft()
                    self.stats.unknown_ssrc_dropped += 1
                if not queue:
                    del self._unknown[ssrc]

    # --- one speaker's stream -------------------------------------------------------------------

    def _new_stream(self, ssrc: int, user_id: int, now: float) -> _Speaker:
        speaker = _Speaker(user_id, ssrc, self._decoder_factory(),
                           soxr.ResampleStream(IN_RATE, OUT_RATE, 1, dtype="int16", quality="HQ"),
                           emitted_until=now)
        self._speakers[ssrc] = speaker
        self.stats.speakers_started += 1
        if self._on_speaker is not None:
            self._on_speaker(user_id)
        return speaker

    def _drop_stream(self, ssrc: int) -> None:
        self._speakers.pop(ssrc, None)

    def _push(self, speaker: _Speaker, sequence: int, opus: bytes | None, now: float) -> None:
        config = self.config
        speaker.last_packet_at = now
        speaker.fill_left = int(config.silence_fill_ms / 20.0)
        if speaker.next_seq is None:
            speaker.next_seq = sequence
        ext = speaker.next_seq + ((sequence - speaker.next_seq + 0x8000) & 0xFFFF) - 0x8000
        if ext < speaker.next_seq or ext in speaker.held:
            self.stats.late_or_duplicate += 1
            return
        if ext - speaker.next_seq > config.max_sequence_jump:
            # One packet far off is a stray (dropped); the sender restarted when the next one follows it.
            behind = (sequence - speaker.jump[0]) & 0xFFFF if speaker.jump is not None else 0
            if speaker.jump is None or behind not in (1, 2, 3):
                speaker.jump = (sequence, opus, now)
                return
            self._note("resets", f"user {speaker.user_id}: sequence jumped by {ext - speaker.next_seq}")
            self._drain(speaker, now, force=True, conceal=False)
            _, first, arrived = speaker.jump
            speaker.jump = None
            speaker.next_seq = speaker.highest = ext - behind
            speaker.held[ext - behind] = _Held(first, arrived)
        elif speaker.jump is not None:
            speaker.jump = None
            self.stats.late_or_duplicate += 1  # the stray never had a follower
        if ext < speaker.highest:
            self.stats.reordered += 1
        speaker.highest = max(speaker.highest, ext)
        speaker.held[ext] = _Held(opus, now)
        self._drain(speaker, now)

    def _drain(self, speaker: _Speaker, now: float, *, force: bool = False, conceal: bool = True) -> None:
        config = self.config
        while speaker.held:
            assert speaker.next_seq is not None
            item = speaker.held.pop(speaker.next_seq, None)
            if item is not None:
                speaker.next_seq += 1
                self._decode(speaker, item.frame, now)
                continue
            oldest = min(speaker.held)
            waited = now - min(h.arrived for h in speaker.held.values())
            if not (force or len(speaker.held) >= config.reorder_depth or waited >= config.max_hold_ms / 1000.0):
                return
            missing = oldest - speaker.next_seq
            self.stats.lost += missing
            if conceal:
                self._conceal(speaker, missing, speaker.held[oldest].frame, now)
            speaker.next_seq = oldest

    def _conceal(self, speaker: _Speaker, missing: int, following: bytes | None, now: float) -> None:
        if missing > self.config.max_conceal_frames:
            return  # a long gap: a pause or a glitch, not something to paper over
        for _ in range(missing - 1):
            self._plc(speaker, now)
        if following is not None and following != OPUS_SILENCE:
            try:
                pcm = speaker.decoder.decode(following, fec=True)
            except Exception:
                pcm = b""
            if pcm:
                self.stats.fec_recovered += 1
                self._emit(speaker, pcm, now)
                return
        self._plc(speaker, now)

    def _plc(self, speaker: _Speaker, now: float) -> None:
        try:
            pcm = speaker.decoder.decode(None, fec=False)
        except Exception:
            pcm = bytes(IN_FRAME_SAMPLES * 4)
        self.stats.concealed_frames += 1
        self._emit(speaker, pcm, now)

    def _decode(self, speaker: _Speaker, opus: bytes | None, now: float) -> None:
        if opus is None:  # arrived, but DAVE refused it: conceal its 20 ms
            self._plc(speaker, now)
            return
        try:
            pcm = speaker.decoder.decode(opus, fec=False)
        except Exception as exc:  # discord.opus.OpusError: corrupted or truncated
            self._note("opus_failures", f"user {speaker.user_id}: {exc}")
            self._plc(speaker, now)
            return
        self.stats.frames_decoded += 1
        self._emit(speaker, pcm, now)

    def _fill_silence(self, speaker: _Speaker, now: float) -> None:
        # Only once the stream went quiet, then in real time from where its audio ended.
        if speaker.fill_left <= 0 or now - speaker.last_packet_at < self.config.fill_after_ms / 1000.0:
            return
        due = int((now - speaker.emitted_until) / FRAME_S)
        count = min(due, speaker.fill_left)
        if count <= 0:
            return
        speaker.fill_left -= count
        self.stats.fill_frames += count
        self._emit(speaker, bytes(IN_FRAME_SAMPLES * 4 * count), now, advance=count * FRAME_S)

    def _emit(self, speaker: _Speaker, pcm48_stereo: bytes, now: float, advance: float | None = None) -> None:
        samples = np.frombuffer(pcm48_stereo, dtype="<i2")
        if samples.size < 2:
            return
        stereo = samples[: samples.size - samples.size % 2].reshape(-1, 2).astype(np.int32)
        mono = ((stereo[:, 0] + stereo[:, 1]) // 2).astype(np.int16)
        out = speaker.resampler.resample_chunk(mono)
        duration = advance if advance is not None else mono.size / IN_RATE
        speaker.emitted_until = max(speaker.emitted_until + duration, now - 2 * FRAME_S)
        if out.size:
            self._on_audio(speaker.user_id, out.astype("<i2").tobytes())

    # --- bookkeeping ----------------------------------------------------------------------------

    def _note(self, counter: str, message: str, *, exc_info: bool = False) -> None:
        value = getattr(self.stats, counter) + 1
        setattr(self.stats, counter, value)
        if value == 1 or value % LOG_EVERY == 0:
            log.warning("voice receive: %s (%s: %d so far)", message, counter, value, exc_info=exc_info)


def _opus_decoder() -> Any:
    import discord.opus

    if not discord.opus.is_loaded():
        discord.opus._load_default()
    return discord.opus.Decoder()
