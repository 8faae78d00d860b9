"""Read RSS and Atom feeds safely: conditional GET, a bounded body, tolerant parsing, one clear error.

Several features watch feeds (the figurine notifier, shared tweets, `!news`), and every one of them must
survive a feed that answers 404, HTML, 10 MB of junk or nothing at all. `FeedReader.fetch(url)` does the
one careful fetch they all need and returns plain `FeedItem` values; any failure is a `FeedError` with a
`FeedErrorKind` and the URL, never a crash and never an unbounded read. Retrying later is the caller's
choice; `Backoff` is the small clock-free helper for it.

    reader = FeedReader(max_bytes=2 * 1024 * 1024, timeout_s=20)
    result = await reader.fetch("https://example.org/feed.xml")   # -> FeedResult
    if not result.not_modified:
        for item in result.items: ...                              # FeedItem, newest first as the feed lists them
    await reader.close()

The reader remembers each URL's `ETag` and `Last-Modified` and sends them back (`If-None-Match`,
`If-Modified-Since`), so an unchanged feed costs a 304 and no parsing. Parsing (feedparser) runs in a
worker thread: a large feed never holds up the event loop.
"""
from __future__ import annotations

import asyncio
import calendar
import enum
import hashlib
import html
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import feedparser

DEFAULT_MAX_BYTES = 2 * 1024 * 1024  # far more than any real feed; 10 MB of junk is cut here
DEFAULT_TIMEOUT_S = 20.0
USER_AGENT = "miku-bot-feeds/1.0 (+https://github.com/)"
MAX_TEXT_CHARS = 4000  # what an item keeps of its title and summary (Discord's embed description limit)


class FeedErrorKind(enum.Enum):
    BAD_URL = "bad_url"  # not an absolute http(s) URL
    NOT_FOUND = "not_found"  # 404 / 410
    HTTP = "http"  # any other status >= 400 (429 and 5xx are worth retrying sooner or later)
    TOO_LARGE = "too_large"  # the body passed max_bytes
    TIMEOUT = "timeout"  # nothing, or not all of it, within timeout_s
    UNREACHABLE = "unreachable"  # DNS, refused, reset, TLS
    MALFORMED = "malformed"  # not a feed feedparser can read


class FeedError(Exception):
    """A feed could not be read. `str()` names the URL and why; `kind` says what happened."""

    def __init__(self, url: str, kind: FeedErrorKind, reason: str, status: int | None = None) -> None:
        super().__init__(f"feed {url}: {reason}")
        self.url = url
        self.kind = kind
        self.reason = reason
        self.status = status


def check_feed_url(url: Any) -> str:
    """`url` if it is an absolute http(s) URL with a host, else ValueError saying what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("a feed URL must be a non-empty string")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"feed URL {url!r} is not http(s)")
    if not parts.hostname:
        raise ValueError(f"feed URL {url!r} has no host")
    return url


@dataclass(frozen=True)
class FeedItem:
    """One entry of a feed, as plain values. `id` is stable across polls (the entry's id, else its link)."""

    id: str
    title: str
    link: str
    published: float | None  # unix seconds, when the feed says
    summary: str  # plain text, tags removed
    price: str | None  # e.g. "¥12,800" when the feed or the text names one
    image_url: str | None
    feed_url: str


@dataclass(frozen=True)
class FeedResult:
    url: str
    status: int
    items: tuple[FeedItem, ...] = ()
    not_modified: bool = False  # 304: nothing changed since the last fetch
    title: str = ""
    etag: str | None = None
    last_modified: str | None = None
    bozo: str | None = None  # feedparser's complaint about a feed it could still read


@dataclass(frozen=True)
class _Validators:
    etag: str | None
    last_modified: str | None


class FeedReader:
    """Fetches and parses feeds; one instance (one aiohttp session) serves any number of URLs."""

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        session: aiohttp.ClientSession | None = None,
        user_agent: str = USER_AGENT,
        max_redirects: int = 5,
    ) -> None:
        if max_bytes <= 0 or timeout_s <= 0:
            raise ValueError("max_bytes and timeout_s must be positive")
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self.max_redirects = max_redirects
        self._session = session
        self._owns_session = session is None
        self._validators: dict[str, _Validators] = {}

    async def close(self) -> None:
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> "FeedReader":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    def forget(self, url: str) -> None:
        """Drop the remembered ETag/Last-Modified: the next fetch gets the whole feed."""
        self._validators.pop(url, None)

    async def fetch(self, url: str, *, etag: str | None = None, last_modified: str | None = None) -> FeedResult:
        """GET the feed (conditional on what the last answer for this URL said, or on the given validators),
        read at most `max_bytes`, parse it. Raises FeedError; never anything else for network or data faults."""
        try:
            url = check_feed_url(url)
        except ValueError as exc:
            raise FeedError(str(url), FeedErrorKind.BAD_URL, str(exc)) from None
        remembered = self._validators.get(url)
        etag = etag if etag is not None else (remembered.etag if remembered else None)
        last_modified = last_modified if last_modified is not None else (remembered.last_modified if remembered else None)
        headers = {"User-Agent": self.user_agent,
                   "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.8, */*;q=0.1"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._http().get(url, headers=headers, max_redirects=self.max_redirects,
                                            allow_redirects=True) as resp:
                    status = resp.status
                    new_etag = resp.headers.get("ETag") or etag
                    new_modified = resp.headers.get("Last-Modified") or last_modified
                    if status == 304:
                        return FeedResult(url, status, not_modified=True, etag=new_etag, last_modified=new_modified)
                    if status in (404, 410):
                        raise FeedError(url, FeedErrorKind.NOT_FOUND, f"HTTP {status}", status)
                    if status >= 400:
                        raise FeedError(url, FeedErrorKind.HTTP, f"HTTP {status}", status)
                    body = await self._bounded_body(url, resp)
                    base = str(resp.url)
                    content_type = resp.headers.get("Content-Type", "")
        except FeedError:
            raise
        except TimeoutError:
            raise FeedError(url, FeedErrorKind.TIMEOUT, f"no complete answer within {self.timeout_s:g} s") from None
        except aiohttp.TooManyRedirects:
            raise FeedError(url, FeedErrorKind.HTTP, f"more than {self.max_redirects} redirects") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise FeedError(url, FeedErrorKind.UNREACHABLE, f"{type(exc).__name__}: {exc}") from None
        parsed = await asyncio.to_thread(_parse, body, base, content_type)
        result = _result(url, status, parsed, new_etag, new_modified)
        self._validators[url] = _Validators(new_etag, new_modified)
        return result

    async def _bounded_body(self, url: str, resp: aiohttp.ClientResponse) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > self.max_bytes:
            raise FeedError(url, FeedErrorKind.TOO_LARGE,
                            f"declares {declared} bytes, more than the {self.max_bytes} allowed", resp.status)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_bytes:
                # Stop reading: closing the response drops the connection instead of draining the rest.
                resp.close()
                raise FeedError(url, FeedErrorKind.TOO_LARGE, f"body passed the {self.max_bytes} bytes allowed",
                                resp.status)
            chunks.append(chunk)
        return b"".join(chunks)


def _parse(body: bytes, base: str, content_type: str) -> Any:
    return feedparser.parse(body, response_headers={"content-location": base, "content-type": content_type or "application/xml"})


def _result(url: str, status: int, parsed: Any, etag: str | None, last_modified: str | None) -> FeedResult:
    version = parsed.get("version") or ""
    entries = parsed.get("entries") or []
    feed = parsed.get("feed") or {}
    if not version and not entries:
        # feedparser reads almost anything without raising; no version and no entries means it was no feed.
        why = parsed.get("bozo_exception")
        raise FeedError(url, FeedErrorKind.MALFORMED,
                        f"not an RSS or Atom feed ({type(why).__name__ if why else 'no feed elements'})", status)
    items = tuple(item for entry in entries if (item := _item(entry, url)) is not None)
    bozo = None
    if parsed.get("bozo"):
        exc = parsed.get("bozo_exception")
        bozo = f"{type(exc).__name__}: {exc}" if exc is not None else "malformed"
    return FeedResult(url, status, items, title=_text(feed.get("title", "")), etag=etag,
                      last_modified=last_modified, bozo=bozo)


_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
_IMG = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
# A price written in the text: a currency sign or code next to a number ("¥12,800", "$59.99", "12800 JPY").
_NUMBER = r"\d[\d,]*(?:\.\d+)?"
_PRICE = re.compile(
    rf"(?:[¥￥$€£]\s?{_NUMBER}(?:\s?(?:JPY|USD|EUR|GBP|yen))?"
    rf"|\b(?:JPY|USD|EUR|GBP)\s?{_NUMBER}"
    rf"|{_NUMBER}\s?(?:JPY|USD|EUR|GBP|yen|円))",
    re.IGNORECASE,
)


def _text(value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str):
        return ""
    text = html.unescape(_TAG.sub(" ", value))
    return _SPACE.sub(" ", text).strip()[:limit]


def _timestamp(entry: Any) -> float | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if value:
            try:
                return float(calendar.timegm(value))
            except (TypeError, ValueError, OverflowError):
                continue
    return None


def _http_url(value: Any, base: str) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    absolute = urljoin(base, value.strip())
    return absolute if urlsplit(absolute).scheme in ("http", "https") else None


def _image(entry: Any, base: str) -> str | None:
    for key in ("media_content", "media_thumbnail"):
        for media in entry.get(key) or ():
            medium = str(media.get("medium") or media.get("type") or "image")
            if "image" in medium and (url := _http_url(media.get("url"), base)):
                return url
    for link in entry.get("links") or ():
        if link.get("rel") == "enclosure" and str(link.get("type", "")).startswith("image/"):
            if url := _http_url(link.get("href"), base):
                return url
    for enclosure in entry.get("enclosures") or ():
        if str(enclosure.get("type", "")).startswith("image/") and (url := _http_url(enclosure.get("href"), base)):
            return url
    image = entry.get("image")
    if isinstance(image, dict) and (url := _http_url(image.get("href") or image.get("url"), base)):
        return url
    for key in ("summary", "content"):
        value = entry.get(key)
        texts = [c.get("value", "") for c in value] if isinstance(value, list) else [value]
        for text in texts:
            if isinstance(text, str) and (match := _IMG.search(text)) and (url := _http_url(match.group(1), base)):
                return url
    return None


def _price(entry: Any, title: str, summary: str) -> str | None:
    # Shop feeds put it in an element of their own (Google Merchant's g:price, a plain <price>).
    for key in ("g_price", "price", "g_sale_price"):
        value = entry.get(key)
        if isinstance(value, str) and value.strip():
            return _text(value, 60)
    for text in (title, summary):
        if match := _PRICE.search(text):
            return match.group(0).strip()
    return None


def _item(entry: Any, feed_url: str) -> FeedItem | None:
    title = _text(entry.get("title", ""), 256)
    link = _http_url(entry.get("link"), feed_url) or ""
    summary = _text(entry.get("summary", "") or entry.get("description", ""))
    if not title and not link:
        return None  # nothing to show or to link to
    published = _timestamp(entry)
    raw_id = entry.get("id") or entry.get("guid") or link
    if not isinstance(raw_id, str) or not raw_id.strip():
        raw_id = "sha256:" + hashlib.sha256(f"{title}\n{published}".encode()).hexdigest()
    return FeedItem(
        id=raw_id.strip()[:512],
        title=title,
        link=link,
        published=published,
        summary=summary,
        price=_price(entry, title, summary),
        image_url=_image(entry, feed_url),
        feed_url=feed_url,
    )


class Backoff:
    """When to try a failing feed again: `base_s` doubled per failure in a row, capped at `max_s`.

    Pure arithmetic on the times it is given, so callers use their own (injected) clock.
    """

    def __init__(self, base_s: float = 60.0, max_s: float = 3600.0) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError("need 0 < base_s <= max_s")
        self.base_s = base_s
        self.max_s = max_s

    def delay(self, failures: int) -> float:
        """The wait after `failures` failures in a row (0: no wait)."""
        if failures <= 0:
            return 0.0
        return min(self.max_s, self.base_s * (2 ** min(failures - 1, 30)))
