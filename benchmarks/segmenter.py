"""Segmenter benchmarks: time against input size (linear?), and characters held before the first chunk.

1. Scaling: `SpeechSegmenter` over texts of several shapes (plain words, no punctuation at all, one giant
   token, many tiny tokens, short sentences, and text that keeps a lookahead pending: an unclosed ``*``,
   ``<``, ``[``, quote or code fence), 10k to 1M characters, fed as word-sized tokens and as one piece,
   then flushed. Prints per-size medians of CPU time (process time: the machine is shared, wall time is
   printed too) and time(1M)/time(100k) per shape and feeding (linear is about 10; the old quadratic
   segmenter gave about 40). Target: 1 MB of text in under 0.5 s.
2. First chunk: over a corpus of typical Miku chat replies (benchmarks/data/chat_replies.txt, one reply a
   line, ``\\n`` for a newline inside a reply), how many clean characters were fed before the first chunk
   came out, fed character by character (the exact count) and as LLM-sized tokens (up to 4 characters,
   which adds the overshoot of the last token): mean, median and p95, the old rule ("clause") against the
   new ("phrase") side by side (both kept in `SegmenterConfig.first_chunk_rule`).

Prints JSON as its last line.

    .venv/bin/python benchmarks/segmenter.py [--sizes 10000,100000,500000,1000000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stats import percentile  # noqa: E402
from graph.voice.segmenter import SegmenterConfig, SpeechSegmenter, clean_for_speech  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "data" / "chat_replies.txt"


def _repeat(unit: str, size: int, prefix: str = "") -> str:
    return (prefix + unit * (size // len(unit) + 1))[:size]


SHAPES = {
    "words": lambda n: _repeat("word ", n),
    "no_punctuation_one_token": lambda n: "a" * n,
    "tiny_tokens": lambda n: _repeat("a ", n),
    "sentences": lambda n: _repeat("Hello there, my friend. How are you today? ", n),
    "unclosed_asterisk": lambda n: _repeat("word ", n, "*"),
    "unclosed_angle": lambda n: _repeat("word ", n, "<"),
    "unclosed_bracket": lambda n: _repeat("word ", n, "["),
    "unclosed_quote": lambda n: _repeat("word ", n, '"'),
    "unclosed_fence": lambda n: _repeat("code ", n, "```\n"),
}

_TOKEN = re.compile(r"\s*\S{1,6}|\s+")  # LLM-like tokens: a little whitespace plus a few characters


def _llm_tokens(text: str) -> list[str]:
    """Tokens about the size of an LLM's (a little whitespace plus up to 4 characters)."""
    return re.findall(r"\s*\S{1,4}|\s+$", text)


def _tokens(text: str) -> list[str]:
    if not text.strip(" "):
        return [text]
    return _TOKEN.findall(text)


def _segment_time(text: str, pieces: list[str]) -> tuple[float, float, int]:
    seg = SpeechSegmenter()
    gc.collect()  # start each run with the previous runs' garbage gone (the collector stays on while timed)
    wall, cpu = time.perf_counter(), time.process_time()
    chunks = 0
    for piece in pieces:
        chunks += len(seg.feed(piece))
    chunks += len(seg.flush())
    return time.process_time() - cpu, time.perf_counter() - wall, chunks


def scaling(sizes: list[int], repeats: int) -> dict:
    results: dict = {}
    for shape, make in SHAPES.items():
        results[shape] = {}
        for feeding in ("one_piece", "tokens"):
            per_size = {}
            for size in sizes:
                text = make(size)
                pieces = [text] if feeding == "one_piece" else _tokens(text)
                runs = [_segment_time(text, pieces) for _ in range(repeats)]
                cpu = statistics.median(r[0] for r in runs)
                wall = statistics.median(r[1] for r in runs)
                per_size[str(size)] = {"cpu_s": round(cpu, 4), "wall_s": round(wall, 4), "chunks": runs[0][2]}
                print(f"  {shape:26} {feeding:9} {size:>8} chars  cpu {cpu:7.3f} s  wall {wall:7.3f} s", flush=True)
            entry = {"per_size": per_size}
            if "100000" in per_size and "1000000" in per_size:
                small = max(per_size["100000"]["cpu_s"], 1e-4)
                entry["ratio_1m_over_100k"] = round(per_size["1000000"]["cpu_s"] / small, 2)
            results[shape][feeding] = entry
    return results


def _load_corpus() -> list[str]:
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    return [line.replace("\\n", "\n") for line in lines if line.strip() and not line.startswith("#")]


def held_before_first_chunk(text: str, rule: str, pieces: list[str]) -> int | None:
    """Clean characters fed before the first chunk came out (None: the reply has no speech)."""
    seg = SpeechSegmenter(SegmenterConfig(first_chunk_rule=rule))
    fed = ""
    for piece in pieces:
        fed += piece
        if seg.feed(piece):
            return len(clean_for_speech(fed))
    return len(clean_for_speech(fed)) if seg.flush() else None


def first_chunk(rules: list[str]) -> dict:
    replies = _load_corpus()
    out: dict = {"replies": len(replies)}
    for rule in rules:
        out[rule] = {}
        for feeding, split in (("chars", list), ("tokens", _llm_tokens)):
            held = [h for h in (held_before_first_chunk(r, rule, split(r)) for r in replies) if h is not None]
            stats = {"mean_chars": round(statistics.mean(held), 2), "p95_chars": percentile(held, 95),
                     "median_chars": statistics.median(held), "n": len(held)}
            out[rule][feeding] = stats
            print(f"  rule {rule:7} fed as {feeding:6}  mean {stats['mean_chars']:6.2f}  p95 {stats['p95_chars']:3}"
                  f"  median {stats['median_chars']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,500000,1000000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    result: dict = {"benchmark": "segmenter"}
    if not args.skip_scaling:
        print("Segmentation time against input size (median of", args.repeats, "runs):", flush=True)
        result["scaling"] = scaling(sizes, args.repeats)
        if "1000000" in result["scaling"]["words"]["one_piece"]["per_size"]:
            worst_1m = max(
                entry[feeding]["per_size"]["1000000"]["cpu_s"]
                for entry in result["scaling"].values() for feeding in ("one_piece",)
            )
            ratios = [entry[f].get("ratio_1m_over_100k") for entry in result["scaling"].values() for f in entry]
            ratios = [r for r in ratios if r is not None]
            result["worst_1m_one_piece_cpu_s"] = worst_1m
            result["max_ratio_1m_over_100k"] = max(ratios) if ratios else None
            result["target_1mb_under_0_5_s"] = worst_1m < 0.5
    print("Characters held before the first chunk (chat reply corpus):", flush=True)
    result["first_chunk"] = first_chunk(["clause", "phrase"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
