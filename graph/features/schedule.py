"""`configs/schedule.yaml`: the scheduled events, validated into typed values before anything runs.

A job posts to one channel on a cron or interval trigger, in its server's time zone, one of: a fixed
`text`, a random pick from `choices` (the Monday video), or a message the LLM writes in the persona's
voice from a `prompt`. `misfire` says what a run that falls inside a voice session (or while the bot
is down) does: `run_once` (default) runs it once afterwards however many runs were missed, `skip` drops
it with a log line. Every mistake is a `ScheduleConfigError` naming the file and the field
(`configs/schedule.yaml: jobs[2].cron: ...`); the same checks validate jobs added by command.
"""
from __future__ import annotations

import enum
import re
import zoneinfo
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from graph.features.config_file import read_yaml

DEFAULT_SCHEDULE_PATH = "configs/schedule.yaml"
MAX_TEXT_CHARS = 2000  # one Discord message
MAX_CHOICES = 100
_JOB_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SNOWFLAKE = re.compile(r"^[0-9]{1,20}$")
_INTERVAL_UNITS = ("weeks", "days", "hours", "minutes", "seconds")
_SHORT_INTERVAL = re.compile(r"^every\s+(\d+)\s*(w|d|h|m|s|weeks?|days?|hours?|minutes?|mins?|seconds?|secs?)$", re.I)
MIN_INTERVAL_S = 60.0  # nobody wants a channel message more often than once a minute


class ScheduleConfigError(ValueError):
    """A bad schedule: the message names the file (or command) and the field."""


class Misfire(enum.Enum):
    SKIP = "skip"
    RUN_ONCE = "run_once"


class MessageKind(enum.Enum):
    TEXT = "text"
    CHOICE = "choices"
    PROMPT = "prompt"


@dataclass(frozen=True)
class TriggerSpec:
    """Exactly one of `cron` (crontab, 5 fields) or `interval` (seconds)."""

    cron: str | None = None
    interval_s: float | None = None

    def build(self, timezone: str) -> BaseTrigger:
        tz = zoneinfo.ZoneInfo(timezone)
        if self.cron is not None:
            return CronTrigger.from_crontab(self.cron, timezone=tz)
        assert self.interval_s is not None
        return IntervalTrigger(seconds=self.interval_s, timezone=tz)

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron `{self.cron}`"
        seconds = int(self.interval_s or 0)
        for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds % size == 0:
                n = seconds // size
                return f"every {n} {unit}{'s' if n != 1 else ''}"
        return f"every {seconds} seconds"


@dataclass(frozen=True)
class JobSpec:
    """One scheduled event. `source` is `config` (schedule.yaml, re-read at start) or `command`."""

    job_id: str
    guild_id: int
    channel_id: int
    trigger: TriggerSpec
    timezone: str
    kind: MessageKind
    text: str | None = None
    choices: tuple[str, ...] = ()
    prompt: str | None = None
    fallback: str | None = None  # posted when the LLM cannot write the prompt's message
    misfire: Misfire = Misfire.RUN_ONCE
    source: str = "config"

    def to_dict(self) -> dict[str, Any]:
        """Plain values only: this is what the job store keeps (and `from_dict` reads back)."""
        data = asdict(self)
        data["kind"] = self.kind.value
        data["misfire"] = self.misfire.value
        data["choices"] = list(self.choices)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSpec":
        return cls(
            job_id=data["job_id"], guild_id=int(data["guild_id"]), channel_id=int(data["channel_id"]),
            trigger=TriggerSpec(**data["trigger"]), timezone=data["timezone"], kind=MessageKind(data["kind"]),
            text=data.get("text"), choices=tuple(data.get("choices") or ()), prompt=data.get("prompt"),
            fallback=data.get("fallback"), misfire=Misfire(data.get("misfire", "run_once")),
            source=data.get("source", "config"),
        )

    def describe_message(self) -> str:
        if self.kind is MessageKind.TEXT:
            return f"text: {_short(self.text or '')}"
        if self.kind is MessageKind.CHOICE:
            return f"random pick of {len(self.choices)}"
        return f"written by Miku from: {_short(self.prompt or '')}"


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class ScheduleConfig:
    enabled: bool = True
    state_dir: str = ".miku/features"
    default_timezone: str = "UTC"
    admin_roles: tuple[str, ...] = ()  # who may run the schedule commands (server admins always may)
    misfire_grace_s: float = 60.0  # `skip` jobs: how late a run may still start (bot busy or restarting)
    recheck_s: float = 15.0  # how often deferred runs look for the end of a session
    servers: dict[int, str] = field(default_factory=dict)  # guild id -> IANA time zone
    jobs: tuple[JobSpec, ...] = ()

    def timezone_of(self, guild_id: int) -> str:
        return self.servers.get(guild_id, self.default_timezone)


_TOP_KEYS = {"enabled", "state_dir", "default_timezone", "admin_roles", "misfire_grace_s", "recheck_s", "servers", "jobs"}
_JOB_KEYS = {"id", "guild_id", "channel_id", "cron", "interval", "timezone", "text", "choices", "prompt",
             "fallback", "misfire"}


class _Where:
    """Builds error messages that name the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, message: str) -> ScheduleConfigError:
        return ScheduleConfigError(f"{self.source}: {path}: {message}")


def _timezone(value: Any, where: _Where, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(path, f"must be an IANA time zone name such as Europe/Berlin, got {value!r}")
    try:
        zoneinfo.ZoneInfo(value.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise where.error(path, f"unknown time zone {value!r}") from None
    return value.strip()


def _snowflake(value: Any, where: _Where, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not _SNOWFLAKE.match(str(value).strip()):
        raise where.error(path, f"must be a Discord id (digits), got {value!r}")
    return int(str(value).strip())


def _text(value: Any, where: _Where, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(path, "must be non-empty text")
    if len(value) > MAX_TEXT_CHARS:
        raise where.error(path, f"is {len(value)} characters; at most {MAX_TEXT_CHARS}")
    return value.strip()


def parse_interval(value: Any, where: _Where, path: str) -> float:
    """`{hours: 6}`, a number of seconds, or "every 6h"; at least a minute."""
    if isinstance(value, str):
        match = _SHORT_INTERVAL.match(value.strip())
        if not match:
            raise where.error(path, f"{value!r} is not an interval such as 'every 6h' or {{hours: 6}}")
        n, unit = int(match.group(1)), match.group(2).lower()
        size = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}[unit[0] if not unit.startswith("mi") else "m"]
        seconds = float(n * size)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, dict):
        unknown = sorted(set(map(str, value)) - set(_INTERVAL_UNITS))
        if unknown:
            raise where.error(path, f"unknown unit(s) {', '.join(unknown)}; use {', '.join(_INTERVAL_UNITS)}")
        seconds = 0.0
        for unit, amount in value.items():
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
                raise where.error(f"{path}.{unit}", f"must be a non-negative number, got {amount!r}")
            seconds += float(amount) * {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}[unit]
    else:
        raise where.error(path, f"must be a mapping such as {{hours: 6}}, got {value!r}")
    if not seconds >= MIN_INTERVAL_S or seconds != seconds or seconds == float("inf"):
        raise where.error(path, f"must be at least {MIN_INTERVAL_S:g} seconds, got {seconds:g}")
    return seconds


def parse_cron(value: Any, where: _Where, path: str, timezone: str = "UTC") -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(path, f"must be a crontab expression such as '0 9 * * mon', got {value!r}")
    expression = " ".join(value.split())
    if len(expression.split(" ")) != 5:
        raise where.error(path, f"{value!r} is not a crontab expression (5 fields: minute hour day month weekday)")
    try:
        CronTrigger.from_crontab(expression, timezone=zoneinfo.ZoneInfo(timezone))
    except ValueError as exc:
        raise where.error(path, f"bad cron expression {value!r}: {exc}") from None
    return expression


def parse_job(data: Any, *, where: _Where, path: str, servers: dict[int, str], default_timezone: str,
              source: str = "config") -> JobSpec:
    if not isinstance(data, dict):
        raise where.error(path, f"must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - _JOB_KEYS)
    if unknown:
        raise where.error(path, f"unknown key(s) {', '.join(unknown)}")
    job_id = data.get("id")
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise where.error(f"{path}.id", f"must be 1-64 lower-case letters, digits, '-' or '_', got {job_id!r}")
    if "guild_id" not in data:
        raise where.error(f"{path}.guild_id", "is missing")
    if "channel_id" not in data:
        raise where.error(f"{path}.channel_id", "is missing")
    guild_id = _snowflake(data["guild_id"], where, f"{path}.guild_id")
    channel_id = _snowflake(data["channel_id"], where, f"{path}.channel_id")
    timezone = (_timezone(data["timezone"], where, f"{path}.timezone") if data.get("timezone") is not None
                else servers.get(guild_id, default_timezone))
    has_cron, has_interval = data.get("cron") is not None, data.get("interval") is not None
    if has_cron == has_interval:
        raise where.error(f"{path}", "needs exactly one of cron or interval")
    trigger = (TriggerSpec(cron=parse_cron(data["cron"], where, f"{path}.cron", timezone)) if has_cron
               else TriggerSpec(interval_s=parse_interval(data["interval"], where, f"{path}.interval")))
    kinds = [k for k in ("text", "choices", "prompt") if data.get(k) is not None]
    if len(kinds) != 1:
        raise where.error(path, "needs exactly one of text, choices or prompt")
    kind = MessageKind(kinds[0])
    text = prompt = None
    choices: tuple[str, ...] = ()
    if kind is MessageKind.TEXT:
        text = _text(data["text"], where, f"{path}.text")
    elif kind is MessageKind.PROMPT:
        prompt = _text(data["prompt"], where, f"{path}.prompt")
    else:
        raw = data["choices"]
        if not isinstance(raw, list) or not raw:
            raise where.error(f"{path}.choices", "must be a non-empty list of texts")
        if len(raw) > MAX_CHOICES:
            raise where.error(f"{path}.choices", f"has {len(raw)} entries; at most {MAX_CHOICES}")
        choices = tuple(_text(c, where, f"{path}.choices[{i}]") for i, c in enumerate(raw))
    fallback = _text(data["fallback"], where, f"{path}.fallback") if data.get("fallback") is not None else None
    if fallback is not None and kind is not MessageKind.PROMPT:
        raise where.error(f"{path}.fallback", "only applies to prompt jobs")
    misfire_raw = data.get("misfire", Misfire.RUN_ONCE.value)
    try:
        misfire = Misfire(str(misfire_raw).strip().lower())
    except ValueError:
        raise where.error(f"{path}.misfire", f"must be skip or run_once, got {misfire_raw!r}") from None
    return JobSpec(job_id, guild_id, channel_id, trigger, timezone, kind, text, choices, prompt, fallback, misfire, source)


def parse_schedule(data: Any, source: str = DEFAULT_SCHEDULE_PATH) -> ScheduleConfig:
    where = _Where(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise where.error("(top level)", f"must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        raise where.error("(top level)", f"unknown key(s) {', '.join(unknown)}")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise where.error("enabled", f"must be true or false, got {enabled!r}")
    state_dir = data.get("state_dir", ScheduleConfig.state_dir)
    if not isinstance(state_dir, str) or not state_dir.strip():
        raise where.error("state_dir", "must be a directory path")
    default_tz = _timezone(data.get("default_timezone", "UTC"), where, "default_timezone")
    roles = data.get("admin_roles") or []
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list) or not all(isinstance(r, str) and r.strip() for r in roles):
        raise where.error("admin_roles", "must be a list of role names")
    numbers = {}
    for key, default in (("misfire_grace_s", ScheduleConfig.misfire_grace_s), ("recheck_s", ScheduleConfig.recheck_s)):
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e7:
            raise where.error(key, f"must be a positive number of seconds, got {value!r}")
        numbers[key] = float(value)
    raw_servers = data.get("servers") or {}
    if not isinstance(raw_servers, dict):
        raise where.error("servers", "must be a mapping of guild id -> {timezone: ...}")
    servers: dict[int, str] = {}
    for key, value in raw_servers.items():
        guild = _snowflake(key, where, f"servers.{key}")
        if not isinstance(value, dict) or set(map(str, value)) - {"timezone"}:
            raise where.error(f"servers.{key}", "must be a mapping with only timezone")
        servers[guild] = _timezone(value.get("timezone"), where, f"servers.{key}.timezone")
    raw_jobs = data.get("jobs") or []
    if not isinstance(raw_jobs, list):
        raise where.error("jobs", f"must be a list of jobs, got {type(raw_jobs).__name__}")
    jobs: list[JobSpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_jobs):
        job = parse_job(raw, where=where, path=f"jobs[{index}]", servers=servers, default_timezone=default_tz)
        if job.job_id in seen:
            raise where.error(f"jobs[{index}].id", f"{job.job_id!r} is used twice")
        seen.add(job.job_id)
        jobs.append(job)
    return ScheduleConfig(enabled, state_dir.strip(), default_tz, tuple(r.strip() for r in roles),
                          numbers["misfire_grace_s"], numbers["recheck_s"], servers, tuple(jobs))


def load_schedule(path: str | Path = DEFAULT_SCHEDULE_PATH) -> ScheduleConfig:
    """Read and validate the file; unreadable or malformed YAML is a ScheduleConfigError naming it."""
    p = Path(path)
    return parse_schedule(read_yaml(p, ScheduleConfigError), str(p))


def job_from_command(fields: dict[str, Any], config: ScheduleConfig) -> JobSpec:
    """A job added by `schedule add`: the same checks as the file, errors naming the command's field."""
    return parse_job(fields, where=_Where("schedule add"), path="job", servers=config.servers,
                     default_timezone=config.default_timezone, source="command")
