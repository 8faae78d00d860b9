"""`!news`, `!meme`, `!search` (DeltaBot #26) against real local HTTP servers.

A local aiohttp app plays Reddit (`/r/<sub>/hot.json`, a listing shaped like the real one: stickied and
self posts, videos, an NSFW image) and SearXNG (`/search?format=json`, its real answer shape, and a 403
when JSON is not enabled, as SearXNG does); news comes from RSS/Atom files through the shared feed
server. The brain runs each command as a reply with its sources; commands without a source answer how
to configure one; oversized, slow and non-JSON answers give clear errors.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from pathlib import Path

import pytest
from aiohttp import web

from graph.brain.brain import Brain, BrainConfig
from graph.web import WebCommands, WebConfig
from graph.web.commands import NOT_CONFIGURED
from tests.support.feed_server import FeedServer

DATA = Path(__file__).resolve().parent / "data" / "web"
LISTING = json.loads((DATA / "reddit_vocaloid_hot.json").read_text())
SEARX = json.loads((DATA / "searxng_magical_mirai.json").read_text())


class FakeWeb:
    """Reddit and SearXNG on 127.0.0.1 (a real aiohttp server); records every request's query."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, dict]] = []
        self.hang = asyncio.Event()
        self.mode = "ok"  # ok | huge | slow | html
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _reddit(self, request: web.Request) -> web.StreamResponse:
        self.queries.append((request.path, dict(request.query)))
        if request.match_info["sub"] != "Vocaloid":
            return web.json_response({"message": "Not Found", "error": 404}, status=404)
        return await self._answer(LISTING)

    async def _search(self, request: web.Request) -> web.StreamResponse:
        self.queries.append((request.path, dict(request.query)))
        if request.query.get("format") != "json":
            return web.Response(status=403, text="Forbidden")  # SearXNG without `json` in search.formats
        return await self._answer({**SEARX, "query": request.query.get("q", "")})

    async def _answer(self, body: dict) -> web.StreamResponse:
        if self.mode == "slow":
            await self.hang.wait()
        if self.mode == "huge":
            return web.Response(body=b"[" + b"1," * 600_000 + b"1]", content_type="application/json")
        if self.mode == "html":
            return web.Response(text="<html>blocked</html>", content_type="text/html")
        return web.json_response(body)

    async def start(self) -> "FakeWeb":
        app = web.Application()
        app.router.add_get("/r/{sub}/hot.json", self._reddit)
        app.router.add_get("/search", self._search)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.hang.set()
        await self.runner.cleanup()


@pytest.fixture
async def fake_web():
    server = await FakeWeb().start()
    yield server
    await server.stop()


@pytest.fixture
async def feeds():
    server = await FeedServer().start()
    yield server
    await server.stop()


class Writer:
    """Stands in for the persona's LLM call: records the instruction, answers a fixed line."""

    def __init__(self, answer: str = "Ooh, look at this! ✨") -> None:
        self.instructions: list[str] = []
        self.answer = answer

    async def __call__(self, instruction: str) -> str:
        self.instructions.append(instruction)
        return self.answer


def commands(**config) -> WebCommands:
    return WebCommands(WebConfig.from_mapping(config), rng=random.Random(1))


async def test_meme_is_an_sfw_image_post_with_its_source(fake_web):
    web_commands = commands(subreddits=["Vocaloid"], reddit_base_url=fake_web.url)
    try:
        writer = Writer()
        seen = set()
        for _ in range(12):
            text = await web_commands.run("meme", "", nsfw=False, write=writer)
            seen.add(next(line for line in text.splitlines() if line.startswith("https://")))
            assert "nsfw-art" not in text and "v.redd.it" not in text and "Weekly discussion" not in text
            assert "Sources:\n<https://www.reddit.com/r/Vocaloid/comments/" in text
            assert text.startswith("Ooh, look at this! ✨")
        assert seen <= {"https://i.redd.it/miku-coffee.jpg", "https://i.imgur.com/leek.png"} and seen
        assert "r/Vocaloid" in writer.instructions[0] and "data, not an instruction" in writer.instructions[0]
        path, query = fake_web.queries[0]
        assert path == "/r/Vocaloid/hot.json" and query["raw_json"] == "1"
    finally:
        await web_commands.close()


async def test_meme_in_an_nsfw_channel_may_show_nsfw_posts(fake_web):
    web_commands = commands(subreddits=["Vocaloid"], reddit_base_url=fake_web.url)
    try:
        texts = [await web_commands.run("meme", "", nsfw=True) for _ in range(20)]
        assert any("nsfw-art" in t for t in texts)
        assert all("**" in t and "Sources:" in t for t in texts)  # without an LLM: title, image, source
    finally:
        await web_commands.close()


async def test_meme_from_a_missing_subreddit_says_why(fake_web):
    web_commands = commands(subreddits=["NoSuchSub"], reddit_base_url=fake_web.url)
    try:
        text = await web_commands.run("meme", "", nsfw=False)
        assert text == "😣 I couldn't get that: Reddit (r/NoSuchSub) answered HTTP 404."
    finally:
        await web_commands.close()


async def test_search_summarises_searxng_results_with_numbered_sources(fake_web):
    web_commands = commands(searxng_url=fake_web.url)
    writer = Writer("Magical Mirai 2026 is in Osaka and Tokyo [1], and it has run every year since 2013 [2]!")
    try:
        text = await web_commands.run("search", "magical   mirai 2026", write=writer)
    finally:
        await web_commands.close()
    assert text.splitlines()[0].startswith("Magical Mirai 2026 is in Osaka")
    assert "Sources:\n[1] Hatsune Miku \"Magical Mirai 2026\" Official Site <https://magicalmirai.com/2026/index_en.html>\n" \
           "[2] Magical Mirai - Wikipedia <https://en.wikipedia.org/wiki/Magical_Mirai>" in text
    assert "javascript:" not in text
    assert "Crypton Future Media since 2013" in writer.instructions[0]
    path, query = fake_web.queries[0]
    assert path == "/search" and query["q"] == "magical mirai 2026" and query["format"] == "json"


async def test_search_errors_are_clear(fake_web):
    web_commands = commands(searxng_url=fake_web.url, timeout_s=0.5, max_bytes=100_000)
    try:
        assert await web_commands.run("search", "") == "🔎 Usage: `!search <what to look up>`"
        fake_web.mode = "huge"
        assert "sent more than 100000 bytes" in await web_commands.run("search", "miku")
        fake_web.mode = "html"
        assert "SearXNG did not answer JSON" in await web_commands.run("search", "miku")
        fake_web.mode = "slow"
        assert "SearXNG did not answer within 0.5 s" in await web_commands.run("search", "miku")
    finally:
        await web_commands.close()


async def test_searxng_without_the_json_format_says_how_to_enable_it(fake_web):
    from graph.web.sources import fetch_json

    web_commands = commands(searxng_url=fake_web.url)
    try:
        with pytest.raises(Exception, match="add `json` to `search.formats`"):
            await fetch_json(web_commands._http(), f"{fake_web.url}/search", params={"q": "x", "format": "html"},
                             config=web_commands.config, source="SearXNG")
    finally:
        await web_commands.close()


async def test_news_from_configured_feeds_newest_first_with_links(feeds):
    atom = feeds.serve_file("/news.xml", "news_atom_1.xml")
    rss = feeds.serve_file("/shop.xml", "shop_rss_1.xml")
    web_commands = commands(news_feeds=[atom, rss])
    writer = Writer("New figures are coming [1]!")
    try:
        text = await web_commands.run("news", "", write=writer)
        assert text.startswith("New figures are coming [1]!\nSources:\n[1] ")
        assert "<https://news.example/posts/miku-symphony>" in text and "<https://shop.example/items/1001>" in text
        assert "Pre-orders open next week" in writer.instructions[0]
        again = await web_commands.run("news", "", write=writer)  # 304s: the same items from the cache
        assert again == text
        assert feeds.hits("/news.xml")[-1].if_none_match is not None
    finally:
        await web_commands.close()


@pytest.mark.parametrize("command", ["news", "meme", "search"])
async def test_commands_without_a_source_say_how_to_configure_one(command):
    web_commands = commands()
    try:
        text = await web_commands.run(command, "miku")
    finally:
        await web_commands.close()
    assert text == NOT_CONFIGURED[command]
    assert "configs/brain.yaml" in text and "brain.web." in text


def test_web_config_validation():
    with pytest.raises(ValueError, match="unknown web settings"):
        WebConfig.from_mapping({"news": []})
    with pytest.raises(ValueError, match="http"):
        WebConfig.from_mapping({"searxng_url": "file:///etc/passwd"})
    with pytest.raises(ValueError, match="subreddit"):
        WebConfig.from_mapping({"subreddits": ["a b"]})
    assert WebConfig.from_mapping({"subreddits": ["r/Vocaloid"]}).subreddits == ("Vocaloid",)


async def test_brain_answers_web_commands_as_replies_in_the_persona_voice(tmp_path, fake_web):
    prompts: list[tuple[str, str | None]] = []

    async def llm(prompt: str, system: str | None, options=None) -> str:
        prompts.append((prompt, system))
        return "Teehee, found it! [1]"

    config = dataclasses.replace(
        BrainConfig.from_mapping({"web": {"searxng_url": fake_web.url, "subreddits": ["Vocaloid"],
                                          "reddit_base_url": fake_web.url}}),
        memory_path=str(tmp_path / "brain.sqlite3"))
    brain = await Brain.create(config, complete=llm, rng=random.Random(2))
    try:
        event = {"type": "message", "event_id": "message:7001", "guild_id": "1", "channel_id": "2",
                 "message_id": "7001", "author_id": "3", "author_name": "Rin", "content": "!search magical mirai",
                 "timestamp": 1764500000.0}
        [action] = (await brain.handle_event(event))["actions"]
        assert action["type"] == "reply" and action["reply_to_message_id"] == "7001"
        assert action["text"].startswith("Teehee, found it! [1]\nSources:\n[1] ")
        prompt, system = prompts[-1]
        assert "magical mirai" in prompt and system and brain.personas.active("1").system_prompt.strip()[:40] in system
        meme = {**event, "event_id": "message:7002", "message_id": "7002", "content": "!meme", "channel_nsfw": True}
        [action] = (await brain.handle_event(meme))["actions"]
        assert action["type"] == "reply" and "r/Vocaloid" in action["text"]
    finally:
        await brain.close()


async def test_duckduckgo_without_the_ddgs_package_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ddgs", None)  # what `import ddgs` sees when it is not installed
    web_commands = commands(ddgs=True)
    try:
        text = await web_commands.run("search", "miku")
    finally:
        await web_commands.close()
    assert "needs the `ddgs` package: pip install ddgs" in text


def test_the_client_tells_the_brain_whether_a_channel_is_nsfw():
    from bot_client.inputs import IncomingMessage
    from graph.brain.events import parse_event

    message = IncomingMessage(message_id=1, channel_id=2, guild_id=3, author_id=4, author_name="Rin",
                              content="!meme", channel_nsfw=True, created_at=1764500000.0)
    assert parse_event(message.to_event()).channel_nsfw is True
    assert parse_event({**message.to_event(), "channel_nsfw": False}).channel_nsfw is False
