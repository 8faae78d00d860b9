"""The bot's side of scheduled events and the figurine notifier (bot_client/features.py, cogs/features.py):
start-up errors naming the file and field, the commands and their role gate, and the messages really
handed to discord.py (a client stand-in whose `channel.send` / `user.send` record every call): nothing
during a voice session, everything held back exactly once afterwards. One test runs against the real
graph (`graph_server`): its controller pauses the features and `POST /v1/compose` writes the message."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from unittest.mock import AsyncMock, MagicMock

import discord
import pytest
from discord.ext import commands

from bot_client.bot import MikuBot
from bot_client.cogs.events import EventsCog
from bot_client.config import AutonomousConfig, BotConfig, ConfigError
from bot_client.discord_adapter import SAFE_MENTIONS
from bot_client.features import (
    BotFeatures,
    DiscordFeatureOps,
    FeatureConfigs,
    card_embed,
    controller_check,
    load_feature_configs,
)
from bot_client.graph_api import FeatureState, GraphClient
from graph.features.figurines import FeedCard, Target, parse_figurines
from graph.features.schedule import parse_schedule
from graph.features.scheduler import RunOutcome
from tests.support.feed_server import FeedServer
from tests.support.features import SettableCheck

ROOT = Path(__file__).resolve().parents[1]
GUILD, CHANNEL, FIG_CHANNEL, USER = 9101, 9102, 9103, 9104


def member(mid=3, roles=(), admin=False, manage=False):
    m = MagicMock(spec=discord.Member)
    m.id = mid
    m.roles = [SimpleNamespace(name=n) for n in roles]
    m.guild_permissions = discord.Permissions(administrator=admin, manage_guild=manage)
    return m


def context(author, guild_id=GUILD, channel_id=CHANNEL):
    ctx = AsyncMock(spec=commands.Context)
    ctx.author = author
    ctx.guild = MagicMock(spec=discord.Guild)
    ctx.guild.id = guild_id
    ctx.channel = MagicMock(spec=discord.TextChannel)
    ctx.channel.id = channel_id
    ctx.interaction = None
    return ctx


class FakeDiscord:
    """Just enough of discord.Client for DiscordFeatureOps: channels and users whose send() is recorded."""

    def __init__(self) -> None:
        self.channels: dict[int, AsyncMock] = {}
        self.users: dict[int, AsyncMock] = {}

    def get_channel(self, channel_id):
        return self.channels.setdefault(channel_id, AsyncMock(spec=discord.TextChannel))

    def get_user(self, user_id):
        return self.users.setdefault(user_id, AsyncMock(spec=discord.User))

    def sends(self) -> list[tuple[str, int, object]]:
        out = []
        for cid, channel in self.channels.items():
            for call in channel.send.await_args_list:
                out.append(("channel", cid, call.kwargs.get("embed") or call.args[0]))
        for uid, user in self.users.items():
            for call in user.send.await_args_list:
                out.append(("user", uid, call.kwargs["embed"]))
        return out


def configs(tmp_path, feeds=(), jobs=()):
    schedule = parse_schedule({"state_dir": str(tmp_path / "state"), "admin_roles": ["Scheduler"], "jobs": list(jobs)},
                              "schedule.yaml")
    figurines = parse_figurines({"state_dir": str(tmp_path / "state"), "feeds": list(feeds), "post_existing": True,
                                 "channels": [FIG_CHANNEL], "admin_roles": ["Figure Fan"]}, "figurines.yaml")
    return FeatureConfigs(schedule, figurines)


# ---- start-up --------------------------------------------------------------------------------------


def test_bad_feature_files_stop_the_bot_naming_file_and_field(tmp_path, monkeypatch):
    bad = tmp_path / "schedule.yaml"
    bad.write_text("jobs:\n  - {id: x, guild_id: 1, channel_id: 2, cron: '0 9 * * mon', text: hi, timezone: Nowhere/City}\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: jobs\[0\].timezone: unknown time zone"):
        load_feature_configs(BotConfig(schedule_file=str(bad)))
    figs = tmp_path / "figurines.yaml"
    figs.write_text("feeds: ['gopher://old.example/feed']\n")
    with pytest.raises(ConfigError, match=rf"^{figs}: feeds\[0\].url: .*not http\(s\)"):
        load_feature_configs(BotConfig(figurines_file=str(figs)))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_feature_configs(BotConfig(schedule_file=str(tmp_path / "missing.yaml")))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    unusable = FeatureConfigs(parse_schedule({"state_dir": str(blocker / "state")}), None)
    with pytest.raises(ConfigError, match="scheduled events: state_dir .* cannot be used"):
        BotFeatures(unusable, AsyncMock(spec=GraphClient), AsyncMock())
    monkeypatch.chdir(ROOT)
    shipped = load_feature_configs(BotConfig())  # configs/schedule.yaml and configs/figurines.yaml
    assert shipped.schedule is not None and shipped.figurines is not None


async def test_controller_check_reads_the_graphs_features():
    graph = AsyncMock(spec=GraphClient)
    graph.features.return_value = [FeatureState("scheduled_events", True), FeatureState("vision", False)]
    check = controller_check(graph)
    assert await check("scheduled_events") == {"allowed": False}
    assert await check("not_switched_here") == {"allowed": True}


def test_the_embed_has_title_link_price_and_image():
    embed = card_embed(FeedCard("Nendoroid Miku", "https://shop.example/1", "Pre-order", "¥6,800",
                                "https://img.example/1.jpg", "shop.example"))
    assert embed.title == "Nendoroid Miku" and embed.url == "https://shop.example/1"
    assert [(f.name, f.value) for f in embed.fields] == [("Price", "¥6,800")]
    assert embed.image.url == "https://img.example/1.jpg" and "shop.example" in embed.footer.text
    bare = card_embed(FeedCard("Snow Miku", "https://n.example/2", "", None, None, "n.example"))
    assert bare.fields == [] and bare.image.url is None


# ---- commands ---------------------------------------------------------------------------------------


@pytest.fixture
async def bot(tmp_path):
    graph = AsyncMock(spec=GraphClient)
    graph.features.return_value = []
    bot = MikuBot(BotConfig(sync_app_commands=False), graph, configs(tmp_path))
    bot.features.scheduler.post = AsyncMock()
    await bot.add_cog(EventsCog(bot))
    from bot_client.cogs.features import FeaturesCog

    await bot.add_cog(FeaturesCog(bot, bot.features))
    await bot.features.scheduler.start(watch=False)
    yield bot
    await bot.features.close()


async def test_commands_are_hybrid_and_skip_the_brain(bot):
    assert {c.name for c in bot.get_command("schedule").commands} == {"add", "remove", "pause", "resume", "run"}
    assert {c.name for c in bot.get_command("figures").commands} == {"here", "off", "dm", "nodm"}
    # slash: the group itself is `/schedule list` and `/figures status` (`!schedule` alone lists)
    assert {c.name for c in bot.tree.get_command("schedule").commands} == {"list", "add", "remove", "pause", "resume", "run"}
    assert {c.name for c in bot.tree.get_command("figures").commands} == {"status", "here", "off", "dm", "nodm"}
    events = bot.get_cog("Events")
    assert events._is_command("!schedule list") and events._is_command("!figures dm")
    assert not events._is_command("!schedules are fun")


async def test_schedule_commands_are_role_gated_and_manage_jobs(bot):
    cog = bot.get_cog("Features")
    channel = MagicMock(spec=discord.TextChannel)
    channel.id = CHANNEL
    fan = context(member(roles=("Fans",)))
    await cog.add.callback(cog, fan, "video", channel, "every 6h", "text", content="Hi")
    assert "permission" in fan.reply.await_args.args[0] and "Scheduler" in fan.reply.await_args.args[0]
    assert bot.features.scheduler.jobs() == []

    admin = context(member(roles=("scheduler",)))
    await cog.add.callback(cog, admin, "monday-video", channel, "0 9 * * mon", "random",
                           content="https://youtu.be/a | https://youtu.be/b")
    assert admin.reply.await_args.args[0].startswith("✅ Added `monday-video`: cron `0 9 * * mon` (UTC)")
    bad = context(member(admin=True))
    await cog.add.callback(cog, bad, "broken", channel, "0 9 * * someday", "text", content="x")
    assert bad.reply.await_args.args[0].startswith("❌ schedule add: job.cron: bad cron expression")

    listing = context(member(manage=True))
    await cog.schedule.callback(cog, listing)
    text = listing.reply.await_args.args[0]
    assert "`monday-video`" in text and "random pick of 2" in text and "misfire run_once" in text

    for command, expected in ((cog.pause, "⏸️ Paused"), (cog.resume, "▶️ Resumed"), (cog.run, "✅ `monday-video` posted")):
        ctx = context(member(admin=True))
        await command.callback(cog, ctx, "monday-video")
        assert ctx.reply.await_args.args[0].startswith(expected)
    bot.features.scheduler.post.assert_awaited_once()
    assert bot.features.scheduler.post.await_args.args[0] == CHANNEL

    other_server = context(member(admin=True), guild_id=1)
    await cog.run.callback(cog, other_server, "monday-video")
    assert "There is no scheduled event called" in other_server.reply.await_args.args[0]
    removed = context(member(admin=True))
    await cog.remove.callback(cog, removed, "monday-video")
    assert removed.reply.await_args.args[0] == "🗑️ Removed `monday-video`."


async def test_run_now_during_a_session_says_it_waits(bot):
    bot.graph.features.return_value = [FeatureState("scheduled_events", True)]
    cog = bot.get_cog("Features")
    channel = MagicMock(spec=discord.TextChannel)
    channel.id = CHANNEL
    await cog.add.callback(cog, context(member(admin=True)), "hello", channel, "every 1d", "text", content="Hello!")
    ctx = context(member(admin=True))
    await cog.run.callback(cog, ctx, "hello")
    assert ctx.reply.await_args.args[0] == "⏳ I'm in voice chat, so `hello` will run once when I leave."
    bot.features.scheduler.post.assert_not_awaited()


async def test_figures_subscriptions(bot):
    cog = bot.get_cog("Features")
    fan = context(member(mid=USER))
    await cog.here.callback(cog, fan)
    assert "permission" in fan.reply.await_args.args[0]
    await cog.dm.callback(cog, fan)
    assert fan.reply.await_args.args[0] == "📬 I'll DM you new Miku figures."
    figure_fan = context(member(roles=("Figure Fan",)), channel_id=777)
    await cog.here.callback(cog, figure_fan)
    assert bot.features.figurines.targets() == [Target("channel", FIG_CHANNEL), Target("user", USER), Target("channel", 777)]
    status = context(member(mid=USER))
    await cog.figures.callback(cog, status)
    assert "Your DMs: on" in status.reply.await_args.args[0] and "<#777>" in status.reply.await_args.args[0]
    await cog.nodm.callback(cog, fan)
    assert Target("user", USER) not in bot.features.figurines.targets()


# ---- through discord.py's send calls -----------------------------------------------------------------


async def test_nothing_reaches_discord_during_a_session_and_everything_once_after(tmp_path):
    server = await FeedServer().start()
    discord_client = FakeDiscord()
    controller = SettableCheck()
    shop = server.serve_file("/shop.xml", "shop_rss_1.xml")
    jobs = [{"id": "monday-video", "guild_id": GUILD, "channel_id": CHANNEL, "interval": "every 1d",
             "text": "Monday video!"}]
    features = BotFeatures(configs(tmp_path, [shop], jobs), AsyncMock(spec=GraphClient),
                           DiscordFeatureOps(discord_client), check=controller)
    features.figurines.subscribe(Target("user", USER))
    await features.scheduler.start(watch=False)
    try:
        controller.in_session = True
        await features.scheduler.run_now("monday-video")
        await features.figurines.tick()  # the feed's Miku item arrives during the session
        await features.after_session()  # a session that did not end yet: nothing moves
        assert discord_client.sends() == []

        controller.in_session = False
        await features.after_session()
        await features.after_session()
        sent = discord_client.sends()
        assert sorted((kind, target) for kind, target, _ in sent) == [
            ("channel", CHANNEL), ("channel", FIG_CHANNEL), ("user", USER)]
        text = discord_client.channels[CHANNEL].send.await_args
        assert text.args == ("Monday video!",) and text.kwargs == {"allowed_mentions": SAFE_MENTIONS}
        embed = discord_client.channels[FIG_CHANNEL].send.await_args.kwargs["embed"]
        assert embed.title == "Nendoroid Hatsune Miku: Magical Mirai 2026 Ver." and embed.fields[0].value == "¥6,800"
        assert discord_client.users[USER].send.await_args.kwargs["embed"].url == "https://shop.example/items/1001"
    finally:
        await features.close()
        await server.stop()


# ---- the real graph: its controller and POST /v1/compose ----------------------------------------------


async def test_a_prompt_job_against_the_real_graph(graph_server, tmp_path):
    from graph.features.compose import SCHEDULED_NOTE
    from tests.support.llm_server import REPLY

    graph = GraphClient(graph_server.base_url, graph_server.token, request_timeout_s=30)
    discord_client = FakeDiscord()
    jobs = [{"id": "good-morning", "guild_id": GUILD, "channel_id": CHANNEL, "cron": "0 8 * * *",
             "prompt": "Wish everyone a good morning [scheduled-e2e]"}]
    features = BotFeatures(FeatureConfigs(configs(tmp_path, jobs=jobs).schedule, None), graph,
                           DiscordFeatureOps(discord_client))
    await features.scheduler.start(watch=False)
    session = None
    try:
        for old in await graph.sessions():
            if old.get("state", "active") == "active":
                await graph.end_session(old["session_id"])
        session = await graph.start_session(GUILD, 1, CHANNEL, USER)
        assert await features.scheduler.run_now("good-morning") is RunOutcome.DEFERRED
        assert discord_client.sends() == [] and len(features.scheduler.deferred) == 1
        assert not any("[scheduled-e2e]" in r.prompt for r in graph_server.llm_server.requests)  # no LLM call either

        await graph.end_session(session.session_id)
        session = None
        await features.after_session()
        (sent,) = discord_client.sends()
        assert sent[:2] == ("channel", CHANNEL) and sent[2] == REPLY
        record = await graph_server.llm_server.settled("[scheduled-e2e]")
        assert SCHEDULED_NOTE in (record.system or "")
        await features.after_session()
        assert len(discord_client.sends()) == 1
    finally:
        if session is not None:
            await graph.end_session(session.session_id)
        await features.close()
        await graph.close()


async def test_compose_route_needs_the_token_and_a_valid_body(graph_server):
    import aiohttp

    url = f"{graph_server.base_url}/v1/compose"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"instruction": "hi"}) as response:
            assert response.status == 401
        async with http.post(url, json={"instruction": "", "guild_id": "not-an-id"},
                             headers=graph_server.auth_headers) as response:
            assert response.status == 422
            fields = {tuple(e["loc"]) for e in (await response.json())["detail"]}
            assert ("body", "instruction") in fields and ("body", "guild_id") in fields


async def test_the_bot_starts_the_features_and_hands_them_the_end_of_a_session(tmp_path):
    graph = AsyncMock(spec=GraphClient)
    graph.features.return_value = []
    bot = MikuBot(BotConfig(sync_app_commands=False, autonomous=AutonomousConfig(enabled=False)),
                  graph, configs(tmp_path))
    await bot.setup_hook()
    try:
        assert bot.get_cog("Features") is not None and bot.features.scheduler.scheduler.running
        bot.features.after_session = AsyncMock()
        bot.replayer.replay = AsyncMock()
        await bot._after_session(MagicMock(), MagicMock())
        for task in list(bot._background):
            await task
        bot.features.after_session.assert_awaited_once()
    finally:
        await bot.features.close()
    assert MikuBot(BotConfig(), graph).features is None  # no files given: nothing started
