"""The `Brain` Serve deployment: a thin host for `graph.brain.Brain` and the autonomous engine V2.

One replica (the brain keeps chat state, the once-only decision log and the judge cache in one
process, and the autonomous engine keeps every server's signals in memory). It wires the real
dependencies the graph logic takes injected:
- the LLM: the app's `TextLLM` handle, or a backend from `graph.backends` by config; without one,
  replies and autonomous actions carry a prompt for the client instead of text;
- blackouts: the session controller actor (`FeatureController` in namespace `miku`) `check(feature)`;
  with no controller running every chat feature is allowed (logged once), but the autonomous engine
  counts as paused (it must never talk over a voice session it cannot see);
- a periodic tick (Heart Flow timers and cleanup, mood rotation, memory retention) and a second one
  for the autonomous engine (`engine.tick()`; decided actions wait in a per-server outbox that the
  client long-polls through `GET /v1/autonomous/actions`).

`AutonomousHost` (no Ray inside) is the glue between the brain and `graph.autonomous`: it converts the
brain's events, keeps the engine's mood in step with the brain's, writes decided messages with the
LLM and holds them until the client takes them. docs/autonomous.md ("Hosting") documents the wire side.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve
from ray.serve.handle import DeploymentHandle

from graph.autonomous import (
    DEFAULT_AUTONOMOUS_CONFIG_PATH,
    AutonomousConfig,
    AutonomousConfigError,
    AutonomousDecision,
    AutonomousEngine,
    EventError,
    EventOutcome,
    ServerSettings,
    parse_autonomous_config,
    server_settings,
)
from graph.autonomous import ActionKind
from graph.autonomous import (
    parse_event as parse_autonomous_event,
)
from graph.autonomous.sharing import FeedShare
from graph.backends.base import create_backend
from graph.brain.bipolar import BipolarConfig, BipolarHost
from graph.brain.admin import BrainAdmin
from graph.brain.brain import Brain as BrainLogic
from graph.brain.brain import BrainConfig, allow_everything
from graph.brain.events import (
    ALLOW,
    FEATURE_AUTONOMOUS,
    EventValidationError,
    FeatureCheck,
    MemberJoinEvent,
    MessageEvent,
    MoodEvent,
    PresenceEvent,
    Prompt,
)
from graph.brain.events import (
    parse_event as parse_brain_event,
)
from graph.brain.heartflow import ChatState
from graph.brain.llm import ModelRouting, complete_from_backend, complete_from_stream, is_in_process
from graph.brain.mood_profiles import load_moods
from graph.brain.prompts import ChatContext
from graph.brain.text_route import (
    TEXT_INFERENCE_FEATURE,
    TextEndpointsConfig,
    build_routed_backend,
)
from graph.features.feeds import check_feed_url
from graph.voice.types import LLMRequest

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_FILE = REPO_ROOT / "configs" / "brain.yaml"
SERVER_CONFIG_EVENT = "server_config"
INVALID_KEY = "invalid"  # handle_event's answer for a malformed event: the route makes it a 422
MAX_POLL_WAIT_S = 60.0


# --------------------------------------------------------------------------------------------------
# Configuration


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class AutonomousHosting:
    """How the Brain replica hosts the engine. Every other key of the `autonomous` mapping overrides
    `configs/autonomous.yaml` (deep-merged, then validated by `graph.autonomous`)."""

    enabled: bool = True
    config_path: str = str(DEFAULT_AUTONOMOUS_CONFIG_PATH)
    tick_interval_s: float = 30.0  # how often engine.tick() runs; rolls are rates, so any period works
    seed: int | None = None  # seeds the engine's random generator (tests, replays)
    outbox_size: int = 20  # pending actions kept per server; the oldest is dropped beyond it
    max_action_age_s: float = 300.0  # an action not taken by then is stale and dropped
    decide_on_event: bool = True  # also evaluate a server right after its event (answered inline)
    write_text: bool = True  # write the message with the LLM (else the action carries only the prompt)
    pause_refresh_s: float = 2.0  # a controller answer older than this is asked again before acting
    controller_timeout_s: float = 5.0
    recent_decisions: int = 10  # full decision records kept per server for the explain route
    # RSS/Atom feeds "share something" shares posts from (Miku accounts through an RSS bridge, figurine
    # shops...). None configured: the engine's share_something is off (she never shares an invented topic).
    share_feeds: tuple[str, ...] = ()
    engine: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_sources(cls, *sources: Mapping[str, Any] | str | Path | None) -> "AutonomousHosting":
        """Merge sources in order (a path is `config_path`); later sources win."""
        merged: dict[str, Any] = {}
        for source in sources:
            if source is None:
                continue
            if isinstance(source, (str, Path)):
                source = {"config_path": str(source)}
            if not isinstance(source, Mapping):
                raise ValueError(f"autonomous settings must be a mapping or a path, got {type(source).__name__}")
            merged = _deep_merge(merged, source)
        hosting_keys = {f.name for f in fields(cls)} - {"engine"}
        kwargs = {k: v for k, v in merged.items() if k in hosting_keys}
        engine = {k: v for k, v in merged.items() if k not in hosting_keys}
        if "share_feeds" in kwargs:
            kwargs["share_feeds"] = tuple(check_feed_url(url) for url in kwargs["share_feeds"] or ())
        settings = cls(**kwargs, engine=engine)
        if not (settings.tick_interval_s > 0 and math.isfinite(settings.tick_interval_s)):
            raise ValueError(f"autonomous.tick_interval_s must be > 0, got {settings.tick_interval_s!r}")
        if settings.outbox_size < 1 or settings.max_action_age_s <= 0:
            raise ValueError("autonomous.outbox_size must be >= 1 and max_action_age_s > 0")
        return settings

    def engine_config(self) -> AutonomousConfig:
        """configs/autonomous.yaml (or `config_path`, relative to the repository) with the overrides."""
        path = Path(self.config_path).expanduser()
        path = path if path.is_absolute() else REPO_ROOT / path
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise AutonomousConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        if not isinstance(data, Mapping):
            raise AutonomousConfigError(f"{path}: expected a mapping")
        merged = _deep_merge(data, self.engine)
        if not self.share_feeds:  # nothing real to share: the action stays off
            merged = _deep_merge(merged, {"actions": {"share_something": {"enabled": False}}})
        return parse_autonomous_config(merged, source=f"{path} + overrides")


# Sections of the brain's config that its host reads (BrainConfig itself does not know them).
HOST_SECTIONS = ("autonomous", "text_llm", "bipolar")


def load_brain_settings(config: dict[str, Any] | str | Path | None) -> tuple[BrainConfig, dict[str, Any]]:
    """The brain's config, and the host's sections (`autonomous`, `text_llm`, `bipolar`; absent ones None)."""
    if config is None:
        config = DEFAULT_CONFIG_FILE
    if isinstance(config, (str, Path)):
        data = BrainConfig.read_file(config)
    else:
        data = dict(config.get("brain", config))
    sections = {name: data.pop(name, None) for name in HOST_SECTIONS}
    return BrainConfig.from_mapping(data), sections


def load_brain_config(config: dict[str, Any] | str | Path | None) -> tuple[BrainConfig, Mapping[str, Any] | None]:
    """The brain's config, and its `autonomous` mapping (which BrainConfig itself does not know)."""
    brain_config, sections = load_brain_settings(config)
    return brain_config, sections["autonomous"]


# --------------------------------------------------------------------------------------------------
# The session controller


class ControllerFeatureCheck:
    """`check_feature` backed by the session controller actor, looked up lazily by name.

    With `missing_allows` (the brain's chat features) a controller that is not running allows
    everything; without it (the autonomous engine) a missing controller raises LookupError.
    """

    def __init__(self, name: str, namespace: str, missing_allows: bool = True):
        self.name = name
        self.namespace = namespace
        self.missing_allows = missing_allows
        self._actor = None
        self._warned = False

    async def __call__(self, feature: str) -> FeatureCheck:
        if self._actor is None:
            try:
                self._actor = ray.get_actor(self.name, namespace=self.namespace)
            except ValueError:
                if not self.missing_allows:
                    raise LookupError(f"no controller actor {self.namespace}/{self.name}") from None
                if not self._warned:
                    log.warning("no controller actor %s/%s: every feature is allowed", self.namespace, self.name)
                    self._warned = True
                return ALLOW
        try:
            return FeatureCheck.coerce(await self._actor.check.remote(feature))
        except ray.exceptions.RayActorError:
            self._actor = None  # restarted or gone: look it up again next time
            raise


CheckFeature = Callable[[str], Awaitable[FeatureCheck]]


class ControllerRouteCheck:
    """`check("text_inference")` on the controller actor, whole (the route and the effect, not just allowed).

    No controller running means no voice session can be running either: the normal route."""

    def __init__(self, name: str, namespace: str):
        self.name = name
        self.namespace = namespace
        self._actor = None

    async def __call__(self) -> Any:
        if self._actor is None:
            try:
                self._actor = ray.get_actor(self.name, namespace=self.namespace)
            except ValueError:
                return False
        try:
            return await self._actor.check.remote(TEXT_INFERENCE_FEATURE)
        except ray.exceptions.RayActorError:
            self._actor = None  # restarted or gone: look it up again next time
            raise


class ControllerPause:
    """`is_paused()` for the engine: a cached answer to `check("autonomous_engine")`.

    The engine asks synchronously on every tick, so the replica refreshes the flag (an awaited actor
    call) before ticking. Anything but a clear "allowed" pauses the engine: an unreachable controller
    might be hiding a voice session. With no controller configured (`check=None`) it never pauses.
    """

    def __init__(self, check: CheckFeature | None, *, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._check = check
        self._timeout_s = timeout_s
        self._clock = clock
        self._paused = check is not None  # until the first answer: the safe side
        self._refreshed_at = -math.inf
        self._reason = "not asked yet" if check is not None else "no controller"

    def __call__(self) -> bool:
        return self._paused

    @property
    def reason(self) -> str:
        return self._reason

    async def refresh(self) -> bool:
        """Ask the controller now; returns the new paused flag."""
        if self._check is None:
            return False
        try:
            result = await asyncio.wait_for(self._check(FEATURE_AUTONOMOUS), self._timeout_s)
            paused, reason = (not result.allowed), ("voice session" if not result.allowed else "allowed")
        except Exception as exc:  # unreachable, timed out, restarting: stay quiet
            paused, reason = True, f"controller unreachable ({type(exc).__name__}: {exc})"
        if paused != self._paused or reason != self._reason:
            (log.warning if reason.startswith("controller unreachable") else log.info)(
                "autonomous engine %s: %s", "paused" if paused else "running", reason)
        self._paused, self._reason = paused, reason
        self._refreshed_at = self._clock()
        return paused

    async def refresh_if_older(self, max_age_s: float) -> bool:
        if self._clock() - self._refreshed_at >= max_age_s:
            return await self.refresh()
        return self._paused


# --------------------------------------------------------------------------------------------------
# The outbox


class AutonomousOutbox:
    """Decided actions waiting for the client, per server: bounded, oldest dropped, stale ones expire.

    `wait()` lets a long-poll sleep until something is put (or its timeout passes).
    """

    def __init__(self, per_guild: int, max_age_s: float, clock: Callable[[], float] = time.monotonic):
        self._per_guild = per_guild
        self._max_age_s = max_age_s
        self._clock = clock
        self._boxes: dict[str, deque[tuple[float, dict[str, Any]]]] = {}
        self._changed = asyncio.Event()
        self.dropped = 0

    def put(self, guild_id: str, action: dict[str, Any]) -> None:
        box = self._boxes.setdefault(guild_id, deque())
        if len(box) >= self._per_guild:
            box.popleft()
            self.dropped += 1
            log.warning("autonomous outbox for server %s is full: dropped its oldest action", guild_id)
        box.append((self._clock(), action))
        self._changed.set()

    def pending(self, guild_id: str | None = None) -> int:
        if guild_id is not None:
            return len(self._boxes.get(guild_id, ()))
        return sum(len(box) for box in self._boxes.values())

    def pop(self, guild_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Remove and return fresh actions (one server's, or every server's oldest first)."""
        now = self._clock()
        guilds = [guild_id] if guild_id is not None else list(self._boxes)
        entries: list[tuple[float, dict[str, Any]]] = []
        for guild in guilds:
            box = self._boxes.get(guild)
            while box:
                queued_at, action = box.popleft()
                if now - queued_at > self._max_age_s:
                    self.dropped += 1
                    continue
                entries.append((queued_at, action))
            if box is not None and not box:
                del self._boxes[guild]
        entries.sort(key=lambda entry: entry[0])
        if limit is not None and len(entries) > limit:
            for queued_at, action in reversed(entries[limit:]):  # put the rest back, in order
                self._boxes.setdefault(str(action.get("guild_id")), deque()).appendleft((queued_at, action))
            entries = entries[:limit]
        return [action for _, action in entries]

    async def wait(self, timeout_s: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass


# --------------------------------------------------------------------------------------------------
# Event conversion: the brain's event shapes -> graph.autonomous.parse_event's


def _snowflake(value: Any) -> int | None:
    """A Discord id as an int, or None when it is not one (DMs, test ids like "g1")."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if 0 <= value < 2**63 else None
    text = str(value).strip()
    return int(text) if text.isdigit() and len(text) <= 19 and int(text) < 2**63 else None


def _message_id(engine_event_id: str | None) -> str | None:
    """The Discord message id in an engine message event id (`message:<id>`), else None."""
    if engine_event_id and engine_event_id.startswith("message:"):
        message_id = engine_event_id.split(":", 1)[1]
        return message_id if _snowflake(message_id) is not None else None
    return None


# Brain actions after which she has spoken in a channel (the engine must count her as having spoken).
_SPEAKING_ACTIONS = frozenset({"reply", "send", "draw", "look", "mute"})


class AutonomousHost:
    """Feeds the engine from the brain's events, runs its ticks and turns decisions into client actions.

    Plain asyncio, no Ray: the deployment builds one per replica. The engine is synchronous; the only
    awaits are the controller refresh, the memory read for the prompt and the LLM call.
    """

    def __init__(
        self,
        brain: BrainLogic,
        settings: AutonomousHosting,
        *,
        pause: ControllerPause,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ):
        self.brain = brain
        self.settings = settings
        self.pause = pause
        self._clock = clock
        config = settings.engine_config()
        self.engine = AutonomousEngine(
            config,
            load_moods(brain.config.moods_path),
            clock=clock,
            rng=rng if rng is not None else random.Random(settings.seed),
            is_paused=pause,
        )
        self.outbox = AutonomousOutbox(settings.outbox_size, settings.max_action_age_s, monotonic)
        self.share = FeedShare(settings.share_feeds, clock=clock) if settings.share_feeds else None
        self._servers: dict[int, ServerSettings] = {s.guild_id: s for s in config.servers}
        self._presence: OrderedDict[str, tuple[str, str | None]] = OrderedDict()  # guild:user -> (status, activity)
        self._names: OrderedDict[str, tuple[str, str]] = OrderedDict()  # channel -> (guild name, channel name)
        self._recent: dict[int, deque[dict[str, Any]]] = {}
        self._sync_seq = 0
        self.stats = {"ticks": 0, "events_applied": 0, "decisions": 0, "inline": 0, "queued": 0, "taken": 0,
                      "llm_failures": 0, "last_gate": self.engine.gate().value}

    # ---- servers -------------------------------------------------------------------------------

    def configure_server(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a `server_config` event: allowed channels (empty = stop tracking), home channel, zone."""
        values = {k: data[k] for k in ("guild_id", "allowed_channels", "home_channel_id", "timezone", "enabled") if k in data and data[k] is not None}
        guild_id = _snowflake(values.get("guild_id"))
        if guild_id is None:
            raise AutonomousConfigError(f"server settings: guild_id: not a Discord id (got {values.get('guild_id')!r})")
        if not values.get("allowed_channels"):
            self.engine.remove_server(guild_id)
            self._servers.pop(guild_id, None)
            self._recent.pop(guild_id, None)
            return {"guild_id": str(guild_id), "tracked": False}
        settings = server_settings(values)
        self.engine.configure_server(settings)
        self._servers[guild_id] = settings
        self._sync_mood(guild_id)
        return {"tracked": True, **self._settings_json(settings)}

    @staticmethod
    def _settings_json(settings: ServerSettings) -> dict[str, Any]:
        return {
            "guild_id": str(settings.guild_id),
            "allowed_channels": [str(c) for c in settings.allowed_channels],
            "home_channel_id": str(settings.home_channel),
            "timezone": settings.timezone,
            "enabled": settings.enabled,
        }

    def servers(self) -> list[dict[str, Any]]:
        return [self._settings_json(s) for s in self._servers.values()]

    # ---- events --------------------------------------------------------------------------------

    def _remember(self, table: OrderedDict, key: str, value: Any, cap: int = 10_000) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > cap:
            table.popitem(last=False)

    def to_engine_event(self, raw: Mapping[str, Any], event: Any) -> dict[str, Any] | None:
        """The engine's JSON for one brain event, or None when the engine has nothing to learn from it.

        `raw` may carry the engine's own presence fields (`kind`, `activity_name`, `activity_type`,
        `display_name`); otherwise presence changes are derived from the last status/activity seen.
        """
        now = self._clock()
        if isinstance(event, MessageEvent):
            if event.guild_id is None:
                return None
            if event.channel_name or event.guild_name:
                self._remember(self._names, event.channel_id, (event.guild_name, event.channel_name))
            return {
                "type": "message",
                # the brain dedupes messages by message id (a re-send may carry a new event id): same here
                "event_id": f"message:{event.message_id}",
                "guild_id": event.guild_id, "channel_id": event.channel_id, "author_id": event.author_id,
                "timestamp": event.timestamp, "author_is_bot": event.author_is_bot,
                "is_miku": self._is_miku(event),
            }
        if isinstance(event, PresenceEvent):
            if event.guild_id is None:
                return None
            key = f"{event.guild_id}:{event.user_id}"  # Discord reports presence once per shared server
            previous = self._presence.get(key)
            self._remember(self._presence, key, (event.status, event.activity))
            kind = raw.get("kind")
            activity_name = raw.get("activity_name") or event.activity
            if kind not in ("activity_started", "came_online"):
                prev_status, prev_activity = previous or ("offline", None)
                if event.activity and event.activity != prev_activity:
                    kind = "activity_started"
                elif event.status == "online" and prev_status in ("offline", "invisible", ""):
                    kind = "came_online"
                else:
                    return None
            return {
                "type": "presence", "event_id": event.event_id, "guild_id": event.guild_id,
                "user_id": event.user_id, "timestamp": event.timestamp or now, "kind": kind,
                "activity_name": activity_name, "activity_type": raw.get("activity_type"),
                "display_name": raw.get("display_name"),
            }
        if isinstance(event, MemberJoinEvent):
            return {
                "type": "member_join", "event_id": event.event_id, "guild_id": event.guild_id,
                "user_id": event.user_id, "timestamp": event.timestamp or now,
                "display_name": event.user_name or None,
            }
        if isinstance(event, MoodEvent):
            if event.guild_id is None:
                return None
            # the brain resolved the mood (a name, or a random rotation for null): the engine follows it
            return {"type": "mood", "event_id": event.event_id, "guild_id": event.guild_id,
                    "mood": self.brain.current_mood(event.guild_id).name, "timestamp": now}
        return None

    def _is_miku(self, event: MessageEvent) -> bool:
        own_id = self.brain.config.self_user_id
        return event.author_is_self or (own_id is not None and event.author_id == own_id)

    def _feed(self, payload: dict[str, Any]) -> EventOutcome:
        try:
            parsed = parse_autonomous_event(payload)
        except EventError as exc:  # e.g. non-numeric test ids: the brain handled it, the engine skips it
            log.debug("autonomous engine skips event %s: %s", payload.get("event_id"), exc)
            return EventOutcome.IGNORED
        try:
            outcome = self.engine.on_event(parsed)
        except EventError as exc:  # an unknown mood: the engine keeps its state
            log.warning("autonomous engine rejected event %s: %s", payload.get("event_id"), exc)
            return EventOutcome.IGNORED
        if outcome is EventOutcome.APPLIED:
            self.stats["events_applied"] += 1
        return outcome

    def _sync_mood(self, guild_id: int) -> None:
        """The brain owns the mood (commands, rotation, mood events); the engine follows it."""
        if guild_id not in self._servers:
            return
        mood = self.brain.current_mood(str(guild_id)).name
        if self.engine.mood_of(guild_id) != mood:
            self._sync_seq += 1
            self._feed({"type": "mood", "event_id": f"mood-sync:{guild_id}:{self._sync_seq}",
                        "guild_id": guild_id, "mood": mood, "timestamp": self._clock()})

    async def on_event(self, raw: Mapping[str, Any], brain_actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """After the brain handled `raw`: feed the engine; returns autonomous actions decided right now."""
        event = parse_brain_event(raw)
        payload = self.to_engine_event(raw, event)
        guild_id = _snowflake(getattr(event, "guild_id", None))
        if payload is None or guild_id is None or guild_id not in self._servers:
            return []
        spoke = [a for a in brain_actions if a.get("type") in _SPEAKING_ACTIONS]
        if isinstance(event, MemberJoinEvent) and spoke:
            outcome = EventOutcome.IGNORED  # the brain welcomed them already: nothing left to engage
        else:
            outcome = self._feed(payload)
        self._note_brain_speaking(event, guild_id, spoke)
        self._sync_mood(guild_id)
        if (outcome is not EventOutcome.APPLIED or brain_actions or not self.settings.decide_on_event
                or isinstance(event, MoodEvent)):
            return []
        if await self.pause.refresh_if_older(self.settings.pause_refresh_s):
            return []
        decision = self.engine.decide(guild_id)
        if decision is None:
            return []
        self.stats["inline"] += 1
        action = await self._action_for(decision)
        return [] if action is None else [action]

    def _note_brain_speaking(self, event: Any, guild_id: int, spoke: list[dict[str, Any]]) -> None:
        """The brain answered (a reply, a welcome...): she has spoken there, so the engine must not pile on."""
        key = event.message_id if isinstance(event, MessageEvent) else event.event_id
        for index, action in enumerate(spoke):
            channel = _snowflake(action.get("channel_id") or getattr(event, "channel_id", None))
            if channel is not None:
                self._feed({"type": "message", "event_id": f"brain-action:{key}:{index}",
                            "guild_id": guild_id, "channel_id": channel,
                            "author_id": _snowflake(self.brain.config.self_user_id) or 0,
                            "timestamp": self._clock(), "is_miku": True})

    # ---- ticks and actions ---------------------------------------------------------------------

    async def tick(self) -> int:
        """One engine tick: refresh the pause flag, sync moods, decide, write and queue. Returns queued."""
        await self.pause.refresh()
        for guild_id in list(self._servers):
            self._sync_mood(guild_id)
        decisions = self.engine.tick()
        self.stats["ticks"] += 1
        self.stats["last_gate"] = self.engine.gate().value
        if not decisions:
            return 0
        actions = [a for a in await asyncio.gather(*(self._action_for(d) for d in decisions)) if a is not None]
        for action in actions:
            self.outbox.put(action["guild_id"], action)
        self.stats["queued"] += len(actions)
        return len(actions)

    async def take(self, wait_s: float, guild_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Long-poll: return pending actions as soon as there are any, else [] after `wait_s`.

        Actions decided before a voice session started are dropped rather than said afterwards.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, min(wait_s, MAX_POLL_WAIT_S))
        while True:
            actions = self.outbox.pop(guild_id, limit)
            if actions:
                if not await self.pause.refresh_if_older(self.settings.pause_refresh_s):
                    self.stats["taken"] += len(actions)
                    return actions
                log.info("dropped %d autonomous action(s): the engine is paused", len(actions))
                self.outbox.dropped += len(actions)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await self.outbox.wait(remaining)

    async def _action_for(self, decision: AutonomousDecision) -> dict[str, Any] | None:
        """A `send` action the client carries out; `text` is null when no LLM wrote it. None: a share
        decision with no real post to share (nothing is sent rather than an invented topic)."""
        self.stats["decisions"] += 1
        record = decision.to_dict(include_debug=True)
        recent = self._recent.setdefault(decision.guild_id, deque(maxlen=self.settings.recent_decisions))
        recent.append(record)
        item = None
        if decision.action is ActionKind.SHARE_SOMETHING:
            item = await self._share_item(decision.guild_id)
            if item is None:
                self.stats["shares_skipped"] = self.stats.get("shares_skipped", 0) + 1
                return None
        prompt = await self._prompt(decision, FeedShare.prompt(item, decision.prompt) if item else None)
        text = await self._write(prompt) if self.settings.write_text else None
        if text and item is not None:
            text = f"{text}\n{item.link}"  # the real link, added by code
        fired = [c for c in decision.debug.checks if c.fired]
        channel = decision.debug.signals.channel(decision.channel_id)
        return {
            "type": "send",
            "guild_id": str(decision.guild_id),
            "channel_id": str(decision.channel_id),
            # a reply to the newest human message when there is a recent one, else a plain post
            "reply_to_message_id": _message_id(decision.reply_to_event_id),
            "text": text,
            "prompt": prompt.to_dict(),
            "autonomous": {
                "action": decision.action.value,
                "mood": decision.mood,
                "decided_at": decision.decided_at,
                "trigger_event_id": decision.trigger_event_id,
                "target_user_id": None if decision.target_user_id is None else str(decision.target_user_id),
                "shared_item": None if item is None else {"id": item.id, "title": item.title, "link": item.link,
                                                          "feed_url": item.feed_url},
                "debug": {
                    "roll_window_s": decision.debug.roll_window_s,
                    "fired": fired[0].to_dict() if fired else None,
                    "checked": [{"action": c.action.value, "blocked_by": list(c.blocked_by), "roll": c.roll,
                                 "probability": c.probability} for c in decision.debug.checks],
                    "channel": channel.to_dict() if channel is not None else None,
                },
            },
        }

    async def _share_item(self, guild_id: int):
        if self.share is None:
            return None
        try:
            return await self.share.pick(guild_id)
        except Exception:  # a broken feed costs this share, nothing else
            log.warning("no post to share in server %s", guild_id, exc_info=True)
            return None

    async def close(self) -> None:
        if self.share is not None:
            await self.share.close()

    async def _prompt(self, decision: AutonomousDecision, instruction: str | None = None) -> Prompt:
        """Persona + mood + the channel's recent messages, and the engine's instruction as the turn."""
        brain = self.brain
        guild, channel = str(decision.guild_id), str(decision.channel_id)
        persona = brain.personas.active(guild)
        mood = brain.current_mood(guild)
        guild_name, channel_name = self._names.get(channel, ("", ""))
        try:
            history = await brain.memory.channel_context(
                channel, now=self._clock(), hours=brain.config.context_hours, limit=brain.config.context_messages)
        except Exception:  # the message still goes out, with less context
            log.warning("no channel history for autonomous prompt in %s", channel, exc_info=True)
            history = []
        system = brain.prompts.system_prompt(persona, mood, ChatContext(guild_name=guild_name, channel_name=channel_name))
        system += "\n\nNobody asked you anything: you are speaking up on your own in this channel."
        return Prompt(system=system, history=brain.prompts.history(history, brain.config.context_messages),
                      user=instruction or decision.prompt, persona=persona.name, mood=mood.name,
                      temperature=persona.temperature, max_tokens=persona.max_tokens)

    async def _write(self, prompt: Prompt) -> str | None:
        complete = self.brain.complete
        if complete is None or not self.brain.config.generate_replies:
            return None
        try:
            persona = self.brain.personas.get(prompt.persona) or self.brain.personas.active(None)
            options = self.brain.llm_options(persona)  # the persona's model, temperature, token limit
            text = await asyncio.wait_for(complete(prompt.as_text(), prompt.system, options), self.brain.config.llm_timeout_s)
        except Exception as exc:  # the client gets the prompt instead; nothing is lost
            self.stats["llm_failures"] += 1
            log.warning("autonomous message not written (%s: %s)", type(exc).__name__, exc)
            return None
        return text.strip() or None

    # ---- debugging -----------------------------------------------------------------------------

    def explain(self, guild_id: int) -> dict[str, Any] | None:
        """Why she would (not) speak in a server now: gate, signals, every check, recent decisions."""
        settings = self._servers.get(guild_id)
        if settings is None:
            return None
        return {
            "guild_id": str(guild_id),
            "gate": self.engine.gate().value,
            "paused_reason": self.pause.reason,
            "mood": self.engine.mood_of(guild_id),
            "settings": self._settings_json(settings),
            "signals": self.engine.signals(guild_id).to_dict(),
            "checks": [c.to_dict() for c in self.engine.explain(guild_id)],
            "recent_decisions": list(self._recent.get(guild_id, ())),
            "pending_actions": self.outbox.pending(str(guild_id)),
            "stats": dict(self.stats),
        }

    def snapshot(self) -> dict[str, Any]:
        return {"stats": dict(self.stats), "servers": len(self._servers), "gate": self.engine.gate().value,
                "paused_reason": self.pause.reason, "pending_actions": self.outbox.pending(),
                "dropped_actions": self.outbox.dropped}


# --------------------------------------------------------------------------------------------------
# The deployment


def _complete_via_handle(handle: DeploymentHandle, max_tokens: int = 256, temperature: float = 0.8,
                         routing: ModelRouting | None = None):
    """`complete` through the app's TextLLM handle; its backend is not known here, so the request
    carries both the routed model name and the adapter file (each backend reads what it understands)."""
    return complete_from_stream(lambda request: handle.options(stream=True).stream.remote(request), in_process=None,
                                max_tokens=max_tokens, temperature=temperature, routing=routing)


async def _never_in_session() -> bool:
    return False


async def _tick_forever(name: str, interval_s: float, tick: Callable[[], Awaitable[Any]]) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await tick()
        except Exception:  # a failed tick must not stop the next one
            log.exception("%s tick failed", name)


@serve.deployment(name="Brain", num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class Brain:
    """`handle_event(event) -> {"actions": [...]}`, `take_autonomous_actions`, `explain_autonomous`,
    plus `current_mood`, `voice_prompt`, `snapshot`."""

    async def __init__(
        self,
        config: dict[str, Any] | str | None = None,
        llm: "dict[str, Any] | DeploymentHandle | None" = None,
        controller: dict[str, Any] | bool | None = None,
        tick_interval_s: float = 30.0,
        autonomous: dict[str, Any] | str | None = None,
    ):
        brain_config, sections = load_brain_settings(config)
        hosting = AutonomousHosting.from_sources(autonomous, sections["autonomous"])
        check_feature = pause_check = route_check = None
        if controller is not False:
            from deployments.controller.actor import (
                CONTROLLER_NAME,
                CONTROLLER_NAMESPACE,
            )

            target = controller if isinstance(controller, dict) else {}
            name, namespace = target.get("name", CONTROLLER_NAME), target.get("namespace", CONTROLLER_NAMESPACE)
            check_feature = ControllerFeatureCheck(name, namespace)
            pause_check = ControllerFeatureCheck(name, namespace, missing_allows=False)
            route_check = ControllerRouteCheck(name, namespace)
        complete = None
        self._backend = None
        route_config = None
        if sections["text_llm"]:
            # two servers: the normal one, and the RX 6800 one while a voice session runs (graph/brain/text_route.py)
            route_config = TextEndpointsConfig.from_mapping(sections["text_llm"], "brain.text_llm")
            self._backend = build_routed_backend(route_config, route_check or _never_in_session)
            complete = complete_from_backend(self._backend, routing=brain_config.model_routing)
        elif isinstance(llm, DeploymentHandle):
            # share the app's TextLLM deployment (one model on the GPU) instead of a second client
            complete = _complete_via_handle(llm, routing=brain_config.model_routing)
        elif llm:
            self._backend = create_backend("llm", llm)
            complete = complete_from_backend(self._backend, routing=brain_config.model_routing)
        self._brain = await BrainLogic.create(brain_config, complete=complete, check_feature=check_feature, clock=time.time, rng=random.Random())
        # Bipolar mode: Miku and Evil Miku argue in the channels where it is on (graph/brain/bipolar.py)
        bipolar_config = BipolarConfig.from_mapping(sections["bipolar"], "brain.bipolar")
        if bipolar_config.state_path is None and brain_config.memory_path != ":memory:":
            # `!bipolar on|off` is kept next to the brain's memory (relative paths: from the repository)
            bipolar_config = replace(bipolar_config, state_path=str(Path(brain_config.memory_path).parent / "bipolar_channels.json"))
        elif bipolar_config.state_path and not Path(bipolar_config.state_path).expanduser().is_absolute():
            bipolar_config = replace(bipolar_config, state_path=str(REPO_ROOT / bipolar_config.state_path))
        self._bipolar: BipolarHost | None = None
        missing = [name for name in bipolar_config.personas if self._brain.personas.get(name) is None]
        if missing and sections["bipolar"] is None:  # not asked for, and these personas lack one: just off
            log.info("bipolar mode off: no persona %s in %s", " or ".join(missing), brain_config.persona_dir)
            bipolar_config = replace(bipolar_config, enabled=False)
        if bipolar_config.enabled:
            heartflow = self._brain.heartflow
            self._bipolar = BipolarHost(
                # each line with its speaker's model/temperature/token limit, where the brain has them
                bipolar_config, personas=self._brain.personas, options_for=getattr(self._brain, "llm_options", None),
                complete=complete if brain_config.generate_replies else None,
                check_feature=check_feature or allow_everything,
                is_focused=lambda channel: getattr(heartflow.subflows.get(channel), "state", None) is ChatState.FOCUSED,
                clock=time.time, command_prefix=brain_config.command_prefix)
        if self._backend is not None:  # a persona ADAPTER the configured LLM cannot serve fails here, by name
            brain_config.model_routing.check(
                {p.name: p.adapter for p in self._brain.personas.personas.values() if p.adapter},
                in_process=is_in_process(self._backend))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(_tick_forever("brain", tick_interval_s, self._brain.tick))]
        if route_config is not None:
            # the switch (and the GTX 1660's unload) happens when a session starts, not at the next reply
            self._tasks.append(loop.create_task(
                _tick_forever("text-route", route_config.route_poll_s, self._backend.selector.refresh)))
        self._autonomous: AutonomousHost | None = None
        if hosting.enabled:
            pause = ControllerPause(pause_check, timeout_s=hosting.controller_timeout_s)
            self._autonomous = AutonomousHost(self._brain, hosting, pause=pause)
            self._tasks.append(loop.create_task(_tick_forever("autonomous", hosting.tick_interval_s, self._autonomous.tick)))

    async def admin(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """The admin panel's operations (graph.brain.admin.BrainAdmin.OPS); refusals come back as data."""
        return await BrainAdmin(self._brain, self._autonomous).call(op, args)

    async def handle_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """One client event -> `{"actions": [...]}`; a malformed one -> `{"actions": [], "invalid": [errors]}`.

        (Errors come back as data: EventValidationError does not survive Ray's exception pickling.)
        `server_config` sets a server's autonomous allow-list and time zone.
        """
        try:
            if event.get("type") == SERVER_CONFIG_EVENT:
                return await self.configure_server(event)
            result = await self._brain.handle_event(event)
        except EventValidationError as exc:
            return {"actions": [], INVALID_KEY: exc.errors}
        if self._bipolar is not None and event.get("type") == "message":
            try:
                extra, consumed = await self._bipolar.on_message(parse_brain_event(event))
                # its own commands (!argue, !bipolar) replace the brain's answer to that message
                result["actions"] = extra if consumed else result["actions"] + extra
            except Exception:  # the brain's answer must reach the client whatever bipolar mode does
                log.exception("bipolar mode failed on event %s", event.get("event_id"))
        if self._autonomous is not None:
            try:
                result["actions"].extend(await self._autonomous.on_event(event, list(result["actions"])))
            except Exception:  # the brain's answer must reach the client whatever the engine does
                log.exception("autonomous engine failed on event %s", event.get("event_id"))
        return result

    async def configure_server(self, settings: dict[str, Any]) -> dict[str, Any]:
        if self._autonomous is None:
            return {"actions": [], "autonomous": {"tracked": False, "reason": "the autonomous engine is disabled"}}
        try:
            applied = self._autonomous.configure_server(settings)
        except AutonomousConfigError as exc:
            raise EventValidationError([{"loc": [SERVER_CONFIG_EVENT], "msg": str(exc), "type": "value_error"}]) from None
        return {"actions": [], "autonomous": applied}

    async def take_autonomous_actions(self, wait_s: float = 0.0, guild_id: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """Long-poll the outbox: `{"actions": [...]}` (removed), empty after `wait_s` if nothing came."""
        if self._autonomous is None:
            await asyncio.sleep(max(0.0, min(wait_s, MAX_POLL_WAIT_S)))
            return {"actions": []}
        return {"actions": await self._autonomous.take(wait_s, guild_id, limit)}

    async def explain_autonomous(self, guild_id: str) -> dict[str, Any] | None:
        """The engine's view of one server (None when the server is not configured)."""
        guild = _snowflake(guild_id)
        if self._autonomous is None or guild is None:
            return None
        return self._autonomous.explain(guild)

    async def autonomous_servers(self) -> list[dict[str, Any]]:
        return [] if self._autonomous is None else self._autonomous.servers()

    async def current_mood(self, guild_id: str | None, channel_id: str | None = None) -> dict[str, Any]:
        return self._brain.current_mood(guild_id, channel_id).to_dict()

    async def persona_mood(self, guild_id: str | None) -> dict[str, Any]:
        """The server's active persona and mood (the bot's profile picture follows them)."""
        persona = self._brain.personas.active(guild_id)
        return {"guild_id": guild_id, "persona": persona.name, "display_name": persona.display_name or persona.name,
                "mood": self._brain.current_mood(guild_id).name}

    async def voice_prompt(self, guild_id: str | None, channel_id: str | None, user_id: str, user_name: str, text: str) -> dict[str, Any]:
        prompt = await self._brain.voice_prompt(guild_id=guild_id, channel_id=channel_id, user_id=user_id, user_name=user_name, text=text)
        return prompt.to_dict()

    async def compose(self, guild_id: str | None, channel_id: str | None, instruction: str) -> dict[str, Any]:
        """A message written from an instruction in the persona's voice (scheduled events); text None on failure."""
        from graph.features.compose import compose_message

        composed = await compose_message(self._brain, guild_id=guild_id, channel_id=channel_id, instruction=instruction)
        return composed.to_dict()

    async def snapshot(self) -> dict[str, Any]:
        snapshot = self._brain.snapshot()
        if self._autonomous is not None:
            snapshot["autonomous"] = self._autonomous.snapshot()
        selector = getattr(self._backend, "selector", None)
        if selector is not None:
            snapshot["text_route"] = selector.snapshot()
        if self._bipolar is not None:
            snapshot["bipolar"] = self._bipolar.snapshot()
        return snapshot

    async def check_health(self) -> None:
        if any(task.done() for task in self._tasks):
            raise RuntimeError("a brain tick task stopped")

    async def __del__(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._brain.close()
        if self._autonomous is not None:
            await self._autonomous.close()
        if self._backend is not None:
            await self._backend.aclose()
