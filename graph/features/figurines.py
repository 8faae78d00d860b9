"""The figurine notifier: new Miku figures from shop and news feeds, posted once each, never during voice.

configs/figurines.yaml lists the feeds and the keywords (default: Miku). Every `poll_interval_s` a due
feed is read (`graph.features.feeds.FeedReader`: conditional GET, bounded body); a feed that fails
(404, garbage, too large, no answer) is logged and tried again after a doubling backoff, and never
stops the others. Each item is remembered in SQLite the first time it is seen, so it is considered once;
one that matches the keywords gets a delivery row per subscriber (the configured channels, channels
subscribed by command, users who asked for DMs) and `deliver_pending()` posts them as embeds, oldest
item first, marking each row done after Discord took it.

A voice session pauses the posting, not the reading: feeds keep being read (no GPU involved), so an item
that appears and vanishes during the session is still caught, and after the session the waiting rows
go out in the order the items appeared, each once. Before every post the controller is asked
`check("figurine_notifier")`; anything but "allowed" leaves the row waiting.

The first successful read of a feed only records what it already lists (`post_existing: false`), so
adding a feed does not flood the channel with its back catalogue.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit


from graph.features.feeds import Backoff, FeedError, FeedItem, FeedReader, check_feed_url
from graph.features.config_file import read_yaml
from graph.features.gate import FeatureGate
from graph.files import ensure_private_dir, prepare_private_sqlite

log = logging.getLogger(__name__)

DEFAULT_FIGURINES_PATH = "configs/figurines.yaml"
STORE_FILE = "figurines.sqlite3"
DEFAULT_KEYWORDS = ("hatsune miku", "初音ミク", "miku", "ミク")
MAX_DELIVERY_ATTEMPTS = 3  # a target Discord keeps refusing (deleted channel, closed DMs) is given up, logged
MAX_NEW_PER_POLL = 50  # a feed that suddenly lists hundreds of new items posts the newest 50


class FigurineConfigError(ValueError):
    """A bad figurines file: the message names the file and the field."""


@dataclass(frozen=True)
class FeedSource:
    url: str
    keywords: tuple[str, ...] | None = None  # None: the notifier's keywords


@dataclass(frozen=True)
class FigurineConfig:
    enabled: bool = True
    state_dir: str = ".miku/features"
    poll_interval_s: float = 900.0
    tick_s: float = 30.0  # how often the loop looks for due feeds and posts what waits
    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    exclude: tuple[str, ...] = ()
    post_existing: bool = False
    max_bytes: int = 2 * 1024 * 1024
    timeout_s: float = 20.0
    backoff_base_s: float = 300.0
    backoff_max_s: float = 6 * 3600.0
    admin_roles: tuple[str, ...] = ()  # who may subscribe channels (server admins always may)
    channels: tuple[int, ...] = ()  # always posted to, besides the channels subscribed by command
    feeds: tuple[FeedSource, ...] = ()


def _fail(source: str, path: str, message: str) -> FigurineConfigError:
    return FigurineConfigError(f"{source}: {path}: {message}")


def _words(value: Any, source: str, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(source, path, "must be a list of words")
    return tuple(v.strip().casefold() for v in value)


def parse_figurines(data: Any, source: str = DEFAULT_FIGURINES_PATH) -> FigurineConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(source, "(top level)", f"must be a mapping, got {type(data).__name__}")
    defaults = FigurineConfig()
    known = set(FigurineConfig.__dataclass_fields__)
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise _fail(source, "(top level)", f"unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key in ("enabled", "post_existing"):
        if key in data:
            if not isinstance(data[key], bool):
                raise _fail(source, key, f"must be true or false, got {data[key]!r}")
            values[key] = data[key]
    for key in ("poll_interval_s", "tick_s", "timeout_s", "backoff_base_s", "backoff_max_s", "max_bytes"):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
                raise _fail(source, key, f"must be a positive number, got {value!r}")
            values[key] = int(value) if key == "max_bytes" else float(value)
    if values.get("poll_interval_s", defaults.poll_interval_s) < 60:
        raise _fail(source, "poll_interval_s", "must be at least 60 seconds (be kind to the shops)")
    if values.get("backoff_max_s", defaults.backoff_max_s) < values.get("backoff_base_s", defaults.backoff_base_s):
        raise _fail(source, "backoff_max_s", "must not be less than backoff_base_s")
    if "state_dir" in data:
        if not isinstance(data["state_dir"], str) or not data["state_dir"].strip():
            raise _fail(source, "state_dir", "must be a directory path")
        values["state_dir"] = data["state_dir"].strip()
    for key in ("keywords", "exclude"):
        if key in data:
            values[key] = _words(data[key] or [], source, key)
    if not values.get("keywords", defaults.keywords):
        raise _fail(source, "keywords", "must name at least one word (an empty list would match nothing)")
    if "admin_roles" in data:
        roles = data["admin_roles"] or []
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not all(isinstance(r, str) and r.strip() for r in roles):
            raise _fail(source, "admin_roles", "must be a list of role names")
        values["admin_roles"] = tuple(r.strip() for r in roles)
    if "channels" in data:
        raw = data["channels"] or []
        if not isinstance(raw, list):
            raise _fail(source, "channels", "must be a list of channel ids")
        channels = []
        for i, value in enumerate(raw):
            if isinstance(value, bool) or not str(value).strip().isdigit():
                raise _fail(source, f"channels[{i}]", f"must be a Discord id (digits), got {value!r}")
            channels.append(int(str(value).strip()))
        values["channels"] = tuple(dict.fromkeys(channels))
    feeds: list[FeedSource] = []
    raw_feeds = data.get("feeds") or []
    if not isinstance(raw_feeds, list):
        raise _fail(source, "feeds", "must be a list of {url: ...}")
    for i, raw in enumerate(raw_feeds):
        raw = {"url": raw} if isinstance(raw, str) else raw
        if not isinstance(raw, dict) or set(map(str, raw)) - {"url", "keywords"}:
            raise _fail(source, f"feeds[{i}]", "must be a URL or a mapping with url and optional keywords")
        try:
            url = check_feed_url(raw.get("url"))
        except ValueError as exc:
            raise _fail(source, f"feeds[{i}].url", str(exc)) from None
        if any(f.url == url for f in feeds):
            raise _fail(source, f"feeds[{i}].url", f"{url} is listed twice")
        words = _words(raw["keywords"], source, f"feeds[{i}].keywords") if raw.get("keywords") is not None else None
        feeds.append(FeedSource(url, words))
    values["feeds"] = tuple(feeds)
    return FigurineConfig(**{**asdict(defaults), "feeds": (), **values})


def load_figurines(path: str | Path = DEFAULT_FIGURINES_PATH) -> FigurineConfig:
    p = Path(path)
    return parse_figurines(read_yaml(p, FigurineConfigError), str(p))


# ---- what goes out -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedCard:
    """An item as an embed: title linking to it, a short description, the price and the image when known."""

    title: str
    url: str
    description: str
    price: str | None
    image_url: str | None
    source: str  # the feed's host, for the footer

    @classmethod
    def of(cls, item: FeedItem) -> "FeedCard":
        summary = item.summary if len(item.summary) <= 300 else item.summary[:299] + "…"
        return cls(item.title[:256] or item.link[:256], item.link, summary, item.price, item.image_url,
                   urlsplit(item.feed_url).hostname or item.feed_url)


class CardOps(Protocol):
    """How the notifier reaches Discord (the bot implements it with embeds)."""

    async def send_embed(self, channel_id: int, card: FeedCard) -> None: ...

    async def dm_embed(self, user_id: int, card: FeedCard) -> None: ...


@dataclass(frozen=True)
class Target:
    kind: str  # "channel" | "user"
    id: int

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, key: str) -> "Target":
        kind, _, value = key.partition(":")
        return cls(kind, int(value))


def matches(item: FeedItem, keywords: tuple[str, ...], exclude: tuple[str, ...] = ()) -> bool:
    text = f"{item.title}\n{item.summary}".casefold()
    return any(k in text for k in keywords) and not any(x in text for x in exclude)


# ---- storage -----------------------------------------------------------------------------------


class FigurineStore:
    """Feeds' validators and backoff, every item seen, the delivery rows and the subscriptions (SQLite)."""

    def __init__(self, path: Path, busy_timeout_s: float = 5.0) -> None:
        prepare_private_sqlite(path)
        self._db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS feeds (url TEXT PRIMARY KEY, etag TEXT, last_modified TEXT,
                seeded INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
                next_poll_at REAL NOT NULL DEFAULT 0, last_error TEXT);
            CREATE TABLE IF NOT EXISTS items (seq INTEGER PRIMARY KEY AUTOINCREMENT, feed_url TEXT NOT NULL,
                item_id TEXT NOT NULL, matched INTEGER NOT NULL, found_at REAL NOT NULL, data TEXT NOT NULL,
                link TEXT NOT NULL DEFAULT '', UNIQUE (feed_url, item_id));
            CREATE INDEX IF NOT EXISTS items_link ON items (link);
            CREATE TABLE IF NOT EXISTS deliveries (seq INTEGER NOT NULL, target TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, done_at REAL, outcome TEXT, PRIMARY KEY (seq, target));
            CREATE INDEX IF NOT EXISTS deliveries_waiting ON deliveries (done_at, seq);
            CREATE TABLE IF NOT EXISTS subscriptions (target TEXT PRIMARY KEY, added_at REAL NOT NULL);
        """)

    def close(self) -> None:
        self._db.close()

    # feeds
    def feed(self, url: str) -> tuple[str | None, str | None, bool, int, float]:
        row = self._db.execute("SELECT etag, last_modified, seeded, failures, next_poll_at FROM feeds WHERE url = ?",
                               (url,)).fetchone()
        if row is None:
            return None, None, False, 0, 0.0
        return row[0], row[1], bool(row[2]), int(row[3]), float(row[4])

    def feed_ok(self, url: str, etag: str | None, last_modified: str | None, next_poll_at: float) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO feeds (url, etag, last_modified, seeded, failures, next_poll_at, last_error) "
                "VALUES (?, ?, ?, 1, 0, ?, NULL) ON CONFLICT(url) DO UPDATE SET etag = excluded.etag, "
                "last_modified = excluded.last_modified, seeded = 1, failures = 0, "
                "next_poll_at = excluded.next_poll_at, last_error = NULL",
                (url, etag, last_modified, next_poll_at))

    def feed_failed(self, url: str, error: str, backoff: Backoff, now: float) -> tuple[int, float]:
        _, _, _, failures, _ = self.feed(url)
        failures += 1
        next_poll_at = now + backoff.delay(failures)
        with self._db:
            self._db.execute(
                "INSERT INTO feeds (url, failures, next_poll_at, last_error) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(url) DO UPDATE SET failures = excluded.failures, "
                "next_poll_at = excluded.next_poll_at, last_error = excluded.last_error",
                (url, failures, next_poll_at, error[:500]))
        return failures, next_poll_at

    def items_seen(self) -> dict[str, tuple[int, int]]:
        """feed URL -> (items seen, items that matched the keywords)."""
        rows = self._db.execute("SELECT feed_url, COUNT(*), SUM(matched) FROM items GROUP BY feed_url").fetchall()
        return {url: (int(count), int(matched or 0)) for url, count, matched in rows}

    def feed_errors(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT url, last_error FROM feeds WHERE last_error IS NOT NULL").fetchall())

    # items and deliveries
    def add_items(self, items: list[tuple[FeedItem, bool]], targets: list[Target], now: float) -> list[int]:
        """Record items not seen before (in the order given) with a delivery row per target for the
        matching ones, in one transaction; returns the new items' sequence numbers."""
        added = []
        with self._db:
            for item, deliver in items:
                if deliver and item.link and self._db.execute(
                        "SELECT 1 FROM items WHERE link = ? AND matched = 1", (item.link,)).fetchone():
                    deliver = False  # the same product from another feed (or under a new id): posted already
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO items (feed_url, item_id, matched, found_at, data, link) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (item.feed_url, item.id, int(deliver), now, json.dumps(asdict(item), ensure_ascii=False), item.link))
                if not cursor.rowcount:
                    continue
                seq = cursor.lastrowid
                added.append(seq)
                if deliver:
                    self._db.executemany("INSERT OR IGNORE INTO deliveries (seq, target) VALUES (?, ?)",
                                         [(seq, t.key) for t in targets])
        return added

    def known(self, feed_url: str, item_ids: list[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(item_ids), 500):
            chunk = item_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            known |= {row[0] for row in self._db.execute(
                f"SELECT item_id FROM items WHERE feed_url = ? AND item_id IN ({marks})", (feed_url, *chunk))}
        return known

    def waiting(self, limit: int = 100) -> list[tuple[int, Target, FeedItem, int]]:
        rows = self._db.execute(
            "SELECT d.seq, d.target, i.data, d.attempts FROM deliveries d JOIN items i ON i.seq = d.seq "
            "WHERE d.done_at IS NULL ORDER BY d.seq, d.target LIMIT ?", (limit,)).fetchall()
        return [(seq, Target.parse(target), FeedItem(**json.loads(data)), attempts) for seq, target, data, attempts in rows]

    def waiting_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM deliveries WHERE done_at IS NULL").fetchone()[0]

    def done(self, seq: int, target: Target, now: float, outcome: str = "posted") -> None:
        with self._db:
            self._db.execute("UPDATE deliveries SET done_at = ?, outcome = ? WHERE seq = ? AND target = ?",
                             (now, outcome, seq, target.key))

    def attempt_failed(self, seq: int, target: Target) -> int:
        with self._db:
            self._db.execute("UPDATE deliveries SET attempts = attempts + 1 WHERE seq = ? AND target = ?",
                             (seq, target.key))
        return self._db.execute("SELECT attempts FROM deliveries WHERE seq = ? AND target = ?",
                                (seq, target.key)).fetchone()[0]

    def delivered(self) -> list[tuple[int, str, str]]:
        """(seq, target, outcome) of every finished row, in order (tests and `figures status`)."""
        return self._db.execute("SELECT seq, target, outcome FROM deliveries WHERE done_at IS NOT NULL "
                                "ORDER BY seq, target").fetchall()

    # subscriptions
    def subscribe(self, target: Target, now: float) -> bool:
        with self._db:
            return bool(self._db.execute("INSERT OR IGNORE INTO subscriptions (target, added_at) VALUES (?, ?)",
                                         (target.key, now)).rowcount)

    def unsubscribe(self, target: Target) -> bool:
        with self._db:
            return bool(self._db.execute("DELETE FROM subscriptions WHERE target = ?", (target.key,)).rowcount)

    def subscriptions(self) -> list[Target]:
        return [Target.parse(row[0]) for row in self._db.execute("SELECT target FROM subscriptions ORDER BY added_at, target")]


# ---- the notifier ------------------------------------------------------------------------------


@dataclass
class PollReport:
    fetched: int = 0
    not_modified: int = 0
    failed: list[str] = field(default_factory=list)
    new_items: int = 0
    queued: int = 0  # delivery rows created


class FigurineNotifier:
    def __init__(
        self,
        config: FigurineConfig,
        *,
        gate: FeatureGate,
        ops: CardOps,
        reader: FeedReader | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.gate = gate
        self.ops = ops
        self.reader = reader or FeedReader(max_bytes=config.max_bytes, timeout_s=config.timeout_s)
        self.clock = clock
        self.backoff = Backoff(config.backoff_base_s, config.backoff_max_s)
        self.store = FigurineStore(ensure_private_dir(config.state_dir) / STORE_FILE)
        self._delivering = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self.stats = {"posted": 0, "failed": 0, "dropped": 0, "feed_errors": 0}
        self.paused_by_owner = False  # the admin panel's pause: no polling, no posting (the loop keeps going)
        self.last_fetch: dict[str, float] = {}  # feed URL -> when it was last read (this process)

    # ---- subscriptions --------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        configured = [Target("channel", c) for c in self.config.channels]
        return list(dict.fromkeys(configured + self.store.subscriptions()))

    def subscribe(self, target: Target) -> bool:
        return self.store.subscribe(target, self.clock())

    def unsubscribe(self, target: Target) -> bool:
        return self.store.unsubscribe(target)

    # ---- reading -------------------------------------------------------------------------------

    async def poll_due(self) -> PollReport:
        """Read every feed whose time has come; new matching items get their delivery rows."""
        report = PollReport()
        for source in self.config.feeds:
            await self._poll_one(source, report, force=False)
        return report

    async def poll_now(self, url: str) -> PollReport:
        """Read one configured feed now, whatever its next poll time (the admin panel's "poll now");
        KeyError when the URL is not one of the feeds."""
        source = next((s for s in self.config.feeds if s.url == url), None)
        if source is None:
            raise KeyError(url)
        report = PollReport()
        await self._poll_one(source, report, force=True)
        return report

    async def _poll_one(self, source: FeedSource, report: PollReport, *, force: bool) -> None:
        etag, modified, seeded, failures, next_poll_at = self.store.feed(source.url)
        now = self.clock()
        if next_poll_at > now and not force:
            return
        self.last_fetch[source.url] = now
        try:
            result = await self.reader.fetch(source.url, etag=etag, last_modified=modified)
        except FeedError as exc:
            self.stats["feed_errors"] += 1
            count, retry_at = self.store.feed_failed(source.url, str(exc), self.backoff, self.clock())
            report.failed.append(source.url)
            log.warning("figurine feed failed (%s, %d in a row); next try in %.0f s: %s",
                        exc.kind.value, count, retry_at - self.clock(), exc)
            return
        except Exception as exc:  # a bug in parsing one feed must not stop the others
            self.stats["feed_errors"] += 1
            self.store.feed_failed(source.url, f"{type(exc).__name__}: {exc}", self.backoff, self.clock())
            report.failed.append(source.url)
            log.exception("figurine feed %s could not be handled", source.url)
            return
        report.fetched += 1
        if result.not_modified:
            report.not_modified += 1
        else:
            new, queued = self._take(source, result.items, seeded)
            report.new_items += new
            report.queued += queued
        self.store.feed_ok(source.url, result.etag, result.last_modified, self.clock() + self.config.poll_interval_s)

    def _take(self, source: FeedSource, items: tuple[FeedItem, ...], seeded: bool) -> tuple[int, int]:
        known = self.store.known(source.url, [i.id for i in items])
        fresh = [i for i in dict((i.id, i) for i in items).values() if i.id not in known]
        if not fresh:
            return 0, 0
        # All of them are remembered; only the first MAX_NEW_PER_POLL as listed (feeds list newest first)
        # may be posted, so a feed that dumps its back catalogue at once does not flood the channel.
        postable = {i.id for i in fresh[:MAX_NEW_PER_POLL]}
        if len(fresh) > MAX_NEW_PER_POLL:
            log.warning("figurine feed %s lists %d new items at once; only the newest %d may be posted",
                        source.url, len(fresh), MAX_NEW_PER_POLL)
        # Recorded oldest first, so they are posted in the order they appeared.
        fresh.sort(key=lambda i: i.published if i.published is not None else float("inf"))
        keywords = source.keywords or self.config.keywords
        post = seeded or self.config.post_existing
        marked = [(item, post and item.id in postable and matches(item, keywords, self.config.exclude))
                  for item in fresh]
        targets = self.targets()
        before = self.store.waiting_count()
        added = self.store.add_items(marked, targets, self.clock())
        queued = self.store.waiting_count() - before
        if not post:
            log.info("figurine feed %s read for the first time: %d items remembered, none posted", source.url, len(added))
        elif queued:
            log.info("figurine feed %s: %d new items, %d posts queued for %d subscribers", source.url, len(added),
                     queued, len(targets))
        return len(added), queued

    # ---- posting -------------------------------------------------------------------------------

    async def deliver_pending(self) -> int:
        """Post what waits, oldest item first, while the controller allows it; returns how many went out.

        A row Discord refuses is tried again on a later call (not in this one), and given up with a log
        line after MAX_DELIVERY_ATTEMPTS."""
        if self.paused_by_owner:
            return 0  # what waits goes out after the owner resumes
        posted = 0
        failed_now: set[tuple[int, str]] = set()
        async with self._delivering:
            while True:
                batch = [row for row in self.store.waiting(100 + len(failed_now))
                         if (row[0], row[1].key) not in failed_now]
                if not batch:
                    return posted
                for seq, target, item, _attempts in batch:
                    if not await self.gate.is_open():
                        return posted  # a voice session: the rest waits for its end
                    card = FeedCard.of(item)
                    try:
                        if target.kind == "user":
                            await self.ops.dm_embed(target.id, card)
                        else:
                            await self.ops.send_embed(target.id, card)
                    except Exception as exc:
                        self.stats["failed"] += 1
                        attempts = self.store.attempt_failed(seq, target)
                        if attempts >= MAX_DELIVERY_ATTEMPTS:
                            self.stats["dropped"] += 1
                            self.store.done(seq, target, self.clock(), "dropped")
                            log.warning("figurine %r to %s given up after %d attempts: %s: %s", item.title,
                                        target.key, attempts, type(exc).__name__, exc)
                        else:
                            failed_now.add((seq, target.key))
                            log.warning("figurine %r to %s failed (attempt %d), retried later: %s: %s",
                                        item.title, target.key, attempts, type(exc).__name__, exc)
                        continue
                    self.store.done(seq, target, self.clock())
                    self.stats["posted"] += 1
                    posted += 1

    async def tick(self) -> tuple[PollReport, int]:
        if self.paused_by_owner:
            return PollReport(), 0
        report = await self.poll_due()
        return report, await self.deliver_pending()

    async def run(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop itself must outlive anything one round does
                log.exception("figurine notifier round failed; next round in %.0f s", self.config.tick_s)
            await sleep(self.config.tick_s)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="figurine-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        await self.reader.close()
        self.store.close()
