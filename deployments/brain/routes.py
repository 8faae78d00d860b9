"""Event and autonomous-engine routes (an APIRouter the ingress includes).

- `POST /v1/events`: a Discord event in, the brain's actions out. The body is validated here against
  the event models (`graph.brain.events`, plus `server_config` below), so a malformed event is a 422
  listing every bad field and never reaches the brain. Fields the brain's models do not know are passed
  on untouched (the autonomous engine reads e.g. a presence's `kind` and `activity_type`).
- `GET /v1/autonomous/actions?wait=S[&guild_id=G][&limit=N]`: long-poll the actions the autonomous
  engine decided on its ticks; returned actions are removed (each is carried out once), at most
  `MAX_ACTIONS_PER_ANSWER` per answer (ask again for the rest).

Answers stay far under the 4 MiB a Serve gRPC proxy answer may be: request bodies are at most 1 MiB
(deployments/http_guard.py), and an action larger than `MAX_ACTION_BYTES` (a long channel history in
its `prompt`) has its oldest history turns dropped until it fits, marked `"truncated": true`.
- `GET /v1/autonomous/explain?guild_id=G`: the engine's signals and checks for one server (debugging).
- `GET /v1/autonomous/servers`: the servers the engine tracks and their allow-lists.
- `POST /v1/compose`: a message written from an instruction in the active persona's voice and mood
  (the bot's scheduled events with a `prompt`); `{"text": null}` when the LLM could not write it.
- `GET /v1/mood?guild_id=G`: a server's mood and active persona (the bot's profile picture follows them).

The brain is the `Brain` deployment of the Serve application named `BRAIN_APP_NAME` (set it, or call
`configure(app_name=...)`, in the ingress replica before serving; default "miku").
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.auth import require_token
from deployments.brain.deployment import INVALID_KEY
from graph.brain.events import MemberJoinEvent, MessageEvent, MoodEvent, PresenceEvent

BRAIN_APP_NAME = "miku"
BRAIN_DEPLOYMENT_NAME = "Brain"
MAX_WAIT_S = 60.0
MAX_ACTION_BYTES = 256 * 1024
MAX_ACTIONS_PER_ANSWER = 8  # x MAX_ACTION_BYTES: an answer stays under 2.1 MiB

router = APIRouter()


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, default=str).encode())


def bounded_action(action: Any, max_bytes: int = MAX_ACTION_BYTES) -> Any:
    """`action`, or a copy whose prompt lost its oldest history turns (then long texts) until it fits."""
    if not isinstance(action, dict) or _size(action) <= max_bytes:
        return action
    action = dict(action, truncated=True)
    prompt = action.get("prompt")
    if isinstance(prompt, dict):
        prompt = action["prompt"] = dict(prompt)
        history = list(prompt.get("history") or [])
        while history and _size(action) > max_bytes:
            history.pop(0)
            prompt["history"] = history
    # still too big: cut the long texts, the prompt's first
    texts = [(prompt, key) for key in ("system", "user") if isinstance(prompt, dict)]
    texts += [(action, key) for key in ("text", "message", "content")]
    for holder, key in texts:
        if _size(action) > max_bytes and isinstance(holder.get(key), str):
            holder[key] = holder[key][: max_bytes // 8]
    return action


def bounded_answer(result: Any) -> Any:
    """A brain answer `{"actions": [...], ...}` with every action bounded (see `bounded_action`)."""
    if isinstance(result, dict) and isinstance(result.get("actions"), list):
        return {**result, "actions": [bounded_action(action) for action in result["actions"]]}
    return result


def configure(app_name: str | None = None, deployment_name: str | None = None) -> None:
    """Point the routes at another application's (or deployment name's) brain."""
    global BRAIN_APP_NAME, BRAIN_DEPLOYMENT_NAME
    if app_name:
        BRAIN_APP_NAME = app_name
    if deployment_name:
        BRAIN_DEPLOYMENT_NAME = deployment_name


def get_brain_handle() -> DeploymentHandle:
    """FastAPI dependency: the Brain deployment's handle (override it in a test app if needed)."""
    return serve.get_deployment_handle(BRAIN_DEPLOYMENT_NAME, app_name=BRAIN_APP_NAME)


def _id_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Snowflake = Annotated[str, BeforeValidator(_id_text), Field(pattern=r"^[0-9]{1,20}$")]


class ServerConfigEvent(BaseModel):
    """Where Miku may speak up on her own in one server, and its local time zone.

    `allowed_channels` empty = stop acting (and tracking) in that server. Send it when the bot joins a
    server or its settings change; the graph keeps it in memory, so send it again after a graph restart
    (the client does so on every `on_ready`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["server_config"]
    event_id: str | None = Field(default=None, max_length=200)
    guild_id: Snowflake
    allowed_channels: list[Snowflake] = Field(max_length=500)
    home_channel_id: Snowflake | None = None
    timezone: str = Field(default="UTC", max_length=64)
    enabled: bool = True


AnyEvent = Annotated[
    Union[MessageEvent, PresenceEvent, MemberJoinEvent, MoodEvent, ServerConfigEvent], Field(discriminator="type")
]


@router.post("/v1/events", dependencies=[Depends(require_token)])
async def post_event(
    event: Annotated[AnyEvent, Body()],
    request: Request,
    brain: Annotated[DeploymentHandle, Depends(get_brain_handle)],
) -> dict[str, Any]:
    """Handle one event; returns `{"actions": [...]}` (see docs/brain.md for every action type)."""
    raw = await request.json()  # FastAPI already read and parsed it: this is the cached body
    payload = {**raw, **event.model_dump(mode="json")} if isinstance(raw, dict) else event.model_dump(mode="json")
    result = await brain.handle_event.remote(payload)
    if result.get(INVALID_KEY):  # the brain validates again (and checks a server_config's time zone)
        raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_ENTITY, detail=result[INVALID_KEY])
    return bounded_answer(result)


@router.get("/v1/autonomous/actions", dependencies=[Depends(require_token)])
async def take_autonomous_actions(
    brain: Annotated[DeploymentHandle, Depends(get_brain_handle)],
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for an action")] = 0.0,
    guild_id: Annotated[str | None, Query(pattern=r"^[0-9]{1,20}$")] = None,
    limit: Annotated[int | None, Query(ge=1, le=100)] = None,
) -> dict[str, Any]:
    """`{"actions": [...]}`: autonomous `send` actions to carry out, removed from the graph's outbox.

    Answers as soon as there is one, else with an empty list after `wait` seconds (long-poll); at most
    MAX_ACTIONS_PER_ANSWER at a time, the rest wait for the next call.
    """
    limit = min(limit or MAX_ACTIONS_PER_ANSWER, MAX_ACTIONS_PER_ANSWER)
    return bounded_answer(await brain.take_autonomous_actions.remote(wait, guild_id, limit))


@router.get("/v1/autonomous/explain", dependencies=[Depends(require_token)])
async def explain_autonomous(
    brain: Annotated[DeploymentHandle, Depends(get_brain_handle)],
    guild_id: Annotated[str, Query(pattern=r"^[0-9]{1,20}$")],
) -> dict[str, Any]:
    """The engine's gate, mood, signals, every action's check (no roll) and its recent decisions."""
    explained = await brain.explain_autonomous.remote(guild_id)
    if explained is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND,
                            detail=f"server {guild_id} is not configured for the autonomous engine")
    return explained


@router.get("/v1/autonomous/servers", dependencies=[Depends(require_token)])
async def autonomous_servers(brain: Annotated[DeploymentHandle, Depends(get_brain_handle)]) -> dict[str, Any]:
    """`{"servers": [{"guild_id", "allowed_channels", "home_channel_id", "timezone", "enabled"}]}`."""
    return {"servers": await brain.autonomous_servers.remote()}


class ComposeRequest(BaseModel):
    """A message for Miku to write from an instruction (a scheduled event's `prompt`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    guild_id: Snowflake | None = None
    channel_id: Snowflake | None = None
    instruction: str = Field(min_length=1, max_length=2000)


@router.post("/v1/compose", dependencies=[Depends(require_token)])
async def compose(
    body: ComposeRequest, brain: Annotated[DeploymentHandle, Depends(get_brain_handle)]
) -> dict[str, Any]:
    """`{"text", "persona", "mood"}`: the message in the active persona's voice; `text` null when the LLM
    could not write it (the caller decides what to post instead)."""
    return await brain.compose.remote(body.guild_id, body.channel_id, body.instruction)
@router.get("/v1/mood", dependencies=[Depends(require_token)])
async def persona_mood(
    brain: Annotated[DeploymentHandle, Depends(get_brain_handle)],
    guild_id: Annotated[str | None, Query(pattern=r"^[0-9]{1,20}$")] = None,
) -> dict[str, Any]:
    """`{"guild_id", "persona", "display_name", "mood"}`: one server's (or, without guild_id, DMs') state."""
    return await brain.persona_mood.remote(guild_id)
