"""The `rvc-onnx` VC backend's real onnxruntime code on tiny ONNX graphs with RVC's export signature."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from onnx import TensorProto, helper

from graph.backends import create_backend
from graph.backends.vc.rvc_onnx import (
    RVCContext,
    RVCOnnxVC,
    coarse_pitch,
    resolve_providers,
)
from graph.voice.types import AudioChunk, StageError, VCOptions
from tests.tiny_models import build_tiny_rvc


@pytest.fixture(scope="module")
def rvc_files(tmp_path_factory):
    return build_tiny_rvc(tmp_path_factory.mktemp("rvc48"), sample_rate=48_000)


def make_backend(files, **options) -> RVCOnnxVC:
    return create_backend(
        "vc",
        {"backend": "rvc-onnx", "model_path": str(files["synth"]), "content_encoder_path": str(files["content"]), "seed": 0, **options},
    )


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


async def convert_in_pieces(backend, audio: np.ndarray, rate: int, pieces: int, pitch_shift=None):
    context, out = None, []
    for piece in np.array_split(audio, pieces):
        result = await backend.convert(AudioChunk(piece, rate), VCOptions(pitch_shift=pitch_shift), context)
        context = result.context
        out.append(result.audio)
    end = await backend.convert(AudioChunk(np.zeros(0, np.float32), rate), VCOptions(), context)
    out.append(end.audio)
    return out, end.context


async def test_loads_measures_the_model_rate_and_reports_providers(rvc_files):
    backend = make_backend(rvc_files)
    await backend.warmup()
    info = backend.describe()
    assert info["sample_rate"] == 48_000
    assert info["content_channels"] == 768
    assert info["active_providers"] == ["CPUExecutionProvider"]
    assert info["load_s"] > 0


async def test_a_40k_model_is_detected_and_a_wrong_configured_rate_is_refused(tmp_path):
    files = build_tiny_rvc(tmp_path, sample_rate=40_000, channels=256)
    backend = make_backend(files)
    await backend.warmup()
    assert backend.describe()["sample_rate"] == 40_000
    assert backend.describe()["content_channels"] == 256
    with pytest.raises(ValueError, match="40000 Hz"):
        await make_backend(files, sample_rate=48_000).warmup()


@pytest.mark.parametrize("shift, expected_hz", [(0, 220.0), (12, 440.0), (-12, 110.0), (7, 220 * 2 ** (7 / 12))])
async def test_pitch_shift_reaches_the_output(rvc_files, shift, expected_hz):
    backend = make_backend(rvc_files, pitch_shift=0)
    result = await backend.convert(AudioChunk(sine(220, 1.0, 32_000), 32_000), VCOptions(pitch_shift=shift), None)
    assert result.audio.sample_rate == 48_000
    measured = dominant_hz(result.audio.samples[4800:-4800], 48_000)
    assert abs(measured - expected_hz) < expected_hz * 0.03


async def test_configured_default_shift_applies_when_options_leave_it_open(rvc_files):
    backend = make_backend(rvc_files, pitch_shift=12)
    result = await backend.convert(AudioChunk(sine(200, 1.0, 48_000), 48_000), VCOptions(), None)
    assert abs(dominant_hz(result.audio.samples[4800:-4800], 48_000) - 400) < 12


async def test_chunked_conversion_keeps_length_and_joins_do_not_click(rvc_files):
    backend = make_backend(rvc_files, crossfade_ms=20, sola_search_ms=10, context_ms=300)
    audio = sine(220, 2.0, 32_000)
    pieces, final_context = await convert_in_pieces(backend, audio, 32_000, pieces=8, pitch_shift=0)
    joined = np.concatenate([p.samples for p in pieces])
    # Each join may move by at most the SOLA search window; nothing else is lost or added.
    assert 2.0 * 48_000 - 8 * 480 <= len(joined) <= 2.0 * 48_000
    # A continuous sine: the largest sample-to-sample step anywhere (joins included) stays that of the
    # sine itself. Without context + SOLA crossfade the restarted phase at each join jumps far more.
    body = np.abs(np.diff(pieces[0].samples))
    steps = np.abs(np.diff(joined[: -len(pieces[-1].samples)]))
    assert steps.max() <= body.max() * 1.5
    assert final_context.tail.size == 0  # the empty chunk released the held-back tail
    assert len(pieces[-1].samples) == 960  # 20 ms at 48 kHz


async def test_without_the_join_handling_the_same_input_clicks(rvc_files):
    """The check above can fail: converting the pieces independently (no context) does click."""
    backend = make_backend(rvc_files)
    audio = sine(220, 2.0, 32_000)
    separate = [
        (await backend.convert(AudioChunk(piece, 32_000), VCOptions(pitch_shift=0), None)).audio.samples
        for piece in np.array_split(audio, 8)
    ]
    body = np.abs(np.diff(separate[0]))
    assert np.abs(np.diff(np.concatenate(separate))).max() > body.max() * 1.5


async def test_context_is_picklable_for_ray_and_a_foreign_context_starts_fresh(rvc_files):
    backend = make_backend(rvc_files)
    result = await backend.convert(AudioChunk(sine(220, 0.25, 32_000), 32_000), VCOptions(), None)
    restored = pickle.loads(pickle.dumps(result.context))
    assert isinstance(restored, RVCContext) and restored.chunks == 1
    assert len(restored.history) > 0 and len(restored.tail) == 960
    fresh = await backend.convert(AudioChunk(sine(220, 0.25, 32_000), 32_000), VCOptions(), {"other": "backend"})
    assert fresh.context.chunks == 1


async def test_bad_input_audio_is_a_stage_error(rvc_files):
    backend = make_backend(rvc_files)
    bad = sine(220, 0.2, 32_000)
    bad[10] = np.nan
    with pytest.raises(StageError, match="NaN"):
        await backend.convert(AudioChunk(bad, 32_000), VCOptions(), None)


def test_missing_files_and_unknown_providers_fail_at_startup(rvc_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path"):
        make_backend({"synth": tmp_path / "missing.onnx", "content": rvc_files["content"]})
    with pytest.raises(FileNotFoundError, match="content_encoder_path"):
        make_backend({"synth": rvc_files["synth"], "content": tmp_path / "missing.onnx"})
    with pytest.raises(ValueError, match="ROCMExecutionProvider"):
        make_backend(rvc_files, providers="rocm")
    with pytest.raises(ValueError, match="f0_method"):
        make_backend(rvc_files, f0_method="crepe")
    assert resolve_providers(["cuda", "cpu"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert resolve_providers("migraphx", ["MIGraphXExecutionProvider", "CPUExecutionProvider"])[0] == "MIGraphXExecutionProvider"


async def test_a_synthesizer_without_rvc_signature_is_refused(rvc_files, tmp_path):
    import onnx

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "not_rvc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "not_rvc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    backend = make_backend({"synth": path, "content": rvc_files["content"]})
    with pytest.raises(ValueError, match="phone_lengths"):
        await backend.warmup()


def test_coarse_pitch_matches_rvc_bins():
    bins = coarse_pitch(np.array([0.0, 50.0, 1100.0, 5000.0, 220.0]))
    assert list(bins[:4]) == [1, 1, 255, 255]
    assert 1 < bins[4] < 255


@pytest.mark.parametrize("base, offset, expected_hz", [(12, -12, 220.0), (5, 7, 440.0), (7, None, 220 * 2 ** (7 / 12))])
async def test_the_requests_shift_is_added_to_the_configured_base_shift(rvc_files, base, offset, expected_hz):
    """A mood's pitch_shift nudges her voice from its base; it must never replace the base."""
    backend = make_backend(rvc_files, pitch_shift=base)
    result = await backend.convert(AudioChunk(sine(220, 1.0, 32_000), 32_000), VCOptions(pitch_shift=offset), None)
    measured = dominant_hz(result.audio.samples[4800:-4800], 48_000)
    assert abs(measured - expected_hz) < expected_hz * 0.03
