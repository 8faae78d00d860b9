"""The bot's background features that a voice session pauses: scheduled events and the figurine notifier.

`BotFeatures` hosts both (graph/features/: no Discord there) inside the bot: it loads their files at
start-up (a bad file stops the bot with a message naming the file and the field), asks the controller
through the graph (`GET /v1/features`) before anything is posted, has Miku write `prompt` messages
through `POST /v1/compose`, and reaches Discord through `DiscordFeatureOps` (text, embeds, DMs, with the
same safe mentions as every other message). After a voice session the bot calls `after_session()`, which
posts what the session held back; a watcher does the same on its own when a session ended elsewhere
(lease expiry, another process).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import discord

from graph.features.feeds import FeedReader
from graph.features.figurines import (
    DEFAULT_FIGURINES_PATH,
    FeedCard,
    FigurineConfig,
    FigurineConfigError,
    FigurineNotifier,
    load_figurines,
)
from graph.features.gate import FIGURINE_NOTIFIER, SCHEDULED_EVENTS, FeatureGate
from graph.features.schedule import (
    DEFAULT_SCHEDULE_PATH,
    JobSpec,
    ScheduleConfig,
    ScheduleConfigError,
    load_schedule,
)
from graph.features.scheduler import JobView, RunOutcome, ScheduledEvents

from .config import BotConfig, ConfigError
from .discord_adapter import SAFE_MENTIONS
from .graph_api import GraphClient

log = logging.getLogger(__name__)

EMBED_COLOUR = 0x39C5BB  # Miku's teal


@dataclass(frozen=True)
class FeatureConfigs:
    schedule: ScheduleConfig | None
    figurines: FigurineConfig | None


def _path(named: str | None, default: str) -> str | None:
    """The file named in the bot config, else the default when it exists (None: the feature is off)."""
    if named:
        return named
    return default if os.path.exists(default) else None


def load_feature_configs(config: BotConfig) -> FeatureConfigs:
    """Both files, validated; a bad one is a ConfigError whose message names the file and the field."""
    try:
        schedule_path = _path(config.schedule_file, DEFAULT_SCHEDULE_PATH)
        schedule = load_schedule(schedule_path) if schedule_path else None
        figurines_path = _path(config.figurines_file, DEFAULT_FIGURINES_PATH)
        figurines = load_figurines(figurines_path) if figurines_path else None
    except (ScheduleConfigError, FigurineConfigError) as exc:
        raise ConfigError(str(exc)) from None
    return FeatureConfigs(schedule if schedule and schedule.enabled else None,
                          figurines if figurines and figurines.enabled else None)


def controller_check(graph: GraphClient):
    """`check(feature)` over the graph: the feature's state from `GET /v1/features` (raises when unreachable)."""

    async def check(feature: str) -> dict[str, Any]:
        for state in await graph.features():
            if state.name == feature:
                return {"allowed": not state.blocked}
        return {"allowed": True}  # a controller that does not switch this feature never pauses it

    return check


def card_embed(card: FeedCard) -> discord.Embed:
    embed = discord.Embed(title=card.title, url=card.url or None, description=card.description or None,
                          colour=EMBED_COLOUR)
    if card.price:
        embed.add_field(name="Price", value=card.price[:1024], inline=True)
    if card.image_url:
        embed.set_image(url=card.image_url)
    embed.set_footer(text=f"🎁 {card.source}")
    return embed


class DiscordFeatureOps:
    """Where the features' messages leave: channel texts, channel embeds and DMs, on a live client."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client

    async def _channel(self, channel_id: int) -> Any:
        return self.client.get_channel(channel_id) or await self.client.fetch_channel(channel_id)

    async def send_text(self, channel_id: int, text: str) -> None:
        channel = await self._channel(channel_id)
        await channel.send(text[:2000], allowed_mentions=SAFE_MENTIONS)

    async def send_embed(self, channel_id: int, card: FeedCard) -> None:
        channel = await self._channel(channel_id)
        await channel.send(embed=card_embed(card), allowed_mentions=SAFE_MENTIONS)

    async def dm_embed(self, user_id: int, card: FeedCard) -> None:
        user = self.client.get_user(user_id) or await self.client.fetch_user(user_id)
        await user.send(embed=card_embed(card))


class BotFeatures:
    """Starts, feeds and stops the two features; `scheduler` / `figurines` are None when switched off."""

    def __init__(self, configs: FeatureConfigs, graph: GraphClient, ops: Any, *, clock=time.time,
                 check=None) -> None:
        check = check or controller_check(graph)
        self.graph = graph
        self.scheduler: ScheduledEvents | None = None
        self.figurines: FigurineNotifier | None = None
        try:
            if configs.schedule is not None:
                self.scheduler = ScheduledEvents(configs.schedule, gate=FeatureGate(SCHEDULED_EVENTS, check),
                                                 post=ops.send_text, compose=self._compose, clock=clock)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"scheduled events: state_dir {configs.schedule.state_dir!r} cannot be used: {exc}") from None
        try:
            if configs.figurines is not None:
                fig = configs.figurines
                self.figurines = FigurineNotifier(fig, gate=FeatureGate(FIGURINE_NOTIFIER, check), ops=ops,
                                                  reader=FeedReader(max_bytes=fig.max_bytes, timeout_s=fig.timeout_s),
                                                  clock=clock)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"figurine notifier: state_dir {configs.figurines.state_dir!r} cannot be used: {exc}") from None

    async def _compose(self, spec: JobSpec) -> str | None:
        return await self.graph.compose(spec.prompt or "", spec.guild_id, spec.channel_id)

    async def start(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.start()
            log.info("scheduled events: %d job(s)", len(self.scheduler.jobs()))
        if self.figurines is not None:
            self.figurines.start()
            log.info("figurine notifier: %d feed(s)", len(self.figurines.config.feeds))

    async def after_session(self) -> None:
        """A voice session ended: post what it held back (each feature asks the controller first)."""
        if self.scheduler is not None:
            try:
                await self.scheduler.flush_deferred()
            except Exception:
                log.exception("posting deferred scheduled events failed; the watcher tries again")
        if self.figurines is not None:
            try:
                await self.figurines.deliver_pending()
            except Exception:
                log.exception("posting waiting figurine items failed; the next round tries again")

    async def close(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.shutdown()
        if self.figurines is not None:
            await self.figurines.stop()


# ---- what the commands say (plain text, tested without Discord) ----------------------------------


def format_jobs(views: list[JobView], *, paused_by_voice: bool) -> str:
    if not views:
        return "⏰ No scheduled events in this server."
    lines = ["**⏰ Scheduled events**" + (" (paused while I'm in voice)" if paused_by_voice else "")]
    for view in views:
        spec = view.spec
        when = ("⏸️ paused" if view.next_run is None
                else f"next <t:{int(view.next_run.timestamp())}:f>")
        extra = " · ⏳ runs once when the voice session ends" if view.deferred else ""
        source = "" if spec.source == "config" else " · added by command"
        lines.append(f"`{spec.job_id}` · {spec.trigger.describe()} ({spec.timezone}) · {when} · <#{spec.channel_id}> · "
                     f"{spec.describe_message()} · misfire {spec.misfire.value}{source}{extra}")
    return "\n".join(lines)


RUN_REPLIES = {
    RunOutcome.POSTED: "✅ `{job}` posted.",
    RunOutcome.DEFERRED: "⏳ I'm in voice chat, so `{job}` will run once when I leave.",
    RunOutcome.SKIPPED: "⏭️ `{job}` skipped: I'm in voice chat.",
    RunOutcome.FAILED: "❌ `{job}` could not post its message (see the bot's log).",
    RunOutcome.UNKNOWN: "❌ There is no scheduled event called `{job}`.",
}


def add_fields(job_id: str, guild_id: int, channel_id: int, when: str, kind: str, content: str) -> dict[str, Any]:
    """`schedule add` arguments as the fields a job in schedule.yaml has (so the same checks apply)."""
    fields: dict[str, Any] = {"id": job_id.strip().lower(), "guild_id": guild_id, "channel_id": channel_id}
    when = when.strip()
    if when.lower().startswith("every"):
        fields["interval"] = when
    else:
        fields["cron"] = when
    kind = kind.strip().lower()
    if kind in ("random", "choices", "choice"):
        fields["choices"] = [part.strip() for part in content.split("|") if part.strip()]
    elif kind in ("prompt", "llm", "write"):
        fields["prompt"] = content
    elif kind == "text":
        fields["text"] = content
    else:
        raise ScheduleConfigError(f"schedule add: kind: must be text, random or prompt, got {kind!r}")
    return fields


def format_next(next_run: datetime | None) -> str:
    return "paused" if next_run is None else f"next run <t:{int(next_run.timestamp())}:f>"
