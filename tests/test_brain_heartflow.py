"""Heart Flow state machines and the brain's event handling, one rule at a time."""
from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import pytest

from graph.brain import (
    Brain,
    BrainConfig,
    EventValidationError,
    FeatureCheck,
    parse_event,
)
from graph.brain.brain import parse_plan
from graph.brain.heartflow import (
    ChatState,
    GlobalState,
    HeartFlow,
    HeartFlowConfig,
    StateLimits,
)
from graph.brain.judge import JUDGE_SYSTEM

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def flow(clock: Clock, **overrides) -> HeartFlow:
    config = HeartFlowConfig(durations_s={s: (1e9, 1e9) for s in GlobalState}, **overrides)
    return HeartFlow(config, clock=clock, rng=random.Random(0))


# -- Heart Flow -------------------------------------------------------------------------------------


def test_promotions_respect_limits_and_state_change_demotes_least_interesting():
    clock = Clock()
    hf = flow(clock)
    assert hf.state is GlobalState.NORMAL_CHAT and hf.limits == StateLimits(3, 2)
    for i in range(8):
        sub = hf.subflow(f"c{i}", clock.now)
        hf.observe(sub, 5.0 + i, clock.now)  # enough interest to want FOCUSED
        assert hf.within_limits()
    counts = hf.counts()
    assert counts[ChatState.FOCUSED] == 2 and counts[ChatState.CHAT] == 3
    assert {s.chat_id for s in hf.subflows.values() if s.state is ChatState.FOCUSED} == {"c0", "c1"}  # first come
    hf.set_state(GlobalState.PEEKING, clock.now)
    assert hf.within_limits() and hf.counts()[ChatState.FOCUSED] == 1 and hf.counts()[ChatState.CHAT] == 1
    assert hf.subflows["c1"].state is ChatState.FOCUSED  # the more interesting focused chat stays
    hf.set_state(GlobalState.OFFLINE, clock.now)
    assert hf.counts()[ChatState.CHAT] == 0 and hf.counts()[ChatState.FOCUSED] == 0
    hf.observe(hf.subflows["c7"], 100.0, clock.now)
    assert hf.subflows["c7"].state is ChatState.ABSENT  # OFFLINE: 0/0


def test_timed_transitions_follow_weights_and_durations():
    clock = Clock(0.0)
    config = HeartFlowConfig(
        durations_s={s: (10.0, 10.0) for s in GlobalState},
        transitions={GlobalState.NORMAL_CHAT: {GlobalState.OFFLINE: 1.0}, GlobalState.OFFLINE: {GlobalState.PEEKING: 1.0}, GlobalState.PEEKING: {GlobalState.FOCUSED_CHAT: 1.0}, GlobalState.FOCUSED_CHAT: {GlobalState.NORMAL_CHAT: 1.0}},
    )
    hf = HeartFlow(config, clock=clock, rng=random.Random(0))
    hf.advance(9.9)
    assert hf.state is GlobalState.NORMAL_CHAT
    hf.advance(10.0)
    assert hf.state is GlobalState.OFFLINE
    hf.advance(35.0)  # two more transitions due
    assert hf.state is GlobalState.FOCUSED_CHAT
    assert [s for _, s in hf.transitions_log] == [GlobalState.NORMAL_CHAT, GlobalState.OFFLINE, GlobalState.PEEKING, GlobalState.FOCUSED_CHAT]


def test_config_from_mapping_and_errors():
    config = HeartFlowConfig.from_mapping({"limits": {"PEEKING": [2, 1], "normal_chat": {"chat": 5, "focused": 3}}, "initial_state": "peeking", "chat_threshold": 2.0})
    assert config.limits[GlobalState.PEEKING] == StateLimits(2, 1) and config.limits[GlobalState.NORMAL_CHAT] == StateLimits(5, 3)
    assert config.initial_state is GlobalState.PEEKING and config.limits[GlobalState.OFFLINE] == StateLimits(0, 0)
    with pytest.raises(ValueError, match="unknown Heart Flow state 'SLEEPING'"):
        HeartFlowConfig.from_mapping({"limits": {"SLEEPING": [1, 1]}})
    with pytest.raises(ValueError, match="unknown heart_flow settings"):
        HeartFlowConfig.from_mapping({"chat_treshold": 1})
    with pytest.raises(ValueError, match="absent < chat <= focus"):
        HeartFlowConfig(chat_threshold=5.0, focus_threshold=4.0)


def test_interest_decays_and_idle_chats_are_demoted_then_cleaned_up():
    clock = Clock(0.0)
    hf = flow(clock)
    sub = hf.subflow("c", 0.0)
    hf.observe(sub, 2.0, 0.0)
    assert sub.state is ChatState.CHAT
    assert hf.interest(sub, 900.0) == pytest.approx(1.0)  # one half-life
    hf.advance(900.0 * 3)  # 0.25 < absent threshold
    assert sub.state is ChatState.ABSENT and "c" in hf.subflows
    hf.advance(3601.0)
    assert "c" not in hf.subflows
    assert "c" in hf.budgets  # the reply history outlives the sub-flow


def test_five_no_replies_send_focused_chat_to_absent_and_an_emoji_resets_the_count():
    clock = Clock(0.0)
    hf = flow(clock)
    sub = hf.subflow("c", 0.0)
    hf.observe(sub, 10.0, 0.0)
    assert sub.state is ChatState.FOCUSED and hf.config.max_consecutive_no_reply == 5  # the seed's number
    for t in (1.0, 2.0, 3.0, 4.0):
        hf.record_focus_no_reply(sub, t)
    hf.record_outcome(sub, True, 5.0)  # a reply resets the count
    for t in (6.0, 7.0, 8.0, 9.0):
        hf.record_focus_no_reply(sub, t)
    hf.record_focus_reaction(sub)  # so does an emoji reaction
    for t in (10.0, 11.0, 12.0, 13.0):
        hf.record_focus_no_reply(sub, t)
    assert sub.state is ChatState.FOCUSED
    hf.record_focus_no_reply(sub, 14.0)
    assert sub.state is ChatState.ABSENT and sub.interest == 0.0


def test_willingness_falls_after_reply_and_budget_limits():
    clock = Clock(0.0)
    hf = flow(clock)
    sub = hf.subflow("c", 0.0)
    for _ in range(5):
        hf.observe(sub, 1.0, 0.0)
    before = hf.reply_probability(sub, 1.0, 0.0)
    hf.record_outcome(sub, True, 0.0)
    assert hf.reply_probability(sub, 1.0, 0.0) < before
    assert hf.reply_probability(sub, 1.0, 3000.0) > hf.reply_probability(sub, 1.0, 1.0)  # recovers with time
    for t in range(1, 6):
        hf.record_outcome(sub, True, float(t))
    assert hf.rate_limited(sub, 10.0) == pytest.approx(50.0)  # 6 replies in 60 s: next at t=60
    assert hf.rate_limited(sub, 60.0) == 0.0 or hf.rate_limited(sub, 61.0) == 0.0
    assert hf.over_ratio(sub)  # 6 of 6 messages answered: far above the band


def test_parse_plan_is_strict():
    usable = ["reply", "no_reply", "emoji"]
    assert parse_plan('sure! {"action": "reply", "parallel": ["emoji", "draw"], "reason": "asked"}', usable).action == "reply"
    assert parse_plan('{"action": "reply", "parallel": ["emoji", "draw"]}', usable).parallel == ("emoji",)
    assert parse_plan('{"action": "draw"}', usable).action == "no_reply"
    assert parse_plan("reply", usable).action == "no_reply"
    assert parse_plan("{broken json", usable).action == "no_reply"
    assert parse_plan(None, usable).action == "no_reply"


# -- the brain ------------------------------------------------------------------------------------


class ScriptedLLM:
    """Injected `complete`: judges say no, the planner follows `plan`, replies echo the user turn."""

    def __init__(self, plan: str = '{"action": "reply"}', plan_gate: asyncio.Event | None = None, fail: bool = False):
        self.plan = plan
        self.plan_gate = plan_gate
        self.plan_started = asyncio.Event()
        self.fail = fail
        self.plans = 0

    async def __call__(self, prompt: str, system: str | None, options=None) -> str:
        if self.fail:
            raise TimeoutError("model is down")
        if system == JUDGE_SYSTEM:
            return "no"
        if "Answer with JSON only" in prompt:
            self.plans += 1
            self.plan_started.set()
            if self.plan_gate is not None and self.plans == 1:
                await self.plan_gate.wait()
            return self.plan
        if "think privately" in prompt:
            return "hmm"
        return "reply to " + prompt.splitlines()[-1]


class Blackouts:
    def __init__(self):
        self.voice = False

    async def __call__(self, feature: str) -> FeatureCheck:
        if not self.voice:
            return FeatureCheck(True)
        if feature == "image_generation":
            return FeatureCheck(False, "no drawing in voice", False)
        return FeatureCheck(False, None, True)


async def make_brain(clock: Clock, llm=None, blackouts=None, **config) -> Brain:
    base = BrainConfig.load(REPO / "configs" / "brain.yaml")
    cfg = dataclasses.replace(base, memory_path=":memory:", **config)
    return await Brain.create(cfg, complete=llm, check_feature=blackouts, clock=clock, rng=random.Random(5))


_counter = 0


def event(content: str = "hello", **extra) -> dict:
    global _counter
    _counter += 1
    base = {"type": "message", "event_id": f"e{_counter}", "guild_id": "g", "channel_id": "c", "message_id": f"m{_counter}",
            "author_id": "u1", "author_name": "Ann", "content": content, "timestamp": 1_000_000.0}
    base.update(extra)
    return base


async def test_concurrent_duplicates_decided_once():
    clock = Clock()
    brain = await make_brain(clock, ScriptedLLM())
    try:
        ev = event("Miku hi!", mentions_miku=True)
        copies = [dict(ev, event_id=f"copy{i}") for i in range(10)]
        results = await asyncio.gather(*(brain.handle_event(c) for c in copies))
        answered = [r for r in results if r["actions"]]
        assert len(answered) == 1
        assert answered[0]["actions"][0]["type"] == "reply" and answered[0]["actions"][0]["text"] == "reply to user: Ann: Miku hi!"
        assert answered[0]["actions"][0]["prompt"]["system"]
    finally:
        await brain.close()


async def test_focused_cycle_replans_when_messages_arrive_while_planning():
    clock = Clock()
    gate = asyncio.Event()
    llm = ScriptedLLM(plan_gate=gate)
    brain = await make_brain(clock, llm, replan_probability=1.0)
    try:
        sub = brain.heartflow.subflow("c", clock.now)
        brain.heartflow.observe(sub, 10.0, clock.now)
        assert sub.state is ChatState.FOCUSED
        first = asyncio.create_task(brain.handle_event(event("what do you all think about the new album")))
        await llm.plan_started.wait()
        second = asyncio.create_task(brain.handle_event(event("I loved track 3, anyone else?", author_id="u2", author_name="Bo")))
        while not brain._focus["c"].pending:  # wait until the second message is waiting for the cycle
            await asyncio.sleep(0.005)
        gate.set()
        first_result, second_result = await first, await second
        assert brain.stats["replans"] == 1 and brain.stats["focus_cycles"] == 1
        assert second_result == {"actions": []}  # its message was folded into the running cycle
        reply = first_result["actions"][0]
        assert reply["type"] == "reply" and reply["reply_to_message_id"] == f"m{_counter}"  # answers the newest
    finally:
        await brain.close()


async def test_focused_no_replies_demote_without_spending_llm_when_over_budget():
    clock = Clock()
    llm = ScriptedLLM(plan='{"action": "no_reply"}')
    brain = await make_brain(clock, llm)
    try:
        sub = brain.heartflow.subflow("c", clock.now)
        brain.heartflow.observe(sub, 10.0, clock.now)
        for i in range(5):
            clock.now += 1
            assert (await brain.handle_event(event(f"just chatting {i}")))["actions"] == []
        assert sub.state is ChatState.ABSENT and llm.plans == 5
    finally:
        await brain.close()


async def test_rate_limited_mentions_tell_the_user_once_per_window():
    clock = Clock()
    brain = await make_brain(clock, ScriptedLLM())
    try:
        results = []
        for i in range(9):
            clock.now += 2
            results.append((await brain.handle_event(event(f"Miku! {i}", mentions_miku=True)))["actions"])
        kinds = [r[0]["type"] for r in results]
        assert kinds[:6] == ["reply"] * 6 and kinds[6:] == ["rate_limited"] * 3
        assert results[6][0]["message"] and results[7][0]["message"] is None and results[6][0]["retry_after_s"] > 0
        clock.now += 60
        assert (await brain.handle_event(event("Miku, still there?", mentions_miku=True)))["actions"][0]["type"] == "reply"
    finally:
        await brain.close()


async def test_voice_session_queues_mentions_blocks_draw_and_replays_later():
    clock = Clock()
    blackouts = Blackouts()
    brain = await make_brain(clock, ScriptedLLM(), blackouts)
    try:
        blackouts.voice = True
        held = event("Miku how are you?", mentions_miku=True)
        queued = (await brain.handle_event(held))["actions"]
        assert queued == [{"type": "queue", "channel_id": "c", "message_id": held["message_id"], "event_id": held["event_id"], "feature": "text_channel_messages", "message": brain.config.queued_message}]
        draw = (await brain.handle_event(event("Miku draw a cat", mentions_miku=True)))["actions"]
        assert draw[0]["type"] == "blocked" and draw[0]["message"] == "no drawing in voice"
        switch = (await brain.handle_event(event("!modfile switch evil_miku")))["actions"]
        assert switch[0]["type"] == "blocked" and switch[0]["feature"] == "bipolar_mode"
        join = await brain.handle_event({"type": "member_join", "event_id": "j1", "guild_id": "g", "user_id": "n", "user_name": "Newbie", "channel_id": "c"})
        assert join == {"actions": []}  # autonomous posts pause in voice
        blackouts.voice = False
        clock.now += 600
        later = (await brain.handle_event(dict(held, event_id="replayed")))["actions"]
        assert later[0]["type"] == "reply" and later[0]["reply_to_message_id"] == held["message_id"]
        assert (await brain.handle_event(dict(held, event_id="again")))["actions"] == []  # decided now
        switch = (await brain.handle_event(event("!modfile switch evil_miku")))["actions"]
        assert [a["type"] for a in switch] == ["switch_persona", "reply"] and switch[0]["persona"] == "evil_miku"
        assert brain.personas.active("g").name == "evil_miku" and brain.personas.active(None).name == "miku"
    finally:
        await brain.close()


async def test_commands_moods_and_voice_prompt():
    clock = Clock()
    brain = await make_brain(clock, ScriptedLLM())
    try:
        info = (await brain.handle_event(event("!modfile info")))["actions"][0]
        assert info["type"] == "reply" and "Hatsune Miku" in info["text"]
        assert "I don't know a persona" in (await brain.handle_event(event("!modfile switch nobody")))["actions"][0]["text"]
        assert (await brain.handle_event(event("!mood sleepy")))["actions"][0]["text"] == "Okay, now I'm feeling sleepy."
        assert brain.current_mood("g").name == "sleepy" and brain.current_mood("other").name == "neutral"
        assert "don't have a mood" in (await brain.handle_event(event("!mood furious")))["actions"][0]["text"]
        result = await brain.handle_event({"type": "mood", "event_id": "mood1", "guild_id": "g", "channel_id": "c", "mood": "bubbly"})
        assert result["actions"] == [{"type": "send", "channel_id": "c", "text": "Mood changed to bubbly."}]
        assert (await brain.handle_event({"type": "mood", "event_id": "mood1", "guild_id": "g", "mood": "shy"}))["actions"] == []  # duplicate event
        assert brain.current_mood("g").name == "bubbly"
        await brain.handle_event(event("the concert yesterday was great"))
        prompt = await brain.voice_prompt(guild_id="g", channel_id="c", user_id="u1", user_name="Ann", text="sing for me")
        assert prompt.mood == "bubbly" and "bubbly" in prompt.system and len(prompt.history) == 4
        clock.now += 7 * 3600  # past any rotation interval
        await brain.tick()
        assert brain.current_mood("g").name != "bubbly"
    finally:
        await brain.close()


async def test_self_bots_and_allow_list():
    clock = Clock()
    brain = await make_brain(clock, ScriptedLLM(), self_user_id="miku-id", bot_allow_list=("friend-bot",))
    try:
        assert (await brain.handle_event(event("Miku hi", mentions_miku=True, author_id="miku-id")))["actions"] == []
        assert (await brain.handle_event(event("Miku hi", mentions_miku=True, author_is_self=True, author_id="x")))["actions"] == []
        assert (await brain.handle_event(event("Miku hi", mentions_miku=True, author_is_bot=True, author_id="other-bot")))["actions"] == []
        friend = await brain.handle_event(event("Miku hi", mentions_miku=True, author_is_bot=True, author_id="friend-bot"))
        assert friend["actions"][0]["type"] == "reply"
        assert brain.stats["ignored_self"] == 2 and brain.stats["ignored_bots"] == 1
    finally:
        await brain.close()


async def test_llm_failure_degrades_to_prompt_only_reply():
    clock = Clock()
    brain = await make_brain(clock, ScriptedLLM(fail=True))
    try:
        action = (await brain.handle_event(event("Miku?", mentions_miku=True)))["actions"][0]
        assert action["type"] == "reply" and action["text"] is None and action["prompt"]["user"] == "Ann: Miku?"
        assert brain.stats["llm_failures"] >= 1
    finally:
        await brain.close()


def test_event_validation_errors_are_clear():
    with pytest.raises(EventValidationError) as err:
        parse_event({"type": "message", "event_id": "e", "channel_id": "", "content": 5, "timestamp": "yesterday"})
    text = str(err.value)
    for field_name in ("message.channel_id", "message.message_id", "message.author_id", "message.timestamp", "message.content"):
        assert field_name in text, text
    with pytest.raises(EventValidationError, match="tag"):
        parse_event({"type": "reaction", "event_id": "e"})
    with pytest.raises(EventValidationError):
        parse_event("not a dict")
    ok = parse_event(event("hi", timestamp="2024-01-01T00:00:00Z", guild_id=None, attachments=[{"content_type": "image/png", "url": "u"}]))
    assert ok.timestamp == 1704067200.0 and ok.is_dm and ok.addressed_to_miku and ok.attachments[0].is_visual


async def test_failing_feature_check_keeps_chat_open_and_gpu_features_closed():
    clock = Clock()

    async def broken(feature: str) -> FeatureCheck:
        raise ConnectionError("controller unreachable")

    brain = await make_brain(clock, ScriptedLLM(), broken)
    try:
        assert (await brain.handle_event(event("Miku hello", mentions_miku=True)))["actions"][0]["type"] == "reply"
        clock.now += 30
        draw = (await brain.handle_event(event("Miku draw a cat", mentions_miku=True)))["actions"]
        assert draw[0]["type"] == "blocked" and draw[0]["feature"] == "image_generation"
    finally:
        await brain.close()
