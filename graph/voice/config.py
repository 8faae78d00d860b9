"""Settings of the voice path (the ingress's part of the app config), validated with clear errors."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

DEFAULT_SYSTEM_PROMPT = (
    "You are Hatsune Miku, a cheerful virtual singer, talking out loud in a Discord voice channel. "
    "Answer in one to three short spoken sentences. No lists, no markdown, no emoji, no stage directions."
)

STAGE_TRANSPORTS = ("direct", "grpc", "actor")


@dataclass(frozen=True)
class VoiceConfig:
    token: str | None = None
    token_file: str = ".miku/token"
    max_prompt_chars: int = 4000
    # /ws/stream: characters one utterance may buffer between flushes (tokens past it are refused);
    # twice a long LLM answer, and small enough that segmenting it never holds the event loop long
    max_stream_chars: int = 8000
    max_pending_prompts: int = 16
    max_tokens: int = 200
    stage_timeout_s: float = 30.0
    # How long a session prompt waits for the brain (persona, mood, history) before the default prompt
    # is used instead: the user's answer must not wait on a slow brain.
    session_prompt_timeout_s: float = 2.0
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # How the ingress reaches the model stages: "direct" keeps a WebSocket open to each stage replica
    # (found through Serve; a fraction of a Serve call's latency per hop, but Serve's router does not
    # spread its calls); "grpc" sends each call through Serve's handle straight to the replica's gRPC
    # server; "actor" is Ray's actor-task path.
    stage_transport: str = "direct"
    # The ingress also serves WS /v1/voice and /ws/stream on a port of its own (no Serve proxy on the
    # voice path); clients find it with GET /v1/voice/direct. Port 0: any free port.
    direct_voice: bool = True
    direct_host: str = "127.0.0.1"
    direct_port: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> VoiceConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"voice config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        config = cls(**data)
        for name in ("max_prompt_chars", "max_stream_chars", "max_pending_prompts", "max_tokens"):
            value = getattr(config, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"voice config: {name} must be a positive integer, got {value!r}")
        if config.stage_transport not in STAGE_TRANSPORTS:
            raise ValueError(f"voice config: stage_transport must be one of {list(STAGE_TRANSPORTS)}, got {config.stage_transport!r}")
        if not isinstance(config.direct_voice, bool):
            raise ValueError(f"voice config: direct_voice must be true or false, got {config.direct_voice!r}")
        if isinstance(config.direct_port, bool) or not isinstance(config.direct_port, int) or not 0 <= config.direct_port <= 65535:
            raise ValueError(f"voice config: direct_port must be a port number (0 = any free port), got {config.direct_port!r}")
        for name in ("stage_timeout_s", "session_prompt_timeout_s"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"voice config: {name} must be a positive number of seconds, got {value!r}")
        return config
