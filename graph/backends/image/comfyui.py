"""`comfyui`: ComfyUI's HTTP API. A workflow in API format (a JSON template in configs/comfyui/) with
`"{{prompt}}"`, `"{{negative_prompt}}"`, `"{{seed}}"`, `"{{steps}}"`, `"{{guidance}}"`, `"{{width}}"` and
`"{{height}}"` where the values go; each placeholder is replaced by a value of its type (a number stays a
number). `POST /prompt` queues it under our client id, `/ws?clientId=` reports progress (`progress`,
`executing`, `execution_error`, `execution_success`), then `/history/{prompt_id}` names the output images
and `/view` returns one. A voice session frees the card with `POST /free` (unload_models, free_memory); the
models load again with the next prompt.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from graph.backends.http import http_url
from graph.backends.image.base import (
    GeneratedImage,
    ImageGenBackend,
    ImageProgress,
    ImageRequest,
    MediaErrorKind,
    checked_output_off_loop,
)
from graph.backends.image.http import HTTPFailure, MediaHTTP

DEFAULT_WORKFLOW = Path(__file__).resolve().parents[3] / "configs" / "comfyui" / "txt2img.json"
_DONE = object()
PLACEHOLDERS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height")


def fill_workflow(template: dict[str, Any], request: ImageRequest) -> dict[str, Any]:
    """A copy of `template` with every `"{{name}}"` string replaced by the request's value."""
    values = {"prompt": request.prompt, "negative_prompt": request.negative_prompt, "seed": request.seed,
              "steps": request.steps, "guidance": request.guidance, "width": request.width, "height": request.height}

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        if isinstance(node, list):
            return [fill(value) for value in node]
        if isinstance(node, str) and node.startswith("{{") and node.endswith("}}"):
            name = node[2:-2].strip()
            if name not in values:
                raise ValueError(f"comfyui workflow: unknown placeholder {node!r}; known: {', '.join(PLACEHOLDERS)}")
            return values[name]
        return node

    return fill(copy.deepcopy(template))


def load_workflow(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = DEFAULT_WORKFLOW.parents[2] / path  # "configs/comfyui/..." from the checkout, whatever the cwd
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"comfyui: workflow template {path} does not exist") from None
    except ValueError as error:
        raise ValueError(f"comfyui: workflow template {path} is not JSON: {error}") from None
    if not isinstance(workflow, dict) or not all(isinstance(n, dict) and "class_type" in n for n in workflow.values()):
        raise ValueError(f"comfyui: {path} is not an API-format workflow (node id -> {{class_type, inputs}})")
    text = json.dumps(workflow)
    if '"{{prompt}}"' not in text or '"{{seed}}"' not in text:
        raise ValueError(f"comfyui: workflow template {path} needs at least the {{{{prompt}}}} and {{{{seed}}}} placeholders")
    return workflow


@dataclass(frozen=True, kw_only=True)
class ComfyUIOptions:
    url: str
    workflow: str = str(DEFAULT_WORKFLOW)
    timeout_s: float = 300.0
    connect_timeout_s: float = 5.0


class ComfyUIBackend(ImageGenBackend):
    name = "comfyui"

    def __init__(self, **options):
        self.options = ComfyUIOptions(**options)
        self.url = http_url(self.options.url, "comfyui")
        self.workflow = load_workflow(self.options.workflow)
        self.client_id = uuid.uuid4().hex
        self.http = MediaHTTP("image", self.label, self.url, self.options.timeout_s, self.options.connect_timeout_s)

    @property
    def label(self) -> str:
        return f"comfyui {self.url}"

    def describe(self) -> dict:
        return {"backend": self.name, "url": self.url, "workflow": self.options.workflow}

    async def generate(self, request: ImageRequest) -> AsyncIterator[ImageProgress | GeneratedImage]:
        # One deadline for the whole drawing, applied to each wait (never across a `yield`: the consumer's
        # own work between items must not be cancelled by our timeout).
        deadline = asyncio.get_running_loop().time() + self.options.timeout_s
        ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        try:
            socket = await self.http.session().ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=5),
                                                         heartbeat=30)
        except (aiohttp.ClientError, OSError) as error:
            raise self.http.error(f"{self.label} is unreachable at {ws_url}: {error or type(error).__name__}",
                                  MediaErrorKind.UNREACHABLE) from None
        prompt_id = None
        finished = False
        try:
            try:
                queued = await self._before(deadline, self.http.request("POST", "/prompt", json_body={
                    "prompt": fill_workflow(self.workflow, request), "client_id": self.client_id}))
            except HTTPFailure as failure:
                raise self.http.error(f"{self.label} refused the workflow: {failure}") from None
            prompt_id = queued.get("prompt_id") if isinstance(queued, dict) else None
            if not prompt_id:
                raise self.http.error(f"{self.label} queued nothing: {str(queued)[:160]}", MediaErrorKind.BAD_OUTPUT)
            yield ImageProgress("queued on ComfyUI...", 0.0)
            while True:
                message = await self._before(deadline, socket.receive())
                progress = self._event(message, prompt_id)
                if progress is _DONE:
                    break
                if progress is not None:
                    yield progress
            image = await self._before(deadline, self._fetch_output(prompt_id, request))
            finished = True
        finally:
            await socket.close()
            if prompt_id and not finished:
                with contextlib.suppress(Exception):  # the GPU should not keep drawing for nobody
                    await self.http.request("POST", "/interrupt", json_body={"prompt_id": prompt_id}, expect="none", timeout_s=5)
        yield image

    async def _before(self, deadline: float, awaitable):
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except TimeoutError:
            raise self.http.error(f"{self.label} timed out after {self.options.timeout_s:g} s",
                                  MediaErrorKind.TIMEOUT) from None

    def _event(self, message, prompt_id: str):
        """One /ws message: progress to show, _DONE, None (nothing for us), or a MediaError raised."""
        if message.type is aiohttp.WSMsgType.BINARY:
            return None  # preview frames
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise self.http.error(f"{self.label}: its /ws closed before the drawing finished", MediaErrorKind.FAILED)
        try:
            event = json.loads(message.data)
        except ValueError:
            return None
        kind, data = event.get("type"), event.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            return None  # someone else's prompt on a shared server
        if kind == "progress" and data.get("max"):
            fraction = min(max(float(data.get("value", 0)) / float(data["max"]), 0.0), 1.0)
            return ImageProgress(f"drawing... {round(100 * fraction)}% (step {data.get('value')}/{data['max']})", fraction)
        if kind == "execution_error":
            text = data.get("exception_message") or "unknown error"
            raise self.http.error(f"{self.label} failed in node {data.get('node_type') or data.get('node_id')}: "
                                  f"{str(text).strip()[:200]}", MediaErrorKind.FAILED)
        if kind == "execution_interrupted":
            raise self.http.error(f"{self.label}: the drawing was interrupted on the server", MediaErrorKind.FAILED)
        if kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                           and data.get("prompt_id") == prompt_id):
            return _DONE
        return None

    async def _fetch_output(self, prompt_id: str, request: ImageRequest) -> GeneratedImage:
        history = await self.http.request("GET", f"/history/{prompt_id}")
        entry = history.get(prompt_id) if isinstance(history, dict) else None
        images = [image for output in ((entry or {}).get("outputs") or {}).values()
                  for image in (output.get("images") or []) if image.get("type", "output") == "output"]
        if not images:
            raise self.http.error(f"{self.label} finished without an output image (history: {str(entry)[:160]})",
                                  MediaErrorKind.BAD_OUTPUT)
        first = images[0]
        data = await self.http.request("GET", "/view", expect="bytes", params={
            "filename": str(first.get("filename", "")), "subfolder": str(first.get("subfolder", "")),
            "type": str(first.get("type", "output"))})
        return await checked_output_off_loop("image", self.label, data, request)

    async def release(self) -> str:
        await self.http.request("POST", "/free", json_body={"unload_models": True, "free_memory": True},
                                expect="none", timeout_s=30)
        return "POST /free"

    async def restore(self) -> str:
        return "ComfyUI loads the models with the next prompt"

    async def probe(self) -> None:
        await self.http.probe("/system_stats")

    async def aclose(self) -> None:
        await self.http.aclose()
