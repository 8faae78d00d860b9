"""The vision path without Ray: safe fetching (allowed hosts, no internal addresses, size limits), frames
from stills, GIFs and videos (PyAV) within the limits, and the openai-vision backend against a protocol
server that decodes what it is sent. Bad input is refused clearly and the next request works."""
from __future__ import annotations

import io
import struct
import zlib

import av
import numpy as np
import pytest
from PIL import Image

from graph.backends import create_backend
from graph.backends.image.base import MediaError, MediaErrorKind
from graph.media.fetch import FetchConfig, FetchRefused, MediaFetcher
from graph.media.frames import FrameLimits, media_frames
from graph.media.images import BadImage
from graph.media.vision import MediaRef, VisionConfig, VisionOrder, VisionService, image_links
from tests.support.image_servers import MediaHostServer, OpenAIVisionProtocolServer


def png(colour=(255, 0, 0), size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def gif(frames: int = 10) -> bytes:
    images = [Image.new("RGB", (32, 32), (i * 25 % 256, 0, 255 - i * 25 % 256)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def mp4(frames: int = 30) -> bytes:
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            array = np.full((48, 64, 3), (0, min(255, i * 8), 0), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims 10 gigapixels (the data is a few bytes that never decode to it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


LIMITS = FrameLimits(max_frames=3, max_bytes=5 * 2**20)


def test_still_gif_and_video_frames_within_the_limits():
    [still] = media_frames(png(), "image/png", LIMITS)
    assert Image.open(io.BytesIO(still)).format == "JPEG"
    gif_frames = media_frames(gif(12), "image/gif", LIMITS)
    assert len(gif_frames) == 3
    reds = [Image.open(io.BytesIO(f)).convert("RGB").getpixel((16, 16))[0] for f in gif_frames]
    assert reds == sorted(reds) and reds[0] < 60 < reds[-1]  # spread over the animation, in order
    video = media_frames(mp4(40), "video/mp4", LIMITS)
    greens = [Image.open(io.BytesIO(f)).convert("RGB").getpixel((32, 24))[1] for f in video]
    assert len(video) == 3 and greens == sorted(greens) and greens[-1] - greens[0] > 100
    big = media_frames(png(size=(3000, 1500)), "image/png", LIMITS)
    assert max(Image.open(io.BytesIO(big[0])).size) == LIMITS.max_side  # scaled down for the model


@pytest.mark.parametrize("data,content_type,words", [
    (b"%PDF-1.7 not an image at all", "application/pdf", "not an image"),
    (png_bomb(), "image/png", "pixel"),
    (gif(5)[:30], "image/gif", "broken GIF"),
    (gif(5)[:13] + bytes(range(256)), "image/gif", "broken GIF"),
    (b"GIF89a" + b"\xff" * 50, "image/gif", "broken GIF"),
    (b"\0" * (6 * 2**20), "image/png", "over the 5 MB limit"),
    (b"", "image/png", "empty"),
])
def test_bad_files_are_refused_with_a_reason(data, content_type, words):
    with pytest.raises(BadImage, match=words):
        media_frames(data, content_type, LIMITS)


def test_image_links_found_in_text():
    text = ("look https://cdn.discordapp.com/attachments/1/2/cat.png?ex=1 and https://example.com/page "
            "and https://x.test/clip.mp4, also https://i.imgur.com/abc")
    assert image_links(text) == ["https://cdn.discordapp.com/attachments/1/2/cat.png?ex=1", "https://x.test/clip.mp4",
                                 "https://i.imgur.com/abc"]


@pytest.fixture(scope="module")
def media_host():
    server = MediaHostServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vision_server():
    server = OpenAIVisionProtocolServer().start()
    yield server
    server.stop()


def test_only_allowed_hosts_and_never_internal_addresses():
    fetcher = MediaFetcher(FetchConfig())
    fetcher.check_url("https://cdn.discordapp.com/attachments/1/2/a.png")
    fetcher.check_url("https://images-ext-1.discordapp.net/external/x/a.png")
    for url, words in [("https://evil.example/a.png", "not an allowed media host"),
                       ("http://cdn.discordapp.com/a.png", "only https"),
                       ("file:///etc/passwd", "only https"),
                       ("https://cdn.discordapp.com.evil.example/a.png", "not an allowed media host")]:
        with pytest.raises(FetchRefused, match=words):
            fetcher.check_url(url)
    internal = MediaFetcher(FetchConfig(allowed_hosts=("127.0.0.1", "169.254.169.254", "localhost"), allow_http=True))
    for url in ("http://127.0.0.1/a.png", "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(FetchRefused, match="internal address"):
            internal.check_url(url)


async def test_a_name_resolving_to_loopback_is_not_fetched(media_host):
    media_host.files["a.png"] = ("image/png", png())
    fetcher = MediaFetcher(FetchConfig(allowed_hosts=("localhost",), allow_http=True))
    try:
        with pytest.raises(FetchRefused, match="internal address"):
            await fetcher.fetch(f"http://localhost:{media_host.port}/files/a.png")
    finally:
        await fetcher.aclose()
    assert "/files/a.png" not in media_host.paths()  # refused before any connection


async def test_size_limit_stops_the_download_and_redirects_are_rechecked(media_host):
    fetcher = MediaFetcher(FetchConfig(allowed_hosts=("127.0.0.1",), allow_internal=True, allow_http=True,
                                       max_bytes=2 * 2**20))
    try:
        with pytest.raises(FetchRefused, match="over the 2 MB limit"):
            await fetcher.fetch(f"{media_host.url}/huge")
        with pytest.raises(FetchRefused, match="not an allowed media host"):
            await fetcher.fetch(f"{media_host.url}/redirect?to=https://evil.example/x.png")
        media_host.files["ok.png"] = ("image/png", png())
        fetched = await fetcher.fetch(f"{media_host.url}/redirect?to=/files/ok.png")
        assert fetched.content_type == "image/png" and fetched.data == media_host.files["ok.png"][1]
    finally:
        await fetcher.aclose()


def vision_service(vision_server, **config) -> VisionService:
    backend = create_backend("vision", {"backend": "openai-vision", "url": vision_server.url, "model": "vision",
                                        "unload_path": "/unload"})
    fetch = FetchConfig(allowed_hosts=("127.0.0.1",), allow_internal=True, allow_http=True, max_bytes=5 * 2**20)
    return VisionService(backend, VisionConfig(fetch=fetch, limits=LIMITS, **config))


async def test_vision_answers_in_persona_with_context_and_every_frame(vision_server, media_host):
    media_host.files["red.png"] = ("image/png", png((255, 0, 0)))
    media_host.files["anim.gif"] = ("image/gif", gif(12))
    service = vision_service(vision_server)
    try:
        answer = await service.look(VisionOrder(
            media=(MediaRef(f"{media_host.url}/files/red.png", "image/png"), MediaRef(f"{media_host.url}/files/anim.gif", "image/gif")),
            system="You are Hatsune Miku.", history=(("user", "we were talking about cats"),), text="what is this?"))
        assert answer.frames == 4 and answer.text.startswith("Ooh! 4 image(s): 64x48 image/jpeg rgb(25")
        sent = vision_server.received[-1]["messages"]
        assert sent[0] == {"role": "system", "content": "You are Hatsune Miku."}
        assert sent[1] == {"role": "user", "content": "we were talking about cats"}
        assert sent[-1]["content"][0] == {"type": "text", "text": "what is this?"}
        assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in sent[-1]["content"][1:])
    finally:
        await service.aclose()


async def test_vision_bad_input_is_clear_and_the_next_request_works(vision_server, media_host):
    media_host.files["doc.pdf"] = ("application/pdf", b"%PDF-1.7")
    media_host.files["bomb.png"] = ("image/png", png_bomb())
    media_host.files["broken.gif"] = ("image/gif", gif(5)[:30])
    service = vision_service(vision_server)
    try:
        for name, words in [("doc.pdf", "application/pdf, not an image"), ("bomb.png", "pixel limit"),
                            ("broken.gif", "broken GIF"), ("missing.png", "HTTP 404")]:
            with pytest.raises(MediaError, match=words) as caught:
                await service.look(VisionOrder(media=(MediaRef(f"{media_host.url}/files/{name}"),), text="hi"))
            assert caught.value.kind is MediaErrorKind.BAD_INPUT and caught.value.message.startswith("I couldn't look at that")
        with pytest.raises(MediaError, match="10,000 characters"):
            await service.look(VisionOrder(media=(MediaRef(f"{media_host.url}/files/red.png"),), text="x" * 10_000))
        media_host.files["red.png"] = ("image/png", png((255, 0, 0)))
        mixed = await service.look(VisionOrder(media=(MediaRef(f"{media_host.url}/files/doc.pdf"),
                                                      MediaRef(f"{media_host.url}/files/red.png")), text="and now?"))
        assert mixed.frames == 1 and mixed.skipped[0][1] == "it is application/pdf, not an image or a video"
        with pytest.raises(MediaError, match=rf"openai-vision {vision_server.url} failed: HTTP 500"):
            await service.look(VisionOrder(media=(MediaRef(f"{media_host.url}/files/red.png"),), text="[fail]"))
        assert await service.backend.release() == "POST /unload" and vision_server.paths("POST")[-1] == "/unload"
    finally:
        await service.aclose()
