"""Carrying out the brain's actions and replaying the held queue, with AsyncMock(spec=...) stand-ins."""
from __future__ import annotations

from unittest.mock import AsyncMock

from bot_client.actions import ActionExecutor, ChatOps, QueueReplayer
from bot_client.graph_api import (
    GraphClient,
    GraphError,
    GraphUnavailable,
    QueuedMessage,
)

EVENT = {"type": "message", "event_id": "message:55", "channel_id": "10", "message_id": "55", "guild_id": "7",
         "author_id": "3", "content": "draw me a cat", "timestamp": 1.0}


def make():
    ops = AsyncMock(spec=ChatOps)
    graph = AsyncMock(spec=GraphClient)
    return ops, graph, ActionExecutor(ops, graph)


async def test_reply_is_a_discord_reply_to_the_causing_message():
    ops, _, ex = make()
    report = await ex.execute([{"type": "reply", "channel_id": "10", "reply_to_message_id": "55", "text": "Hi!"}], EVENT)
    ops.reply.assert_awaited_once_with(10, 55, "Hi!")
    assert report.done == ["reply"]


async def test_reply_without_explicit_target_answers_the_event_message():
    ops, _, ex = make()
    await ex.execute([{"type": "reply", "text": "Hi!"}], EVENT)
    ops.reply.assert_awaited_once_with(10, 55, "Hi!")


async def test_long_reply_is_split_and_only_the_first_part_is_a_reply():
    ops, _, ex = make()
    text = ("word " * 900).strip()  # 4499 characters
    await ex.execute([{"type": "reply", "channel_id": "10", "reply_to_message_id": "55", "text": text}], EVENT)
    parts = [ops.reply.await_args.args[2]] + [c.args[1] for c in ops.send.await_args_list]
    assert all(len(p) <= 2000 for p in parts) and len(parts) == 3
    assert " ".join(parts) == text


async def test_send_react_and_blocked():
    ops, _, ex = make()
    report = await ex.execute([
        {"type": "send", "channel_id": "11", "text": "hello"},
        {"type": "react", "channel_id": "10", "message_id": "55", "emoji": "💙"},
        {"type": "blocked", "channel_id": "10", "reply_to_message_id": "55", "feature": "image_generation",
         "message": "🎤 I can't draw right now, I'm talking in voice chat!"},
        {"type": "blocked", "channel_id": "10", "feature": "bipolar_mode", "message": ""},  # silent blackout
    ], EVENT)
    ops.send.assert_awaited_once_with(11, "hello")
    assert [c.args for c in ops.react.await_args_list] == [(10, 55, "💙"), (10, 55, "🎤")]  # the plan's 🎤 on the request
    ops.reply.assert_awaited_once_with(10, 55, "🎤 I can't draw right now, I'm talking in voice chat!")
    assert report.done == ["send", "react", "blocked"] and report.skipped == ["blocked"]


async def test_one_failing_action_does_not_stop_the_rest():
    ops, _, ex = make()
    ops.send.side_effect = RuntimeError("channel deleted")
    report = await ex.execute([{"type": "send", "channel_id": "11", "text": "x"},
                               {"type": "react", "message_id": "55", "emoji": "👍"}], EVENT)
    assert report.failed and report.failed[0][0] == "send"
    ops.react.assert_awaited_once_with(10, 55, "👍")


async def test_unknown_actions_are_skipped_not_fatal():
    ops, _, ex = make()
    report = await ex.execute([{"type": "teleport"}], EVENT)
    assert report.skipped == ["teleport"]


async def test_queue_holds_the_message_in_the_controller_and_posts_its_warning():
    ops, graph, ex = make()
    graph.enqueue.return_value = {"queued": True, "warning": "⚠️ 1 old message was dropped", "duplicate": False}
    report = await ex.execute([{"type": "queue", "channel_id": "10", "message_id": "55", "event_id": "message:55",
                                "message": None}], EVENT)
    graph.enqueue.assert_awaited_once_with(EVENT)
    ops.send.assert_awaited_once_with(10, "⚠️ 1 old message was dropped")
    assert report.queued


async def test_queue_after_the_session_ended_is_handled_now():
    ops, graph, ex = make()
    graph.enqueue.return_value = {"queued": False, "reason": "no voice session"}
    graph.post_event.return_value = [{"type": "reply", "text": "Sure!"}]
    await ex.execute([{"type": "queue", "channel_id": "10", "message_id": "55"}], EVENT)
    ops.reply.assert_awaited_once_with(10, 55, "Sure!")


async def test_rate_limited_reacts_and_explains():
    ops, _, ex = make()
    await ex.execute([{"type": "rate_limited", "channel_id": "10", "message_id": "55", "emoji": "⏳",
                       "message": "Give me a second!"}], EVENT)
    ops.react.assert_awaited_once_with(10, 55, "⏳")
    ops.reply.assert_awaited_once_with(10, 55, "Give me a second!")


async def test_replay_goes_in_order_and_acks_each_after_its_actions():
    ops, graph, ex = make()
    first = dict(EVENT, event_id="message:1", message_id="1")
    second = dict(EVENT, event_id="message:2", message_id="2")
    batches = [(True, [QueuedMessage("1", first), QueuedMessage("2", second)]), (True, [])]
    graph.replay_batch.side_effect = batches
    graph.post_event.side_effect = [[{"type": "reply", "text": "one"}], [{"type": "reply", "text": "two"}]]
    order = []
    ops.reply.side_effect = lambda c, m, t: order.append(("reply", t))
    graph.ack_queued.side_effect = lambda ids: order.append(("ack", ids))
    report = await QueueReplayer(graph, ex).replay()
    assert order == [("reply", "one"), ("ack", ["1"]), ("reply", "two"), ("ack", ["2"])]
    assert report.complete and report.acked == 2


async def test_replay_stops_without_acking_when_the_graph_goes_away():
    ops, graph, ex = make()
    graph.replay_batch.return_value = (True, [QueuedMessage("1", EVENT), QueuedMessage("2", EVENT)])
    graph.post_event.side_effect = GraphUnavailable("down")
    report = await QueueReplayer(graph, ex).replay()
    assert not report.complete and report.acked == 0
    graph.ack_queued.assert_not_awaited()


async def test_replay_waits_while_a_session_holds_the_queue():
    _, graph, ex = make()
    graph.replay_batch.return_value = (False, [])
    report = await QueueReplayer(graph, ex).replay()
    assert not report.complete and "session" in report.reason
    graph.post_event.assert_not_awaited()


async def test_a_malformed_stored_event_is_acked_so_it_cannot_block_the_queue():
    _, graph, ex = make()
    graph.replay_batch.side_effect = [(True, [QueuedMessage("1", {"type": "message"})]), (True, [])]
    graph.post_event.side_effect = GraphError("invalid event: event_id: Field required", 422)
    report = await QueueReplayer(graph, ex).replay()
    graph.ack_queued.assert_awaited_once_with(["1"])
    assert report.complete
