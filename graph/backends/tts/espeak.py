"""`espeak` TTS: espeak-ng as a subprocess, the embedded CPU default that needs no model files.

espeak-ng writes a WAV stream to stdout as it synthesises, so audio is yielded in pieces as soon as it
appears instead of after the whole chunk. Pieces are cut where the audio is quiet (`QuietCutter`: a pause
between words, a stop consonant's closure), never where a pipe read happened to end, so the same text
gives the same pieces every run and a voice converter seldom sees an edge inside a vowel (WORLD's f0
analysis at such edges moved the pitch by a few percent, differently each run). Every piece but a
chunk's last is at least `piece_ms` (200 ms, the pipeline's `vc_group_s`), so the pipeline never
regroups them by timing either. Text goes in on stdin (never on the command line), and a cancelled
request kills the process. `TTSOptions.speed` (a mood's speaking rate) scales the
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
        piece_ms: int = 200,
        first_piece_max_ms: int = 250,
        piece_max_ms: int = 1000,
        quiet_db: float = -40.0,
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
        if not 20 <= piece_ms <= first_piece_max_ms <= piece_max_ms:
            raise ValueError(
                f"espeak TTS: need 20 <= piece_ms <= first_piece_max_ms <= piece_max_ms, got "
                f"{piece_ms}, {first_piece_max_ms}, {piece_max_ms}"
            )
        self.piece_ms = piece_ms
        self.first_piece_max_ms = first_piece_max_ms
        self.piece_max_ms = piece_max_ms
        self.quiet_db = quiet_db
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
            cutter = QuietCutter(rate, self.piece_ms, self.first_piece_max_ms, self.piece_max_ms, self.quiet_db)
            while data := await process.stdout.read(65_536):
                for piece in cutter.feed(data):
                    yield AudioChunk(piece, rate)
            if (last := cutter.finish()) is not None:
                yield AudioChunk(last, rate)
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


class QuietCutter:
    """Cuts a stream of 16-bit PCM into pieces at quiet points, whatever sizes the bytes arrive in.

    The audio is looked at in 10 ms windows counted from the start of the current piece. From `min_ms`
    on, the first run of windows whose RMS is below `quiet_db` (dBFS) ends the piece, in the middle of
    the run's quietest window. If none comes within `max_ms` (`first_max_ms` for the first piece, short
    so first audio is early), the piece ends in the middle of the quietest window of that span. Each cut
    depends only on the samples, so the same audio gives the same pieces however it is read; `finish`
    returns what is left at the end.
    """

    def __init__(self, rate: int, min_ms: int, first_max_ms: int, max_ms: int, quiet_db: float):
        self.window = rate // 100
        self.min_windows = max(1, min_ms // 10)
        self.first_max_windows = max(self.min_windows + 1, first_max_ms // 10)
        self.max_windows = max(self.min_windows + 1, max_ms // 10)
        self.quiet_rms = 10.0 ** (quiet_db / 20.0)
        self.first = True
        self._odd = b""  # a read can end inside a sample
        self._pending = np.zeros(0, np.float32)

    def feed(self, data: bytes) -> list[np.ndarray]:
        data = self._odd + data
        whole = len(data) - len(data) % 2
        self._odd = data[whole:]
        samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0
        self._pending = np.concatenate([self._pending, samples])
        pieces = []
        while (cut := self._cut()) is not None:
            pieces.append(self._pending[:cut])
            self._pending = self._pending[cut:]
            self.first = False
        return pieces

    def finish(self) -> np.ndarray | None:
        last, self._pending = self._pending, np.zeros(0, np.float32)
        return last if len(last) else None

    def _cut(self) -> int | None:
        limit = self.first_max_windows if self.first else self.max_windows
        complete = min(len(self._pending) // self.window, limit)
        if complete <= self.min_windows:
            return None
        span = self._pending[self.min_windows * self.window: complete * self.window]
        rms = np.sqrt(np.mean(np.square(span.reshape(-1, self.window), dtype=np.float64), axis=1))
        quiet = rms < self.quiet_rms
        if quiet.any():
            start = int(np.argmax(quiet))
            loud = np.flatnonzero(~quiet[start:])
            if not len(loud) and complete < limit:
                return None  # the quiet run may go on: its quietest window is not known yet
            end = start + (int(loud[0]) if len(loud) else len(quiet) - start)
            chosen = start + int(np.argmin(rms[start:end]))
        elif complete == limit:
            chosen = int(np.argmin(rms))
        else:
            return None  # no quiet window yet: wait for more audio
        return (self.min_windows + chosen) * self.window + self.window // 2
