"""The `WS /v1/voice` wire protocol: parsing what clients send, serialising what the graph sends.

Kept apart from the WebSocket transport so every rule about bad input (non-JSON, unknown types, empty or
huge text, control characters, invalid UTF-8) is tested without a server, and so the CLI and the
WebSocket produce byte-identical output.
"""
from __future__ import annotations

import json
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

MAX_ID_CHARS = 128
_BIDI_AND_INVISIBLE = re.compile("[\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


@dataclass(frozen=True)
class SpeakRequest:
    id: str
    mode: UtteranceMode
    text: str
    session_id: str | None = None
    pitch_shift: float | None = None


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


def parse_client_message(raw: str | bytes, max_text_chars: int = 4000) -> SpeakRequest | InterruptRequest:
    """Parse one client message or raise ProtocolError saying exactly what is wrong."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="ignore")  # invalid UTF-8 is dropped, not guessed at
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ProtocolError(f"message is not JSON: {error.msg} at position {error.pos}") from None
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object")
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
    pitch_shift = message.get("pitch_shift")
    if pitch_shift is not None:
        if isinstance(pitch_shift, bool) or not isinstance(pitch_shift, (int, float)) or abs(pitch_shift) > 24:
            raise ProtocolError("'pitch_shift' must be a number of semitones within -24..24", request_id)
    return SpeakRequest(request_id, UtteranceMode(kind), text, session_id, pitch_shift)


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
