"""RTP packets from Discord's voice UDP socket: parsing and transport decryption, the first step of hearing.

Discord wraps every Opus frame twice: DAVE end-to-end encryption (the frame itself, see voice_receive.py)
inside transport encryption (the RTP payload, negotiated on the voice WebSocket). This module undoes
the outer layer for the two modes Discord offers today, both "rtpsize" AEAD modes:

- `aead_xchacha20_poly1305_rtpsize` (PyNaCl), the one discord.py 2.7 negotiates;
- `aead_aes256_gcm_rtpsize` (the `cryptography` package), offered first by Discord's servers.

In both, the additional data is the RTP header up to and including the 4-byte header-extension preamble
(profile + length), the ciphertext holds the extension's values and then the Opus frame, and the last
4 bytes of the packet are a big-endian counter that is the start of the nonce (zero-padded to 24 or 12
bytes). The layout follows discord-ext-voice-recv's `rtp.py` and `reader.py` (the same approach, with the
extension parsing reduced to what the receive path needs: where the Opus frame starts).

`TransportCipher.seal` is the sender's side (what Discord's servers do), used by the tests and the
benchmark to build real packets; the bot only calls `open`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions

RTP_HEADER = 12
RTP_VERSION = 2
OPUS_PAYLOAD_TYPE = 0x78  # 120: what Discord uses for Opus audio
RTCP_TYPES = range(200, 205)  # sender report .. APP: second byte of an RTCP packet
NONCE_SUFFIX = 4
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
AES_GCM = "aead_aes256_gcm_rtpsize"
SUPPORTED_MODES = (XCHACHA, AES_GCM)
_HEADER = struct.Struct(">BBHII")


class PacketError(ValueError):
    """A datagram that is not a usable RTP packet (too short, wrong version, bad extension, RTCP)."""


class DecryptError(ValueError):
    """The transport layer did not authenticate: a wrong key, a forged or damaged packet."""


@dataclass(frozen=True)
class RtpPacket:
    """One parsed (still encrypted) RTP packet."""

    sequence: int
    timestamp: int
    ssrc: int
    payload_type: int
    marker: bool
    aad: bytes  # header incl. CSRCs and the extension preamble: authenticated, not encrypted
    ciphertext: bytes  # extension values + Opus frame, encrypted, with the AEAD tag
    nonce: bytes  # the 4-byte counter from the end of the packet
    extension_words: int  # 32-bit words of extension values at the start of the plaintext
    padding: bool


def is_rtcp(data: bytes) -> bool:
    return len(data) >= 2 and data[1] in RTCP_TYPES


def parse_rtp(data: bytes) -> RtpPacket:
    """Split a datagram into header, encrypted payload and nonce; `PacketError` for anything else."""
    if len(data) < RTP_HEADER + NONCE_SUFFIX:
        raise PacketError(f"datagram of {len(data)} bytes is too short for RTP")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise PacketError(f"RTP version {first >> 6}, expected 2")
    if second in RTCP_TYPES:
        raise PacketError("RTCP packet, not RTP")
    csrc_count = first & 0x0F
    offset = RTP_HEADER + 4 * csrc_count
    extension_words = 0
    if first & 0x10:
        if len(data) < offset + 4 + NONCE_SUFFIX:
            raise PacketError("RTP header extension is cut off")
        extension_words = struct.unpack_from(">H", data, offset + 2)[0]
        offset += 4  # rtpsize modes: the preamble is part of the authenticated header
    if len(data) < offset + NONCE_SUFFIX:
        raise PacketError("RTP packet has no payload")
    return RtpPacket(
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload_type=second & 0x7F,
        marker=bool(second & 0x80),
        aad=bytes(data[:offset]),
        ciphertext=bytes(data[offset:-NONCE_SUFFIX]),
        nonce=bytes(data[-NONCE_SUFFIX:]),
        extension_words=extension_words,
        padding=bool(first & 0x20),
    )


class TransportCipher:
    """Opens (and, for tests, seals) RTP payloads in one negotiated mode with the session's secret key."""

    def __init__(self, mode: str, secret_key: bytes | list[int]) -> None:
        if mode not in SUPPORTED_MODES:
            raise ValueError(f"transport mode {mode!r} is not supported (supported: {', '.join(SUPPORTED_MODES)})")
        key = bytes(secret_key)
        if len(key) != 32:
            raise ValueError(f"the secret key must be 32 bytes, got {len(key)}")
        self.mode = mode
        self._key = key
        self._aes = None
        if mode == AES_GCM:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aes = AESGCM(key)
        self._counter = 0

    def _nonce(self, suffix: bytes) -> bytes:
        return suffix + bytes((12 if self._aes is not None else 24) - NONCE_SUFFIX)

    def open(self, packet: RtpPacket) -> bytes:
        """The Opus frame (still DAVE-encrypted) of a packet; `DecryptError` when it does not authenticate."""
        nonce = self._nonce(packet.nonce)
        try:
            if self._aes is not None:
                plain = self._aes.decrypt(nonce, packet.ciphertext, packet.aad)
            else:
                plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(packet.ciphertext, packet.aad, nonce, self._key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise DecryptError(f"transport decryption failed ({self.mode})") from exc
        except Exception as exc:  # cryptography's InvalidTag
            raise DecryptError(f"transport decryption failed ({self.mode})") from exc
        start = 4 * packet.extension_words
        if start > len(plain):
            raise PacketError("RTP header extension is longer than the payload")
        end = len(plain)
        if packet.padding and end > start:
            pad = plain[-1]
            if pad == 0 or pad > end - start:
                raise PacketError("bad RTP padding")
            end -= pad
        return plain[start:end]

    def seal(self, sequence: int, timestamp: int, ssrc: int, frame: bytes, *, extension: bytes = b"",
             marker: bool = False) -> bytes:
        """A whole packet as a sender builds it (tests and benchmarks); `extension` is whole 32-bit words."""
        if len(extension) % 4:
            raise ValueError("the header extension must be whole 32-bit words")
        first = 0x80 | (0x10 if extension else 0)
        header = _HEADER.pack(first, (0x80 if marker else 0) | OPUS_PAYLOAD_TYPE, sequence & 0xFFFF,
                              timestamp & 0xFFFFFFFF, ssrc)
        if extension:
            header += b"\xbe\xde" + struct.pack(">H", len(extension) // 4)
        suffix = struct.pack(">I", self._counter)
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        nonce = self._nonce(suffix)
        plain = extension + frame
        if self._aes is not None:
            sealed = self._aes.encrypt(nonce, plain, header)
        else:
            sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plain, header, nonce, self._key)
        return header + sealed + suffix
