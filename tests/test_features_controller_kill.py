"""SIGKILL of the controller actor in the middle of a voice session, with scheduled events and the figurine
notifier asking it (the shared Ray of tests/conftest.py, an actor of this module's own): while it is gone
and after Ray restarted it the jobs stay paused and nothing is posted; when the session ends, the deferred
run and the items that appeared meanwhile are delivered exactly once."""
from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from unittest.mock import AsyncMock

import pytest

from bot_client.features import BotFeatures, FeatureConfigs
from bot_client.graph_api import GraphClient
from deployments.controller.actor import get_or_create_controller, shutdown_controller
from graph.controller.config import ControllerConfig
from graph.controller.sessions import SessionRequest
from graph.features.figurines import Target, parse_figurines
from graph.features.schedule import parse_schedule
from tests.support.feed_server import FeedServer
from tests.support.features import RecordingOps

GUILD, CHANNEL, FIG_CHANNEL, USER = 9201, 9202, 9203, 9204


@pytest.fixture(scope="module")
def controller(ray_cluster, tmp_path_factory):
    name = f"FeatureController-features-{uuid.uuid4().hex[:8]}"
    config = ControllerConfig(state_dir=str(tmp_path_factory.mktemp("controller")), lease_s=600)
    handle = get_or_create_controller(config, name=name)
    yield handle
    shutdown_controller(name)


async def _new_pid(actor, old_pid: int, limit_s: float = 90.0) -> int:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            pid = await asyncio.wait_for(actor.pid.remote(), 10)
            if pid != old_pid:
                return pid
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the controller actor did not come back")


async def test_sigkill_mid_session_keeps_features_paused_and_delivers_once(controller, tmp_path):
    async def check(feature: str):
        return await controller.check.remote(feature)

    server = await FeedServer().start()
    shop = server.serve_file("/shop.xml", "shop_rss_1.xml")
    state = str(tmp_path / "state")
    configs = FeatureConfigs(
        parse_schedule({"state_dir": state, "jobs": [{"id": "monday-video", "guild_id": GUILD, "channel_id": CHANNEL,
                                                      "cron": "0 9 * * mon", "text": "Monday video!"}]}),
        parse_figurines({"state_dir": state, "feeds": [shop], "channels": [FIG_CHANNEL]}))
    ops = RecordingOps()
    clock = {"now": 1_800_000_000.0}
    features = BotFeatures(configs, AsyncMock(spec=GraphClient), ops, check=check, clock=lambda: clock["now"])
    features.scheduler.gate._timeout_s = features.figurines.gate._timeout_s = 2.0
    features.figurines.subscribe(Target("user", USER))
    await features.scheduler.start(watch=False)
    session = None
    try:
        await features.figurines.tick()  # outside a session: the feed is remembered
        started = await controller.start_session.remote(
            SessionRequest(guild_id=str(GUILD), voice_channel_id="1", text_channel_id=str(CHANNEL), user_id=str(USER)))
        session = started.session.session_id

        await features.scheduler.run_now("monday-video")
        server.serve_file("/shop.xml", "shop_rss_2.xml", version=2)  # figma Miku appears during the session
        clock["now"] += 900
        await features.figurines.tick()
        assert ops.sent == [] and features.figurines.store.waiting_count() == 2

        old_pid = await controller.pid.remote()
        os.kill(old_pid, signal.SIGKILL)
        # While it is gone (or restarting) the features ask and get no answer: they stay paused.
        await features.scheduler.run_now("monday-video")
        await features.after_session()
        assert ops.sent == []

        await _new_pid(controller, old_pid)
        assert not (await controller.check.remote("scheduled_events")).allowed  # the checkpoint kept the session
        await features.scheduler.run_now("monday-video")
        await features.after_session()
        assert ops.sent == [] and len(features.scheduler.deferred) == 1
        assert features.scheduler.stats["coalesced"] == 2  # three runs, one deferred

        await controller.end_session.remote(session)
        session = None
        await features.after_session()
        await features.after_session()
        assert sorted((s.kind, s.target) for s in ops.sent) == [("dm", USER), ("embed", FIG_CHANNEL), ("text", CHANNEL)]
        assert [s.payload for s in ops.sent if s.kind == "text"] == ["Monday video!"]
        assert {s.payload.title for s in ops.sent if s.kind != "text"} == {"figma Hatsune Miku NT (rerelease)"}
    finally:
        if session is not None:
            await controller.end_session.remote(session)
        await features.close()
        await server.stop()
