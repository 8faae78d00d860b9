"""The judge side of activation: strict answers, LLM_JUDGE in NORMAL mode (judged, with the seed's
performance warning, or keywords by config), and the seed's layered pre-filter with its saved calls."""
from __future__ import annotations

import logging
import random

import pytest

from graph.brain.actions import (
    ActionContext,
    ActionRegistry,
    ActivationType,
    BaseAction,
    ChatMode,
    default_registry,
)
from graph.brain.activation import ActionModifier, JudgePrefilter
from graph.brain.events import MessageEvent
from graph.brain.judge import JudgeCache, LLMJudge, parse_judge_answer


@pytest.mark.parametrize("answer", [
    "yes, but no", "Yes, but no.", "yes... actually no", "yes, not really", "Yes — I don't think so",
    "是，不是", "是的，不是", "是，但不", "是否", "no", "不是", "maybe yes", "yesterday",
])
def test_a_yes_that_goes_on_to_say_no_is_no(answer):
    assert parse_judge_answer(answer) is False


@pytest.mark.parametrize("answer", ["yes", "Yes.", "**Yes**", "yes, it fits", "是", "是的", "是。", "是的，用户想要画画"])
def test_plain_yes_is_yes(answer):
    assert parse_judge_answer(answer) is True


class CountingLLM:
    def __init__(self, answer: str = "yes"):
        self.answer = answer
        self.calls: list[str] = []

    async def __call__(self, prompt: str, system: str | None, options=None) -> str:
        self.calls.append(prompt)
        return self.answer


def ctx(*texts: str, mode: ChatMode = ChatMode.FOCUS, moderator: bool = False, images: int = 0) -> ActionContext:
    messages = tuple(
        MessageEvent(type="message", event_id=f"e{i}", guild_id="g", channel_id="c", message_id=f"m{i}", author_id="u",
                     content=t, timestamp=1.0, author_can_moderate=moderator, mentioned_user_ids=("u9",) if moderator else (),
                     attachments=[{"content_type": "image/png", "url": f"https://x/{j}.png"} for j in range(images)])
        for i, t in enumerate(texts))
    return ActionContext(mode=mode, message=messages[-1], new_messages=messages, context_text="\n".join(texts))


def modifier(llm, classes=None, **options) -> ActionModifier:
    if classes is None:
        actions = default_registry().build()
    else:
        registry = ActionRegistry()
        for cls in classes:
            registry.register(cls)
        actions = registry.build()
    return ActionModifier(actions, LLMJudge(llm, JudgeCache(30.0, lambda: 0.0), 1.0), random.Random(0), **options)


async def test_normal_mode_llm_judge_runs_the_judge_with_the_performance_warning(caplog):
    llm = CountingLLM("yes")
    mod = modifier(llm)
    with caplog.at_level(logging.WARNING, logger="graph.brain.activation"):
        result = await mod.select(ctx("that member keeps breaking the rules, stop him", mode=ChatMode.NORMAL, moderator=True))
    assert result.judged == ["mute"] and "mute" in result.usable and len(llm.calls) == 1  # judged, not silently never
    assert any("LLM_JUDGE in NORMAL mode asks the LLM on every message" in w for w in result.warnings)
    assert sum("slow and costly" in r.getMessage() for r in caplog.records) == 1
    await mod.select(ctx("another member breaking rules again", mode=ChatMode.NORMAL, moderator=True))
    assert sum("slow and costly" in r.getMessage() for r in caplog.records) == 1  # logged once per action
    fallback = modifier(CountingLLM("yes"), normal_judge="keywords")
    result = await fallback.select(ctx("that member keeps breaking the rules, stop him", mode=ChatMode.NORMAL, moderator=True))
    assert result.judged == [] and "mute" not in result.usable  # as before: keywords only
    with pytest.raises(ValueError, match="normal_judge"):
        modifier(llm, normal_judge="sometimes")


async def test_prefilter_layers_skip_judges_and_count_the_saved_calls():
    llm = CountingLLM("no")
    mod = modifier(llm)
    # very short message: complex actions (draw) get no judge, the simple parallel emoji still does
    result = await mod.select(ctx("lol"))
    assert result.saved == {"draw": "complex action, very short message"} and result.judged == ["emoji"]
    # a long message that has nothing to do with drawing: draw's description does not fit
    result = await mod.select(ctx("the weather is lovely and sunny this afternoon"))
    assert result.saved == {"draw": "description does not fit the message"} and result.judged == ["emoji"]
    # a message about pictures (not a keyword request) goes to the judge
    result = await mod.select(ctx("that picture of the cat yesterday was lovely"))
    assert "draw" in result.judged and "draw" not in result.saved
    # draw's own keyword: activated without a judge (saved too)
    result = await mod.select(ctx("please draw a cat"))
    assert result.reasons["draw"] == "keyword (judge skipped)" and result.saved["draw"] == "keyword"
    # Chinese text is never dropped for not fitting (no word split to compare)
    result = await mod.select(ctx("我们昨天在讨论足球比赛"))
    assert "draw" in result.judged
    assert mod.judge_calls_saved == 3 and mod.saved["description does not fit the message"] == 1


async def test_prefilter_keeps_short_messages_with_images_and_covers_by_keyword_intent():
    class Sketch(BaseAction):
        action_name = "sketch"
        action_description = "Quick sketch"
        normal_activation_type = focus_activation_type = ActivationType.KEYWORD
        activation_keywords = ("sketch",)
        intent = "image_generation"

    class Paint(BaseAction):
        action_name = "paint"
        action_description = "Paint an image"
        focus_activation_type = ActivationType.LLM_JUDGE
        activation_keywords = ("paint",)
        intent = "image_generation"

    class Look(BaseAction):
        action_name = "peek"
        action_description = "Look at the image"
        focus_activation_type = ActivationType.LLM_JUDGE

    llm = CountingLLM("yes")
    mod = modifier(llm, [Sketch, Paint, Look])
    result = await mod.select(ctx("sketch it as a picture"))
    assert result.saved["paint"] == "covered by a KEYWORD action (image_generation)" and "paint" not in result.usable
    result = await mod.select(ctx("lol", images=1))  # short, but it carries an image: still judged
    assert "peek" in result.judged


def test_prefilter_never_touches_reply_and_no_reply():
    prefilter = JudgePrefilter()
    registry = default_registry().build()
    for name in ("reply", "no_reply"):
        # they never reach the judge pre-filter (they are always usable), and even if asked it only
        # looks at special-action fields
        assert registry[name].spec.activation_type(ChatMode.FOCUS) is ActivationType.ALWAYS
    assert prefilter.skip_reason(registry["emoji"], ["ok"], set(), False) is None  # parallel: not "complex"
