"""Benchmark the focus cycle's three stages gathered in parallel against one after another.

Heart Flow's focus cycle runs action modification (LLM judges), memory activation and the processors
(the think step) before planning. With simulated LLM latencies of 500 ms (judges), 800 ms (memory
activation) and 1000 ms (think) the seed claims 2.3x for running them in parallel. This drives the
real `Brain` (real SQLite memory with its FTS5 index, real activation and judges) through focused
cycles with `parallel_stages` on and off, alternating run by run so both see the same machine load,
and times each cycle's wall clock. The latencies are real `asyncio.sleep`s inside the injected LLM
and around the memory search. It also reports the real (undelayed) FTS5 memory-activation latency at
`--memory-messages` stored messages. JSON on the last line.

    .venv/bin/python benchmarks/heartflow_parallel.py [--cycles 3] [--judge-ms 500] [--memory-ms 800] [--think-ms 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from graph.brain import Brain, BrainConfig  # noqa: E402
from graph.brain.daylog import DAY_START, ReplayClock  # noqa: E402
from graph.brain.heartflow import ChatState  # noqa: E402
from graph.brain.judge import JUDGE_SYSTEM  # noqa: E402
from graph.brain.memory import MemoryStore, StoredMessage  # noqa: E402

TOPICS = ["piano", "concert", "leek", "karaoke", "guitar", "melody", "producer", "dance", "ramen", "album"]


class SlowLLM:
    """Injected `complete`: each kind of call takes its simulated latency."""

    def __init__(self, judge_s: float, think_s: float, plan_s: float):
        self.judge_s, self.think_s, self.plan_s = judge_s, think_s, plan_s

    async def __call__(self, prompt: str, system: str | None, options=None) -> str:
        if system == JUDGE_SYSTEM:
            await asyncio.sleep(self.judge_s)
            return "no"
        if "Answer with JSON only" in prompt:
            await asyncio.sleep(self.plan_s)
            return '{"action": "no_reply", "reason": "benchmark"}'
        await asyncio.sleep(self.think_s)
        return "They are talking about music."


async def cycle_times(parallel: bool, cycles: int, args: argparse.Namespace, run: int) -> list[float]:
    clock = ReplayClock(DAY_START + run * 86400)
    base = BrainConfig.load(REPO / "configs" / "brain.yaml")
    config = dataclasses.replace(base, memory_path=":memory:", parallel_stages=parallel)
    llm = SlowLLM(args.judge_ms / 1000, args.think_ms / 1000, args.plan_ms / 1000)
    brain = await Brain.create(config, complete=llm, clock=clock, rng=random.Random(run))
    search = brain.memory.relevant

    async def slow_search(*a, **kw):
        await asyncio.sleep(args.memory_ms / 1000)
        return await search(*a, **kw)

    brain.memory.relevant = slow_search  # the simulated memory-activation latency
    # earlier talk for memory activation to find
    await brain.memory.add_many(
        StoredMessage(f"old-{i}", "g", "c", f"u{i % 5}", "Ann", False, i % 7 == 0, f"the {TOPICS[i % len(TOPICS)]} thing", clock.now - 3600 * 24 + i)
        for i in range(200))
    times = []
    try:
        sub = brain.heartflow.subflow("c", clock.now)
        for i in range(cycles):
            clock.now += 120
            sub.state, sub.consecutive_no_reply = ChatState.FOCUSED, 0
            event = {"type": "message", "event_id": f"e{run}-{i}", "guild_id": "g", "channel_id": "c",
                     "message_id": f"m{run}-{i}", "author_id": "u1", "author_name": "Ann",
                     "content": f"what do you think about the {TOPICS[i % len(TOPICS)]} from yesterday? #{i}",
                     "timestamp": clock.now}
            started = time.perf_counter()
            await brain.handle_event(event)
            times.append(time.perf_counter() - started)
        assert brain.stats["focus_cycles"] == cycles, brain.stats
    finally:
        await brain.close()
    return times


async def fts_latency(messages: int, queries: int = 200) -> dict:
    store = await MemoryStore.open(":memory:")
    rng = random.Random(1)
    words = TOPICS + ["song", "stage", "night", "morning", "coffee", "game", "boss", "patch", "rain", "weekend"]
    await store.add_many(
        StoredMessage(f"m{i}", "g", f"c{i % 20}", f"u{i % 300}", "U", False, False,
                      " ".join(rng.choice(words) for _ in range(6)), 1_700_000_000 + i)
        for i in range(messages))
    samples = []
    for q in range(queries):
        text = f"anyone at the {rng.choice(words)} {rng.choice(words)} yesterday?"
        started = time.perf_counter()
        await store.relevant(f"c{q % 20}", [text], now=1_700_000_000 + messages, days=3650, limit=3)
        samples.append((time.perf_counter() - started) * 1000)
    await store.close()
    samples.sort()
    return {"messages": messages, "p50_ms": round(statistics.median(samples), 3), "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 3)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=3, help="focus cycles per run")
    parser.add_argument("--runs", type=int, default=2, help="runs per mode, alternating")
    parser.add_argument("--judge-ms", type=float, default=500)
    parser.add_argument("--memory-ms", type=float, default=800)
    parser.add_argument("--think-ms", type=float, default=1000)
    parser.add_argument("--plan-ms", type=float, default=0, help="the planner call after the stages (not parallel)")
    parser.add_argument("--memory-messages", type=int, default=100_000)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"parallel": [], "serial": []}
    for run in range(args.runs):
        for mode in ("serial", "parallel") if run % 2 else ("parallel", "serial"):
            times[mode] += await cycle_times(mode == "parallel", args.cycles, args, run)
            print(mode, [round(t, 3) for t in times[mode][-args.cycles:]], flush=True)
    parallel_s, serial_s = statistics.median(times["parallel"]), statistics.median(times["serial"])
    fts = await fts_latency(args.memory_messages)
    print("fts", fts, flush=True)
    print(json.dumps({
        "benchmark": "heartflow_parallel",
        "stage_ms": {"action_modification": args.judge_ms, "memory_activation": args.memory_ms,
                     "processors": args.think_ms, "plan": args.plan_ms},
        "cycles_per_mode": len(times["parallel"]),
        "cycle_s_parallel_p50": round(parallel_s, 3),
        "cycle_s_serial_p50": round(serial_s, 3),
        "speedup": round(serial_s / parallel_s, 2),
        "seed_claim": 2.3,
        "memory_activation_fts5": fts,
    }))


if __name__ == "__main__":
    asyncio.run(main())
