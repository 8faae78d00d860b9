"""Deciding that someone asked for a picture: a corpus of requests and of talk about pictures (EN + ZH),
through the detector and streamed through the brain (a mention in Normal mode, then in a voice session)."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from graph.brain import Brain, BrainConfig, FeatureCheck
from graph.brain.actions import DRAW_WHAT_MESSAGE
from graph.brain.draw_request import detect_draw_request

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "draw_requests.tsv"


def corpus() -> list[tuple[str, str, str | None]]:
    rows = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        rows.append((parts[0], parts[1], parts[2] if len(parts) > 2 else None))
    return rows


def test_corpus_has_both_kinds_in_both_languages():
    rows = corpus()
    kinds = {(kind, any("\u4e00" <= ch <= "\u9fff" for ch in text)) for kind, text, _ in rows}
    assert kinds == {("request", False), ("request", True), ("talk", False), ("talk", True)}


@pytest.mark.parametrize("kind,text,subject", corpus())
def test_detector_on_the_corpus(kind, text, subject):
    found = detect_draw_request(text)
    if kind == "request":
        assert found is not None and found.subject == subject
    else:
        assert found is None


def test_a_bare_command_asks_what_to_draw():
    assert detect_draw_request("!draw") is not None and detect_draw_request("!draw").subject == ""


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Blackouts:
    def __init__(self):
        self.voice = False
        self.asked: list[str] = []

    async def __call__(self, feature: str) -> FeatureCheck:
        self.asked.append(feature)
        if not self.voice:
            return FeatureCheck(True)
        if feature == "image_generation":
            return FeatureCheck(False, "🎤 no drawing in voice", False)
        return FeatureCheck(False, None, True)


async def test_corpus_through_the_brain_draws_only_on_requests():
    clock = Clock()
    config = dataclasses.replace(BrainConfig.load(REPO / "configs" / "brain.yaml"), memory_path=":memory:")
    blackouts = Blackouts()

    async def llm(prompt: str, system: str | None = None, options=None) -> str:
        return "a normal answer"

    brain = await Brain.create(config, complete=llm, check_feature=blackouts, clock=clock, rng=random.Random(1))
    try:
        for voice in (False, True):
            blackouts.voice = voice
            for index, (kind, text, subject) in enumerate(corpus()):
                clock.now += 120  # past any per-chat rate limit
                message_id = f"{int(voice)}-{index}"
                event = {"type": "message", "event_id": message_id, "guild_id": "g", "channel_id": f"c{index}",
                         "message_id": message_id, "author_id": "u1", "author_name": "Ann", "content": text,
                         "mentions_miku": True, "timestamp": clock.now}
                actions = (await brain.handle_event(event))["actions"]
                types = [a["type"] for a in actions if a["type"] != "react"]
                if kind == "request" and not voice:
                    assert types == ["draw"], (text, actions)
                    assert actions[0]["prompt"] == subject and "twin tails" in actions[0]["style"]
                elif kind == "request":
                    assert types == ["blocked"] and actions[0]["message"] == "🎤 no drawing in voice", (text, actions)
                elif not voice:
                    assert types == ["reply"] and actions[0]["text"], (text, actions)
                else:
                    assert types == ["queue"], (text, actions)  # talk waits for the session's end like any text
        clock.now += 120
        command = {"type": "message", "event_id": "cmd", "guild_id": "g", "channel_id": "cq", "message_id": "cmd",
                   "author_id": "u1", "content": "!draw a leek on the moon", "timestamp": clock.now}  # no mention
        blackouts.voice = False
        assert [a["prompt"] for a in (await brain.handle_event(command))["actions"] if a["type"] == "draw"] == ["a leek on the moon"]
        clock.now += 120
        bare = {"type": "message", "event_id": "bare", "guild_id": "g", "channel_id": "cb", "message_id": "bare",
                "author_id": "u1", "content": "!draw", "mentions_miku": True, "timestamp": clock.now}
        assert (await brain.handle_event(bare))["actions"][0]["text"] == DRAW_WHAT_MESSAGE
    finally:
        await brain.close()


async def test_an_image_triggers_vision_only_when_miku_is_addressed():
    clock = Clock()
    config = dataclasses.replace(BrainConfig.load(REPO / "configs" / "brain.yaml"), memory_path=":memory:")

    async def llm(prompt: str, system: str | None = None, options=None) -> str:
        return "a normal answer"

    brain = await Brain.create(config, complete=llm, check_feature=Blackouts(), clock=clock, rng=random.Random(2))
    try:
        def event(i: int, **extra) -> dict:
            clock.now += 120
            return {"type": "message", "event_id": f"v{i}", "guild_id": "g", "channel_id": "cv", "message_id": f"v{i}",
                    "author_id": "u2", "author_name": "Bo", "content": "look at my cat", "timestamp": clock.now,
                    "attachments": [{"url": "https://cdn.discordapp.com/attachments/1/2/cat.png", "content_type": "image/png"}],
                    **extra}

        unaddressed = [a["type"] for a in (await brain.handle_event(event(1)))["actions"]]
        assert "look" not in unaddressed  # only context
        actions = (await brain.handle_event(event(2, mentions_miku=True)))["actions"]
        look = next(a for a in actions if a["type"] == "look")
        assert list(look["attachments"]) == [{"content_type": "image/png", "url": "https://cdn.discordapp.com/attachments/1/2/cat.png"}]
        assert "Miku" in look["prompt"]["system"] and "attached image" in look["prompt"]["system"]
        assert look["prompt"]["user"] == "Bo: look at my cat"
        link = (await brain.handle_event(event(3, mentions_miku=True, attachments=[], channel_id="cw",
                                              content="what is this https://cdn.discordapp.com/attachments/9/9/x.gif")))["actions"]
        assert "look" in [a["type"] for a in link], link
        assert next(a for a in link if a["type"] == "look")["attachments"][0]["url"].endswith("/x.gif"), link
    finally:
        await brain.close()


async def test_focus_mode_adds_the_llm_judge_for_what_the_keywords_miss():
    from graph.brain.actions import ActionContext, ChatMode, DrawActionDef, default_registry
    from graph.brain.activation import ActionModifier
    from graph.brain.events import parse_event
    from graph.brain.judge import JudgeCache, LLMJudge

    asked: list[str] = []

    async def judge_llm(prompt: str, system: str | None, options=None) -> str:
        asked.append(prompt)
        return "yes" if "whip up" in prompt else "no"

    registry = default_registry()
    modifier = ActionModifier(registry.build(), LLMJudge(judge_llm, JudgeCache(30.0, lambda: 0.0), timeout_s=5.0),
                              random.Random(0))

    def ctx(text: str, mode: ChatMode) -> ActionContext:
        ev = parse_event({"type": "message", "event_id": text[:20], "channel_id": "c", "message_id": "m", "guild_id": "g",
                          "author_id": "u", "content": text, "timestamp": 1.0})
        return ActionContext(mode=mode, message=ev, new_messages=(ev,), context_text=text)

    # no drawing words the detector knows, but "picture" fits the action's description, so the
    # pre-filter lets the judge decide (a message sharing no word with it would be skipped unasked)
    whip = "could you whip up a little picture of a frog in a raincoat for me?"
    assert "draw" not in (await modifier.select(ctx(whip, ChatMode.NORMAL))).usable  # Normal: keywords only, no LLM
    assert asked == []
    focus = await modifier.select(ctx(whip, ChatMode.FOCUS))
    assert "draw" in focus.usable and focus.reasons["draw"] == "llm judge"
    talk = await modifier.select(ctx("I love your drawing!", ChatMode.FOCUS))
    assert "draw" not in talk.usable and talk.dropped["draw"] == "llm judge: no"
    explicit = await modifier.select(ctx("draw me a frog", ChatMode.FOCUS))
    assert explicit.reasons["draw"] == "keyword (judge skipped)"  # a clear request needs no judge
    action = registry.build()["draw"]
    assert isinstance(action, DrawActionDef) and action._subject(ctx(whip, ChatMode.FOCUS)) == whip
