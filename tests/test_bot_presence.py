"""Presence changes and member joins for the autonomous engine: the plain event builders, the config
switch and the intents it asks for, the events cog's handlers (AsyncMock(spec=discord.Member) stand-ins
with real discord.py activity objects), and one flow against the real local graph (`graph_server`):
a presence event built here is accepted and shows up in `GET /v1/autonomous/explain`.
"""
from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import AsyncMock, MagicMock

import aiohttp
import discord
import pytest

from bot_client.actions import ChatOps, ExecutionReport
from bot_client.bot import GuardedExecutor, MikuBot, minimal_intents
from bot_client.cogs.events import EventsCog
from bot_client.config import (
    AutonomousConfig,
    AutonomousServerConfig,
    BotConfig,
    ConfigError,
    load_config,
)
from bot_client.graph_api import GraphClient, GraphUnavailable
from bot_client.presence import (
    ACTIVITY_STARTED,
    CAME_ONLINE,
    came_online,
    member_join_event,
    presence_event,
    started_activity,
)

ROOT = Path(__file__).resolve().parent.parent

GUILD = 742000000000000011  # unique to this file: the graph is shared by the whole test session
HOME, OTHER = 742000000000000101, 742000000000000102
UNCONFIGURED_GUILD = 742000000000000012
USER, MIKU = 742000000000000201, 742000000000000299


def ids():
    numbers = itertools.count(1)
    return lambda: f"n{next(numbers)}"


def build(**overrides):
    """`presence_event` with a fixed id generator and clock, a human member by default."""
    args = dict(guild_id=GUILD, user_id=USER, display_name="Rin", is_bot=False, before_status="online",
                after_status="online", before_activities=[], after_activities=[])
    args.update(overrides)
    return presence_event(**args, new_id=ids(), clock=lambda: 1_700_000_000.0)


# --- the plain event builders -------------------------------------------------------------------


def test_a_game_that_appears_is_an_activity_start_with_string_ids():
    event = build(after_activities=[("playing", "Minecraft")])
    assert event == {
        "type": "presence",
        "event_id": f"presence:{GUILD}:{USER}:n1",
        "guild_id": str(GUILD),
        "user_id": str(USER),
        "status": "online",
        "activity": "Minecraft",
        "timestamp": 1_700_000_000.0,
        "kind": ACTIVITY_STARTED,
        "activity_name": "Minecraft",
        "activity_type": "playing",
        "display_name": "Rin",
    }


@pytest.mark.parametrize("kind", ["playing", "streaming", "listening", "watching", "competing", "Playing"])
def test_every_engaging_activity_type_counts(kind):
    event = build(after_activities=[(kind, "Something")])
    assert event["kind"] == ACTIVITY_STARTED and event["activity_type"] == kind.lower()


@pytest.mark.parametrize("kind", ["custom", "unknown", "", "4"])
def test_custom_status_and_unknown_types_are_not_activities(kind):
    assert build(after_activities=[(kind, "feeling cute")]) is None


def test_an_activity_already_there_is_not_a_new_start():
    same = [("playing", "Minecraft")]
    assert build(before_activities=same, after_activities=same) is None
    # a song change inside the same Spotify activity keeps type and name: not a new start
    spotify = [("listening", "Spotify")]
    assert build(before_activities=spotify, after_activities=spotify) is None


def test_the_first_new_activity_wins_among_several():
    event = build(before_activities=[("playing", "Minecraft")],
                  after_activities=[("custom", "hi"), ("playing", "Minecraft"), ("listening", "Spotify"),
                                    ("playing", "Tetris")])
    assert (event["activity_type"], event["activity_name"]) == ("listening", "Spotify")


def test_same_name_with_another_type_is_a_new_activity():
    assert started_activity([("watching", "Twitch")], [("streaming", "Twitch")]) == ("streaming", "Twitch")
    assert started_activity([("playing", " Minecraft ")], [("playing", "Minecraft")]) is None  # padding only
    assert started_activity([], [("playing", "")]) is None  # nameless


def test_an_activity_ending_or_going_idle_sends_nothing():
    assert build(before_activities=[("playing", "Minecraft")], after_activities=[]) is None
    assert build(before_status="online", after_status="idle") is None
    assert build(before_status="online", after_status="offline") is None


@pytest.mark.parametrize("before, after", [("offline", "online"), ("offline", "idle"), ("invisible", "dnd"),
                                           ("", "online"), (None, "online")])
def test_coming_online_from_offline(before, after):
    event = build(before_status=before, after_status=after)
    assert event["kind"] == CAME_ONLINE and event["status"] == after
    assert event["activity"] is None and event["activity_name"] is None and event["activity_type"] is None


@pytest.mark.parametrize("before, after", [("idle", "online"), ("dnd", "online"), ("online", "online"),
                                           ("offline", "offline"), ("offline", "invisible")])
def test_other_status_changes_are_not_coming_online(before, after):
    assert not came_online(before, after)
    assert build(before_status=before, after_status=after) is None


def test_an_activity_start_wins_over_coming_online():
    event = build(before_status="offline", after_status="online", after_activities=[("playing", "Osu!")])
    assert event["kind"] == ACTIVITY_STARTED and event["activity_name"] == "Osu!"


def test_bots_never_produce_events():
    assert build(is_bot=True, after_activities=[("playing", "Minecraft")]) is None
    assert build(is_bot=True, before_status="offline") is None
    assert member_join_event(GUILD, USER, "bot", True) is None


def test_empty_display_name_is_sent_as_null():
    assert build(display_name="", after_activities=[("playing", "Go")])["display_name"] is None


def test_every_event_gets_a_fresh_event_id():
    first = presence_event(GUILD, USER, "Rin", False, "offline", "online", [], [])
    second = presence_event(GUILD, USER, "Rin", False, "offline", "online", [], [])
    assert first["event_id"] != second["event_id"]
    assert first["event_id"].startswith(f"presence:{GUILD}:{USER}:")


def test_member_join_event_shape():
    event = member_join_event(GUILD, USER, "Len", False, HOME, new_id=lambda: "x", clock=lambda: 5.0)
    assert event == {"type": "member_join", "event_id": f"member_join:{GUILD}:{USER}:x", "guild_id": str(GUILD),
                     "user_id": str(USER), "user_name": "Len", "channel_id": str(HOME), "timestamp": 5.0}
    assert member_join_event(GUILD, USER, None, False, new_id=lambda: "y")["channel_id"] is None


# --- config and intents -------------------------------------------------------------------------


def test_presence_events_are_off_by_default_and_in_the_shipped_config():
    assert AutonomousConfig().presence_events is False
    assert load_config(ROOT / "configs" / "bot.yaml").autonomous.presence_events is False


def test_presence_events_switch_parses_and_refuses_non_booleans(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text("autonomous: {presence_events: true}\n")
    assert load_config(path).autonomous.presence_events is True
    path.write_text("autonomous: {presence_events: sometimes}\n")
    with pytest.raises(ConfigError, match="autonomous.presence_events"):
        load_config(path)


def test_intents_stay_minimal_when_the_switch_is_off():
    for intents in (minimal_intents(), minimal_intents(BotConfig()), minimal_intents(AutonomousConfig())):
        assert intents == minimal_intents()
        assert intents.guilds and intents.guild_messages and intents.message_content and intents.voice_states
        assert not intents.presences and not intents.members and not intents.dm_messages


def test_intents_add_presences_and_members_when_the_switch_is_on():
    on = AutonomousConfig(presence_events=True)
    for intents in (minimal_intents(on), minimal_intents(BotConfig(autonomous=on))):
        assert intents.presences and intents.members
        assert intents.guilds and intents.guild_messages and intents.message_content and intents.voice_states
        assert not intents.dm_messages and not intents.guild_reactions and not intents.guild_typing
        # exactly two more than the minimal set
        assert intents.value == minimal_intents().value | discord.Intents(presences=True, members=True).value


def test_the_bot_asks_discord_for_the_configured_intents():
    graph = AsyncMock(spec=GraphClient)
    assert not MikuBot(BotConfig(sync_app_commands=False), graph).intents.presences
    on = MikuBot(BotConfig(autonomous=AutonomousConfig(presence_events=True), sync_app_commands=False), graph)
    assert on.intents.presences and on.intents.members


# --- the events cog -----------------------------------------------------------------------------

SERVER = AutonomousServerConfig(GUILD, (HOME, OTHER), HOME)


async def make_cog(presence_events=True, enabled=True, answer=None):
    graph = AsyncMock(spec=GraphClient)
    graph.post_event.return_value = list(answer or [])
    config = BotConfig(autonomous=AutonomousConfig(enabled=enabled, presence_events=presence_events,
                                                   servers={GUILD: SERVER}), sync_app_commands=False)
    bot = MikuBot(config, graph)
    ops = AsyncMock(spec=ChatOps)
    bot.executor = GuardedExecutor(ops, graph, bot.guard)
    bot._connection.user = SimpleNamespace(id=MIKU)  # who "Miku herself" is
    return EventsCog(bot), graph, ops


def guild(guild_id=GUILD, system_channel=HOME):
    g = MagicMock(spec=discord.Guild)
    g.id = guild_id
    if system_channel is None:
        g.system_channel = None
    else:
        g.system_channel = MagicMock(spec=discord.TextChannel)
        g.system_channel.id = system_channel
    return g


def member(status=discord.Status.online, activities=(), *, uid=USER, bot=False, guild_id=GUILD, name="Rin",
           system_channel=HOME):
    m = AsyncMock(spec=discord.Member)
    m.id = uid
    m.bot = bot
    m.display_name = name
    m.status = status
    m.activities = tuple(activities)
    m.guild = guild(guild_id, system_channel)
    return m


def presence_change(before_acts=(), after_acts=(), before_status=discord.Status.online,
                    after_status=discord.Status.online, **kw):
    return member(before_status, before_acts, **kw), member(after_status, after_acts, **kw)


async def test_starting_a_game_is_posted_and_its_actions_run():
    answer = [{"type": "send", "channel_id": str(HOME), "text": "ooh, Minecraft!"}]
    cog, graph, ops = await make_cog(answer=answer)
    before, after = presence_change([discord.CustomActivity(name="vibing")],
                                    [discord.CustomActivity(name="vibing"), discord.Game("Minecraft")])
    await cog.on_presence_update(before, after)
    event = graph.post_event.await_args.args[0]
    assert event["type"] == "presence" and event["kind"] == ACTIVITY_STARTED
    assert (event["guild_id"], event["user_id"]) == (str(GUILD), str(USER))
    assert (event["activity_type"], event["activity_name"], event["display_name"]) == ("playing", "Minecraft", "Rin")
    assert "content" not in event
    ops.send.assert_awaited_once_with(HOME, "ooh, Minecraft!")


async def test_streams_and_listening_are_activity_starts_too():
    cog, graph, _ = await make_cog()
    stream = discord.Streaming(name="speedrun", url="https://twitch.tv/rin")
    await cog.on_presence_update(*presence_change((), [stream]))
    assert graph.post_event.await_args.args[0]["activity_type"] == "streaming"
    listening = discord.Activity(type=discord.ActivityType.listening, name="Spotify")
    await cog.on_presence_update(*presence_change((), [listening]))
    assert graph.post_event.await_args.args[0]["activity_name"] == "Spotify"
    assert graph.post_event.await_count == 2


async def test_coming_online_is_posted_with_the_status_as_a_string():
    cog, graph, _ = await make_cog()
    await cog.on_presence_update(*presence_change(before_status=discord.Status.offline,
                                                  after_status=discord.Status.idle))
    event = graph.post_event.await_args.args[0]
    assert event["kind"] == CAME_ONLINE and event["status"] == "idle"


async def test_nothing_is_posted_for_changes_that_are_not_starts():
    cog, graph, _ = await make_cog()
    game = discord.Game("Minecraft")
    await cog.on_presence_update(*presence_change([game], [game]))  # still playing
    await cog.on_presence_update(*presence_change([game], []))  # stopped
    await cog.on_presence_update(*presence_change((), [discord.CustomActivity(name="brb")]))  # custom status
    await cog.on_presence_update(*presence_change(after_status=discord.Status.dnd))  # online -> busy
    graph.post_event.assert_not_awaited()


async def test_bots_miku_and_unconfigured_servers_are_ignored():
    cog, graph, _ = await make_cog()
    game = [discord.Game("Minecraft")]
    await cog.on_presence_update(*presence_change((), game, bot=True, uid=USER + 1))
    await cog.on_presence_update(*presence_change((), game, uid=MIKU))
    await cog.on_presence_update(*presence_change((), game, guild_id=UNCONFIGURED_GUILD))
    await cog.on_member_join(member(bot=True, uid=USER + 1))
    await cog.on_member_join(member(guild_id=UNCONFIGURED_GUILD))
    graph.post_event.assert_not_awaited()


@pytest.mark.parametrize("presence_events, enabled", [(False, True), (True, False)])
async def test_nothing_is_forwarded_when_switched_off(presence_events, enabled):
    cog, graph, _ = await make_cog(presence_events=presence_events, enabled=enabled)
    await cog.on_presence_update(*presence_change((), [discord.Game("Minecraft")]))
    await cog.on_member_join(member())
    graph.post_event.assert_not_awaited()


async def test_a_join_is_posted_with_the_system_channel_only_when_allowed():
    welcome = [{"type": "send", "channel_id": str(HOME), "text": "Welcome, Len! 🎵"}]
    cog, graph, ops = await make_cog(answer=welcome)
    await cog.on_member_join(member(name="Len"))
    event = graph.post_event.await_args.args[0]
    assert event["type"] == "member_join" and event["user_name"] == "Len"
    assert (event["guild_id"], event["user_id"], event["channel_id"]) == (str(GUILD), str(USER), str(HOME))
    ops.send.assert_awaited_once_with(HOME, "Welcome, Len! 🎵")

    graph.post_event.return_value = []
    await cog.on_member_join(member(system_channel=742000000000000999))  # not an allowed channel
    assert graph.post_event.await_args.args[0]["channel_id"] is None
    await cog.on_member_join(member(system_channel=None))
    assert graph.post_event.await_args.args[0]["channel_id"] is None
    assert graph.post_event.await_count == 3


async def test_autonomous_actions_for_disallowed_channels_are_dropped_by_the_guard():
    answer = [{"type": "send", "guild_id": str(GUILD), "channel_id": "742000000000000999", "text": "hey",
               "autonomous": {"action": "engage_user", "mood": "bubbly"}}]
    cog, graph, ops = await make_cog(answer=answer)
    await cog.on_presence_update(*presence_change((), [discord.Game("Minecraft")]))
    graph.post_event.assert_awaited_once()
    ops.send.assert_not_awaited()
    assert cog.bot.guard.dropped == 1


async def test_a_graph_error_is_logged_not_raised():
    cog, graph, ops = await make_cog()
    graph.post_event.side_effect = GraphUnavailable("down")
    assert await cog._forward(build(after_activities=[("playing", "Go")])) == "event_failed"
    await cog.on_presence_update(*presence_change((), [discord.Game("Minecraft")]))  # no exception
    ops.send.assert_not_awaited()


async def test_forward_reports_the_executor_outcome():
    cog, graph, _ = await make_cog(answer=[{"type": "send", "channel_id": str(HOME), "text": "hi"}])
    cog.bot.executor = AsyncMock(spec=GuardedExecutor)
    cog.bot.executor.execute.return_value = ExecutionReport(done=["send"])
    event = build(after_activities=[("playing", "Go")])
    assert await cog._forward(event) == "event"
    cog.bot.executor.execute.assert_awaited_once_with([{"type": "send", "channel_id": str(HOME), "text": "hi"}],
                                                      event)


# --- against the real graph ---------------------------------------------------------------------


async def test_a_presence_event_reaches_the_engine(graph_server):
    graph = GraphClient(graph_server.base_url, graph_server.token, request_timeout_s=30)
    guild_id = 742000000000000000 + uuid.uuid4().int % 10_000_000  # unique per run
    config = AutonomousConfig(presence_events=True, servers={guild_id: AutonomousServerConfig(guild_id, (HOME,))})
    bot = MikuBot(BotConfig(autonomous=config, sync_app_commands=False), graph)
    try:
        assert await bot.send_server_configs([guild_id]) == 1
        event = presence_event(guild_id, USER, "Rin", False, "online", "online", [], [("playing", "Minecraft")])
        async with aiohttp.ClientSession(headers=graph_server.auth_headers) as http:
            async with http.post(f"{graph_server.base_url}/v1/events", json=event) as response:
                assert response.status == 200, await response.text()
                body = await response.json()
            assert isinstance(body, dict) and isinstance(body.get("actions"), list)
            async with http.get(f"{graph_server.base_url}/v1/autonomous/explain",
                                params={"guild_id": str(guild_id)}) as response:
                assert response.status == 200, await response.text()
                explain = await response.json()
        pending = {p["event_id"]: p for p in explain["signals"]["pending"]}
        triggered = [d for d in explain["recent_decisions"] if d.get("trigger_event_id") == event["event_id"]]
        assert event["event_id"] in pending or triggered, explain
        if event["event_id"] in pending:  # not consumed by an inline decision: still waiting to be engaged
            signal = pending[event["event_id"]]
            assert signal["source"] == ACTIVITY_STARTED and signal["activity"] == "Minecraft"
            assert signal["user_id"] == str(USER)
        assert explain["stats"]["events_applied"] >= 1
        # the same event again (a retry) is a duplicate: never a second signal for it
        assert isinstance(await graph.post_event(event), list)
        async with aiohttp.ClientSession(headers=graph_server.auth_headers) as http:
            async with http.get(f"{graph_server.base_url}/v1/autonomous/explain",
                                params={"guild_id": str(guild_id)}) as response:
                again = await response.json()
        assert [p["event_id"] for p in again["signals"]["pending"]].count(event["event_id"]) <= 1
    finally:
        await bot.send_server_configs([guild_id], stop=True)
        await graph.close()
