"""Moods per server (and per DM): which one is current, rotated on a schedule and changed by command.

Mood profiles (name -> description and traits) come from `graph.brain.mood_profiles.load_moods` (configs/moods.yaml);
this module only keeps the *current* mood per scope. The scope is the guild id, or `dm:<channel>` for
DMs. Rotation picks a different mood at random (injected rng) after a random interval in the configured
range. `current(guild_id)` is what the prompt builder and the voice graph read.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MoodState:
    """The current mood of one scope, as the prompt builder needs it."""

    name: str
    description: str
    since: float

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "since": self.since}


def mood_scope(guild_id: str | None, channel_id: str | None = None) -> str:
    """Servers share a mood; each DM has its own."""
    if guild_id is not None:
        return guild_id
    return f"dm:{channel_id or 'default'}"


class MoodScheduler:
    """Current mood per scope; `rotate_due(now)` rotates the scopes whose time has come."""

    def __init__(
        self,
        descriptions: Mapping[str, str],
        *,
        default: str,
        rotation_interval_s: tuple[float, float] = (3 * 3600.0, 6 * 3600.0),
        exclude_from_rotation: Sequence[str] = (),
        clock: Callable[[], float],
        rng: random.Random,
    ):
        if not descriptions:
            raise ValueError("no moods loaded")
        if default not in descriptions:
            raise ValueError(f"default mood {default!r} is not one of {sorted(descriptions)}")
        low, high = rotation_interval_s
        if not 0 < low <= high:
            raise ValueError(f"rotation_interval_s must be 0 < min <= max, got {rotation_interval_s}")
        self.descriptions = dict(descriptions)
        self.default = default
        self.rotation_interval_s = (float(low), float(high))
        self.pool = [m for m in self.descriptions if m not in set(exclude_from_rotation)] or [default]
        self.clock = clock
        self.rng = rng
        self._current: dict[str, MoodState] = {}
        self._next_rotation: dict[str, float] = {}

    def names(self) -> list[str]:
        return sorted(self.descriptions)

    def _schedule(self, scope: str, now: float) -> None:
        self._next_rotation[scope] = now + self.rng.uniform(*self.rotation_interval_s)

    def current(self, scope: str) -> MoodState:
        state = self._current.get(scope)
        if state is None:
            now = self.clock()
            state = MoodState(self.default, self.descriptions[self.default], now)
            self._current[scope] = state
            self._schedule(scope, now)
        return state

    def set(self, scope: str, mood: str | None) -> MoodState:
        """Set a mood by name (None: a random other mood); reschedules the next rotation."""
        now = self.clock()
        if mood is None:
            mood = self._pick_other(self.current(scope).name)
        mood = mood.strip().lower()
        if mood not in self.descriptions:
            raise KeyError(mood)
        state = MoodState(mood, self.descriptions[mood], now)
        self._current[scope] = state
        self._schedule(scope, now)
        return state

    def restore(self, scope: str, mood: str, since: float) -> bool:
        """Put back a saved mood (after a restart); False if that mood no longer exists."""
        if mood not in self.descriptions:
            return False
        self._current[scope] = MoodState(mood, self.descriptions[mood], since)
        self._schedule(scope, max(since, self.clock()))
        return True

    def _pick_other(self, current: str) -> str:
        choices = [m for m in self.pool if m != current] or self.pool
        return self.rng.choice(choices)

    def rotate_due(self, now: float | None = None) -> list[tuple[str, MoodState]]:
        """Rotate every known scope whose rotation time has passed; returns what changed."""
        now = self.clock() if now is None else now
        changed = []
        for scope, due in list(self._next_rotation.items()):
            if now >= due:
                changed.append((scope, self.set(scope, None)))
        return changed


def load_mood_descriptions(path: str) -> dict[str, str]:
    """name -> description from the moods file (validated by graph.brain.mood_profiles)."""
    from graph.brain.mood_profiles import load_moods

    return {name: profile.description for name, profile in load_moods(path).items()}
