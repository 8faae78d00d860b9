"""discord.py cogs: `voice` (the `!miku` commands) and `events` (messages, voice states, channel deletes)."""
