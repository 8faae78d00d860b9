"""What a voice session changes, in words members understand (never a feature id).

The controller names its features by id (`vision`, `text_channel_messages`...). The join reply says in one
sentence what members will notice while Miku is in voice and leaves out what they will not (bipolar mode
disabled silently, the profile picture kept, text replies written on another GPU); `voice-status` lists
every feature with its state in words.
"""
from __future__ import annotations

from dataclasses import dataclass

from .graph_api import FeatureState


@dataclass(frozen=True)
class FeatureWords:
    label: str  # voice-status: what it is
    while_in_voice: str | None  # join reply: what members notice; None = silent, left out
    held: str  # voice-status: its state while a session holds it


FEATURES: dict[str, FeatureWords] = {
    "vision": FeatureWords("Looking at images and videos", "look at images", "off until I leave voice"),
    "image_generation": FeatureWords("Drawing", "draw", "off until I leave voice"),
    "text_channel_messages": FeatureWords("Answering text messages", "I'll answer text messages after I leave",
                                          "held: I'll answer them after I leave voice"),
    "autonomous_engine": FeatureWords("Speaking up on my own", "I won't chime in on my own",
                                      "paused until I leave voice"),
    "scheduled_events": FeatureWords("Scheduled posts", "scheduled posts wait until I'm back",
                                     "paused until I leave voice"),
    "figurine_notifier": FeatureWords("Figure alerts", "new figure alerts wait until I'm back",
                                      "paused: new ones are posted after I leave voice"),
    "bipolar_mode": FeatureWords("Miku vs Evil Miku arguments", None, "off until I leave voice"),
    "profile_picture": FeatureWords("Profile picture changes", None, "on hold until I leave voice"),
    "text_inference": FeatureWords("Where my text replies are written", None, "on the voice server"),
}
# The two refusals read best as one phrase: "I won't draw or look at images".
_REFUSED_ACTIONS = ("image_generation", "vision")
ROUTE_WORDS = {"default": "my usual server", "rx6800": "the RX 6800 (voice-session server)",
               "gtx1660": "the GTX 1660"}


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def session_changes(blackouts: tuple[str, ...] | list[str]) -> str:
    """The join reply's sentence about what changes, or "" when members will notice nothing."""
    held = set(blackouts)
    parts: list[str] = []
    refused = [FEATURES[f].while_in_voice for f in _REFUSED_ACTIONS if f in held]
    if refused:
        parts.append("I won't " + " or ".join(refused))  # e.g. "I won't draw or look at images"
    for feature in FEATURES:
        if feature in held and feature not in _REFUSED_ACTIONS and FEATURES[feature].while_in_voice:
            parts.append(FEATURES[feature].while_in_voice)
    if not parts:
        return ""
    return "While I'm in voice, " + _join(parts) + "."


def _label(name: str) -> str:
    words = FEATURES.get(name)
    return words.label if words else name.replace("_", " ").capitalize()


def feature_state_words(state: FeatureState) -> str:
    """One feature's state now, e.g. "Drawing: off until I leave voice"."""
    words = FEATURES.get(state.name)
    if state.route is not None:  # a routed feature says where it is served, in or out of a session
        where = ROUTE_WORDS.get(state.route, state.route)
        return f"{_label(state.name)}: {where}"
    if not state.blocked and state.effect is None:
        return f"{_label(state.name)}: on"
    if words is not None:
        return f"{words.label}: {words.held}"
    return f"{_label(state.name)}: {'off' if state.blocked else 'changed'} until I leave voice"


def features_report(features: list[FeatureState]) -> list[str]:
    """voice-status lines: every feature the controller knows, in its order."""
    return [f"• {feature_state_words(f)}" for f in features]
