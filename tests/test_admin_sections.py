"""The admin panel's sections for the bot's features and the media stages, below the browser:

- `BotLink` (graph/admin/bot_link.py), the graph's end of the bot's channel: a command goes to the bot
  on every sync until acknowledged, expires without one, and is refused with a reason when no bot
  reports, the target is unknown, or too many wait;
- `PanelLink` (bot_client/panel_link.py), the bot's end, with the real scheduled events and figurine
  notifier (a local feed server) and the graph's real `/v1/bot/sync` route function and schema: the
  report lists jobs and feeds, and each command is carried out once;
- the owner's pause of a media stage: the route answers "paused by the owner" without calling the stage.
"""
from __future__ import annotations

import json
from unittest.mock import AsyncMock

import pytest

from bot_client.features import BotFeatures, FeatureConfigs
from bot_client.graph_api import GraphClient
from bot_client.panel_link import MAX_TEXT, PanelLink, _clip
from deployments.admin import bot_section
from deployments.media import routes as media_routes
from graph.admin.bot_link import Ack, BotLink, BotLinkError, BotReport, CommandKind, CommandState
from graph.admin.media_pause import MediaPauses
from graph.features.figurines import PollReport, parse_figurines
from graph.features.schedule import parse_schedule
from tests.support.feed_server import FeedServer, Route
from tests.support.features import RecordingOps, SettableCheck

GUILD, CHANNEL, FIG_CHANNEL = 7101, 7102, 7103


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def report(**extra) -> BotReport:
    return BotReport("bot", scheduler=True, jobs=[{"id": "hello"}], notifier={"paused": False},
                     feeds=[{"url": "https://shop.example/feed.xml"}], **extra)


def test_a_command_is_sent_on_every_sync_until_the_bot_acknowledges_it():
    clock = Clock()
    link = BotLink(clock=clock)
    link.sync(report())
    command = link.queue(CommandKind.JOB_RUN, "hello", "admin")
    assert command.state is CommandState.QUEUED
    first = link.sync(report())
    assert [c.to_wire() for c in first] == [{"id": command.id, "kind": "job.run", "target": "hello"}]
    assert command.state is CommandState.DELIVERED
    assert [c.id for c in link.sync(report())] == [command.id]  # no ack yet: sent again
    assert link.sync(report(), [Ack(command.id, True, "posted")]) == []
    assert command.state is CommandState.DONE and command.result == "posted"
    assert link.sync(report(), [Ack(command.id, True, "posted")]) == []  # a repeated ack changes nothing
    view = link.view()
    assert view["connected"] and view["jobs"] == [{"id": "hello"}]
    assert view["commands"][0]["state"] == "done" and view["commands"][0]["user"] == "admin"


def test_commands_are_refused_with_a_reason_and_expire_without_an_answer():
    clock = Clock()
    link = BotLink(clock=clock, max_open=2, command_ttl_s=60, stale_after_s=30)
    with pytest.raises(BotLinkError, match="not connected") as refused:
        link.queue(CommandKind.JOB_RUN, "hello", "admin")
    assert refused.value.status == 503
    link.sync(report())
    with pytest.raises(BotLinkError, match="no scheduled job 'nope'"):
        link.queue(CommandKind.JOB_PAUSE, "nope", "admin")
    with pytest.raises(BotLinkError, match="no feed"):
        link.queue(CommandKind.FEED_POLL, "https://other.example/", "admin")
    link.queue(CommandKind.NOTIFIER_PAUSE, "", "admin")
    link.queue(CommandKind.FEED_POLL, "https://shop.example/feed.xml", "admin")
    with pytest.raises(BotLinkError, match="2 commands already wait") as full:
        link.queue(CommandKind.JOB_RUN, "hello", "admin")
    assert full.value.status == 429
    clock.now += 61
    link.sync(report())  # the bot is back, but the commands are too old
    assert {c.state for c in link.commands()} == {CommandState.EXPIRED}
    clock.now += 31  # no report for longer than stale_after_s
    assert not link.view()["connected"]
    with pytest.raises(BotLinkError, match="not connected"):
        link.queue(CommandKind.JOB_RUN, "hello", "admin")
    link.sync(BotReport("bot"))  # a bot without the features
    with pytest.raises(BotLinkError, match="scheduled events are off"):
        link.queue(CommandKind.JOB_RUN, "hello", "admin")
    with pytest.raises(BotLinkError, match="notifier is off"):
        link.queue(CommandKind.NOTIFIER_PAUSE, "", "admin")


class RouteGraph:
    """The bot's GraphClient as far as the link uses it, answered by the graph's own route function and
    schema (no HTTP: tests/test_admin_panel.py does that end to end)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    async def bot_sync(self, body: dict) -> dict:
        self.bodies.append(json.loads(json.dumps(body)))  # what would cross the wire
        return await bot_section.bot_sync(bot_section.SyncBody.model_validate(self.bodies[-1]))


@pytest.fixture
async def feed_server():
    server = await FeedServer().start()
    yield server
    await server.stop()


async def test_the_bot_reports_its_jobs_and_feeds_and_carries_out_each_command_once(tmp_path, feed_server, monkeypatch):
    link = BotLink(poll_s=0.5)
    monkeypatch.setattr(bot_section, "link", link)
    feed = feed_server.serve_file("/shop.xml", "shop_rss_1.xml")
    schedule = parse_schedule({"state_dir": str(tmp_path / "state"), "jobs": [
        {"id": "hello", "guild_id": GUILD, "channel_id": CHANNEL, "interval": "every 1d", "text": "Hello, world!"}]})
    figurines = parse_figurines({"state_dir": str(tmp_path / "state"), "feeds": [feed], "post_existing": True,
                                 "channels": [FIG_CHANNEL]})
    ops = RecordingOps()
    features = BotFeatures(FeatureConfigs(schedule, figurines), AsyncMock(spec=GraphClient), ops, check=SettableCheck())
    await features.scheduler.start(watch=False)
    graph = RouteGraph()
    bot = PanelLink(graph, features)
    try:
        assert await bot.sync_once() == 0.5  # nothing to do: the graph's poll interval
        view = link.view()
        job = view["jobs"][0]
        assert job["id"] == "hello" and job["trigger"] and job["next_run"] > 0 and not job["paused"]
        assert view["feeds"] == [{"url": feed, "last_fetch": None, "next_poll": None, "error": "", "failures": 0,
                                  "items_seen": 0, "items_matched": 0}]
        assert view["notifier"]["paused"] is False

        run = link.queue(CommandKind.JOB_RUN, "hello", "admin")
        assert await bot.sync_once() == 0  # carried out: sync again at once
        assert [(s.kind, s.target, s.payload) for s in ops.sent] == [("text", CHANNEL, "Hello, world!")]
        await bot.sync_once()
        assert run.state is CommandState.DONE and run.result == "posted"
        assert link.view()["jobs"][0]["last_result"] == "posted"

        # the ack is lost: the graph sends the command again, the bot acknowledges without running it
        bot._acks.clear()
        run.state = CommandState.DELIVERED
        link._open[run.id] = run
        await bot.sync_once()
        await bot.sync_once()
        assert len(ops.sent) == 1 and run.id not in link._open

        pause = link.queue(CommandKind.JOB_PAUSE, "hello", "admin")
        await bot.sync_once()
        await bot.sync_once()
        assert pause.state is CommandState.DONE and link.view()["jobs"][0]["paused"]
        link.queue(CommandKind.NOTIFIER_PAUSE, "", "admin")
        await bot.sync_once()
        await bot.sync_once()
        assert features.figurines.paused_by_owner and link.view()["notifier"]["paused"] is True
        assert await features.figurines.tick() == (PollReport(), 0)  # paused: nothing read, nothing posted
        assert feed_server.hits("/shop.xml") == []

        poll = link.queue(CommandKind.FEED_POLL, feed, "admin")  # "poll now" works while paused...
        await bot.sync_once()
        await bot.sync_once()
        assert poll.state is CommandState.DONE and "new item" in poll.result
        assert len(feed_server.hits("/shop.xml")) == 1
        shown = link.view()["feeds"][0]
        assert shown["items_seen"] > 0 and shown["last_fetch"] is not None and shown["error"] == ""
        assert [s for s in ops.sent if s.kind == "embed"] == []  # ...but posts nothing until resumed
        link.queue(CommandKind.NOTIFIER_RESUME, "", "admin")
        await bot.sync_once()
        assert not features.figurines.paused_by_owner
        assert await features.figurines.deliver_pending() == shown["items_matched"] > 0

        gone = link.queue(CommandKind.FEED_POLL, feed, "admin")
        feed_server.set("/shop.xml", Route(status=500, body=b"broken"))
        await bot.sync_once()
        await bot.sync_once()
        assert gone.state is CommandState.FAILED and "could not be read" in gone.result
        assert link.view()["feeds"][0]["error"]
    finally:
        await features.close()


async def test_a_paused_media_stage_answers_paused_by_the_owner_without_calling_it(monkeypatch):
    pauses = MediaPauses(clock=lambda: 5.0)
    monkeypatch.setattr(media_routes, "pauses", pauses)
    monkeypatch.setitem(media_routes._handles, "image", object())  # never called: any call would raise
    with pytest.raises(ValueError, match="no media stage 'audio'"):
        pauses.set("audio", True, "admin")
    pauses.set("image", True, "admin")
    answer = await media_routes.draw(media_routes.DrawBody(prompt="a leek"))
    lines = [json.loads(chunk) async for chunk in answer.body_iterator]
    assert lines == [{"type": "error", "kind": "paused", "backend": "admin",
                      "message": "⏸️ Drawing is paused by the owner right now; try again later."}]
    assert pauses.get("image").user == "admin" and pauses.get("vision") is None
    pauses.set("image", False, "admin")
    assert pauses.refusal("image") is None



def test_the_bot_cuts_long_fields_to_what_the_graph_accepts():
    assert _clip("x" * 50) == "x" * 50
    cut = _clip("x" * 5000)
    assert len(cut) == MAX_TEXT and cut.endswith("…")
    job = {"id": "long", "trigger": cut}
    assert bot_section.SyncBody.model_validate({"jobs": [job]}).jobs[0].trigger == cut
    with pytest.raises(ValueError, match="at most 200 characters"):
        bot_section.SyncBody.model_validate({"jobs": [{**job, "trigger": "x" * 201}]})
