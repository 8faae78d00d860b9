"""The real recorded human speech in tests/data/recorded (see its README), with what is said in each clip.

Shared by tests/test_voice_commands_speech.py and benchmarks/voice_commands.py.
"""
from __future__ import annotations

import csv
from pathlib import Path

RECORDED = Path(__file__).resolve().parent.parent / "data" / "recorded"


def recorded_clips() -> list[tuple[Path, str]]:
    """(the WAV file, its transcript) for every clip, in the order of transcripts.tsv."""
    with open(RECORDED / "transcripts.tsv", encoding="utf-8") as handle:
        return [(RECORDED / row["file"], row["transcript"]) for row in csv.DictReader(handle, delimiter="\t")]
