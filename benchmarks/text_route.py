"""What routing the brain's text by the controller's `text_inference` route costs per LLM call.

Side by side in one run, ABBA order, against a real local OpenAI-compatible SSE server
(tests/support/llm_server.py): time to the first token and to the whole answer through
- `direct`: the OpenAI backend alone (what the brain did before),
- `routed`: `RoutedLLMBackend` asking an in-process `SessionController.check("text_inference")` first,
- `routed_session`: the same while a voice session holds the route (the session endpoint serves).
Through the Ray actor handle the check adds its own round trip (docs/controller.md: check p50 ~5 ms on
the shared 2-core box); that is measured by benchmarks/controller_latency.py and added in the docs.

    PYTHONPATH=. python benchmarks/text_route.py [--rounds 200]

The last line is JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import summary_ms  # noqa: E402
from graph.backends.llm.http_servers import OpenAIBackend  # noqa: E402
from graph.brain.text_route import EndpointSelector, RoutedLLMBackend  # noqa: E402
from graph.controller.config import ControllerConfig  # noqa: E402
from graph.controller.sessions import SessionRequest  # noqa: E402
from graph.controller.state_machine import SessionController  # noqa: E402
from graph.voice.types import LLMRequest  # noqa: E402
from tests.support.llm_server import LLMTestServer  # noqa: E402


async def one_call(backend, marker: str) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    async for _ in backend.stream(LLMRequest(prompt=f"{marker} hello", max_tokens=64)):
        if first is None:
            first = time.perf_counter() - start
    return first * 1000, (time.perf_counter() - start) * 1000


async def main(rounds: int) -> dict:
    normal, session = LLMTestServer().start(), LLMTestServer().start()
    with tempfile.TemporaryDirectory() as state_dir:
        controller = SessionController.open(ControllerConfig(state_dir=state_dir))

        async def check():
            return controller.check("text_inference")

        direct = OpenAIBackend(normal.url, model="m")
        routed = RoutedLLMBackend(EndpointSelector(OpenAIBackend(normal.url, model="m"),
                                                   OpenAIBackend(session.url, model="m"), check))
        results: dict[str, tuple[list[float], list[float]]] = {"direct": ([], []), "routed": ([], [])}
        try:
            for _ in range(5):  # warm the connection pools
                await one_call(direct, "w")
                await one_call(routed, "w")
            for index in range(rounds):  # ABBA: neither variant always runs first
                order = ("direct", "routed") if index % 4 in (0, 3) else ("routed", "direct")
                for name in order:
                    first, whole = await one_call(direct if name == "direct" else routed, name)
                    results[name][0].append(first)
                    results[name][1].append(whole)
            started = controller.start_session(SessionRequest(guild_id="g", voice_channel_id="v",
                                                              text_channel_id="t", user_id="u"))
            in_session: tuple[list[float], list[float]] = ([], [])
            for _ in range(rounds):
                first, whole = await one_call(routed, "session")
                in_session[0].append(first)
                in_session[1].append(whole)
            controller.end_session(started.session.session_id)
            checks = []
            for _ in range(2000):
                start = time.perf_counter()
                await check()
                checks.append((time.perf_counter() - start) * 1000)
        finally:
            await direct.aclose()
            await routed.aclose()
            controller.close()
            normal.stop()
            session.stop()
    served = routed.selector.served
    assert len([r for r in session.requests if "session hello" in r.prompt]) == rounds  # really the other server
    return {
        "benchmark": "text_route",
        "rounds": rounds,
        "direct": {"first_token": summary_ms(results["direct"][0]), "whole": summary_ms(results["direct"][1])},
        "routed": {"first_token": summary_ms(results["routed"][0]), "whole": summary_ms(results["routed"][1])},
        "routed_session": {"first_token": summary_ms(in_session[0]), "whole": summary_ms(in_session[1])},
        "check_in_process": summary_ms(checks, digits=4),
        "served": {route.value: count for route, count in served.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    print(json.dumps(asyncio.run(main(parser.parse_args().rounds))))
