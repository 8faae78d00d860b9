"""Web usage for the brain (DeltaBot #26): `!news`, `!meme` and `!search`, summarised in the persona's voice.

    web = WebCommands(WebConfig.from_mapping(brain_config.web), rng=random.Random())
    text = await web.run("search", "hatsune miku expo", nsfw=False, write=llm_writer)   # reply text with sources
    await web.close()

Sources are configured under `brain.web` (docs/user-guide.md, "Web commands"): RSS/Atom feeds for news,
subreddits for memes (Reddit's public JSON listings), a SearXNG instance (its JSON API) or DuckDuckGo
through the `ddgs` package for search. A command without a configured source answers how to configure one.
"""
from graph.web.commands import WEB_COMMANDS, WebCommands
from graph.web.sources import (
    MemePost,
    RedditClient,
    SearchResult,
    SearxngClient,
    WebConfig,
    WebError,
)

__all__ = ["WEB_COMMANDS", "WebCommands", "WebConfig", "WebError", "MemePost", "RedditClient", "SearchResult",
           "SearxngClient"]
