"""The bot's end of the admin panel's channel: report scheduled jobs and feeds, carry out panel commands.

The panel is served by the graph, but scheduled events and the figurine notifier run here in the bot
(bot_client/features.py). The bot opens no socket for it: every `poll_s` (the graph says how long) it
sends `POST /v1/bot/sync` with a report of its features and the acknowledgements of the commands done
since the last sync, and gets back the commands waiting for it (deployments/admin/bot_section.py).

Each command is carried out once: its id is remembered (the last `REMEMBERED_IDS`), so a command the
graph sends again because the acknowledgement was lost is acknowledged again, not run twice. After
carrying out commands the link syncs again at once, so the panel sees the result without waiting.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from graph.admin.bot_link import CommandKind

from .features import BotFeatures
from .graph_api import GraphClient, GraphError

log = logging.getLogger(__name__)

REMEMBERED_IDS = 500
COMMAND_TIMEOUT_S = 180.0  # a `run now` of a prompt job waits for the LLM to write the message
DEFAULT_POLL_S = 5.0
# the graph's schema bounds (deployments/admin/bot_section.py): what is longer is cut here, so one long
# field never makes the whole report refused
MAX_JOBS, MAX_FEEDS, MAX_TEXT = 500, 200, 200


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    result: str


def features_report(features: BotFeatures) -> dict[str, Any]:
    """What the panel lists: every job (trigger, next run, paused, last result) and feed (last fetch,
    error, items seen), and the notifier's state."""
    report: dict[str, Any] = {"scheduler": features.scheduler is not None, "jobs": [], "notifier": None, "feeds": []}
    scheduler = features.scheduler
    if scheduler is not None:
        for view in scheduler.jobs()[:MAX_JOBS]:
            spec = view.spec
            last = scheduler.last_runs.get(spec.job_id)
            report["jobs"].append({
                "id": spec.job_id, "trigger": _clip(spec.trigger.describe()), "timezone": _clip(spec.timezone),
                "guild_id": str(spec.guild_id), "channel_id": str(spec.channel_id),
                "message": _clip(spec.describe_message()), "source": _clip(spec.source),
                "next_run": view.next_run.timestamp() if view.next_run is not None else None,
                "paused": view.next_run is None, "deferred": view.deferred,
                "last_run": last[0] if last else None, "last_result": last[1].value if last else "",
            })
    notifier = features.figurines
    if notifier is not None:
        report["notifier"] = {"paused": notifier.paused_by_owner, "waiting": notifier.store.waiting_count(),
                              "stats": dict(notifier.stats)}
        errors = notifier.store.feed_errors()
        seen = notifier.store.items_seen()
        for source in notifier.config.feeds[:MAX_FEEDS]:
            _, _, _, failures, next_poll_at = notifier.store.feed(source.url)
            count, matched = seen.get(source.url, (0, 0))
            report["feeds"].append({
                "url": source.url, "last_fetch": notifier.last_fetch.get(source.url),
                "next_poll": next_poll_at or None, "error": (errors.get(source.url) or "")[:500],
                "failures": failures, "items_seen": count, "items_matched": matched,
            })
    return report


class PanelLink:
    def __init__(self, graph: GraphClient, features: BotFeatures, *, bot_id: str = "bot",
                 poll_s: float | None = None) -> None:
        self.graph = graph
        self.features = features
        self.bot_id = bot_id
        self.poll_s = poll_s  # None: as the graph says
        self._done: OrderedDict[str, Outcome] = OrderedDict()
        self._acks: list[dict[str, Any]] = []
        self._task: asyncio.Task | None = None
        self.handled: list[dict[str, str]] = []  # the commands carried out, oldest first (the last 100)

    async def carry_out(self, kind: CommandKind, target: str) -> Outcome:
        scheduler, notifier = self.features.scheduler, self.features.figurines
        if kind.target == "job":
            if scheduler is None:
                return Outcome(False, "scheduled events are off")
            try:
                if kind is CommandKind.JOB_PAUSE:
                    scheduler.pause(target)
                    return Outcome(True, "paused")
                if kind is CommandKind.JOB_RESUME:
                    next_run = scheduler.resume(target)
                    return Outcome(True, f"resumed; next run {next_run.isoformat() if next_run else 'none'}")
            except KeyError:
                return Outcome(False, f"no scheduled job {target!r}")
            outcome = await scheduler.run_now(target)
            return Outcome(outcome.value in ("posted", "deferred"), outcome.value)
        if notifier is None:
            return Outcome(False, "the figurine notifier is off")
        if kind is CommandKind.NOTIFIER_PAUSE:
            notifier.paused_by_owner = True
            return Outcome(True, "paused")
        if kind is CommandKind.NOTIFIER_RESUME:
            notifier.paused_by_owner = False
            return Outcome(True, "resumed")
        try:
            poll = await notifier.poll_now(target)
        except KeyError:
            return Outcome(False, f"no feed {target!r}")
        posted = await notifier.deliver_pending()
        if poll.failed:
            return Outcome(False, f"the feed could not be read: {notifier.store.feed_errors().get(target, '?')}")
        return Outcome(True, f"read: {poll.new_items} new item(s), {posted} post(s) sent")

    async def _command(self, wire: dict[str, Any]) -> None:
        command_id = str(wire.get("id", ""))
        outcome = self._done.get(command_id)
        if outcome is None:
            try:
                kind = CommandKind(wire.get("kind"))
            except ValueError:
                outcome = Outcome(False, f"this bot does not know the command {wire.get('kind')!r}")
            else:
                target = str(wire.get("target", ""))
                try:
                    outcome = await asyncio.wait_for(self.carry_out(kind, target), COMMAND_TIMEOUT_S)
                except Exception as error:  # noqa: BLE001 - the panel hears why
                    log.exception("panel command %s failed", wire)
                    outcome = Outcome(False, f"{type(error).__name__}: {error}")
                log.info("panel command %s %s: %s", kind.value, target, outcome.result)
                self.handled = [*self.handled[-99:], {"id": command_id, "kind": kind.value, "target": target}]
            self._done[command_id] = outcome
            while len(self._done) > REMEMBERED_IDS:
                self._done.popitem(last=False)
        self._acks.append({"id": command_id, "ok": outcome.ok, "result": outcome.result[:500]})

    async def sync_once(self) -> float:
        """One report, with acknowledgements; carry out what comes back. Returns the seconds until the
        next sync (0 after commands, so their results are reported at once)."""
        acks, self._acks = self._acks, []
        body = {"bot_id": self.bot_id, **features_report(self.features), "acks": acks}
        try:
            answer = await self.graph.bot_sync(body)
        except BaseException:
            self._acks = acks + self._acks  # not delivered: sent with the next sync
            raise
        commands = list((answer or {}).get("commands") or [])
        for wire in commands:
            await self._command(wire)
        wait = self.poll_s if self.poll_s is not None else float((answer or {}).get("poll_s") or DEFAULT_POLL_S)
        return 0.0 if commands else wait

    async def run(self) -> None:
        while True:
            try:
                wait = await self.sync_once()
            except asyncio.CancelledError:
                raise
            except GraphError as error:
                log.debug("admin panel sync failed: %s", error)
                wait = self.poll_s or DEFAULT_POLL_S
            except Exception:  # the link must outlive anything one round does
                log.exception("admin panel sync failed")
                wait = self.poll_s or DEFAULT_POLL_S
            await asyncio.sleep(wait)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="admin-panel-link")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
