"""Speech segmentation: turn a stream of LLM tokens into speakable chunks for TTS.

Why this module exists: TTS wants whole phrases (it sounds wrong on fragments), but the listener wants to
hear the first word as soon as possible, and an LLM reply is full of things that must not be read aloud
(markdown, code, emoji, reasoning, tags, roleplay actions). `SpeechSegmenter` does both jobs on the
token stream:

1. `_StreamCleaner` removes what must not be spoken. It is a small state machine (`_CleanState`: normal
   text, inside a code fence, inside ``<think>``) that releases only text it can already decide on: a
   buffer ending in ``*wav``, ``<spe``, ``[link](htt``, ``:-`` or half an emoji sequence is held until
   more text (or the end of the stream) settles it.
2. `_ChunkCutter` finds chunk boundaries in the clean text: an early first chunk at a clause boundary,
   then whole sentences, with length caps. A boundary that needs lookahead (``3.`` / ``Dr.`` / ``e.g.``
   / ``..``) waits for the following whitespace and next character.

Both stages decide everything from the text alone, never from where `feed()` calls split it, and a
decision once taken never changes when more text arrives. So the chunks are identical however the text
is split into `feed()` calls (token by token, char by char, all at once): the key invariant, tested in
tests/test_text.py. Each stage keeps a scan position, so feeding is linear in the reply length.

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
"""
from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass

import emoji as _emoji_data

__all__ = [
    "SegmenterConfig",
    "SpeechSegmenter",
    "SentenceAggregator",
    "clean_for_speech",
]


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
    """

    first_chunk_min_chars: int = 10
    first_chunk_min_words: int = 2
    first_chunk_max_chars: int = 60
    max_chunk_chars: int = 250
    strip_roleplay: bool = True
    reasoning_without_opener: bool = False
    lookahead_limit: int = 300

    def __post_init__(self) -> None:
        if self.first_chunk_min_chars < 0 or self.first_chunk_min_words < 0:
            raise ValueError("first_chunk_min_chars and first_chunk_min_words must be >= 0")
        if self.max_chunk_chars < 2 or self.first_chunk_max_chars < 2:
            raise ValueError("max_chunk_chars and first_chunk_max_chars must be >= 2")
        if self.lookahead_limit < 16:
            raise ValueError("lookahead_limit must be >= 16")


# ---------------------------------------------------------------------------------------------------
# Character tables
# ---------------------------------------------------------------------------------------------------

def _char_class(chars: set[str]) -> str:
    """A regex character-class body matching exactly `chars`, compressed into ranges."""
    points = sorted(ord(c) for c in chars)
    parts: list[str] = []
    i = 0
    while i < len(points):
        j = i
        while j + 1 < len(points) and points[j + 1] == points[j] + 1:
            j += 1
        lo, hi = re.escape(chr(points[i])), re.escape(chr(points[j]))
        parts.append(lo if i == j else f"{lo}-{hi}")
        i = j + 1
    return "".join(parts)


# Every non-ASCII code point used by an emoji (incl. ZWJ parts, skin tones, regional indicators, tag
# characters and the keycap mark), plus joiners/selectors and a few decorative symbols chat LLMs love.
_EMOJI_CHARS: frozenset[str] = frozenset(
    {ch for key in _emoji_data.EMOJI_DATA for ch in key if ord(ch) > 0x7F}
    | set("\u200d\ufe0e\ufe0f\u20e3")
    | set("♪♫♬♩☆★♡♥✧✦❀✿")
)
# Format / control characters that are never spoken (the rest of Cc/Cf is caught by category).
_INVISIBLE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ud800-\udfff"
# Characters the cleaner must look at; everything else is copied through in bulk.
_CLEANER_SPECIAL = r"\n\r*_~`<\[!:;=\^>\\\-" + _INVISIBLE + _char_class(set(_EMOJI_CHARS))
# Letters that can start an emoticon at the start of a token (xD, T_T, o/, O_o).
_EMOTICON_LETTERS = "xXTOo"
_TOKEN_START = " \t\u00a0\u3000“「『(（【"  # after these, a letter may start an emoticon
# A run of ordinary text; it stops before a letter that may start an emoticon so that check always runs.
_PLAIN = re.compile(
    rf"(?:[^{_CLEANER_SPECIAL}\s{_TOKEN_START}]|[{_TOKEN_START}](?![{_EMOTICON_LETTERS}]))+"
)

_EMOTICONS = (
    ":)", ":-)", ":(", ":-(", ";)", ";-)", ";(", ":')", ":'(", "=)", "=(", ":]", ":[", ":|", ":-|",
    ":*", ":-*", ":-/", ";_;", "^_^", "^^", "^.^", "^-^", "-_-", ">_<", ">.<", "<3", "</3", "\\o/",
    ":D", ":-D", ";D", ";-D", "=D", ":P", ":-P", ":p", ":-p", ";P", ";p", ":3", ":O", ":o", ":-O",
    "xD", "XD", "xd", "xP", "XP", "T_T", "o_O", "O_o", "o/",
)
# Longest first so the alternation prefers ":-)" over ":-"; the last character may repeat (":)))", "xDDD").
_EMOTICON_RE = re.compile(
    "|".join(
        re.escape(e[:-1]) + "(?:" + re.escape(e[-1]) + ")+"
        for e in sorted(_EMOTICONS, key=len, reverse=True)
    )
)
_EMOTICON_PREFIXES = frozenset(e[:k] for e in _EMOTICONS for k in range(1, len(e)))
_EMOTICON_MAXLEN = max(len(e) for e in _EMOTICONS)

_TAG_RE = re.compile(
    r"""<(?:
        (?P<url>https?://[^\s<>]+)              # autolink: keep the address
      | a?:\w+:\d+                              # Discord custom emoji <:name:id>, <a:name:id>
      | (?:@[!&]?|\#)\d+                        # Discord mentions <@id> <@!id> <@&id> <#id>
      | t:\d+(?::[A-Za-z])?                     # Discord timestamp
      | !--[^>]*--                              # HTML comment
      | (?P<close>/)?(?P<name>[A-Za-z][\w:.-]*)(?:\s[^<>]*)?/?   # HTML / SSML tag
    )>""",
    re.X,
)
# Tags removed without leaving a space (they wrap words); any other tag becomes a space.
_INLINE_TAGS = frozenset(
    "b i u s em strong small mark code span sub sup del ins emphasis prosody say-as phoneme lang "
    "voice audio".split()
)
_THINK_TAGS = frozenset({"think", "thinking"})
_THINK_CLOSE = re.compile(r"</think(?:ing)?\s{0,2}>", re.I)
_THINK_CLOSE_KEEP = len("</thinking") + 3  # tail kept while looking for a split closer

_SENTENCE_END = ".!?…。！？"
_CJK_SENTENCE_END = "。！？"
_OPEN_TO_CLOSE = {"“": "”", "「": "」", "『": "』", "(": ")", "[": "]", "（": "）", "【": "】"}
_CLOSE_TO_OPEN = {v: k for k, v in _OPEN_TO_CLOSE.items()}
_CLOSERS = frozenset(_CLOSE_TO_OPEN) | {'"', "’"}

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
_NONSPACE = re.compile(r"\S")
_HAS_WORD = re.compile(r"[^\W_]")
_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and ideographs
_CJK = re.compile(f"[{_CJK_RANGES}]")
_WORDS = re.compile(f"[{_CJK_RANGES}]|[^\\W_{_CJK_RANGES}]+")  # a CJK character counts as a word
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:…。！？、，])(?=\s|$)")
_TRAILING_DASH = re.compile(r"\s+-{1,3}$")
_PUNCTUATION_EMOJI = {"‼": "!!", "⁉": "?!"}  # emoji that still end a sentence


class _Pending(enum.Enum):
    """Returned by the lookahead helpers below when the text so far cannot decide (wait for more)."""

    NEED_MORE = "need_more"


_NEED_MORE = _Pending.NEED_MORE


def _normalize(text: str) -> str:
    """Collapse whitespace and tidy the spaces that removed emoji/actions leave before punctuation."""
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return _TRAILING_DASH.sub(",", text)


def _speakable(text: str) -> bool:
    return _HAS_WORD.search(text) is not None


# ---------------------------------------------------------------------------------------------------
# Stage 1: the streaming cleaner
# ---------------------------------------------------------------------------------------------------

class _CleanState(enum.Enum):
    NORMAL = "normal"
    IN_FENCE = "in_fence"  # inside ``` ... ```: dropped, even while the fence is still open
    IN_THINK = "in_think"  # inside <think> ... </think>: dropped


class _StreamCleaner:
    """Removes unspeakable text from a stream; `feed` returns the clean text it could decide on."""

    def __init__(self, config: SegmenterConfig):
        self._cfg = config
        self.reset()

    def reset(self) -> None:
        self._raw = ""  # raw text not decided yet
        self._state = _CleanState.IN_THINK if self._cfg.reasoning_without_opener else _CleanState.NORMAL
        self._line_start = True
        self._prev = "\n"  # last raw character consumed (a stream starts like a line)
        self._last_sig = ""  # last two non-space characters emitted
        self._newline_since_sig = True

    def feed(self, text: str) -> str:
        self._raw += text
        return self._run(final=False)

    def flush(self) -> str:
        out = self._run(final=True)
        self.reset()
        return out

    # -- helpers ---------------------------------------------------------------------------------

    def _emit(self, out: list[str], piece: str) -> None:
        out.append(piece)
        stripped = piece.rstrip()
        if stripped:
            before = stripped[:-1].rstrip()
            self._last_sig = (before[-1] if before else self._last_sig[-1:]) + stripped[-1]
            self._newline_since_sig = "\n" in piece[len(stripped):]
        elif "\n" in piece:
            self._newline_since_sig = True

    def _at_sentence_start(self) -> bool:
        if self._newline_since_sig or not self._last_sig:
            return True
        last = self._last_sig[-1]
        if last in _SENTENCE_END:
            return True
        return last in _CLOSERS and len(self._last_sig) == 2 and self._last_sig[0] in _SENTENCE_END

    # -- main loop -------------------------------------------------------------------------------

    def _run(self, final: bool) -> str:
        out: list[str] = []
        raw = self._raw
        pos = 0
        while pos < len(raw):
            n = len(raw)
            if self._state is _CleanState.IN_THINK:
                m = _THINK_CLOSE.search(raw, pos)
                if m:
                    pos = m.end()
                    self._state = _CleanState.NORMAL
                    continue
                pos = n if final else max(pos, n - _THINK_CLOSE_KEEP)
                break
            if self._state is _CleanState.IN_FENCE:
                idx = raw.find("```", pos)
                if idx < 0:
                    pos = n if final else max(pos, n - 2)
                    break
                end = idx
                while end < n and raw[end] == "`":
                    end += 1
                if end == n and not final:  # the closing run may still grow; keep it
                    pos = idx
                    break
                pos = end
                self._state = _CleanState.NORMAL
                continue
            if self._line_start:
                nxt = self._line_prefix(raw, pos, final)
                if nxt is _NEED_MORE:
                    break
                pos = nxt
                continue

            ch = raw[pos]
            prev = raw[pos - 1] if pos else self._prev
            if ch in _EMOTICON_LETTERS and (prev.isspace() or prev in _TOKEN_START):
                end = self._emoticon(raw, pos, prev, final)
                if end is _NEED_MORE:
                    break
                if end:
                    pos = end
                    continue
                m = _PLAIN.match(raw, pos)  # not an emoticon: ordinary text
                self._emit(out, m.group())
                pos = m.end()
                continue
            m = _PLAIN.match(raw, pos)
            if m:
                self._emit(out, m.group())
                pos = m.end()
                continue

            # `ch` is special. Each branch either consumes something or breaks to wait for more text.
            if ch == "\n" or ch in "\u2028\u2029\x85":
                self._emit(out, "\n")
                self._line_start = True
                pos += 1
            elif ch in _TOKEN_START:  # space or opener before a letter that may start an emoticon
                self._emit(out, ch)
                pos += 1
            elif ch == "`":
                end = pos
                while end < n and raw[end] == "`":
                    end += 1
                if end == n and not final:
                    break
                if end - pos >= 3:
                    self._state = _CleanState.IN_FENCE
                    self._emit(out, "\n")  # code ends the sentence before it
                pos = end  # `code span` markers are dropped, the code text is kept
            elif ch == "*":
                res = self._asterisk(raw, pos, final)
                if res is _NEED_MORE:
                    break
                raw, pos = res
            elif ch == "_":
                end = pos
                while end < n and raw[end] == "_":
                    end += 1
                if end == n and not final:
                    break
                after = raw[end] if end < n else ""
                if prev.isalnum() and after.isalnum():
                    self._emit(out, raw[pos:end])  # snake_case keeps its underscore
                pos = end
            elif ch == "~":
                pos += 1  # ~~strike~~ markers and "hello~" decoration
            elif ch == "[" or ch == "!":
                res = self._link(raw, pos, final)
                if res is _NEED_MORE:
                    break
                if res is False:
                    self._emit(out, ch)
                    pos += 1
                else:
                    raw = res
            elif ch == "<":
                res = self._angle(raw, pos, prev, final, out)
                if res is _NEED_MORE:
                    break
                pos = res
            elif ch in _PUNCTUATION_EMOJI:
                self._emit(out, _PUNCTUATION_EMOJI[ch])
                pos += 1
            elif ch in _EMOJI_CHARS:
                end = pos
                while end < n and raw[end] in _EMOJI_CHARS:
                    end += 1
                if end == n and not final:  # a ZWJ, skin tone or flag half may follow
                    break
                self._emit(out, " ")
                pos = end
            elif ch in ":;=^>-\\":
                end = self._emoticon(raw, pos, prev, final)
                if end is _NEED_MORE:
                    break
                if end:
                    pos = end
                elif ch == "\\":
                    if pos + 1 >= n and not final:
                        break
                    escaped = raw[pos + 1] if pos + 1 < n else ""
                    if escaped and escaped in "*_`#[]()<>~\\!-+.":
                        self._emit(out, escaped)  # markdown escape: keep the character itself
                        pos += 2
                    else:
                        pos += 1
                else:
                    self._emit(out, ch)
                    pos += 1
            else:
                cat = unicodedata.category(ch)
                if cat in ("Cc", "Cf", "Cs", "Co", "Cn"):
                    pass  # control / format / invalid characters are never spoken
                elif ch.isspace():
                    self._emit(out, " ")
                else:
                    self._emit(out, ch)
                pos += 1

        if pos:
            self._prev = raw[pos - 1]
        self._raw = raw[pos:]
        return "".join(out)

    # -- constructs ------------------------------------------------------------------------------

    def _line_prefix(self, raw: str, pos: int, final: bool):
        """At a line start, drop indentation and markdown line markers (# > - * + 1. ---)."""
        n = len(raw)
        j = pos
        while j < n and raw[j] in " \t":
            j += 1
        if j == n:
            if not final:
                return _NEED_MORE
            self._line_start = False
            return j

        def skip_spaces(k: int):
            while k < n and raw[k] in " \t":
                k += 1
            return _NEED_MORE if (k == n and not final) else k

        c = raw[j]
        if c == "#":
            k = j
            while k < n and raw[k] == "#":
                k += 1
            if k == n:
                if not final:
                    return _NEED_MORE
                self._line_start = False
                return k
            if k - j <= 6 and raw[k] in " \t":
                k = skip_spaces(k)
                if k is not _NEED_MORE:
                    self._line_start = False
                return k
        elif c == ">":
            if j + 1 >= n:
                if not final:
                    return _NEED_MORE
                self._line_start = False
                return j + 1
            if raw[j + 1] not in "_.<:(":  # ">_<" ">.<" are emoticons, not quotes
                return skip_spaces(j + 1)  # stay at line start: "> - item", "> > nested"
        elif c in "-*_+•":
            if c in "-*_":  # a horizontal rule (---, ***, ___, - - -) is dropped whole
                k, marks = j, 0
                while k < n and raw[k] in "-*_ \t":
                    marks += raw[k] in "-*_"
                    k += 1
                if k == n and not final:
                    return _NEED_MORE
                if marks >= 3 and (k == n or raw[k] == "\n"):
                    self._line_start = False
                    return k
            if c != "_":
                if j + 1 >= n:
                    if not final:
                        return _NEED_MORE
                    self._line_start = False
                    return j + 1
                if raw[j + 1] in " \t":  # list bullet
                    k = skip_spaces(j + 1)
                    if k is not _NEED_MORE:
                        self._line_start = False
                    return k
        elif c.isdigit():
            k = j
            while k < n and raw[k].isdigit() and k - j < 4:
                k += 1
            if k + 1 >= n and not final:
                return _NEED_MORE
            if k - j <= 3 and k + 1 < n and raw[k] in ".)" and raw[k + 1] in " \t":  # "1. " "2) "
                k = skip_spaces(k + 1)
                if k is not _NEED_MORE:
                    self._line_start = False
                return k
        self._line_start = False
        return j

    def _emoticon(self, raw: str, pos: int, prev: str, final: bool):
        """End of the emoticon at `pos`, 0 if there is none, or _NEED_MORE."""
        n = len(raw)
        m = _EMOTICON_RE.match(raw, pos)
        if m is None:
            rest = raw[pos:n]
            if not final and len(rest) < _EMOTICON_MAXLEN and rest in _EMOTICON_PREFIXES:
                return _NEED_MORE
            return 0
        end = m.end()
        if end == n and not final:  # it may repeat (":)))") or be glued to a word (":Dan")
            return _NEED_MORE
        if end < n and raw[end].isalnum():
            return 0
        if prev.isalnum() and any(c.isalnum() for c in m.group()):
            return 0  # "Plan:D..." or "2:3" is not a face
        return end

    def _asterisk(self, raw: str, pos: int, final: bool):
        """Bold markers, italics, roleplay actions and stray asterisks. Returns (raw, pos)."""
        n = len(raw)
        end = pos
        while end < n and raw[end] == "*":
            end += 1
        if end == n and not final:
            return _NEED_MORE
        if end - pos >= 2 or end == n or raw[end].isspace():
            return raw, end  # **bold** markers and stray asterisks are dropped, words kept
        limit = pos + self._cfg.lookahead_limit
        k = pos + 2
        while True:
            k = raw.find("*", k, limit)
            if k < 0:
                window = raw[pos:limit]
                if final or "\n" in window or n >= limit:
                    return raw, pos + 1  # no closer: a stray asterisk
                return _NEED_MORE
            if "\n" in raw[pos:k]:
                return raw, pos + 1
            if raw[k - 1].isspace() or raw[k - 1] == "*":
                k += 1
                continue
            break
        if self._cfg.strip_roleplay:
            if self._at_sentence_start():
                return raw, k + 1  # "*giggles* Hi!" / "Hi! *waves* How are you?"
            j = k + 1
            while j < n and raw[j] in " \t":
                j += 1
            if j == n and not final:
                return _NEED_MORE
            if j == n or raw[j] == "\n":
                return raw, k + 1  # "That's so sweet *blushes*" at the end of its line
        # Italics: drop both markers and go on with the words.
        return raw[:pos] + raw[pos + 1 : k] + raw[k + 1 :], pos

    def _link(self, raw: str, pos: int, final: bool):
        """[text](url) / ![alt](url) -> text. Returns the rewritten raw, False (plain char) or _NEED_MORE."""
        n = len(raw)
        b = pos
        if raw[pos] == "!":
            if pos + 1 >= n:
                return False if final else _NEED_MORE
            if raw[pos + 1] != "[":
                return False
            b = pos + 1
        limit = b + self._cfg.lookahead_limit
        j = raw.find("]", b + 1, limit)
        if j < 0:
            if final or "\n" in raw[b:limit] or n >= limit:
                return False
            return _NEED_MORE
        if "\n" in raw[b:j]:
            return False
        if j + 1 >= n:
            return False if final else _NEED_MORE
        if raw[j + 1] != "(":
            return False
        k = j + 2
        while k < n and k < limit and raw[k] != ")" and not raw[k].isspace():
            k += 1
        if k >= limit:
            return False
        if k == n:
            return False if final else _NEED_MORE
        if raw[k] != ")":
            return False
        return raw[:pos] + raw[b + 1 : j] + raw[k + 1 :]

    def _angle(self, raw: str, pos: int, prev: str, final: bool, out: list[str]):
        """Tags, <think>, Discord emoji/mentions, autolinks and <3. Returns the new position."""
        n = len(raw)
        end = self._emoticon(raw, pos, prev, final)
        if end is _NEED_MORE:
            return _NEED_MORE
        if end:
            return end
        if pos + 1 >= n:
            if not final:
                return _NEED_MORE
            self._emit(out, "<")
            return pos + 1
        if not (raw[pos + 1].isalpha() or raw[pos + 1] in "/!:@#"):
            self._emit(out, "<")
            return pos + 1
        limit = pos + self._cfg.lookahead_limit
        k = raw.find(">", pos + 1, limit)
        inner = raw[pos + 1 : k if k >= 0 else limit]
        if "\n" in inner or "<" in inner or (k < 0 and (final or n >= limit)):
            self._emit(out, "<")
            return pos + 1
        if k < 0:
            return _NEED_MORE
        m = _TAG_RE.fullmatch(raw, pos, k + 1)
        if m is None:
            self._emit(out, "<")
            return pos + 1
        if m.group("url"):
            self._emit(out, m.group("url"))
            return k + 1
        name = (m.group("name") or "").lower()
        if name in _THINK_TAGS and not m.group("close") and not raw[k - 1] == "/":
            self._state = _CleanState.IN_THINK
        elif name not in _INLINE_TAGS:
            self._emit(out, " ")
        return k + 1


# ---------------------------------------------------------------------------------------------------
# Stage 2: boundaries in the clean text
# ---------------------------------------------------------------------------------------------------

class _Cut(enum.Enum):
    SKIP = "skip"  # not a boundary
    CLAUSE = "clause"  # , ; : — 、 ，  and ellipses before a lowercase word
    SENTENCE = "sentence"  # . ! ? 。 ！ ？ and newlines
    CAP = "cap"  # length cap


def _update_depth(stack: tuple[str, ...], c: str, prev: str) -> tuple[tuple[str, ...], bool]:
    """Quote/bracket nesting after character `c`; the flag tells whether `c` closed something."""
    if c == '"':
        if stack and stack[-1] == '"':
            return stack[:-1], True
        if prev.isdigit():
            return stack, False  # 5'10": inches, not a quote
        return stack + ('"',), False
    if c in _OPEN_TO_CLOSE:
        return stack + (c,), False
    opener = _CLOSE_TO_OPEN.get(c)
    if opener is not None and opener in stack:
        idx = len(stack) - 1 - stack[::-1].index(opener)
        return stack[:idx], True
    return stack, False  # a stray closer changes nothing


def _depth_after(text: str, stack: tuple[str, ...]) -> tuple[str, ...]:
    prev = ""
    for c in text:
        if c == "\n":
            stack = ()
        elif c == '"' or c in _OPEN_TO_CLOSE or c in _CLOSE_TO_OPEN:
            stack, _ = _update_depth(stack, c, prev)
        prev = c
    return stack


class _ChunkCutter:
    """Cuts clean text into chunks; `push` returns the chunks the text so far completes."""

    def __init__(self, config: SegmenterConfig, early_first_chunk: bool):
        self._cfg = config
        self._early = early_first_chunk
        self.reset()

    def reset(self) -> None:
        self._buf = ""
        self._scan = 0  # every candidate before this position is decided (and was not taken)
        self._depth: tuple[str, ...] = ()  # quote/bracket nesting at `_scan`
        self._chunk_depth: tuple[str, ...] = ()  # nesting at the start of the current chunk
        self._clause_end = 0  # end of the last clause boundary seen in the current chunk
        self._first = self._early  # the next chunk is the utterance's first (cut early)

    def push(self, text: str, final: bool) -> list[str]:
        if text:
            self._buf += text
        chunks: list[str] = []
        while True:
            self._strip_leading_space()
            cut = self._next_cut(final)
            if cut is None:
                break
            end, kind = cut
            piece = self._buf[:end]
            # Boundaries are only taken outside quotes; a cap cut may land inside one.
            self._chunk_depth = _depth_after(piece, self._chunk_depth) if kind is _Cut.CAP else ()
            self._depth = self._chunk_depth
            self._buf = self._buf[end:]
            self._scan = 0
            self._clause_end = 0
            text_out = _normalize(piece)
            if _speakable(text_out):
                chunks.append(text_out)
                self._first = False
        if final:
            rest = _normalize(self._buf)
            if _speakable(rest):
                chunks.append(rest)
            self.reset()
        return chunks

    def _strip_leading_space(self) -> None:
        buf = self._buf
        if buf and buf[0].isspace():
            stripped = buf.lstrip()
            shift = len(buf) - len(stripped)
            self._buf = stripped
            self._scan = max(0, self._scan - shift)
            self._clause_end = max(0, self._clause_end - shift)

    def _first_chunk_ready(self, piece: str) -> bool:
        text = _normalize(piece)
        spoken_len = len(text) + len(_CJK.findall(text))
        return (
            spoken_len >= self._cfg.first_chunk_min_chars
            and len(_WORDS.findall(text)) >= self._cfg.first_chunk_min_words
        )

    def _next_cut(self, final: bool):
        buf = self._buf
        n = len(buf)
        limit = self._cfg.max_chunk_chars
        if self._first:
            limit = min(limit, self._cfg.first_chunk_max_chars)
        i = self._scan
        while True:
            m = _CUT_CANDIDATE.search(buf, i)
            ci = m.start() if m else n
            if ci >= limit:
                self._scan = min(ci, n)
                return self._cap_cut(limit) if n > limit else None
            if m is None:
                self._scan = n
                return None
            res = self._resolve(ci, final)
            if res is _NEED_MORE:
                self._scan = ci
                return None
            kind, end, nxt = res
            if kind is not _Cut.SKIP and end > limit:
                self._scan = ci
                return self._cap_cut(limit)
            if kind is _Cut.SENTENCE and _HAS_WORD.search(buf, 0, end):
                return end, kind
            if kind is _Cut.CLAUSE and _HAS_WORD.search(buf, 0, end):
                if self._first and self._first_chunk_ready(buf[:end]):
                    return end, kind
                self._clause_end = end
            i = nxt

    def _cap_cut(self, limit: int):
        buf = self._buf
        if self._clause_end >= max(1, limit // 3):
            return self._clause_end, _Cut.CAP
        for k in range(limit, 0, -1):  # the last word boundary that keeps the chunk within the cap
            if buf[k].isspace():
                if _HAS_WORD.search(buf, 0, k):
                    return k, _Cut.CAP
                break
        return limit, _Cut.CAP  # one word longer than the cap

    def _resolve(self, i: int, final: bool):
        """Decide the candidate at `i`: (kind, chunk end, next scan position) or _NEED_MORE."""
        buf = self._buf
        n = len(buf)
        c = buf[i]
        if c == "\n":
            self._depth = ()
            return _Cut.SENTENCE, i + 1, i + 1
        if c == '"' or c in _OPEN_TO_CLOSE or c in _CLOSE_TO_OPEN:
            prev = buf[i - 1] if i else ""
            depth, closed = _update_depth(self._depth, c, prev)
            if closed and not depth and prev and prev in _SENTENCE_END:
                # "... he said "Stop!" Then": a sentence may end right after the quote.
                res = self._after_sentence_end(i + 1, prev, final, token_start=None)
                if res is _NEED_MORE:
                    return _NEED_MORE
                self._depth = depth
                if res is not None and prev not in _CJK_SENTENCE_END:
                    return res[0], res[1], i + 1
                return _Cut.SKIP, 0, i + 1
            self._depth = depth
            return _Cut.SKIP, 0, i + 1
        if self._depth:
            return _Cut.SKIP, 0, i + 1  # nothing inside quotes or brackets is a boundary
        if c in _SENTENCE_END:
            j = i
            while j < n and buf[j] in _SENTENCE_END:
                j += 1
            if j == n and not final:
                return _NEED_MORE
            run = buf[i:j]
            if any(ch in _CJK_SENTENCE_END for ch in run):
                return _Cut.SENTENCE, j, j
            res = self._after_sentence_end(j, run, final, token_start=i if run == "." else None)
            if res is _NEED_MORE:
                return _NEED_MORE
            if res is None:
                return _Cut.SKIP, 0, j
            return res[0], res[1], j
        if c in ",;:":
            if i + 1 >= n:
                return _NEED_MORE if not final else (_Cut.SKIP, 0, i + 1)
            if not buf[i + 1].isspace():
                return _Cut.SKIP, 0, i + 1  # 1,000  10:30  https://
            if c == "," and i and buf[i - 1].isdigit():
                m = _NONSPACE.search(buf, i + 1)
                if m is None:
                    return _NEED_MORE if not final else (_Cut.SKIP, 0, i + 1)
                if m.group().isdigit():
                    return _Cut.SKIP, 0, i + 1  # "Jan 1, 1980"
            return _Cut.CLAUSE, i + 1, i + 1
        if c in "、，":
            return _Cut.CLAUSE, i + 1, i + 1
        if c in "—–":
            if i and buf[i - 1].isdigit():
                if i + 1 >= n:
                    return _NEED_MORE if not final else (_Cut.SKIP, 0, i + 1)
                if buf[i + 1].isdigit():
                    return _Cut.SKIP, 0, i + 1  # 1990–2000
            return _Cut.CLAUSE, i + 1, i + 1
        # "-": a spaced dash " - " / " -- " is a clause boundary; hyphens and minus signs are not.
        if not i or not buf[i - 1].isspace():
            return _Cut.SKIP, 0, i + 1
        j = i
        while j < n and buf[j] == "-":
            j += 1
        if j == n:
            return _NEED_MORE if not final else (_Cut.SKIP, 0, j)
        if not buf[j].isspace() or j - i > 3:
            return _Cut.SKIP, 0, j
        k = i - 1
        while k >= 0 and buf[k].isspace():
            k -= 1
        if k >= 0 and buf[k].isdigit():
            m = _NONSPACE.search(buf, j)
            if m is None:
                return _NEED_MORE if not final else (_Cut.SKIP, 0, j)
            if m.group().isdigit():
                return _Cut.SKIP, 0, j  # 3 - 2
        return _Cut.CLAUSE, j, j

    def _after_sentence_end(self, j: int, run: str, final: bool, token_start: int | None):
        """Whether sentence punctuation `run` ending at `j` ends a sentence: (kind, end), None or _NEED_MORE.

        token_start is the run's position when it is a single "." (then the word before it is checked
        for abbreviations)."""
        buf = self._buf
        n = len(buf)
        if j == n:
            return _NEED_MORE if not final else (_Cut.SENTENCE, j)
        if not buf[j].isspace():
            return None  # 3.5  e.g  example.com  "?!" inside a word
        ellipsis = "…" in run or ".." in run
        if not ellipsis and ("!" in run or "?" in run):
            return _Cut.SENTENCE, j
        m = _NONSPACE.search(buf, j)
        gap_end = m.start() if m else n
        if "\n" in buf[j:gap_end]:
            return _Cut.SENTENCE, j
        if m is None:
            return _NEED_MORE if not final else (_Cut.SENTENCE, j)
        following = m.group()
        if ellipsis:
            return (_Cut.CLAUSE, j) if following.islower() else (_Cut.SENTENCE, j)
        if following.islower():
            return None  # "approx. five", "etc. and so on"
        if token_start is not None and self._is_abbreviation(token_start, following):
            return None
        return _Cut.SENTENCE, j

    def _is_abbreviation(self, dot: int, following: str) -> bool:
        buf = self._buf
        k = dot
        while k > 0 and not buf[k - 1].isspace():
            k -= 1
        token = buf[k:dot].lstrip("\"“‘'(「『[（*")
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
        self._cleaner = _StreamCleaner(self.config)
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


class SentenceAggregator(SpeechSegmenter):
    """Whole sentences only (no early first chunk): what common voice frameworks do.

    Same cleaning and caps as `SpeechSegmenter`, so comparing the two measures the early first chunk.
    """

    _early_first_chunk = False


def clean_for_speech(text: str, config: SegmenterConfig | None = None) -> str:
    """Non-streaming cleaning (e.g. for `say`): the speakable text, whitespace collapsed to one line."""
    if not isinstance(text, str):
        raise TypeError(f"clean_for_speech() takes str, got {type(text).__name__}")
    cleaner = _StreamCleaner(config or SegmenterConfig())
    return _normalize(cleaner.feed(text) + cleaner.flush())
