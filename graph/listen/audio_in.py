"""Audio into the listening path: any PCM WAV (or espeak-ng / flite speech) as 16 kHz mono, cut into 20 ms frames.

Used by `miku transcribe`, the benchmark and the tests; the live path gets 16 kHz from the client.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soxr

from graph.listen.types import LISTEN_SAMPLE_RATE
from graph.voice.audio import read_wav

FRAME_SAMPLES_16K = LISTEN_SAMPLE_RATE // 50  # 20 ms


def to_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if sample_rate == LISTEN_SAMPLE_RATE:
        return samples
    return soxr.resample(samples, sample_rate, LISTEN_SAMPLE_RATE).astype(np.float32)


def load_wav_16k(path: str | Path | bytes) -> np.ndarray:
    chunk = read_wav(path if isinstance(path, bytes) else str(path))
    return to_16k(chunk.samples, chunk.sample_rate)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)


def frames_20ms(samples: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(samples), FRAME_SAMPLES_16K):
        yield samples[start:start + FRAME_SAMPLES_16K]


def espeak_16k(text: str, voice: str = "en-us", words_per_minute: int = 150) -> np.ndarray:
    """`text` spoken by espeak-ng, float32 16 kHz (synthetic speech for tests, the CLI's demo, benchmarks)."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FileNotFoundError("espeak-ng is not installed (`apt-get install espeak-ng`)")
    wav = subprocess.run([binary, "-v", voice, "-s", str(words_per_minute), "--stdout", "--stdin"],
                         input=text.encode(), capture_output=True, check=True, timeout=60).stdout
    return load_wav_16k(wav)


def flite_16k(text: str, voice: str = "slt") -> np.ndarray:
    """`text` spoken by flite (a second synthesiser; its awb, rms and slt voices are built from recordings
    of real speakers), float32 16 kHz."""
    binary = shutil.which("flite")
    if binary is None:
        raise FileNotFoundError("flite is not installed (`apt-get install flite`)")
    with tempfile.TemporaryDirectory(prefix="miku-flite-") as folder:
        out = Path(folder) / "speech.wav"
        subprocess.run([binary, "-voice", voice, "-t", text, "-o", str(out)], check=True, capture_output=True, timeout=60)
        return load_wav_16k(out)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * LISTEN_SAMPLE_RATE), dtype=np.float32)
