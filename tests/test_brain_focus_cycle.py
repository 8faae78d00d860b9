"""Heart Flow's focus cycle as the seed runs it: the three stages gathered in parallel (or serially by
config), memory activation from SQLite FTS5 into the think and plan prompts, the re-plan chance, emoji
and no_reply counting, the sub-flow manager's LLM evaluation and random deactivation, and interest
that weighs memory. No sleeps: every wait is on an event the test controls."""
from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
from pathlib import Path

from graph.brain import Brain, BrainConfig
from graph.brain.heartflow import ChatState, FocusStages, GlobalState, HeartFlow, HeartFlowConfig
from graph.brain.judge import JUDGE_SYSTEM
from graph.brain.memory import MemoryStore, StoredMessage, search_terms

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingLLM:
    """Judges say `judge`, plans follow `plan`, everything else is a thought; every prompt is kept."""

    def __init__(self, plan: str = '{"action": "no_reply"}', judge: str = "no"):
        self.plan, self.judge = plan, judge
        self.fail = False
        self.prompts: list[tuple[str, str | None]] = []

    async def __call__(self, prompt: str, system: str | None, options=None) -> str:
        if self.fail:
            raise ConnectionError("the LLM is down")
        self.prompts.append((prompt, system))
        if system == JUDGE_SYSTEM:
            return self.judge
        if "Answer with JSON only" in prompt:
            return self.plan
        return "a thought"

    def of_kind(self, marker: str) -> list[str]:
        return [p for p, _ in self.prompts if marker in p]


async def make_brain(clock: Clock, llm, **config) -> Brain:
    base = BrainConfig.load(REPO / "configs" / "brain.yaml")
    cfg = dataclasses.replace(base, memory_path=":memory:", **config)
    return await Brain.create(cfg, complete=llm, clock=clock, rng=random.Random(5))


def message(n: int, text: str, channel: str = "c", author: str = "u1", **extra) -> dict:
    return {"type": "message", "event_id": f"e{channel}{n}", "guild_id": "g", "channel_id": channel,
            "message_id": f"m{channel}{n}", "author_id": author, "author_name": "Ann", "content": text,
            "timestamp": 1_700_000_000.0 + n, **extra}


def focus(brain: Brain, chat: str = "c") -> None:
    sub = brain.heartflow.subflow(chat, brain.clock())
    brain.heartflow.observe(sub, 10.0, brain.clock())
    assert sub.state is ChatState.FOCUSED


# -- the three stages -------------------------------------------------------------------------------


async def test_parallel_stages_all_start_before_any_finishes_and_serial_runs_in_order():
    order: list[str] = []

    def stage(name: str, release: asyncio.Event):
        async def run(*_):
            order.append(f"start {name}")
            await release.wait()
            order.append(f"end {name}")
            return name
        return run

    gates = {n: asyncio.Event() for n in ("modify", "memory", "think")}
    runner = FocusStages(parallel=True, clock=Clock())
    task = asyncio.create_task(runner.run(stage("modify", gates["modify"]), stage("memory", gates["memory"]), stage("think", gates["think"])))
    while len(order) < 3:
        await asyncio.sleep(0)
    assert sorted(order) == ["start memory", "start modify", "start think"]  # all three running at once
    for gate in gates.values():
        gate.set()
    result = await task
    assert (result.activation, result.memories, result.thought) == ("modify", "memory", "think")
    assert set(result.seconds) == {"action_modification", "memory_activation", "processors"}

    order.clear()
    for gate in gates.values():
        gate.set()
    seen_memories = []

    async def think(memories):
        seen_memories.append(memories)
        return "t"

    serial = FocusStages(parallel=False, clock=Clock())
    await serial.run(stage("modify", gates["modify"]), stage("memory", gates["memory"]), think)
    assert order == ["start modify", "end modify", "start memory", "end memory"] and seen_memories == ["memory"]


async def test_memory_activation_brings_relevant_older_messages_into_think_and_plan():
    clock = Clock()
    llm = RecordingLLM()
    brain = await make_brain(clock, llm, parallel_stages=False)
    try:
        old = [StoredMessage(f"old{i}", "g", "c", "u2", "Bo", False, False, text, clock.now - 86400 + i)
               for i, text in enumerate(["my grandma grows giant leeks in her garden", "pizza again", "the weather is grey"])]
        old.append(StoredMessage("elsewhere", "g", "other", "u2", "Bo", False, False, "leeks leeks leeks", clock.now - 5000))
        await brain.memory.add_many(old)
        focus(brain)
        await brain.handle_event(message(1, "does anyone know how to grow leeks?"))
        think = llm.of_kind("think privately")[-1]
        plan = llm.of_kind("Answer with JSON only")[-1]
        for prompt in (think, plan):  # serial: this cycle's memories reach both
            assert "You remember from earlier in this chat:\n- Bo: my grandma grows giant leeks in her garden" in prompt
            assert "pizza" not in prompt and "leeks leeks leeks" not in prompt  # other topics, other channels
    finally:
        await brain.close()


async def test_parallel_think_gets_the_previous_cycles_memories_and_plan_this_cycles():
    clock = Clock()
    llm = RecordingLLM()
    brain = await make_brain(clock, llm, parallel_stages=True)
    try:
        await brain.memory.add(StoredMessage("old", "g", "c", "u2", "Bo", False, False, "the karaoke night was wild", clock.now - 86400))
        focus(brain)
        await brain.handle_event(message(1, "karaoke again this friday?"))
        assert "karaoke night was wild" in llm.of_kind("Answer with JSON only")[-1]
        assert "You remember" not in llm.of_kind("think privately")[-1]  # ran alongside the search
        clock.now += 60
        await brain.handle_event(message(2, "who is coming?"))
        assert "karaoke night was wild" in llm.of_kind("think privately")[-1]  # the previous cycle's memories
    finally:
        await brain.close()


async def test_replan_probability_zero_leaves_new_messages_for_the_next_cycle():
    clock = Clock()
    gate, started = asyncio.Event(), asyncio.Event()

    class GatedLLM(RecordingLLM):
        async def __call__(self, prompt, system, options=None):
            if "Answer with JSON only" in prompt and not gate.is_set():
                started.set()
                await gate.wait()
            return await super().__call__(prompt, system, options)

    brain = await make_brain(clock, GatedLLM(), replan_probability=0.0)
    try:
        focus(brain)
        first = asyncio.create_task(brain.handle_event(message(1, "what about the album")))
        await started.wait()
        second = asyncio.create_task(brain.handle_event(message(2, "track three is the best", author="u2")))
        while not brain._focus["c"].pending:
            await asyncio.sleep(0)
        gate.set()
        await first, await second
        assert brain.stats["replans"] == 0 and brain.stats["replans_skipped"] == 1
        assert brain.stats["focus_cycles"] == 2  # the waiting message got its own cycle
    finally:
        await brain.close()


# -- emoji and no_reply ---------------------------------------------------------------------------------


async def test_emoji_reactions_keep_a_focused_chat_and_five_silent_cycles_end_it():
    clock = Clock()
    llm = RecordingLLM(plan='{"action": "no_reply", "parallel": ["emoji"]}', judge="yes")
    brain = await make_brain(clock, llm)
    try:
        focus(brain)
        sub = brain.heartflow.subflows["c"]
        for i in range(8):  # reacting every time: she is taking part, the chat stays focused
            clock.now += 30
            actions = (await brain.handle_event(message(i, f"so cute number {i}")))["actions"]
            assert [a["type"] for a in actions] == ["react"]
        assert sub.state is ChatState.FOCUSED and sub.consecutive_no_reply == 0
        llm.plan, llm.judge = '{"action": "no_reply"}', "no"
        for i in range(8, 12):
            clock.now += 30
            await brain.handle_event(message(i, f"chatting along {i}"))
        assert sub.state is ChatState.FOCUSED and sub.consecutive_no_reply == 4
        clock.now += 30
        await brain.handle_event(message(12, "chatting along 12"))
        assert sub.state is ChatState.ABSENT  # the fifth no_reply in a row
    finally:
        await brain.close()


# -- the sub-flow manager --------------------------------------------------------------------------------


async def test_llm_evaluation_joins_absent_chats_within_the_limits_and_leaves_dull_ones():
    clock = Clock()
    llm = RecordingLLM(judge="yes")
    base = BrainConfig.load(REPO / "configs" / "brain.yaml")
    brain = await make_brain(clock, llm, heart_flow=dataclasses.replace(base.heart_flow, random_deactivation_per_hour=0.0))
    try:
        hf = brain.heartflow
        hf.set_state(GlobalState.PEEKING, clock.now)  # CHAT limit 1
        for chat in ("a", "b"):
            await brain.handle_event(message(1, "anyone here like concerts and piano music tonight", channel=chat))
            hf.subflows[chat].state = ChatState.ABSENT
            hf.subflows[chat].interest = 1.0  # above evaluation_min_interest, below chat_threshold
        clock.now += hf.config.evaluation_interval_s
        result = await brain.tick()
        assert result["evaluated"] == {"joined": ["a"], "left": []}  # one slot: only one may join
        assert hf.within_limits() and hf.subflows["a"].state is ChatState.CHAT
        assert any("join" in p for p in llm.of_kind("Should Miku")), llm.prompts[-1]
        llm.judge = "no"  # the LLM finds chat "a" dull now: she leaves it
        clock.now += hf.config.evaluation_interval_s
        llm.fail = True  # a failed evaluation changes nothing
        clock.now += hf.config.evaluation_interval_s
        assert (await brain.tick())["evaluated"] == {"joined": [], "left": []} and hf.subflows["a"].state is ChatState.CHAT
        llm.fail = False
        clock.now += hf.config.evaluation_interval_s
        result = await brain.tick()
        assert "a" in result["evaluated"]["left"] and hf.subflows["a"].state is ChatState.ABSENT
    finally:
        await brain.close()


def test_random_deactivation_uses_the_injected_rng_and_a_rate_per_hour():
    clock = Clock(0.0)
    config = HeartFlowConfig(durations_s={s: (1e9, 1e9) for s in GlobalState}, random_deactivation_per_hour=1.0)
    outcomes = []
    for seed in (1, 1, 2):
        hf = HeartFlow(config, clock=clock, rng=random.Random(seed))
        for chat in "abc":
            hf.observe(hf.subflow(chat, 0.0), 2.0, 0.0)  # CHAT
        assert hf.random_deactivation(0.0) == []  # no time passed, no chance
        outcomes.append(hf.random_deactivation(3600.0))
        assert all(hf.subflows[c].state is ChatState.ABSENT for c in outcomes[-1])
    assert outcomes[0] == outcomes[1]  # same seed, same chats drift off
    hf = HeartFlow(dataclasses.replace(config, random_deactivation_per_hour=0.0), clock=clock, rng=random.Random(1))
    hf.observe(hf.subflow("a", 0.0), 2.0, 0.0)
    assert hf.random_deactivation(1e6) == []


async def test_interest_weighs_memory_of_the_topic():
    clock = Clock()
    brain = await make_brain(clock, None)
    try:
        await brain.memory.add_many(StoredMessage(f"o{i}", "g", "c", "u2", "Bo", False, False, f"the marathon training day {i}", clock.now - 900 + i) for i in range(5))
        ev = message(1, "marathon training tomorrow")
        from graph.brain.events import parse_event

        parsed = parse_event(ev)
        await brain.memory.add(StoredMessage(parsed.message_id, "g", "c", "u1", "Ann", False, False, parsed.content, parsed.timestamp))
        sub = brain.heartflow.subflow("c", clock.now)
        known = await brain._message_interest(parsed, sub, 0.0)
        fresh = await brain._message_interest(parse_event(message(2, "quantum gardening whenever")), sub, 0.0)
        assert round(known - fresh, 6) == round(brain.config.heart_flow.weight_memory, 6)  # 3 of 3 hits
    finally:
        await brain.close()


# -- memory (FTS5) ------------------------------------------------------------------------------------------


async def test_fts_index_follows_inserts_and_retention_and_is_built_for_an_old_database(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # a database from before the index existed
        db.executescript("""CREATE TABLE messages (id INTEGER PRIMARY KEY, message_id TEXT NOT NULL UNIQUE, guild_id TEXT,
            channel_id TEXT NOT NULL, author_id TEXT NOT NULL, author_name TEXT NOT NULL DEFAULT '', is_bot INTEGER NOT NULL DEFAULT 0,
            is_self INTEGER NOT NULL DEFAULT 0, content TEXT NOT NULL DEFAULT '', ts REAL NOT NULL, importance REAL NOT NULL DEFAULT 0);
            INSERT INTO messages (message_id, channel_id, author_id, content, ts) VALUES ('m1', 'c', 'u', 'violin lessons', 100);""")
    store = await MemoryStore.open(path)
    try:
        assert [m.message_id for m in await store.relevant("c", ["violin?"], now=200)] == ["m1"]  # back-filled
        await store.add(StoredMessage("m2", None, "c", "u", "U", False, False, "violin recital", 150))
        assert {m.message_id for m in await store.relevant("c", ["violin"], now=200)} == {"m1", "m2"}
        assert await store.topic_hits("c", ["violin"], exclude="m2") == 1
        await store.prune(200, 75)  # drops m1
        assert [m.message_id for m in await store.relevant("c", ["violin"], now=200)] == ["m2"]
        assert await store.relevant("c", ["the and of"], now=200) == []  # no content words: no search
        assert await store.relevant("c", ['violin" OR chan : "x'], now=200) != []  # quotes cannot break the query
    finally:
        await store.close()
    assert search_terms(["Is THE Piano-song good?"]) == ["piano", "song", "good"]
