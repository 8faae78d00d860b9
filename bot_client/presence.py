"""Presence changes and member joins as `POST /v1/events` bodies, decided on plain values.

The autonomous engine's "engage user" action needs to know when someone started a game (or a stream,
a song...) or came online, and when someone joined (docs/brain.md, `presence` and `member_join`). The
events cog reads the few plain fields it needs from discord.py's objects and hands them to these
functions, so what counts as "an activity started" is decided here and tested without a gateway.
Nothing about messages (and no message content) is involved.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence

PRESENCE = "presence"
MEMBER_JOIN = "member_join"

ACTIVITY_STARTED = "activity_started"
CAME_ONLINE = "came_online"

# discord.ActivityType names that mean "doing something worth mentioning". A custom status is not an
# activity start (it is a line of text), and an unknown type is not guessed at.
ENGAGING_ACTIVITY_TYPES = frozenset({"playing", "streaming", "listening", "watching", "competing"})

_OFFLINE = frozenset({"offline", "invisible", ""})  # an invisible member looks offline to everyone else
_ONLINE = frozenset({"online", "idle", "dnd", "do_not_disturb"})

Activity = tuple[str, str]  # (activity type name, activity name), e.g. ("playing", "Minecraft")


def _new_id() -> str:
    return uuid.uuid4().hex


def _engaging(activities: Iterable[Activity]) -> list[Activity]:
    """The activities worth mentioning, in order, each once, types lower-cased, names stripped."""
    seen: dict[Activity, None] = {}
    for kind, name in activities:
        kind = str(kind or "").strip().lower()
        name = str(name or "").strip()
        if kind in ENGAGING_ACTIVITY_TYPES and name:
            seen.setdefault((kind, name), None)
    return list(seen)


def started_activity(before: Iterable[Activity], after: Iterable[Activity]) -> Activity | None:
    """The first engaging activity in `after` that was not in `before` (same type and name), or None."""
    had = set(_engaging(before))
    return next((a for a in _engaging(after) if a not in had), None)


def came_online(before_status: str | None, after_status: str | None) -> bool:
    """True when a member went from offline (or invisible, or unknown) to online, idle or busy."""
    return str(before_status or "").lower() in _OFFLINE and str(after_status or "").lower() in _ONLINE


def presence_event(
    guild_id: int,
    user_id: int,
    display_name: str | None,
    is_bot: bool,
    before_status: str | None,
    after_status: str | None,
    before_activities: Sequence[Activity],
    after_activities: Sequence[Activity],
    *,
    new_id: Callable[[], str] = _new_id,
    clock: Callable[[], float] = time.time,
) -> dict | None:
    """The `presence` event for one member's presence change, or None when there is nothing to tell.

    An activity that started (a game, stream, song, show or competition not present before) wins over
    coming online; anything else (going idle, an activity ending, a new custom status, a song change
    inside the same Spotify activity) is None. Bots never produce an event. Ids are strings, as in
    every other event; `event_id` is fresh each time, so two real changes are never taken for one.
    """
    if is_bot:
        return None
    activity = started_activity(before_activities, after_activities)
    if activity is not None:
        kind, activity_type, activity_name = ACTIVITY_STARTED, activity[0], activity[1]
    elif came_online(before_status, after_status):
        kind, activity_type, activity_name = CAME_ONLINE, None, None
    else:
        return None
    return {
        "type": PRESENCE,
        "event_id": f"{PRESENCE}:{guild_id}:{user_id}:{new_id()}",
        "guild_id": str(guild_id),
        "user_id": str(user_id),
        "status": str(after_status or ""),
        "activity": activity_name,
        "timestamp": clock(),
        "kind": kind,
        "activity_name": activity_name,
        "activity_type": activity_type,
        "display_name": display_name or None,
    }


def member_join_event(
    guild_id: int,
    user_id: int,
    user_name: str | None,
    is_bot: bool,
    welcome_channel_id: int | None = None,
    *,
    new_id: Callable[[], str] = _new_id,
    clock: Callable[[], float] = time.time,
) -> dict | None:
    """The `member_join` event for a new member, or None for a bot.

    `welcome_channel_id` is where the brain may post its welcome (None: no welcome); the caller passes
    one only when she is allowed to speak there.
    """
    if is_bot:
        return None
    return {
        "type": MEMBER_JOIN,
        "event_id": f"{MEMBER_JOIN}:{guild_id}:{user_id}:{new_id()}",
        "guild_id": str(guild_id),
        "user_id": str(user_id),
        "user_name": user_name or "",
        "channel_id": None if welcome_channel_id is None else str(welcome_channel_id),
        "timestamp": clock(),
    }
