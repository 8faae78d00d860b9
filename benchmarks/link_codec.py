"""What the stage link's wire format costs: pickle (before issue 18) and the msgpack codec
(graph/voice/link_codec.py), side by side on the messages the voice path sends.

Each message is encoded and decoded (one round trip of one side) the way the link does, alternating the
two formats call by call so machine noise hits both alike. Prints JSON as its last line.

    python benchmarks/link_codec.py [--rounds 3000]
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.stats import summary_ms  # noqa: E402
from graph.backends.vc.rvc_onnx import RVCContext  # noqa: E402
from graph.voice import link_codec  # noqa: E402
from graph.voice.types import AudioChunk, LLMRequest, TTSOptions, VCOptions, VCResult  # noqa: E402


def messages() -> dict[str, tuple]:
    rng = np.random.default_rng(0)
    chunk = AudioChunk(rng.uniform(-1, 1, 9600).astype(np.float32), 48_000)  # 200 ms, as the VC stage gets
    context = RVCContext(16_000, rng.uniform(-1, 1, 4800).astype(np.float32), rng.uniform(-1, 1, 960).astype(np.float32), 4)
    history = tuple(("user" if i % 2 else "assistant", "a line of chat history " * 4) for i in range(12))
    return {
        "llm_call": ("call", 1, "stream", (LLMRequest("Sing me something", "You are Miku.", history),)),
        "llm_token": ("item", 1, " word"),
        "tts_call": ("call", 2, "synthesize", ("Hello there, how are you today?", TTSOptions("en-us+f3", 1.0))),
        "tts_chunk": ("item", 2, chunk),
        "vc_call": ("call", 3, "convert", (chunk, VCOptions(4.0), context)),
        "vc_return": ("return", 3, VCResult(chunk, context)),
    }


CODECS = {
    "pickle": (lambda m: pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL), pickle.loads),
    "msgpack": (link_codec.dumps, link_codec.loads),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    result: dict = {"benchmark": "link_codec", "rounds": args.rounds}
    for name, message in messages().items():
        samples: dict[str, list[float]] = {codec: [] for codec in CODECS}
        sizes = {}
        for _ in range(args.rounds):
            for codec, (dumps, loads) in CODECS.items():
                started = time.perf_counter()
                frame = dumps(message)
                loads(frame)
                samples[codec].append((time.perf_counter() - started) * 1000)
                sizes[codec] = len(frame)
        result[name] = {codec: {**summary_ms(values, digits=4), "bytes": sizes[codec]} for codec, values in samples.items()}
        result[name]["msgpack_over_pickle_p50"] = round(
            result[name]["msgpack"]["p50_ms"] / max(result[name]["pickle"]["p50_ms"], 1e-9), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
