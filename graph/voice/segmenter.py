"""Speech segmentation: turn a stream of LLM tokens into speakable chunks for TTS.

Why this module exists: TTS wants whole phrases (it sounds wrong on fragments), but the listener wants to
hear the first word as soon as possible, and an LLM reply is full of things that must not be read aloud
(markdown, code, emoji, reasoning, tags, roleplay actions). `SpeechSegmenter` does both jobs on the
token stream:

1. `graph.voice.cleaner.StreamCleaner` removes what must not be spoken. It is a small state machine (`CleanState`: normal
   text, inside a code fence, inside ``<think>``) that releases only text it can already decide on: a
   buffer ending in ``*wav``, ``<spe``, ``[link](htt``, ``:-`` or half an emoji sequence is held until
   more text (or the end of the stream) settles it.
2. `_ChunkCutter` finds chunk boundaries in the clean text: an early first chunk at a clause or word
   boundary, then whole sentences, with length caps. A boundary that needs lookahead (``3.`` / ``Dr.`` / ``e.g.``
   / ``..``) waits for the following whitespace and next character.

Both stages decide everything from the text alone, never from where `feed()` calls split it, and a
decision once taken never changes when more text arrives. So the chunks are identical however the text
is split into `feed()` calls (token by token, char by char, all at once): the key invariant, tested in
tests/test_text.py. Both stages work in bounded windows and no lookahead goes further than
`lookahead_limit` (past it the stage decides as if the text ended there), so segmentation is linear in
its input and the text held back is bounded (`SpeechSegmenter.held_chars`), whatever arrives.

Rules worth knowing (all configurable through `SegmenterConfig` where it makes sense):

* Roleplay vs italics: a single-asterisk span ``*...*`` is a roleplay action (removed) when it starts a
  sentence (start of the reply, of a line, or right after ``. ! ? 。 ！ ？ …``) or when it ends its line
  (only spaces follow before the newline or the end of the reply). Any other single-asterisk span is
  markdown italics and keeps its words: ``I *really* mean it``. With ``strip_roleplay=False`` every span
  keeps its words.
* Quotes and brackets: no boundary inside ``"..." “...” 「...」 『...』 (...) [...]``; a newline
  always ends a chunk and closes any open quote (so one stray quote cannot glue a whole reply).
  Only the length cap can cut inside a quote.
* Roleplay in *asterisks* is the only stage direction removed; ``(laughs)`` or ``[sighs]`` are spoken.
* Trade-off: a stray single ``*`` followed by a word (``a*b``) holds text back until a closing ``*``, a
  newline, `lookahead_limit` characters or the end of the reply settle it.
* ``.`` ends a sentence only before whitespace, and not before a lowercase word, and not after a known
  abbreviation (Dr, Mr, e.g., vs, ...), a single capital initial, or a dotted acronym (U.S.A.).
* Emoji are recognised with the `emoji` package's data (ZWJ sequences, skin tones, flags, keycaps).
* Terminal escape sequences are dropped whole (``\x1b[31m``, OSC ``\x1b]...\x07``, 8-bit CSI ``\x9b``).
* First chunk (`FirstChunkRule.PHRASE`, the default): a clause boundary or sentence end once the chunk
  holds `first_chunk_min_chars` and two words, or a word boundary once it holds `first_chunk_soft_chars`
  and two words; a word boundary never follows a number, an abbreviation, punctuation, a closing quote or
  a word that announces more ("the", "my", "is"), never comes before a clause's last word, and never
  inside quotes or brackets. `FirstChunkRule.CLAUSE` keeps the previous rule (clause boundaries only).
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from graph.voice.cleaner import (
    CLOSE_TO_OPEN,
    FEED_WINDOW,
    NEED_MORE,
    OPEN_TO_CLOSE,
    SENTENCE_END,
    StreamCleaner,
)

__all__ = [
    "FirstChunkRule",
    "has_speech",
    "SegmenterConfig",
    "SpeechSegmenter",
    "SentenceAggregator",
    "clean_for_speech",
]


class FirstChunkRule(str, enum.Enum):
    """Where the utterance's first chunk may end (later chunks are whole sentences either way)."""

    CLAUSE = "clause"  # at a clause boundary (, ; : — 、 ，) once it is long enough (the old rule)
    PHRASE = "phrase"  # also at a word boundary that sounds like a phrase end (default; see SegmenterConfig)


@dataclass(frozen=True)
class SegmenterConfig:
    """How `SpeechSegmenter` cuts and cleans text.

    first_chunk_min_chars / first_chunk_min_words: a clause boundary (, ; : — 、 ，) ends the first chunk
        only once the chunk holds at least this much (CJK characters count as a word each and as two
        characters, being roughly that long when spoken). A sentence end always ends a chunk.
    first_chunk_max_chars: the first chunk is cut at a word boundary when it gets this long without a
        boundary, so audio starts quickly even on a long first sentence.
    max_chunk_chars: cap for every chunk (prefer the last clause boundary, else a word boundary; a single
        word longer than this is cut).
    strip_roleplay: remove ``*actions*`` (see the module docstring for the rule vs markdown italics).
    reasoning_without_opener: treat everything up to ``</think>`` as reasoning even without an opening
        ``<think>`` (for models whose chat template already emitted the opener). Off by default: then a
        stray ``</think>`` is just removed.
    lookahead_limit: how far to look for the end of a tag, link or ``*span*`` before deciding that its
        opener was plain text. Bounds how long text can be held back.
    first_chunk_rule: `FirstChunkRule.PHRASE` (default) also ends the first chunk at a plain word
        boundary once it holds `first_chunk_soft_chars` characters and `first_chunk_min_words` words:
        never inside quotes or brackets, never right after a number, an abbreviation, punctuation or a
        closing quote, never after a word that needs its continuation ("the", "my", "to", "is", ...),
        and never before the last word of a clause. `FirstChunkRule.CLAUSE` is the previous rule
        (clause boundaries only).
    first_chunk_soft_chars: see `first_chunk_rule`.
    """

    first_chunk_min_chars: int = 10
    first_chunk_min_words: int = 2
    first_chunk_max_chars: int = 60
    max_chunk_chars: int = 250
    strip_roleplay: bool = True
    reasoning_without_opener: bool = False
    lookahead_limit: int = 300
    first_chunk_rule: FirstChunkRule = FirstChunkRule.PHRASE
    first_chunk_soft_chars: int = 10

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "first_chunk_rule", FirstChunkRule(self.first_chunk_rule))
        except ValueError:
            rules = ", ".join(r.value for r in FirstChunkRule)
            raise ValueError(f"first_chunk_rule must be one of {rules}, got {self.first_chunk_rule!r}") from None
        if min(self.first_chunk_min_chars, self.first_chunk_min_words, self.first_chunk_soft_chars) < 0:
            raise ValueError("first_chunk_min_chars, first_chunk_min_words and first_chunk_soft_chars must be >= 0")
        if self.max_chunk_chars < 2 or self.first_chunk_max_chars < 2:
            raise ValueError("max_chunk_chars and first_chunk_max_chars must be >= 2")
        if self.lookahead_limit < 16:
            raise ValueError("lookahead_limit must be >= 16")


# ---------------------------------------------------------------------------------------------------
# Character tables of the cutter
# ---------------------------------------------------------------------------------------------------

_CJK_SENTENCE_END = "。！？"

# Abbreviations after which "." never ends a sentence (lowercase, without the final dot).
_ABBREVIATIONS = frozenset(
    "mr mrs ms mx dr prof st sr jr mt ft gen col lt sgt capt cmdr rev hon gov pres sen rep vs v cf "
    "approx appx e.g i.e viz al jan feb mar apr jun jul aug sep sept oct nov dec inc ltd co corp dept "
    "ave blvd rd univ assn bros".split()
)
# Abbreviations that are only abbreviations before a number ("No. 5", "p. 12"), not "I said no. Then".
_ABBREVIATIONS_BEFORE_NUMBER = frozenset("no nos p pp vol vols ch fig figs art sec op".split())
_DOTTED_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")

_CUT_CANDIDATE = re.compile(r"[.!?…。！？,;:、，—–\-\n\"“”「」『』()\[\]（）【】]")
_CUT_CANDIDATE_PHRASE = re.compile(_CUT_CANDIDATE.pattern[:-1] + " ]")  # spaces too: phrase breaks
_NONSPACE = re.compile(r"\S")
_DEPTH_CHAR = re.compile("[\n\"" + re.escape("".join(OPEN_TO_CLOSE) + "".join(CLOSE_TO_OPEN)) + "]")
_WORD_RUN = re.compile(r"[^\W_\d]+(?:['’][^\W_\d]+)?")
_PHRASE_MIN_WORDS = 2
_NO_PHRASE_BREAK_AFTER = frozenset(",;:—–-.…!?\"'“”‘’)]）」』】&/+=*@#$%")
# Words a first chunk must not end on: they announce more ("I think the |", "We should |").
_OPEN_ENDED_WORDS = frozenset(
    "a an the my your his her its our their this these those that some any no every each all both "
    "to of in on at for with from by about into onto as than and or but so if because when while "
    "is am are was were be been being do does did have has had will would can could should may might "
    "must shall not very really just too also quite pretty so such even only still "
    "i you he she it we they me him us them i'm you're he's she's it's we're they're i'll you'll "
    "we'll i've you've we've i'd you'd there here what which who whom how where why let's let "
    "that's what's there's here's who's how's where's thank "
    "great good new little big small old first last next other same few many much more most lot bit "
    "kind sort best whole real "
    "don't can't won't didn't isn't aren't wasn't doesn't couldn't wouldn't shouldn't "
    "one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty sixty "
    "seventy eighty ninety hundred thousand million billion several".split()
)
_WORD_LOOKBACK = 64  # characters looked back for the word before a candidate (longer words: the chunk)
_SENTENCE_RUN = re.compile(f"[{re.escape(SENTENCE_END)}]+")
_DASH_RUN = re.compile("-+")
_HAS_WORD = re.compile(r"[^\W_]")
_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and ideographs
_CJK = re.compile(f"[{_CJK_RANGES}]")
_WORDS = re.compile(f"[{_CJK_RANGES}]|[^\\W_{_CJK_RANGES}]+")  # a CJK character counts as a word
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:…。！？、，])(?=\s|$)")
_TRAILING_DASH = re.compile(r"\s+-{1,3}$")

# A later chunk's common case, in one regex call: from the scan position, text with no candidate that
# could end a chunk or change the nesting (clause marks and dashes never end a later chunk), then "!"/"?"
# before whitespace, or a single "." before a space and a capital. Anything else takes the full path.
_NOT_A_LATER_CUT = re.escape(SENTENCE_END + "\n\"" + "".join(OPEN_TO_CLOSE) + "".join(CLOSE_TO_OPEN))
_LATER_SENTENCE = re.compile(f"[^{_NOT_A_LATER_CUT}]*(?:[!?]{{1,8}}(?=\\s)|\\.(?= [A-Z]))")

# Text that _normalize would change (checked first: most chunks are already normal, one search is cheaper)
_NOT_NORMAL = re.compile(r"^\s|\s$|[^\S ]|  |\s[,.!?;:…。！？、，](?=\s|$)")


def _normalize(text: str) -> str:
    """Collapse whitespace and tidy the spaces that removed emoji/actions leave before punctuation."""
    if _NOT_NORMAL.search(text) is not None:
        text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))
    return _TRAILING_DASH.sub(",", text) if text.endswith("-") else text


def _speakable(text: str) -> bool:
    return _HAS_WORD.search(text) is not None


# ---------------------------------------------------------------------------------------------------
# Stage 2: boundaries in the clean text
# ---------------------------------------------------------------------------------------------------

class _Cut(enum.Enum):
    SKIP = "skip"  # not a boundary
    CLAUSE = "clause"  # , ; : — 、 ，  and ellipses before a lowercase word
    SENTENCE = "sentence"  # . ! ? 。 ！ ？ and newlines
    CAP = "cap"  # length cap
    SOFT = "soft"  # a word boundary in a long enough first chunk (FirstChunkRule.PHRASE)


def _update_depth(stack: tuple[str, ...], c: str, prev: str) -> tuple[tuple[str, ...], bool]:
    """Quote/bracket nesting after character `c`; the flag tells whether `c` closed something."""
    if c == '"':
        if stack and stack[-1] == '"':
            return stack[:-1], True
        if prev.isdigit():
            return stack, False  # 5'10": inches, not a quote
        return stack + ('"',), False
    if c in OPEN_TO_CLOSE:
        return stack + (c,), False
    opener = CLOSE_TO_OPEN.get(c)
    if opener is not None and opener in stack:
        idx = len(stack) - 1 - stack[::-1].index(opener)
        return stack[:idx], True
    return stack, False  # a stray closer changes nothing


def _depth_after(text: str, stack: tuple[str, ...]) -> tuple[str, ...]:
    for m in _DEPTH_CHAR.finditer(text):
        c, i = m.group(), m.start()
        if c == "\n":
            stack = ()
        else:
            stack, _ = _update_depth(stack, c, text[i - 1] if i else "")
    return stack


class _ChunkCutter:
    """Cuts clean text into chunks; `push` returns the chunks the text so far completes.

    Positions are absolute in `_buf`; `_base` is where the current chunk starts (text before it is
    spent and dropped once per window, not once per chunk). Nothing looks further than the current
    chunk's cap plus `lookahead_limit`, so the held text is bounded and each character is scanned a
    bounded number of times."""

    _fast_later_chunks = True  # see _LATER_SENTENCE (off only to compare the two paths in tests)

    def __init__(self, config: SegmenterConfig, early_first_chunk: bool):
        self._cfg = config
        self._early = early_first_chunk
        self.reset()

    def reset(self) -> None:
        self._buf = ""
        self._base = 0  # start of the current chunk in `_buf`
        self._scan = 0  # every candidate before this position is decided (and was not taken)
        self._depth: tuple[str, ...] = ()  # quote/bracket nesting at `_scan`
        self._chunk_depth: tuple[str, ...] = ()  # nesting at the start of the current chunk
        self._clause_end = 0  # end of the last clause boundary seen in the current chunk (or `_base`)
        self._first = self._early  # the next chunk is the utterance's first (cut early)

    @property
    def held_chars(self) -> int:
        """Clean characters received but not yet part of a chunk."""
        return len(self._buf) - self._base

    def push(self, text: str, final: bool) -> list[str]:
        chunks: list[str] = []
        if not text and not final:
            return chunks
        for start in range(0, len(text), FEED_WINDOW):
            self._push_window(text[start : start + FEED_WINDOW], False, chunks)
        if final:
            self._push_window("", True, chunks)
        return chunks

    def _push_window(self, text: str, final: bool, chunks: list[str]) -> None:
        if self._base:  # drop the spent text once per window
            shift = self._base
            self._buf = self._buf[shift:] + text
            self._base = 0
            self._scan -= shift
            self._clause_end = max(0, self._clause_end - shift)
        elif text:
            self._buf += text
        while True:
            base = self._base
            buf = self._buf
            if base < len(buf) and buf[base].isspace():
                if base + 1 < len(buf) and buf[base] == " " and not buf[base + 1].isspace():
                    # the common case, inline: one space between two chunks
                    self._base = base + 1
                    self._scan = max(base + 1, self._scan)
                    self._clause_end = max(base + 1, self._clause_end)
                else:
                    self._strip_leading_space()
            cut = self._next_cut(final)
            if cut is None:
                break
            end, kind = cut
            piece = self._buf[self._base : end]
            # Boundaries are only taken outside quotes; a cap cut may land inside one.
            self._chunk_depth = _depth_after(piece, self._chunk_depth) if kind is _Cut.CAP else ()
            self._depth = self._chunk_depth
            self._base = self._scan = self._clause_end = end
            text_out = _normalize(piece)
            # every cut but the length cap was taken only where the piece holds a word
            if kind is not _Cut.CAP or _speakable(text_out):
                chunks.append(text_out)
                self._first = False
        if final:
            rest = _normalize(self._buf[self._base :])
            if _speakable(rest):
                chunks.append(rest)
            self.reset()

    def _strip_leading_space(self) -> None:
        base = self._base
        buf = self._buf
        if base < len(buf) and buf[base].isspace():
            if base + 1 < len(buf) and not buf[base + 1].isspace():
                base += 1  # the common case: one space between two chunks
            else:
                m = _NONSPACE.search(buf, base)
                base = m.start() if m else len(buf)
            self._base = base
            self._scan = max(base, self._scan)
            self._clause_end = max(base, self._clause_end)

    def _bound(self, i: int, final: bool) -> tuple[int, bool]:
        """How far the candidate at `i` may look, and whether it must decide there (see StreamCleaner)."""
        limit = i + self._cfg.lookahead_limit
        if len(self._buf) >= limit:
            return limit, True
        return len(self._buf), final

    def _first_chunk_ready(self, piece: str, min_words: int = 0, min_chars: int = 0) -> bool:
        text = _normalize(piece)
        spoken_len = len(text) + len(_CJK.findall(text))
        return (
            spoken_len >= max(min_chars, self._cfg.first_chunk_min_chars)
            and len(_WORDS.findall(text)) >= max(min_words, self._cfg.first_chunk_min_words)
        )

    def _next_cut(self, final: bool):
        buf = self._buf
        n = len(buf)
        base = self._base
        limit = self._cfg.max_chunk_chars
        if self._first:
            limit = min(limit, self._cfg.first_chunk_max_chars)
        limit += base
        if self._fast_later_chunks and not self._first and not self._depth:
            # The fast path decides exactly as the loop below would (the full path runs whenever it
            # does not match; tests/test_segmenter_fast_path.py compares the two on random text).
            m = _LATER_SENTENCE.match(buf, self._scan, min(n, limit + 1))  # so a cut ends by the cap
            if m is not None:
                end = m.end()
                if (buf[end - 1] != "." or not self._is_abbreviation(end - 1, buf[end + 1])) and _HAS_WORD.search(
                    buf, base, end
                ):
                    return end, _Cut.SENTENCE
        phrase = self._first and self._cfg.first_chunk_rule is FirstChunkRule.PHRASE
        candidates = _CUT_CANDIDATE_PHRASE if phrase else _CUT_CANDIDATE
        i = self._scan
        while True:
            m = candidates.search(buf, i, limit)  # a candidate at or past the cap does not matter
            if m is None:
                if n > limit:
                    self._scan = limit
                    return self._cap_cut(limit)
                self._scan = n
                return None
            ci = m.start()
            res = self._resolve(ci, final)
            if res is NEED_MORE:
                self._scan = ci
                return None
            kind, end, nxt = res
            if kind is not _Cut.SKIP and end > limit:
                self._scan = ci
                return self._cap_cut(limit)
            if kind is _Cut.SENTENCE and _HAS_WORD.search(buf, base, end):
                return end, kind
            if kind is _Cut.CLAUSE and _HAS_WORD.search(buf, base, end):
                if self._first and self._first_chunk_ready(buf[base:end]):
                    return end, kind
                self._clause_end = end
            if kind is _Cut.SOFT:
                return end, kind  # _phrase_break checked the length
            i = nxt

    def _cap_cut(self, limit: int):
        buf = self._buf
        base = self._base
        if self._clause_end - base >= max(1, (limit - base) // 3):
            return self._clause_end, _Cut.CAP
        for k in range(limit, base, -1):  # the last word boundary that keeps the chunk within the cap
            if buf[k].isspace():
                if _HAS_WORD.search(buf, base, k):
                    return k, _Cut.CAP
                break
        return limit, _Cut.CAP  # one word longer than the cap

    def _resolve(self, i: int, final: bool):
        """Decide the candidate at `i`: (kind, chunk end, next scan position) or NEED_MORE."""
        buf = self._buf
        n = len(buf)
        if n >= i + self._cfg.lookahead_limit:  # _bound, inline: this runs for every candidate
            n, final = i + self._cfg.lookahead_limit, True
        base = self._base
        c = buf[i]
        if c == "\n":
            self._depth = ()
            return _Cut.SENTENCE, i + 1, i + 1
        if c == '"' or c in OPEN_TO_CLOSE or c in CLOSE_TO_OPEN:
            prev = buf[i - 1] if i > base else ""
            depth, closed = _update_depth(self._depth, c, prev)
            if closed and not depth and prev and prev in SENTENCE_END:
                # "... he said "Stop!" Then": a sentence may end right after the quote.
                res = self._after_sentence_end(i + 1, n, prev, final, token_start=None)
                if res is NEED_MORE:
                    return NEED_MORE
                self._depth = depth
                if res is not None and prev not in _CJK_SENTENCE_END:
                    return res[0], res[1], i + 1
                return _Cut.SKIP, 0, i + 1
            self._depth = depth
            return _Cut.SKIP, 0, i + 1
        if self._depth:
            return _Cut.SKIP, 0, i + 1  # nothing inside quotes or brackets is a boundary
        if c == " ":
            return self._phrase_break(i, n, final)
        if c in SENTENCE_END:
            j = _SENTENCE_RUN.match(buf, i, n).end()
            if j == n and not final:
                return NEED_MORE
            run = buf[i:j]
            if run != "." and not run.isascii() and any(ch in _CJK_SENTENCE_END for ch in run):
                return _Cut.SENTENCE, j, j
            res = self._after_sentence_end(j, n, run, final, token_start=i if run == "." else None)
            if res is NEED_MORE:
                return NEED_MORE
            if res is None:
                return _Cut.SKIP, 0, j
            return res[0], res[1], j
        if c in ",;:":
            if i + 1 >= n:
                return NEED_MORE if not final else (_Cut.SKIP, 0, i + 1)
            if not buf[i + 1].isspace():
                return _Cut.SKIP, 0, i + 1  # 1,000  10:30  https://
            if c == "," and i > base and buf[i - 1].isdigit():
                m = _NONSPACE.search(buf, i + 1, n)
                if m is None:
                    return NEED_MORE if not final else (_Cut.SKIP, 0, i + 1)
                if m.group().isdigit():
                    return _Cut.SKIP, 0, i + 1  # "Jan 1, 1980"
            return _Cut.CLAUSE, i + 1, i + 1
        if c in "、，":
            return _Cut.CLAUSE, i + 1, i + 1
        if c in "—–":
            if i > base and buf[i - 1].isdigit():
                if i + 1 >= n:
                    return NEED_MORE if not final else (_Cut.SKIP, 0, i + 1)
                if buf[i + 1].isdigit():
                    return _Cut.SKIP, 0, i + 1  # 1990–2000
            return _Cut.CLAUSE, i + 1, i + 1
        # "-": a spaced dash " - " / " -- " is a clause boundary; hyphens and minus signs are not.
        if i == base or not buf[i - 1].isspace():
            return _Cut.SKIP, 0, i + 1
        j = _DASH_RUN.match(buf, i, n).end()
        if j == n:
            return NEED_MORE if not final else (_Cut.SKIP, 0, j)
        if not buf[j].isspace() or j - i > 3:
            return _Cut.SKIP, 0, j
        k = i - 1
        while k >= base and buf[k].isspace():
            k -= 1
        if k >= base and buf[k].isdigit():
            m = _NONSPACE.search(buf, j, n)
            if m is None:
                return NEED_MORE if not final else (_Cut.SKIP, 0, j)
            if m.group().isdigit():
                return _Cut.SKIP, 0, j  # 3 - 2
        return _Cut.CLAUSE, j, j

    def _phrase_break(self, i: int, n: int, final: bool):
        """Whether the space at `i` may end the first chunk (`FirstChunkRule.PHRASE`): a word boundary
        before a word (not punctuation, a number or a symbol), not right after a number ("3 | to 5"),
        a closing quote or bracket, punctuation or an abbreviation ("Dr. | Smith"), nor after a word
        that needs its continuation ("I think the |"), and only once the chunk holds
        `first_chunk_soft_chars` characters and two words. Inside quotes and brackets it is never asked."""
        buf = self._buf
        skip = (_Cut.SKIP, 0, i + 1)
        if i == self._base:
            return skip
        prev = buf[i - 1]
        if prev.isspace() or prev.isdigit() or prev in _NO_PHRASE_BREAK_AFTER:
            return skip
        if not self._first_chunk_ready(buf[self._base : i], _PHRASE_MIN_WORDS, self._cfg.first_chunk_soft_chars):
            return skip  # too short to end here: no need to wait for the next word
        m = _WORD_RUN.match(buf, i + 1, n)
        if m is None:
            return NEED_MORE if i + 1 == n and not final else skip  # punctuation, a number or a symbol
        e = m.end()
        if e + 1 >= n:  # the next word and the start of the one after it are not all there yet
            return NEED_MORE if not final else skip
        if buf[e] != " " or not buf[e + 1].isalnum():
            return skip  # the next word ends its clause ("That's a tough | one."): keep them together
        if self._word_before(i).lower() in _OPEN_ENDED_WORDS:
            return skip
        return _Cut.SOFT, i, i + 1

    def _after_sentence_end(self, j: int, n: int, run: str, final: bool, token_start: int | None):
        """Whether sentence punctuation `run` ending at `j` ends a sentence: (kind, end), None or NEED_MORE.

        Looks no further than `n`. token_start is the run's position when it is a single "." (then the
        word before it is checked for abbreviations)."""
        buf = self._buf
        if j == n:
            return NEED_MORE if not final else (_Cut.SENTENCE, j)
        if not buf[j].isspace():
            return None  # 3.5  e.g  example.com  "?!" inside a word
        ellipsis = "…" in run or ".." in run
        if not ellipsis and ("!" in run or "?" in run):
            return _Cut.SENTENCE, j
        if j + 1 < n and buf[j] == " " and not buf[j + 1].isspace():
            following = buf[j + 1]  # the common case: one space, then the next word
        else:
            m = _NONSPACE.search(buf, j, n)
            gap_end = m.start() if m else n
            if "\n" in buf[j:gap_end]:
                return _Cut.SENTENCE, j
            if m is None:
                return NEED_MORE if not final else (_Cut.SENTENCE, j)
            following = m.group()
        if ellipsis:
            return (_Cut.CLAUSE, j) if following.islower() else (_Cut.SENTENCE, j)
        if following.islower():
            return None  # "approx. five", "etc. and so on"
        if token_start is not None and self._is_abbreviation(token_start, following):
            return None
        return _Cut.SENTENCE, j

    def _word_before(self, i: int) -> str:
        """The run of non-space characters that ends at `i` (from the chunk's start at most)."""
        head = self._buf[max(self._base, i - _WORD_LOOKBACK) : i]
        if not head or head[-1].isspace():
            return ""
        word = head.rsplit(None, 1)[-1]
        if len(word) == len(head) and i - _WORD_LOOKBACK > self._base:
            return self._buf[self._base : i].rsplit(None, 1)[-1]  # a word longer than the look-back
        return word

    def _is_abbreviation(self, dot: int, following: str) -> bool:
        token = self._word_before(dot).lstrip("\"“‘'(「『[（*")
        low = token.lower()
        if low in _ABBREVIATIONS:
            return True
        if low in _ABBREVIATIONS_BEFORE_NUMBER and following.isdigit():
            return True
        if len(token) == 1 and token.isupper():
            return True  # an initial: "Albert I. Douglas"
        return _DOTTED_ACRONYM.fullmatch(token) is not None  # U.S.A.  e.g.  a.m.


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------

class SpeechSegmenter:
    """Streaming text -> speakable chunks, with an early first chunk per utterance.

    ``feed(text)`` returns the chunks that `text` completed; ``flush()`` returns the rest at the end of
    the stream and starts a new utterance; ``reset()`` drops everything (e.g. on interrupt). The chunks
    never depend on how the text was split into feed() calls. Not thread-safe: one per utterance stream.
    """

    _early_first_chunk = True

    def __init__(self, config: SegmenterConfig | None = None):
        self.config = config or SegmenterConfig()
        self._cleaner = StreamCleaner(self.config)
        self._cutter = _ChunkCutter(self.config, early_first_chunk=self._early_first_chunk)

    def feed(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"feed() takes str, got {type(text).__name__} (decode bytes first)")
        if not text:
            return []
        return self._cutter.push(self._cleaner.feed(text), final=False)

    def flush(self) -> list[str]:
        return self._cutter.push(self._cleaner.flush(), final=True)

    def reset(self) -> None:
        self._cleaner.reset()
        self._cutter.reset()

    @property
    def held_chars(self) -> int:
        """Characters fed and not yet in a chunk nor dropped: bounded by the chunk cap plus twice
        `lookahead_limit` (plus one feed window), however much text arrives without a boundary."""
        return self._cleaner.held_chars + self._cutter.held_chars


class SentenceAggregator(SpeechSegmenter):
    """Whole sentences only (no early first chunk): what common voice frameworks do.

    Same cleaning and caps as `SpeechSegmenter`, so comparing the two measures the early first chunk.
    """

    _early_first_chunk = False


def clean_for_speech(text: str, config: SegmenterConfig | None = None) -> str:
    """Non-streaming cleaning (e.g. for `say`): the speakable text, whitespace collapsed to one line."""
    if not isinstance(text, str):
        raise TypeError(f"clean_for_speech() takes str, got {type(text).__name__}")
    cleaner = StreamCleaner(config or SegmenterConfig())
    return _normalize(cleaner.feed(text) + cleaner.flush())


def has_speech(text: str, config: SegmenterConfig | None = None) -> bool:
    """Whether `text` has anything to say: True exactly when segmenting it yields at least one chunk.

    False for text that is only emoji, emoticons, markup, code, ``<think>...</think>``, escape sequences
    or punctuation; a caller can then answer "nothing to say" instead of playing silence."""
    return _speakable(clean_for_speech(text, config))
