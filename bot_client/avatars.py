"""Miku's profile picture follows her mood and persona, within Discord's limits, and never during voice.

- `load_avatars(path)` reads configs/avatars/avatars.yaml and checks every picture at start-up: the file
  exists, Pillow reads it as a PNG/JPEG/GIF/WebP image, and it is within Discord's avatar size limit. A bad
  one is a `ConfigError` naming the file and the field, so the bot never starts with a picture it could
  not upload.
- `AvatarSwitcher` keeps only the latest wanted picture (a queue of one) and applies it through an
  injected `apply(bytes)` (the bot: `ClientUser.edit(avatar=...)`), at most once per `min_interval_s`.
  While a voice session holds `profile_picture` (`check("profile_picture")` on the controller) the change
  is held silently; when the session ends, the picture wanted then is applied once. Discord refusing (rate
  limit, missing permission, an error) is logged once and tried again later, never in a loop, never a crash.
- `AvatarFeed` asks the brain for the home server's mood and persona every `mood_poll_s`.

Plain asyncio with an injected clock: tests drive `step()` one attempt at a time.
"""
from __future__ import annotations

import asyncio
import enum
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AVATARS_FILE = "configs/avatars/avatars.yaml"
DISCORD_AVATAR_MAX_BYTES = 10 * 1024 * 1024  # Discord's avatar upload limit
AVATAR_FORMATS = frozenset({"PNG", "JPEG", "GIF", "WEBP"})  # what Discord (and discord.py) accept
FEATURE_PROFILE_PICTURE = "profile_picture"


@dataclass(frozen=True)
class AvatarImage:
    """One checked picture: its file, bytes and digest (the digest tells "already showing" apart)."""

    name: str
    path: Path
    data: bytes = field(repr=False)
    digest: str


@dataclass(frozen=True)
class AvatarSettings:
    enabled: bool = True
    guild_id: int | None = None
    min_interval_s: float = 300.0
    retry_after_error_s: float = 1800.0
    mood_poll_s: float = 60.0
    max_bytes: int = DISCORD_AVATAR_MAX_BYTES
    state_file: str | None = ".miku/avatar_applied.json"  # the last picture Discord took (0600); None: not kept


@dataclass(frozen=True)
class PersonaAvatars:
    default: AvatarImage | None
    moods: Mapping[str, AvatarImage]


@dataclass(frozen=True)
class AvatarLibrary:
    """Which picture goes with which persona and mood."""

    default: AvatarImage
    moods: Mapping[str, AvatarImage]
    personas: Mapping[str, PersonaAvatars]

    def pick(self, persona: str | None, mood: str | None) -> AvatarImage:
        """The persona's picture for the mood, else the persona's own default, else the shared mood
        picture (default persona only), else the default."""
        own = self.personas.get(persona or "")
        if own is not None:
            if mood and mood in own.moods:
                return own.moods[mood]
            if own.default is not None:
                return own.default
        if mood and mood in self.moods:
            return self.moods[mood]
        return self.default

    def persona_image(self, persona: str) -> AvatarImage:
        own = self.personas.get(persona)
        return own.default if own is not None and own.default is not None else self.default


@dataclass(frozen=True)
class AvatarSetup:
    settings: AvatarSettings
    library: AvatarLibrary
    source: Path


def check_image(path: Path, field_name: str, source: Path, max_bytes: int) -> AvatarImage:
    """Read and check one picture; a ConfigError names the config file, the field and the picture."""
    from PIL import Image, UnidentifiedImageError

    where = f"{source}: {field_name}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{where}: {path} is {len(data) / 1048576:.1f} MiB; Discord's avatar limit is "
                          f"{max_bytes / 1048576:.1f} MiB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.verify()  # a truncated or corrupt file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"{where}: {path} is not an image ({exc})") from None
    if image_format not in AVATAR_FORMATS:
        raise ConfigError(f"{where}: {path} is a {image_format} image; Discord takes {', '.join(sorted(AVATAR_FORMATS))}")
    return AvatarImage(path.name, path, data, hashlib.sha256(data).hexdigest())


def _number(data: Mapping[str, Any], key: str, default: float, source: Path, *, minimum: float = 0.0) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{source}: {key} must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _mood_table(raw: Any, field_name: str, folder: Path, source: Path, max_bytes: int) -> dict[str, AvatarImage]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {field_name} must be a mapping of mood -> file, got {type(raw).__name__}")
    return {str(mood): _image(file, f"{field_name}.{mood}", folder, source, max_bytes) for mood, file in raw.items()}


def _image(file: Any, field_name: str, folder: Path, source: Path, max_bytes: int) -> AvatarImage:
    if not isinstance(file, str) or not file.strip():
        raise ConfigError(f"{source}: {field_name} must be a file name, got {file!r}")
    path = Path(file).expanduser()
    return check_image(path if path.is_absolute() else folder / path, field_name, source, max_bytes)


def resolve_config_path(path: str | Path) -> Path:
    """A relative path is taken from the working directory, else from the repository."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return REPO_ROOT / candidate


def load_avatars(path: str | Path) -> AvatarSetup:
    """Read and check configs/avatars/avatars.yaml (or another file of its shape)."""
    source = resolve_config_path(path)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read avatar config {source}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping")
    known = {"enabled", "guild_id", "min_interval_s", "retry_after_error_s", "mood_poll_s", "max_bytes", "default",
             "moods", "personas", "state_file"}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{source}: enabled must be true or false, got {enabled!r}")
    guild = data.get("guild_id")
    if guild is not None and (isinstance(guild, bool) or not str(guild).isdigit()):
        raise ConfigError(f"{source}: guild_id must be a Discord server id, got {guild!r}")
    max_bytes = int(_number(data, "max_bytes", DISCORD_AVATAR_MAX_BYTES, source, minimum=1))
    if max_bytes > DISCORD_AVATAR_MAX_BYTES:
        raise ConfigError(f"{source}: max_bytes {max_bytes} is above Discord's avatar limit ({DISCORD_AVATAR_MAX_BYTES})")
    state_file = data.get("state_file", AvatarSettings.state_file)
    if state_file is not None and (not isinstance(state_file, str) or not state_file.strip()):
        raise ConfigError(f"{source}: state_file must be a file path or null, got {state_file!r}")
    settings = AvatarSettings(
        state_file=state_file,
        enabled=enabled,
        guild_id=None if guild is None else int(guild),
        min_interval_s=_number(data, "min_interval_s", 300.0, source),
        retry_after_error_s=_number(data, "retry_after_error_s", 1800.0, source),
        mood_poll_s=_number(data, "mood_poll_s", 60.0, source, minimum=1.0),
        max_bytes=max_bytes,
    )
    folder = source.parent
    if "default" not in data:
        raise ConfigError(f"{source}: default (the picture when no mood or persona matches) is missing")
    default = _image(data["default"], "default", folder, source, max_bytes)
    moods = _mood_table(data.get("moods"), "moods", folder, source, max_bytes)
    personas_raw = data.get("personas") or {}
    if not isinstance(personas_raw, Mapping):
        raise ConfigError(f"{source}: personas must be a mapping of persona -> {{default, moods}}")
    personas: dict[str, PersonaAvatars] = {}
    for persona, entry in personas_raw.items():
        base = f"personas.{persona}"
        if not isinstance(entry, Mapping) or set(map(str, entry)) - {"default", "moods"}:
            raise ConfigError(f"{source}: {base} must be a mapping with 'default' and/or 'moods'")
        own_default = _image(entry["default"], f"{base}.default", folder, source, max_bytes) if "default" in entry else None
        personas[str(persona)] = PersonaAvatars(own_default, _mood_table(entry.get("moods"), f"{base}.moods", folder,
                                                                          source, max_bytes))
    return AvatarSetup(settings, AvatarLibrary(default, moods, personas), source)


# --------------------------------------------------------------------------------------------------
# What Discord already has


@dataclass(frozen=True)
class AppliedRecord:
    digest: str  # sha256 of the picture Discord accepted
    at: float  # when, wall clock (the rate window outlives a restart)


class AvatarMemory:
    """The last picture Discord accepted, in a small private file, so a restart (or a crash loop) neither
    uploads the same picture again nor forgets the rate window. A file that cannot be read is ignored."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def load(self) -> AppliedRecord | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return AppliedRecord(str(data["digest"]), float(data["at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("profile picture state %s not read (%s); the next change goes out as usual", self.path, exc)
            return None

    def save(self, record: AppliedRecord) -> None:
        """Write owner-only from the first byte (a new file, then renamed over the old one)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.unlink(missing_ok=True)
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"digest": record.digest, "at": record.at}, handle)
        os.replace(temporary, self.path)


# --------------------------------------------------------------------------------------------------
# Switching


class AvatarOutcome(enum.Enum):
    UNCHANGED = "unchanged"  # nothing new is wanted
    APPLIED = "applied"
    LOCKED = "locked"  # a voice session holds profile_picture: held silently until it ends (asked again later)
    WAITING = "waiting"  # within the rate window (or the retry time after a refusal)
    REFUSED = "refused"  # Discord said no; tried again after `retry_s`


class RefusalKind(enum.Enum):
    RATE_LIMITED = "rate limited"
    FORBIDDEN = "missing permission"
    ERROR = "error"


def classify_refusal(exc: BaseException, settings: AvatarSettings) -> tuple[RefusalKind, float]:
    """What Discord's refusal means and when to try again (never sooner than the rate window)."""
    import discord

    if isinstance(exc, discord.RateLimited):
        return RefusalKind.RATE_LIMITED, max(float(exc.retry_after), settings.min_interval_s)
    if isinstance(exc, discord.Forbidden):
        return RefusalKind.FORBIDDEN, settings.retry_after_error_s
    if isinstance(exc, discord.HTTPException):
        text = str(getattr(exc, "text", "") or exc).lower()
        if exc.status == 429 or "too fast" in text:
            retry = 0.0
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            try:
                retry = float(headers.get("Retry-After", 0) or 0)
            except (TypeError, ValueError):
                retry = 0.0
            return RefusalKind.RATE_LIMITED, max(retry, settings.min_interval_s)
    return RefusalKind.ERROR, max(settings.retry_after_error_s, settings.min_interval_s)


Apply = Callable[[bytes], Awaitable[Any]]
Allowed = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class StepResult:
    outcome: AvatarOutcome
    retry_s: float | None = None  # WAITING/REFUSED: try again this much later


class AvatarSwitcher:
    """Applies the latest wanted picture, once, when allowed and when Discord's window allows."""

    def __init__(self, library: AvatarLibrary, settings: AvatarSettings, apply: Apply, allowed: Allowed, *,
                 clock: Callable[[], float] = time.monotonic, memory: AvatarMemory | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.library = library
        self.settings = settings
        self._apply = apply
        self._allowed = allowed
        self._clock = clock
        self._wall_clock = wall_clock
        self._memory = memory
        self.wanted: AvatarImage | None = None
        self.applied: AvatarImage | None = None
        self.wanted_for: tuple[str | None, str | None] = (None, None)
        self._not_before = -math.inf
        self._applied_digest: str | None = None
        record = memory.load() if memory is not None else None
        if record is not None:  # what Discord shows since before the restart, and the window it started
            self._applied_digest = record.digest
            left = record.at + settings.min_interval_s - wall_clock()
            if left > 0:
                self._not_before = clock() + left
        self._locked_logged = False
        self._refusal_logged: RefusalKind | None = None
        self._wake = asyncio.Event()
        self.applied_count = 0
        self.refusals = 0

    @classmethod
    def from_setup(cls, setup: AvatarSetup, apply: Apply, allowed: Allowed) -> AvatarSwitcher:
        """The bot's switcher: the checked pictures, and the state file when one is configured."""
        memory = AvatarMemory(setup.settings.state_file) if setup.settings.state_file else None
        return cls(setup.library, setup.settings, apply, allowed, memory=memory)

    def want(self, persona: str | None, mood: str | None) -> AvatarImage:
        """The picture for this persona and mood is wanted now; it replaces any earlier wish."""
        image = self.library.pick(persona, mood)
        self.wanted_for = (persona, mood)
        if self.wanted is None or image.digest != self.wanted.digest:
            self.wanted = image
            self._wake.set()
        return image

    def session_ended(self) -> None:
        """A voice session ended: the held picture may go out now (the next step checks again)."""
        self._wake.set()

    @property
    def pending(self) -> bool:
        return self.wanted is not None and self.wanted.digest != self._applied_digest

    async def step(self) -> StepResult:
        """One attempt: at most one `apply` call."""
        if not self.pending:
            return StepResult(AvatarOutcome.UNCHANGED)
        now = self._clock()
        if now < self._not_before:
            return StepResult(AvatarOutcome.WAITING, self._not_before - now)
        try:
            allowed = await self._allowed()
        except Exception as exc:  # the controller cannot answer: a session may be running, hold it
            log.warning("profile picture check failed (%s: %s); holding the change", type(exc).__name__, exc)
            return StepResult(AvatarOutcome.WAITING, max(self.settings.min_interval_s, 30.0))
        if not allowed:
            if not self._locked_logged:
                log.info("profile picture change to %s held: a voice session locks it", self.wanted.name)
                self._locked_logged = True
            # session_ended() wakes the loop at once for the bot's own sessions; asking again now and then
            # covers a session that ends elsewhere (another client, a lease expiry): a check, not an upload
            return StepResult(AvatarOutcome.LOCKED, self.settings.mood_poll_s)
        self._locked_logged = False
        image = self.wanted
        try:
            await self._apply(image.data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind, retry = classify_refusal(exc, self.settings)
            self.refusals += 1
            self._not_before = now + retry
            if self._refusal_logged is not kind:
                log.warning("Discord refused the profile picture %s (%s: %s); trying again in %.0f s",
                            image.name, kind.value, exc, retry)
                self._refusal_logged = kind
            return StepResult(AvatarOutcome.REFUSED, retry)
        self.applied = image
        self._applied_digest = image.digest
        self.applied_count += 1
        self._refusal_logged = None
        self._not_before = now + self.settings.min_interval_s
        if self._memory is not None:
            try:
                await asyncio.to_thread(self._memory.save, AppliedRecord(image.digest, self._wall_clock()))
            except OSError as exc:  # applied all the same; a restart may upload it once more
                log.warning("profile picture state not saved to %s (%s)", self._memory.path, exc)
        log.info("profile picture is now %s (persona %s, mood %s)", image.name, *self.wanted_for)
        return StepResult(AvatarOutcome.APPLIED)

    async def run(self, sleep: Callable[[float], Awaitable[Any]] | None = None) -> None:
        """Forever: step, then wait for a new wish / a session end, or for the retry time."""
        while True:
            self._wake.clear()
            result = await self.step()
            if result.retry_s is None:
                await self._wake.wait()
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), result.retry_s)
                except asyncio.TimeoutError:
                    pass


PersonaMood = Callable[[int], Awaitable[tuple[str | None, str | None]]]


class AvatarFeed:
    """Every `mood_poll_s`, tells the switcher the home server's persona and mood (from the brain)."""

    def __init__(self, switcher: AvatarSwitcher, fetch: PersonaMood, guild_id: Callable[[], int | None]) -> None:
        self.switcher = switcher
        self._fetch = fetch
        self._guild_id = guild_id
        self._failing = False

    async def poll_once(self) -> bool:
        guild = self._guild_id()
        if guild is None:
            return False
        try:
            persona, mood = await self._fetch(guild)
        except Exception as exc:
            if not self._failing:
                log.warning("cannot read the mood for the profile picture (%s: %s)", type(exc).__name__, exc)
                self._failing = True
            return False
        self._failing = False
        self.switcher.want(persona, mood)
        return True

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.switcher.settings.mood_poll_s)
