"""Bipolar mode: Miku and Evil Miku argue in a channel when people provoke it (or ask for it).

Per channel (on in `bipolar.channels`, or switched with `!bipolar on|off` by a moderator, which is kept in
`state_path` across restarts), every message
adds to the channel's argument score: its trigger words and phrases (configurable weights), a bonus
when it names both personas, and, while Heart Flow has the channel FOCUSED, an optional LLM judge
("is this trying to start an argument between them?"). The score halves every `half_life_s`. Past
`threshold`, or on `!argue [topic]`, the two personas exchange `max_messages` lines, each written by the
LLM in that persona's voice (its modelfile's system prompt) from the argument so far; then the channel
cools down for `cooldown_s`. The client posts each line through a channel webhook with that persona's
name and picture (the `argument` action, docs/brain.md).

A voice session holds `bipolar_mode` (`Effect.DISABLED`): no argument starts, nothing is posted, no judge
runs, and the trigger is logged. The feature is checked again after the lines are written, so an
argument written as a session started is dropped rather than posted over it.

Plain asyncio: the LLM, the feature check, Heart Flow's focus and the clock are injected.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph.brain.events import FEATURE_BIPOLAR, FeatureCheck, MessageEvent
from graph.brain.personas import Persona, PersonaLibrary
from graph.files import create_private_file

log = logging.getLogger(__name__)

Complete = Callable[[str, str | None], Awaitable[str]]
CheckFeature = Callable[[str], Awaitable[FeatureCheck]]

DEFAULT_TRIGGERS: Mapping[str, float] = {
    "fight": 1.0, "argue": 1.0, "argument": 1.0, "versus": 1.0, " vs ": 1.0, "who wins": 1.5, "who would win": 1.5,
    "better than": 1.0, "worse than": 1.0, "which one is better": 1.5, "evil": 0.5, "debate": 1.0, "roast": 1.0,
}
DEFAULT_NAMES: Mapping[str, tuple[str, ...]] = {
    "miku": ("miku", "hatsune"),
    "evil_miku": ("evil miku", "evil_miku", "dark miku"),
}
JUDGE_SYSTEM = "You judge Discord messages. Answer with one word: yes or no."


class BipolarConfigError(ValueError):
    """The `bipolar:` settings are wrong; the message names the field."""


@dataclass(frozen=True)
class BipolarConfig:
    """The brain's `bipolar:` settings (configs/brain.yaml)."""

    enabled: bool = True
    channels: tuple[str, ...] = ()  # channels where it is on from the start
    personas: tuple[str, str] = ("miku", "evil_miku")  # who argues, first speaker first
    names: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_NAMES))
    triggers: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TRIGGERS))
    both_named_bonus: float = 1.5
    threshold: float = 3.0
    half_life_s: float = 600.0
    judge_in_focus: bool = True
    judge_weight: float = 1.5
    judge_timeout_s: float = 5.0
    max_messages: int = 6
    max_line_chars: int = 400
    cooldown_s: float = 1800.0
    line_timeout_s: float = 60.0
    pace_s: float = 2.0  # the client waits this long between lines (at most 10 s), so it reads like a chat
    argue_command: str = "argue"
    toggle_command: str = "bipolar"
    state_path: str | None = None  # where `!bipolar on|off` is kept (0600 JSON); None: in memory only

    @classmethod
    def from_mapping(cls, data: Any, source: str = "bipolar") -> BipolarConfig:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise BipolarConfigError(f"{source} must be a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise BipolarConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            where = f"{source}.{key}"
            default = getattr(cls(), key)
            if key == "channels":
                if not isinstance(value, (list, tuple)):
                    raise BipolarConfigError(f"{where} must be a list of channel ids")
                value = tuple(str(v) for v in value)
            elif key == "personas":
                if not isinstance(value, (list, tuple)) or len(value) != 2 or len(set(map(str, value))) != 2:
                    raise BipolarConfigError(f"{where} must name two different personas, got {value!r}")
                value = (str(value[0]), str(value[1]))
            elif key == "names":
                if not isinstance(value, Mapping):
                    raise BipolarConfigError(f"{where} must map persona -> list of names")
                value = {str(k): tuple(str(n).lower() for n in (v or ())) for k, v in value.items()}
            elif key == "triggers":
                if not isinstance(value, Mapping):
                    raise BipolarConfigError(f"{where} must map a word or phrase -> weight")
                checked = {}
                for phrase, weight in value.items():
                    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                        raise BipolarConfigError(f"{where}.{phrase} must be a number, got {weight!r}")
                    checked[str(phrase).lower()] = float(weight)
                value = checked
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise BipolarConfigError(f"{where} must be true or false, got {value!r}")
            elif isinstance(default, (int, float)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                    raise BipolarConfigError(f"{where} must be a number >= 0, got {value!r}")
                value = type(default)(value)
            elif key == "state_path":
                if value is not None and (not isinstance(value, str) or not value.strip()):
                    raise BipolarConfigError(f"{where} must be a file path or null, got {value!r}")
            elif isinstance(default, str):
                if not isinstance(value, str) or not value.strip() or " " in value.strip():
                    raise BipolarConfigError(f"{where} must be one word, got {value!r}")
                value = value.strip().lower()
            kwargs[key] = value
        config = cls(**kwargs)
        if not 2 <= config.max_messages <= 20:
            raise BipolarConfigError(f"{source}.max_messages must be 2-20, got {config.max_messages}")
        if config.threshold <= 0 or config.half_life_s <= 0:
            raise BipolarConfigError(f"{source}.threshold and {source}.half_life_s must be positive")
        if config.max_line_chars < 20:
            raise BipolarConfigError(f"{source}.max_line_chars must be at least 20")
        return config


class ChannelSwitches:
    """The channels a moderator switched on or off, in a private JSON file so they survive a restart.

    `{"channel id": true|false}`; written whole to a new 0600 file, then renamed over the old one."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path).expanduser() if path else None

    def load(self) -> dict[str, bool]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # unreadable: start from the config, say so, keep the file
            log.warning("bipolar channel switches in %s not read (%s); using the config's channels", self.path, exc)
            return {}
        return {str(k): bool(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def save(self, switches: Mapping[str, bool]) -> None:
        if self.path is None:
            return
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.unlink(missing_ok=True)
        create_private_file(temporary, json.dumps(dict(switches), sort_keys=True).encode())
        os.replace(temporary, self.path)


class ArgumentScore:
    """Per channel: a score that decays by half every `half_life_s`."""

    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self._scores: dict[str, tuple[float, float]] = {}  # channel -> (score, at)

    def value(self, channel: str, now: float) -> float:
        score, at = self._scores.get(channel, (0.0, now))
        return score * 0.5 ** (max(0.0, now - at) / self.half_life_s)

    def add(self, channel: str, points: float, now: float) -> float:
        score = self.value(channel, now) + points
        self._scores[channel] = (score, now)
        return score

    def reset(self, channel: str) -> None:
        self._scores.pop(channel, None)


@dataclass(frozen=True)
class ArgumentLine:
    persona: str
    display_name: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"persona": self.persona, "display_name": self.display_name, "text": self.text}


def strip_speaker(text: str, names: tuple[str, ...]) -> str:
    """Drop a leading "Evil Miku:" (or "**Miku**:") the model may write before its own line."""
    for name in names:
        match = re.match(rf"^\s*\**\s*{re.escape(name)}\s*\**\s*:\s*", text, re.IGNORECASE)
        if match:
            return text[match.end():]
    return text


class BipolarHost:
    """Decides and writes the arguments; `on_message` returns the actions to add for one message and
    whether it consumed the message as one of its commands (then the brain's own answer is dropped)."""

    def __init__(
        self,
        config: BipolarConfig,
        *,
        personas: PersonaLibrary,
        complete: Complete | None,
        check_feature: CheckFeature,
        is_focused: Callable[[str], bool] = lambda channel: False,
        clock: Callable[[], float] = time.time,
        command_prefix: str = "!",
        options_for: Callable[[Persona], Any] | None = None,
    ) -> None:
        for name in config.personas:
            if personas.get(name) is None:
                raise BipolarConfigError(f"bipolar.personas: no persona {name!r} in the persona directory "
                                         f"(loaded: {', '.join(personas.names())})")
        self.config = config
        self.personas = personas
        self._complete = complete
        self._check = check_feature
        self._is_focused = is_focused
        self._clock = clock
        self._prefix = command_prefix
        # the speaker's own LLM settings (model, temperature, token limit) for each line, when the brain
        # provides them: then each line is `complete(prompt, system, options_for(persona))`
        self._options_for = options_for
        self._store = ChannelSwitches(config.state_path)
        self._switches = self._store.load()
        self.channels: set[str] = set(config.channels)
        for channel, on in self._switches.items():
            (self.channels.add if on else self.channels.discard)(channel)
        self.score = ArgumentScore(config.half_life_s)
        self._cooldown_until: dict[str, float] = {}
        self._running: set[str] = set()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.stats = {"arguments": 0, "suppressed_by_session": 0, "judge_calls": 0, "lines": 0}

    # ---- scoring -------------------------------------------------------------------------------

    def keyword_points(self, content: str) -> float:
        text = f" {content.lower()} "
        points = sum(weight for phrase, weight in self.config.triggers.items() if phrase in text)
        # longest names first, each found one blanked out: "evil miku" names Evil Miku, not Miku as well
        named: set[str] = set()
        masked = text
        pairs = [(persona, name) for persona in self.config.personas for name in self.config.names.get(persona, (persona,))]
        for persona, name in sorted(pairs, key=lambda pair: -len(pair[1])):
            if name and name in masked:
                named.add(persona)
                masked = masked.replace(name, " ")
        if len(named) == 2:
            points += self.config.both_named_bonus
        return points

    async def _judge(self, content: str) -> bool:
        if self._complete is None:
            return False
        first, second = (self._display(p) for p in self.config.personas)
        prompt = (f"Message: {content[:500]}\n\nIs this message trying to start an argument or a contest between "
                  f"{first} and {second}? Answer yes or no.")
        self.stats["judge_calls"] += 1
        try:
            answer = await asyncio.wait_for(self._complete(prompt, JUDGE_SYSTEM), self.config.judge_timeout_s)
        except Exception as exc:
            log.warning("bipolar judge failed (%s: %s)", type(exc).__name__, exc)
            return False
        return answer.strip().lower().startswith("yes")

    # ---- messages and commands -----------------------------------------------------------------

    async def on_message(self, ev: MessageEvent) -> tuple[list[dict[str, Any]], bool]:
        if not self.config.enabled or ev.author_is_self or ev.author_is_bot or ev.is_dm:
            return [], False
        if ev.message_id in self._seen:  # a duplicate, or a message replayed after a session: seen already
            return [], False
        self._seen[ev.message_id] = None
        if len(self._seen) > 10_000:
            self._seen.popitem(last=False)
        content = ev.content.strip()
        if content.startswith(self._prefix):
            words = content[len(self._prefix):].split()
            if words and words[0].lower() == self.config.toggle_command:
                return await self._toggle(ev, words[1:]), True
            if words and words[0].lower() == self.config.argue_command:
                if ev.channel_id not in self.channels:
                    return [self._say(ev, f"Bipolar mode is off here. A moderator can turn it on with "
                                          f"`{self._prefix}{self.config.toggle_command} on`.")], True
                topic = " ".join(words[1:]) or "who is the better Miku"
                trigger = f"command {self._prefix}{self.config.argue_command}"
                if not await self._allowed(ev.channel_id, trigger):
                    return [], True  # silently: nothing is posted during a voice session
                wait = self._cooldown_until.get(ev.channel_id, -math.inf) - self._clock()
                if wait > 0:
                    return [self._say(ev, f"😤 We just argued here! Ask again in {math.ceil(wait / 60)} min.")], True
                return await self._argue(ev.channel_id, topic, trigger), True
        if ev.channel_id not in self.channels:
            return [], False
        now = self._clock()
        points = self.keyword_points(content)
        focused = self.config.judge_in_focus and self._is_focused(ev.channel_id)
        if points <= 0 and not focused:
            return [], False
        if now < self._cooldown_until.get(ev.channel_id, -math.inf) or ev.channel_id in self._running:
            return [], False
        if not await self._allowed(ev.channel_id, f"message {ev.message_id}"):
            self.score.reset(ev.channel_id)  # nothing stored up to burst out after the session
            return [], False
        if focused and await self._judge(content):
            points += self.config.judge_weight
        if points <= 0:
            return [], False
        score = self.score.add(ev.channel_id, points, now)
        if score < self.config.threshold:
            return [], False
        return await self._argue(ev.channel_id, content[:300], f"score {score:.1f} >= {self.config.threshold:g}"), False

    async def _toggle(self, ev: MessageEvent, args: list[str]) -> list[dict[str, Any]]:
        sub = args[0].lower() if args else "status"
        if sub in ("on", "off"):
            if not ev.author_can_moderate:
                return [self._say(ev, "Only moderators can switch bipolar mode on or off.")]
            (self.channels.add if sub == "on" else self.channels.discard)(ev.channel_id)
            self.score.reset(ev.channel_id)
            self._switches[ev.channel_id] = sub == "on"
            try:
                await asyncio.to_thread(self._store.save, dict(self._switches))
            except OSError as exc:  # switched for now; it just will not survive a restart
                log.warning("bipolar channel switches not saved to %s (%s)", self._store.path, exc)
            return [self._say(ev, "😈 Bipolar mode is on in this channel." if sub == "on"
                              else "💙 Bipolar mode is off in this channel.")]
        state = "on" if ev.channel_id in self.channels else "off"
        return [self._say(ev, f"Bipolar mode is {state} in this channel. "
                              f"Usage: `{self._prefix}{self.config.toggle_command} on|off`, "
                              f"`{self._prefix}{self.config.argue_command} [topic]`.")]

    @staticmethod
    def _say(ev: MessageEvent, text: str) -> dict[str, Any]:
        return {"type": "reply", "channel_id": ev.channel_id, "reply_to_message_id": ev.message_id, "text": text}

    async def _allowed(self, channel: str, trigger: str) -> bool:
        try:
            verdict = FeatureCheck.coerce(await self._check(FEATURE_BIPOLAR))
        except Exception as exc:  # cannot tell whether a session runs: stay quiet
            log.warning("bipolar_mode check failed (%s: %s); no argument in %s", type(exc).__name__, exc, channel)
            return False
        if not verdict.allowed:
            self.stats["suppressed_by_session"] += 1
            log.info("bipolar argument in channel %s not started (%s): a voice session disables bipolar mode",
                     channel, trigger)
        return verdict.allowed

    # ---- the argument --------------------------------------------------------------------------

    def _display(self, persona: str) -> str:
        found = self.personas.get(persona)
        return (found.display_name or found.name) if found is not None else persona

    async def _argue(self, channel: str, topic: str, trigger: str) -> list[dict[str, Any]]:
        if channel in self._running or not await self._allowed(channel, trigger):
            return []
        if self._complete is None:
            log.warning("bipolar argument in %s skipped: the brain has no LLM", channel)
            return []
        self._running.add(channel)
        try:
            lines = await self._write(topic)
        finally:
            self._running.discard(channel)
        self.score.reset(channel)
        self._cooldown_until[channel] = self._clock() + self.config.cooldown_s
        if len(lines) < 2:
            log.warning("bipolar argument in %s dropped: the LLM wrote %d line(s)", channel, len(lines))
            return []
        if not await self._allowed(channel, f"{trigger}, after writing"):
            return []  # a session started while the lines were written: say nothing over it
        self.stats["arguments"] += 1
        self.stats["lines"] += len(lines)
        log.info("bipolar argument in channel %s (%s): %d lines", channel, trigger, len(lines))
        return [{"type": "argument", "channel_id": channel, "topic": topic, "trigger": trigger,
                 "pace_s": min(self.config.pace_s, 10.0), "lines": [line.to_dict() for line in lines]}]

    async def _write(self, topic: str) -> list[ArgumentLine]:
        lines: list[ArgumentLine] = []
        first, second = self.config.personas
        for index in range(self.config.max_messages):
            speaker, other = (first, second) if index % 2 == 0 else (second, first)
            persona = self.personas.get(speaker)
            assert persona is not None and self._complete is not None
            name, other_name = self._display(speaker), self._display(other)
            system = (f"{persona.system_prompt}\n\nYou are in a playful argument with {other_name} in a Discord "
                      f"channel, everyone watching. Stay in character. Write only your next line: one or two short "
                      f"sentences, no name prefix, no hate, no threats.")
            transcript = "\n".join(f"{line.display_name}: {line.text}" for line in lines) or "(nobody has spoken yet)"
            prompt = (f"What started it: {topic}\n\nThe argument so far:\n{transcript}\n\n"
                      + (f"Answer {other_name}'s last line as {name}." if lines else f"Open the argument as {name}."))
            call = (self._complete(prompt, system) if self._options_for is None
                    else self._complete(prompt, system, self._options_for(persona)))
            try:
                text = await asyncio.wait_for(call, self.config.line_timeout_s)
            except Exception as exc:
                log.warning("bipolar line %d not written (%s: %s); the argument ends there", index + 1,
                            type(exc).__name__, exc)
                break
            text = strip_speaker(text.strip(), (name, speaker)).strip()[: self.config.max_line_chars].strip()
            if not text:
                break
            lines.append(ArgumentLine(speaker, name, text))
        return lines

    def snapshot(self) -> dict[str, Any]:
        return {"channels": sorted(self.channels), "stats": dict(self.stats)}
