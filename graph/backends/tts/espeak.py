"""`espeak` TTS: espeak-ng as a subprocess, the embedded CPU default that needs no model files.

espeak-ng writes a WAV stream to stdout as it synthesises, so audio is yielded in ~100 ms pieces as
soon as it appears instead of after the whole chunk. Text goes in on stdin (never on the command line),
and a cancelled request kills the process. `TTSOptions.speed` (a mood's speaking rate) scales the
configured `words_per_minute` (`-s`), so espeak-ng itself speaks faster or slower at the same pitch.
"""
from __future__ import annotations

import asyncio
import io
import shutil
import wave
from collections.abc import AsyncIterator

import numpy as np

from graph.backends.base import TTSBackend
from graph.voice.types import AudioChunk, StageError, TTSOptions

_WAV_HEADER_BYTES = 44  # espeak-ng writes the canonical 44-byte PCM header


class EspeakTTS(TTSBackend):
    name = "espeak"

    def __init__(
        self,
        voice: str = "en-us+f3",
        words_per_minute: int = 175,
        pitch: int = 70,
        binary: str = "espeak-ng",
        piece_ms: int = 100,
    ):
        path = shutil.which(binary)
        if path is None:
            raise FileNotFoundError(
                f"espeak TTS needs the '{binary}' program: install it with `apt-get install espeak-ng` "
                "(the Makefile does this when run as root)"
            )
        self.binary = path
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.pitch = pitch
        self.piece_ms = piece_ms
        self.sample_rate = 22_050

    def describe(self) -> dict:
        return {"backend": self.name, "voice": self.voice, "binary": self.binary, "sample_rate": self.sample_rate}

    async def warmup(self) -> None:
        async for _ in self.synthesize("Ready.", TTSOptions()):
            pass

    async def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[AudioChunk]:
        # the speaking rate (a mood's) scales the configured pace; espeak-ng takes 80..450 words per minute
        speed = max(80, min(450, round(self.words_per_minute * options.speed)))
        process = await asyncio.create_subprocess_exec(
            self.binary,
            "--stdin",
            "--stdout",
            "-b",
            "1",  # input is UTF-8
            "-v",
            options.voice or self.voice,
            "-s",
            str(speed),
            "-p",
            str(self.pitch),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            process.stdin.write(text.encode("utf-8"))
            await process.stdin.drain()
            process.stdin.close()
            header = await process.stdout.readexactly(_WAV_HEADER_BYTES)
            with wave.open(io.BytesIO(header)) as info:
                rate, width, channels = info.getframerate(), info.getsampwidth(), info.getnchannels()
            if width != 2 or channels != 1:
                raise StageError("tts", self.name, f"unexpected espeak-ng output: {width * 8}-bit, {channels} ch")
            self.sample_rate = rate
            piece_bytes = rate * self.piece_ms // 1000 * 2
            pending = b""
            while True:
                data = await process.stdout.read(piece_bytes)
                if not data:
                    break
                pending += data
                if len(pending) >= piece_bytes:
                    usable = len(pending) - len(pending) % 2
                    yield _to_chunk(pending[:usable], rate)
                    pending = pending[usable:]
            if len(pending) >= 2:
                yield _to_chunk(pending[: len(pending) - len(pending) % 2], rate)
            code = await process.wait()
            if code != 0:
                error = (await process.stderr.read()).decode(errors="replace").strip()
                raise StageError("tts", self.name, f"espeak-ng exited with {code}: {error[:200]}")
        except asyncio.IncompleteReadError:
            error = (await process.stderr.read()).decode(errors="replace").strip()
            raise StageError("tts", self.name, f"espeak-ng produced no audio: {error[:200] or 'no output'}") from None
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def _to_chunk(raw: bytes, rate: int) -> AudioChunk:
    return AudioChunk(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0, rate)
