"""Action activation: each activation type, the strict judge parser, the 30 s cache, the pre-filter,
parallel judges with timeouts, the NORMAL-mode fallback and registry overrides."""
from __future__ import annotations

import asyncio
import logging
import random

import pytest

from graph.brain.actions import (
    ActionContext,
    ActionRegistry,
    ActivationType,
    BaseAction,
    ChatMode,
    DrawActionDef,
    EmojiActionDef,
    default_registry,
)
from graph.brain.activation import ActionModifier
from graph.brain.events import FeatureCheck, parse_event
from graph.brain.judge import JudgeCache, JudgeRequest, LLMJudge, parse_judge_answer


def message(content: str = "hello there", **extra) -> object:
    return parse_event(
        {
            "type": "message",
            "event_id": "e-" + content[:10],
            "guild_id": "g",
            "channel_id": "c",
            "message_id": extra.pop("message_id", "m1"),
            "author_id": "u1",
            "author_name": "Ann",
            "content": content,
            "timestamp": 1000.0,
            **extra,
        }
    )


def context(*contents: str, mode: ChatMode = ChatMode.FOCUS, **extra) -> ActionContext:
    msgs = tuple(message(c, message_id=f"m{i}", **extra) for i, c in enumerate(contents))
    return ActionContext(mode=mode, message=msgs[-1], new_messages=msgs, context_text="\n".join(contents))


class RecordingLLM:
    """An injected `complete`: answers from a table keyed by action name, records what it was asked."""

    def __init__(self, answers: dict[str, str] | None = None, default: str = "no"):
        self.answers = answers or {}
        self.default = default
        self.prompts: list[str] = []

    async def __call__(self, prompt: str, system: str | None, options=None) -> str:
        self.prompts.append(prompt)
        for name, answer in self.answers.items():
            if f"Action: {name}\n" in prompt:
                return answer
        return self.default


def make_action(name: str, **attrs) -> type[BaseAction]:
    return type(f"Action_{name}", (BaseAction,), {"action_name": name, "action_description": f"does {name}", **attrs})


def modifier_for(classes, llm=None, *, seed: int = 0, overrides=None, clock=lambda: 0.0, **options) -> ActionModifier:
    registry = ActionRegistry()
    for cls in classes:
        registry.register(cls)
    judge = LLMJudge(llm, JudgeCache(30.0, clock), timeout_s=1.0)
    return ActionModifier(registry.build(overrides), judge, random.Random(seed), **options)


# -- judge parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["yes", "Yes", "YES.", " yes\n", "yes, it fits", "**Yes**", "是", "是的", "是的，应该", "是。", "“是”"])
def test_judge_parser_accepts_yes(answer):
    assert parse_judge_answer(answer) is True


@pytest.mark.parametrize(
    "answer",
    ["no", "No.", "不", "不是", "否", "不是的", "no, yes would be wrong", "yesterday", "是否", "是他说的", "maybe yes",
     "", None, "I think so", "?", "y", "nope", "\n\n", "答：是"],
)
def test_judge_parser_rejects_everything_else(answer):
    assert parse_judge_answer(answer) is False


# -- activation types -----------------------------------------------------------------------------


async def test_always_and_never():
    mod = modifier_for([make_action("a", focus_activation_type=ActivationType.ALWAYS), make_action("n", focus_activation_type=ActivationType.NEVER)])
    result = await mod.select(context("hi"))
    assert result.usable == ["a"]
    assert result.dropped["n"] == "never"


async def test_random_follows_probability_and_seed():
    cls = make_action("r", focus_activation_type=ActivationType.RANDOM, random_activation_probability=0.3)
    mod = modifier_for([cls], seed=42)
    hits = sum(["r" in (await mod.select(context("hi"))).usable for _ in range(2000)])
    assert 500 < hits < 700  # ~30 % of 2000
    never = modifier_for([make_action("z", focus_activation_type=ActivationType.RANDOM, random_activation_probability=0.0)])
    assert not any([(await never.select(context("hi"))).usable for _ in range(50)])


async def test_keyword_matches_new_messages_only_and_respects_case():
    cls = make_action("k", focus_activation_type=ActivationType.KEYWORD, activation_keywords=("Draw",), keyword_case_sensitive=True)
    mod = modifier_for([cls])
    assert (await mod.select(context("please Draw a cat"))).usable == ["k"]
    assert (await mod.select(context("please draw a cat"))).usable == []  # case-sensitive
    # The keyword is in the history (context_text) but not in the new messages: no activation.
    ctx = ActionContext(mode=ChatMode.FOCUS, message=message("nice weather"), new_messages=(message("nice weather"),), context_text="Draw a cat\nnice weather")
    assert (await mod.select(ctx)).usable == []
    insensitive = modifier_for([make_action("k2", focus_activation_type=ActivationType.KEYWORD, activation_keywords=("draw", "画"))])
    assert (await insensitive.select(context("DRAW me"))).usable == ["k2"]
    assert (await insensitive.select(context("给我画一只猫"))).usable == ["k2"]
    assert (await insensitive.select(context("open the drawer"))).usable == []  # whole words only


async def test_llm_judge_yes_no_and_garbage():
    llm = RecordingLLM({"j_yes": "yes", "j_no": "不是", "j_garbage": "as an AI I cannot"})
    classes = [make_action(n, focus_activation_type=ActivationType.LLM_JUDGE) for n in ("j_yes", "j_no", "j_garbage")]
    result = await modifier_for(classes, llm).select(context("hello"))
    assert result.usable == ["j_yes"]
    assert set(result.judged) == {"j_yes", "j_no", "j_garbage"}


async def test_mode_enable_and_enable_plugin_filter_first():
    classes = [
        make_action("focus_only", mode_enable=ChatMode.FOCUS),
        make_action("normal_only", mode_enable=ChatMode.NORMAL),
        make_action("off", enable_plugin=False),
    ]
    mod = modifier_for(classes)
    assert (await mod.select(context("x", mode=ChatMode.FOCUS))).usable == ["focus_only"]
    assert (await mod.select(context("x", mode=ChatMode.NORMAL))).usable == ["normal_only"]


# -- pre-filter ---------------------------------------------------------------------------------


async def test_prefilter_drops_judges_covered_by_keyword_or_inapplicable_never_core():
    llm = RecordingLLM(default="yes")
    covering = make_action("draw_kw", focus_activation_type=ActivationType.KEYWORD, activation_keywords=("paint",), intent="image")
    covered = make_action("draw_judge", focus_activation_type=ActivationType.LLM_JUDGE, intent="image")

    class NeedsImage(BaseAction):
        action_name = "needs_image"
        action_description = "needs an image"
        focus_activation_type = ActivationType.LLM_JUDGE

        def applies(self, ctx):
            return any(m.attachments for m in ctx.new_messages)

    reply = make_action("reply", focus_activation_type=ActivationType.LLM_JUDGE)
    no_reply = make_action("no_reply", focus_activation_type=ActivationType.NEVER)
    mod = modifier_for([reply, no_reply, covering, covered, NeedsImage], llm)
    result = await mod.select(context("paint me something"))
    assert result.usable == ["reply", "no_reply", "draw_kw"]
    assert "covered" in result.dropped["draw_judge"]
    assert result.dropped["needs_image"] == "cannot apply to this message"
    assert llm.prompts == []  # nothing left to judge: no LLM call at all
    # Without the keyword the judge runs, and with an image the inapplicable action is judged too.
    result = await mod.select(context("what a day", attachments=[{"content_type": "image/png", "url": "u"}]))
    assert set(result.judged) == {"draw_judge", "needs_image"}
    assert {"draw_judge", "needs_image", "reply", "no_reply"} <= set(result.usable)


async def test_own_keyword_skips_the_judge():
    llm = RecordingLLM(default="no")
    cls = make_action("j", focus_activation_type=ActivationType.LLM_JUDGE, activation_keywords=("sing",))
    result = await modifier_for([cls], llm).select(context("please sing"))
    assert result.usable == ["j"] and result.reasons["j"].startswith("keyword")
    assert llm.prompts == []


# -- parallel judges, timeouts, failures -------------------------------------------------------


async def test_judges_run_in_parallel():
    in_flight = 0
    peak = 0
    release = asyncio.Event()

    async def complete(prompt, system, options=None):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 5:
            release.set()
        await release.wait()  # only returns once all five are waiting at the same time
        in_flight -= 1
        return "yes"

    judge = LLMJudge(complete, JudgeCache(), timeout_s=5.0)
    requests = [JudgeRequest(f"a{i}", {"name": f"a{i}"}, "q") for i in range(5)]
    verdicts = await judge.judge_many(requests, "ctx")
    assert peak == 5
    assert verdicts == {f"a{i}": True for i in range(5)}


async def test_failed_and_timed_out_judges_count_as_no_and_are_not_cached():
    never = asyncio.Event()

    async def complete(prompt, system, options=None):
        if "Action: slow" in prompt:
            await never.wait()
        if "Action: broken" in prompt:
            raise ConnectionError("llm down")
        return "yes"

    cache = JudgeCache()
    judge = LLMJudge(complete, cache, timeout_s=0.05)
    requests = [JudgeRequest(n, {"name": n}, "q") for n in ("slow", "broken", "fine")]
    verdicts = await judge.judge_many(requests, "ctx")
    assert verdicts == {"slow": False, "broken": False, "fine": True}
    assert judge.failures == 2
    assert cache.get(JudgeCache.key("ctx", {"name": "slow"})) is None  # a transient failure is not remembered
    assert cache.get(JudgeCache.key("ctx", {"name": "fine"})) is True


# -- cache ------------------------------------------------------------------------------------------


async def test_cache_30s_keyed_by_context_and_action_config():
    now = [0.0]
    llm = RecordingLLM(default="yes")
    cache = JudgeCache(30.0, clock=lambda: now[0])
    judge = LLMJudge(llm, cache)
    req = JudgeRequest("emoji", {"name": "emoji", "llm_judge_prompt": "p1"}, "p1")
    assert await judge.judge_many([req], "ctx") == {"emoji": True}
    now[0] = 29.9
    await judge.judge_many([req], "ctx")
    assert len(llm.prompts) == 1 and cache.hits == 1
    await judge.judge_many([req], "other ctx")  # different context: new call
    changed = JudgeRequest("emoji", {"name": "emoji", "llm_judge_prompt": "p2"}, "p2")
    await judge.judge_many([changed], "ctx")  # different action config: new call
    assert len(llm.prompts) == 3
    now[0] = 30.0
    await judge.judge_many([req], "ctx")  # expired after 30 s
    assert len(llm.prompts) == 4
    assert JudgeCache.key("a", {"x": 1, "y": 2}) == JudgeCache.key("a", {"y": 2, "x": 1})


# -- NORMAL-mode fallback ------------------------------------------------------------------------


async def test_normal_mode_llm_judge_falls_back_with_warning_when_configured(caplog):
    llm = RecordingLLM(default="yes")
    kw = make_action("kw", normal_activation_type=ActivationType.LLM_JUDGE, activation_keywords=("mute",))
    rnd = make_action("rnd", normal_activation_type=ActivationType.LLM_JUDGE, random_activation_probability=1.0)
    neither = make_action("neither", normal_activation_type=ActivationType.LLM_JUDGE)
    mod = modifier_for([kw, rnd, neither], llm, normal_judge="keywords")
    with caplog.at_level(logging.WARNING, logger="graph.brain.activation"):
        result = await mod.select(context("please mute him", mode=ChatMode.NORMAL))
    assert result.usable == ["kw", "rnd"]
    assert result.reasons == {"kw": "keyword", "rnd": "random"}
    assert result.dropped["neither"] == "never"
    assert llm.prompts == []  # NORMAL mode never calls the LLM
    assert any("falling back to KEYWORD" in w for w in result.warnings)  # normal_judge: keywords
    assert any("'kw'" in r.getMessage() and "KEYWORD" in r.getMessage() for r in caplog.records)
    result = await mod.select(context("hello", mode=ChatMode.NORMAL))
    assert result.usable == ["rnd"]


# -- registry -------------------------------------------------------------------------------------


def test_registry_overrides_do_not_mutate_classes():
    registry = default_registry()
    before = EmojiActionDef.random_activation_probability
    built = registry.build({"emoji": {"random_activation_probability": 0.9, "normal_activation_type": "keyword", "activation_keywords": ["yay"]}})
    assert built["emoji"].spec.random_activation_probability == 0.9
    assert built["emoji"].spec.normal_activation_type is ActivationType.KEYWORD
    assert EmojiActionDef.random_activation_probability == before
    assert EmojiActionDef.normal_activation_type is ActivationType.RANDOM
    assert registry.build()["emoji"].spec.random_activation_probability == before
    assert built["draw"].spec == DrawActionDef.default_spec()


def test_registry_rejects_bad_overrides_and_duplicates():
    registry = default_registry()
    with pytest.raises(ValueError, match="unknown actions"):
        registry.build({"dance": {}})
    with pytest.raises(ValueError, match="unknown setting 'colour'"):
        registry.build({"emoji": {"colour": "red"}})
    with pytest.raises(ValueError, match="must be one of"):
        registry.build({"emoji": {"focus_activation_type": "sometimes"}})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        registry.build({"emoji": {"random_activation_probability": 2}})
    with pytest.raises(ValueError, match="already registered"):
        registry.register(make_action("emoji"))


# -- built-in actions and blackouts -------------------------------------------------------------


async def test_draw_and_look_blocked_in_voice_with_controller_message():
    built = default_registry().build()
    ctx = context("Miku draw a cat", attachments=[{"content_type": "image/jpeg", "url": "https://x/y.jpg"}])

    async def voice(feature):
        return FeatureCheck(False, f"no {feature} in voice", False)

    async def silent(feature):
        return FeatureCheck(False, None, True)

    async def free(feature):
        return FeatureCheck(True)

    draw = await built["draw"].execute(ctx, voice)
    look = await built["look"].execute(ctx, voice)
    assert [a.to_dict() for a in draw] == [{"type": "blocked", "channel_id": "c", "reply_to_message_id": "m0", "feature": "image_generation", "message": "no image_generation in voice"}]
    assert look[0].to_dict()["message"] == "no vision in voice"
    assert await built["draw"].execute(ctx, silent) == []
    allowed = (await built["look"].execute(ctx, free))[0].to_dict()
    assert allowed["type"] == "look" and allowed["attachments"] == ({"content_type": "image/jpeg", "url": "https://x/y.jpg"},)


def test_mute_needs_moderator_and_one_target():
    mute = default_registry().build()["mute"]
    assert not mute.applies(context("mute <@u2>", mentioned_user_ids=["u2"]))
    assert mute.applies(context("mute <@u2>", mentioned_user_ids=["u2"], author_can_moderate=True))
    assert not mute.applies(context("mute them", mentioned_user_ids=["u2", "u3"], author_can_moderate=True))
