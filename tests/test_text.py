"""Tests for graph.voice.segmenter: the streaming speech segmenter and its cleaner.

The central property: the chunks never depend on how the text is split into feed() calls.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph.voice.segmenter import (
    FirstChunkRule,
    SegmenterConfig,
    SentenceAggregator,
    SpeechSegmenter,
    clean_for_speech,
    has_speech,
)
from graph.voice import cleaner as cleaner_module
from graph.voice import segmenter as segmenter_module

CORPUS_FILE = Path(__file__).parent / "data" / "segmenter_corpus.txt"
CHAT_REPLIES_FILE = Path(__file__).parent.parent / "benchmarks" / "data" / "chat_replies.txt"
CLAUSE = {"first_chunk_rule": FirstChunkRule.CLAUSE}  # the first-chunk rule these cases were written for


def segment(text: str, cls=SpeechSegmenter, **config) -> list[str]:
    seg = cls(SegmenterConfig(**config))
    return seg.feed(text) + seg.flush()


def segment_split(text: str, cuts: list[int], cls=SpeechSegmenter, **config) -> list[str]:
    seg = cls(SegmenterConfig(**config))
    chunks: list[str] = []
    start = 0
    for cut in cuts + [len(text)]:
        chunks += seg.feed(text[start:cut])
        start = cut
    return chunks + seg.flush()


def random_cuts(rng: random.Random, length: int) -> list[int]:
    if length < 2:
        return []
    count = rng.randint(1, max(1, length // 2))
    return sorted(rng.sample(range(1, length), min(count, length - 1)))


def token_cuts(text: str) -> list[int]:
    """Cut points like an LLM tokenizer: a little whitespace plus up to 4 characters."""
    return [m.end() for m in re.finditer(r"\s*\S{1,4}", text)][:-1]


# ---------------------------------------------------------------------------------------------------
# Hard cases: (text, expected chunks with the default config)
# ---------------------------------------------------------------------------------------------------

HARD_CASES = [
    # numbers and amounts
    ("I have 3. Then I left.", ["I have 3.", "Then I left."]),
    ("Pi is 3.14 roughly. Yes.", ["Pi is 3.14 roughly.", "Yes."]),
    ("It costs $1,000,000.50 today. Okay.", ["It costs $1,000,000.50 today.", "Okay."]),
    ("It was 192.168.1.1 all along. Yes.", ["It was 192.168.1.1 all along.", "Yes."]),
    ("Born Jan 1, 1980, she was. Okay then.", ["Born Jan 1, 1980,", "she was.", "Okay then."]),
    ("Version 2.0.1 is out. Update now!", ["Version 2.0.1 is out.", "Update now!"]),
    # abbreviations and initials
    (
        "Dr. Smith met Mr. Jones. Mrs. Brown and St. James came, vs. nobody else.",
        ["Dr. Smith met Mr. Jones.", "Mrs. Brown and St. James came, vs. nobody else."],
    ),
    ("Eat fruit, e.g. apples, i.e. red ones. Okay?", ["Eat fruit,", "e.g. apples, i.e. red ones.", "Okay?"]),
    ("We saw lions, tigers, etc. and bears. Then etc. Then more.",
     ["We saw lions,", "tigers, etc. and bears.", "Then etc.", "Then more."]),
    ("Albert I. Douglas was there. It was fun.", ["Albert I. Douglas was there.", "It was fun."]),
    ("I moved to the U.S.A. Last year. Fun.", ["I moved to the U.S.A. Last year.", "Fun."]),
    ("See No. 5 here. I said no. Then left.", ["See No. 5 here.", "I said no.", "Then left."]),
    # URLs and e-mail
    (
        "Go to www.example.com. Email john.doe@mail.co.uk now. Or https://a.b/c?d=1&e=2!",
        ["Go to www.example.com.", "Email john.doe@mail.co.uk now.", "Or https://a.b/c?d=1&e=2!"],
    ),
    # ellipses
    ("Wait... What? Hmm… okay. Fine… Next.", ["Wait...", "What?", "Hmm… okay.", "Fine…", "Next."]),
    # quotes and brackets
    ('She said "Stop. Now." and left. Then back.', ['She said "Stop. Now." and left.', "Then back."]),
    ("He said “Hello! How are you?” Then he sat.", ["He said “Hello! How are you?”", "Then he sat."]),
    ("(See Fig. 3. It works.) Next one here.", ["(See Fig. 3. It works.)", "Next one here."]),
    ("Look [at this. and that.] now. Done.", ["Look [at this. and that.] now.", "Done."]),
    ("「こんにちは。元気？」と言った。次です。", ["「こんにちは。元気？」と言った。", "次です。"]),
    # Japanese and Chinese punctuation
    ("今日は晴れ。明日は雨！本当？", ["今日は晴れ。", "明日は雨！", "本当？"]),
    ("我是初音未来，很高兴见到你。你好吗？", ["我是初音未来，", "很高兴见到你。", "你好吗？"]),
    # dashes
    ("Well - I think so, yes. Then 3 - 2 = 1. Years 1990–2000 were fun.",
     ["Well - I think so,", "yes.", "Then 3 - 2 = 1.", "Years 1990–2000 were fun."]),
    ("Yes — definitely, totally. Done.", ["Yes — definitely,", "totally.", "Done."]),
    ("I mean, you know -- it is fine. Ok.", ["I mean, you know,", "it is fine.", "Ok."]),
]


@pytest.mark.parametrize("text,expected", HARD_CASES)
def test_hard_cases(text, expected):
    assert segment(text, **CLAUSE) == expected
    # The phrase rule (default) may only end the first chunk earlier, at a word boundary.
    phrase = segment(text)
    assert " ".join(phrase) == " ".join(expected)
    assert expected[0].startswith(phrase[0])


# ---------------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------------

CLEANING_CASES = [
    # markdown keeps its words
    ("**Bold** and __strong__ and `code` and ~~gone~~ words.", "Bold and strong and code and gone words."),
    ("I *really* mean it.", "I really mean it."),
    ("snake_case_name stays but _italic_ loses marks.", "snake_case_name stays but italic loses marks."),
    ("# Title\n## Sub\n> quoted\n- one\n* two\n+ three\n1. first\n2) second", "Title Sub quoted one two three first second"),
    ("Check [the docs](https://docs.example.com/x_y) and ![a cat](cat.png) now.", "Check the docs and a cat now."),
    ("Text\n---\nmore\n***\nend", "Text more end"),
    ("A [citation] stays.", "A [citation] stays."),
    ("Auto <https://x.org/a> link.", "Auto https://x.org/a link."),
    (r"Escaped \*star\* here.", "Escaped *star* here."),
    # code fences vanish entirely
    ("Look:\n```python\nprint('hi. there')\n```\nDone.", "Look: Done."),
    ("Inline ```x = 1``` fence.", "Inline fence."),
    # emoji and emoticons
    ("Party 🎉 time 👨‍👩‍👧‍👦 family 👍🏽 and 🇯🇵 flag 1️⃣ one.", "Party time family and flag 1 one."),
    ("Great :) see ;-) you xD bye ^_^ love <3 ok :D fine :-( T_T (xD) o/", "Great see you bye love ok fine ()"),
    ("Hello~ ♪ Miku here ☆!", "Hello Miku here!"),
    ("Wow‼️ Really⁉ Yes.", "Wow!! Really?! Yes."),
    ("Hi <:miku:123456> <a:dance:42> <@123> <#456> there.", "Hi there."),
    ("Time 10:30 and ratio 2:3 and https://x.y:80/p stay.", "Time 10:30 and ratio 2:3 and https://x.y:80/p stay."),
    # reasoning, tags
    ("<think>I should greet. Hmm.</think>Hi there!", "Hi there!"),
    ("<thinking>\nplan\n</thinking>\nAnswer.", "Answer."),
    ("</think>Hello there.", "Hello there."),
    ('<speak>Hello <break time="1s"/> world.</speak> <b>Bold</b>ly.', "Hello world. Boldly."),
    ("1 < 2 and a<b stays.", "1 < 2 and a<b stays."),
    # roleplay actions
    ("*waves happily* Hi there! *giggles* How are you?", "Hi there! How are you?"),
    ("That's so sweet *blushes*\nSee you!", "That's so sweet See you!"),
    ("Hello *waves* how are you?", "Hello waves how are you?"),
    ("Have you seen *Inception*?", "Have you seen Inception?"),
    # control characters
    ("Hel\x00lo\x07 there.\r\nNew\u200b line\ufeff here.", "Hello there. New line here."),
    ("Bad \ud800surrogate gone.", "Bad surrogate gone."),
    # terminal escape sequences are removed whole, not just their ESC
    ("\x1b[31mRed\x1b[0m alert, \x1b[1;38;5;208mbold\x1b[m too.", "Red alert, bold too."),
    ("\x1b]8;;http://x.y/z\x1b\\link\x1b]8;;\x1b\\ here.", "link here."),
    ("\x1b]0;window title\x07Hi there.", "Hi there."),
    ("\x1b7Saved\x1b8 and \x1b(Bcharset\x1bc reset.", "Saved and charset reset."),
    ("\x9b1mEight\x9b0m bit \x9d0;t\x9c csi.", "Eight bit csi."),
    ("Unfinished at the end\x1b[3", "Unfinished at the end"),
    ("Mojibake \x9dquote stays.", "Mojibake quote stays."),  # an unterminated 8-bit OSC is not a sequence
]


@pytest.mark.parametrize("text,expected", CLEANING_CASES)
def test_clean_for_speech(text, expected):
    assert clean_for_speech(text) == expected


def test_roleplay_kept_when_disabled():
    config = SegmenterConfig(strip_roleplay=False)
    assert clean_for_speech("*waves* Hi! So sweet *blushes*", config) == "waves Hi! So sweet blushes"
    assert segment("*waves happily* Hi there!", strip_roleplay=False, **CLAUSE) == ["waves happily Hi there!"]


def test_reasoning_without_opener():
    text = "The user wants a greeting. OK.</think>Hi there! Nice day."
    assert segment(text, reasoning_without_opener=True) == ["Hi there!", "Nice day."]
    # Without the option the text before the stray closer is ordinary text.
    assert segment(text, **CLAUSE)[0] == "The user wants a greeting."


def test_unclosed_fence_emits_nothing_while_streaming():
    seg = SpeechSegmenter()
    out = seg.feed("Sure thing.\n```python\nprint('a. b, c.')\nx = 1. \n")
    out += seg.feed("more code. More! ")
    assert out == ["Sure thing."]
    assert seg.flush() == []  # never closed: all of it was code


def test_unclosed_think_emits_nothing():
    seg = SpeechSegmenter()
    assert seg.feed("<think>I should say hello. Then, maybe, ") == []
    assert seg.feed("ask a question! ") == []
    assert seg.flush() == []


def test_think_closer_split_across_feeds():
    seg = SpeechSegmenter()
    out = []
    for piece in ["<thi", "nk>secret. stuff</th", "ink", ">Hello ", "there. ", "Bye."]:
        out += seg.feed(piece)
    assert out + seg.flush() == ["Hello there.", "Bye."]


def test_feed_rejects_non_text():
    with pytest.raises(TypeError, match="str"):
        SpeechSegmenter().feed(b"bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# Streaming decisions, first chunk, caps
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "pieces,expected_after",
    [
        # an ambiguous end waits for the whitespace and the next character
        (["I have 3.", " ", "Then"], [[], [], ["I have 3."]]),
        (["Meet Dr", ".", " Smith", " now. ", "Ok"], [[], [], [], [], ["Meet Dr. Smith now."]]),
        (["Like e.g", ".", " this. ", "B"], [[], [], [], ["Like e.g. this."]]),
        (["Wait..", ".", " So", "!"], [[], [], ["Wait..."], []]),
        (["Hi!", " ", "x"], [[], ["Hi!"], []]),
        (["日本。", "次"], [[], ["日本。"]]),
    ],
)
def test_waits_on_ambiguous_endings(pieces, expected_after):
    seg = SpeechSegmenter()
    assert [seg.feed(p) for p in pieces] == expected_after


def test_first_chunk_is_early_then_whole_sentences():
    text = "Well, you know, I think that is a great idea, really. And then, later, we can go home."
    assert segment(text) == [
        "Well, you know,",
        "I think that is a great idea, really.",
        "And then, later, we can go home.",
    ]
    # The baseline only emits whole sentences.
    assert segment(text, cls=SentenceAggregator) == [
        "Well, you know, I think that is a great idea, really.",
        "And then, later, we can go home.",
    ]


def test_first_chunk_arrives_before_the_sentence_ends():
    seg = SpeechSegmenter()
    out = []
    for token in token_cuts_pieces("Hello there, my friend, how are you doing today?"):
        out += seg.feed(token)
        if out:
            break
    assert out == ["Hello there,"]
    assert "?" not in "".join(out)


def token_cuts_pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S{1,4}", text)


def test_first_chunk_min_length_is_configurable():
    text = "Oh, I see, that makes sense. Yes."
    assert segment(text)[0] == "Oh, I see,"
    assert segment(text, first_chunk_min_chars=0, first_chunk_min_words=1)[0] == "Oh,"
    assert segment(text, first_chunk_min_chars=40)[0] == "Oh, I see, that makes sense."


def test_first_chunk_cap_splits_at_word_boundary():
    text = "This first sentence goes on and on without any clause boundary at all so it is long. Next."
    chunks = segment(text, first_chunk_max_chars=30)
    assert len(chunks[0]) <= 30
    assert text.startswith(chunks[0] + " ")  # a whole-word prefix
    assert " ".join(chunks) == text


def test_flush_starts_a_new_utterance_with_an_early_first_chunk():
    seg = SpeechSegmenter()
    text = "Hello there, my good friend. How are you?"
    first = seg.feed(text) + seg.flush()
    second = seg.feed(text) + seg.flush()
    assert first == second == ["Hello there,", "my good friend.", "How are you?"]


def test_reset_drops_pending_text():
    seg = SpeechSegmenter()
    seg.feed("<think>still thinking and ")
    seg.feed("*unfinished")
    seg.reset()
    assert seg.feed("Fresh start here. ") == []
    assert seg.feed("Next") == ["Fresh start here."]


def test_max_chunk_cap_at_word_boundaries():
    words = " ".join(f"word{i}" for i in range(200))
    chunks = segment(words, max_chunk_chars=40, first_chunk_max_chars=20)
    assert all(len(c) <= 40 for c in chunks)
    assert len(chunks[0]) <= 20
    assert " ".join(chunks) == words  # nothing lost, no word split


def test_cap_prefers_a_clause_boundary():
    text = "one two three four five six seven, eight nine ten eleven twelve thirteen fourteen fifteen."
    chunks = segment(text, max_chunk_chars=60, first_chunk_max_chars=60, first_chunk_min_chars=200)
    assert chunks[0] == "one two three four five six seven,"


def test_single_word_longer_than_cap_is_cut():
    text = "a" * 100 + " b c."
    chunks = segment(text, max_chunk_chars=40)
    assert chunks == ["a" * 40, "a" * 40, "a" * 20 + " b c."]


def test_never_empty_or_punctuation_only():
    assert segment("... !!! ??? 😀 :) *waves*") == []
    assert segment("   \n\n  \t ") == []
    assert segment("```\ncode\n```") == []
    assert segment("Hi. ... !!! Bye.") == ["Hi.", "... !!! Bye."]


def test_newlines_are_boundaries():
    assert segment("Line one without stop\nLine two here\n\nParagraph three.") == [
        "Line one without stop",
        "Line two here",
        "Paragraph three.",
    ]


def test_corpus_chunks():
    chunks = segment(CORPUS_FILE.read_text(encoding="utf-8"))
    joined = " ".join(chunks)
    for unspoken in ["print(", "nothing in here", "The user greets", "```", "**", "<", "miku_wave", ":D", "♪"]:
        assert unspoken not in joined
    assert chunks[0] == "Hi there, it's me,"
    assert "Tickets are $3.50 each, or 1,000 yen, e.g. about the price of a coffee." in chunks
    assert 'She said "Don\'t be late. Seriously." and laughed.' in chunks
    assert "「こんにちは。元気ですか？」と彼女は言った。" in chunks
    assert chunks[-1] == "Bye bye!"


# ---------------------------------------------------------------------------------------------------
# THE invariant: chunks do not depend on how the text is split
# ---------------------------------------------------------------------------------------------------

INVARIANCE_CONFIGS = [
    {},
    CLAUSE,
    {"max_chunk_chars": 24, "first_chunk_max_chars": 12, "lookahead_limit": 16},
    {"strip_roleplay": False, "reasoning_without_opener": True, "first_chunk_min_words": 0},
]


def _corpus() -> list[str]:
    texts = [text for text, _ in HARD_CASES] + [text for text, _ in CLEANING_CASES]
    texts.append(CORPUS_FILE.read_text(encoding="utf-8"))
    return texts


@pytest.mark.parametrize("config", INVARIANCE_CONFIGS)
@pytest.mark.parametrize("cls", [SpeechSegmenter, SentenceAggregator])
def test_split_invariance_over_corpus(cls, config):
    rng = random.Random(20240601)
    for text in _corpus():
        whole = segment(text, cls, **config)
        assert segment_split(text, list(range(1, len(text))), cls, **config) == whole, text  # char by char
        assert segment_split(text, token_cuts(text), cls, **config) == whole, text
        rounds = 3 if len(text) > 1000 else 12
        for _ in range(rounds):
            cuts = random_cuts(rng, len(text))
            assert segment_split(text, cuts, cls, **config) == whole, (text, cuts)


PIECES = [
    "Hello", "there", "Miku", " ", " ", " ", "\n", "\n\n", ".", ",", "!", "?", "...", "..", "…", ":", ";",
    "-", " - ", "—", "3", "3.5", "1,000", "$3.50", "Dr.", "e.g.", "U.S.A.", "I.", "*", "**", "_", "`",
    "```", "~", "#", "# ", "> ", "- ", "1. ", "<", ">", "<b>", "</b>", "<think>", "</think>", "<br/>",
    "[", "]", "(", ")", "](", "![", "http://x.y/z", "a@b.com", '"', "“", "”", "「", "」", "。", "、", "！",
    "？", "，", "😀", "\u200d", "👍🏽", "🇯🇵", ":)", ":D", "xD", "<3", "^_^", ";-)", "<:miku:123>",
    "*waves*", "x", "T", "o", "\x00", "\r", "\t", "Mr", "etc.", "A", "b", "こんにちは", "\\",
    "\x1b", "\x1b[", "[31m", "\x1b[0m", "\x9b", "]8;;", "\x07", "\x1b\\",
]


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=50),
    cut_seed=st.integers(min_value=0, max_value=2**32 - 1),
    config=st.sampled_from(INVARIANCE_CONFIGS),
)
def test_split_invariance_property(pieces, cut_seed, config):
    text = "".join(pieces)
    whole = segment(text, **config)
    cuts = random_cuts(random.Random(cut_seed), len(text))
    assert segment_split(text, cuts, **config) == whole
    assert segment_split(text, list(range(1, len(text))), **config) == whole
    cap = SegmenterConfig(**config).max_chunk_chars
    for chunk in whole:
        assert chunk == chunk.strip() and chunk
        assert any(ch.isalnum() for ch in chunk)
        assert len(chunk) <= cap


# ---------------------------------------------------------------------------------------------------
# Escape sequences and "nothing to say"
# ---------------------------------------------------------------------------------------------------

def test_escape_sequence_split_across_feeds_is_removed_whole():
    text = "Alert \x1b[1;31mred\x1b[0m now. \x1b]0;title\x1b\\Done."
    assert segment(text) == ["Alert red now.", "Done."]
    for cut in range(1, len(text)):
        assert segment_split(text, [cut]) == segment(text), cut
    seg = SpeechSegmenter()
    assert seg.feed("Well hello \x1b") == [] and seg.feed("[3") == [] and seg.feed("1mthere") == []
    assert seg.feed(". ") == [] and seg.feed("Bye") == ["Well hello there."]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("😀🎉👍🏽", False),
        ("<think>I should say hello.</think>", False),
        ("<think>unfinished reasoning", False),
        ("```\nprint('hi')\n```", False),
        (":) ^_^ ... !!! *waves*", False),
        ("\x1b[31m\x1b[0m", False),
        ("", False),
        ("😀 hi", True),
        ("<think>hmm</think>OK.", True),
        ("3", True),
        ("こんにちは", True),
    ],
)
def test_has_speech(text, expected):
    assert has_speech(text) is expected
    assert has_speech(text) is bool(segment(text))


# ---------------------------------------------------------------------------------------------------
# Linear work and bounded held text (counted, never timed)
# ---------------------------------------------------------------------------------------------------

HUGE_SHAPES = {
    "words": lambda n: ("word " * n)[:n],
    "no punctuation": lambda n: "a" * n,
    "tiny tokens": lambda n: ("a " * n)[:n],
    "unclosed asterisk": lambda n: "*" + ("word " * n)[: n - 1],
    "unclosed angle": lambda n: "<" + ("word " * n)[: n - 1],
    "unclosed bracket": lambda n: "[" + ("word " * n)[: n - 1],
    "unclosed quote": lambda n: '"' + ("word " * n)[: n - 1],
    "unclosed fence": lambda n: "```\n" + ("code " * n)[: n - 4],
    "stars": lambda n: "*" * n,
    "emoji": lambda n: "😀" * n,
    "spaces after a stop": lambda n: "Hi." + " " * (n - 3),
    "exclamations": lambda n: "Hi" + "!" * (n - 2),
    "emoticon repeat": lambda n: ":" + ")" * (n - 1),
    "open escape": lambda n: "\x1b[" + "1" * (n - 2),
    "open osc": lambda n: "\x1b]" + "x" * (n - 2),
    "horizontal rule": lambda n: "\n" + ("- " * n)[: n - 1],
    "hashes": lambda n: "\n" + "#" * (n - 1),
    "backticks": lambda n: "`" * n,
    "dashes": lambda n: "a " + "-" * (n - 2),
    "number comma": lambda n: "1," + " " * (n - 2),
    "think": lambda n: "<think>" + ("x " * n)[: n - 7],
}


class _WorkMeter:
    """Records the largest buffer each stage works on and how often it runs (a stand-in for time)."""

    def __init__(self, monkeypatch):
        self.max_raw = self.max_buf = self.runs = 0
        meter = self
        run, push = cleaner_module.StreamCleaner._run, segmenter_module._ChunkCutter._push_window

        def counted_run(cleaner, final):
            meter.max_raw = max(meter.max_raw, len(cleaner._raw))
            meter.runs += 1
            return run(cleaner, final)

        def counted_push(cutter, text, final, chunks):
            meter.max_buf = max(meter.max_buf, len(cutter._buf) - cutter._base + len(text))
            meter.runs += 1
            return push(cutter, text, final, chunks)

        monkeypatch.setattr(cleaner_module.StreamCleaner, "_run", counted_run)
        monkeypatch.setattr(segmenter_module._ChunkCutter, "_push_window", counted_push)


@pytest.mark.parametrize("shape", sorted(HUGE_SHAPES))
def test_held_text_stays_bounded_while_streaming(shape):
    """60k characters fed a few at a time: what is held never exceeds the caps (no growing rescans)."""
    config = SegmenterConfig()
    bound = config.max_chunk_chars + 2 * config.lookahead_limit + 8
    text = HUGE_SHAPES[shape](60_000)
    seg = SpeechSegmenter(config)
    most = 0
    chunks = []
    for start in range(0, len(text), 7):
        chunks += seg.feed(text[start : start + 7])
        most = max(most, seg.held_chars)
    chunks += seg.flush()
    assert most <= bound, (shape, most)
    assert seg.held_chars == 0
    assert all(len(c) <= config.max_chunk_chars for c in chunks)


@pytest.mark.parametrize("shape", ["words", "no punctuation", "unclosed asterisk", "emoji", "spaces after a stop"])
def test_one_huge_feed_works_in_bounded_windows(shape, monkeypatch):
    """1M characters in one feed(): each stage only ever works on a window plus its held text, and the
    number of steps grows linearly with the input, so the whole is linear."""
    meter = _WorkMeter(monkeypatch)
    config = SegmenterConfig()
    size = 1_000_000
    seg = SpeechSegmenter(config)
    chunks = seg.feed(HUGE_SHAPES[shape](size)) + seg.flush()
    window = cleaner_module.FEED_WINDOW
    assert meter.max_raw <= window + config.lookahead_limit
    assert meter.max_buf <= window + config.max_chunk_chars + 2 * config.lookahead_limit
    assert meter.runs <= 2 * (size // window + 2) + 2
    assert all(len(c) <= config.max_chunk_chars for c in chunks)


# ---------------------------------------------------------------------------------------------------
# The first chunk (FirstChunkRule.PHRASE): earlier, never inside numbers, abbreviations, URLs, quotes
# ---------------------------------------------------------------------------------------------------

def _chat_replies() -> list[str]:
    lines = CHAT_REPLIES_FILE.read_text(encoding="utf-8").splitlines()
    return [line.replace("\\n", "\n") for line in lines if line.strip() and not line.startswith("#")]


def held_before_first_chunk(text: str, **config) -> int:
    """Clean characters fed (char by char) before the first chunk came out."""
    seg = SpeechSegmenter(SegmenterConfig(**config))
    for end in range(1, len(text) + 1):
        if seg.feed(text[end - 1]):
            return len(clean_for_speech(text[:end]))
    assert seg.flush(), text
    return len(clean_for_speech(text))


@pytest.mark.parametrize(
    "text,first",
    [
        ("I went to the park yesterday and saw so many cherry blossoms.", "I went to the park"),
        ("Please wait a moment while I look that up for you.", "Please wait"),
        ("Sometimes I wonder what it would be like to sing there.", "Sometimes I wonder"),
        ("Hi there! How are you doing today?", "Hi there!"),  # a sentence end still comes first
        ("Well, you know, I think that is a great idea.", "Well, you know,"),
    ],
)
def test_first_chunk_ends_at_an_early_word_boundary(text, first):
    assert segment(text)[0] == first
    assert " ".join(segment(text)) == text


@pytest.mark.parametrize(
    "text,kept",
    [
        ("The server has 1,248 members now and counting.", "1,248 members"),  # never after a number
        ("It costs about 3.14 dollars per song here.", "3.14 dollars"),
        ("The show is at 10:30 pm on the main stage.", "10:30 pm"),
        ("Say hello to Dr. Tanaka when you see him later.", "Dr. Tanaka"),  # nor after an abbreviation
        ("You could try e.g. apples or maybe some pears.", "e.g. apples"),
        ("The lyrics are at https://example.com/lyrics/miku right now.", "https://example.com/lyrics/miku"),
        ('He told me "Do not be nervous at all" and it helped.', '"Do not be nervous at all"'),
        ("I love the new dance [the one from the music video] so much.", "[the one from the music video]"),
        ("I am learning (slowly but surely) how to dance today.", "(slowly but surely)"),
        ("It was really 「とても楽しい」 for everyone there.", "「とても楽しい」"),
    ],
)
def test_first_chunk_never_splits_numbers_abbreviations_urls_quotes_brackets(text, kept):
    chunks = segment(text)
    assert any(kept in chunk for chunk in chunks), chunks
    assert " ".join(chunks) == text
    assert not chunks[0][-1].isdigit() and not chunks[0].endswith(("Dr.", "e.g."))


def test_first_chunk_does_not_end_on_a_word_that_needs_more():
    assert segment("I think the concert starts at seven tonight.")[0] == "I think the concert"
    assert segment("The U.S.A. has fifty states in total.")[0] == "The U.S.A. has fifty states"
    assert segment("That's a tough one. On the other hand, fine.")[0] == "That's a tough one."  # no lone "one."
    assert segment("Oh, you play guitar? That is awesome!")[0] == "Oh, you play guitar?"


def test_first_chunk_has_two_words_unless_it_is_a_whole_sentence():
    for reply in _chat_replies():
        first = segment(reply)[0]
        words = segmenter_module._WORDS.findall(first)  # a CJK character counts as a word
        assert len(words) >= 2 or first[-1] in ".!?…。！？", (reply, first)


def test_old_first_chunk_rule_is_still_available():
    text = "I went to the park and saw so many cherry blossoms."
    assert segment(text, **CLAUSE) == [text]
    assert segment(text) == ["I went to the park", "and saw so many cherry blossoms."]
    with pytest.raises(ValueError, match="first_chunk_rule"):
        SegmenterConfig(first_chunk_rule="sometimes")


def test_chat_replies_first_chunk_comes_within_20_characters_on_average():
    replies = _chat_replies()
    assert len(replies) >= 150
    new = [held_before_first_chunk(r) for r in replies]
    old = [held_before_first_chunk(r, **CLAUSE) for r in replies]
    assert sum(new) / len(new) <= 20, sum(new) / len(new)
    assert sum(new) < sum(old) * 0.75
    assert all(n <= o for n, o in zip(new, old))  # never later than the old rule


def test_split_invariance_over_chat_replies():
    rng = random.Random(7)
    for reply in _chat_replies():
        whole = segment(reply)
        assert segment_split(reply, list(range(1, len(reply))), SpeechSegmenter) == whole, reply
        assert segment_split(reply, token_cuts(reply), SpeechSegmenter) == whole, reply
        assert segment_split(reply, random_cuts(rng, len(reply)), SpeechSegmenter) == whole, reply
