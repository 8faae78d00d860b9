"""Autonomous engine V2: context-aware decisions about when Miku speaks up, with no LLM calls.

Public API (everything a host needs):

    config = load_autonomous_config()            # configs/autonomous.yaml, validated
    moods = load_moods()                          # configs/moods.yaml, validated (graph.brain.mood_profiles)
    engine = AutonomousEngine(config, moods, clock=time.time, rng=random.Random(), is_paused=lambda: False)
    engine.configure_server(server_settings({"guild_id": ..., "allowed_channels": [...], "timezone": ...}))
    engine.on_event(parse_event(json_payload))    # -> EventOutcome (APPLIED / DUPLICATE / IGNORED)
    for decision in engine.tick():                # -> list[AutonomousDecision], at most one per server
        decision.to_dict()                        # action, guild/channel, prompt for the LLM, debug record

See docs/autonomous.md for the signals, rules and tuning.
"""
from graph.autonomous.config import (
    DEFAULT_AUTONOMOUS_CONFIG_PATH,
    AutonomousConfig,
    AutonomousConfigError,
    ServerSettings,
    load_autonomous_config,
    parse_autonomous_config,
    server_settings,
)
from graph.autonomous.decision import (
    ActionCheck,
    ActionKind,
    AutonomousDecision,
    ChannelSignals,
    DecisionDebug,
    ServerSignals,
)
from graph.autonomous.engine import AutonomousEngine, EngineGate
from graph.autonomous.events import (
    AutonomousEvent,
    EventError,
    EventOutcome,
    MemberJoinEvent,
    MessageEvent,
    MoodEvent,
    PresenceEvent,
    PresenceKind,
    parse_event,
)

__all__ = [
    "DEFAULT_AUTONOMOUS_CONFIG_PATH", "AutonomousConfig", "AutonomousConfigError", "ServerSettings",
    "load_autonomous_config", "parse_autonomous_config", "server_settings",
    "ActionCheck", "ActionKind", "AutonomousDecision", "ChannelSignals", "DecisionDebug", "ServerSignals",
    "AutonomousEngine", "EngineGate",
    "AutonomousEvent", "EventError", "EventOutcome", "MemberJoinEvent", "MessageEvent", "MoodEvent",
    "PresenceEvent", "PresenceKind", "parse_event",
]
