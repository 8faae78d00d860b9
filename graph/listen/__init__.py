"""Speech in: per-speaker VAD, turns for several speakers, barge-in and voice commands (no Ray here)."""
