"""The `FeatureController` Ray actor: hosts graph.controller.state_machine.SessionController for the whole cluster.

One named, detached actor (`FeatureController` in namespace `miku`) so every replica, job and the bot's
routes talk to the same sessions, blackouts and text queue. Ray restarts it when its process dies
(`max_restarts=-1`); it then reloads its SQLite checkpoint and carries on with the same state. Calls that were
in flight are retried (`max_task_retries`): every method is idempotent or carries an idempotency key
(`request_id` for starts, `message_id` for enqueues), so a retry never doubles a session or a message.

It is an async actor: every method runs on one event loop and none awaits in the middle of a change, so
changes are serialised without locks, and a background task ends sessions whose heartbeats stopped. While a
session runs, a second task compares VRAM with its limit (the headroom probe's `excess()`): a crossing is
logged once, exported as metrics, and listed under `warnings` in heartbeat and session-list answers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.util import metrics
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from graph.controller.audit import AuditEntry, AuditPage
from graph.controller.config import ControllerConfig
from graph.controller.features import CheckResult
from graph.controller.headroom import HeadroomProbe
from graph.controller.sessions import (
    Session,
    SessionEnded,
    SessionRequest,
    SessionStarted,
)
from graph.controller.state_machine import ControllerStats, SessionController
from graph.controller.telemetry import VramExcess
from graph.controller.vram_watch import VramWarning, VramWatch, WatchUpdate
from graph.controller.text_queue import (
    AckResult,
    EnqueueResult,
    IncomingMessage,
    ReplayBatch,
)

log = logging.getLogger(__name__)

CONTROLLER_NAME = "FeatureController"
CONTROLLER_NAMESPACE = "miku"
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "controller.yaml"
# A call in flight when the actor process dies is re-run on the restarted actor; every method is safe to
# re-run (idempotent or keyed), and a few retries ride out a restart without failing the request.
MAX_TASK_RETRIES = 3
_HEAD_NODE_RESOURCE = "node:__internal_head__"


class ControllerStartupError(RuntimeError):
    """The controller actor could not start (e.g. its state directory is not writable)."""


def load_controller_config(config: ControllerConfig | Mapping[str, Any] | str | Path | None) -> ControllerConfig:
    """A ControllerConfig from a config object, a mapping (YAML section) or a YAML path; None -> the defaults file."""
    if isinstance(config, ControllerConfig):
        return config
    if config is None:
        return ControllerConfig.from_file(DEFAULT_CONFIG_FILE)
    if isinstance(config, (str, Path)):
        return ControllerConfig.from_file(config)
    return ControllerConfig.from_mapping(config)


class ControllerMetrics:
    """Ray metrics (exported with a `ray_` prefix): gauges for the state, counters for events."""

    def __init__(self, baseline: ControllerStats):
        self.active_sessions = metrics.Gauge(
            "miku_controller_active_sessions", description="Voice sessions holding feature blackouts."
        )
        self.blocked_features = metrics.Gauge(
            "miku_controller_blocked_features", description="Features refused right now (routed ones not counted)."
        )
        self.queue_length = metrics.Gauge(
            "miku_controller_queue_length", description="Text messages waiting for replay."
        )
        self.dropped = metrics.Counter(
            "miku_controller_dropped_messages", description="Queued text messages dropped because the queue was full."
        )
        self.expiries = metrics.Counter(
            "miku_controller_lease_expiries", description="Sessions ended because their heartbeats stopped."
        )
        self.vram_over_limit = metrics.Gauge(
            "miku_controller_vram_over_limit",
            description="1 while a card's VRAM is over its voice-session limit during a session, else 0.",
            tag_keys=("resource",),
        )
        self.vram_crossings = metrics.Counter(
            "miku_controller_vram_limit_crossings",
            description="Times a card's VRAM crossed its voice-session limit while a session ran.",
            tag_keys=("resource",),
        )
        # Totals survive restarts in the checkpoint; count only what happens in this process.
        self._dropped_seen = baseline.dropped_total
        self._expired_seen = baseline.expired_total

    def publish(self, stats: ControllerStats) -> None:
        self.active_sessions.set(stats.active_sessions)
        self.blocked_features.set(stats.blocked_features)
        self.queue_length.set(stats.queue_length)
        if stats.dropped_total > self._dropped_seen:
            self.dropped.inc(stats.dropped_total - self._dropped_seen)
            self._dropped_seen = stats.dropped_total
        if stats.expired_total > self._expired_seen:
            self.expiries.inc(stats.expired_total - self._expired_seen)
            self._expired_seen = stats.expired_total

    def publish_vram(self, update: WatchUpdate) -> None:
        for warning in update.crossed:
            self.vram_crossings.inc(1, tags={"resource": warning.excess.resource})
            self.vram_over_limit.set(1, tags={"resource": warning.excess.resource})
        for resource in update.recovered:
            self.vram_over_limit.set(0, tags={"resource": resource})


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)
class FeatureController:
    """The actor. Methods mirror SessionController; refusals raise graph.controller.errors.ControllerError subclasses
    (through Ray they arrive as RayTaskError whose `.cause` is the original error)."""

    async def __init__(
        self,
        config: ControllerConfig,
        headroom: HeadroomProbe | None = None,
        vram_excess: Callable[[], Sequence[VramExcess]] | None = None,
    ):
        self._config = config
        self._changed = asyncio.Event()  # set (and replaced) on every change: what watch_feature waits on
        self._ctl = SessionController.open(config, headroom=headroom)
        self._metrics = ControllerMetrics(self._ctl.stats())
        self._publish()
        self._expiry_task = asyncio.get_running_loop().create_task(self._expire_loop())
        # VramHeadroom can say which cards are over their limit; any other probe has no such reading.
        self._vram_excess = vram_excess or getattr(headroom, "excess", None)
        self._vram = VramWatch()
        self._vram_task = (
            asyncio.get_running_loop().create_task(self._vram_loop()) if self._vram_excess is not None else None
        )
        log.info("FeatureController up (pid %s), %d active session(s)", os.getpid(), len(self._ctl.sessions()))

    # ------------------------------------------------------------------ liveness
    async def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "state_dir": self._config.state_dir, "sessions": len(self._ctl.sessions())}

    async def pid(self) -> int:
        return os.getpid()

    # ------------------------------------------------------------------ sessions
    async def start_session(self, request: SessionRequest) -> SessionStarted:
        try:
            return self._ctl.start_session(request)
        finally:
            self._publish()

    async def heartbeat(self, session_id: str) -> Session:
        try:
            return self._ctl.heartbeat(session_id)
        finally:
            self._publish()

    async def heartbeat_report(self, session_id: str) -> tuple[Session, tuple[VramWarning, ...]]:
        """A heartbeat plus the warnings in force (VRAM over its limit), for the HTTP answer."""
        return await self.heartbeat(session_id), self._vram.warnings()

    async def sessions_report(self) -> tuple[tuple[Session, ...], tuple[VramWarning, ...]]:
        return self._ctl.sessions(), self._vram.warnings()

    async def warnings(self) -> tuple[VramWarning, ...]:
        return self._vram.warnings()

    async def end_session(self, session_id: str) -> SessionEnded:
        try:
            return self._ctl.end_session(session_id)
        finally:
            self._publish()

    async def sessions(self) -> tuple[Session, ...]:
        return self._ctl.sessions()

    async def session(self, session_id: str) -> Session:
        return self._ctl.session(session_id)

    # ------------------------------------------------------------------ features
    async def check(self, feature: str, persona: str | None = None) -> CheckResult:
        return self._ctl.check(feature, persona)

    async def features(self, persona: str | None = None) -> tuple[CheckResult, ...]:
        return self._ctl.features(persona)

    async def watch_feature(self, feature: str, known_allowed: bool | None, timeout_s: float = 30.0) -> CheckResult:
        """Long poll for a GPU stage (deployments/media): `check(feature)` as soon as its `allowed` differs
        from `known_allowed` (at once when it already does), or as it is after `timeout_s`."""
        deadline = time.monotonic() + max(0.0, min(float(timeout_s), 120.0))
        while True:
            result = self._ctl.check(feature)
            remaining = deadline - time.monotonic()
            if result.allowed != known_allowed or remaining <= 0:
                return result
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return self._ctl.check(feature)

    # ------------------------------------------------------------------ text queue
    async def enqueue(self, message: IncomingMessage, persona: str | None = None) -> EnqueueResult:
        try:
            return self._ctl.enqueue(message, persona)
        finally:
            self._publish()

    async def replay(self, limit: int | None = None, after_id: int = 0) -> ReplayBatch:
        return self._ctl.replay(limit, after_id=after_id)

    async def ack(self, queue_ids: Iterable[int]) -> AckResult:
        try:
            return self._ctl.ack(queue_ids)
        finally:
            self._publish()

    async def queue(self) -> tuple[Any, ...]:
        return self._ctl.queue()

    # ------------------------------------------------------------------ audit and stats
    async def audit(self, after_seq: int = 0, limit: int = 100) -> tuple[AuditEntry, ...]:
        return self._ctl.audit(after_seq, limit)

    async def audit_page(self, after_seq: int = 0, limit: int = 100) -> AuditPage:
        return self._ctl.audit_page(after_seq, limit)

    async def audit_tail(self, limit: int = 100) -> AuditPage:
        return self._ctl.audit_tail(limit)

    async def record_admin(self, user: str, change: str, detail: Mapping[str, Any] | None = None) -> AuditEntry:
        """An admin-panel change, in the audit log with its user (not retried twice: one entry per call
        is what the panel wants, and a re-run after a crash writes at most one more)."""
        return self._ctl.record_admin(user, change, detail)

    async def stats(self) -> ControllerStats:
        return self._ctl.stats()

    # ------------------------------------------------------------------ internals
    def _publish(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wake every watch_feature; they read the new state
        try:
            self._metrics.publish(self._ctl.stats())
        except Exception:  # metrics must never fail a request
            log.exception("could not publish controller metrics")

    async def _expire_loop(self) -> None:
        """End sessions whose heartbeats stopped, waking at the earliest lease deadline (or every interval)."""
        interval = self._config.lease_check_interval_s
        while True:
            deadline = self._ctl.next_expiry()
            delay = interval if deadline is None else min(interval, max(0.0, deadline - time.time()) + 0.01)
            await asyncio.sleep(delay)
            try:
                self._ctl.expire_stale()
            except Exception:  # e.g. a locked checkpoint: keep the session and try again next round
                log.exception("lease expiry failed; retrying")
            self._publish()


    async def _vram_loop(self) -> None:
        """While a session runs, compare VRAM with its limit; warn once per crossing."""
        interval = self._config.vram_check_interval_s
        while True:
            try:
                await self.check_vram()
            except Exception:  # telemetry must never take the controller down
                log.exception("VRAM check failed; retrying")
            await asyncio.sleep(interval)

    async def check_vram(self) -> tuple[VramWarning, ...]:
        """One VRAM reading now (the loop's step; callable directly). Returns the warnings in force."""
        if self._vram_excess is None:
            return ()
        if not self._ctl.sessions():
            update = self._vram.clear()
        else:
            # NVML/amdsmi calls block: read off the event loop, then update the watch on it.
            excesses = await asyncio.to_thread(self._vram_excess)
            update = self._vram.observe(excesses, time.time())
        for warning in update.crossed:
            log.warning("VRAM over its limit during a voice session: %s", warning.excess.message)
        for resource in update.recovered:
            log.info("VRAM back under its limit on %s", resource)
        try:
            self._metrics.publish_vram(update)
        except Exception:
            log.exception("could not publish VRAM metrics")
        return self._vram.warnings()


def _head_node_id() -> str | None:
    for node in ray.nodes():
        if node.get("Alive") and _HEAD_NODE_RESOURCE in node.get("Resources", {}):
            return node["NodeID"]
    return None


def get_or_create_controller(
    config: ControllerConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    headroom: HeadroomProbe | None = None,
    vram_excess: Callable[[], Sequence[VramExcess]] | None = None,
    name: str = CONTROLLER_NAME,
    namespace: str = CONTROLLER_NAMESPACE,
    pin_to_head: bool = True,
    ready_timeout_s: float = 60.0,
) -> ActorHandle:
    """The cluster's controller actor, created on first use, and waited for until it answers.

    `config` applies only when this call creates the actor; an existing actor keeps the config it started
    with. `headroom` (a picklable zero-argument callable) is called inside the actor before admitting any
    session; `vram_excess` (default: `headroom.excess` when it has one, as VramHeadroom does) is polled while
    sessions run, to warn when a card goes over its limit. `pin_to_head` keeps the actor (and every restart of it) on the head node,
    whose disk holds the checkpoint; turn it off only when `state_dir` is on storage every node shares.
    Raises ControllerStartupError when the actor cannot start (for example an unwritable state directory),
    with the actor's own reason. Call from synchronous code (app build time).
    """
    resolved = load_controller_config(config)
    head = _head_node_id() if pin_to_head else None
    strategy = NodeAffinitySchedulingStrategy(node_id=head, soft=False) if head else "DEFAULT"
    handle = FeatureController.options(
        name=name,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=strategy,
    ).remote(resolved, headroom, vram_excess)
    try:
        ray.get(handle.ready.remote(), timeout=ready_timeout_s)
    except ray.exceptions.GetTimeoutError as exc:
        raise ControllerStartupError(
            f"controller actor {namespace}/{name} did not answer within {ready_timeout_s} s"
        ) from exc
    except ray.exceptions.RayActorError as exc:
        # The message carries the actor's whole traceback; its last line is the reason.
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ControllerStartupError(f"controller actor {namespace}/{name} failed to start: {reason}") from exc
    return handle


def shutdown_controller(name: str = CONTROLLER_NAME, namespace: str = CONTROLLER_NAMESPACE) -> bool:
    """Stop the controller for good (no restart); its checkpoint stays. False when it was not running."""
    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    ray.kill(handle, no_restart=True)
    return True
