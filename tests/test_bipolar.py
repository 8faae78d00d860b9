"""Bipolar mode: an argument score from provoking messages, Miku and Evil Miku arguing line by line through
a real LLM server, cooldown, commands, and silence during a voice session (the real session controller)."""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from unittest.mock import AsyncMock

import pytest

from bot_client.actions import ActionExecutor
from graph.backends.llm.http_servers import OpenAIBackend
from graph.brain.bipolar import JUDGE_SYSTEM, BipolarConfig, BipolarConfigError, BipolarHost
from graph.brain.events import FeatureCheck, parse_event
from graph.brain.llm import complete_from_backend
from graph.brain.personas import PersonaLibrary, load_personas
from graph.controller.config import ControllerConfig
from graph.controller.sessions import SessionRequest
from graph.controller.state_machine import SessionController
from tests.support.llm_server import REPLY

REPO = Path(__file__).resolve().parents[1]
PERSONAS = PersonaLibrary(load_personas(REPO / "configs" / "personas"), "miku")


class Clock:
    def __init__(self) -> None:
        self.now = 5_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def controller(tmp_path):
    counter = itertools.count(1)
    ctl = SessionController.open(ControllerConfig(state_dir=str(tmp_path / "ctl"), lease_s=600),
                                 id_factory=lambda: f"s{next(counter)}")
    yield ctl
    ctl.close()


@pytest.fixture
async def llm(llm_server):
    backend = OpenAIBackend(llm_server.url, model="miku-test")
    yield complete_from_backend(backend)
    await backend.aclose()


_ids = itertools.count(1)


def message(content: str, channel: str = "c1", **extra):
    n = next(_ids)
    return parse_event({"type": "message", "event_id": f"b{n}", "guild_id": "g", "channel_id": channel,
                        "message_id": f"bm{n}", "author_id": "u1", "author_name": "Ann", "content": content,
                        "timestamp": 1.0, **extra})


def host(controller, llm, clock, *, focused: bool = False, **settings) -> BipolarHost:
    async def check(feature: str) -> FeatureCheck:
        return FeatureCheck.coerce(controller.check(feature))

    config = BipolarConfig.from_mapping({"channels": ["c1"], "max_messages": 4, "cooldown_s": 600, **settings})
    return BipolarHost(config, personas=PERSONAS, complete=llm, check_feature=check,
                       is_focused=lambda channel: focused, clock=clock)


def requests_with(server, marker: str):
    return [r for r in server.requests if marker in r.prompt]


async def test_provoking_messages_start_an_argument_written_line_by_line(controller, llm, llm_server):
    clock = Clock()
    bipolar = host(controller, llm, clock)
    actions, consumed = await bipolar.on_message(message("[b1] so who wins?"))
    assert actions == [] and not consumed and requests_with(llm_server, "[b1]") == []  # 1.5 < 3: no LLM yet
    actions, _ = await bipolar.on_message(message("[b1] Miku or Evil Miku, fight!"))  # + fight + both named
    [argument] = actions
    assert argument["type"] == "argument" and argument["channel_id"] == "c1"
    lines = argument["lines"]
    assert [line["persona"] for line in lines] == ["miku", "evil_miku", "miku", "evil_miku"]
    assert [line["display_name"] for line in lines] == ["Hatsune Miku", "Evil Miku"] * 2
    assert all(line["text"] == REPLY for line in lines)  # each line is the LLM's
    written = requests_with(llm_server, "[b1]")
    assert len(written) == 4
    assert PERSONAS.get("miku").system_prompt in written[0].system
    assert PERSONAS.get("evil_miku").system_prompt in written[1].system
    assert "(nobody has spoken yet)" in written[0].prompt
    assert f"Hatsune Miku: {REPLY}" in written[1].prompt and f"Evil Miku: {REPLY}" in written[3].prompt

    # cooldown: more provocation starts nothing and asks the LLM nothing
    actions, _ = await bipolar.on_message(message("[b1] Miku vs Evil Miku again, who wins? fight!"))
    assert actions == [] and len(requests_with(llm_server, "[b1]")) == 4
    actions, consumed = await bipolar.on_message(message("!argue [b1] round two"))
    assert consumed and actions[0]["type"] == "reply" and "just argued" in actions[0]["text"]
    clock.now += 601
    actions, _ = await bipolar.on_message(message("!argue [b1] round two"))
    assert actions[0]["type"] == "argument" and len(requests_with(llm_server, "[b1]")) == 8


async def test_a_voice_session_disables_it_silently_and_logs_the_trigger(controller, llm, llm_server, caplog):
    clock = Clock()
    bipolar = host(controller, llm, clock, judge_in_focus=True)
    session = controller.start_session(SessionRequest(guild_id="g", voice_channel_id="v", text_channel_id="t",
                                                      user_id="u")).session.session_id
    with caplog.at_level(logging.INFO, logger="graph.brain.bipolar"):
        for content in ("[b2] Miku vs Evil Miku, who wins? fight!", "[b2] argue already, Miku and Evil Miku!"):
            assert await bipolar.on_message(message(content)) == ([], False)
        assert await bipolar.on_message(message("!argue [b2] now")) == ([], True)  # nothing posted at all
    assert requests_with(llm_server, "[b2]") == []  # no line, no judge: nothing reached the LLM
    logged = [r.getMessage() for r in caplog.records if "not started" in r.getMessage()]
    assert len(logged) == 3 and "voice session" in logged[0] and "command !argue" in logged[2]
    assert bipolar.stats["suppressed_by_session"] == 3

    controller.end_session(session)
    actions, consumed = await bipolar.on_message(message("!argue [b2] after the session"))
    assert consumed and actions[0]["type"] == "argument" and len(requests_with(llm_server, "[b2]")) == 4
    # the provocation from during the session was not stored up: a mild message starts nothing now
    clock.now += 601
    assert await bipolar.on_message(message("[b2] who wins?")) == ([], False)


async def test_only_in_channels_where_it_is_on_and_moderators_switch_it(controller, llm, llm_server):
    bipolar = host(controller, llm, Clock())
    assert await bipolar.on_message(message("[b3] Miku vs Evil Miku who wins fight", channel="c2")) == ([], False)
    actions, consumed = await bipolar.on_message(message("!argue [b3]", channel="c2"))
    assert consumed and "off here" in actions[0]["text"]
    actions, _ = await bipolar.on_message(message("!bipolar on", channel="c2"))
    assert "Only moderators" in actions[0]["text"] and "c2" not in bipolar.channels
    actions, _ = await bipolar.on_message(message("!bipolar on", channel="c2", author_can_moderate=True))
    assert "on in this channel" in actions[0]["text"] and "c2" in bipolar.channels
    actions, _ = await bipolar.on_message(message("[b3] Miku vs Evil Miku, who wins? fight", channel="c2"))
    assert actions and actions[0]["type"] == "argument"
    # bots (and her own webhooks) never provoke it, and a replayed message counts once
    ev = message("[b3x] Miku vs Evil Miku who wins fight", channel="c2", author_is_bot=True)
    assert await bipolar.on_message(ev) == ([], False)
    assert requests_with(llm_server, "[b3x]") == []


async def test_the_llm_judge_runs_in_focus_mode(controller, llm, llm_server):
    bipolar = host(controller, llm, Clock(), focused=True, threshold=1.0)
    actions, _ = await bipolar.on_message(message("[b4] [yes] hmm, interesting"))  # no trigger word at all
    [judge] = [r for r in requests_with(llm_server, "[b4]") if r.system == JUDGE_SYSTEM]
    assert "argument or a contest between Hatsune Miku and Evil Miku" in judge.prompt
    assert actions and actions[0]["type"] == "argument"  # the judge's "yes" crossed the threshold
    calm = host(controller, llm, Clock(), focused=True, threshold=1.0)
    assert await calm.on_message(message("[b5] nice weather today")) == ([], False)  # judged "no"
    assert len(requests_with(llm_server, "[b5]")) == 1


@pytest.mark.parametrize("bad, field", [
    ({"max_messages": 50}, "max_messages"),
    ({"personas": ["miku"]}, "bipolar.personas"),
    ({"triggers": {"fight": "lots"}}, "bipolar.triggers.fight"),
    ({"cooldown": 5}, "unknown key"),
    ({"threshold": -1}, "bipolar.threshold"),
])
def test_bad_settings_name_the_field(bad, field):
    with pytest.raises(BipolarConfigError, match=field):
        BipolarConfig.from_mapping(bad)


async def test_each_line_can_carry_its_speakers_llm_options(controller, llm, llm_server):
    seen = []

    async def complete(prompt, system, options=None):
        seen.append(options)
        return await llm(prompt, system)

    async def allow(feature):
        return FeatureCheck(True)

    bipolar = BipolarHost(BipolarConfig(channels=("c1",), max_messages=3), personas=PERSONAS, complete=complete,
                          check_feature=allow, options_for=lambda persona: (persona.name, persona.temperature))
    [argument] = (await bipolar.on_message(message("!argue [b6] options")))[0]
    assert len(argument["lines"]) == 3
    assert seen == [("miku", 0.8), ("evil_miku", 0.95), ("miku", 0.8)]


def test_naming_evil_miku_alone_does_not_count_as_naming_both(controller):
    bipolar = BipolarHost(BipolarConfig(triggers={}), personas=PERSONAS, complete=None, check_feature=AsyncMock())
    assert bipolar.keyword_points("Evil Miku is here") == 0
    assert bipolar.keyword_points("Miku and Evil Miku are here") == 1.5
    assert bipolar.keyword_points("hatsune, meet dark miku") == 1.5


def test_an_unknown_persona_is_a_start_up_error():
    with pytest.raises(BipolarConfigError, match="no persona 'good_miku'"):
        BipolarHost(BipolarConfig(personas=("miku", "good_miku")), personas=PERSONAS, complete=None,
                    check_feature=AsyncMock())


async def test_the_client_posts_each_line_as_its_persona_in_order():
    class Ops:
        def __init__(self):
            self.posts = []

        async def send_as(self, channel_id, persona, display_name, text):
            self.posts.append((channel_id, persona, display_name, text))

    action = {"type": "argument", "channel_id": "7", "pace_s": 2.0, "lines": [
        {"persona": "miku", "display_name": "Hatsune Miku", "text": "Leeks are the best!"},
        {"persona": "evil_miku", "display_name": "Evil Miku", "text": "Leeks are overrated."}]}
    ops = Ops()
    executor = ActionExecutor(ops)
    pauses = []

    async def pause(seconds):
        pauses.append((seconds, len(ops.posts)))

    executor.sleep = pause
    assert (await executor.execute([action])).done == ["argument"]
    assert pauses == [(2.0, 1)]  # one pause, between the two speakers
    assert ops.posts == [(7, "miku", "Hatsune Miku", "Leeks are the best!"),
                         (7, "evil_miku", "Evil Miku", "Leeks are overrated.")]
    class PlainOps:  # a client without webhooks
        def __init__(self):
            self.sent = []

        async def send(self, channel_id, text):
            self.sent.append((channel_id, text))

    plain = PlainOps()
    await ActionExecutor(plain).execute([dict(action, pace_s=0)])
    assert plain.sent == [(7, "**Hatsune Miku**: Leeks are the best!"), (7, "**Evil Miku**: Leeks are overrated.")]


async def test_channel_switches_survive_a_restart_in_a_private_file(controller, llm, tmp_path, caplog):
    import os
    import stat

    state = tmp_path / "state" / "bipolar_channels.json"
    first = host(controller, llm, Clock(), state_path=str(state))
    await first.on_message(message("!bipolar on", channel="c9", author_can_moderate=True))
    await first.on_message(message("!bipolar off", channel="c1", author_can_moderate=True))  # on in the config
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    again = host(controller, llm, Clock(), state_path=str(state))
    assert again.channels == {"c9"}
    state.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="graph.brain.bipolar"):
        fallback = host(controller, llm, Clock(), state_path=str(state))
    assert fallback.channels == {"c1"} and any("not read" in r.getMessage() for r in caplog.records)


async def test_discord_ops_post_through_one_webhook_per_persona_or_fall_back_without_permission():
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    import discord

    from bot_client.discord_adapter import SAFE_MENTIONS, DiscordChatOps

    hook = AsyncMock()
    channel = MagicMock(id=7)
    channel.webhooks = AsyncMock(return_value=[])
    channel.create_webhook = AsyncMock(return_value=hook)
    channel.send = AsyncMock()
    client = MagicMock(user=SimpleNamespace(id=1))
    client.get_channel.return_value = channel
    ops = DiscordChatOps(client, persona_picture=lambda persona: f"png of {persona}".encode())
    await ops.send_as(7, "evil_miku", "Evil Miku", "Leeks are overrated.")
    await ops.send_as(7, "evil_miku", "Evil Miku", "Again.")
    channel.create_webhook.assert_awaited_once_with(name="miku-persona:evil_miku", avatar=b"png of evil_miku",
                                                    reason="Miku's bipolar mode")
    assert [c.args for c in hook.send.await_args_list] == [("Leeks are overrated.",), ("Again.",)]
    assert hook.send.await_args.kwargs == {"username": "Evil Miku", "allowed_mentions": SAFE_MENTIONS, "wait": True}

    denied = MagicMock(id=8)
    denied.webhooks = AsyncMock(side_effect=discord.Forbidden(SimpleNamespace(status=403, reason="Forbidden"), "Missing Permissions"))
    denied.create_webhook = AsyncMock()
    denied.send = AsyncMock()
    client.get_channel.return_value = denied
    await ops.send_as(8, "miku", "Hatsune Miku", "Hi!")
    await ops.send_as(8, "miku", "Hatsune Miku", "Hi again!")
    assert denied.webhooks.await_count == 1  # asked once; then straight to the fallback
    assert [c.args for c in denied.send.await_args_list] == [("**Hatsune Miku**: Hi!",), ("**Hatsune Miku**: Hi again!",)]
