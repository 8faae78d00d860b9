"""Stand-ins at the edges of the paused-by-voice features: a controller answer the test sets, and a
recorder of what really left through the bot's send path (texts, embeds, DMs)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SettableCheck:
    """`check(feature)` as the controller answers it; `in_session` and `unreachable` are the test's switches."""

    in_session: bool = False
    unreachable: bool = False
    asked: list[str] = field(default_factory=list)

    async def __call__(self, feature: str) -> dict[str, Any]:
        self.asked.append(feature)
        if self.unreachable:
            raise ConnectionError("controller restarting")
        return {"name": feature, "allowed": not self.in_session, "blocked": self.in_session}


@dataclass
class Sent:
    kind: str  # "text" | "embed" | "dm"
    target: int
    payload: Any


class RecordingOps:
    """The ops the features call to reach Discord; every call is recorded, `fail_for` targets raise."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.fail_for: set[int] = set()
        self._changed = asyncio.Condition()

    async def _record(self, kind: str, target: int, payload: Any) -> None:
        if target in self.fail_for:
            raise PermissionError(f"403 Forbidden for {target}")
        self.sent.append(Sent(kind, target, payload))
        async with self._changed:
            self._changed.notify_all()

    async def send_text(self, channel_id: int, text: str) -> None:
        await self._record("text", channel_id, text)

    async def send_embed(self, channel_id: int, card: Any) -> None:
        await self._record("embed", channel_id, card)

    async def dm_embed(self, user_id: int, card: Any) -> None:
        await self._record("dm", user_id, card)

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Sent]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.sent) >= count), timeout)
        return list(self.sent)
