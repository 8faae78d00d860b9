"""The owner's pause of the drawing and vision stages, set from the admin panel.

A flag per stage that the media routes (`POST /v1/images`, `/v1/vision`) check before anything else:
a paused stage is never called, and the caller gets one `error` event of kind `paused` whose message
says the owner paused it. It is not the voice session's blackout (the controller's, which also unloads
the model): the model stays loaded, and a panel "test" still reaches the stage so the owner can try it
before resuming. Kept in the ingress replica's memory: a restart resumes both.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

STAGES = ("image", "vision")
WHAT = {"image": "Drawing", "vision": "Looking at pictures"}


@dataclass(frozen=True)
class Pause:
    stage: str
    user: str
    since: float

    @property
    def message(self) -> str:
        return f"⏸️ {WHAT.get(self.stage, self.stage)} is paused by the owner right now; try again later."

    def to_dict(self) -> dict:
        return {**asdict(self), "message": self.message}


class MediaPauses:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._paused: dict[str, Pause] = {}

    def set(self, stage: str, paused: bool, user: str) -> Pause | None:
        if stage not in STAGES:
            raise ValueError(f"no media stage {stage!r}: one of {', '.join(STAGES)}")
        if not paused:
            self._paused.pop(stage, None)
            return None
        self._paused.setdefault(stage, Pause(stage, user, self.clock()))
        return self._paused[stage]

    def get(self, stage: str) -> Pause | None:
        return self._paused.get(stage)

    def refusal(self, stage: str) -> dict | None:
        """The one event a paused stage's route answers with, or None when it is not paused."""
        pause = self._paused.get(stage)
        if pause is None:
            return None
        return {"type": "error", "kind": "paused", "message": pause.message, "backend": "admin"}
