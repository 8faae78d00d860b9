"""The audit log's entries: every session start, end, expiry and queue change, and every change made in
the admin panel (`ADMIN_CHANGE`, with the user who made it), in order."""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class AuditAction(enum.Enum):
    SESSION_STARTED = "session_started"
    SESSION_ENDED = "session_ended"
    SESSION_EXPIRED = "session_expired"
    FEATURES_RECONCILED = "features_reconciled"
    MESSAGE_QUEUED = "message_queued"
    MESSAGES_DROPPED = "messages_dropped"
    MESSAGES_ACKED = "messages_acked"
    ADMIN_CHANGE = "admin_change"  # detail: user, change (what was done) and its arguments


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: float
    action: AuditAction
    session_id: str | None
    features: tuple[str, ...]  # features whose blackout switched on or off
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "action": self.action.value,
            "session_id": self.session_id,
            "features": list(self.features),
            "detail": dict(self.detail),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        return cls(
            seq=data["seq"],
            at=data["at"],
            action=AuditAction(data["action"]),
            session_id=data["session_id"],
            features=tuple(data["features"]),
            detail=data["detail"],
        )


@dataclass(frozen=True)
class AuditPage:
    """One page of the audit log; `next_after_seq` is set when more entries follow."""

    entries: tuple[AuditEntry, ...]
    next_after_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [e.to_dict() for e in self.entries], "next_after_seq": self.next_after_seq}
