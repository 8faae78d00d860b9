"""The message buffer: a user's multi-part message (lines, images) within the window is decided once,
as one. Time is a fake clock whose `sleep` the test releases: no real sleeps, no timing."""
from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import pytest

from graph.brain import Brain, BrainConfig
from graph.brain.buffer import MessageBuffer, merge_parts
from graph.brain.events import parse_event

REPO = Path(__file__).resolve().parents[1]


class FakeTime:
    """A clock plus the `sleep` the buffer awaits; `advance` wakes the sleepers that are due."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now
        self.sleepers: list[tuple[float, asyncio.Future]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for entry in list(self.sleepers):
            if entry[0] <= self.now:
                self.sleepers.remove(entry)
                entry[1].set_result(None)

    async def until_sleeping(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.sleepers) < count:
                await asyncio.sleep(0)


def part(n: int, text: str, author: str = "u1", **extra) -> dict:
    return {"type": "message", "event_id": f"e{n}", "guild_id": "g", "channel_id": "c", "message_id": f"m{n}",
            "author_id": author, "author_name": author.upper(), "content": text, "timestamp": 1_700_000_000.0 + n, **extra}


async def test_parts_within_the_window_are_handed_on_as_one():
    time = FakeTime()
    buffer = MessageBuffer(1.5, clock=time, sleep=time.sleep)
    first = asyncio.create_task(buffer.submit(parse_event(part(1, "hey", mentions_miku=True))))
    await time.until_sleeping(1)
    time.advance(1.0)  # within the window
    second = asyncio.create_task(buffer.submit(parse_event(part(2, "", attachments=[{"content_type": "image/png", "url": "https://x/1.png"}]))))
    await time.until_sleeping(1)
    time.advance(1.0)  # the first part's wait is over, but the second restarted the window
    other = asyncio.create_task(buffer.submit(parse_event(part(3, "unrelated", author="u2"))))
    third = asyncio.create_task(buffer.submit(parse_event(part(4, "what is this?"))))
    await time.until_sleeping(2)
    assert await first is None and not second.done()
    time.advance(1.5)
    merged = await third
    assert await second is None
    assert merged.message_id == "m4" and merged.content == "hey\nwhat is this?"  # empty image-only text dropped
    assert merged.mentions_miku and len(merged.attachments) == 1
    assert (await other).content == "unrelated"  # another author is its own message
    assert buffer.merged == 2 and buffer.waiting() == 0


async def test_max_parts_and_max_wait_bound_the_burst_and_a_stuck_clock_never_spins():
    time = FakeTime()
    buffer = MessageBuffer(1.0, clock=time, sleep=time.sleep, max_parts=3, max_wait_s=2.0)
    tasks = [asyncio.create_task(buffer.submit(parse_event(part(i, f"line {i}")))) for i in range(3)]
    results = await asyncio.gather(*tasks[2:])  # the third part fills the burst: handed on at once
    assert results[0].content == "line 0\nline 1\nline 2"
    await time.until_sleeping(2)
    time.advance(1.0)
    assert await tasks[0] is None and await tasks[1] is None

    # a part every 0.9 s would keep the window open forever: max_wait_s ends it
    held = [asyncio.create_task(buffer.submit(parse_event(part(10, "a"))))]
    await time.until_sleeping(1)
    time.advance(0.9)
    held.append(asyncio.create_task(buffer.submit(parse_event(part(11, "b")))))
    await time.until_sleeping(1)
    time.advance(0.9)
    held.append(asyncio.create_task(buffer.submit(parse_event(part(12, "c")))))
    await time.until_sleeping(1)
    time.advance(0.2)  # 2.0 s after the first part
    assert (await held[2]).content == "a\nb\nc"

    frozen = MessageBuffer(1.0, clock=lambda: 5.0, sleep=lambda s: asyncio.sleep(0))
    assert (await frozen.submit(parse_event(part(20, "x")))).content == "x"  # ends, does not loop
    with pytest.raises(ValueError):
        MessageBuffer(2.0, clock=time, max_wait_s=1.0)


def test_merge_keeps_the_newest_id_and_any_address():
    parts = [parse_event(part(1, "a", reply_to_miku=True, reply_to_message_id="old", mentioned_user_ids=["x"])),
             parse_event(part(2, "b", mentioned_user_ids=["x", "y"]))]
    merged = merge_parts(parts)
    assert (merged.message_id, merged.event_id, merged.reply_to_miku, merged.reply_to_message_id) == ("m2", "e2", True, "old")
    assert merged.mentioned_user_ids == ("x", "y") and merged.timestamp == parts[1].timestamp


async def test_the_brain_answers_a_multi_part_mention_once():
    time = FakeTime()
    prompts = []

    async def llm(prompt, system, options=None):
        prompts.append(prompt)
        return "hi!"

    base = BrainConfig.load(REPO / "configs" / "brain.yaml")
    config = dataclasses.replace(base, memory_path=":memory:", message_buffer_s=1.5)
    brain = await Brain.create(config, complete=llm, clock=time, rng=random.Random(1), sleep=time.sleep)
    try:
        async with asyncio.timeout(30):  # a bug here must fail, not hang
            first = asyncio.create_task(brain.handle_event(part(1, "Miku!", mentions_miku=True)))
            await time.until_sleeping(1)
            time.advance(0.5)
            second = asyncio.create_task(brain.handle_event(part(2, "how was the concert yesterday?")))
            await time.until_sleeping(2)
            time.advance(1.1)  # the first part's wait ends: the second took it over
            assert (await first) == {"actions": []}
            time.advance(0.4)  # 1.5 s after the second part
            actions = (await second)["actions"]
        replies = [a for a in actions if a["type"] == "reply"]
        assert len(replies) == 1 and replies[0]["reply_to_message_id"] == "m2"
        assert prompts[-1] == "user: U1: Miku! how was the concert yesterday?"  # one turn, the parts not repeated as history
        assert brain.stats["buffered_parts"] == 1
        assert await brain.memory.count() == 2  # both parts are in memory on their own
        # commands are never held
        assert (await brain.handle_event(part(3, "!mood")))["actions"][0]["text"].startswith("I'm feeling")
    finally:
        await brain.close()
