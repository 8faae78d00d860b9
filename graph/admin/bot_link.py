"""The panel's channel to the bot's own features (scheduled events, the figurine notifier).

Those features run in the bot process (bot_client/features.py), which opens no listening socket, so the
graph never calls the bot: the bot calls the graph. Every few seconds it sends `POST /v1/bot/sync` with
a report of its jobs and feeds and the acknowledgements of the commands it has carried out; the answer
is the commands still waiting for it. `BotLink` is the graph's side of that, in the ingress replica's
memory (like the panel's sessions): the newest report, and a bounded list of commands.

A command is sent again on every sync until the bot acknowledges it (the bot remembers the ids it has
done, so a repeat is acknowledged, not run twice) or until it expires; at most `max_open` wait at once.
"""
from __future__ import annotations

import enum
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


class CommandKind(enum.Enum):
    JOB_PAUSE = "job.pause"
    JOB_RESUME = "job.resume"
    JOB_RUN = "job.run"
    NOTIFIER_PAUSE = "notifier.pause"
    NOTIFIER_RESUME = "notifier.resume"
    FEED_POLL = "feed.poll"

    @property
    def target(self) -> str:
        """What the command's target names: a job id, a feed URL, or nothing."""
        return self.value.split(".")[0]


class CommandState(enum.Enum):
    QUEUED = "queued"  # not yet handed to the bot
    DELIVERED = "delivered"  # handed over, no acknowledgement yet (sent again on the next sync)
    DONE = "done"
    FAILED = "failed"  # the bot tried and said why not
    EXPIRED = "expired"  # no acknowledgement within the time allowed (the bot is down or old)


FINISHED = (CommandState.DONE, CommandState.FAILED, CommandState.EXPIRED)


class BotLinkError(ValueError):
    """A command the link refuses; `status` is the HTTP status the panel answers with."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class BotCommand:
    id: str
    kind: CommandKind
    target: str
    user: str
    queued_at: float
    state: CommandState = CommandState.QUEUED
    delivered_at: float | None = None
    finished_at: float | None = None
    result: str = ""

    def to_wire(self) -> dict[str, str]:
        """What the bot receives."""
        return {"id": self.id, "kind": self.kind.value, "target": self.target}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind.value, "state": self.state.value}


@dataclass(frozen=True)
class Ack:
    id: str
    ok: bool
    result: str = ""


@dataclass
class BotReport:
    """What the bot says about its features (plain JSON-able dicts, bounded by the route's schema)."""

    bot_id: str
    jobs: list[dict[str, Any]] = field(default_factory=list)
    feeds: list[dict[str, Any]] = field(default_factory=list)
    notifier: dict[str, Any] | None = None  # None: the figurine notifier is off
    scheduler: bool = False  # scheduled events are on


class BotLink:
    def __init__(self, *, clock: Callable[[], float] = time.time, max_open: int = 32, command_ttl_s: float = 600.0,
                 keep_finished: int = 50, stale_after_s: float = 30.0, poll_s: float = 5.0) -> None:
        self.clock = clock
        self.max_open = max_open
        self.command_ttl_s = command_ttl_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.report: BotReport | None = None
        self.reported_at: float | None = None
        self._open: dict[str, BotCommand] = {}
        self._finished: deque[BotCommand] = deque(maxlen=keep_finished)
        self._ids = itertools.count(1)

    # ---- the bot's side -------------------------------------------------------------------------

    def sync(self, report: BotReport, acks: Iterable[Ack] = ()) -> list[BotCommand]:
        """Take a report and acknowledgements; return the commands the bot should carry out."""
        now = self.clock()
        self.report, self.reported_at = report, now
        for ack in acks:
            command = self._open.pop(ack.id, None)
            if command is None:
                continue  # acknowledged twice, or expired meanwhile
            command.state = CommandState.DONE if ack.ok else CommandState.FAILED
            command.finished_at, command.result = now, ack.result[:500]
            self._finished.append(command)
        self._expire(now)
        for command in self._open.values():
            if command.state is CommandState.QUEUED:
                command.state, command.delivered_at = CommandState.DELIVERED, now
        return list(self._open.values())

    # ---- the panel's side -----------------------------------------------------------------------

    def connected(self) -> bool:
        return self.reported_at is not None and self.clock() - self.reported_at <= self.stale_after_s

    def queue(self, kind: CommandKind, target: str, user: str) -> BotCommand:
        """A command for the bot; refused when no bot reports, the target is unknown, or too many wait."""
        now = self.clock()
        self._expire(now)
        if self.report is None or not self.connected():
            raise BotLinkError("the bot is not connected: it reports to the graph every few seconds when it runs", 503)
        self._check_target(kind, target)
        if len(self._open) >= self.max_open:
            raise BotLinkError(f"{len(self._open)} commands already wait for the bot; try again when it has done them", 429)
        command = BotCommand(f"c{next(self._ids)}-{int(now)}", kind, target, user, now)
        self._open[command.id] = command
        return command

    def _check_target(self, kind: CommandKind, target: str) -> None:
        report = self.report
        assert report is not None
        if kind.target == "job":
            if not report.scheduler:
                raise BotLinkError("scheduled events are off in the bot (no schedule file)", 404)
            if target not in {job.get("id") for job in report.jobs}:
                raise BotLinkError(f"the bot has no scheduled job {target!r}", 404)
        elif kind.target == "feed":
            if report.notifier is None:
                raise BotLinkError("the figurine notifier is off in the bot (no figurines file)", 404)
            if target not in {feed.get("url") for feed in report.feeds}:
                raise BotLinkError(f"the notifier has no feed {target!r}", 404)
        elif report.notifier is None:
            raise BotLinkError("the figurine notifier is off in the bot (no figurines file)", 404)

    def _expire(self, now: float) -> None:
        for command_id, command in list(self._open.items()):
            if now - command.queued_at > self.command_ttl_s:
                del self._open[command_id]
                command.state, command.finished_at = CommandState.EXPIRED, now
                command.result = f"no answer from the bot within {self.command_ttl_s:g} s"
                self._finished.append(command)

    def commands(self) -> list[BotCommand]:
        """Open and recently finished commands, newest first."""
        return sorted([*self._open.values(), *self._finished], key=lambda c: c.queued_at, reverse=True)

    def view(self) -> dict[str, Any]:
        self._expire(self.clock())
        report = self.report
        return {
            "connected": self.connected(),
            "reported_at": self.reported_at,
            "bot_id": report.bot_id if report else None,
            "scheduler": bool(report and report.scheduler),
            "jobs": list(report.jobs) if report else [],
            "notifier": report.notifier if report else None,
            "feeds": list(report.feeds) if report else [],
            "commands": [c.to_dict() for c in self.commands()],
        }
