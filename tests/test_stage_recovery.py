"""StageRecovery (deployments/voice/ingress.py): while a lost stage is being replaced its calls fail at
once with a StageLost saying it restarts; the background probe ends that when the replacement answers."""
import asyncio

import pytest

from deployments.voice.ingress import StageRecovery
from graph.voice.types import StageLost


async def test_a_lost_stage_fails_fast_until_its_replacement_answers():
    answering = asyncio.Event()
    probes = 0

    async def probe(stage):
        nonlocal probes
        probes += 1
        if not answering.is_set():
            raise ConnectionError("replica still dead")

    recovery = StageRecovery(probe, {"vc": "world"}, retry_s=0.001)
    recovery.check("vc")  # nothing lost: no error
    recovery.lost("vc")
    with pytest.raises(StageLost, match="restarting") as caught:
        recovery.check("vc")
    assert caught.value.stage == "vc" and caught.value.backend == "world"
    recovery.check("tts")  # other stages are unaffected
    async with asyncio.timeout(10):
        while probes < 3:  # it keeps looking while the replica is dead
            await asyncio.sleep(0.001)
    assert recovery.recovering("vc")
    answering.set()
    async with asyncio.timeout(10):
        while recovery.recovering("vc"):
            await asyncio.sleep(0.001)
    recovery.check("vc")  # back: calls go through again
    await recovery.aclose()


async def test_losing_a_stage_twice_starts_one_probe():
    release = asyncio.Event()

    async def probe(stage):
        await release.wait()

    recovery = StageRecovery(probe, {}, retry_s=0.001)
    recovery.lost("tts")
    first = recovery._recovering["tts"]
    recovery.lost("tts")  # a second call of the same utterance, or another utterance, sees the same loss
    assert recovery._recovering["tts"] is first
    await recovery.aclose()
    assert not recovery.recovering("tts")
