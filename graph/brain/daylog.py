"""A realistic, seeded day of Discord traffic for replaying through the brain (tests and benchmarks).

Several channels with different paces (a busy general chat, a music channel, a meme channel with
images, a quiet channel, a second server, two DMs), a daily rhythm with quiet night hours, bursts,
other bots (one of them allow-listed), Miku's own messages echoed back, mentions and replies to her,
draw requests, commands, and duplicate events after simulated reconnects. The same seed always gives
the same day, so replays are reproducible.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

DAY_START = 1_700_006_400.0  # a midnight (UTC)
MIKU_ID = "miku-bot"
ALLOWED_BOT_ID = "bot-friend"
BOT_IDS = ("bot-mee6", "bot-music", ALLOWED_BOT_ID)

# Relative activity per hour of day: quiet from 02:00 to 08:00, peak in the evening.
HOURLY_ACTIVITY = (
    0.5, 0.3, 0.08, 0.04, 0.03, 0.03, 0.05, 0.1, 0.3, 0.5, 0.6, 0.7,
    0.8, 0.8, 0.7, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0, 0.9, 0.8, 0.6,
)


@dataclass(frozen=True)
class ChannelSpec:
    channel_id: str
    guild_id: str | None
    name: str
    messages_per_peak_hour: float
    bursts: int = 0
    mention_rate: float = 0.03
    image_rate: float = 0.0


CHANNELS = (
    ChannelSpec("g1-general", "guild-1", "general", 120, bursts=4, mention_rate=0.03),
    ChannelSpec("g1-music", "guild-1", "music", 40, bursts=1, mention_rate=0.04),
    ChannelSpec("g1-memes", "guild-1", "memes", 50, bursts=3, mention_rate=0.02, image_rate=0.3),
    ChannelSpec("g1-quiet", "guild-1", "book-club", 4, mention_rate=0.04),
    ChannelSpec("g2-lounge", "guild-2", "lounge", 30, bursts=1, mention_rate=0.04),
    ChannelSpec("dm-ann", None, "dm", 3, mention_rate=0.0),
    ChannelSpec("dm-bo", None, "dm", 1.5, mention_rate=0.0),
)

_TOPICS = {
    "music": ["did anyone hear the new song", "that melody is stuck in my head", "karaoke tonight?", "the concert was amazing", "i'm learning piano", "which vocaloid producer do you like", "guitar practice is going slow"],
    "games": ["anyone up for a match", "this boss is impossible", "patch notes are out", "my team keeps losing", "speedrun attempt number 40"],
    "food": ["what's for dinner", "made ramen today", "leek soup is underrated", "coffee or tea", "pizza again lol"],
    "life": ["work was long today", "good morning everyone", "can't sleep", "it's raining here", "weekend plans?", "just got home"],
    "memes": ["lmao", "this meme is gold", "bruh", "😂😂", "who made this", "i can't stop laughing"],
}
_QUESTIONS = ["what do you think?", "is that right?", "anyone know why?", "how was your day?", "should I try it?"]
_MENTION_TEXTS = [
    "hey Miku, how are you?", "Miku what's your favourite song?", "Miku say hi to my friend", "miku do you like leeks?",
    "Miku, sing something for us!", "Miku what should I eat tonight?", "good night Miku",
]
_DRAW_TEXTS = ["Miku can you draw a cat playing guitar?", "Miku draw me a leek in space", "please draw us a concert stage, Miku"]


@dataclass
class DayLog:
    """The generated events (in delivery order, duplicates included) and facts about them."""

    deliveries: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (delivered_at, event)
    voice_session: tuple[float, float] | None = None
    channels: tuple[ChannelSpec, ...] = CHANNELS

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for _, event in self.deliveries]

    @property
    def unique_messages(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for ev in self.events:
            if ev["type"] == "message":
                out.setdefault(ev["message_id"], ev)
        return out


def _user_pool(rng: random.Random, count: int) -> list[tuple[str, str]]:
    names = ["Ann", "Bo", "Chen", "Dana", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Mo", "Nia", "Oto", "Pia", "Quin", "Rui", "Sol", "Tao"]
    return [(f"user-{i}", f"{rng.choice(names)}{i}") for i in range(count)]


def generate_day(seed: int = 7, *, scale: float = 1.0, voice_session: tuple[float, float] | None = (19.0, 20.0)) -> DayLog:
    """Generate one day. `scale` multiplies every channel's rate; `voice_session` is (start_h, end_h) or None."""
    rng = random.Random(seed)
    users = _user_pool(rng, 40)
    messages: list[dict[str, Any]] = []
    counter = 0

    def message(spec: ChannelSpec, ts: float, author: tuple[str, str], content: str, **extra: Any) -> dict[str, Any]:
        nonlocal counter
        counter += 1
        return {
            "type": "message",
            "event_id": f"ev-{counter}",
            "guild_id": spec.guild_id,
            "channel_id": spec.channel_id,
            "channel_name": spec.name,
            "guild_name": spec.guild_id or "",
            "message_id": f"msg-{counter}",
            "author_id": author[0],
            "author_name": author[1],
            "author_is_bot": False,
            "content": content,
            "mentions_miku": False,
            "reply_to_miku": False,
            "reply_to_message_id": None,
            "attachments": [],
            "timestamp": round(ts, 3),
            **extra,
        }

    def human_text(spec: ChannelSpec) -> str:
        topic = "memes" if spec.name == "memes" and rng.random() < 0.5 else rng.choice(list(_TOPICS))
        text = rng.choice(_TOPICS[topic])
        if rng.random() < 0.2:
            text += " " + rng.choice(_QUESTIONS)
        return text

    for spec in CHANNELS:
        members = users[:3] if spec.guild_id is None else rng.sample(users, 15 if spec.messages_per_peak_hour > 10 else 5)
        if spec.guild_id is None:
            members = [users[0] if spec.channel_id == "dm-ann" else users[1]]
        times: list[float] = []
        for hour, activity in enumerate(HOURLY_ACTIVITY):
            expected = spec.messages_per_peak_hour * activity * scale
            n = int(expected) + (1 if rng.random() < expected - int(expected) else 0)
            times += [DAY_START + hour * 3600 + rng.uniform(0, 3600) for _ in range(n)]
        for _ in range(spec.bursts):
            start = DAY_START + rng.uniform(9, 23) * 3600
            times += [start + rng.uniform(0, 150) for _ in range(int(rng.randint(30, 60) * scale))]
        for ts in sorted(times):
            author = rng.choice(members)
            roll = rng.random()
            if spec.guild_id is None:
                messages.append(message(spec, ts, author, human_text(spec)))
            elif roll < spec.mention_rate * 0.25:
                messages.append(message(spec, ts, author, rng.choice(_DRAW_TEXTS), mentions_miku=True))
            elif roll < spec.mention_rate:
                messages.append(message(spec, ts, author, rng.choice(_MENTION_TEXTS), mentions_miku=True))
            elif roll < spec.mention_rate + 0.01:
                messages.append(message(spec, ts, author, "haha yes " + human_text(spec), reply_to_miku=True, reply_to_message_id="msg-miku-earlier"))
            elif roll < spec.mention_rate + 0.01 + spec.image_rate:
                messages.append(message(spec, ts, author, rng.choice(["look at this", "lol", "", "new wallpaper"]), attachments=[{"content_type": "image/png", "url": f"https://cdn.example/{counter}.png"}]))
            else:
                messages.append(message(spec, ts, author, human_text(spec)))

    # Other bots: a leveling bot, a music bot that sometimes mentions Miku, and an allow-listed friend bot.
    for hour in range(24):
        for bot_id, every in (("bot-mee6", 900), ("bot-music", 1200), (ALLOWED_BOT_ID, 3600)):
            spec = CHANNELS[0] if bot_id != "bot-music" else CHANNELS[1]
            for k in range(int(3600 / every)):
                ts = DAY_START + hour * 3600 + k * every + rng.uniform(0, 60)
                mentions = bot_id != "bot-mee6" and rng.random() < 0.5
                content = "Hey Miku, " + rng.choice(["play a song!", "what's up?", "ping"]) if mentions else f"{bot_id} says: level up!"
                messages.append(message(spec, ts, (bot_id, bot_id), content, author_is_bot=True, mentions_miku=mentions))

    # Miku's own posts come back to the brain too (the client forwards them with author_is_self).
    for _ in range(25):
        spec = rng.choice(CHANNELS[:5])
        ts = DAY_START + rng.uniform(8, 24) * 3600
        messages.append(message(spec, ts, (MIKU_ID, "Miku"), "Miku here! " + rng.choice(_MENTION_TEXTS), author_is_self=True, author_is_bot=True, mentions_miku=rng.random() < 0.3))

    # A mention storm: one chat pings her a dozen times in a minute (rate-limit territory).
    storm_start = DAY_START + 16.5 * 3600
    for i in range(14):
        messages.append(message(CHANNELS[0], storm_start + i * 4, users[i % 5], f"Miku!!! #{i}", mentions_miku=True))

    # Commands.
    messages.append(message(CHANNELS[0], DAY_START + 12 * 3600 + 5, users[2], "!mood bubbly"))
    messages.append(message(CHANNELS[4], DAY_START + 13 * 3600 + 5, users[3], "!modfile info"))

    messages.sort(key=lambda m: m["timestamp"])

    # Duplicates: the client reconnects and re-sends recent events (new event ids, same message ids),
    # and a few events are delivered twice as they are. Delivery time is what the replay clock follows.
    deliveries: list[tuple[float, int, dict[str, Any]]] = []
    reconnect_at = {int(len(messages) * f) for f in (0.3, 0.55, 0.8)}
    for index, msg in enumerate(messages):
        deliveries.append((msg["timestamp"], len(deliveries), msg))
        if rng.random() < 0.01:
            deliveries.append((msg["timestamp"] + 0.5, len(deliveries), dict(msg)))
        if index in reconnect_at:
            for offset, old in enumerate(messages[max(0, index - 20): index + 1]):
                deliveries.append((msg["timestamp"] + 5 + offset * 0.01, len(deliveries), {**old, "event_id": old["event_id"] + "-resent"}))

    # Presence and member-join events sprinkled through the day.
    for i in range(30):
        ts = DAY_START + rng.uniform(0, 24) * 3600
        event = {"type": "presence", "event_id": f"presence-{i}", "guild_id": "guild-1", "user_id": rng.choice(users)[0], "status": rng.choice(["online", "idle", "offline"]), "timestamp": ts}
        deliveries.append((ts, len(deliveries), event))
    for i in range(3):
        ts = DAY_START + rng.uniform(10, 22) * 3600
        event = {"type": "member_join", "event_id": f"join-{i}", "guild_id": "guild-1", "user_id": f"new-{i}", "user_name": f"Newbie{i}", "channel_id": "g1-general", "timestamp": ts}
        deliveries.append((ts, len(deliveries), event))

    deliveries.sort(key=lambda d: (d[0], d[1]))
    session = None
    if voice_session is not None:
        session = (DAY_START + voice_session[0] * 3600, DAY_START + voice_session[1] * 3600)
    return DayLog(deliveries=[(t, e) for t, _, e in deliveries], voice_session=session)


# --------------------------------------------------------------------------------------------------
# Replay helpers: deterministic stand-ins for the injected LLM and blackout check, and the replay loop.


class DeterministicLLM:
    """An injected `complete` for replays: answers depend only on the prompt, never on a model.

    Judges say yes for about a third of prompts (by hash), the planner replies when the newest chat
    line asks a question, replies are a fixed line. `delay_s` simulates model latency.
    """

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.calls: dict[str, int] = {"judge": 0, "plan": 0, "think": 0, "reply": 0}

    async def __call__(self, prompt: str, system: str | None, options=None) -> str:
        import asyncio
        import zlib

        from graph.brain.judge import JUDGE_SYSTEM

        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if system == JUDGE_SYSTEM:
            self.calls["judge"] += 1
            return "yes" if zlib.crc32(prompt.encode()) % 3 == 0 else "no"
        if "Answer with JSON only" in prompt:
            self.calls["plan"] += 1
            chat = prompt.split("\n\nYour thought:")[0].strip().splitlines()
            wants = bool(chat) and ("?" in chat[-1])
            return '{"action": "%s", "parallel": ["emoji"], "reason": "replay"}' % ("reply" if wants else "no_reply")
        if "think privately" in prompt:
            self.calls["think"] += 1
            return "They are chatting about their day."
        self.calls["reply"] += 1
        return "Ehehe, that sounds fun! 🎵"


class VoiceSessionBlackouts:
    """An injected `check_feature` for replays: the controller's blackouts while a session is on."""

    MESSAGES = {
        "image_generation": "🎤 I can't draw right now, I'm talking in voice chat!",
        "vision": "🎤 I can't look at images or videos right now, I'm talking in voice chat!",
    }

    def __init__(self, clock, session: tuple[float, float] | None):
        self.clock = clock
        self.session = session
        self.calls = 0

    def active(self) -> bool:
        return self.session is not None and self.session[0] <= self.clock() < self.session[1]

    async def __call__(self, feature: str):
        from graph.brain.events import FeatureCheck

        self.calls += 1
        if not self.active():
            return FeatureCheck(True)
        if feature in self.MESSAGES:
            return FeatureCheck(False, self.MESSAGES[feature], False)
        if feature in ("text_channel_messages", "autonomous_engine", "bipolar_mode", "profile_picture"):
            return FeatureCheck(False, None, True)
        return FeatureCheck(True)


class ReplayClock:
    """A settable fake clock for replays."""

    def __init__(self, now: float = DAY_START):
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class ReplayRecord:
    delivered_at: float
    event: dict[str, Any]
    actions: list[dict[str, Any]]
    within_limits: bool


async def replay(brain: Any, day: DayLog, clock: ReplayClock, *, tick_every_s: float = 60.0, resend_queued: bool = True) -> list[ReplayRecord]:
    """Feed every delivery through `brain.handle_event` on the fake clock, ticking periodically.

    Queued messages (voice session) are re-sent once the session is over, as the client does.
    """
    records: list[ReplayRecord] = []
    queued: list[dict[str, Any]] = []
    last_tick = clock.now
    session_end = day.voice_session[1] if day.voice_session else None
    flushed = False

    async def deliver(at: float, event: dict[str, Any]) -> None:
        nonlocal last_tick
        clock.now = max(clock.now, at)
        if clock.now - last_tick >= tick_every_s:
            await brain.tick()
            last_tick = clock.now
        result = await brain.handle_event(event)
        records.append(ReplayRecord(clock.now, event, result["actions"], brain.heartflow.within_limits()))
        queued.extend(event for a in result["actions"] if a["type"] == "queue")

    for at, event in day.deliveries:
        if resend_queued and not flushed and session_end is not None and at >= session_end:
            flushed = True
            for index, held in enumerate(list(queued)):
                await deliver(session_end + index * 0.5, held)
            queued.clear()
        await deliver(at, event)
    return records
