"""The action modifier: which actions are usable for one decision cycle.

Order of work, cheapest first: mode filter (`mode_enable`, `enable_plugin`), then the pre-filter
(actions that cannot apply to this message), then ALWAYS/NEVER/RANDOM/KEYWORD, then LLM_JUDGE for
what is left, all judges in parallel, after the seed's layered judge pre-filter (`JudgePrefilter`):
no judge for an action a KEYWORD action already covers (same `intent`), for a concrete-request action
whose description does not fit the message at all, or for a complex (non-parallel) action on a very
short message. KEYWORD looks at the new messages only, so a keyword said an hour ago does not keep an
action firing. In NORMAL mode LLM_JUDGE runs the judge with the seed's performance warning (one LLM call
per message and action), or, with `normal_judge="keywords"`, falls back to its keywords or its random
probability as before. reply/no_reply are never filtered. Judge calls the pre-filter saved are counted.
"""
from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
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
    saved: dict[str, str] = field(default_factory=dict)  # judges the pre-filter skipped, and why


# Words of action descriptions that say nothing about what a message is about.
_GENERIC = frozenset(
    "user users miku message messages chat asks someone something about with that this from into when "
    "what which their there should would could right current action actions specific".split()
)
_WORD = re.compile(r"[a-z]{4,}")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def _stems(text: str) -> set[str]:
    """Four-letter stems of the content words ("drawing" and "draw" meet at "draw")."""
    return {w[:4] for w in _WORD.findall(text.lower()) if w not in _GENERIC}


@dataclass(frozen=True)
class JudgePrefilter:
    """The seed's layered pre-filter in front of the LLM judges. Every layer only ever skips judges of
    special actions (reply/no_reply never reach it); a skipped judge is counted as a call saved."""

    short_message_chars: int = 4  # new messages this short (in all) get no judge for complex actions
    description_fit: bool = True

    def skip_reason(self, action: BaseAction, texts: Sequence[str], keyword_intents: set[str], has_visuals: bool) -> str | None:
        spec = action.spec
        if spec.intent and spec.intent in keyword_intents:
            return f"covered by a KEYWORD action ({spec.intent})"
        joined = " ".join(texts).strip()
        if not spec.parallel_action and not has_visuals and len(joined) < self.short_message_chars:
            return "complex action, very short message"
        if self.description_fit and spec.activation_keywords and joined and not _CJK.search(joined):
            # A concrete-request action (it has trigger words) whose description, judge question and
            # keywords share no word with the message cannot be what the message asks for.
            wanted = _stems(" ".join((spec.description, spec.llm_judge_prompt, *spec.activation_keywords)))
            if wanted and not (_stems(joined) & wanted):
                return "description does not fit the message"
        return None

class ActionModifier:
    """Picks the usable actions for a cycle from the registry's built instances."""

    def __init__(self, actions: Mapping[str, BaseAction], judge: LLMJudge, rng: random.Random, *,
                 normal_judge: str = "judge", prefilter: JudgePrefilter | None = None):
        if normal_judge not in ("judge", "keywords"):
            raise ValueError(f"normal_judge must be 'judge' or 'keywords', got {normal_judge!r}")
        self.actions = dict(actions)
        self.judge = judge
        self.rng = rng
        self.normal_judge = normal_judge
        self.prefilter = prefilter or JudgePrefilter()
        self.saved: Counter[str] = Counter()  # judge calls the pre-filter saved, by reason
        self._warned: set[str] = set()

    @property
    def judge_calls_saved(self) -> int:
        return sum(self.saved.values())

    def effective_type(self, action: BaseAction, mode: ChatMode, warnings: list[str]) -> ActivationType:
        """The activation type in `mode`. In NORMAL, LLM_JUDGE stays a judge (with the seed's warning
        that it costs an LLM call per message) or, with normal_judge="keywords", becomes KEYWORD or
        RANDOM (or NEVER)."""
        kind = action.spec.activation_type(mode)
        if mode is not ChatMode.NORMAL or kind is not ActivationType.LLM_JUDGE:
            return kind
        spec = action.spec
        if self.normal_judge == "judge":
            message = (
                f"action {spec.name!r}: LLM_JUDGE in NORMAL mode asks the LLM on every message it could "
                "apply to, which is slow and costly; prefer KEYWORD or RANDOM for normal_activation_type "
                "(or set brain.normal_judge: keywords to fall back to the keywords)"
            )
            warnings.append(message)
            if spec.name not in self._warned:
                self._warned.add(spec.name)
                log.warning(message)
            return kind
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

        # Pre-filter the judges: a keyword hit activates without asking; the layered pre-filter drops
        # the judges that cannot say yes; the rest go to the LLM in parallel.
        to_judge: list[BaseAction] = []
        has_visuals = any(a.is_visual for m in ctx.new_messages for a in m.attachments)
        for action in pending_judges:
            spec = action.spec
            if spec.matches_keywords(texts):
                result.reasons[spec.name] = "keyword (judge skipped)"
                result.saved[spec.name] = "keyword"
                continue
            reason = self.prefilter.skip_reason(action, [m.content for m in ctx.new_messages], keyword_intents, has_visuals)
            if reason is None:
                to_judge.append(action)
            else:
                result.dropped[spec.name] = reason
                result.saved[spec.name] = reason
        self.saved.update(result.saved.values())

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
