"""Controller settings (configs/controller.yaml), validated when loaded."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph.controller.features import (
    DEFAULT_FEATURES,
    MESSAGE_KEYS,
    Effect,
    FeatureSpec,
)

DEFAULT_PERSONA = "default"


@dataclass(frozen=True)
class ControllerConfig:
    """Controller settings (configs/controller.yaml). `messages` maps persona -> key -> text, where a key is a
    feature id or one of MESSAGE_KEYS; the `default` persona fills gaps."""

    state_dir: str = ".miku/controller"
    lease_s: float = 30.0
    queue_limit: int = 100
    max_sessions: int = 1
    configured_capacity: int = 1  # sessions the GPUs hold when no headroom probe (telemetry) is given
    lease_check_interval_s: float = 1.0
    vram_check_interval_s: float = 5.0  # while a session runs: how often VRAM is compared with its limit
    checkpoint_busy_timeout_s: float = 2.0
    ended_memory: int = 256  # ended session ids remembered so heartbeats get 410, not 404
    audit_keep: int = 10_000
    features: tuple[FeatureSpec, ...] = DEFAULT_FEATURES
    messages: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {self.lease_s}")
        if self.queue_limit < 1:
            raise ValueError(f"queue_limit must be at least 1, got {self.queue_limit}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {self.max_sessions}")
        if self.configured_capacity < 1:
            raise ValueError(f"configured_capacity must be at least 1, got {self.configured_capacity}")
        if self.lease_check_interval_s <= 0:
            raise ValueError("lease_check_interval_s must be positive")
        if self.vram_check_interval_s <= 0:
            raise ValueError("vram_check_interval_s must be positive")
        if self.ended_memory < 1:
            raise ValueError("ended_memory must be at least 1")
        ids = [spec.feature_id for spec in self.features]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate feature ids in {ids}")
        known = set(ids) | set(MESSAGE_KEYS)
        for persona, table in self.messages.items():
            unknown = set(table) - known
            if unknown:
                raise ValueError(f"messages.{persona} has unknown keys {sorted(unknown)}; known: {sorted(known)}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ControllerConfig:
        """Build from a YAML mapping; `features` entries are {id, effect, message?, normal_route?, session_route?}."""
        data = dict(data)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown controller config keys {sorted(unknown)}; known: {sorted(known)}")
        if "features" in data:
            specs = []
            for entry in data["features"]:
                if isinstance(entry, FeatureSpec):
                    specs.append(entry)
                    continue
                fields = dict(entry)
                try:
                    effect = Effect(fields.pop("effect"))
                    feature_id = fields.pop("id")
                    specs.append(FeatureSpec(feature_id, effect, **fields))
                except (KeyError, ValueError, TypeError) as exc:
                    choices = [e.value for e in Effect]
                    raise ValueError(f"bad feature entry {dict(entry)!r} (effect one of {choices}): {exc}") from exc
            data["features"] = tuple(specs)
        if "messages" in data:
            data["messages"] = {
                str(persona): {str(k): str(v) for k, v in (table or {}).items()}
                for persona, table in data["messages"].items()
            }
        if "state_dir" in data:
            data["state_dir"] = str(data["state_dir"])
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> ControllerConfig:
        """Load configs/controller.yaml (or another YAML file of the same shape)."""
        import yaml

        with open(path, encoding="utf-8") as fh:
            return cls.from_mapping(yaml.safe_load(fh) or {})

    def message(self, key: str, persona: str | None, fallback: str | None) -> str | None:
        for name in (persona, DEFAULT_PERSONA):
            if name and key in self.messages.get(name, {}):
                return self.messages[name][key]
        return fallback
