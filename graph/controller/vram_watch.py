"""Warnings while a voice session runs: a card's VRAM crossing its limit (the RX 6800's 14 GB).

The start check refuses a session when the limit is already crossed; this watches the sessions that did
start. The controller actor feeds it readings (`VramHeadroom.excess()`) on a timer and turns what it says
into a log line per crossing, metrics and a `warnings` entry in session answers. Plain Python, no clock of
its own: the time of each reading is passed in.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from graph.controller.telemetry import VramExcess

VRAM_WARNING_KIND = "vram_over_limit"


@dataclass(frozen=True)
class VramWarning:
    """A card over its limit now, and since when (the reading that first saw it over)."""

    excess: VramExcess
    since: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": VRAM_WARNING_KIND,
            "resource": self.excess.resource,
            "used_gb": round(self.excess.used_mb / 1024, 3),
            "limit_gb": round(self.excess.limit_mb / 1024, 3),
            "since": self.since,
            "message": self.excess.message,
        }


@dataclass(frozen=True)
class WatchUpdate:
    """What one reading changed: cards that just crossed their limit (warn once) and cards back under it."""

    crossed: tuple[VramWarning, ...] = ()
    recovered: tuple[str, ...] = ()


class VramWatch:
    """Which cards are over their limit, remembered between readings so each crossing is reported once."""

    def __init__(self) -> None:
        self._over: dict[str, VramWarning] = {}
        self.crossings_total = 0

    def observe(self, excesses: Iterable[VramExcess], at: float) -> WatchUpdate:
        now_over = {e.resource: e for e in excesses}
        crossed = []
        for resource, excess in now_over.items():
            known = self._over.get(resource)
            if known is None:
                warning = VramWarning(excess, at)
                crossed.append(warning)
                self.crossings_total += 1
            else:
                warning = VramWarning(excess, known.since)  # the latest figure, the first time seen over
            self._over[resource] = warning
        recovered = tuple(r for r in self._over if r not in now_over)
        for resource in recovered:
            del self._over[resource]
        return WatchUpdate(tuple(crossed), recovered)

    def clear(self) -> WatchUpdate:
        """No session runs: nothing to warn about (a later session starts from the start check again)."""
        return self.observe((), 0.0)

    def warnings(self) -> tuple[VramWarning, ...]:
        return tuple(self._over.values())

    def is_over(self, resource: str) -> bool:
        return resource in self._over
