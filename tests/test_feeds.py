"""graph/features/feeds.py against a real local HTTP server: RSS and Atom that change between polls,
conditional GETs (ETag, Last-Modified), 404, garbage, 10 MB of junk, an answer that never comes, bad URLs."""
from __future__ import annotations

import pytest

from graph.features.feeds import (
    Backoff,
    FeedError,
    FeedErrorKind,
    FeedItem,
    FeedReader,
    check_feed_url,
)
from tests.support.feed_server import FeedServer, Route


@pytest.fixture
async def server():
    srv = await FeedServer().start()
    yield srv
    await srv.stop()


@pytest.fixture
async def reader():
    async with FeedReader(max_bytes=512 * 1024, timeout_s=30) as r:
        yield r


async def test_rss_items_with_price_and_image(server, reader):
    url = server.serve_file("/shop.xml", "shop_rss_1.xml")
    result = await reader.fetch(url)
    assert result.status == 200 and not result.not_modified
    assert result.title == "Figure Shop: new arrivals"
    first, second = result.items
    assert first == FeedItem(
        id="shop-1001",
        title="Nendoroid Hatsune Miku: Magical Mirai 2026 Ver.",
        link="https://shop.example/items/1001",
        published=1796029200.0,
        summary="Pre-order now. Limited run.",
        price="¥6,800",
        image_url="https://img.shop.example/1001.jpg",
        feed_url=url,
    )
    assert second.price == "$59.99" and second.image_url is None


async def test_conditional_get_then_a_changed_feed(server, reader):
    url = server.serve_file("/shop.xml", "shop_rss_1.xml")
    first = await reader.fetch(url)
    again = await reader.fetch(url)
    assert again.not_modified and again.items == ()
    assert server.hits("/shop.xml")[1].if_none_match == first.etag
    assert server.hits("/shop.xml")[1].if_modified_since == first.last_modified

    server.serve_file("/shop.xml", "shop_rss_2.xml", version=2)
    changed = await reader.fetch(url)
    assert not changed.not_modified
    assert [i.id for i in changed.items] == ["shop-1004", "shop-1003", "shop-1001"]
    new = changed.items[0]
    # a relative <img> in the description, resolved against the feed's address; the price from the text
    assert new.image_url == server.url("/img/1004.png")
    assert new.price == "9,500 JPY"


async def test_last_modified_alone_is_sent_back(server, reader):
    server.serve_file("/a.xml", "news_atom_1.xml")
    server.routes["/a.xml"].etag = None
    url = server.url("/a.xml")
    await reader.fetch(url)
    second = await reader.fetch(url)
    assert second.not_modified
    assert server.hits("/a.xml")[1].if_none_match is None
    assert server.hits("/a.xml")[1].if_modified_since == server.routes["/a.xml"].last_modified


async def test_atom_entries(server, reader):
    url = server.serve_file("/news.atom", "news_atom_1.xml")
    (item,) = (await reader.fetch(url)).items
    assert item.id == "tag:news.example,2026:miku-symphony"
    assert item.link == "https://news.example/posts/miku-symphony"
    assert item.image_url == "https://news.example/img/symphony.webp"
    assert item.price == "¥18,000"
    assert item.published == 1796040000.0
    server.serve_file("/news.atom", "news_atom_2.xml", version=2)
    items = (await reader.fetch(url)).items
    assert [i.title for i in items] == ["Snow Miku 2027 figure revealed",
                                       "Good Smile announces a Hatsune Miku Symphony figure"]
    assert items[0].price is None and items[0].image_url is None


@pytest.mark.parametrize("status,kind", [(404, FeedErrorKind.NOT_FOUND), (410, FeedErrorKind.NOT_FOUND),
                                         (500, FeedErrorKind.HTTP), (429, FeedErrorKind.HTTP)])
async def test_error_statuses(server, reader, status, kind):
    url = server.set("/x.xml", Route(status=status, body=b"nope"))
    with pytest.raises(FeedError) as err:
        await reader.fetch(url)
    assert err.value.kind is kind and err.value.status == status and url in str(err.value)


async def test_unknown_path_is_404(server, reader):
    with pytest.raises(FeedError) as err:
        await reader.fetch(server.url("/missing.xml"))
    assert err.value.kind is FeedErrorKind.NOT_FOUND


@pytest.mark.parametrize("body", [b"<html><body>Sorry, we moved.</body></html>", b"\x00\xff garbage \x13" * 50, b""])
async def test_garbage_is_malformed(server, reader, body):
    url = server.set("/g.xml", Route(body=body, content_type="text/html"))
    with pytest.raises(FeedError) as err:
        await reader.fetch(url)
    assert err.value.kind is FeedErrorKind.MALFORMED


async def test_ten_megabytes_of_junk_stop_at_the_bound(server, reader):
    url = server.set("/junk.xml", Route(junk_bytes=10 * 1024 * 1024))
    with pytest.raises(FeedError) as err:
        await reader.fetch(url)
    assert err.value.kind is FeedErrorKind.TOO_LARGE
    # the reader hung up: the server could not push the whole 10 MB
    assert server.junk_sent < 10 * 1024 * 1024


async def test_declared_length_over_the_bound(server):
    url = server.set("/big.xml", Route(body=b"<rss>" + b" " * 5000 + b"</rss>"))
    async with FeedReader(max_bytes=1000) as small:
        with pytest.raises(FeedError) as err:
            await small.fetch(url)
    assert err.value.kind is FeedErrorKind.TOO_LARGE and "declares" in err.value.reason


async def test_no_answer_is_a_timeout(server):
    url = server.set("/slow.xml", Route(hang=True))
    async with FeedReader(timeout_s=0.3) as impatient:
        with pytest.raises(FeedError) as err:
            await impatient.fetch(url)
    assert err.value.kind is FeedErrorKind.TIMEOUT


async def test_refused_connection_is_unreachable(reader):
    from tests.conftest import free_port

    with pytest.raises(FeedError) as err:
        await reader.fetch(f"http://127.0.0.1:{free_port()}/feed.xml")
    assert err.value.kind is FeedErrorKind.UNREACHABLE


@pytest.mark.parametrize("url", ["ftp://x.example/feed", "file:///etc/passwd", "javascript:alert(1)", "", "http://", 12])
async def test_bad_urls(reader, url):
    with pytest.raises(ValueError):
        check_feed_url(url)
    with pytest.raises(FeedError) as err:
        await reader.fetch(url)
    assert err.value.kind is FeedErrorKind.BAD_URL


def test_backoff_doubles_up_to_its_cap():
    backoff = Backoff(base_s=60, max_s=600)
    assert [backoff.delay(n) for n in range(6)] == [0, 60, 120, 240, 480, 600]
    assert backoff.delay(10_000) == 600
    with pytest.raises(ValueError):
        Backoff(base_s=0)
