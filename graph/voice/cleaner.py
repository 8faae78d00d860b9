"""Speech cleaning: remove from a stream of LLM text what must not be read aloud.

Why this module exists: an LLM reply is full of things TTS must not speak (markdown, code, emoji,
reasoning, tags, roleplay actions), and the reply arrives token by token. `StreamCleaner` is a small
state machine (`CleanState`: normal text, inside a code fence, inside ``<think>``) that releases only
text it can already decide on: a buffer ending in ``*wav``, ``<spe``, ``[link](htt``, ``:-`` or half an
emoji sequence is held until more text (or the end of the stream) settles it. Its decisions depend on
the text alone, never on how it was split into `feed()` calls. `graph.voice.segmenter` cuts its output
into chunks; the rules are listed in that module's docstring.
"""
from __future__ import annotations

import enum
import re
import unicodedata
from typing import TYPE_CHECKING

import emoji as _emoji_data

if TYPE_CHECKING:
    from graph.voice.segmenter import SegmenterConfig

__all__ = ["NEED_MORE", "StreamCleaner"]

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
    rf"(?:[^{_CLEANER_SPECIAL}\s{_TOKEN_START}]+|[{_TOKEN_START}](?![{_EMOTICON_LETTERS}]))+"
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
_EMOJI_RUN = re.compile(f"[{_char_class(set(_EMOJI_CHARS))}]+")
_SPACES = re.compile(r"[ \t]*")
_RULE_RUN = re.compile(r"[-*_ \t]*")  # a horizontal rule candidate: marks and spaces
_RUNS = {c: re.compile(re.escape(c) + "+") for c in "`*_#"}

# Terminal escape sequences (ECMA-48), removed whole: CSI "ESC [ params intermediates final" (also the
# 8-bit CSI 0x9B), the string controls OSC/DCS/SOS/PM/APC ("ESC ]" ... BEL or "ESC \\", also 8-bit),
# and the two-character (nF/Fp/Fe/Fs) "ESC intermediates final" sequences.
_ESCAPE_STARTS = "\x1b\x9b\x9d\x90\x98\x9e\x9f"
_CSI_BODY = re.compile(r"[\x30-\x3f]*[\x20-\x2f]*")
_ESC_INTERMEDIATES = re.compile(r"[\x20-\x2f]*")
_STRING_END = re.compile(r"\x07|\x1b\\|\x9c")

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

FEED_WINDOW = 1024  # input is processed in windows of this many characters (see StreamCleaner.feed)

SENTENCE_END = ".!?…。！？"
OPEN_TO_CLOSE = {"“": "”", "「": "」", "『": "』", "(": ")", "[": "]", "（": "）", "【": "】"}
CLOSE_TO_OPEN = {v: k for k, v in OPEN_TO_CLOSE.items()}
_CLOSERS = frozenset(CLOSE_TO_OPEN) | {'"', "’"}

_PUNCTUATION_EMOJI = {"‼": "!!", "⁉": "?!"}  # emoji that still end a sentence

class Pending(enum.Enum):
    """Returned by the lookahead helpers below when the text so far cannot decide (wait for more)."""

    NEED_MORE = "need_more"


NEED_MORE = Pending.NEED_MORE


# ---------------------------------------------------------------------------------------------------
# Stage 1: the streaming cleaner
# ---------------------------------------------------------------------------------------------------

class CleanState(enum.Enum):
    NORMAL = "normal"
    IN_FENCE = "in_fence"  # inside ``` ... ```: dropped, even while the fence is still open
    IN_THINK = "in_think"  # inside <think> ... </think>: dropped


class StreamCleaner:
    """Removes unspeakable text from a stream; `feed` returns the clean text it could decide on."""

    def __init__(self, config: SegmenterConfig):
        self._cfg = config
        self.reset()

    def reset(self) -> None:
        self._raw = ""  # raw text not decided yet
        self._state = CleanState.IN_THINK if self._cfg.reasoning_without_opener else CleanState.NORMAL
        self._line_start = True
        self._prev = "\n"  # last raw character consumed (a stream starts like a line)
        self._last_sig = ""  # last two non-space characters emitted
        self._newline_since_sig = True

    @property
    def held_chars(self) -> int:
        """Raw characters fed but not decided yet (bounded by about `lookahead_limit`)."""
        return len(self._raw)

    def feed(self, text: str) -> str:
        # Fed in bounded windows so that no step ever copies or rescans more than a window plus the held
        # text (the output is the same: the cleaner does not depend on how its input is split).
        if len(text) <= FEED_WINDOW:
            self._raw += text
            return self._run(final=False)
        out = []
        for start in range(0, len(text), FEED_WINDOW):
            self._raw += text[start : start + FEED_WINDOW]
            out.append(self._run(final=False))
        return "".join(out)

    def _bound(self, raw: str, pos: int, final: bool) -> tuple[int, bool]:
        """The end a construct at `pos` may look to, and whether that end is final.

        A construct never looks further than `lookahead_limit` characters: past that it decides as if
        the text ended there, so held text stays bounded and the decision depends on the text alone."""
        limit = pos + self._cfg.lookahead_limit
        if len(raw) >= limit:
            return limit, True
        return len(raw), final

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
        if last in SENTENCE_END:
            return True
        return last in _CLOSERS and len(self._last_sig) == 2 and self._last_sig[0] in SENTENCE_END

    # -- main loop -------------------------------------------------------------------------------

    def _run(self, final: bool) -> str:
        out: list[str] = []
        raw = self._raw
        pos = 0
        while pos < len(raw):
            n = len(raw)
            if self._state is CleanState.IN_THINK:
                m = _THINK_CLOSE.search(raw, pos)
                if m:
                    pos = m.end()
                    self._state = CleanState.NORMAL
                    continue
                pos = n if final else max(pos, n - _THINK_CLOSE_KEEP)
                break
            if self._state is CleanState.IN_FENCE:
                idx = raw.find("```", pos)
                if idx < 0:
                    pos = n if final else max(pos, n - 2)
                    break
                bound, fin = self._bound(raw, idx, final)
                end = _RUNS["`"].match(raw, idx, bound).end()
                if end == bound and not fin:  # the closing run may still grow; keep it
                    pos = idx
                    break
                pos = end
                self._state = CleanState.NORMAL
                continue
            if self._line_start:
                nxt = self._line_prefix(raw, pos, final)
                if nxt is NEED_MORE:
                    break
                pos = nxt
                continue

            ch = raw[pos]
            prev = raw[pos - 1] if pos else self._prev
            # Each construct below looks at most `lookahead_limit` ahead: `n` is where it must stop and
            # `fin` whether it must decide there (see _bound).
            if ch in _EMOTICON_LETTERS and (prev.isspace() or prev in _TOKEN_START):
                n, fin = self._bound(raw, pos, final)
                end = self._emoticon(raw, pos, n, prev, fin)
                if end is NEED_MORE:
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
            n, fin = self._bound(raw, pos, final)
            if ch == "\n" or ch in "\u2028\u2029\x85":
                self._emit(out, "\n")
                self._line_start = True
                pos += 1
            elif ch in _TOKEN_START:  # space or opener before a letter that may start an emoticon
                self._emit(out, ch)
                pos += 1
            elif ch in _ESCAPE_STARTS:
                end = _escape_end(raw, pos, n, fin)
                if end is NEED_MORE:
                    break
                pos = end  # a terminal escape sequence is dropped whole
            elif ch == "`":
                end = _RUNS["`"].match(raw, pos, n).end()
                if end == n and not fin:
                    break
                if end - pos >= 3:
                    self._state = CleanState.IN_FENCE
                    self._emit(out, "\n")  # code ends the sentence before it
                pos = end  # `code span` markers are dropped, the code text is kept
            elif ch == "*":
                res = self._asterisk(raw, pos, n, fin)
                if res is NEED_MORE:
                    break
                raw, pos = res
            elif ch == "_":
                end = _RUNS["_"].match(raw, pos, n).end()
                if end == n and not fin:
                    break
                after = raw[end] if end < n else ""
                if prev.isalnum() and after.isalnum():
                    self._emit(out, raw[pos:end])  # snake_case keeps its underscore
                pos = end
            elif ch == "~":
                pos += 1  # ~~strike~~ markers and "hello~" decoration
            elif ch == "[" or ch == "!":
                res = self._link(raw, pos, n, fin)
                if res is NEED_MORE:
                    break
                if res is False:
                    self._emit(out, ch)
                    pos += 1
                else:
                    raw = res
            elif ch == "<":
                res = self._angle(raw, pos, n, prev, fin, out)
                if res is NEED_MORE:
                    break
                pos = res
            elif ch in _PUNCTUATION_EMOJI:
                self._emit(out, _PUNCTUATION_EMOJI[ch])
                pos += 1
            elif ch in _EMOJI_CHARS:
                end = _EMOJI_RUN.match(raw, pos, n).end()
                if end == n and not fin:  # a ZWJ, skin tone or flag half may follow
                    break
                self._emit(out, " ")
                pos = end
            elif ch in ":;=^>-\\":
                end = self._emoticon(raw, pos, n, prev, fin)
                if end is NEED_MORE:
                    break
                if end:
                    pos = end
                elif ch == "\\":
                    if pos + 1 >= n and not fin:
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
        n, final = self._bound(raw, pos, final)
        j = _SPACES.match(raw, pos, n).end()
        if j == n:
            if not final:
                return NEED_MORE
            self._line_start = False
            return j

        def skip_spaces(k: int):
            k = _SPACES.match(raw, k, n).end()
            return NEED_MORE if (k == n and not final) else k

        c = raw[j]
        if c == "#":
            k = _RUNS["#"].match(raw, j, n).end()
            if k == n:
                if not final:
                    return NEED_MORE
                self._line_start = False
                return k
            if k - j <= 6 and raw[k] in " \t":
                k = skip_spaces(k)
                if k is not NEED_MORE:
                    self._line_start = False
                return k
        elif c == ">":
            if j + 1 >= n:
                if not final:
                    return NEED_MORE
                self._line_start = False
                return j + 1
            if raw[j + 1] not in "_.<:(":  # ">_<" ">.<" are emoticons, not quotes
                return skip_spaces(j + 1)  # stay at line start: "> - item", "> > nested"
        elif c in "-*_+•":
            if c in "-*_":  # a horizontal rule (---, ***, ___, - - -) is dropped whole
                run = _RULE_RUN.match(raw, j, n).group()
                k = j + len(run)
                marks = len(run) - run.count(" ") - run.count("\t")
                if k == n and not final:
                    return NEED_MORE
                if marks >= 3 and (k == n or raw[k] == "\n"):
                    self._line_start = False
                    return k
            if c != "_":
                if j + 1 >= n:
                    if not final:
                        return NEED_MORE
                    self._line_start = False
                    return j + 1
                if raw[j + 1] in " \t":  # list bullet
                    k = skip_spaces(j + 1)
                    if k is not NEED_MORE:
                        self._line_start = False
                    return k
        elif c.isdigit():
            k = j
            while k < n and raw[k].isdigit() and k - j < 4:
                k += 1
            if k + 1 >= n and not final:
                return NEED_MORE
            if k - j <= 3 and k + 1 < n and raw[k] in ".)" and raw[k + 1] in " \t":  # "1. " "2) "
                k = skip_spaces(k + 1)
                if k is not NEED_MORE:
                    self._line_start = False
                return k
        self._line_start = False
        return j

    def _emoticon(self, raw: str, pos: int, n: int, prev: str, final: bool):
        """End of the emoticon at `pos` (looking no further than `n`), 0 if there is none, or NEED_MORE."""
        m = _EMOTICON_RE.match(raw, pos, n)
        if m is None:
            rest = raw[pos:n]
            if not final and len(rest) < _EMOTICON_MAXLEN and rest in _EMOTICON_PREFIXES:
                return NEED_MORE
            return 0
        end = m.end()
        if end == n and not final:  # it may repeat (":)))") or be glued to a word (":Dan")
            return NEED_MORE
        if end < n and raw[end].isalnum():
            return 0
        if prev.isalnum() and any(c.isalnum() for c in m.group()):
            return 0  # "Plan:D..." or "2:3" is not a face
        return end

    def _asterisk(self, raw: str, pos: int, n: int, final: bool):
        """Bold markers, italics, roleplay actions and stray asterisks. Returns (raw, pos)."""
        end = _RUNS["*"].match(raw, pos, n).end()
        if end == n and not final:
            return NEED_MORE
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
                return NEED_MORE
            if "\n" in raw[pos:k]:
                return raw, pos + 1
            if raw[k - 1].isspace() or raw[k - 1] == "*":
                k += 1
                continue
            break
        if self._cfg.strip_roleplay:
            if self._at_sentence_start():
                return raw, k + 1  # "*giggles* Hi!" / "Hi! *waves* How are you?"
            j = _SPACES.match(raw, k + 1, n).end()
            if j == n and not final:
                return NEED_MORE
            if j == n or raw[j] == "\n":
                return raw, k + 1  # "That's so sweet *blushes*" at the end of its line
        # Italics: drop both markers and go on with the words.
        return raw[:pos] + raw[pos + 1 : k] + raw[k + 1 :], pos

    def _link(self, raw: str, pos: int, n: int, final: bool):
        """[text](url) / ![alt](url) -> text. Returns the rewritten raw, False (plain char) or NEED_MORE."""
        b = pos
        if raw[pos] == "!":
            if pos + 1 >= n:
                return False if final else NEED_MORE
            if raw[pos + 1] != "[":
                return False
            b = pos + 1
        limit = b + self._cfg.lookahead_limit
        j = raw.find("]", b + 1, limit)
        if j < 0:
            if final or "\n" in raw[b:limit] or n >= limit:
                return False
            return NEED_MORE
        if "\n" in raw[b:j]:
            return False
        if j + 1 >= n:
            return False if final else NEED_MORE
        if raw[j + 1] != "(":
            return False
        k = j + 2
        while k < n and k < limit and raw[k] != ")" and not raw[k].isspace():
            k += 1
        if k >= limit:
            return False
        if k == n:
            return False if final else NEED_MORE
        if raw[k] != ")":
            return False
        return raw[:pos] + raw[b + 1 : j] + raw[k + 1 :]

    def _angle(self, raw: str, pos: int, n: int, prev: str, final: bool, out: list[str]):
        """Tags, <think>, Discord emoji/mentions, autolinks and <3. Returns the new position."""
        end = self._emoticon(raw, pos, n, prev, final)
        if end is NEED_MORE:
            return NEED_MORE
        if end:
            return end
        if pos + 1 >= n:
            if not final:
                return NEED_MORE
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
            return NEED_MORE
        m = _TAG_RE.fullmatch(raw, pos, k + 1)
        if m is None:
            self._emit(out, "<")
            return pos + 1
        if m.group("url"):
            self._emit(out, m.group("url"))
            return k + 1
        name = (m.group("name") or "").lower()
        if name in _THINK_TAGS and not m.group("close") and not raw[k - 1] == "/":
            self._state = CleanState.IN_THINK
        elif name not in _INLINE_TAGS:
            self._emit(out, " ")
        return k + 1




def _escape_end(raw: str, pos: int, n: int, final: bool):
    """End of the terminal escape sequence at `pos` (looking no further than `n`), or NEED_MORE.

    A sequence still unfinished at the end of the stream (or after `lookahead_limit` characters) is
    dropped up to there; a lone ESC before a character that cannot follow it is dropped alone."""
    c = raw[pos]
    if c == "\x1b":
        if pos + 1 >= n:
            return pos + 1 if final else NEED_MORE
        kind = raw[pos + 1]
        if kind == "[":
            return _csi_end(raw, pos + 2, n, final)
        if kind in "]PX^_":
            return _string_end(raw, pos + 2, n, final)
        k = _ESC_INTERMEDIATES.match(raw, pos + 1, n).end()
        if k == n:
            return k if final else NEED_MORE
        return k + 1 if "\x30" <= raw[k] <= "\x7e" else pos + 1  # a lone ESC is dropped alone
    if c == "\x9b":
        return _csi_end(raw, pos + 1, n, final)
    # An 8-bit string introducer is also what mojibake looks like ("â\x80\x9d" is a misread "”"): when
    # it is not terminated, only the introducer goes, not the text after it.
    m = _STRING_END.search(raw, pos + 1, n)
    if m:
        return m.end()
    return pos + 1 if final else NEED_MORE


def _csi_end(raw: str, body: int, n: int, final: bool):
    k = _CSI_BODY.match(raw, body, n).end()
    if k == n:
        return k if final else NEED_MORE
    return k + 1 if "\x40" <= raw[k] <= "\x7e" else k


def _string_end(raw: str, body: int, n: int, final: bool):
    m = _STRING_END.search(raw, body, n)
    if m:
        return m.end()
    return n if final else NEED_MORE  # unterminated: dropped up to the lookahead
