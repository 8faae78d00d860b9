"""The question the controller asks before admitting another session: can the GPUs hold it?"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HeadroomVerdict:
    """Whether the GPUs can take one more concurrent session, and why (shown to the user when not)."""

    admit: bool
    reason: str = ""
    free_mb: float | None = None
    needed_mb: float | None = None


HeadroomProbe = Callable[[], HeadroomVerdict]
