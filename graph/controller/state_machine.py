"""The session controller's state machine: voice sessions, feature blackouts, the text queue, the audit log.

A voice session needs the box's GPUs, so while Miku is in voice the bot switches features off (vision, image
generation...), queues ordinary text-channel messages and moves text inference to the RX 6800. This module
decides all of that and nothing else; `deployments/controller/actor.py` hosts it in a restartable Ray actor.

Rules it keeps:
- `check(feature)` is the one question everything asks; a feature is in blackout exactly while at least one
  active session holds it, so a feature can never stay blocked with no session holding it.
- Start, end and expiry are atomic: the new state is built aside (a shallow copy: the values are frozen),
  the rows it changed are checkpointed in one SQLite transaction, and only then is it swapped in. A failed
  write leaves the state as it was and the error says why. Only touched rows are written, so a heartbeat
  or an enqueue costs the same with an empty queue or a full one.
- Sessions live on leases renewed by heartbeats. Leases use the wall clock (injected) because the deadline
  must keep its meaning across a process or whole-cluster restart; a session whose lease ran out while
  nothing was running is expired on load and its features come back.
- Text messages queued during a session are handed back in order when no session holds the queue, and are
  removed only when acknowledged by id, so a crash in the middle of the replay loses and repeats nothing.

Not thread-safe: the caller serialises calls (the Ray actor runs them on one event loop).
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from graph.controller.audit import AuditAction, AuditEntry, AuditPage
from graph.controller.checkpoint import SCHEMA_VERSION, CheckpointWriteError, SqliteCheckpoint, StateDelta
from graph.controller.config import ControllerConfig
from graph.controller.errors import (
    CheckpointError,
    InvalidRequest,
    SessionConflict,
    SessionGone,
    UnknownFeature,
    UnknownSession,
)
from graph.controller.features import (
    CAPACITY_MESSAGE,
    CONFLICT_MESSAGE,
    QUEUE_DROPPED_MESSAGE,
    TEXT_QUEUE_FEATURE,
    VRAM_MESSAGE,
    CheckResult,
    Effect,
)
from graph.controller.headroom import HeadroomProbe, HeadroomVerdict
from graph.controller.limits import (
    MAX_PAGE_BYTES,
    MAX_PAGE_ITEMS,
    check_id,
    check_int_range,
    check_message_size,
    encoded_size,
    take_within_budget,
)
from graph.controller.sessions import (
    Session,
    SessionEnded,
    SessionRequest,
    SessionStarted,
    SessionState,
)
from graph.controller.text_queue import (
    AckResult,
    EnqueueResult,
    IncomingMessage,
    QueuedMessage,
    ReplayBatch,
)

log = logging.getLogger(__name__)
MAX_ADMIN_DETAIL_BYTES = 8 * 1024  # what one admin change's arguments may take in the audit log


@dataclass(frozen=True)
class ControllerStats:
    """What the metrics export."""

    active_sessions: int
    blocked_features: int
    queue_length: int
    dropped_total: int
    expired_total: int


# --------------------------------------------------------------------------------------------- state
@dataclass
class _State:
    """Everything checkpointed. Copied before a change so a failed write can simply be thrown away."""

    sessions: dict[str, Session] = field(default_factory=dict)  # active only
    holders: dict[str, frozenset[str]] = field(default_factory=dict)  # feature -> holding session ids
    ended: dict[str, Session] = field(default_factory=dict)  # recently ended/expired, oldest first
    queue: list[QueuedMessage] = field(default_factory=list)
    next_queue_id: int = 1
    next_audit_seq: int = 1
    dropped_total: int = 0
    expired_total: int = 0

    def copy(self) -> _State:
        return replace(
            self,
            sessions=dict(self.sessions),
            holders=dict(self.holders),
            ended=dict(self.ended),
            queue=list(self.queue),
        )

    def to_dict(self) -> dict[str, Any]:
        """The whole state as one document (what `SqliteCheckpoint.load` returns)."""
        return {
            "version": SCHEMA_VERSION,
            "sessions": [s.to_dict() for s in self.sessions.values()],
            "holders": {f: sorted(ids) for f, ids in self.holders.items()},
            "ended": [s.to_dict() for s in self.ended.values()],
            "queue": [m.to_dict() for m in self.queue],
            "next_queue_id": self.next_queue_id,
            "next_audit_seq": self.next_audit_seq,
            "dropped_total": self.dropped_total,
            "expired_total": self.expired_total,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _State:
        if data.get("version") not in (1, SCHEMA_VERSION):
            raise ValueError(f"unsupported controller checkpoint version {data.get('version')!r}")
        sessions = [Session.from_dict(s) for s in data["sessions"]]
        ended = [Session.from_dict(s) for s in data["ended"]]
        return cls(
            sessions={s.session_id: s for s in sessions},
            holders={f: frozenset(ids) for f, ids in data["holders"].items()},
            ended={s.session_id: s for s in ended},
            queue=[QueuedMessage.from_dict(m) for m in data["queue"]],
            next_queue_id=data["next_queue_id"],
            next_audit_seq=data["next_audit_seq"],
            dropped_total=data["dropped_total"],
            expired_total=data["expired_total"],
        )

    def delta_to(self, new: _State) -> StateDelta:
        """The rows that differ between this state and `new` (values are frozen: identity says unchanged)."""
        delta = StateDelta()
        old_sessions, new_sessions = self.sessions, new.sessions
        delta.sessions_removed = [sid for sid in old_sessions if sid not in new_sessions]
        delta.sessions_upserted = [
            (sid, s.to_dict()) for sid, s in new_sessions.items() if old_sessions.get(sid) is not s
        ]
        delta.ended_removed = [sid for sid in self.ended if sid not in new.ended]
        delta.ended_added = [(sid, s.to_dict()) for sid, s in new.ended.items() if sid not in self.ended]
        for feature in {**self.holders, **new.holders}:
            before = self.holders.get(feature, frozenset())
            after = new.holders.get(feature, frozenset())
            if before != after:
                delta.holders_removed.extend((feature, sid) for sid in sorted(before - after))
                delta.holders_added.extend((feature, sid) for sid in sorted(after - before))
        if self.queue is not new.queue:
            old_ids = {m.queue_id for m in self.queue}
            new_ids = {m.queue_id for m in new.queue}
            delta.queue_removed = [i for i in old_ids if i not in new_ids]
            delta.queue_added = [(m.queue_id, m.to_dict()) for m in new.queue if m.queue_id not in old_ids]
        for key in ("next_queue_id", "next_audit_seq", "dropped_total", "expired_total"):
            if getattr(self, key) != getattr(new, key):
                delta.counters[key] = getattr(new, key)
        return delta


class _Change:
    """A state being edited plus the audit entries that describe the edit."""

    def __init__(self, state: _State, clock_now: float):
        self.state = state
        self.now = clock_now
        self.audit: list[AuditEntry] = []

    def record(self, action: AuditAction, session_id: str | None, features: Iterable[str] = (), **detail: Any) -> None:
        entry = AuditEntry(self.state.next_audit_seq, self.now, action, session_id, tuple(features), detail)
        self.state.next_audit_seq += 1
        self.audit.append(entry)


# --------------------------------------------------------------------------------------------- controller
class SessionController:
    """Voice sessions, feature blackouts, the text queue and the audit log, checkpointed after every change.

    Build with `SessionController.open(config)`; the constructor takes an already open store (for tests).
    """

    def __init__(
        self,
        config: ControllerConfig,
        store: SqliteCheckpoint,
        *,
        clock: Callable[[], float] = time.time,
        headroom: HeadroomProbe | None = None,
        id_factory: Callable[[], str] = lambda: uuid.uuid4().hex,
    ):
        self.config = config
        self._store = store
        self._clock = clock
        self._headroom = headroom
        self._new_id = id_factory
        self._specs = {spec.feature_id: spec for spec in config.features}
        saved = store.load()
        self._state = _State.from_dict(saved) if saved is not None else _State()
        self._reconcile_on_load()
        self.expire_stale()

    @classmethod
    def open(
        cls,
        config: ControllerConfig,
        *,
        clock: Callable[[], float] = time.time,
        headroom: HeadroomProbe | None = None,
        id_factory: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> SessionController:
        """Open (or create) the checkpoint in `config.state_dir` and resume from it.

        Raises StateDirError when the directory cannot be written.
        """
        store = SqliteCheckpoint(
            Path(config.state_dir),
            busy_timeout_s=config.checkpoint_busy_timeout_s,
            audit_keep=config.audit_keep,
        )
        return cls(config, store, clock=clock, headroom=headroom, id_factory=id_factory)

    def close(self) -> None:
        self._store.close()

    # ------------------------------------------------------------------ sessions
    def start_session(self, request: SessionRequest) -> SessionStarted:
        """Start a session and switch every feature to its blackout, all at once.

        Raises SessionConflict (user-facing message) when sessions are full or the GPUs lack headroom,
        CheckpointError when the change could not be stored (then nothing changed).
        """
        self.expire_stale()
        if request.request_id:
            for session in self._state.sessions.values():
                if session.request_id == request.request_id:
                    return SessionStarted(session, self.features(session.persona), reused=True)
        active = len(self._state.sessions)
        if active >= self.config.max_sessions:
            raise SessionConflict(self.config.message("session_conflict", request.persona, CONFLICT_MESSAGE))
        # Every start, the first one too, asks the VRAM probe when one is given (the RX 6800 may already be
        # past its limit before any session); without one, only the configured capacity limits later starts.
        if self._headroom is not None or active >= 1:
            verdict = self._headroom_verdict(active)
            if not verdict.admit:
                key, fallback = ("capacity_short", CAPACITY_MESSAGE) if active else ("vram_short", VRAM_MESSAGE)
                text = self.config.message(key, request.persona, fallback)
                raise SessionConflict(f"{text} ({verdict.reason})" if verdict.reason else text)

        now = self._clock()
        session = Session(
            session_id=self._new_id(),
            guild_id=request.guild_id,
            voice_channel_id=request.voice_channel_id,
            text_channel_id=request.text_channel_id,
            user_id=request.user_id,
            persona=request.persona,
            request_id=request.request_id,
            started_at=now,
            last_heartbeat=now,
            lease_s=self.config.lease_s,
        )
        change = self._begin(now)
        state = change.state
        switched_on = [f for f in self._specs if not state.holders.get(f)]
        state.sessions[session.session_id] = session
        for feature in self._specs:
            state.holders[feature] = state.holders.get(feature, frozenset()) | {session.session_id}
        change.record(
            AuditAction.SESSION_STARTED,
            session.session_id,
            switched_on,
            guild_id=session.guild_id,
            voice_channel_id=session.voice_channel_id,
            user_id=session.user_id,
        )
        self._commit(change)
        return SessionStarted(session, self.features(session.persona))

    def heartbeat(self, session_id: str) -> Session:
        """Renew the lease. SessionGone when it already ended or expired, UnknownSession when never seen."""
        self.expire_stale()
        session = self._state.sessions.get(session_id)
        if session is None:
            self._raise_missing(session_id)
        now = self._clock()
        change = self._begin(now)
        renewed = replace(session, last_heartbeat=now)
        change.state.sessions[session_id] = renewed
        self._commit(change)
        return renewed

    def end_session(self, session_id: str) -> SessionEnded:
        """End a session and lift the blackouts no other session holds. Ending twice is a no-op that says so."""
        self.expire_stale()
        if session_id in self._state.ended:
            gone = self._state.ended[session_id]
            return SessionEnded(
                session_id,
                ended=False,
                state=gone.state,
                message=f"session {session_id} had already {gone.state.value}; nothing to do",
                replay_pending=len(self._state.queue),
            )
        if session_id not in self._state.sessions:
            raise UnknownSession(f"unknown session {session_id}")
        change = self._begin(self._clock())
        restored = self._finish(change, session_id, SessionState.ENDED)
        self._commit(change)
        return SessionEnded(
            session_id,
            ended=True,
            state=SessionState.ENDED,
            message=f"session {session_id} ended",
            restored=restored,
            replay_pending=len(self._state.queue),
        )

    def expire_stale(self) -> tuple[Session, ...]:
        """End every session whose lease ran out (one transaction). Returns the expired sessions."""
        now = self._clock()
        due = [s for s in self._state.sessions.values() if s.expires_at <= now]
        if not due:
            return ()
        change = self._begin(now)
        for session in due:
            self._finish(change, session.session_id, SessionState.EXPIRED)
        change.state.expired_total += len(due)
        self._commit(change)
        log.warning("voice session lease expired: %s", [s.session_id for s in due])
        return tuple(change.state.ended[s.session_id] for s in due)

    def sessions(self) -> tuple[Session, ...]:
        return tuple(self._state.sessions.values())

    def session(self, session_id: str) -> Session:
        if session_id in self._state.sessions:
            return self._state.sessions[session_id]
        if session_id in self._state.ended:
            return self._state.ended[session_id]
        raise UnknownSession(f"unknown session {session_id}")

    def next_expiry(self) -> float | None:
        """When the earliest lease runs out (clock time), for the expiry loop to sleep until."""
        return min((s.expires_at for s in self._state.sessions.values()), default=None)

    # ------------------------------------------------------------------ features
    def check(self, feature: str, persona: str | None = None) -> CheckResult:
        """May `feature` run now? The one call the brain, schedulers and the text path all make."""
        spec = self._specs.get(feature)
        if spec is None:
            raise UnknownFeature(f"unknown feature {feature!r}; known: {sorted(self._specs)}")
        try:
            self.expire_stale()
        except CheckpointError as exc:
            # Keep answering from the unexpired state (fail closed); the expiry loop retries.
            log.error("could not expire stale sessions during check: %s", exc)
        holders = tuple(sorted(self._state.holders.get(feature, frozenset())))
        if not holders:
            route = spec.normal_route if spec.effect is Effect.ROUTED else None
            return CheckResult(feature, True, None, False, None, route)
        if spec.effect.allows:
            return CheckResult(feature, True, None, False, spec.effect, spec.session_route, holders)
        message = None if spec.effect.silent else self.config.message(feature, persona, spec.message)
        return CheckResult(feature, False, message, spec.effect.silent, spec.effect, None, holders)

    def features(self, persona: str | None = None) -> tuple[CheckResult, ...]:
        return tuple(self.check(feature, persona) for feature in self._specs)

    # ------------------------------------------------------------------ text queue
    def enqueue(self, incoming: IncomingMessage, persona: str | None = None) -> EnqueueResult:
        """Queue a text-channel message while a session holds the queue; otherwise say to handle it now.

        Bounded: past `queue_limit` the oldest are dropped and `warning` is the text to post about it. A message
        bigger than the queue stores is refused (PayloadTooLarge, 413; InvalidRequest, 422), even outside a
        session, so a client learns of it at once rather than when a session starts.
        """
        check_message_size(incoming.content, incoming.event)
        self.expire_stale()
        holders = self._state.holders.get(TEXT_QUEUE_FEATURE, frozenset())
        if not holders:
            return EnqueueResult(queued=False, reason="no voice session holds the text queue: handle it now")
        if incoming.message_id is not None:
            for queued in self._state.queue:
                if queued.message_id == incoming.message_id and queued.channel_id == incoming.channel_id:
                    return EnqueueResult(queued=True, message=queued, duplicate=True)
        now = self._clock()
        change = self._begin(now)
        state = change.state
        message = QueuedMessage(
            queue_id=state.next_queue_id,
            channel_id=incoming.channel_id,
            author_id=incoming.author_id,
            content=incoming.content,
            message_id=incoming.message_id,
            guild_id=incoming.guild_id,
            sent_at=incoming.sent_at if incoming.sent_at is not None else now,
            queued_at=now,
            event=dict(incoming.event),
        )
        state.next_queue_id += 1
        state.queue.append(message)
        change.record(AuditAction.MESSAGE_QUEUED, None, queue_id=message.queue_id, channel_id=message.channel_id)
        overflow = len(state.queue) - self.config.queue_limit
        dropped: tuple[QueuedMessage, ...] = ()
        warning = None
        if overflow > 0:
            dropped = tuple(state.queue[:overflow])
            del state.queue[:overflow]
            state.dropped_total += len(dropped)
            change.record(AuditAction.MESSAGES_DROPPED, None, queue_ids=[m.queue_id for m in dropped])
            if persona is None:
                # Word the warning in the persona of a session holding the queue.
                personas = (self._state.sessions[h].persona for h in sorted(holders) if h in self._state.sessions)
                persona = next(personas, None)
            template = self.config.message("queue_dropped", persona, QUEUE_DROPPED_MESSAGE)
            warning = template.replace("{count}", str(len(dropped)))
        self._commit(change)
        return EnqueueResult(queued=True, message=message, dropped=dropped, warning=warning)

    def replay(
        self, limit: int | None = None, *, after_id: int = 0, max_bytes: int = MAX_PAGE_BYTES
    ) -> ReplayBatch:
        """The oldest unacknowledged messages with queue_id > after_id, in order, once no session holds the
        queue. Changes nothing. A page stops at `limit` messages or `max_bytes` of JSON, whichever comes first;
        `next_after_id` is set when more follow."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        check_int_range("after_id", after_id)
        self.expire_stale()
        queue = self._state.queue
        if self._state.holders.get(TEXT_QUEUE_FEATURE):
            return ReplayBatch(False, (), len(queue), "a voice session still holds the text queue")
        start = next((i for i, m in enumerate(queue) if m.queue_id > after_id), len(queue))
        candidates = queue[start:] if limit is None else queue[start : start + limit]
        batch = take_within_budget(candidates, lambda m: m.encoded_bytes, max_bytes)
        more = start + len(batch) < len(queue)
        return ReplayBatch(True, batch, len(queue), next_after_id=batch[-1].queue_id if batch and more else None)

    def ack(self, queue_ids: Iterable[int]) -> AckResult:
        """Remove replayed messages for good. Unknown or already acknowledged ids are reported, not errors."""
        wanted = list(dict.fromkeys(int(i) for i in queue_ids))
        present = {m.queue_id for m in self._state.queue}
        acked = tuple(i for i in wanted if i in present)
        unknown = tuple(i for i in wanted if i not in present)
        if acked:
            change = self._begin(self._clock())
            gone = set(acked)
            change.state.queue = [m for m in change.state.queue if m.queue_id not in gone]
            change.record(AuditAction.MESSAGES_ACKED, None, queue_ids=list(acked))
            self._commit(change)
        return AckResult(acked, unknown, len(self._state.queue))

    def queue(self) -> tuple[QueuedMessage, ...]:
        return tuple(self._state.queue)

    # ------------------------------------------------------------------ audit and stats
    def audit(self, after_seq: int = 0, limit: int = 100) -> tuple[AuditEntry, ...]:
        return self.audit_page(after_seq, limit, max_bytes=None).entries

    def audit_page(self, after_seq: int = 0, limit: int = 100, *, max_bytes: int | None = MAX_PAGE_BYTES) -> AuditPage:
        """Audit entries with seq > after_seq, oldest first: at most `limit` and (unless None) `max_bytes` of
        JSON; `next_after_seq` is set when more follow."""
        check_int_range("after_seq", after_seq)
        check_int_range("limit", limit, 1, MAX_PAGE_ITEMS)
        rows = self._store.read_audit(after_seq, limit + 1)  # one more: is there a next page?
        page = rows[:limit]
        if max_bytes is not None:
            page = list(take_within_budget(page, encoded_size, max_bytes))
        entries = tuple(AuditEntry.from_dict(row) for row in page)
        more = len(rows) > len(page)
        return AuditPage(entries, entries[-1].seq if entries and more else None)

    def audit_tail(self, limit: int = 100) -> AuditPage:
        """The newest `limit` audit entries, oldest first (the admin panel's view)."""
        check_int_range("limit", limit, 1, MAX_PAGE_ITEMS)
        return self.audit_page(max(0, self._state.next_audit_seq - 1 - limit), limit)

    def record_admin(self, user: str, change: str, detail: Mapping[str, Any] | None = None) -> AuditEntry:
        """Write one admin-panel change to the audit log (who, what, with which arguments)."""
        check_id("user", user)
        check_id("change", change)
        detail = dict(detail or {})
        if encoded_size(detail) > MAX_ADMIN_DETAIL_BYTES:
            raise InvalidRequest(f"admin audit detail is over {MAX_ADMIN_DETAIL_BYTES} bytes as JSON")
        entry_change = self._begin(self._clock())
        entry_change.record(AuditAction.ADMIN_CHANGE, None, user=user, change=change, **{"args": detail})
        self._commit(entry_change)
        return entry_change.audit[-1]

    def stats(self) -> ControllerStats:
        state = self._state
        blocked = sum(
            1 for f, spec in self._specs.items() if state.holders.get(f) and not spec.effect.allows
        )
        return ControllerStats(len(state.sessions), blocked, len(state.queue), state.dropped_total, state.expired_total)

    # ------------------------------------------------------------------ internals
    def _headroom_verdict(self, active: int) -> HeadroomVerdict:
        if self._headroom is None:
            capacity = self.config.configured_capacity
            if active < capacity:
                return HeadroomVerdict(True, f"configured capacity {capacity} session(s)")
            return HeadroomVerdict(False, f"configured capacity is {capacity} session(s)")
        try:
            return self._headroom()
        except Exception as exc:  # a broken probe must not admit a session the GPUs may not hold
            log.exception("VRAM headroom probe failed")
            return HeadroomVerdict(False, f"VRAM headroom unknown: {exc}")

    def _begin(self, now: float) -> _Change:
        return _Change(self._state.copy(), now)

    def _commit(self, change: _Change) -> None:
        try:
            delta = self._state.delta_to(change.state)
            self._store.apply(delta, [entry.to_dict() for entry in change.audit])
        except CheckpointWriteError as exc:
            raise CheckpointError(f"change not applied, state unchanged: {exc}") from exc
        self._state = change.state

    def _finish(self, change: _Change, session_id: str, final: SessionState) -> tuple[str, ...]:
        """Remove a session from the edited state; returns the features it was the last holder of."""
        state = change.state
        session = state.sessions.pop(session_id)
        restored = []
        for feature, ids in list(state.holders.items()):
            if session_id in ids:
                remaining = ids - {session_id}
                state.holders[feature] = remaining
                if not remaining:
                    restored.append(feature)
        state.ended[session_id] = replace(session, state=final, ended_at=change.now)
        while len(state.ended) > self.config.ended_memory:
            del state.ended[next(iter(state.ended))]
        action = AuditAction.SESSION_EXPIRED if final is SessionState.EXPIRED else AuditAction.SESSION_ENDED
        change.record(action, session_id, restored, lease_deadline=session.expires_at)
        return tuple(restored)

    def _raise_missing(self, session_id: str) -> None:
        gone = self._state.ended.get(session_id)
        if gone is not None:
            raise SessionGone(f"session {session_id} has {gone.state.value}; start a new session to rejoin")
        raise UnknownSession(f"unknown session {session_id}")

    def _reconcile_on_load(self) -> None:
        """Make the loaded holders agree with the loaded sessions and the configured features.

        A holder with no active session is dropped (its feature comes back); a feature added to the config
        since the checkpoint is taken by every active session.
        """
        state = self._state
        expected = frozenset(state.sessions)
        fixed: list[str] = []
        for feature in self._specs:
            if state.holders.get(feature, frozenset()) != expected:
                fixed.append(feature)
        stale = [f for f in state.holders if f not in self._specs]
        if not fixed and not stale:
            return
        change = self._begin(self._clock())
        for feature in stale:
            del change.state.holders[feature]
        for feature in self._specs:
            change.state.holders[feature] = expected
        change.record(AuditAction.FEATURES_RECONCILED, None, fixed, removed=stale)
        self._commit(change)
