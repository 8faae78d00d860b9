"""The bot's side of the autonomous engine: its config section, the `server_config` events it sends, the
guard on what it carries out, and the poller started in `setup_hook` and stopped in `close()`.

Plain objects and AsyncMock(spec=...) stand-ins, plus one flow against the real local graph
(`graph_server`): the settings the bot sends show up in `GET /v1/autonomous/servers`.
"""
from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from unittest.mock import AsyncMock, MagicMock

import aiohttp
import pytest

from bot_client.actions import ChatOps
from bot_client.autonomous import AutonomousPoller
from bot_client.bot import AutonomyGuard, GuardedExecutor, MikuBot, server_config_events
from bot_client.config import (
    AutonomousConfig,
    AutonomousServerConfig,
    BotConfig,
    ConfigError,
    load_config,
)
from bot_client.graph_api import GraphClient, GraphUnavailable
from bot_client.session import SessionManager

ROOT = Path(__file__).resolve().parent.parent

GUILD = 731000000000000007  # unique to this file: the graph is shared by the whole test session
HOME, OTHER, FORBIDDEN = 731000000000000101, 731000000000000102, 731000000000000199
SECOND_GUILD = 731000000000000008


def autonomy(enabled: bool = True, **servers: AutonomousServerConfig) -> AutonomousConfig:
    return AutonomousConfig(enabled=enabled, servers={s.guild_id: s for s in servers.values()})


BERLIN = AutonomousServerConfig(GUILD, (HOME, OTHER), HOME, "Europe/Berlin")
PLAIN = AutonomousServerConfig(SECOND_GUILD, (OTHER,))


def autonomous_send(channel: int, guild: int = GUILD, text: str | None = "hi everyone!") -> dict:
    return {"type": "send", "guild_id": str(guild), "channel_id": str(channel), "text": text,
            "autonomous": {"action": "break_silence", "mood": "bubbly"}}


def counter_ids():
    numbers = itertools.count(1)
    return lambda: f"n{next(numbers)}"


# --- config -------------------------------------------------------------------------------------


def test_shipped_config_has_the_autonomous_defaults():
    config = load_config(ROOT / "configs" / "bot.yaml").autonomous
    assert config.enabled is True and config.wait_s == 25
    assert config.servers == {}  # nothing configured: she speaks up nowhere until the owner says where
    assert BotConfig().autonomous == AutonomousConfig()


def test_servers_parse_ids_given_as_numbers_or_strings(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text(
        "autonomous:\n"
        "  wait_s: 40\n"
        "  servers:\n"
        f"    {GUILD}: {{allowed_channels: [{HOME}, '{OTHER}', {HOME}], home_channel_id: '{HOME}', timezone: Europe/Berlin}}\n"
        f"    '{SECOND_GUILD}': {{allowed_channels: {OTHER}}}\n"
        "    '42': {}\n"
    )
    config = load_config(path).autonomous
    assert config.wait_s == 40
    assert config.servers[GUILD] == BERLIN  # the repeated channel is kept once
    assert config.server(str(SECOND_GUILD)) == PLAIN
    assert config.server(42).allowed_channels == () and config.server(43) is None


@pytest.mark.parametrize(
    "text, field",
    [
        ("autonomous: {enabled: sometimes}", "autonomous.enabled"),
        ("autonomous: {wait_s: 0}", "autonomous.wait_s"),
        ("autonomous: {wait_s: 61}", "autonomous.wait_s"),
        ("autonomous: {wait_s: soon}", "autonomous.wait_s"),
        ("autonomous: {servers: [1, 2]}", "autonomous.servers"),
        ("autonomous: {servers: {general: {allowed_channels: [1]}}}", "autonomous.servers key"),
        ("autonomous: {servers: {1: {allowed_channels: [general]}}}", "autonomous.servers.1.allowed_channels"),
        ("autonomous: {servers: {1: {allowed_channels: {a: 1}}}}", "autonomous.servers.1.allowed_channels"),
        ("autonomous: {servers: {1: {allowed_channels: [2], home_channel_id: 3}}}", "autonomous.servers.1.home_channel_id"),
        ("autonomous: {servers: {1: {allowed_channels: [2], timezone: Mars/Olympus}}}", "autonomous.servers.1.timezone"),
        ("autonomous: {servers: {1: {allowed_channels: [2], timezone: 5}}}", "autonomous.servers.1.timezone"),
        ("autonomous: {servers: {1: {channels: [2]}}}", "autonomous.servers.1"),
        ("autonomous: {servers: {1: [2]}}", "autonomous.servers.1"),
        ("autonomous: {servers: {1: {}, '1': {}}}", "autonomous.servers.1"),
        ("autonomous: {wait: 5}", "wait"),
    ],
)
def test_bad_autonomous_values_name_the_field(tmp_path, text, field):
    path = tmp_path / "bot.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path)


# --- which server_config events to send ---------------------------------------------------------


def test_events_only_for_configured_guilds_the_bot_is_in():
    config = autonomy(a=BERLIN, b=PLAIN)
    events = server_config_events(config, [999, GUILD, GUILD, SECOND_GUILD], new_id=counter_ids())
    assert events == [
        {"type": "server_config", "event_id": f"server_config:{GUILD}:n1", "guild_id": str(GUILD),
         "allowed_channels": [str(HOME), str(OTHER)], "home_channel_id": str(HOME), "timezone": "Europe/Berlin"},
        {"type": "server_config", "event_id": f"server_config:{SECOND_GUILD}:n2", "guild_id": str(SECOND_GUILD),
         "allowed_channels": [str(OTHER)]},  # no home channel or zone: the graph's defaults apply
    ]
    assert server_config_events(config, [999]) == [] and server_config_events(autonomy(), [GUILD]) == []


def test_every_send_has_a_fresh_event_id():
    config = autonomy(a=BERLIN)
    ids = {server_config_events(config, [GUILD])[0]["event_id"] for _ in range(20)}
    assert len(ids) == 20


@pytest.mark.parametrize("enabled, stop", [(False, False), (True, True)])
def test_disabled_or_left_guilds_get_an_empty_allow_list(enabled, stop):
    events = server_config_events(autonomy(enabled, a=BERLIN), [GUILD], stop=stop)
    assert [(e["guild_id"], e["allowed_channels"]) for e in events] == [(str(GUILD), [])]
    assert "home_channel_id" not in events[0] and "timezone" not in events[0]


# --- the guard on what is carried out -----------------------------------------------------------


async def test_autonomous_sends_go_only_to_allowed_channels():
    ops = AsyncMock(spec=ChatOps)
    paused = False
    guard = AutonomyGuard(autonomy(a=BERLIN), is_paused=lambda: paused)
    executor = GuardedExecutor(ops, None, guard)
    ordinary = {"type": "send", "channel_id": str(FORBIDDEN), "text": "an answer to a message"}
    report = await executor.execute([
        autonomous_send(HOME, text="hello home"),
        autonomous_send(FORBIDDEN, text="not here"),
        autonomous_send(OTHER, guild=SECOND_GUILD, text="not configured"),
        autonomous_send(OTHER, text=None),  # the graph had no LLM text: nothing is posted
        ordinary,
    ])
    assert [c.args for c in ops.send.await_args_list] == [(HOME, "hello home"), (FORBIDDEN, "an answer to a message")]
    assert report.done == ["send", "send"] and report.skipped == ["send"] and guard.dropped == 2

    paused = True  # a voice session started after the graph decided
    ops.send.reset_mock()
    await executor.execute([autonomous_send(HOME), ordinary])
    assert [c.args[0] for c in ops.send.await_args_list] == [FORBIDDEN]


async def test_disabled_autonomy_drops_every_autonomous_action():
    ops = AsyncMock(spec=ChatOps)
    executor = GuardedExecutor(ops, None, AutonomyGuard(autonomy(False, a=BERLIN)))
    await executor.execute([autonomous_send(HOME)])
    ops.send.assert_not_awaited()


# --- the bot's wiring ---------------------------------------------------------------------------


def make_bot(config: AutonomousConfig, graph=None) -> MikuBot:
    bot = MikuBot(BotConfig(autonomous=config, sync_app_commands=False), graph or AsyncMock(spec=GraphClient))
    bot.manager = AsyncMock(spec=SessionManager)
    bot.manager.sessions = {}
    bot.replayer = AsyncMock(spec=bot.replayer)
    bot.executor.ops = AsyncMock(spec=ChatOps)
    return bot


def in_guilds(monkeypatch, *guild_ids: int) -> None:
    guilds = [MagicMock(id=g) for g in guild_ids]
    monkeypatch.setattr(MikuBot, "guilds", property(lambda self: guilds))


async def settle(bot: MikuBot) -> None:
    await asyncio.gather(*list(bot._background))


async def test_the_poller_is_built_from_the_config():
    bot = make_bot(AutonomousConfig(wait_s=7.5))
    assert isinstance(bot.poller, AutonomousPoller) and bot.poller.wait_s == 7.5
    assert bot.poller.graph is bot.graph and not bot.poller.running


@pytest.mark.parametrize("enabled", [True, False])
async def test_setup_starts_the_poller_only_when_enabled_and_close_stops_it_first(enabled):
    bot = make_bot(AutonomousConfig(enabled=enabled))
    order = MagicMock()
    bot.poller = AsyncMock(spec=AutonomousPoller)
    bot.poller.stop.side_effect = lambda: order("poller.stop")
    bot.graph.close.side_effect = lambda: order("graph.close")
    bot.manager.shutdown.side_effect = lambda: order("manager.shutdown")
    await bot.setup_hook()
    assert bot.poller.start.called is enabled
    assert {"Voice", "Events"} <= set(bot.cogs)
    await bot.close()
    assert [c.args[0] for c in order.call_args_list] == ["manager.shutdown", "poller.stop", "graph.close"]


async def test_close_still_closes_the_graph_when_stopping_the_poller_fails():
    bot = make_bot(AutonomousConfig())
    bot.poller = AsyncMock(spec=AutonomousPoller)
    bot.poller.stop.side_effect = RuntimeError("boom")
    await bot.close()
    bot.graph.close.assert_awaited_once()


async def test_on_ready_and_guild_join_send_the_settings_of_configured_guilds(monkeypatch):
    bot = make_bot(autonomy(a=BERLIN, b=PLAIN))
    in_guilds(monkeypatch, 5, GUILD)
    await bot.on_ready()
    await settle(bot)
    sent = [c.args[0] for c in bot.graph.post_event.await_args_list]
    assert [(e["type"], e["guild_id"], e["allowed_channels"]) for e in sent] == [
        ("server_config", str(GUILD), [str(HOME), str(OTHER)])]

    await bot.on_ready()  # a reconnect: sent again, with a new event id
    await bot.on_guild_join(MagicMock(id=SECOND_GUILD))
    await bot.on_guild_join(MagicMock(id=6, text_channels=[]))  # not configured, nowhere to write: nothing
    await bot.on_guild_remove(MagicMock(id=GUILD))  # left: the graph forgets it
    await settle(bot)
    sent = [c.args[0] for c in bot.graph.post_event.await_args_list]
    assert [(e["guild_id"], e["allowed_channels"]) for e in sent[1:]] == [
        (str(GUILD), [str(HOME), str(OTHER)]), (str(SECOND_GUILD), [str(OTHER)]), (str(GUILD), [])]
    assert sent[0]["event_id"] != sent[1]["event_id"]


async def test_posting_errors_are_logged_and_never_raised(monkeypatch, caplog):
    bot = make_bot(autonomy(a=BERLIN, b=PLAIN))
    bot.graph.post_event.side_effect = [GraphUnavailable("the voice graph is unreachable"), RuntimeError("bug"), []]
    assert await bot.send_server_configs([GUILD, SECOND_GUILD]) == 0
    assert await bot.send_server_configs([GUILD]) == 1
    assert "could not send autonomous settings of server" in caplog.text


async def test_polled_actions_are_carried_out_and_a_recovered_graph_gets_the_settings_again(monkeypatch):
    bot = make_bot(autonomy(a=BERLIN))
    in_guilds(monkeypatch, GUILD)
    assert bot.poller.on_recovered is not None
    bot.poller._sleep = AsyncMock()  # no real backoff wait in a test
    bot.poller.poll_once = AsyncMock(side_effect=[
        GraphUnavailable("graph restarting"),
        [autonomous_send(HOME, text="anyone here?"), autonomous_send(FORBIDDEN, text="never")],
        asyncio.CancelledError(),  # ends the loop
    ])
    with pytest.raises(asyncio.CancelledError):
        await bot.poller.run()
    # after the failure the graph is told the settings again, then the batch is carried out
    assert [c.args[0]["guild_id"] for c in bot.graph.post_event.await_args_list] == [str(GUILD)]
    assert [c.args for c in bot.executor.ops.send.await_args_list] == [(HOME, "anyone here?")]
    assert bot.poller.executed == 2 and bot.poller.failures == 0  # both handed over; the guard dropped one


# --- against the real graph ---------------------------------------------------------------------


async def test_settings_sent_by_the_bot_reach_the_graph(graph_server, monkeypatch):
    graph = GraphClient(graph_server.base_url, graph_server.token, request_timeout_s=30)
    bot = MikuBot(BotConfig(autonomous=autonomy(a=BERLIN), sync_app_commands=False), graph)

    async def servers() -> dict[str, dict]:
        async with aiohttp.ClientSession(headers=graph_server.auth_headers) as http:
            async with http.get(f"{graph_server.base_url}/v1/autonomous/servers") as response:
                assert response.status == 200, await response.text()
                return {s["guild_id"]: s for s in (await response.json())["servers"]}

    try:
        assert await bot.send_server_configs([GUILD, 731000000000000009]) == 1  # the second is not configured
        tracked = await servers()
        assert tracked[str(GUILD)]["allowed_channels"] == [str(HOME), str(OTHER)]
        assert tracked[str(GUILD)]["home_channel_id"] == str(HOME)
        assert tracked[str(GUILD)]["timezone"] == "Europe/Berlin"
        assert "731000000000000009" not in tracked
        # the bot's poller talks to the same graph with the same token (other tests' actions may wait there)
        polled = await bot.poller.poll_once(wait_s=0)
        assert isinstance(polled, list) and all(a.get("type") == "send" for a in polled)
        assert await bot.send_server_configs([GUILD], stop=True) == 1
        assert str(GUILD) not in await servers()
    finally:
        await bot.poller.stop()
        await graph.close()
