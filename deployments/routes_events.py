"""`POST /v1/events`: a Discord event in, the brain's actions out (an APIRouter the ingress includes).

The body is validated here against the event models (`graph.brain.events`), so a malformed event is a
422 listing every bad field and never reaches the brain. The brain is the `Brain` deployment of the
Serve application named `BRAIN_APP_NAME` (set it, or call `configure(app_name=...)`, in the ingress
replica before serving; default "miku").
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, status
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.auth import require_token
from graph.brain.events import Event, EventValidationError

BRAIN_APP_NAME = "miku"
BRAIN_DEPLOYMENT_NAME = "Brain"

router = APIRouter()


def configure(app_name: str | None = None, deployment_name: str | None = None) -> None:
    """Point the route at another application's (or deployment name's) brain."""
    global BRAIN_APP_NAME, BRAIN_DEPLOYMENT_NAME
    if app_name:
        BRAIN_APP_NAME = app_name
    if deployment_name:
        BRAIN_DEPLOYMENT_NAME = deployment_name


def get_brain_handle() -> DeploymentHandle:
    """FastAPI dependency: the Brain deployment's handle (override it in a test app if needed)."""
    return serve.get_deployment_handle(BRAIN_DEPLOYMENT_NAME, app_name=BRAIN_APP_NAME)


@router.post("/v1/events", dependencies=[Depends(require_token)])
async def post_event(
    event: Annotated[Event, Body()],
    brain: Annotated[DeploymentHandle, Depends(get_brain_handle)],
) -> dict[str, Any]:
    """Handle one event; returns `{"actions": [...]}` (see docs/brain.md for every action type)."""
    try:
        return await brain.handle_event.remote(event.model_dump(mode="json"))
    except EventValidationError as exc:  # the brain validates again; keep its answer a 422 too
        raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_ENTITY, detail=exc.errors) from None
