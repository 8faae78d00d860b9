"""The client's draw/look execution without Discord or a graph: progress posted and edited at most every
`progress_interval_s` (on an injected clock), the picture as a reply with prompt and seed, and each failure
said plainly; the next request works."""
from __future__ import annotations

import base64
import io

from PIL import Image

from bot_client.actions import ActionExecutor, image_caption
from bot_client.graph_api import GraphUnavailable
from tests.support.chat_ops import RecordingOps


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 128, 128)).save(out, format="PNG")
    return out.getvalue()


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedGraph:
    """Answers draw/look with scripted events, advancing the clock between them."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.script: list = []
        self.orders: list[dict] = []

    async def _events(self, order):
        self.orders.append(order)
        for item in self.script:
            if isinstance(item, Exception):
                raise item
            self.clock.now += item.pop("_after", 0.0)
            yield item

    def draw(self, order):
        return self._events(order)

    def look(self, order):
        return self._events(order)


DRAW = {"type": "draw", "channel_id": "5", "reply_to_message_id": "9", "prompt": "a cat", "style": "anime"}


async def test_progress_is_throttled_and_the_picture_is_a_reply_with_prompt_and_seed():
    clock = Clock()
    graph, ops = ScriptedGraph(clock), RecordingOps()
    graph.script = [
        {"type": "progress", "message": "drawing... 10%", "fraction": 0.1, "_after": 0.5},
        {"type": "progress", "message": "drawing... 20%", "fraction": 0.2, "_after": 0.5},  # too soon: skipped
        {"type": "progress", "message": "drawing... 60%", "fraction": 0.6, "_after": 2.0},
        {"type": "image", "png_b64": base64.b64encode(png()).decode(), "seed": 1234, "prompt": "a cat, anime",
         "width": 8, "height": 8, "steps": 20},
    ]
    executor = ActionExecutor(ops, graph, progress_interval_s=1.5, clock=clock)
    report = await executor.execute([DRAW], {"channel_nsfw": True})
    assert report.done == ["draw"]
    assert graph.orders == [{"prompt": "a cat", "style": "anime", "nsfw_channel": True}]
    edits = [entry[2] for entry in ops.log if entry[0] == "edit"]
    assert edits == ["🎨 drawing... 60%"]
    image = next(entry for entry in ops.log if entry[0] == "image")
    assert image[1] == 9 and image[3] == png()
    assert image[2] == "🎨 **a cat**\nprompt: a cat, anime\nseed `1234` · 8×8 · 20 steps"
    assert ops.kinds()[-1] == "delete" and ("typing", 5) in ops.log


async def test_failures_are_said_plainly_and_the_next_request_works():
    clock = Clock()
    graph, ops = ScriptedGraph(clock), RecordingOps()
    executor = ActionExecutor(ops, graph, progress_interval_s=0.0, clock=clock)
    graph.script = [{"type": "error", "kind": "unreachable", "message": "a1111 http://127.0.0.1:7860 is unreachable at http://127.0.0.1:7860/sdapi/v1/txt2img: refused"}]
    await executor.execute([DRAW])
    assert ops.log[-1][2] == "❌ I couldn't draw that: a1111 http://127.0.0.1:7860 is unreachable at http://127.0.0.1:7860/sdapi/v1/txt2img: refused"
    graph.script = [{"type": "error", "kind": "blocked", "message": "🎤 I can't draw right now"}]
    await executor.execute([DRAW])
    assert ops.log[-1][2] == "🎤 I can't draw right now"  # the controller's own words
    graph.script = [GraphUnavailable("the voice graph at http://g is unreachable (ClientConnectorError)")]
    await executor.execute([DRAW])
    assert ops.log[-1][2] == "❌ I couldn't draw that: the voice graph at http://g is unreachable (ClientConnectorError)"
    graph.script = [{"type": "image", "png_b64": "!!not base64!!", "seed": 1}]
    await executor.execute([DRAW])
    assert ops.log[-1][2] == "❌ I couldn't draw that: the graph sent a broken picture."
    graph.script = [{"type": "progress", "message": "x"}]
    await executor.execute([DRAW])
    assert "without a picture" in ops.log[-1][2]
    graph.script = [{"type": "image", "png_b64": base64.b64encode(png()).decode(), "seed": 2, "prompt": "a cat"}]
    assert (await executor.execute([DRAW])).done == ["draw"] and ops.log[-2][0] == "image"


async def test_look_replies_with_the_answer_or_the_reason():
    clock = Clock()
    graph, ops = ScriptedGraph(clock), RecordingOps()
    executor = ActionExecutor(ops, graph, progress_interval_s=0.0, clock=clock)
    look = {"type": "look", "channel_id": "5", "reply_to_message_id": "9",
            "attachments": [{"url": "https://cdn.discordapp.com/a.png", "content_type": "image/png"}],
            "prompt": {"system": "You are Miku.", "history": [["user", "hi"]], "user": "Rin: what is it?"}}
    graph.script = [{"type": "answer", "text": "A teal guitar! So pretty~", "frames": 1, "skipped": []}]
    await executor.execute([look])
    assert ops.log[-1] == ("reply", 9, "A teal guitar! So pretty~")
    assert graph.orders[-1] == {"media": look["attachments"], "system": "You are Miku.", "history": [["user", "hi"]],
                                "text": "Rin: what is it?"}
    graph.script = [{"type": "error", "kind": "bad_input", "message": "I couldn't look at that: the image is 50.0 MB, over the 25 MB limit"}]
    await executor.execute([look])
    assert ops.log[-1] == ("reply", 9, "❌ I couldn't look at that: the image is 50.0 MB, over the 25 MB limit")


def test_caption_is_bounded():
    caption = image_caption("x" * 5000, {"seed": 1, "prompt": "y" * 5000})
    assert len(caption) <= 1900 and "seed `1`" in caption


async def test_slash_draw_is_a_request_the_brain_answers_and_keeps_the_seed():
    import dataclasses
    import random
    from pathlib import Path

    from bot_client.cogs.draw import DrawCog, slash_draw_event, with_seed
    from graph.brain import Brain, BrainConfig, FeatureCheck

    event = slash_draw_event(request_message_id=77, channel_id=5, guild_id=3, user_id=9, user_name="Rin",
                             prompt="a  red fox", channel_nsfw=False, created_at=1_000_000.0)
    config = dataclasses.replace(BrainConfig.load(Path(__file__).resolve().parents[1] / "configs" / "brain.yaml"),
                                 memory_path=":memory:")

    async def allow(feature):
        return FeatureCheck(True)

    brain = await Brain.create(config, complete=None, check_feature=allow, clock=lambda: 1_000_000.0, rng=random.Random(0))
    try:
        actions = (await brain.handle_event(event))["actions"]
    finally:
        await brain.close()
    draw = [a for a in with_seed(actions, 1234) if a["type"] == "draw"]
    assert draw and draw[0]["prompt"] == "a red fox" and draw[0]["seed"] == 1234 and draw[0]["reply_to_message_id"] == "77"
    assert [c.name for c in DrawCog.__cog_app_commands__] == ["draw"]


async def test_media_stream_reads_events_of_several_megabytes():
    """aiohttp's line reader stops at 128 KiB; a real picture's event is a few MB of base64."""
    import json

    from aiohttp import web

    from bot_client.graph_api import GraphClient

    big = base64.b64encode(bytes(range(256)) * 12_000).decode()  # ~4 MB of base64
    events = [{"type": "progress", "message": "drawing..."}, {"type": "image", "png_b64": big, "seed": 5}]

    async def images(request: web.Request) -> web.StreamResponse:
        assert request.headers["Authorization"] == "Bearer t0k"
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        payload = "".join(json.dumps(e) + "\n" for e in events).encode()
        for start in range(0, len(payload), 100_000):  # arrives in pieces, lines split across them
            await response.write(payload[start:start + 100_000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/images", images)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    client = GraphClient(f"http://127.0.0.1:{port}", "t0k")
    try:
        received = [e async for e in client.draw({"prompt": "x"})]
    finally:
        await client.close()
        await runner.cleanup()
    assert received == events
