"""Session controller latency, side by side in one run: in process, through the actor handle, through HTTP.

Everything in the bot asks `check(feature)` before acting, and every session start, heartbeat and end goes
through the controller, so this measures:
  - check():          in process (no Ray), through the Ray actor handle, through `GET /v1/features/{name}`
  - heartbeat:        through the handle and `POST /v1/sessions/{id}/heartbeat` (one SQLite commit each)
  - start+end cycle:  in process and through the handle (two commits, all features switched twice)
  - checks per second: in process (one thread), and through the handle with many calls in flight
  - large queue:      enqueue and heartbeat with 100 large messages queued (4000-character content, the event
                      repeating it), in process, the v2 row writer (only touched rows) side by side with the
                      v1 writer (the whole state as one JSON blob per change, as before issue 18), rounds
                      interleaved; and the same two calls through HTTP on the actor (v2)

Rounds are interleaved (handle, HTTP, handle, HTTP...) so machine noise hits both alike. Starts its own
local Ray (or joins a running one) and Serve on 127.0.0.1. Prints JSON as its last line.

    python benchmarks/controller_latency.py [--calls 300] [--cycles 40] [--large-rounds 200]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stats import summary_ms  # noqa: E402
from graph.controller.checkpoint import CheckpointWriteError, SqliteCheckpoint  # noqa: E402
from graph.controller.config import ControllerConfig  # noqa: E402
from graph.controller.errors import CheckpointError  # noqa: E402
from graph.controller.sessions import SessionRequest  # noqa: E402
from graph.controller.state_machine import SessionController  # noqa: E402
from graph.controller.text_queue import IncomingMessage  # noqa: E402

TOKEN = "controller-bench-token"
REQUEST = SessionRequest(guild_id="g", voice_channel_id="v", text_channel_id="t", user_id="u")


def summary(values_s: list[float]) -> dict:
    return summary_ms([v * 1000 for v in values_s])


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


async def atimed(call) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


def bench_in_process(state_dir: str, cycles: int) -> dict:
    ctl = SessionController.open(ControllerConfig(state_dir=state_dir))
    cycle_times = []
    for _ in range(cycles):
        start = time.perf_counter()
        started = ctl.start_session(REQUEST)
        ctl.end_session(started.session.session_id)
        cycle_times.append(time.perf_counter() - start)
    ctl.start_session(REQUEST)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.5:
        for _ in range(200):
            ctl.check("vision")
        count += 200
    checks_per_s = count / (time.perf_counter() - start)
    ctl.close()
    return {"start_end_cycle": summary(cycle_times), "checks_per_s": round(checks_per_s)}


LARGE_CONTENT = "ü" * 4000  # Discord's longest message, 8 kB in UTF-8


def large_message(n: int) -> IncomingMessage:
    event = {"type": "message", "content": LARGE_CONTENT, "author_name": "Rin", "attachments": []}
    return IncomingMessage("t", "u", LARGE_CONTENT, message_id=f"big{n}", event=event)


class V1BlobCheckpoint(SqliteCheckpoint):
    """The version-1 write, for comparison: the whole state as one JSON document, rewritten every change."""

    def save_v1(self, state: dict, audit) -> None:
        state_json = json.dumps(state, ensure_ascii=False)
        rows = [
            (e["seq"], e["at"], e["action"], e.get("session_id"), json.dumps(list(e.get("features", ()))),
             json.dumps(e.get("detail", {})))
            for e in audit
        ]
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS state_v1 (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT OR REPLACE INTO state_v1(key, value) VALUES ('controller', ?)", (state_json,))
            if rows:
                conn.executemany("INSERT INTO audit(seq, at, action, session_id, features, detail) VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except Exception as exc:
            conn.execute("ROLLBACK")
            raise CheckpointWriteError(str(exc)) from exc


class V1BlobController(SessionController):
    """SessionController committing the way version 1 did (serialise everything, write one blob)."""

    def _commit(self, change) -> None:
        try:
            self._store.save_v1(change.state.to_dict(), [entry.to_dict() for entry in change.audit])
        except CheckpointWriteError as exc:
            raise CheckpointError(f"change not applied, state unchanged: {exc}") from exc
        self._state = change.state


def bench_large_queue(scratch: str, rounds: int) -> dict:
    """enqueue (queue full: one row in, the oldest out) and heartbeat with 100 large messages queued."""
    controllers = {}
    for label, store_class, controller_class in (
        ("v1_blob", V1BlobCheckpoint, V1BlobController),
        ("v2_rows", SqliteCheckpoint, SessionController),
    ):
        config = ControllerConfig(state_dir=os.path.join(scratch, label), queue_limit=100, lease_s=3600)
        ctl = controller_class(config, store_class(config.state_dir))
        session_id = ctl.start_session(REQUEST).session.session_id
        for n in range(100):
            ctl.enqueue(large_message(n))
        controllers[label] = (ctl, session_id)
    times = {label: {"enqueue": [], "heartbeat": []} for label in controllers}
    next_id = 100
    for _ in range(rounds):  # interleaved: v1, v2, v1, v2
        for label, (ctl, session_id) in controllers.items():
            times[label]["enqueue"].append(timed(lambda: ctl.enqueue(large_message(next_id))))
            times[label]["heartbeat"].append(timed(lambda: ctl.heartbeat(session_id)))
        next_id += 1
    out = {"queued_messages": 100, "message_bytes": len(large_message(0).content.encode()) * 2}
    for label, (ctl, _) in controllers.items():
        assert len(ctl.queue()) == 100
        out[label] = {call: summary(values) for call, values in times[label].items()}
        ctl.close()
    for call in ("enqueue", "heartbeat"):
        out[f"{call}_speedup_p50"] = round(out["v1_blob"][call]["p50_ms"] / out["v2_rows"][call]["p50_ms"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="latency samples per call kind and path")
    parser.add_argument("--cycles", type=int, default=40, help="start+end cycles per path")
    parser.add_argument("--inflight", type=int, default=1000, help="check() calls in flight for the throughput run")
    parser.add_argument("--large-rounds", type=int, default=200, help="enqueue+heartbeat rounds with a large queue")
    args = parser.parse_args()

    # the Ray the project ships: loopback only, token auth (deployments/local_ray.py)
    from deployments.local_ray import start_local_ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import aiohttp
    import ray
    from fastapi import FastAPI
    from ray import serve

    from deployments import auth
    from deployments.controller.actor import (
        CONTROLLER_NAMESPACE,
        get_or_create_controller,
        shutdown_controller,
    )
    from deployments.controller.routes import router, use_controller

    scratch = tempfile.mkdtemp(prefix="miku-ctl-bench-")
    result: dict = {"benchmark": "controller_latency", "calls": args.calls, "cycles": args.cycles}
    result["in_process"] = bench_in_process(os.path.join(scratch, "inproc"), args.cycles)
    result["large_queue_in_process"] = bench_large_queue(os.path.join(scratch, "large"), args.large_rounds)

    start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    name = f"FeatureController-bench-{uuid.uuid4().hex[:8]}"
    handle = get_or_create_controller(ControllerConfig(state_dir=os.path.join(scratch, "actor")), name=name)

    app = FastAPI()
    app.include_router(router)

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class ControllerIngress:
        def __init__(self, token: str, controller_name: str):
            auth.configure(token)
            use_controller(controller_name, CONTROLLER_NAMESPACE)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(ControllerIngress.bind(TOKEN, name), name="controller-bench", route_prefix="/ctl")
    base = f"http://127.0.0.1:{port}/ctl"

    try:
        # start+end cycles through the handle
        cycles = []
        for _ in range(args.cycles):
            start = time.perf_counter()
            started = ray.get(handle.start_session.remote(REQUEST))
            ray.get(handle.end_session.remote(started.session.session_id))
            cycles.append(time.perf_counter() - start)
        result["handle"] = {"start_end_cycle": summary(cycles)}

        session_id = ray.get(handle.start_session.remote(REQUEST)).session.session_id

        async def http_and_handle() -> None:
            handle_check, handle_beat, http_check, http_beat = [], [], [], []
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                for _ in range(5):  # warm the proxy, the replica and the cached actor handle
                    async with http.get(f"{base}/v1/features/vision") as resp:
                        assert resp.status == 200, await resp.text()
                for _ in range(args.calls):  # interleaved: handle, HTTP, handle, HTTP
                    handle_check.append(await atimed(lambda: handle.check.remote("vision")))
                    http_check.append(await atimed(lambda: _get(http, f"{base}/v1/features/vision")))
                    handle_beat.append(await atimed(lambda: handle.heartbeat.remote(session_id)))
                    http_beat.append(await atimed(lambda: _post(http, f"{base}/v1/sessions/{session_id}/heartbeat")))
            result["handle"].update(check=summary(handle_check), heartbeat=summary(handle_beat))
            result["http"] = {"check": summary(http_check), "heartbeat": summary(http_beat)}

        asyncio.run(http_and_handle())

        ray.get([handle.check.remote("vision") for _ in range(50)])
        start = time.perf_counter()
        answers = ray.get([handle.check.remote("vision") for _ in range(args.inflight)])
        elapsed = time.perf_counter() - start
        assert all(a.blocked for a in answers)
        result["handle"]["checks_per_s"] = round(args.inflight / elapsed)

        async def large_queue_http() -> dict:
            """POST /v1/queue and the heartbeat through HTTP with 100 large messages queued (the issue's case)."""
            enqueue_times, beat_times = [], []
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                def body(n: int) -> dict:
                    m = large_message(n)
                    return {"channel_id": m.channel_id, "author_id": m.author_id, "content": m.content,
                            "message_id": m.message_id, "event": dict(m.event)}
                for n in range(100):
                    await _post(http, f"{base}/v1/queue", body(n))
                for n in range(100, 100 + args.calls // 3):
                    enqueue_times.append(await atimed(lambda: _post(http, f"{base}/v1/queue", body(n))))
                    beat_times.append(await atimed(lambda: _post(http, f"{base}/v1/sessions/{session_id}/heartbeat")))
            return {"queued_messages": 100, "enqueue": summary(enqueue_times), "heartbeat": summary(beat_times)}

        result["large_queue_http_v2"] = asyncio.run(large_queue_http())
        ray.get(handle.end_session.remote(session_id))
    finally:
        serve.delete("controller-bench")
        shutdown_controller(name)
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)

    result["ratio_http_over_handle_check_p50"] = round(
        result["http"]["check"]["p50_ms"] / result["handle"]["check"]["p50_ms"], 2
    )
    print(json.dumps(result))


async def _get(http, url: str) -> None:
    async with http.get(url) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status}")


async def _post(http, url: str, body: dict | None = None) -> None:
    async with http.post(url, json=body) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST {url}: {resp.status}")


if __name__ == "__main__":
    main()
