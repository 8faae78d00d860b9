"""Autonomous messages thread onto a recent human message (DeltaBot #10) and post plainly otherwise.

Engine: a decision names the newest human message of its channel when it is within `reply_window_s`.
Host: that becomes the `send` action's `reply_to_message_id`. Client: a send with one is a Discord
reply (first part only), without one a plain message.
"""
from __future__ import annotations

from unittest.mock import AsyncMock

from bot_client.actions import ActionExecutor, ChatOps
from graph.autonomous import ActionKind
from tests.test_autonomous import CHAT, make_sim
from tests.test_autonomous_hosting import _guild, _message, _post, clock, host_factory  # noqa: F401


def test_a_join_replies_to_the_newest_human_message():
    sim = make_sim("bubbly", seed=1)
    decided = sim.run(20 * 60, talk_every=10)
    assert [d.action for d in decided] == [ActionKind.JOIN_CONVERSATION]
    newest = f"ev{sim.next_id - 1}"  # her own message (the simulator's echo) came after it
    assert decided[0].reply_to_event_id == newest
    assert decided[0].to_dict(include_debug=False)["reply_to_event_id"] == newest


def test_a_silence_break_posts_plainly():
    sim = make_sim("bubbly", seed=3)
    sim.say(1)
    decided = sim.run(4 * 3600, tick_every=60)
    assert [d.action for d in decided] == [ActionKind.BREAK_SILENCE]
    assert decided[0].reply_to_event_id is None  # the last human message is hours old


async def test_the_host_turns_it_into_a_discord_reply_target(host_factory, clock):  # noqa: F811
    host = await host_factory()
    guild, channel = _guild(), "4243"
    host.configure_server({"guild_id": guild, "allowed_channels": [channel]})
    for index in range(14):
        await _post(host, _message(guild, channel, index), clock)
    clock.now += 1.0
    assert await host.tick() == 1
    [action] = await host.take(0)
    assert action["reply_to_message_id"] == _message(guild, channel, 13)["message_id"]


async def test_client_send_replies_only_when_it_names_a_message():
    ops = AsyncMock(spec=ChatOps)
    executor = ActionExecutor(ops)
    event = {"channel_id": str(CHAT), "message_id": "999"}
    await executor.execute([{"type": "send", "channel_id": "10", "reply_to_message_id": "55", "text": "hi!"}])
    ops.reply.assert_awaited_once_with(10, 55, "hi!")
    ops.send.assert_not_awaited()
    ops.reset_mock()
    await executor.execute([{"type": "send", "channel_id": "10", "reply_to_message_id": None, "text": "hello"}], event)
    ops.send.assert_awaited_once_with(10, "hello")  # plain: the causing event's message is not implied
    ops.reply.assert_not_awaited()
