"""The action modifier: which actions are usable for one decision cycle.

Order of work, cheapest first: mode filter (`mode_enable`, `enable_plugin`), then the pre-filter
(actions that cannot apply to this message), then ALWAYS/NEVER/RANDOM/KEYWORD, then LLM_JUDGE for
what is left — minus judges a KEYWORD action already covers — all judges in parallel. KEYWORD looks
at the new messages only, so a keyword said an hour ago does not keep an action firing. NORMAL mode
never calls the LLM: an LLM_JUDGE action falls back to its keywords or its random probability, with a
warning so the config can be fixed. reply/no_reply are never filtered.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from graph.brain.actions import (
    CORE_ACTIONS,
    ActionContext,
    ActivationType,
    BaseAction,
    ChatMode,
)
from graph.brain.judge import JudgeRequest, LLMJudge

log = logging.getLogger(__name__)


@dataclass
class ActivationResult:
    """Usable action names (registry order), why each got in, and why the others did not."""

    usable: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    judged: list[str] = field(default_factory=list)  # actions that went to an LLM judge


class ActionModifier:
    """Picks the usable actions for a cycle from the registry's built instances."""

    def __init__(self, actions: Mapping[str, BaseAction], judge: LLMJudge, rng: random.Random):
        self.actions = dict(actions)
        self.judge = judge
        self.rng = rng
        self._warned: set[str] = set()

    def effective_type(self, action: BaseAction, mode: ChatMode, warnings: list[str]) -> ActivationType:
        """The activation type in `mode`; in NORMAL, LLM_JUDGE becomes KEYWORD or RANDOM (or NEVER)."""
        kind = action.spec.activation_type(mode)
        if mode is not ChatMode.NORMAL or kind is not ActivationType.LLM_JUDGE:
            return kind
        spec = action.spec
        if spec.activation_keywords:
            fallback = ActivationType.KEYWORD
        elif spec.random_activation_probability > 0:
            fallback = ActivationType.RANDOM
        else:
            fallback = ActivationType.NEVER
        message = (
            f"action {spec.name!r}: LLM_JUDGE is not used in NORMAL mode; falling back to "
            f"{fallback.name} (set normal_activation_type to silence this)"
        )
        warnings.append(message)
        if spec.name not in self._warned:
            self._warned.add(spec.name)
            log.warning(message)
        return fallback

    async def select(self, ctx: ActionContext) -> ActivationResult:
        result = ActivationResult()
        texts = [m.content for m in ctx.new_messages]
        pending_judges: list[BaseAction] = []
        keyword_intents: set[str] = set()
        kinds: dict[str, ActivationType] = {}

        for name, action in self.actions.items():
            spec = action.spec
            if not spec.enabled_in(ctx.mode):
                result.dropped[name] = "disabled" if not spec.enable_plugin else f"not enabled in {ctx.mode.name}"
                continue
            if name not in CORE_ACTIONS and not action.applies(ctx):
                result.dropped[name] = "cannot apply to this message"
                continue
            kinds[name] = self.effective_type(action, ctx.mode, result.warnings)

        for name, kind in kinds.items():
            action = self.actions[name]
            if name in CORE_ACTIONS and kind in (ActivationType.NEVER, ActivationType.LLM_JUDGE):
                kind = ActivationType.ALWAYS  # the planner always needs its two basic choices
            if kind is ActivationType.ALWAYS:
                result.reasons[name] = "always"
            elif kind is ActivationType.NEVER:
                result.dropped[name] = "never"
            elif kind is ActivationType.RANDOM:
                if self.rng.random() < action.spec.random_activation_probability:
                    result.reasons[name] = "random"
                else:
                    result.dropped[name] = "random: not this time"
            elif kind is ActivationType.KEYWORD:
                if action.spec.matches_keywords(texts):
                    result.reasons[name] = "keyword"
                    if action.spec.intent:
                        keyword_intents.add(action.spec.intent)
                else:
                    result.dropped[name] = "keyword: no match in new messages"
            else:
                pending_judges.append(action)

        # Pre-filter the judges: a keyword hit activates without asking; a KEYWORD action with the
        # same intent already covers it; the rest go to the LLM in parallel.
        to_judge: list[BaseAction] = []
        for action in pending_judges:
            spec = action.spec
            if spec.matches_keywords(texts):
                result.reasons[spec.name] = "keyword (judge skipped)"
            elif spec.intent and spec.intent in keyword_intents:
                result.dropped[spec.name] = f"covered by a KEYWORD action ({spec.intent})"
            else:
                to_judge.append(action)

        if to_judge:
            result.judged = [a.spec.name for a in to_judge]
            verdicts = await self.judge.judge_many(
                [JudgeRequest(a.spec.name, a.spec.judge_config(), a.spec.llm_judge_prompt or a.spec.description) for a in to_judge],
                ctx.context_text,
                ctx.llm_options,
            )
            for name, verdict in verdicts.items():
                if verdict:
                    result.reasons[name] = "llm judge"
                else:
                    result.dropped[name] = "llm judge: no"

        result.usable = [name for name in self.actions if name in result.reasons]
        return result
