"""Benchmark of the autonomous engine V2: throughput and memory at 10,000 servers, and a simulated week.

1. Scale: 10,000 servers with a realistic spread of activity (most quiet, some busy); measures event
   ingestion, then per-server evaluations per second in steady state: ticks 30 s apart, each after the
   messages that arrive in those 30 s at every server's own rate, with the evaluation cache and, side by
   side on the same events and seed, with `full_evaluation=True` (every rule for every server); then
   memory per tracked server with tracemalloc in a separate pass (tracemalloc slows everything down).
   The targets (>= 100,000 evaluations/s, < 2,048 bytes per server) are printed beside the figures.
2. Week: one simulated week of a server's life (conversations that follow the time of day, games
   started, members coming online and joining, people answering her), replayed once per mood with the
   same world, counting how often each action fires and how long after a conversation starts she joins.
   Writes the table into docs/autonomous.md and, with matplotlib (the `bench` extra), docs/autonomous-week.png.

Prints JSON as its last line. Run: `.venv/bin/python benchmarks/autonomous_engine.py [--quick]`.
"""
from __future__ import annotations

import argparse
import gc
import heapq
import json
import math
import random
import re
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graph.autonomous import (  # noqa: E402
    ActionKind,
    AutonomousEngine,
    MemberJoinEvent,
    MessageEvent,
    MoodEvent,
    PresenceEvent,
    PresenceKind,
    load_autonomous_config,
    server_settings,
)
from graph.brain.mood_profiles import KNOWN_MOODS, load_moods  # noqa: E402

DOC = ROOT / "docs" / "autonomous.md"
PLOT = ROOT / "docs" / "autonomous-week.png"
T0 = datetime(2024, 6, 3, 0, 0, tzinfo=timezone.utc).timestamp()  # a Monday, 00:00 UTC
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney")
MIKU = 39


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ---- 1. scale --------------------------------------------------------------------------------


def _level(rng: random.Random) -> tuple[int, bool]:
    """A server's messages per hour: 60% quiet (0-3), 30% moderate (10-30), 10% lively (40-80)."""
    level = rng.random()
    count = rng.randint(0, 3) if level < 0.6 else rng.randint(10, 30) if level < 0.9 else rng.randint(40, 80)
    return count, level >= 0.9


def _server_events(rng: random.Random, guild: int, start: float, now: float, count: int, lively: bool):
    """One server's last hour (lively servers have half of theirs in the last 5 minutes), plus some
    presence changes and mood events."""
    channels = (guild * 10 + 1, guild * 10 + 2)
    times = sorted(
        (now - rng.uniform(0, 300) if lively and i % 2 else rng.uniform(start, now)) for i in range(count)
    )
    for i, ts in enumerate(times):
        yield MessageEvent(f"m{guild}-{i}", guild, channels[i % 3 == 0], 1000 + rng.randint(0, 5), ts)
    if rng.random() < 0.2:
        yield PresenceEvent(f"p{guild}", guild, 2000 + guild, now - rng.uniform(0, 600),
                            PresenceKind.ACTIVITY_STARTED, activity_name="Minecraft", activity_type="playing")
    if rng.random() < 0.3:
        yield MoodEvent(f"mood{guild}", guild, rng.choice(KNOWN_MOODS), now)


def _traffic(servers: int, seed: int, t_end: float, ticks: int, tick_s: float):
    """The last hour of every server, then what arrives during each tick period at each server's rate."""
    rng = random.Random(seed)
    levels = [_level(rng) for _ in range(servers)]
    history = [e for g, (count, lively) in enumerate(levels, 1)
               for e in _server_events(rng, g, t_end - 3600, t_end, count, lively)]
    periods = []
    for k in range(ticks):
        start = t_end + k * tick_s
        batch = []
        for g, (count, _) in enumerate(levels, 1):
            t = start + rng.expovariate(count / 3600) if count else math.inf
            while t < start + tick_s:
                batch.append(MessageEvent(f"t{k}-{g}-{len(batch)}", g, g * 10 + 1 + (len(batch) % 3 == 0),
                                          1000 + rng.randint(0, 5), t))
                t += rng.expovariate(count / 3600)
        batch.sort(key=lambda e: e.timestamp)
        periods.append(batch)
    return history, periods


def _build(servers: int, seed: int, config, moods, *, full: bool = False, history=None):
    """An engine tracking `servers` servers fed with their last hour; also returns events and ingest time."""
    clock = Clock(T0)
    engine = AutonomousEngine(config, moods, clock=clock, rng=random.Random(seed), full_evaluation=full)
    for guild in range(1, servers + 1):
        engine.configure_server(server_settings({
            "guild_id": guild, "allowed_channels": [guild * 10 + 1, guild * 10 + 2],
            "timezone": ZONES[guild % len(ZONES)],
        }))
    clock.t = T0 + 3600 + 12 * 3600  # past the cooldown; midday UTC
    if history is None:
        history, _ = _traffic(servers, seed, clock.t, 0, 30.0)
    start = time.perf_counter()
    for event in history:
        engine.on_event(event)
    return engine, clock, len(history), time.perf_counter() - start


def _steady_ticks(engine, clock, periods, tick_s: float) -> tuple[list[float], int, float, int]:
    """Feed each period's events, then tick; returns tick times, decisions, the cold first tick's time
    and the number of events fed."""
    t = time.perf_counter()
    fired = len(engine.tick())  # cold: every server is evaluated in full
    cold = time.perf_counter() - t
    times, fed = [], 0
    for batch in periods:
        for event in batch:
            clock.t = event.timestamp
            engine.on_event(event)
        fed += len(batch)
        clock.t = clock.t - (clock.t - T0) % tick_s + tick_s if batch else clock.t + tick_s
        t = time.perf_counter()
        fired += len(engine.tick())
        times.append(time.perf_counter() - t)
    return times, fired, cold, fed


TARGETS = {"evaluations_per_s": 100_000, "bytes_per_server": 2048}


def bench_scale(servers: int, ticks: int, seed: int = 7, tick_s: float = 30.0) -> dict:
    config, moods = load_autonomous_config(), load_moods()
    t_end = T0 + 3600 + 12 * 3600
    history, periods = _traffic(servers, seed, t_end, ticks, tick_s)
    results = {}
    for name, full in (("shortcut", False), ("full", True)):  # side by side, same events and seed
        gc.collect()
        engine, clock, n_events, ingest_s = _build(servers, seed, config, moods, full=full, history=history)
        times, fired, cold, fed = _steady_ticks(engine, clock, periods, tick_s)
        median_tick = statistics.median(times)
        results[name] = {"median_tick_s": median_tick, "fired": fired, "cold_s": cold, "ingest_s": ingest_s,
                         "events": n_events, "fed": fed}
        del engine
    gc.collect()

    # Memory: everything the engine holds (server settings, per-channel trackers, pending signals,
    # and the bot-wide event-id dedupe window).
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    engine, clock, _, _ = _build(servers, seed, config, moods, history=history)
    for _ in range(2):  # ticks prune the recent windows
        clock.t += 30
        engine.tick()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    fast, full = results["shortcut"], results["full"]
    return {
        "servers": servers,
        "events": fast["events"],
        "events_per_s": round(fast["events"] / fast["ingest_s"]) if fast["ingest_s"] > 0 else None,
        "evaluations_per_s": round(servers / fast["median_tick_s"]),
        "tick_ms_median": round(fast["median_tick_s"] * 1000, 1),
        "full_evaluations_per_s": round(servers / full["median_tick_s"]),
        "full_tick_ms_median": round(full["median_tick_s"] * 1000, 1),
        "cold_tick_ms": round(fast["cold_s"] * 1000, 1),
        "speedup": round(full["median_tick_s"] / fast["median_tick_s"], 1),
        "events_between_ticks": round(fast["fed"] / max(1, ticks)),
        "same_decisions": fast["fired"] == full["fired"],
        "actions_fired_in_ticks": fast["fired"],
        "ticks": ticks,
        "tick_s": tick_s,
        "bytes_per_server": round(used / servers),
        "dedupe_window": config.dedupe_window,
        "targets": TARGETS,
        "meets_targets": (servers / fast["median_tick_s"] >= TARGETS["evaluations_per_s"]
                          and used / servers < TARGETS["bytes_per_server"]),
    }


# ---- 2. a simulated week ---------------------------------------------------------------------

CHAT, GAMES = 11, 12
HOURLY_CONVERSATIONS = [0.1, 0.05, 0.03, 0.02, 0.02, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3,
                        0.35, 0.3, 0.3, 0.35, 0.45, 0.55, 0.7, 0.8, 0.8, 0.7, 0.45, 0.25]


@dataclass(order=True)
class _Scheduled:
    at: float
    seq: int
    kind: str
    payload: tuple


def _world(seed: int, days: int) -> tuple[list[_Scheduled], list[tuple[float, int]]]:
    """The humans' week: conversations by time of day, stray messages, games, arrivals, joins."""
    rng = random.Random(seed)
    out: list[_Scheduled] = []
    starts: list[tuple[float, int]] = []
    seq = 0

    def add(at: float, kind: str, *payload) -> None:
        nonlocal seq
        seq += 1
        out.append(_Scheduled(at, seq, kind, payload))

    for hour in range(days * 24):
        base = T0 + hour * 3600
        local_hour, weekend = hour % 24, (hour // 24) % 7 >= 5
        scale = 1.5 if weekend else 1.0
        if rng.random() < HOURLY_CONVERSATIONS[local_hour] * scale:
            start = base + rng.uniform(0, 3600)
            channel = CHAT if rng.random() < 0.7 else GAMES
            starts.append((start, channel))
            speakers = rng.sample(range(1, 30), rng.randint(2, 5))
            t = start
            for _ in range(rng.randint(15, 90)):
                t += rng.expovariate(1 / 25)
                add(t, "msg", channel, rng.choice(speakers))
        for _ in range(rng.choices((0, 1, 2), (0.5, 0.35, 0.15))[0] if 8 <= local_hour < 24 else 0):
            add(base + rng.uniform(0, 3600), "msg", CHAT, rng.randint(1, 30))
        if 9 <= local_hour < 24 and rng.random() < 0.25:
            add(base + rng.uniform(0, 3600), "game", rng.randint(1, 30),
                rng.choice(("Minecraft", "Genshin Impact", "osu!", "Project DIVA", "Stardew Valley")))
        if 8 <= local_hour < 24 and rng.random() < 0.3:
            add(base + rng.uniform(0, 3600), "online", rng.randint(1, 30))
        if rng.random() < 1 / 24:
            add(base + rng.uniform(0, 3600), "join", 100 + hour)
    out.sort()
    return out, starts


def simulate_week(mood: str, seed: int, days: int, tick_s: float, config, moods) -> dict:
    world, starts = _world(seed, days)
    clock = Clock(T0 - 600)  # started ten minutes before the week begins: past the cooldown
    engine = AutonomousEngine(config, moods, clock=clock, rng=random.Random(seed * 1000 + 1))
    engine.configure_server(server_settings({"guild_id": 1, "allowed_channels": [CHAT, GAMES],
                                             "home_channel_id": CHAT}))
    engine.on_event(MoodEvent("mood", 1, mood, clock.t))
    reply_rng = random.Random(seed * 1000 + 2)
    queue = list(world)
    heapq.heapify(queue)
    seq = len(world) + 1
    counts = {kind.value: 0 for kind in ActionKind}
    joins: list[tuple[float, int]] = []
    n = 0
    end = T0 + days * 86400
    next_tick = T0
    while next_tick < end:
        while queue and queue[0].at <= next_tick:
            item = heapq.heappop(queue)
            clock.t = item.at
            n += 1
            if item.kind == "msg":
                engine.on_event(MessageEvent(f"e{n}", 1, item.payload[0], item.payload[1], item.at,
                                             is_miku=item.payload[1] == MIKU, author_is_bot=item.payload[1] == MIKU))
            elif item.kind == "game":
                engine.on_event(PresenceEvent(f"e{n}", 1, item.payload[0], item.at, PresenceKind.ACTIVITY_STARTED,
                                              activity_name=item.payload[1], activity_type="playing"))
            elif item.kind == "online":
                engine.on_event(PresenceEvent(f"e{n}", 1, item.payload[0], item.at, PresenceKind.CAME_ONLINE))
            else:
                engine.on_event(MemberJoinEvent(f"e{n}", 1, item.payload[0], item.at))
        clock.t = next_tick
        for decision in engine.tick():
            counts[decision.action.value] += 1
            if decision.action is ActionKind.JOIN_CONVERSATION:
                joins.append((decision.decided_at, decision.channel_id))
            # She posts; sometimes people answer (a silence break may restart the chat).
            for item in _her_message_and_replies(decision, reply_rng):
                seq += 1
                heapq.heappush(queue, _Scheduled(item[0], seq, "msg", item[1:]))
        next_tick += tick_s
    return {"counts": counts, **_first_joins(starts, joins)}


def _first_joins(starts: list[tuple[float, int]], joins: list[tuple[float, int]]) -> dict:
    """Per human-started conversation: did she join before the next one began there, and how late."""
    delays, conversations = [], 0
    for i, (start, channel) in enumerate(sorted(starts)):
        later = [s for s, ch in sorted(starts)[i + 1:] if ch == channel]
        until = min(later[0] if later else start + 7200, start + 7200)
        conversations += 1
        first = min((t for t, ch in joins if ch == channel and start <= t < until), default=None)
        if first is not None:
            delays.append((first - start) / 60)
    return {"join_delays": delays, "conversations": conversations}


def _her_message_and_replies(decision, rng: random.Random) -> list[tuple[float, int, int]]:
    at, channel = decision.decided_at + rng.uniform(2, 8), decision.channel_id
    items = [(at, channel, MIKU)]
    answered = 0.7 if decision.action in (ActionKind.ENGAGE_USER, ActionKind.JOIN_CONVERSATION) else 0.5
    if rng.random() < answered:
        for _ in range(rng.randint(1, 4)):
            at += rng.uniform(20, 120)
            items.append((at, channel, rng.randint(1, 30)))
    return items


def bench_week(days: int, worlds: int, tick_s: float) -> dict:
    config, moods = load_autonomous_config(), load_moods()
    result = {}
    for mood in KNOWN_MOODS:
        totals = {kind.value: 0 for kind in ActionKind}
        delays: list[float] = []
        conversations = 0
        for seed in range(1, worlds + 1):
            week = simulate_week(mood, seed, days, tick_s, config, moods)
            for kind, count in week["counts"].items():
                totals[kind] += count
            delays += week["join_delays"]
            conversations += week["conversations"]
        per_week = {k: round(v / worlds * 7 / days, 1) for k, v in totals.items()}
        per_week["total"] = round(sum(per_week.values()), 1)
        per_week["conversations_joined_pct"] = round(100 * len(delays) / conversations) if conversations else None
        per_week["first_join_delay_min_median"] = round(statistics.median(delays), 1) if delays else None
        result[mood] = per_week
    return result


def week_table(week: dict) -> str:
    kinds = [k.value for k in ActionKind]
    lines = [
        "| mood | " + " | ".join(kinds) + " | total | conversations joined | first join after (median min) |",
        "|---|" + "---:|" * (len(kinds) + 3),
    ]
    for mood, row in week.items():
        delay = "-" if row["first_join_delay_min_median"] is None else f"{row['first_join_delay_min_median']:.1f}"
        joined = "-" if row["conversations_joined_pct"] is None else f"{row['conversations_joined_pct']}%"
        lines.append(f"| {mood} | " + " | ".join(f"{row[k]:.1f}" for k in kinds)
                     + f" | {row['total']:.1f} | {joined} | {delay} |")
    return "\n".join(lines)


def scale_table(scale: dict) -> str:
    rows = [
        ("tracked servers", f"{scale['servers']:,}"),
        ("events ingested (last hour of every server)", f"{scale['events']:,}"),
        ("event ingestion", f"{scale['events_per_s']:,} events/s"),
        ("server evaluations per second, steady state (target >= 100,000)", f"{scale['evaluations_per_s']:,}"),
        ("one tick over all servers (median)", f"{scale['tick_ms_median']} ms"),
        ("same, every server fully evaluated on every tick (`full_evaluation=True`)",
         f"{scale['full_evaluations_per_s']:,}/s ({scale['full_tick_ms_median']} ms)"),
        ("first (cold) tick, every server evaluated in full", f"{scale['cold_tick_ms']} ms"),
        ("memory per tracked server (tracemalloc, incl. settings and dedupe window; target < 2,048)",
         f"{scale['bytes_per_server']:,} bytes"),
    ]
    return "| measure | value |\n|---|---:|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def write_doc_section(marker: str, body: str) -> bool:
    """Replace the text between `<!-- marker:start -->` and `<!-- marker:end -->` in docs/autonomous.md."""
    if not DOC.exists():
        return False
    text = DOC.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(\n<!-- {marker}:end -->)", re.S)
    if not pattern.search(text):
        return False
    DOC.write_text(pattern.sub(lambda m: m.group(1) + body + m.group(2), text), encoding="utf-8")
    return True


def plot_week(week: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (bench extra): skipping the plot", file=sys.stderr)
        return False
    moods = list(week)
    kinds = [k.value for k in ActionKind]
    fig, (ax, delay_ax) = plt.subplots(2, 1, figsize=(11, 8), height_ratios=(3, 1.3), sharex=True)
    bottom = [0.0] * len(moods)
    for kind in kinds:
        values = [week[m][kind] for m in moods]
        ax.bar(moods, values, bottom=bottom, label=kind.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("actions per simulated week")
    ax.set_title("Autonomous engine V2: how often each action fires, per mood (same simulated week)")
    ax.legend()
    delays = [week[m]["first_join_delay_min_median"] or 0.0 for m in moods]
    delay_ax.bar(moods, delays, color="tab:gray")
    delay_ax.set_ylabel("first join after\n(median minutes)")
    plt.setp(delay_ax.get_xticklabels(), rotation=35, ha="right")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--worlds", type=int, default=2, help="simulated servers (worlds) per mood")
    parser.add_argument("--tick-s", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (no doc update)")
    args = parser.parse_args()
    if args.quick:
        args.servers, args.ticks, args.days, args.worlds = 1000, 4, 2, 1

    started = time.perf_counter()
    scale = bench_scale(args.servers, args.ticks)
    print(f"scale: {scale}", file=sys.stderr)
    week = bench_week(args.days, args.worlds, args.tick_s)
    table = week_table(week)
    print(table, file=sys.stderr)
    wrote_doc = wrote_plot = False
    if not args.quick:
        note = (f"_{args.worlds} simulated servers per mood, {args.days} days, ticks every {args.tick_s:.0f} s; "
                f"counts are per server-week. Generated by `benchmarks/autonomous_engine.py`._")
        machine = (f"_Measured on a shared 2-core box (other jobs running); {args.ticks} ticks, 30 s apart, each "
                   f"after the messages of its 30 s (about {scale['events_between_ticks']:,} per tick)._")
        wrote_doc = write_doc_section("week-table", note + "\n\n" + table)
        wrote_doc = write_doc_section("bench-results", machine + "\n\n" + scale_table(scale)) and wrote_doc
        wrote_plot = plot_week(week)
    print(json.dumps({
        "benchmark": "autonomous_engine",
        "scale": scale,
        "week_per_mood": week,
        "week_setup": {"days": args.days, "worlds_per_mood": args.worlds, "tick_s": args.tick_s},
        "wrote_doc_table": wrote_doc,
        "wrote_plot": wrote_plot,
        "runtime_s": round(time.perf_counter() - started, 1),
    }, separators=(",", ":")))


if __name__ == "__main__":
    main()
