"""Drawing and vision end to end: the bot client's executor, the real graph on Ray Serve (`graph_server`),
the ImageGen and Vision stages pinned to `gtx1660`, and protocol servers standing in for AUTOMATIC1111 and an
OpenAI vision server (tests/support/image_servers.py). A request outside voice posts a picture; during a
voice session it is refused with the plan's message and no backend call is made, while the card is freed
(unload-checkpoint, the vision server's /unload); after the session the model is loaded again (a request
that arrives meanwhile waits and says so) and drawing works again."""
from __future__ import annotations

import asyncio
import base64
import io
import itertools

import pytest
from PIL import Image

from bot_client.actions import ActionExecutor
from bot_client.graph_api import GraphClient
from graph.controller.features import IMAGE_MESSAGE, VISION_MESSAGE
from tests.support.chat_ops import RecordingOps

pytestmark = pytest.mark.timeout(300)
GUILD, CHANNEL, USER = 700, 701, 702
_ids = itertools.count(9_000)


def event(content: str, **extra) -> dict:
    message_id = next(_ids)
    return {"type": "message", "event_id": f"message:{message_id}", "guild_id": str(GUILD), "channel_id": str(CHANNEL + message_id),
            "message_id": str(message_id), "author_id": str(USER), "author_name": "Rin", "content": content,
            "mentions_miku": True, "timestamp": 1_700_000_000.0, **extra}


async def until(condition, timeout_s: float = 60.0, what: str = "condition") -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)


@pytest.fixture
async def client(graph_server):
    client = GraphClient(graph_server.base_url, graph_server.token, request_timeout_s=30)
    for session in await client.sessions():
        await client.end_session(session["session_id"])
    yield client
    await client.close()


async def handle(client: GraphClient, ops: RecordingOps, ev: dict) -> list[dict]:
    actions = await client.post_event(ev)
    await ActionExecutor(ops, client, progress_interval_s=0.0).execute(actions, ev)
    return actions


async def test_draw_and_look_outside_during_and_after_a_voice_session(client, graph_server, media_servers):
    a1111, vision, host = media_servers.a1111, media_servers.vision, media_servers.media_host
    red = io.BytesIO()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(red, format="PNG")
    host.files["red.png"] = ("image/png", red.getvalue())

    # placement: both stages hold the gtx1660 resource, like Soprano
    from ray import serve

    for name in ("ImageGen", "Vision"):  # (an earlier test's session may still be handing the card back)
        stage = serve.get_deployment_handle(name, app_name="miku")
        async with asyncio.timeout(60):
            while (await stage.tenant_status.remote())["state"] != "loaded":
                await asyncio.sleep(0.1)
        status = await stage.status.remote()
        assert "gtx1660" in status["detail"]["resources"] and status["detail"]["gpu_tenant"]["state"] == "loaded"

    # 1. outside voice: "draw me a cat" posts a picture with its prompt and seed
    ops = RecordingOps()
    actions = await handle(client, ops, event("draw me a cat on a piano"))
    assert [a["type"] for a in actions if a["type"] != "react"] == ["draw"]
    image = next(entry for entry in ops.log if entry[0] == "image")
    assert "a cat on a piano" in image[2] and "seed `" in image[2] and "twin tails" in image[2]
    assert Image.open(io.BytesIO(image[3])).size == (512, 512)
    # the brain may add an emoji reaction (its own parallel action, rolled at random): not the drawing's
    drawing_ops = [kind for kind in ops.kinds() if kind != "react"]
    assert drawing_ops[0] == "progress" and "typing" in drawing_ops and drawing_ops[-1] == "delete"
    drawn = a1111.paths("POST").count("/sdapi/v1/txt2img")
    assert drawn >= 1

    # vision outside voice: the answer comes from what the vision server decoded
    ops = RecordingOps()
    await handle(client, ops, event("what's this?", attachments=[{"url": f"{host.url}/files/red.png", "content_type": "image/png"}]))
    answer = next(entry for entry in ops.log if entry[0] == "reply")
    assert answer[2].startswith("Ooh! 1 image(s): 40x30 image/jpeg rgb(25")
    system = vision.received[-1]["messages"][0]["content"]
    assert "Miku" in system and "attached image" in system
    looked = len(vision.received)

    # 2. a voice session: the card is freed, both features refused with the plan's messages, no backend call
    unloads = (a1111.paths("POST").count("/sdapi/v1/unload-checkpoint"), vision.paths("POST").count("/unload"))
    reloads = a1111.paths("POST").count("/sdapi/v1/reload-checkpoint")
    session = await client.start_session(GUILD, 1, CHANNEL, USER)
    try:
        await until(lambda: a1111.paths("POST").count("/sdapi/v1/unload-checkpoint") == unloads[0] + 1)
        await until(lambda: vision.paths("POST").count("/unload") == unloads[1] + 1)
        assert not a1111.checkpoint_loaded
        ops = RecordingOps()
        await handle(client, ops, event("draw me a dragon"))
        assert ops.texts() == [IMAGE_MESSAGE]
        await handle(client, ops, event("look", attachments=[{"url": f"{host.url}/files/red.png", "content_type": "image/png"}]))
        assert ops.texts() == [IMAGE_MESSAGE, VISION_MESSAGE]
        assert [entry[2] for entry in ops.log if entry[0] == "react"][-2:] == ["🎤", "🎤"]
        direct = [e async for e in client.draw({"prompt": "a dragon"})]  # even straight to the route
        assert direct == [{"type": "error", "kind": "blocked", "message": IMAGE_MESSAGE, "backend": "controller"}]
        assert a1111.paths("POST").count("/sdapi/v1/txt2img") == drawn and len(vision.received) == looked
        a1111.hold_reload = True  # the model takes a while to come back
    finally:
        await client.end_session(session.session_id)

    # 3. just after the session: the model is loading again; a request waits and says so, then draws
    await until(lambda: a1111.holding.is_set())
    ops = RecordingOps()
    drawing = asyncio.ensure_future(handle(client, ops, event("draw me a leek")))
    await until(lambda: any("loading my drawing model again" in t for t in ops.texts()))
    assert not drawing.done()
    a1111.hold_reload = False
    a1111.release_hold()
    await asyncio.wait_for(drawing, 120)
    assert a1111.checkpoint_loaded and "image" in ops.kinds()
    assert a1111.paths("POST").count("/sdapi/v1/reload-checkpoint") == reloads + 1
    assert a1111.paths("POST").count("/sdapi/v1/txt2img") == drawn + 1
    status = await serve.get_deployment_handle("ImageGen", app_name="miku").tenant_status.remote()
    assert [e["action"] for e in status["events"]][-2:] == ["release", "restore"]


async def test_bad_media_requests_are_clear_and_the_next_one_works(client, media_servers):
    a1111, host = media_servers.a1111, media_servers.media_host
    long_prompt = [e async for e in client.draw({"prompt": "x" * 10_000})]
    assert long_prompt[-1]["type"] == "error" and "10,000 characters" in long_prompt[-1]["message"]
    nsfw = [e async for e in client.draw({"prompt": "a nude statue"})]
    assert nsfw[-1]["kind"] == "nsfw_channel" and "not marked NSFW" in nsfw[-1]["message"]
    broken = [e async for e in client.draw({"prompt": "[notimage] a cat"})]
    assert broken[-1]["kind"] == "bad_output" and a1111.url in broken[-1]["message"]
    host.files["big.bin"] = ("application/octet-stream", b"\0" * 100)
    host.files["doc.pdf"] = ("application/pdf", b"%PDF-1.4")
    looked = [e async for e in client.look({"media": [{"url": f"{host.url}/files/doc.pdf"}, {"url": f"{host.url}/huge"}]})]
    assert looked[-1]["kind"] == "bad_input" and "application/pdf" in looked[-1]["message"] and "MB limit" in looked[-1]["message"]
    ok = [e async for e in client.draw({"prompt": "a cat", "seed": 77})]
    assert ok[-1]["type"] == "image" and ok[-1]["seed"] == 77
    # a picture as large as a real one (random pixels, ~1 MB of base64) through Serve and the client
    large = [e async for e in client.draw({"prompt": "[noise] a cat", "seed": 78, "width": 768, "height": 768})]
    assert large[-1]["type"] == "image" and len(large[-1]["png_b64"]) > 2_000_000
    assert Image.open(io.BytesIO(base64.b64decode(large[-1]["png_b64"]))).size == (768, 768)
