"""The cutter's fast path for later chunks (`_LATER_SENTENCE`) must cut exactly where the full path does.

The fast path exists for speed only (1 MB of dense short sentences in well under 0.5 s, see
benchmarks/segmenter.py); these tests run the same random texts, fed whole and in random pieces, with
the fast path on and off and require identical chunks."""
from __future__ import annotations

import random

import pytest

from graph.voice.segmenter import SegmenterConfig, SpeechSegmenter, _ChunkCutter

_PIECES = [
    "Hello", "there", "my", "friend", "How", "are", "you", "today", "Dr.", "Mr.", "e.g.", "U.S.A.", "No.",
    "5", "3.5", "1,000", "10:30", "I.", "A.", "ok.", "St.", "etc.", "vs.", "p.", "12", "x", "Miku",
    "!", "?", "!?", "?!", "...", "…", "!!!!!!!!!!!!", ".", ",", ";", ":", " - ", "—", "–", "1990–2000",
    '"', "“", "”", "(", ")", "[", "]", "「", "」", "\n", "\n\n", "  ", " ", " ", " ", "。", "！", "你好",
    "*wave*", "<b>", "</b>", "https://example.com/a.b?c=d.", "'", "’", "😀", ":)", "3 - 2", "Jan 1, 1980",
]


def _random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 120)):
        parts.append(rng.choice(_PIECES))
        if rng.random() < 0.7:
            parts.append(" ")
    return "".join(parts)


def _segment(text: str, cuts: list[int], fast: bool, config: SegmenterConfig) -> list[str]:
    seg = SpeechSegmenter(config)
    seg._cutter._fast_later_chunks = fast
    out: list[str] = []
    last = 0
    for cut in cuts + [len(text)]:
        out += seg.feed(text[last:cut])
        last = cut
    return out + seg.flush()


@pytest.mark.parametrize(
    "config",
    [SegmenterConfig(), SegmenterConfig(max_chunk_chars=40, first_chunk_max_chars=20), SegmenterConfig(first_chunk_rule="clause")],
    ids=["default", "small_caps", "clause_rule"],
)
def test_fast_path_cuts_exactly_where_the_full_path_does(config):
    rng = random.Random(1801)
    for _ in range(1500):
        text = _random_text(rng)
        whole_fast = _segment(text, [], True, config)
        assert whole_fast == _segment(text, [], False, config), text
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12)))) if len(text) > 1 else []
        assert _segment(text, cuts, True, config) == whole_fast, (text, cuts)


def test_fast_path_is_taken_for_dense_sentences():
    """Guards the speed-up itself: the later chunks of plain short sentences come from the fast path."""
    calls = []
    cutter_cls = _ChunkCutter

    class CountingCutter(cutter_cls):
        def _resolve(self, i, final):
            calls.append(i)
            return super()._resolve(i, final)

    seg = SpeechSegmenter()
    seg._cutter.__class__ = CountingCutter
    text = "Hello there, my friend. How are you today? " * 200
    chunks = seg.feed(text) + seg.flush()
    assert len(chunks) == 401  # the early first chunk ("Hello there,") and 400 sentences
    assert len(calls) < 20  # the first chunk's candidates only; the full path would resolve ~600
