"""The image-generation backends against protocol servers (ComfyUI, A1111, OpenAI images: see
tests/support/image_servers.py, written from those projects' documented APIs) and the in-process diffusers
backend on a tiny random Stable Diffusion pipeline; the drawing planner's bounds; bad answers."""
from __future__ import annotations

import asyncio
import io
import json
import random

import pytest
from PIL import Image

from graph.backends import create_backend
from graph.backends.image.base import GeneratedImage, ImageProgress, ImageRequest, MediaError, MediaErrorKind
from graph.backends.image.comfyui import DEFAULT_WORKFLOW, fill_workflow, load_workflow
from graph.media.drawing import DrawingConfig, DrawingPlanner, DrawOrder
from tests.conftest import free_port
from tests.support.image_servers import (
    A1111ProtocolServer,
    ComfyUIProtocolServer,
    OpenAIImagesProtocolServer,
    png_for,
)

STYLE = "anime illustration, Hatsune Miku with long teal twin tails"


@pytest.fixture(scope="module")
def comfy():
    server = ComfyUIProtocolServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def a1111():
    server = A1111ProtocolServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def openai_images():
    server = OpenAIImagesProtocolServer().start()
    yield server
    server.stop()


def request(prompt: str = "a cat", seed: int = 42, **extra) -> ImageRequest:
    planner = DrawingPlanner(DrawingConfig(), random.Random(0))
    planned = planner.plan(DrawOrder(prompt=prompt, style=STYLE, seed=seed, width=extra.pop("width", 128),
                                     height=extra.pop("height", 96), steps=extra.pop("steps", 4)))
    return planned


async def run(backend, req: ImageRequest) -> tuple[list[ImageProgress], GeneratedImage]:
    items = [item async for item in backend.generate(req)]
    assert all(isinstance(i, ImageProgress) for i in items[:-1]) and isinstance(items[-1], GeneratedImage)
    return items[:-1], items[-1]


def pixel(png: bytes) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(png)).convert("RGB").getpixel((0, 0))


def expected_pixel(seed: int) -> tuple[int, int, int]:
    return pixel(png_for(seed, 8, 8))


# -- the planner ---------------------------------------------------------------------------------------


def test_planner_adds_the_style_bounds_size_and_steps_and_picks_a_seed():
    planner = DrawingPlanner(DrawingConfig(max_width=768, max_steps=30), random.Random(3))
    planned = planner.plan(DrawOrder(prompt="  a   cat ", style=STYLE))
    assert planned.prompt == f"a cat, {STYLE}" and (planned.width, planned.height, planned.steps) == (512, 512, 20)
    assert planned.seed == random.Random(3).randrange(2**32)  # from the injected RNG: redoable
    assert planner.plan(DrawOrder(prompt="x", width=333)).width == 328  # multiples of 8
    for order, words in [
        (DrawOrder(prompt="x" * 10_000), "10,000 characters"),
        (DrawOrder(prompt="x", width=4096), "width 4096 is over this graph's limit of 768"),
        (DrawOrder(prompt="x", steps=500), "steps 500 is over"),
        (DrawOrder(prompt="x", seed=-1), "seed must be"),
        (DrawOrder(prompt="   "), "prompt is empty"),
    ]:
        with pytest.raises(MediaError, match=words) as caught:
            planner.plan(order)
        assert caught.value.kind is MediaErrorKind.BAD_REQUEST


def test_nsfw_prompt_refused_outside_nsfw_channels():
    planner = DrawingPlanner(DrawingConfig(), random.Random(0))
    with pytest.raises(MediaError, match="not marked NSFW") as caught:
        planner.plan(DrawOrder(prompt="a nude figure"))
    assert caught.value.kind is MediaErrorKind.NSFW_CHANNEL
    assert planner.plan(DrawOrder(prompt="a nude figure", nsfw_channel=True)).prompt == "a nude figure"
    assert planner.plan(DrawOrder(prompt="a sextant on a ship")).prompt  # whole words only


# -- ComfyUI -------------------------------------------------------------------------------------------


def test_workflow_template_placeholders_become_typed_values():
    template = load_workflow(DEFAULT_WORKFLOW)
    filled = fill_workflow(template, request("a fox", seed=7))
    assert filled["3"]["inputs"]["seed"] == 7 and filled["3"]["inputs"]["steps"] == 4
    assert filled["5"]["inputs"] == {"width": 128, "height": 96, "batch_size": 1}
    assert filled["6"]["inputs"]["text"] == f"a fox, {STYLE}" and "lowres" in filled["7"]["inputs"]["text"]
    assert "{{" not in json.dumps(filled) and "{{" in json.dumps(template)  # the template is untouched


async def test_comfyui_queues_follows_progress_and_fetches_the_image(comfy):
    backend = create_backend("image", {"backend": "comfyui", "url": comfy.url})
    try:
        progress, image = await run(backend, request("a fox", seed=7))
        assert [p.fraction for p in progress if p.fraction] == [0.25, 0.5, 0.75, 1.0]  # /ws progress, step by step
        assert image.seed == 7 and (image.width, image.height) == (128, 96) and pixel(image.png) == expected_pixel(7)
        posted = [c.body for c in comfy.calls if c.path == "/prompt"][-1]
        assert posted["client_id"] == backend.client_id and posted["prompt"]["3"]["inputs"]["seed"] == 7
        assert comfy.paths("GET")[-2:] == [f"/history/{list(comfy.history)[-1]}", "/view"]
        assert await backend.release() == "POST /free"
        assert comfy.calls[-1].body == {"unload_models": True, "free_memory": True} and not comfy.models_loaded
    finally:
        await backend.aclose()


async def test_comfyui_node_error_and_non_image_output_are_named(comfy):
    backend = create_backend("image", {"backend": "comfyui", "url": comfy.url})
    try:
        with pytest.raises(MediaError, match="failed in node KSampler: Allocation on device 0"):
            await run(backend, request("[fail] a fox"))
        with pytest.raises(MediaError, match="not an image") as caught:
            await run(backend, request("[notimage] a fox"))
        assert caught.value.kind is MediaErrorKind.BAD_OUTPUT
        _, image = await run(backend, request("a fox again", seed=9))  # and the next request works
        assert pixel(image.png) == expected_pixel(9)
    finally:
        await backend.aclose()


async def test_comfyui_times_out_and_interrupts_its_prompt(comfy):
    backend = create_backend("image", {"backend": "comfyui", "url": comfy.url, "timeout_s": 1.0})
    try:
        with pytest.raises(MediaError, match=r"timed out after 1 s") as caught:
            await run(backend, request("[hold] a slow fox"))
        assert caught.value.kind is MediaErrorKind.TIMEOUT
        assert "/interrupt" in comfy.paths("POST")
    finally:
        comfy.release_hold()
        await backend.aclose()


# -- A1111 ---------------------------------------------------------------------------------------------


async def test_a1111_txt2img_with_progress_seed_and_unload_reload(a1111):
    backend = create_backend("image", {"backend": "a1111", "url": a1111.url, "progress_interval_s": 0.05})
    try:
        task = asyncio.ensure_future(run(backend, request("[hold] a leek", seed=11, steps=8)))
        async with asyncio.timeout(30):
            while not a1111.holding.is_set():
                await asyncio.sleep(0.01)
            while "/sdapi/v1/progress" not in a1111.paths("GET"):
                await asyncio.sleep(0.01)
        a1111.release_hold()
        progress, image = await task
        assert any(p.fraction == 0.5 and "step 4/8" in p.message for p in progress)
        assert image.seed == 11 and pixel(image.png) == expected_pixel(11)
        body = [c.body for c in a1111.calls if c.path == "/sdapi/v1/txt2img"][-1]
        assert body["prompt"] == f"[hold] a leek, {STYLE}" and body["steps"] == 8 and body["seed"] == 11
        assert body["negative_prompt"] and (body["width"], body["height"]) == (128, 96)
        await backend.release()
        assert not a1111.checkpoint_loaded and a1111.paths("POST")[-1] == "/sdapi/v1/unload-checkpoint"
        await backend.restore()
        assert a1111.checkpoint_loaded and a1111.paths("POST")[-1] == "/sdapi/v1/reload-checkpoint"
    finally:
        await backend.aclose()


async def test_a1111_server_error_and_unreachable_name_the_url(a1111):
    backend = create_backend("image", {"backend": "a1111", "url": a1111.url})
    try:
        with pytest.raises(MediaError, match=rf"a1111 {a1111.url} failed to draw: HTTP 500.*CUDA out of memory"):
            await run(backend, request("[fail] x"))
    finally:
        await backend.aclose()
    dead_url = f"http://127.0.0.1:{free_port()}"
    dead = create_backend("image", {"backend": "a1111", "url": dead_url})
    try:
        with pytest.raises(MediaError, match=f"unreachable at {dead_url}/sdapi/v1/txt2img") as caught:
            await run(dead, request("x"))
        assert caught.value.kind is MediaErrorKind.UNREACHABLE
    finally:
        await dead.aclose()


# -- OpenAI images -------------------------------------------------------------------------------------


async def test_openai_images_b64_json_refusal_and_non_image(openai_images):
    backend = create_backend("image", {"backend": "openai-images", "url": openai_images.url, "unload_path": "/unload"})
    try:
        _, image = await run(backend, request("a teal guitar", seed=3))
        assert image.seed == 3 and pixel(image.png) == expected_pixel(3)
        body = openai_images.calls[-1].body
        assert body["response_format"] == "b64_json" and body["size"] == "128x96" and body["seed"] == 3
        with pytest.raises(MediaError, match="refused the prompt \\(its safety filter\\)") as caught:
            await run(backend, request("[refuse] something"))
        assert caught.value.kind is MediaErrorKind.REFUSED
        with pytest.raises(MediaError, match="not an image") as caught:
            await run(backend, request("[notimage] x"))
        assert caught.value.kind is MediaErrorKind.BAD_OUTPUT
        assert await backend.release() == "POST /unload" and openai_images.paths("POST")[-1] == "/unload"
        _, again = await run(backend, request("a teal guitar", seed=3))  # the next request works
        assert again.png == image.png
    finally:
        await backend.aclose()


def test_media_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(MediaError("image", "a1111 http://x", "timed out", MediaErrorKind.TIMEOUT)))
    assert (error.stage, error.backend, error.message, error.kind) == ("image", "a1111 http://x", "timed out", MediaErrorKind.TIMEOUT)


# -- diffusers in process ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from tests.support.tiny_diffusion import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


async def test_diffusers_loads_the_local_directory_draws_on_cpu_and_releases(tiny_sd):
    backend = create_backend("image", {"backend": "diffusers", "model_path": str(tiny_sd), "device": "cpu",
                                       "dtype": "float32"})
    try:
        await backend.warmup()
        assert backend.loaded and backend.loads == 1
        small = request("a cat", seed=5, width=64, height=64, steps=3)
        progress, image = await run(backend, small)
        assert [p.fraction for p in progress][-1] == 1.0 and (image.width, image.height) == (64, 64)
        _, same = await run(backend, small)
        _, other = await run(backend, request("a cat", seed=6, width=64, height=64, steps=3))
        assert same.png == image.png and other.png != image.png  # the seed decides the picture
        await backend.release()
        assert not backend.loaded
        progress, after = await run(backend, small)  # a request after a release loads the model and says so
        assert progress[0].message == "loading the drawing model..." and backend.loads == 2 and after.png == image.png
    finally:
        await backend.aclose()


def test_diffusers_refuses_a_directory_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local diffusers model directory"):
        create_backend("image", {"backend": "diffusers", "model_path": str(tmp_path)})
