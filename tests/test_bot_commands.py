"""The cogs and the Discord adapter, driven with AsyncMock(spec=discord...) stand-ins (no gateway)."""
from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from unittest.mock import AsyncMock, MagicMock

import discord
from discord.ext import commands

from bot_client.bot import MikuBot, minimal_intents
from bot_client.cogs.events import EventsCog
from bot_client.cogs.voice import VoiceCog
from bot_client.config import BotConfig, PermissionsConfig
from bot_client.discord_adapter import (
    SAFE_MENTIONS,
    DiscordChatOps,
    channel_is_full,
    join_request,
    missing_voice_permissions,
    to_incoming,
)
from bot_client.graph_api import FeatureState, GraphClient, GraphHealth, StageHealth
from bot_client.permissions import is_allowed
from bot_client.session import (
    NOT_IN_SESSION,
    NOT_IN_VOICE,
    EndReason,
    SessionState,
    SessionStatus,
    SubmitResult,
    VoiceSession,
)
from bot_client.status import format_status


def role(name):
    r = MagicMock(spec=discord.Role)
    r.name = name
    return r


def member(mid=3, roles=(), admin=False, voice_channel=None):
    m = MagicMock(spec=discord.Member)
    m.id = mid
    m.roles = [role(n) for n in roles]
    m.guild_permissions = discord.Permissions(administrator=admin)
    m.voice = SimpleNamespace(channel=voice_channel) if voice_channel is not None else None
    return m


def voice_channel(cid=4, limit=0, members=0, can_move=False, view=True, connect=True, speak=True):
    ch = MagicMock(spec=discord.VoiceChannel)
    ch.id = cid
    ch.user_limit = limit
    ch.members = [member(100 + i) for i in range(members)]
    ch.permissions_for.return_value = discord.Permissions(move_members=can_move, view_channel=view,
                                                          connect=connect, speak=speak)
    return ch


async def make_bot(permissions=PermissionsConfig()):
    graph = AsyncMock(spec=GraphClient)
    bot = MikuBot(BotConfig(permissions=permissions, sync_app_commands=False), graph)
    bot.manager = AsyncMock(spec=bot.manager)
    bot.ops = AsyncMock(spec=DiscordChatOps)
    await bot.add_cog(VoiceCog(bot))
    await bot.add_cog(EventsCog(bot))
    return bot, graph


def context(author, guild_id=1, channel_id=10):
    ctx = AsyncMock(spec=commands.Context)
    ctx.author = author
    ctx.guild = MagicMock(spec=discord.Guild)
    ctx.guild.id = guild_id
    ctx.guild.me = member(42)
    ctx.guild.voice_client = None
    ctx.channel = MagicMock(spec=discord.TextChannel)
    ctx.channel.id = channel_id
    ctx.interaction = None
    ctx.message = AsyncMock(spec=discord.Message)
    return ctx


def test_intents_are_minimal():
    intents = minimal_intents()
    assert intents.guilds and intents.guild_messages and intents.message_content and intents.voice_states
    assert not intents.members and not intents.presences and not intents.dm_messages


async def test_commands_are_hybrid_prefix_and_slash():
    bot, _ = await make_bot()
    group = bot.get_command("miku")
    assert group is not None
    assert {c.name for c in group.commands} == {"join", "leave", "stop", "say", "voice-status",
                                                "play", "pause", "resume", "skip", "queue", "volume"}
    slash = bot.tree.get_command("miku")
    assert slash is not None and {c.name for c in slash.commands} >= {"join", "leave", "stop", "say", "voice-status"}


async def test_join_is_refused_without_the_configured_role():
    bot, _ = await make_bot(PermissionsConfig(join=("DJ",)))
    cog = bot.get_cog("Voice")
    ctx = context(member(roles=("Fans",), voice_channel=voice_channel()))
    await cog.join.callback(cog, ctx, None)
    assert "permission" in ctx.reply.await_args.args[0] and "DJ" in ctx.reply.await_args.args[0]
    bot.manager.join.assert_not_awaited()


async def test_join_with_the_role_asks_the_manager_for_the_authors_channel():
    bot, _ = await make_bot(PermissionsConfig(join=("DJ",)))
    bot.manager.join.return_value = SimpleNamespace(ok=True, message="🎤 Joined!")
    cog = bot.get_cog("Voice")
    ctx = context(member(roles=("dj",), voice_channel=voice_channel(cid=77)))
    await cog.join.callback(cog, ctx, None)
    request = bot.manager.join.await_args.args[0]
    assert request.voice_channel_id == 77 and request.text_channel_id == 10 and not request.channel_full
    ctx.reply.assert_awaited_with("🎤 Joined!", mention_author=False)


async def test_leave_and_stop_without_a_session_say_so():
    bot, _ = await make_bot()
    bot.manager.get = MagicMock(return_value=None)
    cog = bot.get_cog("Voice")
    for command in (cog.leave, cog.stop):
        ctx = context(member())
        await command.callback(cog, ctx)
        ctx.reply.assert_awaited_once_with(NOT_IN_SESSION, mention_author=False)


async def test_say_speaks_verbatim_and_stop_reports_dropped_prompts():
    bot, _ = await make_bot()
    session = AsyncMock(spec=VoiceSession)
    session.submit.return_value = SubmitResult(True)
    session.stop_speaking.return_value = 2
    bot.manager.get = MagicMock(return_value=session)
    cog = bot.get_cog("Voice")
    ctx = context(member())
    await cog.say.callback(cog, ctx, text="Hello everyone!")
    session.submit.assert_awaited_once_with("Hello everyone!", kind="say")
    ctx.message.add_reaction.assert_awaited_once_with("🎤")
    ctx = context(member())
    await cog.stop.callback(cog, ctx)
    assert "dropped 2 waiting prompts" in ctx.reply.await_args.args[0]


def test_join_request_resolution_and_full_channels():
    guild = SimpleNamespace(id=1, me=member(42))
    req, _ = join_request(guild=guild, author=member(voice_channel=None), text_channel_id=10, named_channel=None)
    assert req.voice_channel_id is None
    named = voice_channel(cid=9)
    req, target = join_request(guild=guild, author=member(voice_channel=voice_channel(cid=5)), text_channel_id=10,
                               named_channel=named)
    assert req.voice_channel_id == 9 and target is named
    assert channel_is_full(voice_channel(limit=2, members=2), guild.me)
    assert not channel_is_full(voice_channel(limit=2, members=2, can_move=True), guild.me)
    assert not channel_is_full(voice_channel(limit=0, members=50), guild.me)


async def test_not_in_voice_is_the_plans_message():
    from bot_client.session import JoinRequest, PresenceKeeper, SessionManager
    manager = SessionManager(AsyncMock(spec=GraphClient), BotConfig(), PresenceKeeper(AsyncMock()))
    outcome = await manager.join(JoinRequest(1, 2, 3, None), AsyncMock(), AsyncMock())
    assert outcome.message == NOT_IN_VOICE == "❌ You must be in a voice channel!"


async def test_being_kicked_from_voice_ends_the_session():
    bot, _ = await make_bot()
    bot._connection.user = MagicMock(id=42)
    session = AsyncMock(spec=VoiceSession)
    session.voice_channel_id = 4
    bot.manager.get = MagicMock(return_value=session)
    cog = bot.get_cog("Events")
    me = member(42)
    me.guild = SimpleNamespace(id=1)
    before = SimpleNamespace(channel=SimpleNamespace(id=4))
    after = SimpleNamespace(channel=None)
    await cog.on_voice_state_update(me, before, after)
    session.end.assert_awaited_once_with(EndReason.KICKED)


async def test_deleting_the_prompt_channel_ends_the_session():
    bot, _ = await make_bot()
    session = AsyncMock(spec=VoiceSession)
    session.info = SimpleNamespace(session_id="s1")
    bot.manager.by_prompt_channel = MagicMock(return_value=session)
    channel = MagicMock(spec=discord.TextChannel)
    channel.id = 10
    await bot.get_cog("Events").on_guild_channel_delete(channel)
    session.end.assert_awaited_once_with(EndReason.PROMPT_CHANNEL_DELETED)


def test_to_incoming_reads_a_discord_message():
    msg = MagicMock(spec=discord.Message)
    msg.id, msg.content = 555, "<@42> hi <@77>"
    msg.author = member(3, roles=("@everyone", "DJ"), admin=True)
    msg.author.display_name, msg.author.name, msg.author.bot = "Rin", "rin", False
    msg.guild = SimpleNamespace(id=1, name="Crypton")
    msg.channel = SimpleNamespace(id=10, name="voice-chat")
    kaito = SimpleNamespace(id=77, display_name="Kaito", name="kaito")
    miku = SimpleNamespace(id=42, display_name="Miku", name="miku")
    msg.mentions = [miku, kaito]
    msg.channel_mentions, msg.role_mentions = [], []
    msg.attachments = []
    msg.reference = None
    msg.created_at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    incoming = to_incoming(msg, 42)
    assert incoming.mentions_bot and incoming.mention_names["<@77>"] == "@Kaito"
    event = incoming.to_event()
    assert event["event_id"] == "message:555" and event["channel_name"] == "voice-chat"
    assert event["author_roles"] == ["DJ"] and event["author_is_admin"] is True  # the brain's persona/mood gate
    assert event["timestamp"] == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()


async def test_chat_ops_reply_never_pings_everyone_and_survives_a_deleted_target():
    client = MagicMock(spec=discord.Client)
    channel = AsyncMock(spec=discord.TextChannel)
    partial = MagicMock(spec=discord.PartialMessage)
    partial.to_reference.return_value = "REF"
    channel.get_partial_message = MagicMock(return_value=partial)
    client.get_channel.return_value = channel
    await DiscordChatOps(client).reply(10, 55, "hi @everyone")
    partial.to_reference.assert_called_once_with(fail_if_not_exists=False)
    channel.send.assert_awaited_once_with("hi @everyone", reference="REF", allowed_mentions=SAFE_MENTIONS)
    assert SAFE_MENTIONS.everyone is False and SAFE_MENTIONS.roles is False


def test_permissions_admin_override_and_open_commands():
    cfg = PermissionsConfig(stop=("Mods",))
    assert is_allowed("join", [], False, cfg)
    assert not is_allowed("stop", ["Fans"], False, cfg)
    assert is_allowed("stop", [], True, cfg)
    assert not is_allowed("stop", [], True, PermissionsConfig(stop=("Mods",), admins_always_allowed=False))


def test_voice_status_text():
    status = SessionStatus("s1", SessionState.ACTIVE, 4, 10, 125.0, True, 2, True, (310.0, 280.0),
                           {"frames_played": 500, "underruns": 1, "fill_frames": 5}, ("vision",))
    health = GraphHealth(True, (StageHealth("tts", "espeak", True, "gtx1660"), StageHealth("vc", "world", True)))
    text = format_status(status, [FeatureState("vision", True), FeatureState("autonomous_engine", False)], health)
    assert "<#4>" in text and "<#10>" in text and "Prompts waiting: 2" in text and "2m 05s" in text
    assert "310 ms" in text and "tts: espeak on gtx1660" in text
    assert "• Looking at images and videos: off until I leave voice" in text and "• Speaking up on my own: on" in text
    assert "vision" not in text and "autonomous_engine" not in text  # states in words, no feature ids
    assert "Not in a voice session" in format_status(None, None, None)


def test_parse_health_reads_the_graphs_shape():
    from bot_client.graph_api import parse_health

    health = parse_health({"status": "degraded", "stages": {
        "llm": {"ok": True, "backend": "openai", "resources": {"rx6800": 0.1}},
        "tts": {"ok": False, "error": "replica died"},
        "vc": {"ok": True, "backend": "world", "resources": {"rx6800": 0.2}}}})
    assert not health.ok and not health.stage_ok("tts", "vc") and health.stage_ok("vc")
    assert health.backends()["llm"] == "openai" and health.stages[0].placement == "rx6800"


async def test_the_voice_status_is_set_again_after_a_gateway_reconnect_and_cleared_after_the_session():
    bot = MikuBot(BotConfig(sync_app_commands=False), AsyncMock(spec=GraphClient))
    bot.change_presence = AsyncMock()

    def shown():
        activity = bot.change_presence.await_args.kwargs["activity"]
        return activity.name if activity is not None else None

    await bot.presence.enter(1)  # a session started
    assert shown() == "🎤 In Voice Chat"
    for reconnect in (bot.on_resumed, bot.on_ready):  # the gateway dropped the status
        bot.change_presence.reset_mock()
        await reconnect()
        bot.change_presence.assert_awaited_once()
        assert shown() == "🎤 In Voice Chat"
    await bot.presence.leave(1)  # the session ended: the normal status is back
    assert shown() is None
    bot.change_presence.reset_mock()
    await bot.on_ready()
    await bot.on_resumed()
    bot.change_presence.assert_not_awaited()  # no session: a fresh gateway session already shows none
    for task in list(bot._background):
        task.cancel()


async def test_a_failing_presence_update_on_reconnect_is_logged_not_raised():
    bot = MikuBot(BotConfig(sync_app_commands=False), AsyncMock(spec=GraphClient))
    bot.change_presence = AsyncMock(side_effect=ConnectionResetError("gateway gone again"))
    await bot.presence.enter(1)
    await bot.on_resumed()  # cosmetic: never breaks the reconnect
    assert bot.change_presence.await_count == 2


def test_missing_voice_permissions_are_named_as_in_discords_settings():
    me = member(42)
    assert missing_voice_permissions(voice_channel(), me) == ()
    assert missing_voice_permissions(voice_channel(connect=False), me) == ("Connect",)
    assert missing_voice_permissions(voice_channel(speak=False), me) == ("Speak",)
    assert missing_voice_permissions(voice_channel(connect=False, speak=False), me) == ("Connect", "Speak")
    # Without View Channel Discord denies everything else as well: that is the one to grant first.
    assert missing_voice_permissions(voice_channel(view=False, connect=True), me) == ("View Channel",)


def real_manager_bot():
    """A bot whose SessionManager is the real one (graph mocked), to see what a join does end to end."""
    graph = AsyncMock(spec=GraphClient)
    graph.health.return_value = GraphHealth(ok=True, stages=(StageHealth("tts", "espeak", True),
                                                             StageHealth("vc", "world", True)))
    bot = MikuBot(BotConfig(sync_app_commands=False), graph)
    bot.ops = AsyncMock(spec=DiscordChatOps)
    return bot, graph


async def test_join_without_connect_or_speak_says_which_permission_at_once_and_never_connects():
    for kwargs, wanted, unwanted in (({"connect": False}, "**Connect**", "Speak"),
                                     ({"speak": False}, "**Speak**", "Connect"),
                                     ({"view": False}, "**View Channel**", "Speak")):
        bot, graph = real_manager_bot()
        await bot.add_cog(VoiceCog(bot))
        cog = bot.get_cog("Voice")
        target = voice_channel(cid=77, **kwargs)
        target.connect = AsyncMock()
        ctx = context(member(voice_channel=target))
        await cog.join.callback(cog, ctx, None)
        text = ctx.reply.await_args.args[0]
        assert wanted in text and unwanted not in text and "<#77>" in text, text
        target.connect.assert_not_awaited()  # no 15 s wait for a connection Discord ignores
        graph.start_session.assert_not_awaited()  # and no graph session to release
        assert bot.manager.get(1) is None


async def test_join_of_a_full_channel_without_move_members_is_refused_before_connecting():
    bot, graph = real_manager_bot()
    await bot.add_cog(VoiceCog(bot))
    cog = bot.get_cog("Voice")
    target = voice_channel(cid=77, limit=2, members=2)
    target.connect = AsyncMock()
    ctx = context(member(voice_channel=target))
    await cog.join.callback(cog, ctx, None)
    ctx.reply.assert_awaited_with("❌ Voice channel is full!", mention_author=False)
    target.connect.assert_not_awaited()
    graph.start_session.assert_not_awaited()


async def test_group_name_names_the_prefix_and_slash_commands():
    bot = MikuBot(BotConfig(command_prefix="?", group_name="hatsune", sync_app_commands=False),
                  AsyncMock(spec=GraphClient))
    await bot.add_cog(VoiceCog(bot))
    await bot.add_cog(EventsCog(bot))
    assert bot.get_command("miku") is None and bot.tree.get_command("miku") is None
    group = bot.get_command("hatsune")
    assert {c.qualified_name for c in group.commands} == {
        "hatsune join", "hatsune leave", "hatsune stop", "hatsune say", "hatsune voice-status", "hatsune play",
        "hatsune pause", "hatsune resume", "hatsune skip", "hatsune queue", "hatsune volume"}
    slash = bot.tree.get_command("hatsune")
    assert slash.to_dict(bot.tree)["name"] == "hatsune"  # what Discord is sent when the tree syncs
    assert {c.qualified_name for c in slash.commands} >= {"hatsune join", "hatsune leave", "hatsune say"}

    bot._connection.user = MagicMock(id=42)
    for content, command in (("?hatsune join", "hatsune"), ("?miku join", None), ("!hatsune join", None)):
        message = MagicMock(spec=discord.Message)
        message.content = content
        message.guild = None
        ctx = await bot.get_context(message)
        assert (ctx.command.qualified_name if ctx.command else None) == command, content
    # The events cog leaves exactly the group's commands to discord.py and routes everything else.
    events = bot.get_cog("Events")
    assert events._is_command("?hatsune join") and events._is_command("?hatsune")
    assert not events._is_command("!miku join") and not events._is_command("?hatsunejoin")
    assert events._is_command("<@42> hatsune join") and events._is_command("<@!42> hatsune")
    assert not events._is_command("<@42> miku join") and not events._is_command("<@42> hello")


async def test_group_name_is_what_the_replies_tell_members_to_type():
    from bot_client.session import JoinRequest, PresenceKeeper, SessionManager

    config = BotConfig(command_prefix="?", group_name="hatsune", sync_app_commands=False,
                       permissions=PermissionsConfig(join=("DJ",)))
    bot = MikuBot(config, AsyncMock(spec=GraphClient))
    await bot.add_cog(VoiceCog(bot))
    cog = bot.get_cog("Voice")
    ctx = context(member())
    await cog.miku.callback(cog, ctx)  # the group's help
    help_text = ctx.reply.await_args.args[0]
    assert "`?hatsune join [#voice-channel]`" in help_text and "!miku" not in help_text
    ctx = context(member(roles=("Fans",), voice_channel=voice_channel()))
    await cog.join.callback(cog, ctx, None)
    assert "`?hatsune join`" in ctx.reply.await_args.args[0]
    assert "`?hatsune join`" in format_status(None, None, None, command=config.command_name)

    manager = SessionManager(AsyncMock(spec=GraphClient), config, PresenceKeeper(AsyncMock()))
    manager._joining.add(1)  # a join under way in this guild
    outcome = await manager.join(JoinRequest(1, 2, 3, 4), AsyncMock(), AsyncMock())
    assert outcome.message == "❌ Already in a voice session! Use `?hatsune leave` first."
