"""The bot's own background features that a voice session pauses: the feed reader (feeds.py), the
controller question they ask (gate.py), scheduled events (schedule.py, scheduler.py), the figurine
notifier (figurines.py) and the persona-voiced messages of prompt jobs (compose.py). Import from the modules."""
