"""A realistic multi-channel day (seeded) replayed through the brain on a fake clock: the rules that
must always hold — no self-replies, no replies to bots, one decision per message despite duplicate
events, every mention answered (or the user told why not), reply rates within the band, per-chat
rate limits and Heart Flow limits never exceeded."""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
from pathlib import Path

import pytest

from graph.brain import Brain, BrainConfig
from graph.brain.daylog import (
    ALLOWED_BOT_ID,
    DeterministicLLM,
    ReplayClock,
    VoiceSessionBlackouts,
    generate_day,
    replay,
)
from graph.brain.heartflow import GlobalState

REPO = Path(__file__).resolve().parents[1]
ANSWERS = {"reply", "draw", "look", "blocked", "mute", "rate_limited", "queue"}
SPOKEN = {"reply", "draw", "look", "blocked", "mute"}  # actions that post something in the chat


def run_day(seed: int, scale: float = 1.0, brain_seed: int = 3):
    async def go():
        day = generate_day(seed, scale=scale)
        clock = ReplayClock()
        config = dataclasses.replace(BrainConfig.load(REPO / "configs" / "brain.yaml"), memory_path=":memory:", bot_allow_list=(ALLOWED_BOT_ID,))
        llm = DeterministicLLM()
        blackouts = VoiceSessionBlackouts(clock, day.voice_session)
        brain = await Brain.create(config, complete=llm, check_feature=blackouts, clock=clock, rng=random.Random(brain_seed))
        try:
            records = await replay(brain, day, clock)
            return day, records, brain.snapshot(), list(brain.heartflow.transitions_log), config
        finally:
            await brain.close()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def day_run():
    return run_day(seed=7)


def test_heart_flow_limits_never_exceeded(day_run):
    day, records, snapshot, transitions, _ = day_run
    assert len(records) >= 3000
    assert all(r.within_limits for r in records)
    assert {s for _, s in transitions} >= {GlobalState.NORMAL_CHAT, GlobalState.PEEKING}  # states did change
    assert snapshot["stats"]["focus_cycles"] > 0


def test_never_reacts_to_itself_or_other_bots(day_run):
    day, records, _, _, _ = day_run
    messages = day.unique_messages
    for record in records:
        event = record.event
        if event["type"] != "message":
            continue
        if event.get("author_is_self") or (event["author_is_bot"] and event["author_id"] != ALLOWED_BOT_ID):
            assert record.actions == [], event
    targets = {a.get("reply_to_message_id") or a.get("message_id") for r in records for a in r.actions}
    for message_id, event in messages.items():
        if event.get("author_is_self") or (event["author_is_bot"] and event["author_id"] != ALLOWED_BOT_ID):
            assert message_id not in targets
    allowed_mentions = [m for m in messages.values() if m["author_id"] == ALLOWED_BOT_ID and m["mentions_miku"]]
    assert allowed_mentions and all(m["message_id"] in targets for m in allowed_mentions)


def test_each_message_decided_once(day_run):
    day, records, snapshot, _, _ = day_run
    decided = collections.Counter()
    for record in records:
        if record.event["type"] == "message" and record.actions and not all(a["type"] == "queue" for a in record.actions):
            decided[record.event["message_id"]] += 1
    assert decided and max(decided.values()) == 1
    replies = collections.Counter(a["reply_to_message_id"] for r in records for a in r.actions if a["type"] == "reply")
    assert max(replies.values()) == 1
    assert snapshot["stats"]["duplicates"] >= 60  # the log really has duplicate deliveries


def test_every_mention_answered_or_told(day_run):
    day, records, _, _, _ = day_run
    answers = collections.defaultdict(list)
    for record in records:
        for action in record.actions:
            if action["type"] in ANSWERS:
                answers[action.get("reply_to_message_id") or action.get("message_id")].append(action["type"])
    addressed = [
        m for m in day.unique_messages.values()
        if not m["author_is_bot"] and not m.get("author_is_self") and (m["mentions_miku"] or m["reply_to_miku"] or m["guild_id"] is None)
        and not m["content"].startswith("!")
    ]
    assert len(addressed) > 150
    for m in addressed:
        kinds = answers[m["message_id"]]
        assert kinds, f"unanswered: {m}"
        if "queue" in kinds:  # held during the voice session, answered once it ended
            assert set(kinds) - {"queue"} & SPOKEN, m
    kinds = collections.Counter(k for ks in answers.values() for k in ks)
    assert kinds["queue"] > 0 and kinds["rate_limited"] > 0 and kinds["draw"] > 0
    told = [a for r in records for a in r.actions if a["type"] == "rate_limited" and a["message"]]
    assert told, "a rate-limited user is told at least once"
    for action in (a for r in records for a in r.actions if a["type"] == "queue"):
        assert action["message"]  # the user hears that the message waits


def test_voice_session_blocks_draw_with_controller_message(day_run):
    day, records, _, _, _ = day_run
    start, end = day.voice_session
    blocked = [(r, a) for r in records for a in r.actions if a["type"] == "blocked"]
    assert blocked
    for record, action in blocked:
        assert start <= record.delivered_at < end
        assert action["feature"] == "image_generation" and "voice chat" in action["message"]
    in_session = [a for r in records if start <= r.delivered_at < end for a in r.actions]
    assert not [a for a in in_session if a["type"] in ("reply", "draw", "look")]


def test_reply_rate_within_band_and_rate_limit(day_run):
    day, records, _, _, config = day_run
    hf = config.heart_flow
    humans = collections.Counter(m["channel_id"] for m in day.unique_messages.values() if not m["author_is_bot"] and m["guild_id"])
    spoken = collections.defaultdict(list)
    for record in records:
        for action in record.actions:
            if action["type"] in SPOKEN and record.event.get("channel_id"):
                spoken[record.event["channel_id"]].append(record.delivered_at)
    rates = {c: len(spoken[c]) / n for c, n in humans.items()}
    busy = [c for c, n in humans.items() if n >= 400]
    quiet = [c for c, n in humans.items() if n < 100]
    assert busy and quiet
    for channel in busy + quiet:
        assert hf.reply_ratio_min <= rates[channel] <= hf.reply_ratio_max, (channel, rates[channel], humans[channel])
    for channel, times in spoken.items():
        times.sort()
        for i in range(len(times) - hf.rate_limit_replies):
            # queued replays after the session are exempt: they answer old messages in one go
            if times[i] >= day.voice_session[1] + 60 or times[i + hf.rate_limit_replies] < day.voice_session[1]:
                assert times[i + hf.rate_limit_replies] - times[i] >= hf.rate_limit_window_s or channel.startswith("dm"), (channel, i)


def test_judge_prefilter_saves_calls_on_the_replayed_day(day_run):
    """The seed's layered pre-filter skips judges that cannot say yes; the replayed day counts them."""
    _, _, snapshot, _, _ = day_run
    judges = snapshot["judges"]
    reasons = judges["saved_by_reason"]
    assert judges["saved_by_prefilter"] == sum(reasons.values()) > 0
    assert reasons.get("description does not fit the message", 0) > 0  # most chatter is not a draw request
    assert judges["calls"] > 0  # and the judges that can say yes still run


def test_replay_is_deterministic():
    first = run_day(seed=21, scale=0.25)
    second = run_day(seed=21, scale=0.25)
    assert [r.actions for r in first[1]] == [r.actions for r in second[1]]
    other = run_day(seed=21, scale=0.25, brain_seed=4)
    assert [r.actions for r in first[1]] != [r.actions for r in other[1]]
