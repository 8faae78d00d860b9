"""Voice sessions as the controller keeps them, and what starting and ending one returns."""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from graph.controller.features import CheckResult


class SessionState(enum.Enum):
    ACTIVE = "active"
    ENDED = "ended"
    EXPIRED = "expired"


@dataclass(frozen=True)
class SessionRequest:
    guild_id: str
    voice_channel_id: str
    text_channel_id: str
    user_id: str
    persona: str | None = None
    request_id: str | None = None  # idempotency key: a retried start returns the same session


@dataclass(frozen=True)
class Session:
    session_id: str
    guild_id: str
    voice_channel_id: str
    text_channel_id: str
    user_id: str
    persona: str | None
    request_id: str | None
    started_at: float
    last_heartbeat: float
    lease_s: float
    state: SessionState = SessionState.ACTIVE
    ended_at: float | None = None

    @property
    def expires_at(self) -> float:
        return self.last_heartbeat + self.lease_s

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        out["expires_at"] = self.expires_at
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Session:
        data = {k: v for k, v in data.items() if k != "expires_at"}
        data["state"] = SessionState(data["state"])
        return cls(**data)


@dataclass(frozen=True)
class SessionStarted:
    session: Session
    blackouts: tuple[CheckResult, ...]  # every feature as it is now
    reused: bool = False  # a retried request got its existing session back

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session.session_id,
            "lease_s": self.session.lease_s,
            "expires_at": self.session.expires_at,
            "reused": self.reused,
            "blackouts": [b.to_dict() for b in self.blackouts if b.effect is not None],
        }


@dataclass(frozen=True)
class SessionEnded:
    session_id: str
    ended: bool  # False: it had already ended (a no-op)
    state: SessionState
    message: str
    restored: tuple[str, ...] = ()  # features that came back on
    replay_pending: int = 0  # queued messages waiting for the client to replay

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "ended": self.ended,
            "state": self.state.value,
            "message": self.message,
            "restored": list(self.restored),
            "replay_pending": self.replay_pending,
        }
