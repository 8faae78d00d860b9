"""How reliably the embedded recogniser (pocketsphinx) finds the voice commands, side by side in one run.

  (a) grammar     what the backend does: the command grammar (her name, the commands, decoys) over each
                  phrase, beside the general model
  (b) transcript  the general model's transcript alone through the text matcher (graph.listen.commands):
                  what a bot without a command grammar gets

Speech: the command phrasings ("Miku, stop.", "Hey Miku, leave.", "Miku, please be quiet." ...) and
ordinary sentences that come close ("We should stop here.", "Nico, leave.", "Miku, sing something.")
spoken by espeak-ng (several voices and speeds) and flite (its four voices, two of them recorded-voice
clustergen models), in three conditions: clean; white noise at 15 dB SNR; and the Discord path (48 kHz
stereo, libopus at 64 kb/s and back, 16 kHz mono again, as the client hears it). Plus real recorded
human speech (tests/data/recorded) that must give no command. No recording of a person saying "Miku"
exists on this machine, so commands are measured on synthetic speech only.

Reports per condition and engine: commands found (right command) / commands said, false commands /
other phrases, the general model's word error rate (recorded speech, synthetic sentences) and the decode
cost per phrase (p50/p95). JSON last line.

    python benchmarks/voice_commands.py [--conditions clean,noise,discord] [--voices 6]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import jiwer
import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stats import summary_ms  # noqa: E402
from bot_client.voice_receive import _opus_decoder  # noqa: E402
from graph.backends.base import create_backend  # noqa: E402
from graph.listen.audio_in import espeak_16k, flite_16k, load_wav_16k, silence  # noqa: E402
from graph.listen.commands import find_command  # noqa: E402
from graph.listen.types import STTOptions, VoiceCommand  # noqa: E402
from tests.support.recorded_speech import recorded_clips  # noqa: E402
from tests.support.voice_sender import FRAME_SAMPLES, resample_to_16k_mono  # noqa: E402

COMMANDS = {
    "Miku, stop.": VoiceCommand.STOP, "Miku, leave.": VoiceCommand.LEAVE, "Miku, be quiet.": VoiceCommand.QUIET,
    "Hey Miku, stop.": VoiceCommand.STOP, "Miku, please leave.": VoiceCommand.LEAVE, "Miku stop": VoiceCommand.STOP,
    "Miku, please be quiet.": VoiceCommand.QUIET, "Hey Miku, leave.": VoiceCommand.LEAVE,
}
OTHERS = [
    "Hello, how are you today?", "We should stop here.", "Nico, leave.", "Miku, sing something.",
    "I can't be quiet about this.", "Miku is really cool.", "Please leave me alone.", "Stop it.",
    "My cousin left early.", "Mike, stop that.", "Do you like music?", "Tell me a story, Miku.",
    "The bus stop is near.", "You should leave now.", "Be quiet, everyone.", "Miku, what time is it?",
]
ESPEAK_VOICES = [("en-us", 150), ("en-us+f3", 150), ("en-us+m3", 170), ("en", 130), ("en-us+f1", 150),
                 ("en-us+m7", 150), ("en-gb-x-rp", 150), ("en-us+f4", 140), ("en-us+f5", 150), ("en-us+m1", 150),
                 ("en-us", 190), ("en-us+f3", 120), ("en-us+f2", 160), ("en-us+m5", 150)]
FLITE_VOICES = ["kal16", "awb", "rms", "slt"]


def with_noise(samples: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    power = float(np.mean(samples ** 2)) or 1e-10
    noise = np.random.default_rng(seed).normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), len(samples))
    return (samples + noise).astype(np.float32)


def through_discord(samples: np.ndarray) -> np.ndarray:
    """16 kHz mono -> 48 kHz stereo -> libopus at 64 kb/s (a voice channel's default) -> the client's own
    Opus decoder -> 16 kHz mono, as the tests' receive path down-mixes and resamples it."""
    import discord.opus

    decoder = _opus_decoder()  # also loads libopus for the encoder
    encoder = discord.opus.Encoder()
    encoder.set_bitrate(64)
    wide = soxr.resample(samples, 16000, 48000).astype(np.float32)
    wide = np.pad(wide, (0, (-len(wide)) % FRAME_SAMPLES))
    pcm = np.repeat((np.clip(wide, -1, 1) * 32767).astype(np.int16), 2)  # interleaved stereo
    step = FRAME_SAMPLES * 2
    decoded = [np.frombuffer(decoder.decode(encoder.encode(pcm[i:i + step].tobytes(), FRAME_SAMPLES)), dtype=np.int16)
               for i in range(0, len(pcm), step)]
    return resample_to_16k_mono(np.concatenate(decoded).reshape(-1, 2)).astype(np.float32)


def corpus(voices: int) -> list[tuple[str, str, VoiceCommand | None, np.ndarray]]:
    items = []
    for text in list(COMMANDS) + OTHERS:
        for voice, wpm in ESPEAK_VOICES[:voices]:
            items.append((f"espeak-ng {voice} {wpm}wpm", text, COMMANDS.get(text), espeak_16k(text, voice, wpm)))
        for voice in FLITE_VOICES:
            items.append((f"flite {voice}", text, COMMANDS.get(text), flite_16k(text, voice)))
    for path, transcript in recorded_clips():
        items.append(("recorded", transcript, None, load_wav_16k(path)))
    return items


def condition(samples: np.ndarray, name: str, seed: int) -> np.ndarray:
    padded = np.concatenate([silence(0.2), samples, silence(0.3)])
    if name == "noise":
        return with_noise(padded, 15.0, seed)
    if name == "discord":
        return through_discord(padded)
    return padded


def _words(text: str) -> str:
    return " ".join("".join(c for c in word if c.isalnum() or c == "'") for word in text.lower().split()).strip()


def rate(found: int, total: int) -> dict:
    return {"found": found, "of": total, "rate": round(found / total, 4) if total else None}


def tally(rows: list[tuple], column: int) -> dict:
    """Commands found (the right one) among the phrases that hold one, and false commands among the rest,
    by the method whose answer is in `column`."""
    said = [row for row in rows if row[2] is not None]
    other = [row for row in rows if row[2] is None]
    return {"commands": rate(sum(1 for row in said if row[column] is row[2]), len(said)),
            "false_commands": rate(sum(1 for row in other if row[column] is not None), len(other))}


async def run(conditions: list[str], voices: int) -> dict:
    stt = create_backend("stt", {"backend": "pocketsphinx"})
    items = corpus(voices)
    report: dict = {"phrases": len(items), "conditions": {}}
    for name in conditions:
        rows, costs = [], []
        for index, (engine, text, want, samples) in enumerate(items):
            audio = condition(samples, name, index)
            started = time.perf_counter()
            transcript = await stt.transcribe(audio, STTOptions())
            costs.append((time.perf_counter() - started) * 1000)
            rows.append((engine.split()[0], text, want, transcript.command, find_command(transcript.text), transcript.text))
        result = {"decode_cost": summary_ms(costs, 1), "word_error_rate": {}}
        # how good the free-form transcript is: word error rate on real recorded speech and on the synthetic
        # sentences (commands left out: the general model has no "miku")
        for engine in ("recorded", "espeak-ng", "flite"):
            pairs = [(_words(row[1]), _words(row[5]) or "-") for row in rows if row[0] == engine and row[2] is None]
            result["word_error_rate"][engine] = round(jiwer.wer([p[0] for p in pairs], [p[1] for p in pairs]), 3)
        for method, column in (("grammar", 3), ("transcript", 4)):
            result[method] = tally(rows, column)
            result[method]["by_engine"] = {engine: tally([row for row in rows if row[0] == engine], column)
                                           for engine in ("espeak-ng", "flite", "recorded")}
            print(f"{name:8s} {method:10s} commands {result[method]['commands']['found']}/{result[method]['commands']['of']}"
                  f"  false {result[method]['false_commands']['found']}/{result[method]['false_commands']['of']}", flush=True)
            if method == "grammar":
                print(f"{name:8s} word error rate {result['word_error_rate']}", flush=True)
                result[method]["missed"] = [f"{row[0]}: {row[1]}" for row in rows if row[2] is not None and row[column] is not row[2]]
                result[method]["false"] = [f"{row[0]}: {row[1]}" for row in rows if row[2] is None and row[column] is not None]
        report["conditions"][name] = result
    await stt.aclose()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conditions", default="clean,noise,discord")
    parser.add_argument("--voices", type=int, default=len(ESPEAK_VOICES), help="espeak-ng voices (1-14)")
    args = parser.parse_args()
    conditions = [name for name in args.conditions.split(",") if name]
    unknown = set(conditions) - {"clean", "noise", "discord"}
    if unknown:
        parser.error(f"unknown condition(s): {', '.join(sorted(unknown))}")
    report = asyncio.run(run(conditions, max(1, min(args.voices, len(ESPEAK_VOICES)))))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
