"""The text queue's values: messages queued during a session, replayed in order and acknowledged by id."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from graph.controller.limits import MAX_PAGE_BYTES, encoded_size, take_within_budget


@dataclass(frozen=True)
class IncomingMessage:
    """An ordinary text-channel message the client wants handled (now, or queued during a session)."""

    channel_id: str
    author_id: str
    content: str
    message_id: str | None = None  # Discord id: a retried enqueue of the same message is not stored twice
    guild_id: str | None = None
    sent_at: float | None = None  # Discord timestamp (epoch s); defaults to the controller's clock
    event: Mapping[str, Any] = field(default_factory=dict)  # the event as the client sent it, handed back verbatim


@dataclass(frozen=True)
class QueuedMessage:
    queue_id: int
    channel_id: str
    author_id: str
    content: str
    message_id: str | None
    guild_id: str | None
    sent_at: float
    queued_at: float
    event: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["event"] = dict(self.event)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueuedMessage:
        return cls(**data)

    @cached_property
    def encoded_bytes(self) -> int:
        """Its size as JSON in an answer, for paging by bytes (computed once; the message is frozen)."""
        return encoded_size(self.to_dict())


@dataclass(frozen=True)
class EnqueueResult:
    queued: bool  # False: no session holds the queue, handle the message now
    message: QueuedMessage | None = None
    dropped: tuple[QueuedMessage, ...] = ()  # oldest messages pushed out by this one
    warning: str | None = None  # user-facing text for the client to post when messages were dropped
    duplicate: bool = False  # already queued (same message_id): nothing stored
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Normally one message is dropped at a time; after `queue_limit` was lowered there can be many, so
        # the full messages stop at the page budget and `dropped_ids` names them all.
        shown = take_within_budget(self.dropped, lambda m: m.encoded_bytes, MAX_PAGE_BYTES // 2)
        return {
            "queued": self.queued,
            "message": self.message.to_dict() if self.message else None,
            "dropped": [m.to_dict() for m in shown],
            "dropped_ids": [m.queue_id for m in self.dropped],
            "warning": self.warning,
            "duplicate": self.duplicate,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ReplayBatch:
    ready: bool  # False while a session still holds the queue
    messages: tuple[QueuedMessage, ...] = ()
    remaining: int = 0  # all unacknowledged messages, including these
    reason: str | None = None
    next_after_id: int | None = None  # more messages follow: ask again with after_id=this (or ack these)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "messages": [m.to_dict() for m in self.messages],
            "remaining": self.remaining,
            "reason": self.reason,
            "next_after_id": self.next_after_id,
        }


@dataclass(frozen=True)
class AckResult:
    acked: tuple[int, ...]
    unknown: tuple[int, ...]  # never queued, or acknowledged before (acks are idempotent)
    remaining: int

    def to_dict(self) -> dict[str, Any]:
        return {"acked": list(self.acked), "unknown": list(self.unknown), "remaining": self.remaining}
