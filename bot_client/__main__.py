"""`python -m bot_client [--config configs/bot.yaml]`: run the bot with the token from `DISCORD_TOKEN`."""
from __future__ import annotations

import argparse
import logging
import os
import sys

import discord

from .avatars import load_avatars
from .bot import MikuBot
from .config import ConfigError, load_config
from .features import load_feature_configs
from .graph_api import GraphClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot_client", description="Run Miku's Discord client.")
    parser.add_argument("--config", default=os.environ.get("MIKU_BOT_CONFIG"),
                        help="bot config file (default: configs/bot.yaml when it exists, else built-in defaults)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    token = os.environ.get("DISCORD_TOKEN", "").strip()
    if not token:
        print("error: set DISCORD_TOKEN to the bot's token (Discord Developer Portal -> Bot -> Token)", file=sys.stderr)
        return 2
    try:
        path = args.config or ("configs/bot.yaml" if os.path.exists("configs/bot.yaml") else None)
        config = load_config(path)  # a path that was named but is missing is an error, not the defaults
        graph_token = config.graph_token()
        feature_configs = load_feature_configs(config)  # configs/schedule.yaml, configs/figurines.yaml
        avatars = load_avatars(config.avatars) if config.avatars else None  # every picture checked now
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not discord.opus.is_loaded():
        try:
            discord.opus.load_opus("libopus.so.0")
        except OSError:
            print("error: libopus is missing: apt-get install libopus0", file=sys.stderr)
            return 2
    graph = GraphClient(config.graph.url, graph_token, request_timeout_s=config.graph.request_timeout_s,
                        connect_timeout_s=config.graph.connect_timeout_s, direct_voice=config.graph.direct_voice)
    try:
        bot = MikuBot(config, graph, feature_configs, avatars=avatars)
    except ConfigError as exc:  # e.g. the features' state directory cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        bot.run(token, log_handler=None)
    except discord.LoginFailure:
        print("error: Discord refused DISCORD_TOKEN", file=sys.stderr)
        return 1
    except discord.PrivilegedIntentsRequired:
        print("error: enable the Message Content intent for the bot in the Developer Portal", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
