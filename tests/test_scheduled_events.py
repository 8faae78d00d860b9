"""Scheduled events (graph/features/schedule.py, scheduler.py): the file's checks, APScheduler firing jobs
from its SQLite store, and a voice session pausing them: nothing posted during it, `run_once` runs
coalesced into one message afterwards, `skip` runs logged and dropped, all of it surviving a restart."""
from __future__ import annotations

import asyncio
import logging
import os
import random
import stat
from datetime import datetime, timedelta, timezone

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph.features.gate import SCHEDULED_EVENTS, FeatureGate
from graph.features.schedule import (
    MessageKind,
    Misfire,
    ScheduleConfigError,
    job_from_command,
    load_schedule,
    parse_schedule,
)
from graph.features.scheduler import DEFERRED_FILE, JOBS_FILE, RunOutcome, ScheduledEvents
from tests.support.features import RecordingOps, SettableCheck

ROOT = Path(__file__).resolve().parents[1]
GUILD, CHANNEL = 111, 222


def schedule(tmp_path, *jobs, **extra):
    return parse_schedule({"state_dir": str(tmp_path / "state"), "servers": {str(GUILD): {"timezone": "Asia/Tokyo"}},
                           "jobs": list(jobs), **extra}, "test-schedule.yaml")


def job(job_id="monday-video", **fields):
    base = {"id": job_id, "guild_id": GUILD, "channel_id": CHANNEL, "interval": {"hours": 1},
            "choices": ["https://youtu.be/one", "https://youtu.be/two"]}
    return base | fields


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def controller():
    return SettableCheck()


@pytest.fixture
def ops():
    return RecordingOps()


def service(config, controller, ops, compose=None):
    return ScheduledEvents(config, gate=FeatureGate(SCHEDULED_EVENTS, controller), post=ops.send_text,
                           compose=compose, clock=Clock(), rng=random.Random(7))


def due_now(events: ScheduledEvents, job_id: str) -> None:
    """Make a stored job due now: APScheduler fires it on its own loop (no waiting on the trigger's period)."""
    events.scheduler.modify_job(job_id, next_run_time=datetime.now(timezone.utc))


# ---- the file ------------------------------------------------------------------------------------


def test_jobs_parse_with_the_servers_time_zone(tmp_path):
    config = schedule(tmp_path, job(), job("morning", cron="0 8 * * *", interval=None, choices=None,
                                           prompt="Say good morning to everyone", misfire="skip",
                                           timezone="Europe/Berlin"))
    video, morning = config.jobs
    assert video.kind is MessageKind.CHOICE and video.timezone == "Asia/Tokyo" and video.misfire is Misfire.RUN_ONCE
    assert video.trigger.interval_s == 3600 and video.trigger.describe() == "every 1 hour"
    assert morning.kind is MessageKind.PROMPT and morning.timezone == "Europe/Berlin"
    assert morning.misfire is Misfire.SKIP and morning.trigger.cron == "0 8 * * *"


@pytest.mark.parametrize("bad,field,words", [
    ({"cron": "0 25 * * mon", "interval": None}, "jobs[0].cron", "bad cron expression"),
    ({"cron": "every monday", "interval": None}, "jobs[0].cron", "not a crontab expression"),
    ({"timezone": "Mars/Olympus_Mons"}, "jobs[0].timezone", "unknown time zone"),
    ({"interval": {"fortnights": 1}}, "jobs[0].interval", "unknown unit"),
    ({"interval": {"seconds": 5}}, "jobs[0].interval", "at least 60"),
    ({"misfire": "sometimes"}, "jobs[0].misfire", "skip or run_once"),
    ({"channel_id": "general"}, "jobs[0].channel_id", "Discord id"),
    ({"text": "hi"}, "jobs[0]", "exactly one of text, choices or prompt"),
    ({"cron": "0 9 * * *"}, "jobs[0]", "exactly one of cron or interval"),
    ({"choices": []}, "jobs[0].choices", "non-empty list"),
    ({"id": "Bad Id!"}, "jobs[0].id", "lower-case"),
    ({"colour": "blue"}, "jobs[0]", "unknown key(s) colour"),
])
def test_bad_jobs_name_the_file_and_the_field(tmp_path, bad, field, words):
    with pytest.raises(ScheduleConfigError) as err:
        schedule(tmp_path, job(**bad))
    assert str(err.value).startswith(f"test-schedule.yaml: {field}: ") and words in str(err.value)


def test_bad_files(tmp_path):
    path = tmp_path / "schedule.yaml"
    path.write_text("jobs:\n  - id: x\n    cron: [unclosed\n")
    with pytest.raises(ScheduleConfigError, match=rf"^{path}: \(top level\): not valid YAML \(line"):
        load_schedule(path)
    path.write_text("servers:\n  '111': {timezone: Not/AZone}\n")
    with pytest.raises(ScheduleConfigError, match=rf"^{path}: servers.111.timezone: unknown time zone"):
        load_schedule(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ScheduleConfigError, match=rf"^{path}: \(top level\): must be a mapping"):
        load_schedule(path)
    path.write_text("jobs: [{id: a, guild_id: 1, channel_id: 2, interval: 'every 2h', text: x},"
                    " {id: a, guild_id: 1, channel_id: 2, interval: 'every 3h', text: y}]\n")
    with pytest.raises(ScheduleConfigError, match=r"jobs\[1\].id: 'a' is used twice"):
        load_schedule(path)
    with pytest.raises(ScheduleConfigError, match="cannot be read"):
        load_schedule(tmp_path / "missing.yaml")


def test_the_shipped_schedule_file_loads():
    config = load_schedule(ROOT / "configs" / "schedule.yaml")
    assert config.enabled


def test_a_command_job_is_checked_like_the_file(tmp_path):
    config = schedule(tmp_path)
    spec = job_from_command({"id": "later", "guild_id": GUILD, "channel_id": CHANNEL, "interval": "every 6h",
                             "text": "Stretch break!"}, config)
    assert spec.source == "command" and spec.trigger.interval_s == 6 * 3600 and spec.timezone == "Asia/Tokyo"
    with pytest.raises(ScheduleConfigError, match=r"^schedule add: job.cron: bad cron"):
        job_from_command({"id": "x", "guild_id": GUILD, "channel_id": CHANNEL, "cron": "61 * * * *", "text": "t"}, config)


# ---- firing and pausing --------------------------------------------------------------------------


async def test_outside_a_session_a_job_fires_through_apscheduler(tmp_path, controller, ops):
    events = service(schedule(tmp_path, job()), controller, ops)
    await events.start(watch=False)
    try:
        due_now(events, "monday-video")
        (sent,) = await ops.wait_for(1)
        assert sent.kind == "text" and sent.target == CHANNEL
        assert sent.payload in ("https://youtu.be/one", "https://youtu.be/two")
        assert controller.asked == [SCHEDULED_EVENTS]
        # the store is private from its first byte
        for name in (JOBS_FILE, DEFERRED_FILE):
            assert stat.S_IMODE(os.stat(tmp_path / "state" / name).st_mode) == 0o600
    finally:
        await events.shutdown()


async def test_during_a_session_runs_are_deferred_coalesced_and_posted_once_after(tmp_path, controller, ops, caplog):
    caplog.set_level(logging.INFO, "graph.features")
    events = service(schedule(tmp_path, job(text="Monday video time!", choices=None)), controller, ops)
    await events.start(watch=False)
    try:
        controller.in_session = True
        for _ in range(3):  # three runs fall inside the session
            due_now(events, "monday-video")
            await _wait(lambda: events.stats["deferred"] >= _ + 1)
        assert ops.sent == []
        assert len(events.deferred) == 1 and events.stats["coalesced"] == 2
        assert "deferred until the voice session ends" in caplog.text and "coalesced" in caplog.text
        assert events.jobs()[0].deferred
        assert await events.flush_deferred() == 0  # still in the session: nothing
        assert ops.sent == []

        controller.in_session = False
        assert await events.flush_deferred() == 1
        assert [s.payload for s in ops.sent] == ["Monday video time!"]
        assert await events.flush_deferred() == 0 and len(events.deferred) == 0
        assert len(ops.sent) == 1
    finally:
        await events.shutdown()


async def test_a_run_after_the_session_consumes_the_deferred_one(tmp_path, controller, ops):
    events = service(schedule(tmp_path, job(text="hello", choices=None)), controller, ops)
    await events.start(watch=False)
    try:
        controller.in_session = True
        assert await events.run_now("monday-video") is RunOutcome.DEFERRED
        controller.in_session = False
        assert await events.run_now("monday-video") is RunOutcome.POSTED
        assert await events.flush_deferred() == 0
        assert [s.payload for s in ops.sent] == ["hello"]
    finally:
        await events.shutdown()


async def test_skip_policy_logs_and_drops_the_run(tmp_path, controller, ops, caplog):
    caplog.set_level(logging.INFO, "graph.features")
    events = service(schedule(tmp_path, job(misfire="skip")), controller, ops)
    await events.start(watch=False)
    try:
        controller.in_session = True
        due_now(events, "monday-video")
        await _wait(lambda: events.stats["skipped"] == 1)
        controller.in_session = False
        assert await events.flush_deferred() == 0
        assert ops.sent == []
        assert "scheduled job monday-video skipped: voice session (misfire policy skip)" in caplog.text
    finally:
        await events.shutdown()


async def test_an_unreachable_controller_pauses(tmp_path, controller, ops):
    events = service(schedule(tmp_path, job(text="t", choices=None)), controller, ops)
    await events.start(watch=False)
    try:
        controller.unreachable = True
        assert await events.run_now("monday-video") is RunOutcome.DEFERRED
        assert ops.sent == []
        controller.unreachable = False
        assert await events.flush_deferred() == 1 and len(ops.sent) == 1
    finally:
        await events.shutdown()


async def test_a_session_that_starts_while_the_llm_writes_defers_the_message(tmp_path, controller, ops):
    async def compose(spec):
        controller.in_session = True  # the user joined voice while the message was being written
        return "Good morning everyone~"

    config = schedule(tmp_path, job(choices=None, prompt="Say good morning", fallback=None))
    events = service(config, controller, ops, compose=compose)
    await events.start(watch=False)
    try:
        assert await events.run_now("monday-video") is RunOutcome.DEFERRED
        assert ops.sent == []
        controller.in_session = False

        async def compose_after(spec):
            return f"Written from: {spec.prompt}"

        events.compose = compose_after
        assert await events.flush_deferred() == 1
        assert [s.payload for s in ops.sent] == ["Written from: Say good morning"]
    finally:
        await events.shutdown()


async def test_prompt_jobs_fall_back_or_log_when_the_llm_fails(tmp_path, controller, ops, caplog):
    async def broken(spec):
        raise TimeoutError("LLM took too long")

    config = schedule(tmp_path, job("a", choices=None, prompt="Say hi", fallback="Hi everyone!"),
                      job("b", choices=None, prompt="Say hi"))
    events = service(config, controller, ops, compose=broken)
    await events.start(watch=False)
    try:
        assert await events.run_now("a") is RunOutcome.POSTED
        assert await events.run_now("b") is RunOutcome.FAILED
        assert [s.payload for s in ops.sent] == ["Hi everyone!"]
        assert "scheduled job b: nothing to post" in caplog.text
    finally:
        await events.shutdown()


# ---- restarts ------------------------------------------------------------------------------------


async def test_jobs_pauses_and_deferred_runs_survive_a_restart(tmp_path, controller, ops):
    config = schedule(tmp_path, job(text="from the file", choices=None))
    events = service(config, controller, ops)
    await events.start(watch=False)
    events.add(job_from_command({"id": "added", "guild_id": GUILD, "channel_id": CHANNEL, "cron": "30 7 * * *",
                                 "text": "added by command"}, config))
    events.pause("added")
    controller.in_session = True
    assert await events.run_now("monday-video") is RunOutcome.DEFERRED
    await events.shutdown()

    again = service(config, controller, ops)
    await again.start(watch=False)
    try:
        views = {v.spec.job_id: v for v in again.jobs()}
        assert set(views) == {"monday-video", "added"}
        assert views["added"].next_run is None and views["added"].spec.source == "command"
        assert views["monday-video"].deferred
        with pytest.raises(ValueError, match="schedule file"):
            again.remove("monday-video")
        controller.in_session = False
        assert await again.flush_deferred() == 1
        assert [s.payload for s in ops.sent] == ["from the file"]
        again.resume("added")
        assert again.jobs()[0].next_run is not None
        assert again.remove("added").job_id == "added"
    finally:
        await again.shutdown()


async def test_runs_missed_while_the_bot_was_down_follow_the_policy(tmp_path, controller, ops, caplog):
    caplog.set_level(logging.INFO)
    config = schedule(tmp_path, job("once", text="caught up", choices=None),
                      job("skipped", text="too late", choices=None, misfire="skip"))
    events = service(config, controller, ops)
    await events.start(watch=False)
    # the bot goes down two and a half hours before now: runs were due at -2.5 h, -1.5 h and -0.5 h
    events.scheduler.pause()
    long_ago = datetime.now(timezone.utc) - timedelta(hours=2, minutes=30)
    for job_id in ("once", "skipped"):
        events.scheduler.modify_job(job_id, next_run_time=long_ago)
    await events.shutdown()

    again = service(config, controller, ops)
    await again.start(watch=False)
    try:
        (sent,) = await ops.wait_for(1)
        await _wait(lambda: again.stats["missed"] == 1)
        assert sent.payload == "caught up"  # three missed runs, one message
        assert "scheduled job skipped: the run due at" in caplog.text and "misfire policy skip" in caplog.text
        await asyncio.sleep(0.2)  # nothing else is on its way (a sleep before asserting an absence)
        assert len(ops.sent) == 1
    finally:
        await again.shutdown()


async def test_a_job_removed_from_the_file_is_removed_from_the_store(tmp_path, controller, ops):
    events = service(schedule(tmp_path, job("keep"), job("gone")), controller, ops)
    await events.start(watch=False)
    await events.shutdown()
    again = service(schedule(tmp_path, job("keep")), controller, ops)
    await again.start(watch=False)
    try:
        assert [v.spec.job_id for v in again.jobs()] == ["keep"]
    finally:
        await again.shutdown()


async def _wait(predicate, timeout=30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def test_the_watcher_posts_a_deferred_run_when_a_session_ends_elsewhere(tmp_path, controller, ops):
    # e.g. the session's lease expired: no after-session hook ran in this bot, the watcher notices
    events = service(schedule(tmp_path, job(text="after the lease", choices=None), recheck_s=0.05), controller, ops)
    await events.start()
    try:
        controller.in_session = True
        assert await events.run_now("monday-video") is RunOutcome.DEFERRED
        controller.in_session = False
        (sent,) = await ops.wait_for(1)
        assert sent.payload == "after the lease"
        await _wait(lambda: len(events.deferred) == 0)
    finally:
        await events.shutdown()


# ---- any order of runs, sessions, catch-ups and restarts ------------------------------------------

STEPS = st.lists(st.sampled_from(["session", "fire", "flush", "restart"]), min_size=1, max_size=14)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS, policy=st.sampled_from(["run_once", "skip"]))
def test_never_posted_in_a_session_never_twice_never_lost(tmp_path_factory, steps, policy):
    """A model of the policy next to the real scheduler: after every step the messages really sent are
    exactly the model's (nothing during a session, one per coalesced deferred run, none lost)."""
    asyncio.run(_walk(tmp_path_factory.mktemp("walk"), steps, policy))


async def _walk(tmp_path, steps, policy):
    controller, ops = SettableCheck(), RecordingOps()
    config = schedule(tmp_path, job(text="tick", choices=None, misfire=policy))
    events = service(config, controller, ops)
    await events.start(watch=False)
    in_session, pending, posts = False, False, 0
    try:
        for step in steps + ["end"]:
            if step == "session":
                in_session = controller.in_session = not in_session
            elif step == "end":  # the walk ends with the session over and a catch-up
                in_session = controller.in_session = False
                step = "flush"
            if step == "fire":
                await events.fire(events.get("monday-video"))
                if not in_session:
                    posts, pending = posts + 1, False
                elif policy == "run_once":
                    pending = True
            elif step == "flush":
                await events.flush_deferred()
                if not in_session and pending:
                    posts, pending = posts + 1, False
            elif step == "restart":
                await events.shutdown()
                events = service(config, controller, ops)
                await events.start(watch=False)
            assert len(ops.sent) == posts, (steps, step)
            assert len(events.deferred) == int(pending)
    finally:
        await events.shutdown()
