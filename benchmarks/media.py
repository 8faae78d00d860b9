"""Benchmark the drawing and vision paths' CPU work, side by side in one run; JSON on the last line.

- the drawing-request detector per message (the corpus plus 168 chat replies) against the old keyword
  regex it replaced, and how often each fires on chat replies that ask for nothing;
- frames for a vision model: a still PNG, a 12-frame GIF and a 40-frame MP4 (PyAV), per file;
- a diffusers step on the tiny random pipeline (tests/support/tiny_diffusion.py) is not measured here:
  its cost says nothing about a real model.

    .venv/bin/python benchmarks/media.py [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.stats import summary_ms  # noqa: E402
from graph.brain.draw_request import detect_draw_request  # noqa: E402
from graph.media.frames import FrameLimits, media_frames  # noqa: E402

OLD_KEYWORDS = re.compile(r"\bdraw\b|\bdrawing\b|\bsketch\b|\bpaint\b|画|画画", re.IGNORECASE)


def messages() -> tuple[list[str], list[str]]:
    corpus = [line.split("\t")[1] for line in (REPO / "tests/data/draw_requests.tsv").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    replies = [line for line in (REPO / "benchmarks/data/chat_replies.txt").read_text().splitlines() if line.strip()]
    return corpus, replies


def per_call_ms(function, inputs: list, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        for item in inputs:
            started = time.perf_counter()
            function(item)
            samples.append((time.perf_counter() - started) * 1e3)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    corpus, replies = messages()
    texts = corpus + replies
    detector = per_call_ms(detect_draw_request, texts, args.runs)
    keywords = per_call_ms(OLD_KEYWORDS.search, texts, args.runs)
    result = {
        "detector": summary_ms(detector, 4),
        "old_keywords": summary_ms(keywords, 4),
        "chat_replies": len(replies),
        "chat_replies_detected_as_requests": sum(detect_draw_request(t) is not None for t in replies),
        "chat_replies_matching_old_keywords": sum(OLD_KEYWORDS.search(t) is not None for t in replies),
    }
    from tests.test_vision import gif, mp4, png  # the same files the tests use

    limits = FrameLimits(max_frames=4)
    files = {"png_64x48": (png(), "image/png"), "png_2000x1500": (png(size=(2000, 1500)), "image/png"),
             "gif_12_frames": (gif(12), "image/gif"), "mp4_40_frames": (mp4(40), "video/mp4")}
    for name, (data, content_type) in files.items():
        samples = per_call_ms(lambda d, t=content_type: media_frames(d, t, limits), [data], args.runs)
        result[f"frames_{name}"] = summary_ms(samples, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
