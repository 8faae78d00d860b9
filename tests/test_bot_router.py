"""Message routing and bad input: prompt-channel messages are spoken, others go to the brain, once each."""
from __future__ import annotations

from unittest.mock import AsyncMock

import pytest

from bot_client.actions import ActionExecutor, ChatOps
from bot_client.config import BotConfig
from bot_client.graph_api import FeatureState, GraphClient, GraphUnavailable
from bot_client.inputs import (
    Attachment,
    IncomingMessage,
    SeenMessages,
    check_prompt,
    clean_prompt,
    split_for_discord,
)
from bot_client.router import GRAPH_DOWN_REPLY, MessageRouter
from bot_client.session import SessionManager, SubmitResult, VoiceSession

BOT = 42


def msg(text="hello", mid=1, channel=10, **kw):
    return IncomingMessage(message_id=mid, channel_id=channel, guild_id=7, author_id=3, author_name="Len",
                           content=text, **kw)


def make(session_channel: int | None = 10):
    graph = AsyncMock(spec=GraphClient)
    graph.post_event.return_value = [{"type": "reply", "text": "Hi!"}]
    graph.features.return_value = [FeatureState("vision", True, "🎤 I can't look at images or videos right now!")]
    manager = AsyncMock(spec=SessionManager)
    session = AsyncMock(spec=VoiceSession)
    session.config = BotConfig()
    session.submit.return_value = SubmitResult(True)
    manager.by_prompt_channel.side_effect = lambda c: session if c == session_channel else None
    ops = AsyncMock(spec=ChatOps)
    router = MessageRouter(graph, manager, ActionExecutor(ops, graph), ops, bot_id=BOT, seen=SeenMessages(100))
    return router, graph, session, ops


async def test_prompt_is_spoken_and_acknowledged_with_a_microphone():
    router, graph, session, ops = make()
    assert await router.route(msg("sing something")) == "ok"
    session.submit.assert_awaited_once_with("sing something", kind="prompt")
    ops.react.assert_awaited_once_with(10, 1, "🎤")
    graph.post_event.assert_not_awaited()


async def test_duplicate_delivery_is_acted_on_once():
    router, graph, session, ops = make()
    assert await router.route(msg("hi", mid=5)) == "ok"
    assert await router.route(msg("hi", mid=5)) == "duplicate"
    assert await router.route(msg("hi", mid=6, channel=99)) == "event"
    assert await router.route(msg("hi", mid=6, channel=99)) == "duplicate"
    assert session.submit.await_count == 1 and graph.post_event.await_count == 1


async def test_only_emoji_is_a_valid_prompt():
    router, _, session, _ = make()
    assert await router.route(msg("🎶✨💙")) == "ok"
    session.submit.assert_awaited_once_with("🎶✨💙", kind="prompt")


async def test_only_an_attachment_gets_the_vision_blackout_message():
    router, _, session, ops = make()
    verdict = await router.route(msg("", attachments=(Attachment("https://cdn/x.png", "image/png"),)))
    assert verdict == "attachment_only"
    ops.reply.assert_awaited_once_with(10, 1, "🎤 I can't look at images or videos right now!")
    session.submit.assert_not_awaited()


@pytest.mark.parametrize("length, verdict", [(4000, "ok"), (4001, "too_long")])
async def test_prompt_length_limit(length, verdict):
    router, _, session, ops = make()
    assert await router.route(msg("a" * length)) == verdict
    if verdict == "too_long":
        session.submit.assert_not_awaited()
        assert "4001 characters" in ops.reply.await_args.args[2]


async def test_mentions_become_names_and_code_blocks_stay():
    router, _, session, _ = make()
    text = f"<@{BOT}> ask <@!77> about ```python\nprint('hi')\n``` in <#5>"
    names = {"<@!77>": "@Kaito", "<#5>": "#general"}
    await router.route(msg(text, mention_names=names, mentions_bot=True))
    spoken = session.submit.await_args.args[0]
    assert spoken == "ask @Kaito about ```python\nprint('hi')\n``` in #general"


async def test_only_a_mention_of_miku_is_ignored_quietly():
    router, _, session, ops = make()
    assert await router.route(msg(f"<@{BOT}>")) == "empty"
    session.submit.assert_not_awaited()
    ops.reply.assert_not_awaited()


async def test_refused_prompt_tells_the_user():
    router, _, session, ops = make()
    session.submit.return_value = SubmitResult(False, message="❌ Too many prompts are waiting")
    assert await router.route(msg("hi")) == "refused"
    ops.reply.assert_awaited_once_with(10, 1, "❌ Too many prompts are waiting")


async def test_other_channels_go_to_the_brain_and_its_actions_run():
    router, graph, _, ops = make()
    assert await router.route(msg("hey miku", channel=99, mentions_bot=True)) == "event"
    event = graph.post_event.await_args.args[0]
    assert event["type"] == "message" and event["event_id"] == "message:1" and event["mentions_miku"] is True
    ops.reply.assert_awaited_once_with(99, 1, "Hi!")


async def test_bots_in_the_prompt_channel_are_not_prompts():
    router, graph, session, _ = make()
    await router.route(msg("beep", author_is_bot=True))
    session.submit.assert_not_awaited()
    graph.post_event.assert_awaited_once()


async def test_graph_down_mid_session_tells_only_people_who_talked_to_her():
    router, graph, _, ops = make(session_channel=None)
    graph.post_event.side_effect = GraphUnavailable("down")
    assert await router.route(msg("random chatter", mid=1)) == "event_failed"
    ops.reply.assert_not_awaited()
    assert await router.route(msg("@miku hi", mid=2, mentions_bot=True)) == "event_failed"
    ops.reply.assert_awaited_once_with(10, 2, GRAPH_DOWN_REPLY)


async def test_own_messages_are_only_stored_as_history():
    router, graph, session, ops = make()
    assert await router.route(IncomingMessage(1, 10, 7, BOT, "Miku", "hi")) == "self"
    assert graph.post_event.await_args.args[0]["author_is_self"] is True
    session.submit.assert_not_awaited()
    ops.reply.assert_not_awaited()


def test_clean_prompt_handles_custom_emoji_and_control_characters():
    assert clean_prompt("<:miku_wave:123> hi\x00\x07 there") == ":miku_wave: hi there"


def test_check_prompt_verdicts():
    assert check_prompt(msg("   "), 4000).verdict == "empty"
    assert check_prompt(msg("", attachments=(Attachment("u"),)), 4000).verdict == "attachment_only"


def test_split_for_discord_loses_nothing():
    text = "\n".join(f"line {i} " + "x" * 50 for i in range(200))
    parts = split_for_discord(text)
    assert all(len(p) <= 2000 for p in parts)
    assert "".join(parts).replace("\n", "") == text.replace("\n", "")


def test_seen_messages_is_bounded():
    seen = SeenMessages(3)
    assert all(seen.first_time(i) for i in range(5))
    assert len(seen) == 3 and seen.first_time(0)  # forgotten, so it counts as new
