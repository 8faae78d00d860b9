"""The panel's "Drawing & vision" section: the ImageGen and Vision stages listed, paused, tried.

- `GET /admin/api/media`: per stage its backend, URL, health, whether a voice session has its model
  unloaded (the stage's GpuTenant) and whether the owner paused it;
- `POST /admin/api/media/pause` `{stage, paused}`: the owner's pause (graph/admin/media_pause.py), which
  `POST /v1/images` / `/v1/vision` check first;
- `POST /admin/api/media/test` `{stage, prompt?, url?, question?}`: one test drawing (the PNG comes back
  for the page to show) or one look at a picture by URL, straight to the stage (a pause does not stop
  it; a voice session's blackout does, with the stage's own message).
Every change is audited with the user.
"""
from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from deployments.admin.routes import PREFIX, audit_change, panel_change, panel_user
from deployments.admin.sections import Section, register_section
from deployments.media import routes as media_routes
from graph.admin.media_pause import STAGES
from graph.admin.sessions import PanelSession

STATUS_TIMEOUT_S = 5.0
TEST_TIMEOUT_S = 180.0
TEST_PROMPT = "a small test sketch: a teal leek on a white table"

register_section(Section("media", "Drawing & vision", "sections/media.js", 55))
router = APIRouter(prefix=PREFIX + "/api/media")

Stage = Literal["image", "vision"]


class PauseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Stage
    paused: bool


class TestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Stage
    prompt: str = Field(default="", max_length=2000)
    url: str = Field(default="", max_length=4000)
    question: str = Field(default="", max_length=2000)


async def stage_row(stage: str) -> dict[str, Any]:
    handle = media_routes.configured(stage)
    pause = media_routes.pauses.get(stage)
    row: dict[str, Any] = {"stage": stage, "configured": handle is not None,
                           "paused": pause.to_dict() if pause else None}
    if handle is None:
        return row
    try:
        status = await asyncio.wait_for(handle.status.remote(), STATUS_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - a stage that does not answer is shown as down
        return {**row, "ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
    detail = status.get("detail", {})
    tenant = detail.get("gpu_tenant") or {}
    return {**row, "ok": bool(status.get("ok")), "backend": detail.get("backend"), "url": detail.get("url"),
            "model": detail.get("model"), "error": detail.get("error"),
            "model_state": tenant.get("state"),  # loaded / releasing / released / restoring
            "unloaded_for_voice": bool(tenant.get("blocked")) or tenant.get("state") == "released",
            "resources": detail.get("resources")}


@router.get("")
async def media_stages(_: Annotated[PanelSession, Depends(panel_user)]) -> dict[str, Any]:
    return {"stages": list(await asyncio.gather(*(stage_row(stage) for stage in STAGES)))}


@router.post("/pause")
async def pause_stage(body: PauseBody, session: Annotated[PanelSession, Depends(panel_change)]) -> dict[str, Any]:
    pause = media_routes.pauses.set(body.stage, body.paused, session.user)
    change = "media.pause" if body.paused else "media.resume"
    return {"stage": body.stage, "paused": pause.to_dict() if pause else None,
            "audited": await audit_change(session.user, change, {"stage": body.stage})}


async def _collect(events) -> dict[str, Any]:
    """The stage's last image/answer/error event (progress events are dropped)."""
    last: dict[str, Any] = {"type": "error", "kind": "failed", "message": "the stage sent nothing"}
    async for event in events:
        if event.get("type") != "progress":
            last = event
    return last


@router.post("/test")
async def test_stage(body: TestBody, session: Annotated[PanelSession, Depends(panel_change)]) -> dict[str, Any]:
    handle = media_routes.configured(body.stage)
    if handle is None:
        raise HTTPException(404, detail=f"{body.stage} is not configured on this graph")
    if body.stage == "image":
        order = {"prompt": body.prompt.strip() or TEST_PROMPT}
        events = handle.options(stream=True).generate.remote(order)
        detail = {"stage": "image", "prompt": order["prompt"]}
    else:
        if not body.url.strip():
            raise HTTPException(422, detail="give the URL of a picture to look at")
        order = {"media": [{"url": body.url.strip()}], "text": body.question.strip() or "What do you see?"}
        events = handle.options(stream=True).look.remote(order)
        detail = {"stage": "vision", "url": order["media"][0]["url"]}
    try:
        result = await asyncio.wait_for(_collect(events), TEST_TIMEOUT_S)
    except TimeoutError:
        result = {"type": "error", "kind": "timeout", "message": f"no answer within {TEST_TIMEOUT_S:g} s"}
    detail["outcome"] = result.get("kind") if result.get("type") == "error" else "ok"
    return {"result": result, "audited": await audit_change(session.user, "media.test", detail)}
