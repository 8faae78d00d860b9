"""Prompt-channel messages during a voice session: check, acknowledge with 🎤, and hand to the session."""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

from .actions import ChatOps
from .inputs import IncomingMessage, PromptVerdict, check_prompt
from .session import VoiceSession

log = logging.getLogger(__name__)

ACK_EMOJI = "🎤"
VISION_BLOCKED_FALLBACK = (
    "🎤 I can't look at images or videos right now, I'm talking in voice chat! Send it again after I leave."
)


def too_long_message(length: int, limit: int) -> str:
    return f"❌ That's too long for me to say out loud ({length} characters; the limit is {limit}). Try a shorter prompt?"


async def handle_prompt(
    session: VoiceSession,
    message: IncomingMessage,
    ops: ChatOps,
    *,
    bot_id: int | None,
    vision_notice: Callable[[], Awaitable[str | None]] | None = None,
    kind: str = "prompt",
) -> str:
    """Speak a prompt-channel message; returns the verdict (`ok`, `empty`, `attachment_only`, `too_long`,
    `refused`). Every verdict but `empty` tells the user something."""
    limit = session.config.session.max_prompt_chars
    check = check_prompt(message, limit, bot_id)
    if check.verdict == PromptVerdict.EMPTY:
        return check.verdict
    if check.verdict == PromptVerdict.ATTACHMENT_ONLY:
        notice = None
        if vision_notice is not None:
            try:
                notice = await vision_notice()
            except Exception:
                log.debug("could not read the vision blackout message", exc_info=True)
        await ops.reply(message.channel_id, message.message_id, notice or VISION_BLOCKED_FALLBACK)
        return check.verdict
    if check.verdict == PromptVerdict.TOO_LONG:
        await ops.reply(message.channel_id, message.message_id, too_long_message(len(check.text), limit))
        return check.verdict
    result = await session.submit(check.text, kind=kind)
    if not result.accepted:
        await ops.reply(message.channel_id, message.message_id, result.message or "❌ I can't take that prompt now.")
        return "refused"
    try:
        await ops.react(message.channel_id, message.message_id, ACK_EMOJI)
    except Exception:  # the acknowledgement is a courtesy; the prompt is already on its way
        log.debug("could not react to prompt %s", message.message_id, exc_info=True)
    return PromptVerdict.OK
