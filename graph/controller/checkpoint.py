"""SQLite checkpoint store for the session controller.

The controller must come back with the same sessions, feature blackouts and text queue after its process is
killed, and must never leave a feature blocked because a write half-happened. So every change is one SQLite
transaction that writes the rows that change touched and appends that change's audit entries: it lands whole
or not at all. Rows, not a document: a heartbeat rewrites one session row, an enqueue inserts one queue row,
whatever else is stored (100 large queued messages), so a change costs what it touches.

Tables (schema version 2): `sessions` (active, in start order), `ended_sessions` (recently ended, oldest
first), `holders` (feature, session) pairs, `queue` (one row per message, by queue id), `counters`, `meta`
(schema version), `audit`. A version-1 file (the whole state as one JSON blob in `state`) is migrated on open,
in one transaction.

This module knows nothing about sessions: it stores JSON-able rows keyed by id, and hands back a state
document (`{"sessions": [...], "holders": {...}, "ended": [...], "queue": [...], counter: int...}`).

WAL journal with `synchronous=NORMAL`: a committed change survives the process being killed (SIGKILL), which
is the failure the controller is built for; only a power cut can lose the last commits.

The files hold queued Discord messages, so they are private from their creation: the directory is created
0700, the database file is created 0600 before SQLite opens it, and SQLite gives its `-wal` and `-shm` files
the database file's mode. Files left 0644 by an older build are tightened on open.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph.files import prepare_private_sqlite

DB_FILE_NAME = "controller.sqlite3"
SCHEMA_VERSION = 2
COUNTER_KEYS = ("next_queue_id", "next_audit_seq", "dropped_total", "expired_total")
_V1_STATE_KEY = "controller"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ended_sessions (
    position INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS holders (
    feature TEXT NOT NULL,
    session_id TEXT NOT NULL,
    PRIMARY KEY (feature, session_id)
);
CREATE TABLE IF NOT EXISTS queue (
    queue_id INTEGER PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    session_id TEXT,
    features TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


class StateDirError(RuntimeError):
    """The configured state directory cannot hold the checkpoint (missing rights, not a directory...)."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint transaction failed and was rolled back; nothing of it was stored."""


@dataclass
class StateDelta:
    """The rows one change touched. Rows are JSON-able dicts; ids are the tables' keys."""

    sessions_upserted: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    sessions_removed: list[str] = field(default_factory=list)
    ended_added: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)  # appended, in order
    ended_removed: list[str] = field(default_factory=list)
    holders_added: list[tuple[str, str]] = field(default_factory=list)  # (feature, session_id)
    holders_removed: list[tuple[str, str]] = field(default_factory=list)
    queue_added: list[tuple[int, Mapping[str, Any]]] = field(default_factory=list)
    queue_removed: list[int] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (
            self.sessions_upserted or self.sessions_removed or self.ended_added or self.ended_removed
            or self.holders_added or self.holders_removed or self.queue_added or self.queue_removed
            or self.counters
        )

    @classmethod
    def whole(cls, document: Mapping[str, Any]) -> StateDelta:
        """Every row of a state document, for writing it into empty tables (migration, `replace`)."""
        return cls(
            sessions_upserted=[(s["session_id"], s) for s in document.get("sessions", ())],
            ended_added=[(s["session_id"], s) for s in document.get("ended", ())],
            holders_added=[(f, sid) for f, ids in document.get("holders", {}).items() for sid in sorted(ids)],
            queue_added=[(m["queue_id"], m) for m in document.get("queue", ())],
            counters={k: int(document[k]) for k in COUNTER_KEYS if k in document},
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class SqliteCheckpoint:
    """One SQLite file in `state_dir` holding the controller's latest state (as rows) and its audit log.

    Opening checks the directory is usable by doing a real write, so a bad state directory is a startup
    error rather than a surprise at the first session.
    """

    def __init__(self, state_dir: str | Path, *, busy_timeout_s: float = 2.0, audit_keep: int = 10_000):
        if audit_keep < 1:
            raise ValueError(f"audit_keep must be at least 1, got {audit_keep}")
        self.state_dir = Path(state_dir).expanduser()
        self.path = self.state_dir / DB_FILE_NAME
        self._audit_keep = audit_keep
        try:
            # 0600 before SQLite opens it (its -wal/-shm inherit the mode); an older build's 0644 is tightened
            prepare_private_sqlite(self.path)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateDirError(f"controller state directory {self.state_dir} is not usable: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            # A probe write: a read-only file or directory fails here, at startup. Migration rides along.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._migrate_v1()
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            self._conn.close()
            raise StateDirError(f"controller state directory {self.state_dir} is not writable or its checkpoint not readable: {exc}") from exc

    # ------------------------------------------------------------------ reading
    def load(self) -> dict[str, Any] | None:
        """The last committed state as a document, or None for a fresh directory."""
        counters = dict(self._conn.execute("SELECT key, value FROM counters").fetchall())
        sessions = [json.loads(d) for (d,) in self._conn.execute("SELECT data FROM sessions ORDER BY rowid")]
        if not counters and not sessions and not self._conn.execute("SELECT 1 FROM queue LIMIT 1").fetchone():
            return None
        holders: dict[str, list[str]] = {}
        for feature, session_id in self._conn.execute("SELECT feature, session_id FROM holders ORDER BY rowid"):
            holders.setdefault(feature, []).append(session_id)
        document: dict[str, Any] = {
            "version": SCHEMA_VERSION,
            "sessions": sessions,
            "holders": {f: sorted(ids) for f, ids in holders.items()},
            "ended": [json.loads(d) for (d,) in self._conn.execute("SELECT data FROM ended_sessions ORDER BY position")],
            "queue": [json.loads(d) for (d,) in self._conn.execute("SELECT data FROM queue ORDER BY queue_id")],
        }
        for key in COUNTER_KEYS:
            document[key] = counters.get(key, 1 if key.startswith("next_") else 0)
        return document

    def schema_version(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def read_audit(self, after_seq: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Audit entries with seq > after_seq, oldest first, at most `limit`."""
        rows = self._conn.execute(
            "SELECT seq, at, action, session_id, features, detail FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [
            {
                "seq": seq,
                "at": at,
                "action": action,
                "session_id": session_id,
                "features": json.loads(features),
                "detail": json.loads(detail),
            }
            for seq, at, action, session_id, features, detail in rows
        ]

    # ------------------------------------------------------------------ writing
    def apply(self, delta: StateDelta, audit: Sequence[Mapping[str, Any]] = ()) -> None:
        """Write the touched rows and append `audit` entries in one transaction (all or nothing)."""
        try:
            statements = list(self._statements(delta)) + self._audit_statements(audit)
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointWriteError(f"state is not serialisable: {exc}") from exc
        if not statements:
            return
        self._transaction(statements, trim_audit=bool(audit))

    def replace(self, document: Mapping[str, Any], audit: Sequence[Mapping[str, Any]] = ()) -> None:
        """Replace the whole stored state by `document` (tests, repairs); one transaction like `apply`."""
        try:
            wipe = [(f"DELETE FROM {table}", None) for table in ("sessions", "ended_sessions", "holders", "queue", "counters")]
            statements = wipe + list(self._statements(StateDelta.whole(document))) + self._audit_statements(audit)
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointWriteError(f"state is not serialisable: {exc}") from exc
        self._transaction(statements, trim_audit=bool(audit))

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------ internals
    def _transaction(self, statements: list[tuple[str, Any]], *, trim_audit: bool) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    if params is None:
                        self._conn.execute(sql)
                    elif isinstance(params, list):
                        self._conn.executemany(sql, params)
                    else:
                        self._conn.execute(sql, params)
                if trim_audit:
                    # Keep the log bounded: the newest `audit_keep` entries.
                    self._conn.execute(
                        "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?", (self._audit_keep,)
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise CheckpointWriteError(f"checkpoint write to {self.path} failed: {exc}") from exc

    @staticmethod
    def _statements(delta: StateDelta) -> Iterable[tuple[str, Any]]:
        """SQL for a delta, every value serialised up front so a bad value fails before the transaction."""
        if delta.sessions_removed:
            yield "DELETE FROM sessions WHERE session_id = ?", [(s,) for s in delta.sessions_removed]
        if delta.sessions_upserted:
            # An upsert keeps the row (and its rowid, hence the start order) of a renewed session.
            yield (
                "INSERT INTO sessions(session_id, data) VALUES (?, ?)"
                " ON CONFLICT(session_id) DO UPDATE SET data = excluded.data",
                [(sid, _dumps(row)) for sid, row in delta.sessions_upserted],
            )
        if delta.ended_removed:
            yield "DELETE FROM ended_sessions WHERE session_id = ?", [(s,) for s in delta.ended_removed]
        for sid, row in delta.ended_added:
            yield (
                "INSERT OR REPLACE INTO ended_sessions(position, session_id, data)"
                " VALUES ((SELECT COALESCE(MAX(position), 0) + 1 FROM ended_sessions), ?, ?)",
                (sid, _dumps(row)),
            )
        if delta.holders_removed:
            yield "DELETE FROM holders WHERE feature = ? AND session_id = ?", list(delta.holders_removed)
        if delta.holders_added:
            yield "INSERT OR IGNORE INTO holders(feature, session_id) VALUES (?, ?)", list(delta.holders_added)
        if delta.queue_removed:
            yield "DELETE FROM queue WHERE queue_id = ?", [(int(q),) for q in delta.queue_removed]
        if delta.queue_added:
            yield "INSERT INTO queue(queue_id, data) VALUES (?, ?)", [(int(q), _dumps(m)) for q, m in delta.queue_added]
        if delta.counters:
            unknown = set(delta.counters) - set(COUNTER_KEYS)
            if unknown:
                raise KeyError(f"unknown counters {sorted(unknown)}")
            yield (
                "INSERT OR REPLACE INTO counters(key, value) VALUES (?, ?)",
                [(k, int(v)) for k, v in delta.counters.items()],
            )

    @staticmethod
    def _audit_statements(audit: Sequence[Mapping[str, Any]]) -> list[tuple[str, Any]]:
        rows = [
            (
                entry["seq"],
                entry["at"],
                entry["action"],
                entry.get("session_id"),
                _dumps(list(entry.get("features", ()))),
                _dumps(dict(entry.get("detail", {}))),
            )
            for entry in audit
        ]
        if not rows:
            return []
        return [("INSERT INTO audit(seq, at, action, session_id, features, detail) VALUES (?, ?, ?, ?, ?, ?)", rows)]

    def _migrate_v1(self) -> None:
        """Version 1 kept the whole state as one JSON blob in `state`: move it into the tables, drop the blob."""
        has_v1 = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'state'"
        ).fetchone()
        if not has_v1:
            return
        row = self._conn.execute("SELECT value FROM state WHERE key = ?", (_V1_STATE_KEY,)).fetchone()
        if row is not None:
            document = json.loads(row[0])
            if document.get("version") != 1:
                raise ValueError(f"unsupported controller checkpoint version {document.get('version')!r}")
            for sql, params in self._statements(StateDelta.whole(document)):
                if isinstance(params, list):
                    self._conn.executemany(sql, params)
                else:
                    self._conn.execute(sql, params)
        self._conn.execute("DROP TABLE state")
