"""The far side of Discord voice, for tests and benchmarks: speakers whose audio reaches the bot's receive path.

- `DaveGroup` forms a real DAVE MLS group between `davey` sessions on one machine. Discord's voice server is
  the group's *external sender* (it proposes who joins); here a local P-256 key plays that part: it signs
  MLS `Add` proposals (RFC 9420 PublicMessage from an external sender, `SignWithLabel("FramedContentTBS")`)
  for the members' key packages, the bot's session commits them (as in Discord, a member commits), and
  the others process the Welcome or the commit. Every session then holds the real epoch secrets:
  `encrypt_opus` on a speaker's session and `decrypt` on the bot's are the real DAVE frame layer.
- `speech_48k(text)` speaks a sentence with espeak-ng and returns 48 kHz stereo s16 samples.
- `Speaker` encodes 20 ms frames with libopus (`discord.opus.Encoder`), DAVE-encrypts them with its own
  session, and seals them into RTP with the transport mode (`TransportCipher.seal`), as Discord delivers them.
"""
from __future__ import annotations

import io
import struct
import subprocess
import wave
from dataclasses import dataclass, field

import davey
import numpy as np
import soxr
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bot_client.voice_rtp import TransportCipher

FRAME_SAMPLES = 960  # 20 ms at 48 kHz, per channel


def _varint(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return struct.pack(">H", 0x4000 | n)
    return struct.pack(">I", 0x80000000 | n)


def _vec(data: bytes) -> bytes:
    return _varint(len(data)) + data


class DaveGroup:
    """A DAVE group on one channel: the bot's session and any number of speakers' sessions."""

    def __init__(self, channel_id: int, bot_user_id: int) -> None:
        self.channel_id = channel_id
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = self._key.public_key().public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.UncompressedPoint)
        # ExternalSender: signature key, then a basic credential (type 1) with a one-byte identity.
        self.external_sender = _vec(public) + struct.pack(">H", 1) + _vec(b"\x00")
        self.bot = davey.DaveSession(1, bot_user_id, channel_id)
        self.bot.set_external_sender(self.external_sender)
        self.bot.get_serialized_key_package()
        self.members: dict[int, davey.DaveSession] = {}

    def _proposal(self, epoch: int, key_package: bytes) -> bytes:
        framed = (_vec(struct.pack(">Q", self.channel_id)) + struct.pack(">Q", epoch)
                  + b"\x02" + struct.pack(">I", 0)  # sender: external, index 0
                  + _vec(b"")  # authenticated data
                  + b"\x02" + struct.pack(">H", 1) + key_package)  # content: proposal, Add
        mls10_public = struct.pack(">HH", 1, 1)  # version mls10, wire format public message
        signed = _vec(b"MLS 1.0 FramedContentTBS") + _vec(mls10_public + framed)
        signature = self._key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return mls10_public + framed + _vec(signature)

    def add(self, *user_ids: int) -> None:
        """Propose these users, let the bot commit; everyone moves to the next epoch (a DAVE transition)."""
        epoch = self.bot.epoch or 0
        joining = {}
        proposals = b""
        for user_id in user_ids:
            session = davey.DaveSession(1, user_id, self.channel_id)
            session.set_external_sender(self.external_sender)
            proposals += self._proposal(epoch, session.get_serialized_key_package())
            joining[user_id] = session
        expected = [*self.members, *joining]
        result = self.bot.process_proposals(davey.ProposalsOperationType.append, _vec(proposals), expected)
        assert result is not None and result.welcome is not None
        self.bot.process_commit(result.commit)
        for session in self.members.values():
            # Every member gets the voice server's proposals; the commit that wins is the bot's.
            session.process_proposals(davey.ProposalsOperationType.append, _vec(proposals), expected)
            session.process_commit(result.commit)
        for session in joining.values():
            session.process_welcome(result.welcome)
        self.members.update(joining)


def speech_48k(text: str, *, voice: str = "en-us", words_per_minute: int = 160) -> np.ndarray:
    """espeak-ng speaking `text`: int16 samples, shape (n, 2), 48 kHz, padded to whole 20 ms frames."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        mono = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    resampled = soxr.resample(mono.astype(np.float32) / 32768.0, rate, 48000)
    pad = (-len(resampled)) % FRAME_SAMPLES
    resampled = np.concatenate([resampled, np.zeros(pad, dtype=resampled.dtype)])
    samples = np.clip(resampled * 32767.0, -32768, 32767).astype(np.int16)
    return np.stack([samples, samples], axis=1)


def resample_to_16k_mono(stereo48: np.ndarray) -> np.ndarray:
    mono = stereo48.astype(np.float32).mean(axis=1) / 32768.0
    return soxr.resample(mono, 48000, 16000)


@dataclass
class Speaker:
    """One member's outgoing audio: Opus, DAVE (their own session, or none) and transport encryption."""

    ssrc: int
    cipher: TransportCipher
    dave: davey.DaveSession | None = None
    sequence: int = 0
    timestamp: int = 0
    _encoder: object = field(default=None, repr=False)

    def opus_frames(self, stereo48: np.ndarray) -> list[bytes]:
        import discord.opus

        if not discord.opus.is_loaded():
            discord.opus._load_default()
        if self._encoder is None:
            self._encoder = discord.opus.Encoder()
        data = stereo48.astype("<i2").tobytes()
        step = FRAME_SAMPLES * 4
        return [self._encoder.encode(data[i:i + step], FRAME_SAMPLES) for i in range(0, len(data), step)]

    def packet(self, opus: bytes) -> bytes:
        """The next datagram: this frame DAVE-encrypted (unless it is the silence frame) and sealed."""
        frame = self.dave.encrypt_opus(opus) if self.dave is not None else opus
        datagram = self.cipher.seal(self.sequence, self.timestamp, self.ssrc, frame)
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        return datagram

    def packets(self, stereo48: np.ndarray, *, silence_tail: int = 5) -> list[bytes]:
        """Whole utterance as datagrams, ending with Discord's five Opus silence frames."""
        out = [self.packet(opus) for opus in self.opus_frames(stereo48)]
        out += [self.packet(b"\xf8\xff\xfe") for _ in range(silence_tail)]
        return out
