"""LLM_JUDGE activation: ask the LLM "should this action be available now?", safely and cheaply.

Systems this design comes from counted any answer containing "是" as yes, so "不是" (no) activated
actions. Here the answer is parsed strictly: only a leading yes-word counts, and an answer that goes on
to say no anywhere ("yes, but no", "是，不是", "yes... actually no") is no; everything else is no,
judges for several actions run in parallel with a timeout each (a failed or slow judge is a no), and
answers are cached for 30 s under a hash of the context and the action's configuration.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Complete = Callable[..., Awaitable[str]]  # complete(prompt, system, options=None)

_YES_EN = ("yes",)
_YES_ZH = ("是的", "是")  # longest first
_NOT_YES_AFTER_ZH = ("否",)  # "是否" means "whether": a question, not an answer
# A yes that later says no (or takes itself back) is not a yes: "yes, but no", "是，不是", "yes... not really".
_NEGATION_EN = re.compile(r"\b(no|not|nope|never|don't|doesn't|shouldn't|isn't|wouldn't|nah)\b|n't\b")
_NEGATION_ZH = ("不", "否", "没", "別", "别", "非")


def _strip_wrapping(text: str) -> str:
    """Drop surrounding whitespace, quotes, brackets and markdown emphasis around an answer."""
    return text.strip().strip("\"'`*_[](){}<>「」『』“”‘’ \t")


def _is_boundary(char: str) -> bool:
    """True for end-of-word characters: punctuation, spaces, symbols (not letters or digits)."""
    return not unicodedata.category(char).startswith(("L", "N"))


def parse_judge_answer(answer: str | None) -> bool:
    """Strictly read a yes/no answer: True only for a leading "yes" / "是" / "是的" word.

    "no", "不", "不是", "否", "yesterday", "是否", "maybe yes", "yes, but no", "是，不是" and garbage are
    all False: a yes followed by any negation on the first line is not a yes.
    """
    if not answer:
        return False
    first_line = next((line for line in answer.strip().splitlines() if line.strip()), "")
    text = _strip_wrapping(unicodedata.normalize("NFKC", first_line)).lower()
    if not text:
        return False
    for word in _YES_EN:
        if text.startswith(word):
            rest = text[len(word):]
            return (not rest or _is_boundary(rest[0])) and not _says_no(rest)
    for word in _YES_ZH:
        if text.startswith(word):
            rest = text[len(word):]
            if rest.startswith(_NOT_YES_AFTER_ZH):
                return False
            # Chinese has no spaces: "是的，…" and "是。" count; "是他…" (it is him…) does not.
            return (not rest or _is_boundary(rest[0])) and not _says_no(rest)
    return False


def _says_no(rest: str) -> bool:
    """True when the words after a leading yes contradict it (any negation, English or Chinese)."""
    return bool(_NEGATION_EN.search(rest)) or any(mark in rest for mark in _NEGATION_ZH)


@dataclass(frozen=True)
class JudgeRequest:
    """One action to judge: its name, the config that shapes the question, and the question."""

    action_name: str
    config: dict[str, Any]
    question: str


class JudgeCache:
    """Judge answers for `ttl_s` seconds, keyed by sha256 of (context, action configuration)."""

    def __init__(self, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic, max_entries: int = 4096):
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(context: str, action_config: dict[str, Any]) -> str:
        blob = json.dumps({"context": context, "action": action_config}, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> bool | None:
        entry = self._entries.get(key)
        now = self.clock()
        if entry is None or now - entry[0] >= self.ttl_s:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def put(self, key: str, value: bool) -> None:
        self._entries[key] = (self.clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


JUDGE_SYSTEM = (
    "You decide whether an action fits the current chat. Answer with exactly one word: yes or no."
)


class LLMJudge:
    """Runs LLM judges for many actions at once (asyncio.gather), each bounded by `timeout_s`."""

    def __init__(self, complete: Complete | None, cache: JudgeCache, timeout_s: float = 5.0):
        self.complete = complete
        self.cache = cache
        self.timeout_s = timeout_s
        self.calls = 0
        self.failures = 0

    def build_prompt(self, request: JudgeRequest, context: str) -> str:
        return (
            f"Recent chat:\n{context}\n\n"
            f"Action: {request.action_name}\n"
            f"Condition: {request.question}\n"
            "Should this action be available right now? Answer yes or no."
        )

    async def _judge_one(self, request: JudgeRequest, context: str, options: Any = None) -> bool:
        key = JudgeCache.key(context, request.config)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if self.complete is None:
            return False
        self.calls += 1
        try:
            answer = await asyncio.wait_for(
                self.complete(self.build_prompt(request, context), JUDGE_SYSTEM, options), self.timeout_s
            )
        except Exception as exc:  # a failed or timed-out judge is a "no"
            self.failures += 1
            log.warning("LLM judge for %s failed (%s): treating as no", request.action_name, type(exc).__name__)
            return False  # not cached: a transient failure should not stick for 30 s
        verdict = parse_judge_answer(answer)
        self.cache.put(key, verdict)
        return verdict

    async def judge_many(self, requests: Sequence[JudgeRequest], context: str, options: Any = None) -> dict[str, bool]:
        """Judge every request in parallel; returns {action_name: verdict}. `options` (the persona's
        LLMCallOptions) go to every call."""
        if not requests:
            return {}
        verdicts = await asyncio.gather(*(self._judge_one(r, context, options) for r in requests))
        return {r.action_name: v for r, v in zip(requests, verdicts)}
