"""The STT backends' real loading code: faster-whisper on a tiny random Whisper converted here (transformers
-> ctranslate2's TransformersConverter), whisper-cpp's refusals of files whisper.cpp would abort on, and
openai-transcriptions against a protocol server that transcribes for real (tests/support)."""
from pathlib import Path

import numpy as np
import pytest

from graph.backends.base import create_backend
from graph.listen.audio_in import espeak_16k, silence
from graph.listen.types import STTOptions, Transcript
from graph.voice.types import StageError
from tests.support.transcription_server import TranscriptionProtocolServer

WORDS = ["hello", "miku", "leave", "stop", "be", "quiet", "song", "sing", "a", "the", "you"]
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>", "<|startoflm|>",
            "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"] + [f"<|{i * 0.02:.2f}|>" for i in range(1501)]


def build_tiny_whisper(root: Path) -> Path:
    """A random 1-layer Whisper with a small word-level vocabulary, saved by transformers and converted by
    CTranslate2 exactly as a real one is (`ct2-transformers-converter --copy_files tokenizer.json`)."""
    import ctranslate2
    import tokenizers
    import torch
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

    hf, out = root / "whisper-hf", root / "whisper-ct2"
    hf.mkdir(parents=True)
    vocab = {token: index for index, token in enumerate(WORDS + SPECIALS)}
    tokenizer = tokenizers.Tokenizer(WordLevel(vocab, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.save(str(hf / "tokenizer.json"))
    torch.manual_seed(0)
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(vocab), num_mel_bins=80, d_model=64, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot, suppress_tokens=[], begin_suppress_tokens=[])
    WhisperForConditionalGeneration(config).save_pretrained(hf)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", unk_token="<|endoftext|>").save_pretrained(hf)
    ctranslate2.converters.TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(str(out), force=True)
    return out


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return build_tiny_whisper(tmp_path_factory.mktemp("stt"))


async def test_faster_whisper_loads_and_runs_a_converted_model(tiny_whisper):
    backend = create_backend("stt", {"backend": "faster-whisper", "model_path": str(tiny_whisper),
                                     "compute_type": "float32", "max_new_tokens": 8})
    assert backend.describe()["model"] == str(tiny_whisper)
    await backend.warmup()
    transcript = await backend.transcribe(espeak_16k("Miku, leave."), STTOptions())
    assert isinstance(transcript, Transcript) and transcript.backend == "faster-whisper"
    assert isinstance(transcript.text, str) and transcript.audio_s > 0.5
    # a random model's words are any of its vocabulary, never anything it does not have
    assert set(transcript.text.split()) <= set(WORDS)
    await backend.aclose()


def test_faster_whisper_refuses_what_it_would_download(tmp_path, tiny_whisper):
    with pytest.raises(FileNotFoundError, match="no model.bin"):
        create_backend("stt", {"backend": "faster-whisper", "model_path": str(tmp_path)})
    copy = tmp_path / "no-tokenizer"
    copy.mkdir()
    for name in ("model.bin", "config.json", "vocabulary.json"):
        (copy / name).write_bytes((tiny_whisper / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        create_backend("stt", {"backend": "faster-whisper", "model_path": str(copy)})


def test_whisper_cpp_refuses_files_whisper_cpp_would_abort_on(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        create_backend("stt", {"backend": "whisper-cpp", "model_path": "tiny.en"})  # a name, not a file
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="bad magic"):
        create_backend("stt", {"backend": "whisper-cpp", "model_path": str(garbage)})
    implausible = tmp_path / "implausible.bin"
    implausible.write_bytes((0x67676D6C).to_bytes(4, "little") + (1).to_bytes(4, "little", signed=True) * 9
                            + (80).to_bytes(4, "little") + (555).to_bytes(4, "little") + b"\0" * 64)
    with pytest.raises(ValueError, match="implausible"):
        create_backend("stt", {"backend": "whisper-cpp", "model_path": str(implausible)})
    # a well-formed ggml file whose tensors do not match its header: whisper.cpp only logs the failure
    # (its context would then crash the process on the first call); the backend refuses it
    wrong = tmp_path / "wrong-shapes.bin"
    write_tiny_ggml(wrong, header_state=128)
    with pytest.raises(ValueError, match="could not load"):
        create_backend("stt", {"backend": "whisper-cpp", "model_path": str(wrong)})


def write_tiny_ggml(path: Path, header_state: int = 64) -> Path:
    """A random whisper.cpp ggml file (whisper.cpp's own layout: hparams, mel filters, vocab, named
    tensors; matrices f16) from a transformers Whisper, tensors renamed to OpenAI's names."""
    import struct

    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    from transformers.audio_utils import mel_filter_bank

    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=64, encoder_layers=4, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=256,
                           decoder_ffn_dim=256, max_source_positions=1500, max_target_positions=448)
    model = WhisperForConditionalGeneration(config)
    in_layer = {"self_attn.k_proj": "attn.key", "self_attn.q_proj": "attn.query", "self_attn.v_proj": "attn.value",
                "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln", "encoder_attn.k_proj": "cross_attn.key",
                "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.v_proj": "cross_attn.value",
                "encoder_attn.out_proj": "cross_attn.out", "encoder_attn_layer_norm": "cross_attn_ln",
                "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln"}
    top = {"encoder.layer_norm": "encoder.ln_post", "decoder.layer_norm": "decoder.ln",
           "decoder.embed_tokens": "decoder.token_embedding"}
    keep_f32 = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding"}
    with open(path, "wb") as out:
        out.write(struct.pack("<12i", 0x67676D6C, 51864, 1500, header_state, 2, 4, 448, 64, 2, 1, 80, 1))
        filters = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                                  sampling_rate=16000, norm="slaney", mel_scale="slaney").T.astype(np.float32)
        out.write(struct.pack("<ii", *filters.shape) + filters.tobytes())
        words = [b" ", b"hello", b" miku", b" leave", b" stop"]  # whisper.cpp looks " " up (suppress_blank)
        out.write(struct.pack("<i", len(words)) + b"".join(struct.pack("<i", len(w)) + w for w in words))
        for hf_name, tensor in model.state_dict().items():
            if hf_name == "proj_out.weight":
                continue
            parts = hf_name.split(".")[1:]
            if parts[1] == "layers":
                name = ".".join([parts[0], "blocks", parts[2], in_layer[".".join(parts[3:-1])], parts[-1]])
            elif parts[1] == "embed_positions":
                name = f"{parts[0]}.positional_embedding"
            else:
                stem = ".".join(parts[:-1])
                name = f"{top[stem]}.{parts[-1]}" if stem in top else ".".join(parts)
            data = tensor.squeeze().numpy().astype(np.float32)
            if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                data = data.reshape(-1, 1)
            half = data.ndim >= 2 and name not in keep_f32
            data = np.ascontiguousarray(data.astype(np.float16) if half else data)
            encoded = name.encode()
            out.write(struct.pack("<iii", data.ndim, len(encoded), int(half)))
            out.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)) + encoded + data.tobytes())
    return path


async def test_whisper_cpp_loads_and_runs_a_ggml_file(tmp_path):
    """The loading and transcription code on a real ggml file (random weights, so no real words)."""
    path = write_tiny_ggml(tmp_path / "ggml-tiny-random.bin")
    backend = create_backend("stt", {"backend": "whisper-cpp", "model_path": str(path), "threads": 1})
    assert backend.describe() == {"backend": "whisper-cpp", "model": str(path), "threads": 1}
    assert backend.hparams["n_vocab"] == 51864 and backend.hparams["n_audio_layer"] == 4
    transcript = await backend.transcribe(np.concatenate([espeak_16k("Miku, leave."), silence(0.3)]), STTOptions())
    assert isinstance(transcript, Transcript) and transcript.backend == "whisper-cpp"
    assert isinstance(transcript.text, str) and transcript.audio_s > 0.5
    await backend.aclose()


@pytest.fixture(scope="module")
def transcription_server():
    server = TranscriptionProtocolServer().start()
    yield server
    server.stop()


async def test_openai_transcriptions_posts_the_turn_and_reads_the_text(transcription_server):
    backend = create_backend("stt", {"backend": "openai-transcriptions", "url": transcription_server.url + "/v1",
                                     "model": "Systran/faster-whisper-small.en", "api_key": "k-123"})
    await backend.probe()
    transcript = await backend.transcribe(np.concatenate([espeak_16k("Can you sing a song for me?"), silence(0.2)]),
                                          STTOptions())
    assert "song" in transcript.text.split() and transcript.backend == "openai-transcriptions"
    sent = transcription_server.requests[-1]
    assert sent["file"] == "<file>" and sent["model"] == "Systran/faster-whisper-small.en"
    assert sent["response_format"] == "json" and sent["language"] == "en" and sent["authorization"] == "Bearer k-123"
    await backend.aclose()


async def test_openai_transcriptions_failures_are_stage_errors(transcription_server):
    backend = create_backend("stt", {"backend": "openai-transcriptions", "url": transcription_server.url})
    transcription_server.fail_with = 500
    try:
        with pytest.raises(StageError, match="HTTP 500.*model crashed"):
            await backend.transcribe(silence(0.5), STTOptions())
    finally:
        transcription_server.fail_with = None
    await backend.aclose()
    gone = create_backend("stt", {"backend": "openai-transcriptions", "url": "http://127.0.0.1:9", "connect_timeout_s": 2})
    with pytest.raises(StageError, match="cannot reach"):
        await gone.transcribe(silence(0.5), STTOptions())
    with pytest.raises(StageError, match="down"):
        await gone.probe()
    await gone.aclose()
    with pytest.raises(ValueError, match="http"):
        create_backend("stt", {"backend": "openai-transcriptions", "url": "ftp://x"})
