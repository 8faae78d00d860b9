"""By default the autonomous engine tracks every server the bot is in (issue 15).

A server nobody configured is tracked in the text channels the bot can see and write in, the system
channel as its home; the guard lets autonomous messages through there and nowhere else; with
`track_all_servers: false` only the configured servers are tracked, as before.
"""
from __future__ import annotations

from types import SimpleNamespace

from bot_client.bot import MAX_DEFAULT_CHANNELS, AutonomyGuard, default_server, server_config_events
from bot_client.config import AutonomousConfig, AutonomousServerConfig, load_config

ME = object()


def channel(cid: int, *, view: bool = True, send: bool = True) -> SimpleNamespace:
    perms = SimpleNamespace(view_channel=view, send_messages=send)
    return SimpleNamespace(id=cid, permissions_for=lambda member: perms)


def guild(gid: int, channels, system=None) -> SimpleNamespace:
    return SimpleNamespace(id=gid, text_channels=channels, system_channel=system)


def test_default_server_is_the_writable_channels_with_the_system_channel_home():
    general, rules, muted, hidden = channel(11), channel(12), channel(13, send=False), channel(14, view=False)
    server = default_server(guild(1, [rules, general, muted, hidden], system=general), ME)
    assert server == AutonomousServerConfig(1, (11, 12), 11, None)
    no_system = default_server(guild(2, [rules, general], system=muted), ME)
    assert no_system.home_channel_id == 12 and no_system.allowed_channels == (12, 11)
    assert default_server(guild(3, [muted, hidden]), ME) is None
    many = default_server(guild(4, [channel(100 + i) for i in range(60)]), ME)
    assert len(many.allowed_channels) == MAX_DEFAULT_CHANNELS


def test_unconfigured_guilds_are_sent_with_their_default_settings():
    defaults = {5: AutonomousServerConfig(5, (51, 52), 51, None)}
    configured = AutonomousServerConfig(6, (61,), None, "Asia/Tokyo")
    config = AutonomousConfig(servers={6: configured})
    events = server_config_events(config, [5, 6, 7], defaults=defaults, new_id=lambda: "x")
    assert [(e["guild_id"], e["allowed_channels"], e.get("home_channel_id")) for e in events] == [
        ("5", ["51", "52"], "51"), ("6", ["61"], None)]
    assert server_config_events(AutonomousConfig(track_all_servers=False), [5], defaults=defaults) == []
    left = server_config_events(config, [5], defaults=defaults, stop=True)
    assert left[0]["allowed_channels"] == []  # the bot left: the graph stops tracking it


def test_the_guard_allows_default_tracked_channels_only():
    defaults = {5: AutonomousServerConfig(5, (51, 52), 51, None)}
    guard = AutonomyGuard(AutonomousConfig(), defaults=defaults)
    action = {"type": "send", "guild_id": "5", "channel_id": "52", "text": "hi", "autonomous": {"action": "fomo"}}
    assert guard.why_not(action) is None
    assert "not in the allow-list" in guard.why_not({**action, "channel_id": "99"})
    assert "no autonomous settings" in guard.why_not({**action, "guild_id": "8"})
    strict = AutonomyGuard(AutonomousConfig(track_all_servers=False), defaults=defaults)
    assert "no autonomous settings" in strict.why_not(action)


def test_track_all_servers_is_on_by_default_and_can_be_switched_off(tmp_path):
    assert load_config(None).autonomous.track_all_servers is True
    path = tmp_path / "bot.yaml"
    path.write_text("autonomous: {track_all_servers: false}\n")
    assert load_config(path).autonomous.track_all_servers is False
