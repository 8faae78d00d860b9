"""`pocketsphinx` STT: the embedded CPU default (its en-us model ships inside the pip package).

Two passes over each turn, on two decoders of the same acoustic model:
- the general one (en-us trigram LM, CMU dictionary plus "miku") for the free-form transcript. Its
  transcripts are rough (a 2010s recogniser; benchmarks/voice_commands.py: 27% word errors on real
  recorded speech, 64% on espeak-ng's robotic voices): fine for key words, not for dictation; the
  whisper backends are the production choice.
- a command grammar ("[hey] miku [please] (leave | stop | be quiet)") over a small dictionary that has
  her name (as people say it, "MEE-koo", and as espeak-ng and flite say it, "MIH-koo"). A grammar always
  finds its best path, even through unrelated speech, so it holds decoys beside the commands (other
  names, words that follow a name) and only a path through "miku" and a command word counts. Each decoy
  was kept or dropped on benchmarks/voice_commands.py: "tell", "play", "do" and "to" stole real commands
  ("Miku, stop" heard as "miku tell"), "we", "me", "here" and "that" catch near misses ("We should stop
  here"). Commands are found even when the general transcript mangles them (its LM has no "miku").
  `command_margin` > 0 also asks the match to explain the audio that well against an unconstrained
  phone loop (grammar score / phone-loop score); it separates poorly, so it is off by default.

pocketsphinx carries its cepstral mean from one utterance into the next; every decode here starts from
the model's initial mean instead, so a turn's transcript and command never depend on the turn before.
Digital silence (exact zeros, as synthetic speech and Discord's silence frames have) makes its features
degenerate, so a faint fixed-seed dither (-60 dBFS) is added before decoding.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graph.backends.stt.common import BlockingSTT
from graph.listen.types import STTOptions, VoiceCommand

# "MEE-koo" as people say it, and "MIH-koo" as espeak-ng and flite say it (both are in the dictionary)
MIKU_PRONUNCIATIONS = ("M IY K UW", "M IH K UW")
MIKU_PHONES = MIKU_PRONUNCIATIONS[0]
# Her name and the commands, beside decoys that compete for everything else: other names and words that
# sound like "miku" ("Nico, leave", "we should stop" match a decoy, not her), and words that often follow
# her name ("Miku, sing something" matches "miku sing", not a command). Only a path through "miku" and a
# command word counts.
DECOY_NAMES = ("nico", "mike", "you", "who", "should", "they", "the", "it", "i", "we", "me")
DECOY_NEXT = ("sing", "say", "what", "how", "can", "are", "is", "hi", "hello", "thanks", "thank", "look",
              "let", "help", "you", "me", "alone", "now", "something", "song", "here", "that")
COMMAND_GRAMMAR = f"""#JSGF V1.0;
grammar commands;
public <utterance> = <command> | <decoy>;
<command> = [hey] miku [please] (leave | stop | be quiet);
<decoy> = [hey] ({" | ".join(DECOY_NAMES)}) [please] (leave | stop | be quiet | {" | ".join(DECOY_NEXT)})
        | [hey] miku ({" | ".join(DECOY_NEXT)}) [{" | ".join(DECOY_NEXT)}];
"""
COMMAND_WORDS = ("hey", "miku", "please", "leave", "stop", "be", "quiet") + DECOY_NAMES + DECOY_NEXT
_COMMAND_OF = {"leave": VoiceCommand.LEAVE, "stop": VoiceCommand.STOP, "quiet": VoiceCommand.QUIET}


@dataclass(frozen=True, kw_only=True)
class PocketsphinxOptions:
    model_dir: str | None = None   # None: the en-us model inside the pocketsphinx package
    command_margin: float = 0.0    # grammar score / phone-loop score a command needs (0: no phone-loop check)
    dither: float = 1e-3
    beam: float | None = None      # pocketsphinx's -beam (None: its default)


def phrases(samples: np.ndarray, gap_s: float = 0.3, min_s: float = 0.4, max_s: float = 3.0,
            floor: float = 0.01) -> list[np.ndarray]:
    """The stretches of `samples` between pauses of at least `gap_s` (10 ms RMS under `floor`) that are
    `min_s`..`max_s` long, with 100 ms of context either side; the whole turn first when it is short."""
    hop = 160
    count = len(samples) // hop
    if count == 0:
        return []
    rms = np.sqrt(np.mean(samples[:count * hop].reshape(count, hop) ** 2, axis=1))
    loud = rms >= floor
    pieces, start, quiet = [], None, 0
    gap = int(gap_s * 100)
    for index, is_loud in enumerate(loud):
        if is_loud:
            start = index if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet >= gap:
                pieces.append((start, index - quiet + 1))
                start, quiet = None, 0
    if start is not None:
        pieces.append((start, count - quiet))
    found = [samples[max(0, (a - 10) * hop):(b + 10) * hop] for a, b in pieces if min_s <= (b - a) / 100 <= max_s]
    whole = len(samples) / 16000 <= max_s
    return ([samples] if whole else []) + (found if len(found) > 1 or not whole else [])


class PocketsphinxSTT(BlockingSTT):
    name = "pocketsphinx"

    def __init__(self, **options):
        super().__init__()
        self.options = PocketsphinxOptions(**options)
        from pocketsphinx import Decoder, get_model_path

        root = Path(self.options.model_dir or get_model_path())
        hmm, lm, dictionary = root / "en-us" / "en-us", root / "en-us" / "en-us.lm.bin", root / "en-us" / "cmudict-en-us.dict"
        phone_lm = root / "en-us" / "en-us-phone.lm.bin"
        for path in (hmm, lm, dictionary, phone_lm):
            if not path.exists():
                raise FileNotFoundError(f"pocketsphinx model file missing: {path}")
        self.model_dir = root
        extra = {"beam": self.options.beam} if self.options.beam else {}
        self.general = Decoder(hmm=str(hmm), lm=str(lm), dict=str(dictionary), loglevel="FATAL", **extra)
        self.general.add_word("miku", MIKU_PHONES, True)
        # the command decoders' small dictionary: the grammar's words (and her name) only
        self._workdir = tempfile.TemporaryDirectory(prefix="miku-sphinx-")
        small = Path(self._workdir.name) / "commands.dict"
        grammar = Path(self._workdir.name) / "commands.gram"
        wanted = set(COMMAND_WORDS) - {"miku"}
        with open(dictionary, encoding="utf-8") as handle:
            lines = [line for line in handle if line.split(maxsplit=1)[0] in wanted]
        names = "".join(f"miku{f'({index + 1})' if index else ''} {phones}\n" for index, phones in enumerate(MIKU_PRONUNCIATIONS))
        small.write_text("".join(lines) + names, encoding="utf-8")
        grammar.write_text(COMMAND_GRAMMAR, encoding="utf-8")
        self.commands = Decoder(hmm=str(hmm), jsgf=str(grammar), dict=str(small), loglevel="FATAL", **extra)
        self.phones = Decoder(hmm=str(hmm), allphone=str(phone_lm), lm=None, dict=str(small), loglevel="FATAL", **extra)
        # pocketsphinx carries its cepstral mean over from one utterance to the next, so a turn's result
        # would depend on what was decoded before it; each decode starts from the model's initial mean
        self._initial_cmn = self.general.get_cmn()

    def describe(self) -> dict:
        return {"backend": self.name, "model": str(self.model_dir)}

    def _pcm(self, samples: np.ndarray) -> bytes:
        if self.options.dither:  # seeded per call: the same audio always decodes the same way
            noise = np.random.default_rng(len(samples)).normal(0.0, self.options.dither, len(samples))
            samples = samples + noise.astype(np.float32)
        return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()

    def _decode(self, decoder, pcm: bytes):
        decoder.set_cmn(self._initial_cmn)
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        return decoder.hyp()

    def _recognise(self, samples: np.ndarray, options: STTOptions) -> tuple[str, VoiceCommand | None]:
        if len(samples) < 1600:  # under 0.1 s: nothing to recognise
            return "", None
        hyp = self._decode(self.general, self._pcm(samples))
        text = hyp.hypstr if hyp is not None else ""
        command = None
        if options.detect_commands:
            # a command is a phrase of its own: try each stretch between pauses that is short enough to be one
            for piece in phrases(samples):
                command = self._command(self._pcm(piece))
                if command is not None:
                    break
        return text, command

    def _command(self, pcm: bytes) -> VoiceCommand | None:
        match = self._decode(self.commands, pcm)
        if match is None or not match.hypstr:
            return None
        words = match.hypstr.split()
        if "miku" not in words or any(word in DECOY_NEXT for word in words[words.index("miku") + 1:]):
            return None
        command = next((_COMMAND_OF[word] for word in reversed(words) if word in _COMMAND_OF), None)
        if command is None or (command is VoiceCommand.QUIET and "be" not in words):
            return None  # a partial path ("miku be"): the grammar did not reach its end
        if self.options.command_margin <= 0:
            return command
        loop = self._decode(self.phones, pcm)
        if loop is None or loop.score <= 0 or match.score / loop.score < self.options.command_margin:
            return None
        return command

    async def aclose(self) -> None:
        self._workdir.cleanup()
