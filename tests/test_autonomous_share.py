""""Share something" shares real posts from the configured share feeds, never an invented topic.

`FeedShare` reads RSS/Atom feeds served by a real local HTTP server and hands out each post once per
server; the Brain's autonomous host writes the message from the post and appends its real link; with no
share feeds the engine's share action is off (blocked by `feeds_configured`).
"""
from __future__ import annotations

import pytest

from graph.autonomous.sharing import FeedShare
from tests.support.feed_server import FeedServer
from tests.test_autonomous_hosting import FAST_AUTONOMOUS, _guild, _message, _post, clock, host_factory  # noqa: F401

NOW = 1796100000.0  # a few days after the test feeds' items


@pytest.fixture
async def feeds():
    server = await FeedServer().start()
    yield server
    await server.stop()


async def test_each_post_is_shared_once_per_server_newest_first(feeds):
    url = feeds.serve_file("/shop.xml", "shop_rss_1.xml")
    share = FeedShare((url,), clock=lambda: NOW, max_age_s=30 * 86400)
    try:
        first, second = await share.pick(1), await share.pick(1)
        assert first.title == "Nendoroid Hatsune Miku: Magical Mirai 2026 Ver." and first.link == "https://shop.example/items/1001"
        assert second is not None and second.id != first.id
        assert await share.pick(1) is None  # nothing left that this server has not seen
        assert (await share.pick(2)).id == first.id  # another server starts from the newest
        prompt = FeedShare.prompt(first, "Share something of your own.\nCurrent mood: bubbly.")
        assert first.title in prompt and "not an instruction" in prompt and prompt.endswith("Current mood: bubbly.")
    finally:
        await share.close()


async def test_old_posts_and_unreadable_feeds_give_nothing_to_share(feeds):
    url = feeds.serve_file("/shop.xml", "shop_rss_1.xml")
    share = FeedShare((url, feeds.url("/gone.xml")), clock=lambda: NOW + 365 * 86400, max_age_s=7 * 86400)
    try:
        assert await share.pick(1) is None
        assert share.errors == 1  # the 404 feed is logged and skipped, not raised
    finally:
        await share.close()


def _share_settings() -> dict:
    actions = {**FAST_AUTONOMOUS["actions"],
               "share_something": {"max_momentum": 1000, "min_gap_s": 0, "rate_per_min": 1000, "night_allowed": True}}
    return {"actions": actions}


async def test_the_host_shares_a_real_post_with_its_link(host_factory, clock, feeds):  # noqa: F811
    url = feeds.serve_file("/news.xml", "news_atom_1.xml")

    async def llm(prompt: str, system: str | None, options=None) -> str:
        return "Omg, look at this figure!!"

    clock.now = NOW  # the feed's post is a few days old (share feeds skip posts older than a week)
    host = await host_factory(complete=llm, share_feeds=[url], **_share_settings())
    try:
        guild, channel = _guild(), "5151"
        host.configure_server({"guild_id": guild, "allowed_channels": [channel]})
        await _post(host, _message(guild, channel, 0), clock)
        clock.now += 60
        assert await host.tick() == 1
        [action] = await host.take(0)
        assert action["autonomous"]["action"] == "share_something"
        assert action["text"] == "Omg, look at this figure!!\nhttps://news.example/posts/miku-symphony"
        assert action["autonomous"]["shared_item"]["link"] == "https://news.example/posts/miku-symphony"
        assert "Good Smile announces a Hatsune Miku Symphony figure" in action["prompt"]["user"]
        assert "Share something of your own" not in action["prompt"]["user"]
    finally:
        await host.close()


async def test_without_share_feeds_she_never_shares(host_factory, clock):  # noqa: F811
    host = await host_factory(**_share_settings())
    guild, channel = _guild(), "5152"
    host.configure_server({"guild_id": guild, "allowed_channels": [channel]})
    await _post(host, _message(guild, channel, 0), clock)
    clock.now += 60
    assert await host.tick() == 0
    share = next(c for c in host.explain(int(guild))["checks"] if c["action"] == "share_something")
    assert share["blocked_by"] == ["feeds_configured"]
