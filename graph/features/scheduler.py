"""Scheduled events: APScheduler 3.x on the bot's event loop, jobs kept in SQLite, paused by voice sessions.

Where it runs: in the bot (bot_client), not in the Brain deployment. The bot is the one process that
owns the Discord connection and is never scaled out, so every run happens once and its message goes out
through the same client path as every other action; the Brain is a Serve replica that Serve may restart
or (configured so) replicate, and a scheduler there would need an outbox and a second copy of the admin
commands over HTTP. The one thing the Brain has that the bot lacks, writing in the persona's voice, is
one call (`POST /v1/compose`) that the bot makes when a `prompt` job runs.

How a run goes (`ScheduledEvents.fire`):
- The controller is asked `check("scheduled_events")` right before anything would be posted (and again
  after the LLM has written the message). Allowed: the message is posted, and any run deferred for that
  job is consumed by it (coalesced: one message, never two).
- Paused (a voice session, or a controller that does not answer): a `run_once` job records one deferred
  run in SQLite (a second run due while paused adds nothing; it is logged as coalesced); a `skip` job
  logs the skipped run. After the session, `flush_deferred()` posts each deferred job once, oldest
  first, and deletes its row only after the message went out.
- While the bot is down, APScheduler's own misfire handling applies: `run_once` jobs have no grace limit
  and `coalesce=True` (one run on start, however many were missed), `skip` jobs get `misfire_grace_s`
  and a missed run is logged (EVENT_JOB_MISSED).

Jobs from configs/schedule.yaml are synced into the job store at start (a job whose settings did not
change keeps its stored next run time, so a run missed while the bot was down is still seen as missed);
jobs added by command live only in the store. The job store pickles jobs (APScheduler's format) into a
local 0600 file; nothing of it crosses a network.
"""
from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from graph.features.gate import FeatureGate
from graph.features.schedule import JobSpec, MessageKind, Misfire, ScheduleConfig
from graph.files import ensure_private_dir, prepare_private_sqlite

log = logging.getLogger(__name__)

JOBS_FILE = "schedule-jobs.sqlite3"
DEFERRED_FILE = "schedule-deferred.sqlite3"
MAX_DELIVERY_ATTEMPTS = 3  # a deferred run whose message Discord keeps refusing is dropped, with a log line

PostText = Callable[[int, str], Awaitable[None]]  # (channel id, text): the bot's send path
Compose = Callable[[JobSpec], Awaitable[str | None]]  # the persona's message for a prompt job, or None


class RunOutcome(enum.Enum):
    POSTED = "posted"
    DEFERRED = "deferred"  # paused: runs once after the session
    SKIPPED = "skipped"  # paused, misfire: skip
    FAILED = "failed"  # the message could not be written or sent (logged)
    UNKNOWN = "unknown"  # no such job


@dataclass(frozen=True)
class JobView:
    """What `schedule list` shows about one job."""

    spec: JobSpec
    next_run: datetime | None  # None: paused by command
    deferred: bool  # a run waits for the end of a voice session


class DeferredRuns:
    """The runs a voice session held back: one row per job (that is the coalescing), in SQLite."""

    def __init__(self, path: Path, busy_timeout_s: float = 5.0) -> None:
        prepare_private_sqlite(path)
        self._db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deferred (job_id TEXT PRIMARY KEY, first_due REAL NOT NULL, "
            "runs INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, spec TEXT NOT NULL)")

    def defer(self, spec: JobSpec, now: float) -> bool:
        """Record a held-back run; False when one was already waiting (this run is coalesced into it)."""
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO deferred (job_id, first_due, runs, spec) VALUES (?, ?, 1, ?) "
                "ON CONFLICT(job_id) DO UPDATE SET runs = runs + 1, spec = excluded.spec",
                (spec.job_id, now, json.dumps(spec.to_dict())))
            runs = self._db.execute("SELECT runs FROM deferred WHERE job_id = ?", (spec.job_id,)).fetchone()[0]
        return bool(cursor.rowcount) and runs == 1

    def pending(self) -> list[tuple[JobSpec, int, int]]:
        """(spec, runs coalesced, failed attempts), oldest first."""
        rows = self._db.execute("SELECT spec, runs, attempts FROM deferred ORDER BY first_due, job_id").fetchall()
        return [(JobSpec.from_dict(json.loads(spec)), runs, attempts) for spec, runs, attempts in rows]

    def has(self, job_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM deferred WHERE job_id = ?", (job_id,)).fetchone() is not None

    def clear(self, job_id: str) -> bool:
        with self._db:
            return bool(self._db.execute("DELETE FROM deferred WHERE job_id = ?", (job_id,)).rowcount)

    def failed(self, job_id: str) -> int:
        with self._db:
            self._db.execute("UPDATE deferred SET attempts = attempts + 1 WHERE job_id = ?", (job_id,))
        row = self._db.execute("SELECT attempts FROM deferred WHERE job_id = ?", (job_id,)).fetchone()
        return row[0] if row else 0

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM deferred").fetchone()[0]

    def close(self) -> None:
        self._db.close()


# APScheduler stores a job as a reference to a module-level function plus plain arguments, so the
# running service is found by name when a stored job fires (after a restart too).
_HOSTS: dict[str, "ScheduledEvents"] = {}


async def fire_stored_job(host: str, spec: dict) -> str:
    """The job function APScheduler calls (by its textual reference) for every scheduled event."""
    service = _HOSTS.get(host)
    if service is None:
        log.warning("scheduled job %s fired with no running scheduler %r; run lost", spec.get("job_id"), host)
        return RunOutcome.FAILED.value
    return (await service.fire(JobSpec.from_dict(spec))).value


class ScheduledEvents:
    """The scheduler, its job store and the deferred runs. `start()` inside the bot's event loop."""

    def __init__(
        self,
        config: ScheduleConfig,
        *,
        gate: FeatureGate,
        post: PostText,
        compose: Compose | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.gate = gate
        self.post = post
        self.compose = compose
        self.clock = clock
        self.rng = rng or random.Random()
        self.state_dir = ensure_private_dir(config.state_dir)
        # The stored jobs name their scheduler by its job store, so a restarted bot finds them again.
        self.name = str(self.state_dir.resolve())
        self.deferred = DeferredRuns(self.state_dir / DEFERRED_FILE)
        self._scheduler: AsyncIOScheduler | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._watcher: asyncio.Task | None = None
        self.stats = {outcome.value: 0 for outcome in RunOutcome} | {"missed": 0, "coalesced": 0}
        self.last_runs: dict[str, tuple[float, RunOutcome]] = {}  # job id -> (when, outcome): the admin panel shows it

    # ---- life cycle ----------------------------------------------------------------------------

    async def start(self, *, watch: bool = True) -> None:
        """Open the job store, sync the file's jobs, start firing; `watch` also starts the deferred-run watcher."""
        path = prepare_private_sqlite(self.state_dir / JOBS_FILE)
        scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{path}")},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=timezone.utc,
        )
        scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
        _HOSTS[self.name] = self
        self._scheduler = scheduler
        scheduler.start(paused=True)  # jobs are synced before anything is due
        self._sync_config_jobs()
        scheduler.resume()
        if watch:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="schedule-deferred-watch")

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except (asyncio.CancelledError, Exception):
                pass
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)
            for _ in range(100):  # AsyncIOScheduler shuts down on the loop's next turn
                if not scheduler.running:
                    break
                await asyncio.sleep(0)
        if _HOSTS.get(self.name) is self:
            del _HOSTS[self.name]
        self.deferred.close()

    @property
    def scheduler(self) -> AsyncIOScheduler:
        if self._scheduler is None:
            raise RuntimeError("the scheduler is not started")
        return self._scheduler

    def _job_options(self, spec: JobSpec) -> dict:
        grace = None if spec.misfire is Misfire.RUN_ONCE else max(1, int(self.config.misfire_grace_s))
        return {"misfire_grace_time": grace, "coalesce": True, "max_instances": 1}

    def _add(self, spec: JobSpec, *, replace: bool, paused: bool = False) -> None:
        trigger = spec.trigger.build(spec.timezone)
        options = {"next_run_time": None} if paused else {}
        self.scheduler.add_job(
            "graph.features.scheduler:fire_stored_job", trigger, id=spec.job_id, name=spec.job_id,
            kwargs={"host": self.name, "spec": spec.to_dict()}, replace_existing=replace,
            **self._job_options(spec), **options)

    def _sync_config_jobs(self) -> None:
        wanted = {spec.job_id: spec for spec in self.config.jobs}
        for job in self.scheduler.get_jobs():
            stored = job.kwargs.get("spec", {})
            if stored.get("source") == "config" and job.id not in wanted:
                log.info("scheduled job %s is no longer in the schedule file; removed", job.id)
                job.remove()
        for spec in self.config.jobs:
            existing = self.scheduler.get_job(spec.job_id)
            if existing is not None and existing.kwargs.get("spec") == spec.to_dict():
                continue  # unchanged: keep its next run time (a run missed while down is handled as a misfire)
            if existing is not None and existing.kwargs.get("spec", {}).get("source") == "command":
                log.warning("scheduled job %s from the file replaces the one added by command", spec.job_id)
            paused = existing is not None and existing.next_run_time is None
            self._add(spec, replace=True, paused=paused)

    def _on_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            self.stats["missed"] += 1
            log.warning("scheduled job %s: the run due at %s was missed (the bot was not running or was busy); "
                        "misfire policy skip, not run", event.job_id, event.scheduled_run_time)
        elif event.code == EVENT_JOB_ERROR:
            log.error("scheduled job %s failed: %r", event.job_id, event.exception)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.recheck_s)
            try:
                if len(self.deferred):
                    await self.flush_deferred()
            except Exception:
                log.exception("posting deferred scheduled runs failed; trying again later")

    # ---- runs ----------------------------------------------------------------------------------

    def _lock(self, job_id: str) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    async def fire(self, spec: JobSpec, *, manual: bool = False) -> RunOutcome:
        """One run of a job: posted now, or deferred / skipped when a voice session pauses the feature."""
        outcome = await self._fire(spec, manual)
        self.last_runs[spec.job_id] = (self.clock(), outcome)
        return outcome

    async def _fire(self, spec: JobSpec, manual: bool) -> RunOutcome:
        async with self._lock(spec.job_id):
            if not await self.gate.is_open():
                return self._hold(spec, manual)
            outcome = await self._deliver(spec)
            if outcome is RunOutcome.DEFERRED:  # a session started while the message was being written
                return self._hold(spec, manual)
            if self.deferred.clear(spec.job_id):
                self.stats["coalesced"] += 1
                log.info("scheduled job %s: this run also stands for the one deferred during the voice session",
                         spec.job_id)
            return outcome

    def _hold(self, spec: JobSpec, manual: bool) -> RunOutcome:
        if spec.misfire is Misfire.SKIP and not manual:
            self.stats[RunOutcome.SKIPPED.value] += 1
            log.info("scheduled job %s skipped: %s (misfire policy skip)", spec.job_id, self.gate.reason)
            return RunOutcome.SKIPPED
        if self.deferred.defer(spec, self.clock()):
            log.info("scheduled job %s deferred until the voice session ends (%s)", spec.job_id, self.gate.reason)
        else:
            self.stats["coalesced"] += 1
            log.info("scheduled job %s: another run during the voice session, coalesced into the deferred one",
                     spec.job_id)
        self.stats[RunOutcome.DEFERRED.value] += 1
        return RunOutcome.DEFERRED

    async def _message(self, spec: JobSpec) -> str | None:
        if spec.kind is MessageKind.TEXT:
            return spec.text
        if spec.kind is MessageKind.CHOICE:
            return self.rng.choice(spec.choices)
        text = None
        if self.compose is not None:
            try:
                text = await self.compose(spec)
            except Exception as exc:
                log.warning("scheduled job %s: the LLM could not write its message (%s: %s)",
                            spec.job_id, type(exc).__name__, exc)
        if not text and spec.fallback:
            log.info("scheduled job %s: posting its fallback text", spec.job_id)
            return spec.fallback
        return text

    async def _deliver(self, spec: JobSpec) -> RunOutcome:
        text = await self._message(spec)
        if not text or not text.strip():
            self.stats[RunOutcome.FAILED.value] += 1
            log.warning("scheduled job %s: nothing to post (no message written, no fallback); run dropped", spec.job_id)
            return RunOutcome.FAILED
        if spec.kind is MessageKind.PROMPT and not await self.gate.is_open():
            return RunOutcome.DEFERRED  # writing took a while and a session began meanwhile
        try:
            await self.post(spec.channel_id, text)
        except Exception as exc:
            self.stats[RunOutcome.FAILED.value] += 1
            log.warning("scheduled job %s: posting to channel %s failed (%s: %s)",
                        spec.job_id, spec.channel_id, type(exc).__name__, exc)
            return RunOutcome.FAILED
        self.stats[RunOutcome.POSTED.value] += 1
        log.info("scheduled job %s posted to channel %s", spec.job_id, spec.channel_id)
        return RunOutcome.POSTED

    async def flush_deferred(self) -> int:
        """After a session: post every deferred run once, oldest first; returns how many went out."""
        posted = 0
        for spec, runs, _attempts in self.deferred.pending():
            async with self._lock(spec.job_id):
                if not self.deferred.has(spec.job_id):
                    continue  # the job fired meanwhile and consumed it
                current = self._current_spec(spec.job_id)
                if current is None:
                    self.deferred.clear(spec.job_id)
                    log.info("deferred run of scheduled job %s dropped: the job was removed", spec.job_id)
                    continue
                if not await self.gate.is_open():
                    return posted  # still (or again) in a session
                outcome = await self._deliver(current)
                if outcome is RunOutcome.POSTED:
                    self.deferred.clear(spec.job_id)
                    posted += 1
                    log.info("scheduled job %s: deferred run posted after the voice session (%d run%s coalesced)",
                             spec.job_id, runs, "s" if runs != 1 else "")
                elif outcome is RunOutcome.FAILED:
                    if self.deferred.failed(spec.job_id) >= MAX_DELIVERY_ATTEMPTS:
                        self.deferred.clear(spec.job_id)
                        log.warning("deferred run of scheduled job %s dropped after %d failed attempts",
                                    spec.job_id, MAX_DELIVERY_ATTEMPTS)
                else:
                    return posted
        return posted

    def _current_spec(self, job_id: str) -> JobSpec | None:
        job = self.scheduler.get_job(job_id)
        return JobSpec.from_dict(job.kwargs["spec"]) if job is not None else None

    # ---- admin ---------------------------------------------------------------------------------

    def jobs(self, guild_id: int | None = None) -> list[JobView]:
        views = []
        for job in self.scheduler.get_jobs():
            spec = JobSpec.from_dict(job.kwargs["spec"])
            if guild_id is None or spec.guild_id == guild_id:
                views.append(JobView(spec, job.next_run_time, self.deferred.has(spec.job_id)))
        return sorted(views, key=lambda v: v.spec.job_id)

    def get(self, job_id: str) -> JobSpec | None:
        return self._current_spec(job_id)

    def add(self, spec: JobSpec) -> None:
        """Add a job by command; ValueError when the id is taken."""
        try:
            self._add(spec, replace=False)
        except ConflictingIdError:
            raise ValueError(f"a job called {spec.job_id!r} exists already") from None
        log.info("scheduled job %s added by command (%s)", spec.job_id, spec.trigger.describe())

    def remove(self, job_id: str) -> JobSpec:
        spec = self._current_spec(job_id)
        if spec is None:
            raise KeyError(job_id)
        if spec.source == "config":
            raise ValueError(f"{job_id!r} comes from the schedule file; pause it, or remove it from the file")
        self.scheduler.remove_job(job_id)
        if self.deferred.clear(job_id):
            log.info("deferred run of scheduled job %s dropped with the job", job_id)
        log.info("scheduled job %s removed by command", job_id)
        return spec

    def pause(self, job_id: str) -> None:
        try:
            self.scheduler.pause_job(job_id)
        except JobLookupError:
            raise KeyError(job_id) from None

    def resume(self, job_id: str) -> datetime | None:
        try:
            job = self.scheduler.resume_job(job_id)
        except JobLookupError:
            raise KeyError(job_id) from None
        return job.next_run_time if job is not None else None

    async def run_now(self, job_id: str) -> RunOutcome:
        spec = self._current_spec(job_id)
        if spec is None:
            return RunOutcome.UNKNOWN
        return await self.fire(spec, manual=True)
