"""The panel's "Schedule & feeds" section and the bot's side of its channel (graph/admin/bot_link.py).

- `POST /v1/bot/sync` (the graph's bearer token): the bot's report of its scheduled jobs, the figurine
  notifier and its feeds, plus acknowledgements of the commands it carried out; the answer is the
  commands waiting for it and how soon to sync again. The bot sends it every few seconds
  (bot_client/panel_link.py); the bot opens no socket of its own.
- `GET /admin/api/bot`: what the bot last reported, whether it is connected, the recent commands;
- `POST /admin/api/bot/command` `{kind, target}`: queue one command (pause / resume / run a job, pause /
  resume the notifier, poll a feed now), audited with the user.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from deployments.admin.routes import PREFIX, audit_change, panel_change, panel_user
from deployments.admin.sections import Section, register_section
from deployments.auth import require_token
from graph.admin.bot_link import Ack, BotLink, BotLinkError, BotReport, CommandKind
from graph.admin.sessions import PanelSession

register_section(Section("schedule", "Schedule & feeds", "sections/schedule.js", 58))
link = BotLink()  # one per ingress replica, like the panel's sessions

sync_router = APIRouter(dependencies=[Depends(require_token)], tags=["bot"])
router = APIRouter(prefix=PREFIX + "/api/bot")

Short = Annotated[str, Field(max_length=200)]


class JobReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1, max_length=100)
    trigger: Short = ""
    timezone: Short = ""
    guild_id: Short = ""
    channel_id: Short = ""
    message: Short = ""
    source: Short = ""
    next_run: float | None = None  # epoch seconds; None: paused
    paused: bool = False
    deferred: bool = False
    last_run: float | None = None
    last_result: Short = ""


class FeedReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(min_length=1, max_length=4000)
    last_fetch: float | None = None
    next_poll: float | None = None
    error: Annotated[str, Field(max_length=600)] = ""
    failures: int = 0
    items_seen: int = 0
    items_matched: int = 0


class NotifierReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    paused: bool = False
    waiting: int = 0
    stats: dict[str, int] = Field(default_factory=dict, max_length=20)


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)
    ok: bool
    result: Annotated[str, Field(max_length=600)] = ""


class SyncBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bot_id: str = Field(default="bot", min_length=1, max_length=100)
    scheduler: bool = False
    jobs: list[JobReport] = Field(default_factory=list, max_length=500)
    notifier: NotifierReport | None = None
    feeds: list[FeedReport] = Field(default_factory=list, max_length=200)
    acks: list[AckBody] = Field(default_factory=list, max_length=100)


class CommandBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: CommandKind
    target: str = Field(default="", max_length=4000)


@sync_router.post("/v1/bot/sync")
async def bot_sync(body: SyncBody) -> dict[str, Any]:
    report = BotReport(bot_id=body.bot_id, scheduler=body.scheduler, jobs=[j.model_dump() for j in body.jobs],
                       feeds=[f.model_dump() for f in body.feeds],
                       notifier=body.notifier.model_dump() if body.notifier else None)
    commands = link.sync(report, [Ack(a.id, a.ok, a.result) for a in body.acks])
    return {"commands": [c.to_wire() for c in commands], "poll_s": link.poll_s}


@router.get("")
async def bot_view(_: Annotated[PanelSession, Depends(panel_user)]) -> dict[str, Any]:
    return link.view()


@router.post("/command")
async def bot_command(body: CommandBody, session: Annotated[PanelSession, Depends(panel_change)]) -> dict[str, Any]:
    try:
        command = link.queue(body.kind, body.target, session.user)
    except BotLinkError as error:
        raise HTTPException(error.status, detail=str(error)) from None
    audited = await audit_change(session.user, f"bot.{body.kind.value}", {"target": body.target, "command": command.id})
    return {"command": command.to_dict(), "audited": audited}
