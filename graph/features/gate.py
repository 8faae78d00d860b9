"""`FeatureGate`: may a paused-by-voice feature act now? One question to the session controller.

Scheduled events and the figurine notifier ask it right before anything would reach Discord. The
answer comes from the controller's `check(feature)` (over HTTP from the bot, over a Ray handle in
tests); anything but a clear "allowed" keeps the feature paused, because an unreachable or restarting
controller may be hiding a voice session. A change of state is logged once, not on every question.
"""
from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

SCHEDULED_EVENTS = "scheduled_events"
FIGURINE_NOTIFIER = "figurine_notifier"


class GateState(enum.Enum):
    OPEN = "open"  # no session holds the feature
    PAUSED = "paused"  # a voice session holds it
    UNKNOWN = "unknown"  # the controller did not answer: treated as paused


def _allowed(answer: Any) -> bool | None:
    """Read `allowed` from a CheckResult, a FeatureCheck, a FeatureState (`blocked`) or a dict."""
    if isinstance(answer, bool):
        return answer
    if isinstance(answer, dict):
        if "allowed" in answer:
            return bool(answer["allowed"])
        if "blocked" in answer:
            return not answer["blocked"]
        return None
    if hasattr(answer, "allowed"):
        return bool(answer.allowed)
    if hasattr(answer, "blocked"):
        return not answer.blocked
    return None


class FeatureGate:
    """`await gate.is_open()`: True only when the controller says the feature is allowed right now."""

    def __init__(self, feature: str, check: Callable[[str], Awaitable[Any]], *, timeout_s: float = 5.0) -> None:
        self.feature = feature
        self._check = check
        self._timeout_s = timeout_s
        self.state = GateState.UNKNOWN
        self.reason = "not asked yet"

    async def is_open(self) -> bool:
        try:
            answer = await asyncio.wait_for(self._check(self.feature), self._timeout_s)
            allowed = _allowed(answer)
            if allowed is None:
                state, reason = GateState.UNKNOWN, f"unreadable answer {answer!r:.80}"
            else:
                state, reason = (GateState.OPEN, "allowed") if allowed else (GateState.PAUSED, "voice session")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # unreachable, timed out, restarting: stay paused
            state, reason = GateState.UNKNOWN, f"controller unreachable ({type(exc).__name__}: {exc})"
        if state is not self.state:
            level = logging.WARNING if state is GateState.UNKNOWN else logging.INFO
            log.log(level, "%s %s: %s", self.feature, "running" if state is GateState.OPEN else "paused", reason)
        self.state, self.reason = state, reason
        return state is GateState.OPEN
