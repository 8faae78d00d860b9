"""The bot's config file: defaults, the shipped file, and clear errors that name the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from bot_client.config import BotConfig, ConfigError, PromptMode, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_loads():
    config = load_config(ROOT / "configs" / "bot.yaml")
    assert config.session.prompt_mode is PromptMode.QUEUE and config.playback.prebuffer_ms == 100
    assert config.session.presence_text == "🎤 In Voice Chat"


@pytest.mark.parametrize(
    "text, field",
    [
        ("session: {prompt_mode: shout}", "session.prompt_mode"),
        ("playback: {prebuffer_ms: -20}", "playback.prebuffer_ms"),
        ("permissions: {join: 5}", "permissions.join"),
        ("graph: {urll: x}", "urll"),
        ("session: [1, 2]", "session"),
    ],
)
def test_bad_values_name_the_field(tmp_path, text, field):
    path = tmp_path / "bot.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path)


def test_prebuffer_must_be_whole_frames(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text("playback: {prebuffer_ms: 30}")
    with pytest.raises(ConfigError, match="multiple of 20"):
        load_config(path)


def test_graph_token_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MIKU_GRAPH_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    path = tmp_path / "bot.yaml"
    path.write_text(f"graph: {{token_file: {token_file}}}")
    assert load_config(path).graph_token() == "from-file"
    monkeypatch.setenv("MIKU_GRAPH_TOKEN", "from-env")
    assert load_config(path).graph_token() == "from-env"
    monkeypatch.delenv("MIKU_GRAPH_TOKEN")
    with pytest.raises(ConfigError, match="MIKU_GRAPH_TOKEN"):
        BotConfig().graph_token()


def test_bot_client_never_imports_ray():
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, bot_client, bot_client.cogs\n"
        "for m in pkgutil.walk_packages(bot_client.__path__, 'bot_client.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'ray' or n.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_main_refuses_to_start_without_tokens_or_with_a_missing_config(monkeypatch, capsys):
    from bot_client.__main__ import main

    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    assert main([]) == 2
    assert "DISCORD_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("DISCORD_TOKEN", "x")
    assert main(["--config", "/nonexistent/bot.yaml"]) == 2
    assert "cannot read bot config" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["Miku", "two words", "", "x" * 33, "mi!ku"])
def test_group_name_must_be_a_valid_slash_command_name(tmp_path, value):
    path = tmp_path / "bot.yaml"
    path.write_text(f"group_name: {value!r}")
    with pytest.raises(ConfigError, match="group_name"):
        load_config(path)


def test_group_name_and_prefix_make_the_command_name(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text("command_prefix: '?'\ngroup_name: hatsune-miku")
    assert load_config(path).command_name == "?hatsune-miku"
    assert BotConfig().command_name == "!miku"
