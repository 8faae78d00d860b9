"""SQLite checkpoint store for the session controller.

The controller must come back with the same sessions, feature blackouts and text queue after its process is
killed, and must never leave a feature blocked because a write half-happened. So every change is one SQLite
transaction that replaces the (small) state document and appends that change's audit entries: it lands whole
or not at all. This module knows nothing about sessions; it stores a JSON-able state dict and audit rows.

WAL journal with `synchronous=NORMAL`: a committed change survives the process being killed (SIGKILL), which
is the failure the controller is built for; only a power cut can lose the last commits.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DB_FILE_NAME = "controller.sqlite3"
_STATE_KEY = "controller"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
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


class SqliteCheckpoint:
    """One SQLite file in `state_dir` holding the controller's latest state and its audit log.

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
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateDirError(f"controller state directory {self.state_dir} is not usable: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            # A probe write: a read-only file or directory fails here, at startup.
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('opened', '1')")
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._conn.close()
            raise StateDirError(f"controller state directory {self.state_dir} is not writable: {exc}") from exc

    def load(self) -> dict[str, Any] | None:
        """The last committed state, or None for a fresh directory."""
        row = self._conn.execute("SELECT value FROM state WHERE key = ?", (_STATE_KEY,)).fetchone()
        return None if row is None else json.loads(row[0])

    def save(self, state: dict[str, Any], audit: Sequence[dict[str, Any]] = ()) -> None:
        """Replace the state and append `audit` entries in one transaction (all or nothing)."""
        try:
            state_json = json.dumps(state, ensure_ascii=False)
            rows = [
                (
                    entry["seq"],
                    entry["at"],
                    entry["action"],
                    entry.get("session_id"),
                    json.dumps(list(entry.get("features", ())), ensure_ascii=False),
                    json.dumps(entry.get("detail", {}), ensure_ascii=False),
                )
                for entry in audit
            ]
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointWriteError(f"state is not serialisable: {exc}") from exc
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (_STATE_KEY, state_json)
                )
                if rows:
                    self._conn.executemany(
                        "INSERT INTO audit(seq, at, action, session_id, features, detail)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        rows,
                    )
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

    def close(self) -> None:
        self._conn.close()
