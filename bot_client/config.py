"""The bot's configuration: one typed value loaded from YAML, so every knob is documented in one place.

Secrets never live in the file: the Discord token comes from `DISCORD_TOKEN` and the graph's bearer token
from `MIKU_GRAPH_TOKEN` (or `graph.token_file`). See docs/bot-config.md for the reference.
"""
from __future__ import annotations

import enum
import os
import re
import zoneinfo
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class PromptMode(enum.Enum):
    """What a prompt that arrives while Miku is speaking does."""

    QUEUE = "queue"  # wait its turn, in order
    INTERRUPT = "interrupt"  # cut her off and answer the new one


class ConfigError(ValueError):
    """The config file is missing a value or has one of the wrong kind; the message names the field."""


@dataclass(frozen=True)
class GraphConfig:
    url: str = "http://127.0.0.1:8000"
    token: str | None = None  # prefer MIKU_GRAPH_TOKEN; kept for local setups
    token_file: str | None = None
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    direct_voice: bool = True  # use the ingress's own voice port when the graph offers one (lower latency)


@dataclass(frozen=True)
class PermissionsConfig:
    """Role names allowed to run each guarded command; an empty list means everyone may."""

    join: tuple[str, ...] = ()
    leave: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    music: tuple[str, ...] = ()  # play, pause, resume, skip, volume and `stop music`
    admins_always_allowed: bool = True


@dataclass(frozen=True)
class PlaybackConfig:
    prebuffer_ms: int = 100
    max_buffer_s: float = 120.0  # beyond this the oldest waiting audio is dropped (and counted)
    stats_interval_s: float = 5.0


@dataclass(frozen=True)
class MusicConfig:
    """Background music in a voice session (bot_client/music.py); docs/bot-config.md explains each knob."""

    enabled: bool = True
    directory: str | None = None  # local files may be played only from under here; None: URLs only
    allow_private_urls: bool = False  # fetch from loopback/private addresses (off: no reaching into the LAN)
    volume: int = 50  # 0-100 at the start of a session, a linear amplitude factor (100: the track's level)
    duck_db: float = 12.0  # how far music goes down while Miku speaks
    attack_ms: float = 50.0  # ramp down when she starts
    release_ms: float = 300.0  # ramp back up after she stops
    buffer_s: float = 3.0  # decoded ahead at most
    stall_s: float = 5.0  # a track with nothing to play for this long is skipped
    open_timeout_s: float = 10.0  # URLs: connecting
    read_timeout_s: float = 5.0  # URLs: waiting for data
    max_queue: int = 20


@dataclass(frozen=True)
class SessionConfig:
    prompt_mode: PromptMode = PromptMode.QUEUE
    max_pending_prompts: int = 20
    heartbeat_interval_s: float | None = None  # None -> a third of the graph's lease
    voice_connect_timeout_s: float = 15.0
    voice_reconnect_grace_s: float = 20.0  # how long a lost voice link may take to come back
    utterance_timeout_s: float = 60.0  # no utterance.end by then -> "*Miku seems confused...*"
    presence_text: str = "🎤 In Voice Chat"
    max_prompt_chars: int = 4000


@dataclass(frozen=True)
class AutonomousServerConfig:
    """Where Miku may speak up on her own in one server (an empty allow-list: nowhere)."""

    guild_id: int
    allowed_channels: tuple[int, ...] = ()
    home_channel_id: int | None = None  # None: the graph uses the first allowed channel
    timezone: str | None = None  # IANA name; None: the graph's default (UTC)


@dataclass(frozen=True)
class AutonomousConfig:
    """The graph's autonomous engine as seen from the bot: polling its actions and telling it where to speak.

    A server not listed in `servers` never gets a message from her on her own, and with
    `presence_events` its presence changes and joins are not forwarded either.
    """

    enabled: bool = True
    wait_s: float = 25.0  # long-poll of GET /v1/autonomous/actions (the graph allows up to 60 s)
    # Ask Discord for the privileged presences + members intents and forward activity starts, members
    # coming online and joins (so "engage user" can fire). Off: the intents stay minimal.
    presence_events: bool = False
    servers: dict[int, AutonomousServerConfig] = field(default_factory=dict)
    # Servers not listed in `servers` are tracked too, in every text channel the bot can write in (home:
    # the system channel). False: only the listed servers.
    track_all_servers: bool = True

    def server(self, guild_id: int | str) -> AutonomousServerConfig | None:
        try:
            return self.servers.get(int(guild_id))
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ListenConfig:
    """Hearing the voice channel (bot_client/hearing.py): off unless a server is listed with `true`.

    docs/bot-config.md explains each knob; the receive-path ones go to `voice_receive.ReceiveConfig`.
    """

    servers: dict[int, bool] = field(default_factory=dict)  # guild id -> listen (opt-in per server)
    echo_transcripts: bool = False  # post "🗣️ Ann: ..." in the prompt channel for every turn heard
    store_transcripts: bool = True  # keep turns in the brain's memory, like text messages
    reorder_depth: int = 3  # packets held behind a gap before it counts as lost
    max_hold_ms: float = 60.0  # the longest a packet waits for an earlier one
    silence_fill_ms: float = 1000.0  # silence sent after a speaker stops, so the graph hears the pause
    uplink_buffer_s: float = 2.0  # audio that may wait for a slow graph before the oldest is dropped
    record_dir: str | None = None  # write what is heard as WAV files here (0600); None: nothing on disk

    def enabled(self, guild_id: int | str | None) -> bool:
        try:
            return bool(self.servers.get(int(guild_id)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False


def _listen_servers(data: Any, path: str) -> dict[int, bool]:
    """`servers:` as a mapping of guild id -> true/false, or a list of guild ids that listen."""
    if data is None:
        return {}
    if isinstance(data, list):
        data = {key: True for key in data}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must map guild ids to true/false, got {type(data).__name__}")
    servers: dict[int, bool] = {}
    for key, value in data.items():
        guild_id = _snowflake(key, f"{path} key")
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"listen"})
            if unknown:
                raise ConfigError(f"unknown key(s) in {path}.{guild_id}: {', '.join(map(str, unknown))}")
            value = value.get("listen", False)
        if not isinstance(value, bool):
            raise ConfigError(f"{path}.{guild_id} must be true or false, got {value!r}")
        servers[guild_id] = value
    return servers


@dataclass(frozen=True)
class BotConfig:
    command_prefix: str = "!"
    group_name: str = "miku"
    graph: GraphConfig = field(default_factory=GraphConfig)
    permissions: PermissionsConfig = field(default_factory=PermissionsConfig)
    playback: PlaybackConfig = field(default_factory=PlaybackConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    music: MusicConfig = field(default_factory=MusicConfig)
    autonomous: AutonomousConfig = field(default_factory=AutonomousConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    seen_messages: int = 5000  # how many message ids are remembered to act on each message once
    sync_app_commands: bool = True
    # Paused-by-voice features (bot_client/features.py); None: configs/<name>.yaml when it exists, else off.
    schedule_file: str | None = None
    figurines_file: str | None = None
    avatars: str | None = "configs/avatars/avatars.yaml"  # profile pictures per mood/persona; null: never change

    @property
    def command_name(self) -> str:
        """The command group as members type it (`!miku`): `command_prefix` then `group_name`."""
        return f"{self.command_prefix}{self.group_name}"

    def graph_token(self) -> str:
        """The bearer token: `MIKU_GRAPH_TOKEN`, else `graph.token`, else the contents of `graph.token_file`."""
        env = os.environ.get("MIKU_GRAPH_TOKEN", "").strip()
        if env:
            return env
        if self.graph.token:
            return self.graph.token
        if self.graph.token_file:
            path = Path(self.graph.token_file).expanduser()
            try:
                value = path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"graph.token_file {path} cannot be read: {exc}") from exc
            if value:
                return value
        raise ConfigError("no graph token: set MIKU_GRAPH_TOKEN, graph.token or graph.token_file")


_SNOWFLAKE = re.compile(r"^[0-9]{1,20}$")
_GROUP_NAME = re.compile(r"^[-_\w]{1,32}$")  # Discord's rule for slash command names (and lower case)
_MAX_POLL_WAIT_S = 60.0  # the graph refuses longer long-polls


def _snowflake(value: Any, path: str) -> int:
    """A Discord id from YAML: an integer or a string of digits."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not _SNOWFLAKE.match(str(value)):
        raise ConfigError(f"{path} must be a Discord id (digits), got {value!r}")
    return int(value)


def _autonomous_server(guild_id: int, data: Any, path: str) -> AutonomousServerConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - {"allowed_channels", "home_channel_id", "timezone"})
    if unknown:
        raise ConfigError(f"unknown key(s) in {path}: {', '.join(map(str, unknown))}")
    channels = data.get("allowed_channels") or []
    if isinstance(channels, (int, str)) and not isinstance(channels, bool):
        channels = [channels]
    if not isinstance(channels, list):
        raise ConfigError(f"{path}.allowed_channels must be a list of channel ids")
    allowed = tuple(dict.fromkeys(_snowflake(c, f"{path}.allowed_channels") for c in channels))
    home = data.get("home_channel_id")
    home_id = None if home is None else _snowflake(home, f"{path}.home_channel_id")
    if home_id is not None and home_id not in allowed:
        raise ConfigError(f"{path}.home_channel_id {home_id} is not in {path}.allowed_channels")
    timezone = data.get("timezone")
    if timezone is not None:
        if not isinstance(timezone, str) or not timezone.strip():
            raise ConfigError(f"{path}.timezone must be an IANA time zone name, got {timezone!r}")
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{path}.timezone {timezone!r} is not a known IANA time zone") from None
    return AutonomousServerConfig(guild_id, allowed, home_id, timezone)


def _autonomous_servers(data: Any, path: str) -> dict[int, AutonomousServerConfig]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of guild id -> settings, got {type(data).__name__}")
    servers: dict[int, AutonomousServerConfig] = {}
    for key, value in data.items():
        guild_id = _snowflake(key, f"{path} key")
        if guild_id in servers:
            raise ConfigError(f"{path}.{guild_id} is listed twice")
        servers[guild_id] = _autonomous_server(guild_id, value, f"{path}.{guild_id}")
    return servers


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where or 'config'}: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        default = getattr(cls(), name)
        if isinstance(default, (GraphConfig, PermissionsConfig, PlaybackConfig, SessionConfig, MusicConfig,
                                AutonomousConfig, ListenConfig)):
            kwargs[name] = _build(type(default), value, path)
        elif cls is AutonomousConfig and name == "servers":
            kwargs[name] = _autonomous_servers(value, path)
        elif cls is ListenConfig and name == "servers":
            kwargs[name] = _listen_servers(value, path)
        elif isinstance(default, PromptMode):
            try:
                kwargs[name] = PromptMode(str(value).lower())
            except ValueError:
                choices = ", ".join(m.value for m in PromptMode)
                raise ConfigError(f"{path} must be one of {choices}, got {value!r}") from None
        elif isinstance(default, tuple):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path} must be a list of role names")
            kwargs[name] = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{path} must be true or false, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, (int, float)) or (default is None and name.endswith("_s")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) and value is not None:
                raise ConfigError(f"{path} must be a number, got {value!r}")
            if value is not None and value < 0:
                raise ConfigError(f"{path} must not be negative, got {value!r}")
            kwargs[name] = value
        else:
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{path} must be a string, got {value!r}")
            kwargs[name] = value
    return cls(**kwargs)


def load_config(path: str | os.PathLike[str] | None) -> BotConfig:
    """Read a YAML config (a missing path gives the defaults); bad values raise `ConfigError`."""
    if path is None:
        return BotConfig()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read bot config {p}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    config = _build(BotConfig, data or {}, "")
    if not _GROUP_NAME.match(config.group_name or "") or config.group_name != config.group_name.lower():
        raise ConfigError(f"group_name must be 1-32 lower-case letters, digits, '-' or '_' (a slash command "
                          f"name), got {config.group_name!r}")
    if not config.command_prefix or any(c.isspace() for c in config.command_prefix):
        raise ConfigError(f"command_prefix must be non-empty without spaces, got {config.command_prefix!r}")
    if config.playback.prebuffer_ms % 20:
        raise ConfigError("playback.prebuffer_ms must be a multiple of 20 (one Discord frame)")
    if config.session.max_prompt_chars <= 0:
        raise ConfigError("session.max_prompt_chars must be positive")
    music = config.music
    if not 0 <= music.volume <= 100:
        raise ConfigError(f"music.volume must be 0-100, got {music.volume!r}")
    if music.buffer_s <= 0 or music.stall_s <= 0 or music.max_queue < 1:
        raise ConfigError("music.buffer_s and music.stall_s must be positive and music.max_queue at least 1")
    wait_s = config.autonomous.wait_s
    if wait_s is None or not 0 < wait_s <= _MAX_POLL_WAIT_S:
        raise ConfigError(f"autonomous.wait_s must be more than 0 and at most {_MAX_POLL_WAIT_S:g} s, got {wait_s!r}")
    listen = config.listen
    if listen.reorder_depth < 1 or listen.max_hold_ms <= 0 or listen.uplink_buffer_s <= 0:
        raise ConfigError("listen.reorder_depth must be at least 1, listen.max_hold_ms and listen.uplink_buffer_s positive")
    return config
