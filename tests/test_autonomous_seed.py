"""The autonomous engine's defaults are the seed's thresholds (issue 15, "Autonomous engine V2").

Join a conversation 5 minutes after her last action, engage a user after 30 quiet minutes, share
something after an hour with fewer than 10 messages in it, and (the seed's scenario 4) a shy Miku joins
an active chat only after 40 or more messages. Each is checked on the shipped config through the
engine's own checks and, for scenario 4, by running a chat.
"""
from __future__ import annotations

import pytest

from graph.autonomous import ActionKind, PresenceEvent, PresenceKind
from graph.brain.mood_profiles import KNOWN_MOODS
from tests.test_autonomous import CHAT, CONFIG, GUILD, SPEAKING_UP, make_sim


def _check(sim, kind: ActionKind):
    return next(c for c in sim.engine.explain(GUILD) if c.action is kind)


@pytest.mark.parametrize("mood", ["bubbly", "neutral", "shy", "sleepy"])
def test_seed_time_thresholds_hold_for_every_mood(mood):
    sim = make_sim(mood)
    assert _check(sim, ActionKind.JOIN_CONVERSATION).thresholds["min_gap_s"] == 300
    assert _check(sim, ActionKind.ENGAGE_USER).thresholds["min_quiet_s"] == 1800
    share = _check(sim, ActionKind.SHARE_SOMETHING).thresholds
    assert share["min_gap_s"] == 3600 and share["max_messages_1h"] == 9


def test_join_is_possible_five_minutes_after_her_last_action_not_before():
    sim = make_sim("bubbly", seed=1)
    first = sim.run(20 * 60, talk_every=10)
    assert [d.action for d in first] == [ActionKind.JOIN_CONVERSATION]
    acted = first[0].decided_at
    for _ in range(8):  # the chat goes on without her
        sim.clock.t += 5
        sim.say(1 + _ % 3)
    sim.clock.t = acted + 290
    sim.say(2)
    assert "gap_since_action" in _check(sim, ActionKind.JOIN_CONVERSATION).blocked_by
    sim.clock.t = acted + 301
    sim.say(3)
    assert _check(sim, ActionKind.JOIN_CONVERSATION).eligible


def test_engage_user_waits_for_thirty_quiet_minutes():
    sim = make_sim("bubbly", seed=2)
    sim.say(1)
    sim.say(39, miku=True, bot=True)  # she just spoke
    spoke = sim.clock.t
    sim.clock.t = spoke + 25 * 60
    sim.engine.on_event(PresenceEvent(sim.eid(), GUILD, 42, sim.clock.t, PresenceKind.ACTIVITY_STARTED,
                                      activity_name="Minecraft", activity_type="playing"))
    sim.clock.t = spoke + 29 * 60
    assert _check(sim, ActionKind.ENGAGE_USER).blocked_by == ("quiet",)
    sim.clock.t = spoke + 30 * 60 + 1
    assert _check(sim, ActionKind.ENGAGE_USER).eligible


@pytest.mark.parametrize("messages, eligible", [(9, True), (10, False)])
def test_share_needs_fewer_than_ten_messages_in_the_hour(messages, eligible):
    sim = make_sim("curious", seed=3)
    sim.clock.t += 3600  # an hour since start-up: the gaps are met
    for i in range(messages):  # spread over the last 50 minutes, calm now
        sim.clock.t += 300
        sim.say(1 + i % 2)
    sim.clock.t += 240
    share = _check(sim, ActionKind.SHARE_SOMETHING)
    assert share.eligible is eligible
    assert ("low_activity_hour" in share.blocked_by) is (not eligible)


@pytest.mark.parametrize("seed", range(6))
def test_scenario_4_shy_joins_an_active_chat_only_after_forty_messages(seed):
    sim = make_sim("shy", seed=seed)
    _, decided = 0, sim.run(2 * 3600, talk_every=8, speakers=(1, 2, 3, 4), stop_at_first=False)
    spoke = [d for d in decided if d.action in SPEAKING_UP]
    assert spoke, "a shy Miku still joins in the end"
    for decision in spoke:
        assert decision.debug.signals.channel(CHAT).messages_since_miku >= 40


def test_other_moods_are_not_held_to_the_shy_threshold():
    assert CONFIG.actions_for("bubbly").join_conversation.min_messages_since_miku == 5
    assert CONFIG.actions_for("shy").join_conversation.min_messages_since_miku == 40
    sim = make_sim("bubbly", seed=4)
    decided = sim.run(20 * 60, talk_every=8, speakers=(1, 2, 3))
    assert decided and decided[0].debug.signals.channel(CHAT).messages_since_miku < 40


def test_mood_overrides_are_validated():
    from graph.autonomous import AutonomousConfigError, AutonomousEngine, parse_autonomous_config
    from graph.brain.mood_profiles import load_moods

    data = CONFIG.model_dump(mode="json")
    data["mood_overrides"] = {"shy": {"join_conversation": {"min_messages_since_miku": 0}}}
    with pytest.raises(AutonomousConfigError, match="mood_overrides.shy: join_conversation.min_messages_since_miku"):
        parse_autonomous_config(data)
    data["mood_overrides"] = {"shy": {"jump_in": {}}}
    with pytest.raises(AutonomousConfigError, match="unknown action"):
        parse_autonomous_config(data)
    data["mood_overrides"] = {"grumpy": {"fomo": {"min_gap_s": 5}}}
    with pytest.raises(ValueError, match="grumpy"):
        AutonomousEngine(parse_autonomous_config(data), load_moods())
    assert set(KNOWN_MOODS) >= set(CONFIG.mood_overrides)
