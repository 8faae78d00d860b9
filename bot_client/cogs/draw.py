"""`/draw prompt [seed]`: the slash-command way to ask for a picture (typed `/draw ...` and `!draw ...`
messages reach the brain like any message and are recognised there).

The command posts the request as a message ("🎨 /draw a red fox") and sends the brain a `message` event
for it, so the picture is a reply to that message and the brain's rules (the voice-session blackout with
its 🎤, the persona's style) apply exactly as to a typed request. A seed redoes an earlier picture.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Optional

import discord
from discord import app_commands
from discord.ext import commands

from ..discord_adapter import SAFE_MENTIONS
from ..graph_api import GraphError

if TYPE_CHECKING:
    from ..bot import MikuBot

log = logging.getLogger(__name__)
MAX_SEED = 2**32 - 1


def slash_draw_event(*, request_message_id: int, channel_id: int, guild_id: int | None, user_id: int, user_name: str,
                     prompt: str, channel_nsfw: bool, created_at: float) -> dict:
    """The brain event for a `/draw` command: a message addressed to Miku whose text is the command."""
    return {
        "type": "message", "event_id": f"slash-draw:{request_message_id}",
        "guild_id": str(guild_id) if guild_id is not None else None, "channel_id": str(channel_id),
        "message_id": str(request_message_id), "author_id": str(user_id), "author_name": user_name,
        "content": f"/draw {' '.join(prompt.split())}", "mentions_miku": True, "timestamp": created_at,
        "channel_nsfw": channel_nsfw,
    }


def with_seed(actions: list[dict], seed: int | None) -> list[dict]:
    """The user's seed on the brain's draw action (the graph otherwise picks one and reports it)."""
    if seed is None:
        return actions
    return [dict(a, seed=seed) if a.get("type") == "draw" else a for a in actions]


class DrawCog(commands.Cog, name="Draw"):
    def __init__(self, bot: "MikuBot") -> None:
        self.bot = bot

    @app_commands.command(name="draw", description="Ask Miku to draw a picture")
    @app_commands.describe(prompt="what to draw", seed="the seed of an earlier picture, to draw it again")
    async def draw(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 1000],
                   seed: Optional[app_commands.Range[int, 0, MAX_SEED]] = None) -> None:
        await interaction.response.send_message(f"🎨 /draw {prompt}", allowed_mentions=SAFE_MENTIONS)
        request = await interaction.original_response()
        event = slash_draw_event(
            request_message_id=request.id, channel_id=interaction.channel_id or request.channel.id,
            guild_id=interaction.guild_id, user_id=interaction.user.id,
            user_name=getattr(interaction.user, "display_name", None) or interaction.user.name, prompt=prompt,
            channel_nsfw=bool(getattr(interaction.channel, "nsfw", False)), created_at=time.time(),
        )
        try:
            actions = await self.bot.graph.post_event(event)
        except GraphError as exc:
            await self.bot.ops.reply(event_channel(event), request.id, f"❌ I couldn't draw that: {exc.message}")
            return
        await self.bot.executor.execute(with_seed(actions, seed), event)


def event_channel(event: dict) -> int:
    return int(event["channel_id"])
