"""A `ChatOps` (bot_client/actions.py) that records what the bot would do in Discord, for tests."""
from __future__ import annotations

import itertools


class RecordingOps:
    """ChatOps that records what the bot would do in Discord."""

    def __init__(self):
        self.log: list[tuple] = []
        self._next_id = itertools.count(50_000)

    async def reply(self, channel_id, message_id, text):
        self.log.append(("reply", message_id, text))

    async def send(self, channel_id, text):
        self.log.append(("send", text))

    async def react(self, channel_id, message_id, emoji):
        self.log.append(("react", message_id, emoji))

    async def typing(self, channel_id):
        self.log.append(("typing", channel_id))

    async def reply_progress(self, channel_id, message_id, text):
        progress_id = next(self._next_id)
        self.log.append(("progress", progress_id, text))
        return progress_id

    async def edit(self, channel_id, message_id, text):
        self.log.append(("edit", message_id, text))

    async def delete(self, channel_id, message_id):
        self.log.append(("delete", message_id))

    async def reply_image(self, channel_id, message_id, text, filename, data):
        self.log.append(("image", message_id, text, data))

    def kinds(self) -> list[str]:
        return [entry[0] for entry in self.log]

    def texts(self) -> list[str]:
        return [entry[2] for entry in self.log if entry[0] in ("reply", "progress", "edit")]
