"""The web sources behind `!meme` and `!search`: Reddit's JSON listings and a SearXNG instance's JSON API.

Each client does one careful GET: an absolute http(s) URL, a total timeout, a body read that stops at
`max_bytes`, and JSON checked field by field. Every failure is a `WebError` whose message says what went
wrong in words a Discord user can read (the command shows it), never a crash and never an unbounded read.
DuckDuckGo search goes through the `ddgs` package when it is installed and enabled (`DdgsSearch`).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

USER_AGENT = "miku-discord-bot/1.0 (web commands)"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")
_IMAGE_HOSTS = ("i.redd.it", "i.imgur.com", "preview.redd.it")


class WebError(Exception):
    """A web source could not be used; the message is fit to show in chat."""


def _http_url(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http(s) URL, got {value!r}")
    return value.strip().rstrip("/")


@dataclass(frozen=True)
class WebConfig:
    """`brain.web` in configs/brain.yaml. Empty source lists mean the command says how to configure one."""

    news_feeds: tuple[str, ...] = ()  # RSS/Atom URLs for !news
    subreddits: tuple[str, ...] = ()  # names without r/ for !meme
    reddit_base_url: str = "https://www.reddit.com"
    searxng_url: str | None = None  # e.g. http://127.0.0.1:8888 (its settings must allow `format: json`)
    ddgs: bool = False  # search DuckDuckGo through the `ddgs` package (pip install ddgs) when no SearXNG
    timeout_s: float = 10.0
    max_bytes: int = 2 * 1024 * 1024
    max_results: int = 5  # search results and news items given to the LLM and listed as sources
    user_agent: str = USER_AGENT

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "WebConfig":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown web settings {unknown}; expected some of {sorted(known)}")
        if "news_feeds" in data:
            data["news_feeds"] = tuple(_http_url(u, "web.news_feeds entry") for u in data["news_feeds"] or ())
        if "subreddits" in data:
            subs = []
            for name in data["subreddits"] or ():
                name = str(name).strip().removeprefix("r/").strip("/")
                if not name or not all(c.isalnum() or c == "_" for c in name):
                    raise ValueError(f"web.subreddits: {name!r} is not a subreddit name")
                subs.append(name)
            data["subreddits"] = tuple(subs)
        for key in ("reddit_base_url", "searxng_url"):
            if data.get(key) is not None:
                data[key] = _http_url(data[key], f"web.{key}")
        config = cls(**data)
        if config.timeout_s <= 0 or config.max_bytes <= 0 or not 1 <= config.max_results <= 20:
            raise ValueError("web.timeout_s and web.max_bytes must be > 0, web.max_results 1..20")
        return config


async def fetch_json(session: aiohttp.ClientSession, url: str, *, params: Mapping[str, str] | None,
                     config: WebConfig, source: str) -> Any:
    """GET `url` and parse its JSON, within `timeout_s` and `max_bytes`; WebError naming `source` otherwise."""
    headers = {"User-Agent": config.user_agent, "Accept": "application/json"}
    try:
        async with asyncio.timeout(config.timeout_s):
            async with session.get(url, params=params, headers=headers, allow_redirects=True, max_redirects=3) as resp:
                if resp.status == 403 and source == "SearXNG":
                    raise WebError("SearXNG refused the JSON API (403): add `json` to `search.formats` in its settings.yml")
                if resp.status == 429:
                    raise WebError(f"{source} is rate-limiting us (429); try again in a minute")
                if resp.status >= 400:
                    raise WebError(f"{source} answered HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > config.max_bytes:
                    raise WebError(f"{source} sent more than {config.max_bytes} bytes")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > config.max_bytes:
                        raise WebError(f"{source} sent more than {config.max_bytes} bytes")
    except WebError:
        raise
    except TimeoutError:
        raise WebError(f"{source} did not answer within {config.timeout_s:g} s") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise WebError(f"{source} is unreachable ({type(exc).__name__})") from None
    try:
        return json.loads(bytes(body))
    except ValueError:
        raise WebError(f"{source} did not answer JSON") from None


@dataclass(frozen=True)
class MemePost:
    title: str
    image_url: str
    permalink: str  # https://www.reddit.com/r/.../comments/...
    subreddit: str
    score: int
    nsfw: bool


def _image_of(post: Mapping[str, Any]) -> str | None:
    url = post.get("url_overridden_by_dest") or post.get("url")
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    if parts.scheme != "https":
        return None
    if post.get("post_hint") == "image" or parts.path.lower().endswith(_IMAGE_SUFFIXES) or parts.hostname in _IMAGE_HOSTS:
        return url
    return None


class RedditClient:
    """Image posts from a subreddit's public JSON listing (`/r/<name>/hot.json`)."""

    def __init__(self, config: WebConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session

    async def image_posts(self, subreddit: str, *, allow_nsfw: bool, limit: int = 50) -> list[MemePost]:
        url = f"{self.config.reddit_base_url}/r/{quote(subreddit)}/hot.json"
        data = await fetch_json(self.session, url, params={"limit": str(limit), "raw_json": "1"},
                                config=self.config, source=f"Reddit (r/{subreddit})")
        listing = data.get("data") if isinstance(data, dict) and data.get("kind") == "Listing" else None
        children = listing.get("children") if isinstance(listing, dict) else None
        if not isinstance(children, list):
            raise WebError(f"Reddit (r/{subreddit}) did not answer a listing")
        posts = []
        for child in children:
            post = child.get("data") if isinstance(child, dict) and child.get("kind") == "t3" else None
            if not isinstance(post, dict) or post.get("stickied") or post.get("is_self"):
                continue
            nsfw = bool(post.get("over_18"))
            if nsfw and not allow_nsfw:
                continue  # SFW unless the channel is marked NSFW
            image = _image_of(post)
            permalink = post.get("permalink")
            title = post.get("title")
            if not image or not isinstance(permalink, str) or not isinstance(title, str):
                continue
            posts.append(MemePost(title=title.strip()[:300], image_url=image,
                                  permalink=f"https://www.reddit.com{permalink}" if permalink.startswith("/") else permalink,
                                  subreddit=str(post.get("subreddit") or subreddit),
                                  score=int(post.get("score") or 0), nsfw=nsfw))
        return posts


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str
    source: str = ""  # the engine that found it


def _results(items: Any, limit: int, *, url_key: str, snippet_key: str, source_key: str) -> list[SearchResult]:
    out = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        url, title = item.get(url_key), item.get("title")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or not isinstance(title, str):
            continue
        snippet = item.get(snippet_key) if isinstance(item.get(snippet_key), str) else ""
        out.append(SearchResult(title.strip()[:200], url, snippet.strip()[:500], str(item.get(source_key) or "")))
        if len(out) >= limit:
            break
    return out


class SearxngClient:
    """A SearXNG instance's JSON API: `GET /search?q=...&format=json`."""

    def __init__(self, config: WebConfig, session: aiohttp.ClientSession) -> None:
        assert config.searxng_url
        self.config = config
        self.session = session

    async def search(self, query: str) -> list[SearchResult]:
        data = await fetch_json(self.session, f"{self.config.searxng_url}/search",
                                params={"q": query, "format": "json", "safesearch": "1"},
                                config=self.config, source="SearXNG")
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise WebError("SearXNG answered JSON without a `results` list")
        return _results(data["results"], self.config.max_results, url_key="url", snippet_key="content",
                        source_key="engine")


class DdgsSearch:
    """DuckDuckGo through the `ddgs` package (synchronous: it runs in a worker thread, with the timeout)."""

    def __init__(self, config: WebConfig) -> None:
        try:
            from ddgs import DDGS  # noqa: F401
        except ImportError:
            raise WebError("DuckDuckGo search needs the `ddgs` package: pip install ddgs "
                           "(or set `brain.web.searxng_url`)") from None
        self.config = config

    async def search(self, query: str) -> list[SearchResult]:
        from ddgs import DDGS

        def run() -> list[dict]:
            return list(DDGS(timeout=int(self.config.timeout_s)).text(query, max_results=self.config.max_results,
                                                                      safesearch="moderate"))

        try:
            items = await asyncio.wait_for(asyncio.to_thread(run), self.config.timeout_s + 5)
        except TimeoutError:
            raise WebError(f"DuckDuckGo did not answer within {self.config.timeout_s:g} s") from None
        except Exception as exc:  # ddgs raises its own exception types for network and rate limits
            raise WebError(f"DuckDuckGo search failed ({type(exc).__name__})") from None
        return _results(items, self.config.max_results, url_key="href", snippet_key="body", source_key="source")
