"""The instruction text the LLM gets for each autonomous action, built from signals only.

Prompts are persona-neutral ("you" is whoever the persona layer says): the host prepends the persona
and the channel's recent messages. No message content reaches this module; the context is counts,
times, activities and the mood sentence.
"""
from __future__ import annotations

from graph.autonomous.decision import (
    ActionKind,
    ChannelSignals,
    PendingView,
    ServerSignals,
)
from graph.autonomous.state import SignalSource
from graph.brain.mood_profiles import MoodProfile

_ACTIVITY_VERBS = {
    "playing": "started playing",
    "streaming": "started streaming",
    "listening": "started listening to",
    "watching": "started watching",
    "competing": "started competing in",
}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "a long time"
    minutes = int(seconds // 60)
    if minutes < 2:
        return "a minute"
    if minutes < 90:
        return f"{minutes} minutes"
    hours = seconds / 3600
    return f"{hours:.0f} hours" if hours >= 2 else "about an hour"


def _part_of_day(hour: int) -> str:
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 17:
        return "afternoon"
    if 17 <= hour < 22:
        return "evening"
    return "night"


def _user(signal_view: PendingView) -> str:
    return f"<@{signal_view.signal.user_id}>"


def describe_signal(view: PendingView) -> str:
    """'<@42> just started playing Minecraft' and the like."""
    sig = view.signal
    if sig.source is SignalSource.MEMBER_JOIN:
        return f"{_user(view)} just joined the server"
    if sig.source is SignalSource.CAME_ONLINE:
        return f"{_user(view)} just came online"
    verb = _ACTIVITY_VERBS.get((sig.activity_type or "playing").lower(), "started")
    return f"{_user(view)} just {verb} {sig.activity_name}"


def _footer(s: ServerSignals, mood: MoodProfile) -> str:
    when = f"{s.weekday} {_part_of_day(s.local_hour)}"
    return (
        f"Current mood: {mood.name}. {mood.description} Let the mood colour the message. "
        f"It is {when} for this server. Write one short, natural chat message; do not mention that "
        f"you decided to speak up or describe these instructions."
    )


def build_prompt(
    action: ActionKind,
    s: ServerSignals,
    mood: MoodProfile,
    channel: ChannelSignals,
    signal: PendingView | None = None,
    extra_signals: tuple[PendingView, ...] = (),
) -> str:
    """The LLM instruction for one decided action."""
    if action is ActionKind.JOIN_CONVERSATION:
        body = (
            f"A lively conversation is going on in this channel: {channel.messages_5m} messages from "
            f"{channel.speakers_5m} people in the last 5 minutes, and you have not said anything for "
            f"{channel.messages_since_miku} messages. Join in: react to what the recent messages are "
            f"about as a participant, not a moderator."
        )
    elif action is ActionKind.ENGAGE_USER:
        assert signal is not None
        if signal.signal.source is SignalSource.MEMBER_JOIN:
            ask = "Welcome them warmly and make them feel invited to join the chat."
        elif signal.signal.source is SignalSource.CAME_ONLINE:
            ask = "Greet them casually, as a friend who is glad to see them."
        else:
            ask = "Say something to them about it: show interest, ask a light question or cheer them on."
        body = f"{describe_signal(signal)}. Address them with that mention. {ask}"
    elif action is ActionKind.FOMO:
        body = (
            f"People have been chatting a lot without you: {channel.messages_since_miku} messages since "
            f"you last spoke, {channel.messages_5m} in the last 5 minutes. You feel you are missing out; "
            f"jump in and catch up with what they are talking about now."
        )
    elif action is ActionKind.BREAK_SILENCE:
        quiet = channel.since_human_s if channel.since_human_s is not None else s.uptime_s
        body = (
            f"This channel has been quiet for {_duration(quiet)}. Break the silence with something "
            f"that invites people to talk: a question, a thought or a bit of news about your day."
        )
        if extra_signals:
            body += " Recent context you may use: " + "; ".join(describe_signal(v) for v in extra_signals) + "."
    elif action is ActionKind.SHARE_SOMETHING:
        body = (
            f"Things are calm here ({channel.messages_1h} messages in the last hour) and you have not "
            f"said anything for {_duration(channel.since_miku_s)}. Share something of your own: a song "
            f"you like, a fun fact, something you wondered about, or a question you are curious about."
        )
    else:  # pragma: no cover - ActionKind is closed
        raise ValueError(f"unknown action {action}")
    return f"{body}\n{_footer(s, mood)}"
