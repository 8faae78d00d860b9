"""The bot's own background features that a voice session pauses: feeds (feeds.py), scheduled events
(schedule.py, scheduler.py) and the figurine notifier (figurines.py). Import from the modules."""
