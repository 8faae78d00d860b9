"""Profile pictures: checked at start-up, switched with the mood and persona, locked silently during a voice
session (the real session controller's `check("profile_picture")`), applied once when it ends, and Discord's
refusals logged once and retried later."""
from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import AsyncMock

import discord
import pytest
from PIL import Image

from bot_client.actions import ActionExecutor
from bot_client.avatars import (
    DISCORD_AVATAR_MAX_BYTES,
    AvatarOutcome,
    AvatarSettings,
    AvatarSwitcher,
    load_avatars,
)
from bot_client.bot import MikuBot
from bot_client.config import BotConfig, ConfigError
from bot_client.graph_api import FeatureState, GraphClient
from graph.controller.config import ControllerConfig
from graph.controller.sessions import SessionRequest
from graph.controller.state_machine import SessionController

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "configs" / "avatars" / "avatars.yaml"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def controller(tmp_path):
    counter = itertools.count(1)
    ctl = SessionController.open(ControllerConfig(state_dir=str(tmp_path / "ctl"), lease_s=600),
                                 id_factory=lambda: f"s{next(counter)}")
    yield ctl
    ctl.close()


def begin(ctl: SessionController) -> str:
    return ctl.start_session(SessionRequest(guild_id="g", voice_channel_id="v", text_channel_id="t", user_id="u")).session.session_id


class DiscordProfile:
    """Stands where `ClientUser.edit(avatar=...)` is: records every upload, or raises what it is told to."""

    def __init__(self) -> None:
        self.uploads: list[bytes] = []
        self.refuse: list[BaseException] = []
        self.uploaded = asyncio.Event()

    async def __call__(self, data: bytes) -> None:
        if self.refuse:
            raise self.refuse.pop(0)
        self.uploads.append(data)
        self.uploaded.set()


def switcher_for(ctl: SessionController, profile: DiscordProfile, clock: Clock, **settings) -> AvatarSwitcher:
    setup = load_avatars(SHIPPED)
    checks: list[bool] = []

    async def allowed() -> bool:
        verdict = ctl.check("profile_picture").allowed
        checks.append(verdict)
        return verdict

    switcher = AvatarSwitcher(setup.library, AvatarSettings(**{"min_interval_s": 300.0, **settings}), profile,
                              allowed, clock=clock)
    switcher.checks = checks  # type: ignore[attr-defined]
    return switcher


def http_error(cls: type[discord.HTTPException], status: int, message: str, retry_after: str | None = None):
    response = SimpleNamespace(status=status, reason=message, headers={"Retry-After": retry_after} if retry_after else {})
    return cls(response, {"message": message, "code": 0})


# ----------------------------------------------------------------------------------------- start-up checks

def test_the_shipped_pictures_are_real_images_within_discords_limit():
    setup = load_avatars(SHIPPED)
    images = [setup.library.default, *setup.library.moods.values()]
    for persona in setup.library.personas.values():
        images += [persona.default, *persona.moods.values()]
    for image in images:
        assert len(image.data) <= DISCORD_AVATAR_MAX_BYTES
        with Image.open(image.path) as opened:
            assert opened.format == "PNG" and opened.size[0] >= 64
    assert setup.library.pick("miku", "sleepy").name == "miku_sleepy.png"
    assert setup.library.pick("evil_miku", "angry").name == "evil_miku_angry.png"
    assert setup.library.pick("evil_miku", "sleepy").name == "evil_miku.png"  # her own default wins over Miku's
    assert setup.library.pick("miku", "neutral").name == "miku.png"


def copy_config(tmp_path: Path, extra_yaml: str = "") -> Path:
    folder = tmp_path / "avatars"
    folder.mkdir()
    for png in (REPO / "configs" / "avatars").glob("*.png"):
        shutil.copy(png, folder / png.name)
    path = folder / "avatars.yaml"
    path.write_text("default: miku.png\n" + extra_yaml)
    return path


def test_a_file_that_is_not_an_image_is_a_start_up_error_naming_file_and_field(tmp_path):
    path = copy_config(tmp_path, "moods:\n  bubbly: notes.png\n")
    (path.parent / "notes.png").write_text("this is a text file, not a picture")
    with pytest.raises(ConfigError) as error:
        load_avatars(path)
    assert str(path) in str(error.value) and "moods.bubbly" in str(error.value)
    assert "notes.png is not an image" in str(error.value)


def test_a_picture_over_discords_limit_is_a_start_up_error(tmp_path):
    path = copy_config(tmp_path, "personas:\n  evil_miku:\n    default: huge.png\n")
    huge = path.parent / "huge.png"
    huge.write_bytes((path.parent / "miku.png").read_bytes() + b"\0" * DISCORD_AVATAR_MAX_BYTES)
    with pytest.raises(ConfigError, match=r"personas\.evil_miku\.default: .*huge\.png is 10\.0 MiB; Discord's avatar limit"):
        load_avatars(path)


@pytest.mark.parametrize("extra, match", [
    ("moods:\n  shy: missing.png\n", r"moods\.shy: cannot read .*missing\.png"),
    ("min_interval_s: -1\n", "min_interval_s must be a number"),
    ("colour: teal\n", "unknown key"),
    ("max_bytes: 20000000\n", "above Discord's avatar limit"),
])
def test_other_bad_settings_name_the_field(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_avatars(copy_config(tmp_path, extra))


def test_a_gif_is_accepted_and_a_bmp_is_not(tmp_path):
    path = copy_config(tmp_path, "moods:\n  shy: shy.gif\n  silly: silly.bmp\n")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path.parent / "shy.gif")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path.parent / "silly.bmp")
    with pytest.raises(ConfigError, match=r"moods\.silly: .*silly\.bmp is a BMP image"):
        load_avatars(path)


# ----------------------------------------------------------------------------------------- switching

async def test_changes_outside_a_session_locked_during_it_and_applied_once_after(controller):
    clock, profile = Clock(), DiscordProfile()
    switcher = switcher_for(controller, profile, clock)
    library = switcher.library

    switcher.want("miku", "bubbly")
    assert (await switcher.step()).outcome is AvatarOutcome.APPLIED
    assert profile.uploads == [library.pick("miku", "bubbly").data]
    assert (await switcher.step()).outcome is AvatarOutcome.UNCHANGED

    session = begin(controller)
    clock.now += 1000  # well past the rate window: only the session stops it
    for mood in ("sleepy", "angry", "irritated"):
        switcher.want("miku", mood)
        assert (await switcher.step()).outcome is AvatarOutcome.LOCKED
    switcher.want("evil_miku", "angry")  # the latest wish replaces the others
    assert (await switcher.step()).outcome is AvatarOutcome.LOCKED
    assert len(profile.uploads) == 1  # nothing reached Discord during the session

    controller.end_session(session)
    switcher.session_ended()
    assert (await switcher.step()).outcome is AvatarOutcome.APPLIED
    assert (await switcher.step()).outcome is AvatarOutcome.UNCHANGED
    assert profile.uploads[1:] == [library.pick("evil_miku", "angry").data]  # exactly once, the one wanted at the end


async def test_at_most_one_change_per_rate_window(controller):
    clock, profile = Clock(), DiscordProfile()
    switcher = switcher_for(controller, profile, clock)
    switcher.want("miku", "bubbly")
    await switcher.step()
    switcher.want("miku", "sleepy")
    result = await switcher.step()
    assert result.outcome is AvatarOutcome.WAITING and result.retry_s == pytest.approx(300.0)
    switcher.want("miku", "angry")
    clock.now += 299
    assert (await switcher.step()).outcome is AvatarOutcome.WAITING
    clock.now += 1
    assert (await switcher.step()).outcome is AvatarOutcome.APPLIED
    assert len(profile.uploads) == 2 and profile.uploads[-1] == switcher.library.pick("miku", "angry").data


async def test_discord_refusing_is_logged_once_and_retried_later_not_in_a_loop(controller, caplog):
    clock, profile = Clock(), DiscordProfile()
    switcher = switcher_for(controller, profile, clock, retry_after_error_s=1800.0)
    profile.refuse = [http_error(discord.HTTPException, 429, "You are changing your avatar too fast", "700"),
                      http_error(discord.HTTPException, 429, "You are changing your avatar too fast", "700"),
                      http_error(discord.Forbidden, 403, "Missing Permissions")]
    switcher.want("miku", "bubbly")
    with caplog.at_level(logging.WARNING, logger="bot_client.avatars"):
        first = await switcher.step()
        assert first.outcome is AvatarOutcome.REFUSED and first.retry_s == pytest.approx(700.0)
        for _ in range(5):  # asked again and again inside the wait: no call to Discord at all
            assert (await switcher.step()).outcome is AvatarOutcome.WAITING
        clock.now += 700
        assert (await switcher.step()).outcome is AvatarOutcome.REFUSED  # the second 429: not logged again
        clock.now += 700
        forbidden = await switcher.step()
        assert forbidden.outcome is AvatarOutcome.REFUSED and forbidden.retry_s == pytest.approx(1800.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "rate limited" in warnings[0] and "missing permission" in warnings[1]
    clock.now += 1800
    assert (await switcher.step()).outcome is AvatarOutcome.APPLIED and len(profile.uploads) == 1


async def test_the_running_switcher_waits_for_the_session_to_end(controller):
    profile = DiscordProfile()
    switcher = switcher_for(controller, profile, Clock(), min_interval_s=0.0)
    task = asyncio.create_task(switcher.run())
    try:
        session = begin(controller)
        switcher.want("evil_miku", None)
        async with asyncio.timeout(30):
            while False not in switcher.checks:  # the loop asked the controller and was told no
                await asyncio.sleep(0.01)
        assert profile.uploads == []
        controller.end_session(session)
        switcher.session_ended()
        async with asyncio.timeout(30):
            await profile.uploaded.wait()
        assert profile.uploads == [switcher.library.pick("evil_miku", None).data]
    finally:
        task.cancel()


# ----------------------------------------------------------------------------------------- bot wiring

async def test_the_bot_locks_while_its_own_or_the_controllers_session_runs():
    graph = AsyncMock(spec=GraphClient)
    graph.check_feature.return_value = FeatureState("profile_picture", False)
    bot = MikuBot(BotConfig(sync_app_commands=False), graph, avatars=load_avatars(SHIPPED))
    assert bot.avatars is not None
    assert await bot._avatar_allowed()
    graph.check_feature.return_value = FeatureState("profile_picture", True, None, "locked")
    assert not await bot._avatar_allowed()
    graph.check_feature.assert_awaited_with("profile_picture")
    assert MikuBot(BotConfig(sync_app_commands=False), graph).avatars is None  # not configured: never changes


async def test_a_persona_switch_action_asks_for_that_personas_picture():
    ops = AsyncMock()
    executor = ActionExecutor(ops)
    seen: list[tuple[int, str]] = []
    executor.on_persona = lambda guild, persona: seen.append((guild, persona))
    report = await executor.execute([{"type": "switch_persona", "guild_id": "5", "persona": "evil_miku",
                                      "display_name": "Evil Miku"}])
    assert report.done == ["switch_persona"] and seen == [(5, "evil_miku")]
    ops.set_nickname.assert_awaited_once_with(5, "Evil Miku")


async def test_the_bot_follows_the_graphs_mood_over_http_and_holds_it_during_a_session(controller, aiohttp_graph):
    """The bot's own wiring: `GET /v1/mood` feeds the switcher, `GET /v1/features/profile_picture` (the real
    controller's answer) locks it, and the picture wanted at the session's end is uploaded once."""
    from bot_client.avatars import AvatarFeed

    state, url = aiohttp_graph
    state["controller"] = controller
    graph = GraphClient(url, "t0ken")
    bot = MikuBot(BotConfig(sync_app_commands=False), graph, avatars=load_avatars(SHIPPED))
    profile = DiscordProfile()
    clock = Clock()
    switcher = AvatarSwitcher(bot.avatars.library, AvatarSettings(min_interval_s=300.0), profile,
                              bot._avatar_allowed, clock=clock)
    feed = AvatarFeed(switcher, graph.persona_mood, lambda: 42)
    try:
        state["mood"] = "excited"
        assert await feed.poll_once()
        assert (await switcher.step()).outcome is AvatarOutcome.APPLIED
        assert profile.uploads == [switcher.library.pick("miku", "excited").data]

        session = begin(controller)
        clock.now += 1000
        for mood in ("sleepy", "angry"):
            state["mood"] = mood
            await feed.poll_once()
            assert (await switcher.step()).outcome is AvatarOutcome.LOCKED
        assert len(profile.uploads) == 1 and state["feature_checks"] == 3  # asked each time, refused twice
        controller.end_session(session)
        switcher.session_ended()
        assert (await switcher.step()).outcome is AvatarOutcome.APPLIED
        assert (await switcher.step()).outcome is AvatarOutcome.UNCHANGED
        assert profile.uploads[1:] == [switcher.library.pick("miku", "angry").data]
        assert state["mood_queries"] == ["42", "42", "42"]
    finally:
        await graph.close()


@pytest.fixture
async def aiohttp_graph():
    """A real HTTP server with the graph's two routes the avatar feature uses."""
    from aiohttp import web

    state: dict = {"mood": "neutral", "persona": "miku", "mood_queries": [], "feature_checks": 0}

    async def mood(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer t0ken"
        state["mood_queries"].append(request.query.get("guild_id"))
        return web.json_response({"guild_id": request.query.get("guild_id"), "persona": state["persona"],
                                  "display_name": "Hatsune Miku", "mood": state["mood"]})

    async def feature(request: web.Request) -> web.Response:
        state["feature_checks"] += 1
        return web.json_response(state["controller"].check(request.match_info["name"]).to_dict())

    app = web.Application()
    app.router.add_get("/v1/mood", mood)
    app.router.add_get("/v1/features/{name}", feature)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def test_the_bot_refuses_to_start_with_a_bad_picture(tmp_path, monkeypatch, capsys):
    from bot_client.__main__ import main

    avatars = copy_config(tmp_path, "moods:\n  shy: shy.png\n")
    (avatars.parent / "shy.png").write_bytes(b"GIF89a but not really")
    config = tmp_path / "bot.yaml"
    config.write_text(f"avatars: {avatars}\n")
    monkeypatch.setenv("DISCORD_TOKEN", "x")
    monkeypatch.setenv("MIKU_GRAPH_TOKEN", "y")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(avatars) in err and "moods.shy" in err and "shy.png is not an image" in err


async def test_a_restart_neither_uploads_the_same_picture_again_nor_forgets_the_window(controller, tmp_path):
    import os
    import stat

    from bot_client.avatars import AvatarMemory

    setup = load_avatars(SHIPPED)
    memory = AvatarMemory(tmp_path / "state" / "avatar_applied.json")
    wall = {"now": 1_700_000_000.0}

    async def allowed():
        return True

    def switcher(profile):
        return AvatarSwitcher(setup.library, AvatarSettings(min_interval_s=300.0), profile, allowed, clock=Clock(),
                              memory=memory, wall_clock=lambda: wall["now"])

    first_profile = DiscordProfile()
    first = switcher(first_profile)
    first.want("miku", "bubbly")
    assert (await first.step()).outcome is AvatarOutcome.APPLIED
    assert stat.S_IMODE(os.stat(memory.path).st_mode) == 0o600

    wall["now"] += 60  # the bot restarts a minute later
    again_profile = DiscordProfile()
    again = switcher(again_profile)
    again.want("miku", "bubbly")
    assert (await again.step()).outcome is AvatarOutcome.UNCHANGED  # Discord already shows it
    again.want("miku", "sleepy")
    waiting = await again.step()
    assert waiting.outcome is AvatarOutcome.WAITING and waiting.retry_s == pytest.approx(240.0)
    assert again_profile.uploads == []

    memory.path.write_text("garbage")
    fresh = switcher(DiscordProfile())
    fresh.want("miku", "bubbly")
    assert (await fresh.step()).outcome is AvatarOutcome.APPLIED  # unreadable state: just uploads once


async def test_the_bots_switcher_keeps_its_state_where_the_config_says(tmp_path):
    path = copy_config(tmp_path, f"state_file: {tmp_path / 'kept' / 'applied.json'}\n")
    profile = DiscordProfile()

    async def allowed():
        return True

    switcher = AvatarSwitcher.from_setup(load_avatars(path), profile, allowed)
    switcher.want("miku", None)
    assert (await switcher.step()).outcome is AvatarOutcome.APPLIED
    assert (tmp_path / "kept" / "applied.json").exists()
    with pytest.raises(ConfigError, match="state_file must be a file path"):
        (tmp_path / "other").mkdir()
        load_avatars(copy_config(tmp_path / "other", "state_file: 5\n"))
