"""Autonomous engine V2: scenario tests (fake clock, seeded randomness), properties, config validation."""
from __future__ import annotations

import json
import random
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph.autonomous import (
    DEFAULT_AUTONOMOUS_CONFIG_PATH,
    ActionKind,
    AutonomousConfigError,
    AutonomousDecision,
    AutonomousEngine,
    EngineGate,
    EventError,
    EventOutcome,
    MemberJoinEvent,
    MessageEvent,
    MoodEvent,
    PresenceEvent,
    PresenceKind,
    load_autonomous_config,
    parse_autonomous_config,
    parse_event,
    server_settings,
)
from graph.brain.mood_profiles import (
    DEFAULT_MOODS_PATH,
    KNOWN_MOODS,
    MoodConfigError,
    load_moods,
    parse_moods,
)

# Wednesday 5 June 2024, 10:00 UTC: daytime on a weekday.
T0 = datetime(2024, 6, 5, 10, 0, tzinfo=timezone.utc).timestamp()
GUILD = 111
CHAT = 1001  # allowed, home channel
MEMES = 1002  # allowed
STAFF = 1003  # not allowed

CONFIG = load_autonomous_config()
MOODS = load_moods()


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Sim:
    """An engine with one server, a fake clock and a counter for unique event ids."""

    engine: AutonomousEngine
    clock: FakeClock
    paused: list[bool] = field(default_factory=lambda: [False])
    next_id: int = 0

    def eid(self) -> str:
        self.next_id += 1
        return f"ev{self.next_id}"

    def say(self, author: int, channel: int = CHAT, *, bot: bool = False, miku: bool = False) -> EventOutcome:
        return self.engine.on_event(
            MessageEvent(self.eid(), GUILD, channel, author, self.clock.t, author_is_bot=bot, is_miku=miku)
        )

    def mood(self, name: str) -> None:
        self.engine.on_event(MoodEvent(self.eid(), GUILD, name, self.clock.t))

    def run(
        self,
        seconds: float,
        *,
        talk_every: float | None = None,
        speakers: tuple[int, ...] = (1, 2, 3),
        channel: int = CHAT,
        tick_every: float = 30.0,
        stop_at_first: bool = True,
        miku_replies: bool = True,
    ) -> list[AutonomousDecision]:
        """Advance time; humans take turns posting every `talk_every` s; tick every `tick_every` s."""
        end = self.clock.t + seconds
        next_msg = self.clock.t + (talk_every or 0)
        next_tick = self.clock.t + tick_every
        turn = 0
        decided: list[AutonomousDecision] = []
        while True:
            upcoming = min(next_tick, next_msg if talk_every else float("inf"))
            if upcoming > end:
                self.clock.t = end
                return decided
            self.clock.t = upcoming
            if talk_every and next_msg == upcoming:
                self.say(speakers[turn % len(speakers)], channel)
                turn += 1
                next_msg += talk_every
            if next_tick == upcoming:
                next_tick += tick_every
                for decision in self.engine.tick():
                    decided.append(decision)
                    if miku_replies:  # her message comes back through the client like any other
                        self.say(39, decision.channel_id, bot=True, miku=True)
                    if stop_at_first:
                        return decided


def make_sim(mood: str = "bubbly", seed: int = 0, *, tz: str = "UTC", start: float = T0,
             warm_up: bool = True) -> Sim:
    clock = FakeClock(start)
    paused = [False]
    engine = AutonomousEngine(CONFIG, MOODS, clock=clock, rng=random.Random(seed), is_paused=lambda: paused[0])
    engine.configure_server(server_settings(
        {"guild_id": GUILD, "allowed_channels": [CHAT, MEMES], "home_channel_id": CHAT, "timezone": tz}
    ))
    sim = Sim(engine, clock, paused)
    sim.mood(mood)
    if warm_up:  # get past the start-up cooldown
        clock.t += CONFIG.startup_cooldown_s + 1
    return sim


SPEAKING_UP = (ActionKind.JOIN_CONVERSATION, ActionKind.FOMO)


def lively_hour(mood: str, seed: int, hours: float = 1.0) -> tuple[float, list[AutonomousDecision]]:
    """A conversation of three people (a message every 12 s); returns its start and her decisions."""
    sim = make_sim(mood, seed)
    start = sim.clock.t
    return start, sim.run(hours * 3600, talk_every=12, stop_at_first=False)


def first_time(mood: str, seed: int, kinds=SPEAKING_UP, hours: float = 1.0) -> float | None:
    start, decided = lively_hour(mood, seed, hours)
    return next((d.decided_at - start for d in decided if d.action in kinds), None)


# ---- scenarios ---------------------------------------------------------------------------------


def test_active_conversation_makes_bubbly_miku_join():
    sim = make_sim("bubbly", seed=1)
    decided = sim.run(20 * 60, talk_every=15)
    assert len(decided) == 1
    decision = decided[0]
    assert decision.action is ActionKind.JOIN_CONVERSATION
    assert (decision.guild_id, decision.channel_id) == (GUILD, CHAT)
    assert decision.mood == "bubbly"
    check = decision.debug.checks[-1]
    assert check.fired and check.roll < check.probability
    channel = decision.debug.signals.channel(CHAT)
    assert channel.momentum >= check.thresholds["min_momentum"]
    assert channel.speakers_5m >= check.thresholds["min_speakers"]
    assert channel.messages_since_miku >= check.thresholds["min_messages_since_miku"]
    assert "conversation" in decision.prompt and "bubbly" in decision.prompt
    assert decision.trigger_event_id is not None
    wire = json.loads(json.dumps(decision.to_dict()))
    assert wire["action"] == "join_conversation" and wire["channel_id"] == str(CHAT)
    assert wire["debug"]["checks"][-1]["fired"] is True


def test_user_starting_a_game_gets_engaged():
    sim = make_sim("bubbly", seed=2)
    for author in (1, 2):  # someone was around recently, but it is quiet now
        sim.say(author)
    sim.run(20 * 60)
    presence = PresenceEvent(sim.eid(), GUILD, 42, sim.clock.t, PresenceKind.ACTIVITY_STARTED,
                             activity_name="Minecraft", activity_type="playing")
    assert sim.engine.on_event(presence) is EventOutcome.APPLIED
    decided = sim.run(10 * 60)
    assert [d.action for d in decided] == [ActionKind.ENGAGE_USER]
    decision = decided[0]
    assert decision.target_user_id == 42 and decision.trigger_event_id == presence.event_id
    assert "<@42>" in decision.prompt and "started playing Minecraft" in decision.prompt
    assert decision.channel_id == CHAT
    # The same presence re-delivered is dropped, and she does not engage the same game again.
    assert sim.engine.on_event(presence) is EventOutcome.DUPLICATE
    again = PresenceEvent(sim.eid(), GUILD, 42, sim.clock.t, PresenceKind.ACTIVITY_STARTED,
                          activity_name="Minecraft", activity_type="playing")
    sim.engine.on_event(again)
    later = sim.run(30 * 60, stop_at_first=False)
    assert not [d for d in later if d.action is ActionKind.ENGAGE_USER]


def test_dead_chat_with_bubbly_mood_gets_its_silence_broken():
    sim = make_sim("bubbly", seed=3)
    sim.say(1)
    last_human = sim.clock.t
    decided = sim.run(4 * 3600, tick_every=60)
    assert [d.action for d in decided] == [ActionKind.BREAK_SILENCE]
    decision = decided[0]
    assert decision.channel_id == CHAT
    bubbly_wait = CONFIG.actions.break_silence.min_quiet_s * CONFIG.actions.break_silence.wait_factor(MOODS["bubbly"])
    assert decision.decided_at - last_human >= bubbly_wait
    assert "quiet" in decision.prompt


def test_unanswered_silence_breaks_back_off_and_stop():
    sim = make_sim("excited", seed=4)
    decided = sim.run(13 * 3600, tick_every=60, stop_at_first=False)  # 10:05 to 23:05 local
    rule = CONFIG.actions.break_silence
    assert [d.action for d in decided] == [ActionKind.BREAK_SILENCE] * rule.max_unanswered
    first, second = decided[0], decided[1]
    wait = rule.min_quiet_s * rule.wait_factor(MOODS["excited"])
    assert second.decided_at - first.decided_at >= rule.unanswered_backoff * wait
    assert second.debug.signals.unanswered_breaks == 1
    sim.say(5)  # a human answers: the backoff resets
    assert sim.engine.signals(GUILD).unanswered_breaks == 0


def test_many_messages_without_her_trigger_fomo():
    # One person posting fast: no conversation to join (one speaker), but she feels left out.
    sim = make_sim("bubbly", seed=14)
    decided = sim.run(30 * 60, talk_every=10, speakers=(7,))
    assert [d.action for d in decided] == [ActionKind.FOMO]
    check = decided[0].debug.checks
    assert [c.action for c in check] == [ActionKind.JOIN_CONVERSATION, ActionKind.ENGAGE_USER, ActionKind.FOMO]
    assert "speakers" in check[0].blocked_by
    assert decided[0].debug.signals.channel(CHAT).messages_since_miku >= check[2].thresholds["min_messages_since_miku"]


def test_calm_chat_with_curious_mood_gets_something_shared():
    sim = make_sim("curious", seed=15)
    decided = sim.run(6 * 3600, talk_every=600, speakers=(1, 2), tick_every=60)
    assert [d.action for d in decided] == [ActionKind.SHARE_SOMETHING]
    decision = decided[0]
    signals = decision.debug.signals.channel(decision.channel_id)
    assert 1 <= signals.messages_1h <= CONFIG.actions.share_something.max_messages_1h
    assert decision.decided_at - T0 >= CONFIG.actions.share_something.min_gap_s
    assert "Share something" in decision.prompt


def test_shy_waits_longer_and_joins_later_than_bubbly():
    seeds = range(8)
    bubbly = [first_time("bubbly", s) for s in seeds]
    shy = [first_time("shy", s) for s in seeds]
    assert None not in bubbly
    assert None not in shy, "a shy mood still speaks up in a lively conversation"
    assert statistics.median(shy) > statistics.median(bubbly)
    assert min(shy) > min(bubbly)
    # ...and more rarely over the same hour.
    count = lambda mood: sum(len(lively_hour(mood, s)[1]) for s in seeds)  # noqa: E731
    assert count("shy") < count("bubbly")
    # Her thresholds explain it: more messages needed and a lower rate.
    shy_check = make_sim("shy").engine.explain(GUILD)[0]
    bubbly_check = make_sim("bubbly").engine.explain(GUILD)[0]
    assert shy_check.thresholds["min_messages_since_miku"] > bubbly_check.thresholds["min_messages_since_miku"]
    assert shy_check.rate_per_min < bubbly_check.rate_per_min


@pytest.mark.parametrize("mood", KNOWN_MOODS)
def test_every_mood_joins_a_lively_conversation(mood):
    assert first_time(mood, seed=5, kinds=(ActionKind.JOIN_CONVERSATION,), hours=2) is not None


def test_nothing_while_paused_for_a_voice_session():
    sim = make_sim("excited", seed=6)
    sim.paused[0] = True
    assert sim.engine.gate() is EngineGate.PAUSED
    assert sim.run(30 * 60, talk_every=10) == []
    assert sim.engine.decide(GUILD) is None
    sim.paused[0] = False
    decided = sim.run(30 * 60, talk_every=10)
    assert [d.action for d in decided] == [ActionKind.JOIN_CONVERSATION]


def test_nothing_during_startup_cooldown():
    sim = make_sim("excited", seed=7, warm_up=False)
    assert sim.engine.gate() is EngineGate.STARTING_UP
    assert sim.run(CONFIG.startup_cooldown_s - 1, talk_every=5, tick_every=10) == []
    decided = sim.run(20 * 60, talk_every=5, tick_every=10)
    assert decided and decided[0].decided_at - T0 >= CONFIG.startup_cooldown_s


def test_never_in_a_channel_not_allowed():
    sim = make_sim("excited", seed=8)
    decided = sim.run(2 * 3600, talk_every=8, channel=STAFF, stop_at_first=False, tick_every=60)
    assert all(d.channel_id in (CHAT, MEMES) for d in decided)
    assert all(d.action is ActionKind.BREAK_SILENCE for d in decided)  # the allowed channels stayed silent
    assert STAFF not in {c.channel_id for c in sim.engine.signals(GUILD).channels}


def test_conversation_in_second_allowed_channel_is_joined_there():
    sim = make_sim("bubbly", seed=9)
    decided = sim.run(20 * 60, talk_every=12, channel=MEMES)
    assert decided and decided[0].action is ActionKind.JOIN_CONVERSATION and decided[0].channel_id == MEMES


def test_min_interval_between_actions_in_a_server():
    sim = make_sim("excited", seed=10)
    decided = sim.run(3 * 3600, talk_every=6, stop_at_first=False)
    assert len(decided) >= 2
    gaps = [b.decided_at - a.decided_at for a, b in zip(decided, decided[1:])]
    assert min(gaps) >= CONFIG.min_action_interval_s


def test_events_are_deduplicated_and_other_bots_ignored():
    sim = make_sim("bubbly")
    event = MessageEvent("same", GUILD, CHAT, 1, sim.clock.t)
    assert sim.engine.on_event(event) is EventOutcome.APPLIED
    assert sim.engine.on_event(event) is EventOutcome.DUPLICATE
    assert sim.say(77, bot=True) is EventOutcome.IGNORED
    assert sim.engine.on_event(MessageEvent("x", 999, CHAT, 1, sim.clock.t)) is EventOutcome.IGNORED
    assert sim.engine.signals(GUILD).channel(CHAT).messages_5m == 1


def test_a_decision_never_acts_twice_on_the_same_message():
    sim = make_sim("excited", seed=11)
    decided = sim.run(20 * 60, talk_every=10, miku_replies=False)
    assert decided[0].action is ActionKind.JOIN_CONVERSATION
    # No new human message: however long we tick, nothing new triggers a join or fomo on the old one.
    later = sim.run(60 * 60, stop_at_first=False)
    assert not [d for d in later if d.action in (ActionKind.JOIN_CONVERSATION, ActionKind.FOMO)]
    assert all(d.trigger_event_id != decided[0].trigger_event_id for d in later)


def test_unknown_mood_event_is_rejected_and_loses_nothing():
    sim = make_sim("bubbly")
    with pytest.raises(EventError, match="unknown mood 'grumpy'"):
        sim.engine.on_event(MoodEvent("m-bad", GUILD, "grumpy", sim.clock.t))
    assert sim.engine.mood_of(GUILD) == "bubbly"
    assert sim.engine.on_event(MoodEvent("m-bad", GUILD, "shy", sim.clock.t)) is EventOutcome.APPLIED
    assert sim.engine.mood_of(GUILD) == "shy"


def test_night_in_the_server_time_zone_blocks_breaking_silence():
    # 10:00 UTC is 03:00 in Los Angeles on a Wednesday: night there.
    sim = make_sim("excited", seed=12, tz="America/Los_Angeles")
    sim.say(1)
    sim.clock.t += 3 * 3600
    signals = sim.engine.signals(GUILD)
    assert signals.night and signals.local_hour == 6 and signals.weekday == "Wednesday"
    check = next(c for c in sim.engine.explain(GUILD) if c.action is ActionKind.BREAK_SILENCE)
    assert check.blocked_by == ("night",)


def test_member_join_in_a_dead_server_feeds_break_silence_not_engage():
    sim = make_sim("bubbly", seed=13)
    sim.engine.on_event(MemberJoinEvent(sim.eid(), GUILD, 55, sim.clock.t, display_name="Rin"))
    decided = sim.run(3 * 3600, tick_every=60, stop_at_first=False)
    assert [d.action for d in decided if d.action is not ActionKind.BREAK_SILENCE] == []
    # Neutral needs two quiet hours; a member joining just then is mentioned when she breaks the silence.
    sim2 = make_sim("neutral", seed=13)
    quiet_needed = CONFIG.actions.break_silence.min_quiet_s * CONFIG.actions.break_silence.wait_factor(MOODS["neutral"])
    assert sim2.run(quiet_needed - 300, tick_every=60) == []
    sim2.engine.on_event(MemberJoinEvent(sim2.eid(), GUILD, 55, sim2.clock.t))
    breaks = sim2.run(15 * 60, tick_every=60)
    assert [d.action for d in breaks] == [ActionKind.BREAK_SILENCE]
    assert "<@55> just joined the server" in breaks[0].prompt
    assert breaks[0].debug.checks[-1].rate_per_min > CONFIG.actions.break_silence.rate_per_min * 0.5


# ---- properties ------------------------------------------------------------------------------

# A scenario is a list of phases: bursts of chat, stretches of silence, presence/join/mood changes.
_phase = st.tuples(
    st.sampled_from(["burst", "burst", "trickle", "trickle", "silence", "presence", "online", "join",
                     "mood", "miku", "bot"]),
    st.sampled_from([CHAT, MEMES, STAFF]),
    st.integers(min_value=1, max_value=60),  # messages in a burst or trickle / user id
    st.floats(min_value=1.0, max_value=40.0),  # seconds between burst messages
    st.floats(min_value=0.0, max_value=3 * 3600.0),  # length of a silence
    st.sampled_from(KNOWN_MOODS),
)


def _replay(phases, seed: int, tick_every: float) -> tuple[list[AutonomousDecision], list[float | None]]:
    """Run a scenario; returns decisions and, for each, the last human message time in its channel."""
    sim = make_sim("neutral", seed=seed, warm_up=False)
    last_human: dict[int, float] = {}
    human_before: list[float | None] = []
    decided: list[AutonomousDecision] = []
    next_tick = sim.clock.t + tick_every

    def advance(seconds: float) -> None:
        nonlocal next_tick
        end = sim.clock.t + seconds
        while next_tick <= end:
            sim.clock.t = next_tick
            next_tick += tick_every
            for decision in sim.engine.tick():
                decided.append(decision)
                human_before.append(last_human.get(decision.channel_id))
        sim.clock.t = end

    for kind, channel, count, gap, silence, mood in phases:
        if kind in ("burst", "trickle"):
            for i in range(count):
                advance(gap if kind == "burst" else gap * 30)  # a trickle: one message every 0.5-20 min
                sim.say(1 + i % 4, channel)
                last_human[channel] = sim.clock.t
        elif kind == "silence":
            advance(silence)
        elif kind in ("presence", "online"):
            sim.engine.on_event(PresenceEvent(
                sim.eid(), GUILD, count, sim.clock.t,
                PresenceKind.ACTIVITY_STARTED if kind == "presence" else PresenceKind.CAME_ONLINE,
                activity_name="Tetris" if kind == "presence" else None))
        elif kind == "join":
            sim.engine.on_event(MemberJoinEvent(sim.eid(), GUILD, count, sim.clock.t))
        elif kind == "mood":
            sim.mood(mood)
        elif kind == "miku":
            sim.say(39, channel, bot=True, miku=True)
        else:
            sim.say(count + 100, channel, bot=True)
    advance(600)
    return decided, human_before


_scenario = st.lists(_phase, min_size=1, max_size=14)
_tick_every = st.sampled_from([15.0, 30.0, 60.0, 120.0])


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(phases=_scenario, seed=st.integers(0, 2**16), tick_every=_tick_every)
def test_property_no_action_in_a_channel_without_humans_in_the_last_hour_except_break_silence(
    phases, seed, tick_every
):
    decided, last_human = _replay(phases, seed, tick_every)
    for decision, human_at in zip(decided, last_human):
        assert decision.channel_id in (CHAT, MEMES)
        assert decision.decided_at - T0 >= CONFIG.startup_cooldown_s
        if decision.action is not ActionKind.BREAK_SILENCE:
            assert human_at is not None and decision.decided_at - human_at <= 3600
    gaps = [b.decided_at - a.decided_at for a, b in zip(decided, decided[1:])]
    assert all(g >= CONFIG.min_action_interval_s for g in gaps)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(phases=_scenario, seed=st.integers(0, 2**16), tick_every=_tick_every)
def test_property_decisions_are_deterministic_for_a_seed_and_event_sequence(phases, seed, tick_every):
    first, _ = _replay(phases, seed, tick_every)
    second, _ = _replay(phases, seed, tick_every)
    assert [d.to_dict() for d in first] == [d.to_dict() for d in second]


def test_a_busy_day_is_deterministic_and_varied():
    def day(seed: int) -> list[tuple]:
        sim = make_sim("bubbly", seed=seed)
        out = []
        for _ in range(6):
            out += sim.run(20 * 60, talk_every=9, stop_at_first=False)
            out += sim.run(90 * 60, stop_at_first=False, tick_every=60)
        return [(d.action.value, d.channel_id, d.decided_at, d.prompt) for d in out]

    assert day(21) == day(21)
    assert len({a for a, *_ in day(21)}) >= 2


# ---- event parsing -----------------------------------------------------------------------------


def test_parse_event_accepts_client_json_and_drops_content():
    event = parse_event({"type": "message", "event_id": 123, "guild_id": "111", "channel_id": "1001",
                         "author_id": "5", "timestamp": T0, "content": "never stored"})
    assert event == MessageEvent("123", 111, 1001, 5, T0)
    presence = parse_event({"type": "presence", "event_id": "p", "guild_id": 1, "user_id": 2, "timestamp": T0,
                            "kind": "activity_started", "activity_name": "Osu!", "activity_type": "playing"})
    assert presence.kind is PresenceKind.ACTIVITY_STARTED


@pytest.mark.parametrize("payload, message", [
    ({"type": "typing"}, "event type must be one of"),
    ({"type": "message", "event_id": "1", "guild_id": "abc", "channel_id": 1, "author_id": 1, "timestamp": 1.0},
     "guild_id"),
    ({"type": "message", "event_id": "", "guild_id": 1, "channel_id": 1, "author_id": 1, "timestamp": 1.0},
     "event_id must be a non-empty"),
    ({"type": "presence", "event_id": "1", "guild_id": 1, "user_id": 1, "timestamp": 1.0,
      "kind": "activity_started"}, "needs an activity_name"),
    ({"type": "mood", "event_id": "1", "guild_id": 1, "mood": "shy", "timestamp": float("nan")}, "timestamp"),
    ({"type": "member_join", "event_id": "1", "guild_id": -4, "user_id": 1, "timestamp": 1.0}, "guild_id"),
])
def test_parse_event_rejects_bad_payloads(payload, message):
    with pytest.raises(EventError, match=message):
        parse_event(payload)


# ---- mood config -------------------------------------------------------------------------------


def _mood_doc() -> dict:
    return yaml.safe_load(DEFAULT_MOODS_PATH.read_text(encoding="utf-8"))


def test_shipped_moods_cover_every_mood_with_valid_profiles():
    moods = load_moods(DEFAULT_MOODS_PATH)
    assert set(KNOWN_MOODS) <= set(moods)
    for name, profile in moods.items():
        assert profile.name == name and profile.description.endswith(".") and profile.emoji
        assert -6 <= profile.pitch_shift <= 6
    assert moods["shy"].sociability < moods["bubbly"].sociability


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["moods"].pop("asleep"), "missing mood.*asleep"),
    (lambda d: d["moods"]["shy"].update(volume=3), "mood 'shy': unknown key 'volume'"),
    (lambda d: d["moods"]["bubbly"].update(energy=1.5), "mood 'bubbly': energy: .*less than or equal to 1"),
    (lambda d: d["moods"]["angry"].update(pitch_shift=-20), "mood 'angry': pitch_shift"),
    (lambda d: d["moods"]["silly"].pop("emoji"), "mood 'silly': emoji: required"),
    (lambda d: d["moods"]["curious"].update(curiosity="lots"), "mood 'curious': curiosity"),
    (lambda d: d.update(extra=1), "unknown top-level key"),
    (lambda d: d["moods"].update(neutral=[1, 2]), "mood 'neutral': expected a mapping"),
])
def test_mood_config_validation_errors(mutate, message):
    doc = _mood_doc()
    mutate(doc)
    with pytest.raises(MoodConfigError, match=message):
        parse_moods(doc, source="moods.yaml")


def test_load_moods_reports_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(MoodConfigError, match="cannot read"):
        load_moods(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("moods: [unclosed", encoding="utf-8")
    with pytest.raises(MoodConfigError, match="not valid YAML"):
        load_moods(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(MoodConfigError, match="expected a mapping"):
        load_moods(empty)


# ---- engine config -----------------------------------------------------------------------------


def _config_doc() -> dict:
    return yaml.safe_load(DEFAULT_AUTONOMOUS_CONFIG_PATH.read_text(encoding="utf-8"))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(startup_cooldown=5), "startup_cooldown: unknown key"),
    (lambda d: d["actions"]["fomo"].update(rate_floor=0), "actions.fomo.rate_floor"),
    (lambda d: d["actions"]["join_conversation"].update(drive={"charm": 1}), "unknown trait"),
    (lambda d: d["actions"].pop("share_something"), "actions.share_something: required"),
    (lambda d: d["night"]["weekday"].update(start=25), "night.weekday.start"),
    (lambda d: d.update(servers=[{"guild_id": 1, "allowed_channels": [2], "timezone": "Mars/Olympus"}]),
     "unknown time zone 'Mars/Olympus'"),
    (lambda d: d.update(servers=[{"guild_id": 1, "allowed_channels": [2], "home_channel_id": 3}]),
     "home_channel_id 3 is not in allowed_channels"),
    (lambda d: d.update(servers=[{"guild_id": 1, "allowed_channels": []}]), "allowed_channels"),
])
def test_engine_config_validation_errors(mutate, message):
    doc = _config_doc()
    mutate(doc)
    with pytest.raises(AutonomousConfigError, match=message):
        parse_autonomous_config(doc)


def test_engine_rejects_a_default_mood_without_profile():
    doc = _config_doc()
    doc["default_mood"] = "grumpy"
    with pytest.raises(ValueError, match="default_mood 'grumpy'"):
        AutonomousEngine(parse_autonomous_config(doc), MOODS, clock=FakeClock())


def test_servers_from_config_and_reconfiguration_drop_disallowed_channel_state():
    doc = _config_doc()
    doc["servers"] = [{"guild_id": GUILD, "allowed_channels": [CHAT, MEMES], "timezone": "Europe/Berlin"}]
    clock = FakeClock()
    engine = AutonomousEngine(parse_autonomous_config(doc), MOODS, clock=clock, rng=random.Random(0))
    assert engine.tracked_servers == 1
    engine.on_event(MessageEvent("a", GUILD, MEMES, 1, clock.t))
    assert engine.signals(GUILD).channel(MEMES).messages_5m == 1
    engine.configure_server(server_settings({"guild_id": GUILD, "allowed_channels": [CHAT]}))
    assert engine.signals(GUILD).channel(MEMES) is None
    engine.remove_server(GUILD)
    assert engine.tracked_servers == 0
