"""The `WS /v1/voice` wire protocol: parsing what clients send, serialising what the graph sends.

Kept apart from the WebSocket transport so every rule about bad input (non-JSON, unknown types, empty or
huge text, control characters, invalid UTF-8, oversized or deeply nested messages, non-finite numbers)
is tested without a server, and so the CLI and the WebSocket produce byte-identical output.

`parse_json_message` is the one door every client JSON message goes through (`/v1/voice`, `/ws/stream`,
on Serve's proxy and on the direct port): its size is checked before anything else, its nesting before
`json.loads` could recurse, and NaN, Infinity and numbers beyond a float's range are refused, so nothing
a client sends can raise past the parser or cost more than a bounded, linear amount of work.
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from graph.voice.pipeline import (
    AudioFrames,
    ChunkSpoken,
    PipelineEvent,
    StageLostNotice,
    UtteranceEnded,
    UtteranceFailed,
    UtteranceMode,
    UtteranceStarted,
)
from graph.voice.types import MAX_SPEAKING_RATE, MIN_SPEAKING_RATE

MAX_ID_CHARS = 128
# a prompt is at most voice.max_prompt_chars (4000) characters: even fully \\u-escaped that is ~48 kB of
# JSON, so 64 KiB holds every valid message while keeping the work on a bad one small
MAX_MESSAGE_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16  # the protocol's messages are flat objects; 16 leaves room and stops recursion
MAX_NUMBER_DIGITS = 32  # longer integers are no semitone, count or id anyone means
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"', re.DOTALL)  # possessive: linear, no backtracking
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_BIDI_AND_INVISIBLE = re.compile("[\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


@dataclass(frozen=True)
class SpeakRequest:
    id: str
    mode: UtteranceMode
    text: str
    session_id: str | None = None
    pitch_shift: float | None = None
    speaking_rate: float | None = None  # None: the session's mood's rate (1.0 without one)


@dataclass(frozen=True)
class InterruptRequest:
    pass


class ProtocolError(ValueError):
    """A client message the graph cannot act on; becomes an `error` event, the connection stays open."""

    def __init__(self, message: str, request_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.request_id = request_id


def sanitize_text(text: str) -> str:
    """Remove control characters, lone surrogates and invisible direction marks; keep newlines as spaces."""
    text = _BIDI_AND_INVISIBLE.sub("", text)
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc":
            if char in "\n\t\r":
                kept.append(" " if char != "\n" else "\n")
            continue
        if category == "Cs":
            continue
        kept.append(char)
    return "".join(kept)


def is_finite_number(value: Any) -> bool:
    """A real int or float a computation can use (bool is not a number here; NaN and inf are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def json_depth(text: str) -> int:
    """How deeply `text`'s arrays and objects nest, ignoring brackets inside strings; linear, no recursion."""
    depth = deepest = 0
    for bracket in _NOT_A_BRACKET.sub("", _JSON_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _refuse_constant(name: str) -> float:
    raise ProtocolError(f"numbers must be finite: {name} is not accepted")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ProtocolError(f"number with {len(text)} digits is out of range")
    return int(text)


def parse_json_message(raw: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """One client message as a JSON object, or ProtocolError: too large, too deep, not JSON, non-finite."""
    size = len(raw)  # characters of a text message; never fewer than its UTF-8 bytes / 4
    if size > max_bytes:
        raise ProtocolError(f"message is too large: {size} bytes, the limit is {max_bytes}")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="ignore")  # invalid UTF-8 is dropped, not guessed at
    if raw.count("[") + raw.count("{") > max_depth and json_depth(raw) > max_depth:
        raise ProtocolError(f"message nests deeper than {max_depth} levels")
    try:
        message = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except json.JSONDecodeError as error:
        raise ProtocolError(f"message is not JSON: {error.msg} at position {error.pos}") from None
    except RecursionError:  # unreachable after the depth check; kept so no input can close the connection
        raise ProtocolError(f"message nests deeper than {max_depth} levels") from None
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object")
    return message


def parse_pitch_shift(value: Any, request_id: str | None = None) -> float | None:
    """A per-utterance pitch shift in semitones (None = the backend's own), finite and within -24..24."""
    if value is None:
        return None
    if not is_finite_number(value) or abs(value) > 24:
        raise ProtocolError("'pitch_shift' must be a finite number of semitones within -24..24", request_id)
    return float(value)


def parse_speaking_rate(value: Any, request_id: str | None = None) -> float | None:
    """A per-utterance speaking rate (1.0 = normal, None = the mood's), finite and within the moods' range."""
    if value is None:
        return None
    if not is_finite_number(value) or not MIN_SPEAKING_RATE <= value <= MAX_SPEAKING_RATE:
        raise ProtocolError(f"'speaking_rate' must be a finite number within {MIN_SPEAKING_RATE:g}..{MAX_SPEAKING_RATE:g} "
                            "(1.0 = normal pace)", request_id)
    return float(value)


def parse_client_message(raw: str | bytes, max_text_chars: int = 4000) -> SpeakRequest | InterruptRequest:
    """Parse one client message or raise ProtocolError saying exactly what is wrong."""
    message = parse_json_message(raw)
    kind = message.get("type")
    if kind == "interrupt":
        return InterruptRequest()
    request_id = message.get("id")
    if kind not in ("prompt", "say"):
        raise ProtocolError(
            f"unknown message type {kind!r}; expected 'prompt', 'say' or 'interrupt'",
            request_id if isinstance(request_id, str) else None,
        )
    if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > MAX_ID_CHARS:
        raise ProtocolError(f"'id' must be a non-empty string of at most {MAX_ID_CHARS} characters")
    text = message.get("text")
    if not isinstance(text, str):
        raise ProtocolError("'text' must be a string", request_id)
    text = sanitize_text(text)
    if len(text) > max_text_chars:
        raise ProtocolError(
            f"text is too long: {len(text)} characters, the limit is {max_text_chars}", request_id
        )
    if not text.strip():
        raise ProtocolError("text is empty: there is nothing to say", request_id)
    session_id = message.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise ProtocolError("'session_id' must be a string", request_id)
    pitch_shift = parse_pitch_shift(message.get("pitch_shift"), request_id)
    speaking_rate = parse_speaking_rate(message.get("speaking_rate"), request_id)
    return SpeakRequest(request_id, UtteranceMode(kind), text, session_id, pitch_shift, speaking_rate)


def error_message(message: str, request_id: str | None, stage: str | None = None, backend: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "error", "id": request_id, "message": message}
    if stage:
        event["stage"] = stage
    if backend:
        event["backend"] = backend
    return event


def to_wire(event: PipelineEvent) -> bytes | dict[str, Any]:
    """A pipeline event as the WebSocket message the contract defines (bytes are whole frames)."""
    if isinstance(event, AudioFrames):
        return event.pcm
    if isinstance(event, UtteranceStarted):
        return {"type": "utterance.start", "id": event.utterance_id}
    if isinstance(event, ChunkSpoken):
        return {"type": "chunk", "id": event.utterance_id, "index": event.index, "text": event.text}
    if isinstance(event, StageLostNotice):
        return {"type": "stage.lost", "id": event.utterance_id, "stage": event.stage, "backend": event.backend,
                "message": event.message}
    if isinstance(event, UtteranceFailed):
        wire = error_message(event.message, event.utterance_id, event.stage, event.backend)
        if event.text:
            wire["text"] = event.text  # the whole answer, for the client's text fallback
        return wire
    if isinstance(event, UtteranceEnded):
        return {
            "type": "utterance.end",
            "id": event.utterance_id,
            "status": event.status.value,
            "timings": event.timings_ms,
            "frames": event.frames,
            "chunks": event.chunks,
            "underruns": event.underruns,
        }
    raise TypeError(f"not a pipeline event: {event!r}")
