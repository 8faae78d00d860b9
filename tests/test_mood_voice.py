"""Mood in the voice: each mood's pitch offset and speaking rate are heard in what Miku says.

The same sentence goes through the real in-process pipeline (espeak-ng TTS + WORLD VC) in two moods,
and the audio that comes out is measured: its f0 (pyworld.harvest) and its spoken duration.
"""
import asyncio
import math

import numpy as np
import pytest
import pyworld
import soxr

from graph.backends.llm.echo import EchoLLM
from graph.backends.tts.espeak import EspeakTTS
from graph.backends.tts.stretch import stretch_stream, time_stretch
from graph.backends.vc.world import WorldVC
from graph.brain.mood_profiles import (
    DEFAULT_MOODS_PATH,
    MoodConfigError,
    load_moods,
    mood_voice,
    parse_moods,
)
from graph.voice.pipeline import AudioFrames, StageCalls, Utterance, UtteranceEnded, UtteranceMode, UtterancePipeline, UtteranceStatus
from graph.voice.protocol import ProtocolError, parse_client_message
from graph.voice.types import AudioChunk, TTSOptions, VCOptions

SENTENCE = "Hello everyone, it is so nice to sing with all of you tonight."
ANALYSIS_RATE = 16_000


def _speech_only(mono: np.ndarray, rate: int) -> np.ndarray:
    """The audio from the first to the last sample above -40 dB of its peak (leading/trailing silence off)."""
    loud = np.flatnonzero(np.abs(mono) > np.max(np.abs(mono)) * 0.01)
    return mono[loud[0]: loud[-1] + 1]


def _median_f0(mono: np.ndarray, rate: int) -> float:
    x = soxr.resample(mono.astype(np.float64), rate, ANALYSIS_RATE) if rate != ANALYSIS_RATE else mono.astype(np.float64)
    f0, _ = pyworld.harvest(np.ascontiguousarray(x), ANALYSIS_RATE, f0_floor=60.0, f0_ceil=1000.0)
    voiced = f0[f0 > 0]
    assert len(voiced) > 50, "too little voiced speech to measure"
    return float(np.median(voiced))


async def _speak(pipeline: UtterancePipeline, tts: TTSOptions, vc: VCOptions) -> np.ndarray:
    """One `say` through the pipeline; the 48 kHz mono float audio it framed for Discord."""
    pcm = bytearray()
    ended = None
    async for event in pipeline.run(Utterance("u", SENTENCE, UtteranceMode.SAY, None, tts, vc)):
        if isinstance(event, AudioFrames):
            pcm += event.pcm
        elif isinstance(event, UtteranceEnded):
            ended = event
    assert ended is not None and ended.status is UtteranceStatus.OK
    stereo = np.frombuffer(bytes(pcm), dtype="<i2").astype(np.float32).reshape(-1, 2) / 32768.0
    return stereo.mean(axis=1)


@pytest.fixture(scope="module")
def moods():
    return load_moods()


def test_every_shipped_mood_has_a_sensible_speaking_rate(moods):
    for name, profile in moods.items():
        assert 0.7 <= profile.speaking_rate <= 1.4, name
    assert moods["neutral"].speaking_rate == 1.0
    for lively in ("excited", "bubbly"):
        assert moods[lively].speaking_rate > 1.0
    for slow in ("sleepy", "melancholy", "asleep"):
        assert moods[slow].speaking_rate < 1.0


def test_the_same_sentence_in_two_moods_differs_in_pitch_and_duration(moods):
    """excited (+3 st, fast) vs melancholy (-2 st, slow) through espeak + WORLD: f0 and length both follow."""
    pipeline = UtterancePipeline(StageCalls.from_backends(EchoLLM(), EspeakTTS(), WorldVC()))
    audio = {}
    for mood in ("excited", "melancholy"):
        voice = mood_voice(moods, mood)
        audio[mood] = asyncio.run(_speak(pipeline, TTSOptions(speed=voice.speaking_rate), VCOptions(pitch_shift=voice.pitch_shift)))
    excited, melancholy = (_speech_only(audio[m], 48_000) for m in ("excited", "melancholy"))

    semitones = moods["excited"].pitch_shift - moods["melancholy"].pitch_shift
    f0_ratio = _median_f0(excited, 48_000) / _median_f0(melancholy, 48_000)
    assert f0_ratio == pytest.approx(2.0 ** (semitones / 12.0), rel=0.03)

    rate_ratio = moods["excited"].speaking_rate / moods["melancholy"].speaking_rate
    duration_ratio = len(melancholy) / len(excited)
    assert duration_ratio == pytest.approx(rate_ratio, rel=0.06)


def test_a_neutral_mood_changes_nothing(moods):
    voice = mood_voice(moods, "neutral")
    assert voice.pitch_shift is None and voice.speaking_rate == 1.0
    assert mood_voice(moods, None) == voice  # no mood (no session): the voice's own pitch and pace


def _espeak_sentence() -> AudioChunk:
    async def synth():
        pieces = [p.samples async for p in EspeakTTS().synthesize(SENTENCE, TTSOptions())]
        return AudioChunk(np.concatenate(pieces), 22_050)
    return asyncio.run(synth())


@pytest.mark.parametrize("rate", [0.75, 1.3])
def test_the_time_stretch_changes_duration_and_keeps_pitch(rate):
    speech = _espeak_sentence()
    stretched = time_stretch(speech.samples, speech.sample_rate, rate)
    assert len(stretched) / len(speech.samples) == pytest.approx(1.0 / rate, rel=0.01)
    # WORLD analysis/resynthesis moves the measured median f0 by a few percent at any rate (dio's estimate
    # vs harvest's): well under a semitone (5.9 %), while resampling to this duration would move it by
    # 1/rate (-23 % / +33 %)
    original = _median_f0(speech.samples, speech.sample_rate)
    assert _median_f0(stretched, speech.sample_rate) == pytest.approx(original, rel=0.05)
    # the same duration by resampling (played at the original rate): the pitch moves with it
    resampled = soxr.resample(speech.samples.astype(np.float64), speech.sample_rate, speech.sample_rate / rate).astype(np.float32)
    assert abs(_median_f0(resampled, speech.sample_rate) / original - rate) < 0.05
    assert np.isfinite(stretched).all() and np.max(np.abs(stretched)) <= 0.99


def test_a_streamed_stretch_keeps_pitch_and_closes_its_source():
    speech = _espeak_sentence()
    closed = asyncio.Event()

    async def pieces():
        try:
            step = speech.sample_rate // 10  # 100 ms pieces, as espeak streams them
            for start in range(0, len(speech.samples), step):
                yield AudioChunk(speech.samples[start: start + step], speech.sample_rate)
        finally:
            closed.set()

    async def run(rate):
        return [chunk async for chunk in stretch_stream(pieces(), rate)]

    slow = asyncio.run(run(0.8))
    out = np.concatenate([c.samples for c in slow])
    # a short first block (early first audio), then blocks of WORLD-sized audio, not 100 ms slivers
    assert slow[0].duration_s >= 0.12 / 0.8 and all(c.duration_s >= 0.3 / 0.8 for c in slow[1:-1])
    assert slow[0].duration_s < slow[1].duration_s
    assert len(out) / len(speech.samples) == pytest.approx(1.0 / 0.8, rel=0.02)
    assert _median_f0(out, speech.sample_rate) == pytest.approx(_median_f0(speech.samples, speech.sample_rate), rel=0.05)

    async def interrupted():
        stream = stretch_stream(pieces(), 1.2)
        await anext(stream)
        await stream.aclose()
        return closed.is_set()

    assert asyncio.run(interrupted())  # an interrupt reaches the backend's own stream


def test_rate_one_passes_the_stream_through_untouched():
    chunk = AudioChunk(np.linspace(-0.5, 0.5, 2205, dtype=np.float32), 22_050)

    async def pieces():
        yield chunk

    async def run():
        return [c async for c in stretch_stream(pieces(), 1.0)]

    assert asyncio.run(run()) == [chunk]


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), 0.0, 9.0])
def test_tts_options_refuse_a_broken_speed(rate):
    with pytest.raises(ValueError, match="TTS speed must be a finite number"):
        TTSOptions(speed=rate)


def _mood_doc() -> dict:
    import yaml

    return yaml.safe_load(DEFAULT_MOODS_PATH.read_text(encoding="utf-8"))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["moods"]["sleepy"].pop("speaking_rate"), r"moods\.yaml: .*mood 'sleepy': speaking_rate: required field is missing"),
    (lambda d: d["moods"]["excited"].update(speaking_rate=float("nan")), r"moods\.yaml: .*mood 'excited': speaking_rate: .*finite"),
    (lambda d: d["moods"]["excited"].update(speaking_rate=float("inf")), r"moods\.yaml: .*mood 'excited': speaking_rate: .*finite"),
    (lambda d: d["moods"]["shy"].update(speaking_rate=2.0), r"moods\.yaml: .*mood 'shy': speaking_rate: .*less than or equal to 1\.4"),
    (lambda d: d["moods"]["shy"].update(speaking_rate=0.5), r"moods\.yaml: .*mood 'shy': speaking_rate: .*greater than or equal to 0\.7"),
    (lambda d: d["moods"]["angry"].update(speaking_rate="fast"), r"moods\.yaml: .*mood 'angry': speaking_rate"),
])
def test_mood_file_validation_names_file_mood_and_rate(mutate, message):
    doc = _mood_doc()
    mutate(doc)
    with pytest.raises(MoodConfigError, match=message):
        parse_moods(doc, source="configs/moods.yaml")


def test_a_bad_rate_in_a_mood_file_on_disk_names_that_file(tmp_path):
    import yaml

    doc = _mood_doc()
    doc["moods"]["bubbly"]["speaking_rate"] = 1.9
    path = tmp_path / "moods.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(MoodConfigError, match=rf"{path}: .*mood 'bubbly': speaking_rate"):
        load_moods(path)


def test_the_session_mood_sets_the_utterance_voice_and_an_explicit_request_wins(moods):
    sleepy = mood_voice(moods, "sleepy")
    assert sleepy.speaking_rate == moods["sleepy"].speaking_rate and sleepy.pitch_shift == moods["sleepy"].pitch_shift
    # a mood change between two utterances: the next one speaks in the new mood
    assert mood_voice(moods, "excited").speaking_rate == moods["excited"].speaking_rate != sleepy.speaking_rate
    explicit = mood_voice(moods, "sleepy", pitch_shift=1.0, speaking_rate=1.2)
    assert (explicit.pitch_shift, explicit.speaking_rate) == (1.0, 1.2)
    assert mood_voice(moods, "no-such-mood").speaking_rate == 1.0  # an unknown mood from the brain: neutral


def test_the_voice_protocol_carries_an_explicit_speaking_rate():
    request = parse_client_message('{"type": "say", "id": "s", "text": "Hi!", "speaking_rate": 1.2}')
    assert request.speaking_rate == 1.2
    assert parse_client_message('{"type": "say", "id": "s", "text": "Hi!"}').speaking_rate is None
    for bad in ("2.5", "0.1", '"fast"', "true"):
        with pytest.raises(ProtocolError, match="'speaking_rate' must be a finite number within 0.7..1.4"):
            parse_client_message('{"type": "say", "id": "s", "text": "Hi!", "speaking_rate": %s}' % bad)
    assert math.isfinite(request.speaking_rate)


# ------------------------------------------------------------------ openai-speech: `speed` or a local stretch

def _speech_server(bodies: list):
    """A real aiohttp speech server answering one 24 kHz float WAV of voiced audio; records each request body."""
    from aiohttp import web

    from tests.test_backends_openai_speech import float_wav

    t = np.arange(24_000) / 24_000
    voiced = (0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)

    async def speech(request):
        bodies.append(await request.json())
        return web.Response(body=float_wav(voiced), content_type="audio/wav")

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    return app, len(voiced)


@pytest.mark.parametrize("rate_control", ["server", "stretch"])
def test_openai_speech_sends_the_rate_as_speed_or_stretches_locally(rate_control):
    from aiohttp import web

    from graph.backends.tts.openai_speech import OpenAISpeechTTS
    from tests.conftest import free_port

    async def run():
        bodies: list = []
        app, native = _speech_server(bodies)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        tts = OpenAISpeechTTS(url=f"http://127.0.0.1:{port}", rate_control=rate_control)
        try:
            normal = [c async for c in tts.synthesize("Hi.", TTSOptions())]
            fast = [c async for c in tts.synthesize("Hi.", TTSOptions(speed=1.25))]
        finally:
            await tts.aclose()
            await runner.cleanup()
        return bodies, native, sum(len(c.samples) for c in normal), sum(len(c.samples) for c in fast)

    bodies, native, normal, fast = asyncio.run(run())
    assert "speed" not in bodies[0] and normal == native  # rate 1.0: nothing sent, nothing changed
    if rate_control == "server":
        assert bodies[1]["speed"] == 1.25 and fast == native  # the server's job (this one ignores it)
    else:
        assert "speed" not in bodies[1] and abs(fast - native / 1.25) <= 4


def test_openai_speech_refuses_an_unknown_rate_control():
    from graph.backends.tts.openai_speech import OpenAISpeechTTS

    with pytest.raises(ValueError, match="rate_control must be one of server, stretch"):
        OpenAISpeechTTS(url="http://127.0.0.1:9", rate_control="warp")
