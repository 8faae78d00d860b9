"""Autonomous engine at scale: the evaluation shortcut changes no decision, the compact state stays small.

`AutonomousEngine.tick` skips the rules for a server whose last evaluation still holds
(`rules.stable_for`); these tests replay random multi-server scenarios on two engines with the same
seed, one with the shortcut and one evaluating every server fully on every tick, and require identical
decisions (including every roll in the debug record). They also check the bounded event-id table
against a plain reference model, and the memory per tracked server against the 2 KB budget.
"""
from __future__ import annotations

import gc
import random
import tracemalloc
from collections import deque
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph.autonomous import (
    AutonomousEngine,
    MemberJoinEvent,
    MessageEvent,
    MoodEvent,
    PresenceEvent,
    PresenceKind,
    load_autonomous_config,
    parse_autonomous_config,
    server_settings,
)
from graph.autonomous.engine import _SeenIds
from graph.autonomous.state import ChannelActivity
from graph.brain.mood_profiles import KNOWN_MOODS, load_moods

T0 = datetime(2024, 6, 5, 21, 30, tzinfo=timezone.utc).timestamp()  # evening in Europe, night in Asia
MOODS = load_moods()
BASE = load_autonomous_config()
ZONES = ("UTC", "Europe/Berlin", "Asia/Tokyo", "America/New_York", "Asia/Kolkata")
GUILDS = (1, 2, 3)


def _fast_config():
    """The shipped thresholds, scaled down so that every action fires within a short scenario."""
    data = BASE.model_dump(mode="json")
    data["startup_cooldown_s"] = 60
    data["min_action_interval_s"] = 120
    a = data["actions"]
    a["join_conversation"].update(min_gap_s=60, rate_per_min=0.5)
    a["engage_user"].update(min_quiet_s=120, max_activity_age_s=600, repeat_cooldown_s=900)
    a["fomo"].update(min_messages_since_miku=8, min_gap_s=120)
    a["break_silence"].update(min_quiet_s=600, rate_per_min=0.5)
    a["share_something"].update(min_gap_s=600, rate_per_min=0.5, max_messages_1h=4)
    return parse_autonomous_config(data)


FAST = _fast_config()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _engine(config, seed: int, full: bool) -> tuple[AutonomousEngine, Clock]:
    clock = Clock(T0)
    engine = AutonomousEngine(config, MOODS, clock=clock, rng=random.Random(seed), full_evaluation=full)
    for guild in GUILDS:
        engine.configure_server(server_settings({
            "guild_id": guild, "allowed_channels": [guild * 10 + 1, guild * 10 + 2],
            "timezone": ZONES[guild % len(ZONES)],
        }))
    return engine, clock


_step = st.tuples(
    st.sampled_from(["msg", "msg", "msg", "msg", "burst", "wait", "wait", "long_wait", "presence", "online",
                     "join", "mood", "miku", "decide"]),
    st.sampled_from(GUILDS),
    st.integers(0, 2),  # channel (2: not allowed)
    st.integers(1, 6),  # author / user
    st.floats(1.0, 120.0),  # seconds
    st.sampled_from(KNOWN_MOODS),
)


def _replay(config, steps, seed: int, tick_every: float, full: bool) -> list[dict]:
    engine, clock = _engine(config, seed, full)
    out: list[dict] = []
    next_tick = clock.t + tick_every
    n = 0

    def advance(seconds: float) -> None:
        nonlocal next_tick
        end = clock.t + seconds
        while next_tick <= end:
            clock.t = next_tick
            next_tick += tick_every
            out.extend(d.to_dict() for d in engine.tick())
        clock.t = end

    for kind, guild, channel_index, who, seconds, mood in steps:
        n += 1
        channel = guild * 10 + 1 + channel_index
        if kind == "msg":
            advance(seconds)
            engine.on_event(MessageEvent(f"e{n}", guild, channel, who, clock.t))
        elif kind == "burst":
            for i in range(12):
                advance(seconds / 12)
                engine.on_event(MessageEvent(f"e{n}-{i}", guild, channel, 1 + (who + i) % 4, clock.t))
        elif kind == "wait":
            advance(seconds * 5)
        elif kind == "long_wait":
            advance(seconds * 60)
        elif kind in ("presence", "online"):
            engine.on_event(PresenceEvent(
                f"e{n}", guild, who, clock.t,
                PresenceKind.ACTIVITY_STARTED if kind == "presence" else PresenceKind.CAME_ONLINE,
                activity_name="Tetris" if kind == "presence" else None))
        elif kind == "join":
            engine.on_event(MemberJoinEvent(f"e{n}", guild, 100 + who, clock.t))
        elif kind == "mood":
            engine.on_event(MoodEvent(f"e{n}", guild, mood, clock.t))
        elif kind == "miku":
            engine.on_event(MessageEvent(f"e{n}", guild, channel, 39, clock.t, author_is_bot=True, is_miku=True))
        else:
            decision = engine.decide(guild)
            if decision is not None:
                out.append(decision.to_dict())
    advance(3 * 3600)
    return out


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, min_size=1, max_size=40), seed=st.integers(0, 2**16),
       tick_every=st.sampled_from([10.0, 30.0, 60.0, 150.0]))
def test_property_the_evaluation_shortcut_changes_no_decision(steps, seed, tick_every):
    fast = _replay(FAST, steps, seed, tick_every, full=False)
    full = _replay(FAST, steps, seed, tick_every, full=True)
    assert fast == full


def test_the_shortcut_matches_full_evaluation_over_a_long_busy_replay():
    rng = random.Random(3)
    steps = [(rng.choice(["msg"] * 6 + ["burst", "wait", "long_wait", "presence", "online", "join", "mood", "miku"]),
              rng.choice(GUILDS), rng.randint(0, 2), rng.randint(1, 6), rng.uniform(1, 120), rng.choice(KNOWN_MOODS))
             for _ in range(400)]
    fast = _replay(FAST, steps, 11, 30.0, full=False)
    full = _replay(FAST, steps, 11, 30.0, full=True)
    assert len({d["action"] for d in full}) >= 4, "the replay exercises most actions"
    assert fast == full


def test_seen_ids_forget_the_oldest_and_match_a_reference_model():
    seen = _SeenIds(64)
    order: deque[str] = deque()
    known: set[str] = set()
    rng = random.Random(5)
    for _ in range(20_000):
        event_id = f"message:{rng.randint(0, 300)}"
        expected = event_id not in known
        assert seen.add(event_id) is expected
        if expected:
            if len(order) == 64:
                known.discard(order.popleft())
            order.append(event_id)
            known.add(event_id)


def test_recent_window_and_hour_counters_of_a_channel():
    activity = ChannelActivity(7)
    start = 1_717_000_000.0
    for i in range(30):  # one message a minute from three people
        activity.add_human(start + 60 * i, 100 + i % 3, f"m{i}", 90.0, 64)
    now = start + 60 * 29
    assert activity.messages_recent(now) == 6  # minutes 24..29 (the 300 s window includes its start)
    assert activity.speakers_recent(now) == 3
    assert activity.messages_hour(now) == 30
    drop = activity.hour_drops_to_in(now, 9)
    later = now + drop
    assert activity.messages_hour(later) <= 9 < activity.messages_hour(later - 1)
    assert activity.recent_window_changes_in(now) == 0.0  # minute 24 leaves right after now
    assert activity.recent_window_changes_in(now - 30) == 30.0


def test_memory_per_tracked_server_stays_under_two_kilobytes():
    """1,000 servers with the benchmark's mix of traffic (tracemalloc counts every allocation)."""
    rng = random.Random(1)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    clock = Clock(T0)
    engine = AutonomousEngine(BASE.model_copy(update={"dedupe_window": 5000}), MOODS, clock=clock,
                              rng=random.Random(1))
    servers = 1000
    for guild in range(1, servers + 1):
        engine.configure_server(server_settings({"guild_id": guild, "allowed_channels": [guild * 10 + 1, guild * 10 + 2],
                                                 "timezone": ZONES[guild % len(ZONES)]}))
    clock.t = T0 + 3600
    n = 0
    for guild in range(1, servers + 1):
        level = rng.random()
        count = rng.randint(0, 3) if level < 0.6 else rng.randint(10, 30) if level < 0.9 else rng.randint(40, 80)
        for i in range(count):
            n += 1
            engine.on_event(MessageEvent(f"message:{10**17 + n}", guild, guild * 10 + 1 + i % 2,
                                         10**17 + rng.randint(0, 5), clock.t - rng.uniform(0, 600)))
        if rng.random() < 0.2:
            engine.on_event(PresenceEvent(f"p{guild}", guild, 2000 + guild, clock.t, PresenceKind.ACTIVITY_STARTED,
                                          activity_name="Minecraft", activity_type="playing"))
    for _ in range(2):
        clock.t += 30
        engine.tick()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert engine.tracked_servers == servers
    assert used / servers < 2048, f"{used / servers:.0f} bytes per server"
