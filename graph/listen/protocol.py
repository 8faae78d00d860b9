"""The `WS /v1/listen` wire protocol (docs/api.md): what clients send, checked before anything acts on it.

Client -> server: JSON text messages `start`, `speaker`, `speaker_left`, `speaking`, and binary frames of
an 8-byte little-endian unsigned Discord user id followed by 16 kHz mono s16le PCM. JSON goes through the
voice protocol's bounded parser (size first, nesting, finite numbers); a binary frame is refused when it
is too large, has no id, or an odd number of PCM bytes. Every refusal is a `ListenProtocolError` that the
session answers with one `error` message; the connection stays open.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graph.voice.protocol import ProtocolError, parse_json_message, sanitize_text

USER_ID_BYTES = 8
MAX_ID_CHARS = 32  # Discord snowflakes are 17-20 digits


class ListenProtocolError(ValueError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Start:
    guild_id: str
    channel_id: str


@dataclass(frozen=True)
class Speaker:
    user_id: int
    name: str


@dataclass(frozen=True)
class SpeakerLeft:
    user_id: int


@dataclass(frozen=True)
class MikuSpeaking:
    value: bool


@dataclass(frozen=True)
class AudioFrame:
    user_id: int
    pcm: np.ndarray  # int16, 16 kHz mono


ClientMessage = Start | Speaker | SpeakerLeft | MikuSpeaking


def _id_string(message: dict, key: str) -> str:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).isdigit() \
            or not 0 < len(str(value)) <= MAX_ID_CHARS:
        raise ListenProtocolError(f"{message.get('type')}: {key} must be a Discord id (a string of digits)")
    return str(value)


def _user_id(message: dict) -> int:
    value = int(_id_string(message, "user_id"))
    if value >= 2 ** 64:
        raise ListenProtocolError(f"{message.get('type')}: user_id must fit in 64 bits")
    return value


def parse_text(raw: str | bytes, max_bytes: int, max_name_chars: int) -> ClientMessage:
    try:
        message = parse_json_message(raw, max_bytes=max_bytes)
    except ProtocolError as error:
        raise ListenProtocolError(error.message) from None
    kind = message.get("type")
    if kind == "start":
        return Start(_id_string(message, "guild_id"), _id_string(message, "channel_id"))
    if kind == "speaker":
        name = message.get("name")
        if not isinstance(name, str):
            raise ListenProtocolError("speaker: name must be a string")
        name = " ".join(sanitize_text(name).replace(":", " ").split())[:max_name_chars]
        if not name:
            raise ListenProtocolError("speaker: name is empty")
        return Speaker(_user_id(message), name)
    if kind == "speaker_left":
        return SpeakerLeft(_user_id(message))
    if kind == "speaking":
        value = message.get("value")
        if not isinstance(value, bool):
            raise ListenProtocolError("speaking: value must be true or false")
        return MikuSpeaking(value)
    raise ListenProtocolError(f"unknown message type {kind!r}; expected start, speaker, speaker_left or speaking")


def parse_audio(raw: bytes, max_bytes: int) -> AudioFrame:
    if len(raw) > max_bytes:
        raise ListenProtocolError(f"audio frame of {len(raw)} bytes is over the limit of {max_bytes}")
    if len(raw) < USER_ID_BYTES:
        raise ListenProtocolError("audio frame shorter than its 8-byte user id")
    if (len(raw) - USER_ID_BYTES) % 2:
        raise ListenProtocolError("audio frame has an odd number of PCM bytes (s16le expected)")
    user_id = int.from_bytes(raw[:USER_ID_BYTES], "little", signed=False)
    return AudioFrame(user_id, np.frombuffer(raw, dtype="<i2", offset=USER_ID_BYTES).astype(np.int16))


def audio_frame(user_id: int, pcm: bytes | np.ndarray) -> bytes:
    """A client's binary frame (for clients, tests and benchmarks)."""
    data = pcm.astype("<i2").tobytes() if isinstance(pcm, np.ndarray) else bytes(pcm)
    return int(user_id).to_bytes(USER_ID_BYTES, "little", signed=False) + data
