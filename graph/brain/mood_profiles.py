"""Miku's mood profiles: loaded from `configs/moods.yaml` and validated once, at start-up.

Several parts of the bot read the same profiles (the autonomous engine's timing, the LLM prompt's mood
sentence, the voice graph's emotion-aware pitch and speaking rate), so they live in one validated file instead of constants
scattered through the code. A bad file fails loudly with the file, the mood and the field named.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graph.voice.types import MAX_SPEAKING_RATE, MIN_SPEAKING_RATE

DEFAULT_MOODS_PATH = Path(__file__).resolve().parents[2] / "configs" / "moods.yaml"

# Every mood the bot can be in; the file must give a profile for each.
KNOWN_MOODS: tuple[str, ...] = (
    "bubbly", "shy", "excited", "curious", "silly", "serious", "melancholy",
    "sleepy", "flirty", "romantic", "irritated", "angry", "neutral", "asleep",
)

TRAITS: tuple[str, ...] = ("energy", "sociability", "impulsiveness", "curiosity")
MAX_PITCH_SHIFT = 6.0  # semitones; beyond this the voice stops sounding like her


class MoodConfigError(ValueError):
    """The mood file is missing, unreadable or invalid; the message names what and where."""


class MoodProfile(BaseModel):
    """How one mood feels (for the prompt) and behaves (traits in 0..1, voice pitch in semitones, speaking
    rate as a factor of the voice's normal pace)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = Field(min_length=1)
    energy: float = Field(ge=0.0, le=1.0)
    sociability: float = Field(ge=0.0, le=1.0)
    impulsiveness: float = Field(ge=0.0, le=1.0)
    curiosity: float = Field(ge=0.0, le=1.0)
    pitch_shift: float = Field(ge=-MAX_PITCH_SHIFT, le=MAX_PITCH_SHIFT)
    speaking_rate: float = Field(ge=MIN_SPEAKING_RATE, le=MAX_SPEAKING_RATE)
    emoji: str = Field(min_length=1)

    @field_validator("energy", "sociability", "impulsiveness", "curiosity", "pitch_shift", "speaking_rate", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        # before the range check, so NaN/inf read as "not finite" rather than as "out of range"
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    def trait(self, name: str) -> float:
        """One of TRAITS by name (used by config-driven weightings)."""
        if name not in TRAITS:
            raise KeyError(f"unknown mood trait {name!r}; expected one of {', '.join(TRAITS)}")
        return float(getattr(self, name))


@dataclass(frozen=True)
class MoodVoice:
    """How a mood sounds: semitones added to the voice's base shift, and the speaking rate (1.0 = normal)."""

    pitch_shift: float | None = None  # None: the voice's base shift alone
    speaking_rate: float = 1.0


def mood_voice(
    moods: Mapping[str, MoodProfile],
    mood: str | None,
    pitch_shift: float | None = None,
    speaking_rate: float | None = None,
) -> MoodVoice:
    """The voice of one utterance: what the request asks for explicitly, else the mood's, else neutral.

    Called once per utterance when it starts, so a mood change is heard from the next utterance on.
    """
    profile = moods.get(mood) if mood else None
    if pitch_shift is None and profile is not None:
        pitch_shift = profile.pitch_shift or None
    if speaking_rate is None:
        speaking_rate = profile.speaking_rate if profile is not None else 1.0
    return MoodVoice(pitch_shift, float(speaking_rate))


def parse_moods(data: Any, source: str = "<moods>") -> dict[str, MoodProfile]:
    """Validate an already-parsed mood document (`{"moods": {name: {...}}}`) into profiles."""
    if not isinstance(data, Mapping):
        raise MoodConfigError(f"{source}: expected a mapping with a 'moods' key, got {type(data).__name__}")
    unknown = sorted(set(data) - {"moods"})
    if unknown:
        raise MoodConfigError(f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; expected 'moods'")
    moods = data.get("moods")
    if not isinstance(moods, Mapping) or not moods:
        raise MoodConfigError(f"{source}: 'moods' must be a non-empty mapping of mood name to profile")

    profiles: dict[str, MoodProfile] = {}
    problems: list[str] = []
    for name, fields in moods.items():
        if not isinstance(name, str) or not name:
            problems.append(f"mood name {name!r} must be a non-empty string")
            continue
        if not isinstance(fields, Mapping):
            problems.append(f"mood {name!r}: expected a mapping of fields, got {type(fields).__name__}")
            continue
        if "name" in fields:
            problems.append(f"mood {name!r}: 'name' comes from the key, do not set it")
            continue
        try:
            profiles[name] = MoodProfile(name=name, **fields)
        except ValidationError as exc:
            problems.extend(f"mood {name!r}: {_describe(err)}" for err in exc.errors())
    missing = [m for m in KNOWN_MOODS if m not in moods]
    if missing:
        problems.append(f"missing mood(s) {', '.join(missing)} (every mood the bot has needs a profile)")
    if problems:
        raise MoodConfigError(f"{source}: " + "; ".join(problems))
    return profiles


def load_moods(path: str | Path = DEFAULT_MOODS_PATH) -> dict[str, MoodProfile]:
    """Read and validate the mood file; raises MoodConfigError naming the file, mood and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MoodConfigError(f"{path}: cannot read mood profiles ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MoodConfigError(f"{path}: not valid YAML ({exc})") from exc
    return parse_moods(data, source=str(path))


def _describe(err: Mapping[str, Any]) -> str:
    """One pydantic error as 'field: message (got value)'."""
    where = ".".join(str(part) for part in err.get("loc", ())) or "profile"
    if err.get("type") == "extra_forbidden":
        return f"unknown key {where!r} (allowed: {', '.join(f for f in MoodProfile.model_fields if f != 'name')})"
    if err.get("type") == "missing":
        return f"{where}: required field is missing"
    return f"{where}: {err.get('msg')} (got {err.get('input')!r})"
