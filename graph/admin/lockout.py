"""Login lockout: after `max_failures` wrong passwords for one user name within `window_s`, that name
is locked for `lockout_s`, even for the right password. The clock is injected (tests move it).

Keyed by the name typed, known or not, so guessing at unknown names is slowed the same way and the
answer never tells which names exist. The table is bounded (least recently failed names dropped).
"""
from __future__ import annotations

import enum
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED_NAMES = 4096


class LoginVerdict(enum.Enum):
    ALLOWED = "allowed"  # go on and check the password
    LOCKED = "locked"


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int = 5
    window_s: float = 900.0
    lockout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.window_s <= 0 or self.lockout_s <= 0:
            raise ValueError("lockout: max_failures >= 1, window_s > 0 and lockout_s > 0")


@dataclass
class _Record:
    failures: deque
    locked_until: float = 0.0


class LoginThrottle:
    def __init__(self, policy: LockoutPolicy | None = None, clock: Callable[[], float] = time.monotonic):
        self.policy = policy or LockoutPolicy()
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def check(self, name: str) -> LoginVerdict:
        record = self._records.get(name.lower())
        if record is not None and self._clock() < record.locked_until:
            return LoginVerdict.LOCKED
        return LoginVerdict.ALLOWED

    def retry_after_s(self, name: str) -> float:
        record = self._records.get(name.lower())
        return 0.0 if record is None else max(0.0, record.locked_until - self._clock())

    def failed(self, name: str) -> bool:
        """Count a wrong password; True when this failure locked the name."""
        key, now = name.lower(), self._clock()
        record = self._records.pop(key, None) or _Record(deque())
        self._records[key] = record  # most recently failed last
        while record.failures and now - record.failures[0] > self.policy.window_s:
            record.failures.popleft()
        record.failures.append(now)
        while len(self._records) > MAX_TRACKED_NAMES:
            self._records.popitem(last=False)
        if len(record.failures) >= self.policy.max_failures:
            record.failures.clear()
            record.locked_until = now + self.policy.lockout_s
            return True
        return False

    def succeeded(self, name: str) -> None:
        self._records.pop(name.lower(), None)
