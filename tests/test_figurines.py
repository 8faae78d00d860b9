"""The figurine notifier (graph/features/figurines.py) against a real local feed server: RSS and Atom
that change between polls, each new Miku item posted once as an embed to channels and DMs, nothing
during a voice session and everything that appeared meanwhile afterwards, in order, once; broken feeds
logged and retried with backoff; the state kept across a restart."""
from __future__ import annotations

import logging
import os
import stat

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph.features.feeds import FeedReader
from graph.features.figurines import (
    STORE_FILE,
    FeedCard,
    FigurineConfigError,
    FigurineNotifier,
    Target,
    load_figurines,
    parse_figurines,
)
from graph.features.gate import FIGURINE_NOTIFIER, FeatureGate
from tests.support.feed_server import FeedServer, Route
from tests.support.features import RecordingOps, SettableCheck

ROOT = Path(__file__).resolve().parents[1]
CHANNEL, USER = 500, 600


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server():
    srv = await FeedServer().start()
    yield srv
    await srv.stop()


@pytest.fixture
def controller():
    return SettableCheck()


@pytest.fixture
def ops():
    return RecordingOps()


def notifier(tmp_path, controller, ops, clock, *urls, **extra) -> FigurineNotifier:
    config = parse_figurines({"state_dir": str(tmp_path / "state"), "feeds": list(urls), **extra}, "test-figurines.yaml")
    return FigurineNotifier(config, gate=FeatureGate(FIGURINE_NOTIFIER, controller), ops=ops,
                            reader=FeedReader(max_bytes=256 * 1024, timeout_s=30), clock=clock)


def titles(ops) -> list[tuple[str, int, str]]:
    return [(s.kind, s.target, s.payload.title) for s in ops.sent]


# ---- the file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://shop.example/feed.xml", "file:///etc/passwd", "shop.example/feed", ""])
def test_a_feed_url_that_is_not_http_names_the_file_and_field(url):
    with pytest.raises(FigurineConfigError, match=r"^test.yaml: feeds\[1\].url: "):
        parse_figurines({"feeds": ["https://ok.example/feed.xml", {"url": url}]}, "test.yaml")


@pytest.mark.parametrize("bad,field", [
    ({"keywords": []}, "keywords"), ({"poll_interval_s": 5}, "poll_interval_s"),
    ({"channels": ["general"]}, r"channels\[0\]"), ({"feeds": [{"url": "https://a.example", "colour": 1}]}, r"feeds\[0\]"),
    ({"post_existing": "yes"}, "post_existing"), ({"surprise": 1}, r"\(top level\)"),
])
def test_bad_values_name_the_field(bad, field):
    with pytest.raises(FigurineConfigError, match=rf"^test.yaml: {field}: "):
        parse_figurines(bad, "test.yaml")


def test_files(tmp_path):
    assert load_figurines(ROOT / "configs" / "figurines.yaml").keywords
    path = tmp_path / "f.yaml"
    path.write_text("feeds: [\n")
    with pytest.raises(FigurineConfigError, match=rf"^{path}: \(top level\): not valid YAML"):
        load_figurines(path)


# ---- outside a session ---------------------------------------------------------------------------


async def test_new_miku_items_are_posted_once_as_embeds_to_channels_and_dms(tmp_path, server, controller, ops):
    clock = Clock()
    shop = server.serve_file("/shop.xml", "shop_rss_1.xml")
    notes = notifier(tmp_path, controller, ops, clock, shop, channels=[CHANNEL])
    try:
        assert notes.subscribe(Target("user", USER))
        first, posted = await notes.tick()
        assert first.fetched == 1 and first.new_items == 2 and first.queued == 0 and posted == 0  # first read: remembered
        assert ops.sent == []

        server.serve_file("/shop.xml", "shop_rss_2.xml", version=2)
        clock.now += 899
        report, posted = await notes.tick()
        assert report.fetched == 0 and posted == 0  # not due yet
        clock.now += 1
        report, posted = await notes.tick()
        # 1004 (figma Miku) is new and matches; 1003 (Rin) is new and does not; 1001 was seen
        assert report.new_items == 2 and report.queued == 2 and posted == 2
        assert titles(ops) == [("embed", CHANNEL, "figma Hatsune Miku NT (rerelease)"),
                               ("dm", USER, "figma Hatsune Miku NT (rerelease)")]
        card = ops.sent[0].payload
        assert card == FeedCard(title="figma Hatsune Miku NT (rerelease)", url="https://shop.example/items/1004",
                                description="Articulated figure. Price: 9,500 JPY", price="9,500 JPY",
                                image_url=server.url("/img/1004.png"), source="127.0.0.1")

        clock.now += 900
        report, posted = await notes.tick()
        assert report.not_modified == 1 and posted == 0  # a 304: nothing parsed, nothing posted
        assert server.hits("/shop.xml")[-1].if_none_match == server.routes["/shop.xml"].etag
        assert len(ops.sent) == 2
        assert stat.S_IMODE(os.stat(tmp_path / "state" / STORE_FILE).st_mode) == 0o600
    finally:
        await notes.stop()


async def test_post_existing_posts_the_first_read_oldest_first(tmp_path, server, controller, ops):
    news = server.serve_file("/news.atom", "news_atom_2.xml")
    notes = notifier(tmp_path, controller, ops, Clock(), news, channels=[CHANNEL], post_existing=True)
    try:
        _, posted = await notes.tick()
        assert posted == 2
        assert [s.payload.title for s in ops.sent] == ["Good Smile announces a Hatsune Miku Symphony figure",
                                                       "Snow Miku 2027 figure revealed"]
        assert ops.sent[0].payload.price == "¥18,000"
        assert ops.sent[0].payload.image_url == "https://news.example/img/symphony.webp"
    finally:
        await notes.stop()


# ---- a voice session ------------------------------------------------------------------------------


async def test_during_a_session_nothing_is_posted_and_afterwards_everything_once_in_order(tmp_path, server, controller, ops):
    clock = Clock()
    shop = server.serve_file("/shop.xml", "shop_rss_1.xml")
    news = server.serve_file("/news.atom", "news_atom_1.xml")
    notes = notifier(tmp_path, controller, ops, clock, shop, news, channels=[CHANNEL])
    try:
        notes.subscribe(Target("user", USER))
        await notes.tick()  # both feeds remembered
        controller.in_session = True

        server.serve_file("/shop.xml", "shop_rss_2.xml", version=2)  # figma Miku appears during the session
        clock.now += 900
        report, posted = await notes.tick()
        assert report.queued == 2 and posted == 0
        server.serve_file("/news.atom", "news_atom_2.xml", version=2)  # then Snow Miku
        clock.now += 900
        report, posted = await notes.tick()
        assert report.queued == 2 and posted == 0
        assert ops.sent == [] and FIGURINE_NOTIFIER in controller.asked
        assert notes.store.waiting_count() == 4

        controller.in_session = False
        assert await notes.deliver_pending() == 4
        assert titles(ops) == [("embed", CHANNEL, "figma Hatsune Miku NT (rerelease)"),
                               ("dm", USER, "figma Hatsune Miku NT (rerelease)"),
                               ("embed", CHANNEL, "Snow Miku 2027 figure revealed"),
                               ("dm", USER, "Snow Miku 2027 figure revealed")]
        assert await notes.deliver_pending() == 0
        clock.now += 900
        assert (await notes.tick())[1] == 0
        assert len(ops.sent) == 4
    finally:
        await notes.stop()


async def test_waiting_items_survive_a_restart_and_go_out_once(tmp_path, server, controller, ops):
    clock = Clock()
    shop = server.serve_file("/shop.xml", "shop_rss_1.xml")
    notes = notifier(tmp_path, controller, ops, clock, shop, channels=[CHANNEL])
    await notes.tick()
    controller.in_session = True
    server.serve_file("/shop.xml", "shop_rss_2.xml", version=2)
    clock.now += 900
    await notes.tick()
    await notes.stop()

    again = notifier(tmp_path, controller, ops, clock, shop, channels=[CHANNEL])
    try:
        clock.now += 900
        assert (await again.tick())[1] == 0  # still in the session; the feed answers 304 (validators kept)
        assert server.hits("/shop.xml")[-1].if_none_match is not None
        controller.in_session = False
        assert await again.deliver_pending() == 1
        assert await again.deliver_pending() == 0
        assert titles(ops) == [("embed", CHANNEL, "figma Hatsune Miku NT (rerelease)")]
    finally:
        await again.stop()


# ---- broken feeds and refusing targets -----------------------------------------------------------


async def test_broken_feeds_are_logged_backed_off_and_never_stop_the_good_one(tmp_path, server, controller, ops, caplog):
    caplog.set_level(logging.INFO, "graph.features")
    clock = Clock()
    missing = server.url("/gone.xml")
    garbage = server.set("/garbage.xml", Route(body=b"<html>Site under maintenance</html>", content_type="text/html"))
    junk = server.set("/junk.xml", Route(junk_bytes=10 * 1024 * 1024))
    good = server.serve_file("/news.atom", "news_atom_1.xml")
    notes = notifier(tmp_path, controller, ops, clock, missing, garbage, junk, good, channels=[CHANNEL],
                     post_existing=True, backoff_base_s=600, backoff_max_s=2400)
    try:
        report, posted = await notes.tick()
        assert sorted(report.failed) == sorted([missing, garbage, junk]) and posted == 1
        assert "not_found" in caplog.text and "malformed" in caplog.text and "too_large" in caplog.text
        assert server.junk_sent < 10 * 1024 * 1024

        clock.now += 599  # the broken ones wait out their backoff, the good one its poll interval
        report, _ = await notes.tick()
        assert report.fetched == 0 and report.failed == []
        clock.now += 1
        report, _ = await notes.tick()
        assert len(report.failed) == 3  # tried again; second failure doubles the wait
        assert notes.store.feed(missing)[3] == 2 and notes.store.feed(missing)[4] == clock.now + 1200

        server.serve_file("/gone.xml", "shop_rss_2.xml")  # the shop is back
        clock.now += 1200
        report, posted = await notes.tick()
        assert missing not in report.failed and posted == 2  # 1004 and 1001 (post_existing)
        assert notes.store.feed(missing)[3] == 0
    finally:
        await notes.stop()


async def test_a_refusing_target_is_retried_later_then_given_up(tmp_path, server, controller, ops, caplog):
    news = server.serve_file("/news.atom", "news_atom_1.xml")
    notes = notifier(tmp_path, controller, ops, Clock(), news, channels=[CHANNEL], post_existing=True)
    try:
        notes.subscribe(Target("user", USER))
        ops.fail_for.add(USER)  # DMs closed
        _, posted = await notes.tick()
        assert posted == 1 and [s.target for s in ops.sent] == [CHANNEL]
        assert await notes.deliver_pending() == 0
        assert await notes.deliver_pending() == 0
        assert "given up after 3 attempts" in caplog.text
        assert notes.store.waiting_count() == 0
        assert [outcome for *_, outcome in notes.store.delivered()] == ["posted", "dropped"]
    finally:
        await notes.stop()


async def test_the_notifier_loop_posts_on_its_own(tmp_path, server, controller, ops):
    news = server.serve_file("/news.atom", "news_atom_1.xml")
    notes = notifier(tmp_path, controller, ops, Clock(), news, channels=[CHANNEL], post_existing=True, tick_s=0.05)
    controller.in_session = True
    notes.start()
    try:
        await _wait(lambda: notes.store.waiting_count() == 1)  # read during the session, held
        assert ops.sent == []
        controller.in_session = False
        (sent,) = await ops.wait_for(1)
        assert sent.payload.title == "Good Smile announces a Hatsune Miku Symphony figure"
    finally:
        await notes.stop()


async def _wait(predicate, timeout=30.0):
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def test_the_same_product_in_two_feeds_is_posted_once(tmp_path, server, controller, ops):
    first = server.serve_file("/shop.xml", "shop_rss_1.xml")
    mirror = server.serve_file("/mirror.xml", "shop_rss_1.xml")  # another feed listing the same items
    notes = notifier(tmp_path, controller, ops, Clock(), first, mirror, channels=[CHANNEL], post_existing=True)
    try:
        report, posted = await notes.tick()
        assert report.new_items == 4 and report.queued == 1 and posted == 1
        assert [s.payload.url for s in ops.sent] == ["https://shop.example/items/1001"]
    finally:
        await notes.stop()


def rss(titles: list[str]) -> bytes:
    items = "".join(f"<item><title>{t}</title><link>https://shop.example/{i}</link><guid>g{i}</guid>"
                    f"<pubDate>Tue, 01 Dec 2026 {i % 24:02d}:00:00 +0000</pubDate></item>"
                    for i, t in reversed(list(enumerate(titles))))
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Shop</title>{items}</channel></rss>'.encode()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sampled_from(["session", "publish", "publish-other", "tick", "deliver", "restart"]),
                      min_size=1, max_size=16))
def test_items_are_posted_once_in_order_and_never_in_a_session(tmp_path_factory, steps):
    import asyncio

    asyncio.run(_walk(tmp_path_factory.mktemp("walk"), steps))


async def _walk(tmp_path, steps):
    server = await FeedServer().start()
    titles: list[str] = []
    server.set("/feed.xml", Route(body=rss(titles)))
    controller, ops, clock = SettableCheck(), RecordingOps(), Clock()

    def make():
        return notifier(tmp_path, controller, ops, clock, server.url("/feed.xml"), channels=[CHANNEL], post_existing=True)

    notes = make()
    try:
        for step in steps + ["end"]:
            if step == "session":
                controller.in_session = not controller.in_session
            elif step in ("publish", "publish-other"):
                titles.append(f"Miku figure {len(titles)}" if step == "publish" else f"Racing car {len(titles)}")
                server.set("/feed.xml", Route(body=rss(titles)))
            elif step == "tick":
                clock.now += 900
                sent_before = len(ops.sent)
                await notes.tick()
                if controller.in_session:
                    assert len(ops.sent) == sent_before
            elif step == "deliver":
                sent_before = len(ops.sent)
                await notes.deliver_pending()
                if controller.in_session:
                    assert len(ops.sent) == sent_before
            elif step == "restart":
                await notes.stop()
                notes = make()
            elif step == "end":
                controller.in_session = False
                clock.now += 900
                await notes.tick()
        expected = [t for t in titles if t.startswith("Miku")]
        assert [s.payload.title for s in ops.sent] == expected
    finally:
        await notes.stop()
        await server.stop()
