"""Fetch what Miku decided to say on her own, and hand it to the action executor.

The graph's autonomous engine decides on its own ticks, not in answer to a request, so its actions
wait in an outbox on the graph. `AutonomousPoller` long-polls `GET /v1/autonomous/actions?wait=S`
(the graph answers as soon as an action is ready, or with nothing after S seconds) and passes every
batch to a callable, normally `ActionExecutor.execute` (the actions are ordinary `send` actions, see
docs/autonomous.md). On errors it backs off exponentially (with jitter) up to `max_backoff_s`, and it
stops cleanly: `stop()` cancels the pending poll and closes its HTTP session. The first successful poll
after failures calls `on_recovered` (the bot re-sends its server settings: a restarted graph lost them).

It keeps its own aiohttp session because a long-poll outlives the GraphClient's short request timeout.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from .graph_api import GraphAuthError, GraphClient, GraphError, GraphUnavailable

log = logging.getLogger(__name__)

ExecuteActions = Callable[[list[dict]], Awaitable[Any]]


class AutonomousPoller:
    """`start()` / `await stop()`, or `await run()` in a task of your own; `poll_once()` for one fetch."""

    def __init__(
        self,
        graph_api: GraphClient,
        execute_actions: ExecuteActions,
        *,
        wait_s: float = 25.0,
        interval_s: float = 0.0,
        guild_id: int | str | None = None,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        on_recovered: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        if wait_s < 0 or interval_s < 0 or initial_backoff_s <= 0 or max_backoff_s < initial_backoff_s:
            raise ValueError("wait_s/interval_s must be >= 0 and 0 < initial_backoff_s <= max_backoff_s")
        self.graph = graph_api
        self.execute_actions = execute_actions
        self.wait_s = wait_s
        self.interval_s = interval_s  # pause between successful polls (0: poll again at once)
        self.guild_id = None if guild_id is None else str(guild_id)
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.on_recovered = on_recovered  # awaited after the first good poll that follows failures
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._executing = False
        self.failures = 0  # consecutive failed polls (0 after a success)
        self.executed = 0  # actions handed to execute_actions

    # --- one poll -------------------------------------------------------------------------------

    async def poll_once(self, wait_s: float | None = None) -> list[dict]:
        """One `GET /v1/autonomous/actions`; raises GraphError (or a subclass) on failure."""
        wait = self.wait_s if wait_s is None else wait_s
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        params = {"wait": f"{wait:g}"}
        if self.guild_id is not None:
            params["guild_id"] = self.guild_id
        url = f"{self.graph.base_url}/v1/autonomous/actions"
        # the server holds the request up to `wait` seconds: allow that plus the usual request time
        timeout = aiohttp.ClientTimeout(total=wait + 15.0, connect=self.graph.connect_timeout_s)
        try:
            async with self._http.get(url, params=params, headers=self.graph.auth_headers, timeout=timeout) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as exc:
            raise GraphUnavailable(f"autonomous poll failed: the graph is unreachable ({type(exc).__name__})") from exc
        if status in (401, 403):
            raise GraphAuthError(f"the graph refused the bot's token ({status})", status)
        if status >= 400:
            raise GraphError(f"GET /v1/autonomous/actions failed with HTTP {status}: {text[:200]}", status)
        try:
            body = json.loads(text) if text else {}
        except ValueError as exc:
            raise GraphError(f"GET /v1/autonomous/actions answered non-JSON: {text[:200]!r}", status) from exc
        actions = body.get("actions", []) if isinstance(body, dict) else []
        return [a for a in actions if isinstance(a, dict)]

    # --- the loop -------------------------------------------------------------------------------

    def _backoff(self) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (self.failures - 1))
        return base * (0.5 + 0.5 * self._rng.random())  # jitter: many bots must not retry in step

    async def run(self) -> None:
        """Poll until `stop()`; each non-empty batch goes to `execute_actions` before the next poll."""
        self._stopping = False
        try:
            while not self._stopping:
                try:
                    actions = await self.poll_once()
                except GraphError as exc:
                    self.failures += 1
                    delay = self._backoff()
                    log.warning("autonomous poll failed (%s); retrying in %.1f s", exc, delay)
                    await self._sleep(delay)
                    continue
                recovered, self.failures = self.failures > 0, 0
                if recovered and self.on_recovered is not None:
                    try:
                        await self.on_recovered()
                    except Exception:  # a failing hook must not end polling
                        log.exception("the autonomous poller's recovery hook failed")
                if actions:
                    self._executing = True
                    try:
                        await self.execute_actions(actions)
                        self.executed += len(actions)
                    except Exception:  # the executor logs per action; a crash here must not end polling
                        log.exception("carrying out %d autonomous action(s) failed", len(actions))
                    finally:
                        self._executing = False
                if self.interval_s and not self._stopping:
                    await self._sleep(self.interval_s)
        finally:
            await self._close_http()

    def start(self) -> asyncio.Task:
        """Run the loop in a task (idempotent while it runs)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="autonomous-poller")
        return self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Stop polling now: the in-flight long-poll is cancelled; a batch being executed finishes first."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            if not self._executing:  # a batch already taken from the graph is carried out, not lost
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._close_http()

    async def _close_http(self) -> None:
        if self._http is not None and not self._http.closed:
            await self._http.close()
        self._http = None
