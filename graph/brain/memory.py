"""Conversation memory: every message Miku sees, in SQLite (aiosqlite), and the once-only decision log.

Context queries are per channel (last hours, last N) and per user (last days); both are index range
scans (`(channel_id, ts)`, `(author_id, ts)`) so they stay fast at millions of rows. A retention job
deletes what is older than the configured age (30 days by default). The `decisions` table makes "each
message is decided once" survive reconnects and restarts: claiming a message is one atomic
INSERT OR IGNORE; a message that was only queued (voice session) may be claimed again later.

Memory activation (Heart Flow's focus cycle) finds *relevant* older messages, not just recent ones:
`messages_fts` is a contentless SQLite FTS5 index over the message text and channel (kept in step by
triggers, so retention deletes reach it too), searched by `relevant()`: the channel's newest matches,
ranked by bm25. `brain_state`
keeps small settings that must survive a restart (the active persona and mood per scope).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from graph.files import prepare_private_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    guild_id TEXT,
    channel_id TEXT NOT NULL,
    author_id TEXT NOT NULL,
    author_name TEXT NOT NULL DEFAULT '',
    is_bot INTEGER NOT NULL DEFAULT 0,
    is_self INTEGER NOT NULL DEFAULT 0,
    content TEXT NOT NULL DEFAULT '',
    ts REAL NOT NULL,
    importance REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_messages_channel_ts ON messages(channel_id, ts);
CREATE INDEX IF NOT EXISTS idx_messages_author_ts ON messages(author_id, ts);
CREATE INDEX IF NOT EXISTS idx_messages_ts ON messages(ts);
CREATE TABLE IF NOT EXISTS decisions (
    message_id TEXT PRIMARY KEY,
    decision TEXT NOT NULL,
    ts REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_decisions_ts ON decisions(ts);
CREATE TABLE IF NOT EXISTS brain_state (
    kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    value TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (kind, scope)
) WITHOUT ROWID;
"""

# Full-text index for memory activation: contentless FTS5 (the text lives once, in `messages`), with the
# channel as an indexed token column so a search only walks that channel's postings; triggers keep it in
# step (retention deletes reach it). Created apart from SCHEMA so an existing database gets it, back-filled,
# on its first open by this version.
FTS_SCHEMA = """
CREATE VIRTUAL TABLE messages_fts USING fts5(content, chan, content='', tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content, chan) VALUES (new.id, new.content, 'c' || hex(new.channel_id));
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, chan) VALUES ('delete', old.id, old.content, 'c' || hex(old.channel_id));
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, channel_id ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, chan) VALUES ('delete', old.id, old.content, 'c' || hex(old.channel_id));
    INSERT INTO messages_fts(rowid, content, chan) VALUES (new.id, new.content, 'c' || hex(new.channel_id));
END;
INSERT INTO messages_fts(rowid, content, chan) SELECT id, content, 'c' || hex(channel_id) FROM messages;
"""
FTS_CANDIDATES = 50  # newest matches ranked by bm25: bounded work however much a common word matches

# Words too common to say what a message is about (they would match half the memory).
_STOPWORDS = frozenset(
    "the and for are but not you all any can had her was one our out has him his how its may new now "
    "see two way who did get let say she too use that this with have from they will what when your "
    "just like been than then them were there their about would could should into some very also "
    "yeah lol lmao okay haha does doing here".split()
)
_TERM = re.compile(r"[^\W_]{3,}", re.UNICODE)


def _fts_query(channel_id: str, texts: Iterable[str]) -> str | None:
    """An FTS5 query for this channel's messages with any of the texts' content words (None: no words)."""
    terms = search_terms(texts)
    if not terms:
        return None
    chan = "c" + channel_id.encode().hex()
    return f'chan : "{chan}" AND content : (' + " OR ".join('"' + t.replace('"', '""') + '"' for t in terms) + ")"


def search_terms(texts: Iterable[str], limit: int = 8) -> list[str]:
    """The distinct content words of `texts` (newest text's words first), for an FTS5 query."""
    terms: list[str] = []
    for text in reversed(list(texts)):
        for word in _TERM.findall(text.lower()):
            if word not in _STOPWORDS and not word.isdigit() and word not in terms:
                terms.append(word)
                if len(terms) >= limit:
                    return terms
    return terms

DEFERRED = "deferred"  # queued during a voice session: may be decided later

_CLAIM_SQL = (
    "INSERT INTO decisions (message_id, decision, ts) VALUES (?, ?, ?) "
    "ON CONFLICT(message_id) DO UPDATE SET decision = excluded.decision, ts = excluded.ts "
    "WHERE decisions.decision = ?"
)

_QUESTION = re.compile(r"[?？]")


@dataclass(frozen=True)
class StoredMessage:
    message_id: str
    guild_id: str | None
    channel_id: str
    author_id: str
    author_name: str
    is_bot: bool
    is_self: bool
    content: str
    ts: float
    importance: float = 0.0

    def as_row(self) -> tuple:
        return (
            self.message_id,
            self.guild_id,
            self.channel_id,
            self.author_id,
            self.author_name,
            int(self.is_bot),
            int(self.is_self),
            self.content,
            self.ts,
            self.importance,
        )


_COLUMNS = "message_id, guild_id, channel_id, author_id, author_name, is_bot, is_self, content, ts, importance"


def _from_row(row: Sequence) -> StoredMessage:
    return StoredMessage(row[0], row[1], row[2], row[3], row[4], bool(row[5]), bool(row[6]), row[7], row[8], row[9])


def importance_score(content: str, *, addressed: bool, attachments: int = 0) -> float:
    """How much a message matters, in [0, 1]: addressed to Miku, a question, length, attachments."""
    score = 0.0
    if addressed:
        score += 0.5
    if _QUESTION.search(content):
        score += 0.2
    score += min(len(content), 240) / 240 * 0.2
    if attachments:
        score += 0.1
    return min(score, 1.0)


class MemoryStore:
    """One SQLite database of messages and decisions. Open with `await MemoryStore.open(path)`."""

    def __init__(self, db: aiosqlite.Connection, path: str):
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str | Path = ":memory:") -> "MemoryStore":
        path = str(path)
        if path != ":memory:" and not path.startswith("file:"):
            # queued messages and chat history: owner-only from creation, -wal/-shm inherit the mode
            path = str(prepare_private_sqlite(path))
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.executescript(SCHEMA)
        async with db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'") as cur:
            has_fts = await cur.fetchone() is not None
        if not has_fts:
            await db.executescript(FTS_SCHEMA)
        await db.commit()
        return cls(db, path)

    async def close(self) -> None:
        await self._db.close()

    # -- writes ---------------------------------------------------------------------------------

    async def add(self, message: StoredMessage) -> bool:
        """Store a message; False if its message_id is already stored (duplicate event)."""
        cursor = await self._db.execute(
            f"INSERT OR IGNORE INTO messages ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", message.as_row()
        )
        await self._db.commit()
        return cursor.rowcount == 1

    async def record_incoming(self, message: StoredMessage, claim: str | None) -> tuple[bool, bool]:
        """Store a message and (when `claim` is given) claim its decision, in one transaction.

        Returns (stored_now, claimed_now): stored_now is False for a message already in memory,
        claimed_now is False when the message was already decided (see `claim_decision`).
        """
        cursor = await self._db.execute(
            f"INSERT OR IGNORE INTO messages ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", message.as_row()
        )
        stored = cursor.rowcount == 1
        claimed = False
        if claim is not None:
            cursor = await self._db.execute(_CLAIM_SQL, (message.message_id, claim, message.ts, DEFERRED))
            claimed = cursor.rowcount == 1
        await self._db.commit()
        return stored, claimed

    async def defer_decision(self, message_id: str) -> None:
        """Mark a claimed message as queued so that its replay after the voice session is decided."""
        await self._db.execute("UPDATE decisions SET decision = ? WHERE message_id = ?", (DEFERRED, message_id))
        await self._db.commit()

    async def add_many(self, messages: Iterable[StoredMessage]) -> None:
        """Bulk insert (imports, benchmarks): one executemany, one commit."""
        await self._db.executemany(
            f"INSERT OR IGNORE INTO messages ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (m.as_row() for m in messages),
        )
        await self._db.commit()

    async def claim_decision(self, message_id: str, decision: str, ts: float) -> bool:
        """Atomically record that `message_id` is decided. False if it was decided before.

        A message recorded as DEFERRED (queued) can be claimed again once.
        """
        cursor = await self._db.execute(_CLAIM_SQL, (message_id, decision, ts, DEFERRED))
        await self._db.commit()
        return cursor.rowcount == 1

    async def decision(self, message_id: str) -> str | None:
        async with self._db.execute("SELECT decision FROM decisions WHERE message_id = ?", (message_id,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def prune(self, now: float, max_age_s: float) -> int:
        """Retention: delete messages and decisions older than `max_age_s`; returns messages deleted."""
        cutoff = now - max_age_s
        cursor = await self._db.execute("DELETE FROM messages WHERE ts < ?", (cutoff,))
        deleted = cursor.rowcount
        await self._db.execute("DELETE FROM decisions WHERE ts < ?", (cutoff,))
        await self._db.commit()
        return deleted

    # -- reads ----------------------------------------------------------------------------------

    async def channel_context(self, channel_id: str, *, now: float, hours: float = 6.0, limit: int = 20) -> list[StoredMessage]:
        """The last `limit` messages of a channel within `hours`, oldest first."""
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE channel_id = ? AND ts >= ? AND ts <= ? "
            "ORDER BY ts DESC LIMIT ?",
            (channel_id, now - hours * 3600.0, now, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [_from_row(r) for r in reversed(rows)]

    async def user_context(self, author_id: str, *, now: float, days: float = 7.0, limit: int = 20) -> list[StoredMessage]:
        """The last `limit` messages by one user (any channel) within `days`, oldest first."""
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE author_id = ? AND ts >= ? AND ts <= ? "
            "ORDER BY ts DESC LIMIT ?",
            (author_id, now - days * 86400.0, now, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [_from_row(r) for r in reversed(rows)]

    # -- the admin panel's views (bounded: at most `limit` rows each) -------------------------------

    async def channels(self, limit: int = 100) -> list[dict]:
        """The channels with stored messages, most recently active first: id, server, count, last message time."""
        async with self._db.execute(
            "SELECT channel_id, MAX(guild_id), COUNT(*), MAX(ts) FROM messages GROUP BY channel_id "
            "ORDER BY MAX(ts) DESC LIMIT ?", (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [{"channel_id": r[0], "guild_id": r[1], "messages": int(r[2]), "last_ts": r[3]} for r in rows]

    async def recent(self, channel_id: str, limit: int = 50) -> list[StoredMessage]:
        """A channel's newest `limit` messages whatever their age, oldest first."""
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE channel_id = ? ORDER BY ts DESC LIMIT ?", (channel_id, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [_from_row(r) for r in reversed(rows)]

    async def search(self, text: str, limit: int = 50) -> list[StoredMessage]:
        """Messages whose content or author name contains `text` (case-insensitive for ASCII), newest first."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE content LIKE ? ESCAPE '\\' OR author_name LIKE ? ESCAPE '\\' "
            "ORDER BY ts DESC LIMIT ?", (pattern, pattern, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [_from_row(r) for r in rows]

    async def delete_author(self, author_id: str) -> int:
        """Forget everything one user wrote (moderation, or the user's own request); returns the count."""
        cursor = await self._db.execute("DELETE FROM messages WHERE author_id = ?", (author_id,))
        await self._db.commit()
        return cursor.rowcount
    async def relevant(self, channel_id: str, texts: Sequence[str], *, now: float, days: float = 30.0,
                       limit: int = 3, exclude: Iterable[str] = ()) -> list[StoredMessage]:
        """Older messages of this channel that share words with `texts`, best bm25 match first.

        Her own messages and other users' both count (what was said about it before); `exclude`
        drops the ones already in the prompt's recent context. An empty word list finds nothing."""
        query = _fts_query(channel_id, texts)
        if query is None or limit <= 0:
            return []
        excluded = set(exclude)
        async with self._db.execute(
            f"SELECT {', '.join('m.' + c.strip() for c in _COLUMNS.split(','))}, bm25(messages_fts) FROM messages_fts "
            "JOIN messages m ON m.id = messages_fts.rowid WHERE messages_fts MATCH ? AND m.ts >= ? AND m.ts <= ? "
            "ORDER BY messages_fts.rowid DESC LIMIT ?",
            (query, now - days * 86400.0, now, FTS_CANDIDATES + len(excluded)),
        ) as cur:
            rows = await cur.fetchall()
        ranked = sorted((r for r in rows if r[0] not in excluded), key=lambda r: r[-1])  # bm25: lower is better
        return [_from_row(r) for r in ranked[:limit]]

    async def topic_hits(self, channel_id: str, texts: Sequence[str], *, limit: int = 3, exclude: str | None = None) -> int:
        """How many stored messages of this channel (up to `limit`) share a word with `texts`: the cheap
        form of `relevant()` for the interest of every message (no ranking, no join)."""
        query = _fts_query(channel_id, texts)
        if query is None:
            return 0
        async with self._db.execute(
            "SELECT count(*) FROM (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? "
            "AND rowid NOT IN (SELECT id FROM messages WHERE message_id = ?) LIMIT ?)",
            (query, exclude or "", limit),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0])

    # -- small persistent settings (active persona, mood) ----------------------------------------

    async def save_state(self, kind: str, scope: str, value: str, ts: float) -> None:
        await self._db.execute(
            "INSERT INTO brain_state (kind, scope, value, ts) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(kind, scope) DO UPDATE SET value = excluded.value, ts = excluded.ts",
            (kind, scope, value, ts),
        )
        await self._db.commit()

    async def load_state(self, kind: str) -> dict[str, tuple[str, float]]:
        """{scope: (value, ts)} of one kind of saved setting."""
        async with self._db.execute("SELECT scope, value, ts FROM brain_state WHERE kind = ?", (kind,)) as cur:
            rows = await cur.fetchall()
        return {scope: (value, ts) for scope, value, ts in rows}

    async def count(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM messages") as cur:
            row = await cur.fetchone()
        return int(row[0])

    async def query_plan(self, sql: str, params: Sequence = ()) -> list[str]:
        """EXPLAIN QUERY PLAN details (tests check the context queries use an index)."""
        async with self._db.execute("EXPLAIN QUERY PLAN " + sql, params) as cur:
            rows = await cur.fetchall()
        return [str(r[-1]) for r in rows]
