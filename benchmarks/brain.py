"""Benchmark the brain: event throughput, parallel vs serial LLM judges, judge-cache hit rate on a
replayed day, and memory query latency at one million stored messages. JSON on the last line.

    .venv/bin/python benchmarks/brain.py [--messages 1000000] [--runs 3]
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from graph.brain import Brain, BrainConfig  # noqa: E402
from graph.brain.daylog import (  # noqa: E402
    ALLOWED_BOT_ID,
    DAY_START,
    DeterministicLLM,
    ReplayClock,
    VoiceSessionBlackouts,
    generate_day,
    replay,
)
from graph.brain.judge import JudgeCache, JudgeRequest, LLMJudge  # noqa: E402
from graph.brain.memory import MemoryStore, StoredMessage  # noqa: E402


def brain_config(memory_path: str) -> BrainConfig:
    base = BrainConfig.load(REPO / "configs" / "brain.yaml")
    return dataclasses.replace(base, memory_path=memory_path, bot_allow_list=(ALLOWED_BOT_ID,))


async def events_per_second(runs: int, workdir: Path) -> dict:
    """The replayed day through a brain with no LLM (replies carry prompts), memory on disk."""
    day = generate_day(7)
    rates = []
    for run in range(runs):
        clock = ReplayClock()
        brain = await Brain.create(brain_config(str(workdir / f"events-{run}.sqlite3")), complete=None,
                                   check_feature=VoiceSessionBlackouts(clock, day.voice_session), clock=clock, rng=random.Random(run))
        start = time.perf_counter()
        records = await replay(brain, day, clock)
        elapsed = time.perf_counter() - start
        assert brain.stats["llm_calls"] == 0
        await brain.close()
        rates.append(len(records) / elapsed)
    return {"events": len(day.deliveries), "events_per_s_median": round(statistics.median(rates), 1), "runs": [round(r, 1) for r in rates]}


async def judge_wall_time(repeats: int = 5, judges: int = 5, delay_s: float = 0.1) -> dict:
    async def slow_llm(prompt: str, system: str | None, options=None) -> str:
        await asyncio.sleep(delay_s)
        return "yes"

    parallel, serial = [], []
    for r in range(repeats):
        requests = [JudgeRequest(f"a{i}", {"name": f"a{i}", "run": r}, "q") for i in range(judges)]
        judge = LLMJudge(slow_llm, JudgeCache(), timeout_s=5.0)
        start = time.perf_counter()
        await judge.judge_many(requests, "context")
        parallel.append(time.perf_counter() - start)
        judge = LLMJudge(slow_llm, JudgeCache(), timeout_s=5.0)
        start = time.perf_counter()
        for request in requests:
            await judge.judge_many([request], "context")
        serial.append(time.perf_counter() - start)
    p, s = statistics.median(parallel), statistics.median(serial)
    return {"judges": judges, "judge_latency_ms": delay_s * 1000, "parallel_ms_median": round(p * 1000, 1),
            "serial_ms_median": round(s * 1000, 1), "speedup": round(s / p, 2)}


async def cache_hit_rate(workdir: Path) -> dict:
    """Judge-cache hits on the replayed day with a deterministic (instant) LLM."""
    day = generate_day(7)
    clock = ReplayClock()
    llm = DeterministicLLM()
    brain = await Brain.create(brain_config(str(workdir / "cache.sqlite3")), complete=llm,
                               check_feature=VoiceSessionBlackouts(clock, day.voice_session), clock=clock, rng=random.Random(3))
    await replay(brain, day, clock)
    cache = brain.judge_cache
    result = {"lookups": cache.hits + cache.misses, "hits": cache.hits, "hit_rate": round(cache.hit_rate, 4),
              "judge_llm_calls": llm.calls["judge"], "focus_cycles": brain.stats["focus_cycles"],
              # judges the layered pre-filter skipped (keyword hit, keyword intent, description, short message)
              "judge_calls_saved": brain.modifier.judge_calls_saved, "saved_by_reason": dict(brain.modifier.saved)}
    await brain.close()
    return result


async def memory_latency(total: int, workdir: Path, queries: int = 300) -> dict:
    path = workdir / "memory-1m.sqlite3"
    store = await MemoryStore.open(path)
    rng = random.Random(1)
    channels = [f"chan-{i}" for i in range(200)]
    users = [f"user-{i}" for i in range(5000)]
    span = 30 * 86400.0
    now = DAY_START + span
    start = time.perf_counter()
    batch = 100_000
    for offset in range(0, total, batch):
        rows = [
            StoredMessage(f"m{i}", "guild", channels[int(rng.random() ** 2 * len(channels))], users[rng.randrange(len(users))], "name", False, False,
                          "some chat message text of ordinary length", DAY_START + span * (i / total), 0.1)
            for i in range(offset, min(total, offset + batch))
        ]
        await store.add_many(rows)
    build_s = time.perf_counter() - start

    async def timed(fn) -> list[float]:
        out = []
        for _ in range(queries):
            t = time.perf_counter()
            await fn()
            out.append((time.perf_counter() - t) * 1000)
        return out

    def p95(values: list[float]) -> float:
        return statistics.quantiles(values, n=20)[-1]

    channel_ms = await timed(lambda: store.channel_context(rng.choice(channels), now=now, hours=6, limit=12))
    user_ms = await timed(lambda: store.user_context(rng.choice(users), now=now, days=7, limit=12))
    start = time.perf_counter()
    pruned = await store.prune(now, 29 * 86400.0)
    prune_s = time.perf_counter() - start
    count = await store.count()
    await store.close()
    return {"messages": total, "build_s": round(build_s, 1), "channel_context_ms_p50": round(statistics.median(channel_ms), 3),
            "channel_context_ms_p95": round(p95(channel_ms), 3), "user_context_ms_p50": round(statistics.median(user_ms), 3),
            "user_context_ms_p95": round(p95(user_ms), 3), "retention_pruned": pruned, "retention_s": round(prune_s, 2), "remaining": count}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="brain-bench-") as tmp:
        workdir = Path(tmp)
        results = {}
        results["throughput"] = await events_per_second(args.runs, workdir)
        print("throughput", results["throughput"], flush=True)
        results["judges"] = await judge_wall_time()
        print("judges", results["judges"], flush=True)
        results["judge_cache"] = await cache_hit_rate(workdir)
        print("judge_cache", results["judge_cache"], flush=True)
        results["memory"] = await memory_latency(args.messages, workdir)
        print("memory", results["memory"], flush=True)
    print(json.dumps({"benchmark": "brain", **results}))


if __name__ == "__main__":
    asyncio.run(main())
