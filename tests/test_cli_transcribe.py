"""`miku transcribe FILE.wav` on espeak-ng speech: turns, transcripts and the voice commands, as a user runs it."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from graph.listen.audio_in import espeak_16k, silence, to_pcm16
from graph.voice.audio import write_wav

ROOT = Path(__file__).resolve().parents[1]


def _recording(path: Path, sentences: list[str]) -> Path:
    parts = [silence(0.5)]
    for sentence in sentences:
        parts += [espeak_16k(sentence), silence(1.0)]
    write_wav(path, to_pcm16(np.concatenate(parts)).tobytes(), sample_rate=16_000, channels=1)
    return path


def _miku(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployments.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_transcribe_prints_each_turn_and_finds_the_voice_commands(tmp_path):
    wav = _recording(tmp_path / "talk.wav", ["Miku, leave.", "Can you sing a song for me?", "Miku, stop.", "Miku, be quiet."])
    result = _miku("transcribe", str(wav), "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert [command["name"] for command in summary["commands"]] == ["leave", "stop", "quiet"]
    assert "song" in summary["text"].split()
    turn_lines = [line for line in lines[:-1] if line.startswith("turn ")]
    assert len(turn_lines) == 4 and "[command: leave]" in turn_lines[0] and "[command: quiet]" in turn_lines[3]


def test_transcribe_refuses_what_it_cannot_read(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    result = _miku("transcribe", str(bad))
    assert result.returncode == 2 and "cannot read" in result.stderr
    result = _miku("transcribe", str(_recording(tmp_path / "ok.wav", ["Hello."])), "--stt", "no-such-backend")
    assert result.returncode == 2 and "unknown backend" in result.stderr
