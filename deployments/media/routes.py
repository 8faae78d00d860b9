"""HTTP routes for drawing and looking (an APIRouter the ingress includes).

- `POST /v1/images` `{prompt, style?, width?, height?, steps?, seed?, nsfw_channel?}` -> NDJSON, one JSON
  event per line: `progress` {message, fraction, waiting_for_model?}, then `image` {png_b64, seed, prompt,
  width, height, steps, backend} or `error` {kind, message, backend}.
- `POST /v1/vision` `{media: [{url, content_type?}], system?, history?: [[role, text]], text?}` -> NDJSON:
  `progress`, then `answer` {text, frames, skipped} or `error`.

During a voice session the controller blocks both features: the route answers with one `error` of kind
`blocked` and the plan's message, and the stage is not called at all. A graph without an `image:` (or
`vision:`) section answers 503 naming the missing section. A stage the owner paused in the admin panel
(`pauses`, graph/admin/media_pause.py) answers one `error` of kind `paused` before anything else.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray.serve.handle import DeploymentHandle

from deployments.auth import require_token
from deployments.controller.routes import get_controller
from graph.admin.media_pause import MediaPauses
from graph.brain.events import FEATURE_IMAGE_GENERATION, FEATURE_VISION

router = APIRouter(dependencies=[Depends(require_token)], tags=["media"])
_handles: dict[str, DeploymentHandle | None] = {"image": None, "vision": None}
pauses = MediaPauses()  # the owner's pause per stage (the admin panel's Media section sets it)


def configure(image: DeploymentHandle | None = None, vision: DeploymentHandle | None = None) -> None:
    _handles.update(image=image, vision=vision)


def configured(kind: str) -> DeploymentHandle | None:
    """The stage's handle, or None when this graph has no such section."""
    return _handles.get(kind)


class DrawBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=20_000)  # the stage's own limit (image.limits.max_prompt_chars) says how much
    style: str = Field(default="", max_length=2000)
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    nsfw_channel: bool = False


class MediaItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=1, max_length=4000)
    content_type: str = Field(default="", max_length=200)


class LookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    media: list[MediaItem] = Field(min_length=1, max_length=10)
    system: str = Field(default="", max_length=20_000)
    history: list[tuple[str, str]] = Field(default_factory=list, max_length=50)
    text: str = Field(default="", max_length=20_000)


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, ensure_ascii=False) + "\n").encode()


async def _stream(events) -> AsyncIterator[bytes]:
    async for event in events:
        yield _line(event)


def _one(event: dict[str, Any]) -> StreamingResponse:
    async def single() -> AsyncIterator[bytes]:
        yield _line(event)

    return StreamingResponse(single(), media_type="application/x-ndjson")


async def _blocked(feature: str) -> dict[str, Any] | None:
    result = await get_controller().check.remote(feature)
    if result.allowed:
        return None
    return {"type": "error", "kind": "blocked", "message": result.message or f"{feature} is unavailable right now",
            "backend": "controller"}


def _handle(kind: str, section: str) -> DeploymentHandle:
    handle = _handles.get(kind)
    if handle is None:
        raise HTTPException(503, detail=f"{kind} is not configured on this graph: add an `{section}:` section to the "
                                        "application's args (docs/deploy.md, Drawing and vision)")
    return handle


@router.post("/v1/images")
async def draw(body: DrawBody) -> StreamingResponse:
    handle = _handle("image", "image")
    refusal = pauses.refusal("image") or await _blocked(FEATURE_IMAGE_GENERATION)
    if refusal is not None:
        return _one(refusal)  # no backend call during a voice session
    events = handle.options(stream=True).generate.remote(body.model_dump())
    return StreamingResponse(_stream(events), media_type="application/x-ndjson")


@router.post("/v1/vision")
async def look(body: LookBody) -> StreamingResponse:
    handle = _handle("vision", "vision")
    refusal = pauses.refusal("vision") or await _blocked(FEATURE_VISION)
    if refusal is not None:
        return _one(refusal)
    events = handle.options(stream=True).look.remote(body.model_dump())
    return StreamingResponse(_stream(events), media_type="application/x-ndjson")


