"""Tiny models in the real on-disk formats of the production backends, built by the tests themselves.

Why: CI has no GPU, no model weights and no hub access, yet the backends' real loading code must run.
Each builder writes files of the exact format the real model ships in (a transformers directory plus
`decoder.pth` for Soprano; RVC's ONNX export signature; a GGUF file llama.cpp loads) with a few
thousand random or hand-set weights, so loading, streaming and shapes are exercised for real. The
same builders serve `benchmarks/backend_costs.py`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------------------------
# Soprano: a Qwen3 causal LM with hidden size 512 (what soprano's decoder consumes) + Vocos decoder.

SOPRANO_HIDDEN = 512
SOPRANO_TOKEN_SAMPLES = 2048  # audio samples per LM token at 32 kHz (soprano's TOKEN_SIZE)


def build_tiny_soprano(directory: Path, tokens_per_sentence: int = 10, seed: int = 0) -> Path:
    """Write a complete Soprano model directory whose LM speaks exactly `tokens_per_sentence` audio
    tokens per sentence and then stops (EOS), whatever the text.

    The LM is a 1-layer Qwen3 whose attention and MLP outputs are zeroed, so each step's hidden state
    is the (normalised) embedding of its input token; the LM head then encodes a fixed chain
    `[START] -> a0 -> a1 -> ... -> EOS`. That keeps generation deterministic and short (a random LM
    would babble for 512 tokens), while the decoder keeps random weights of the real shape.
    """
    import torch
    from soprano.vocos.decoder import SopranoDecoder
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"[PAD]": 0, "[UNK]": 1, "[STOP]": 2, "[TEXT]": 3, "[START]": 4}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"- ":
        vocab.setdefault(ch, len(vocab))
    chain = [f"<a{i}>" for i in range(tokens_per_sentence)]
    for name in chain:
        vocab[name] = len(vocab)
    assert len(vocab) <= SOPRANO_HIDDEN

    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"\[[A-Z]+\]|<a\d+>|."), behavior="isolated")
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="[STOP]",
        additional_special_tokens=["[TEXT]", "[START]", *chain],
    ).save_pretrained(directory)

    config = Qwen3Config(
        vocab_size=len(vocab),
        hidden_size=SOPRANO_HIDDEN,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        eos_token_id=vocab["[STOP]"],
        pad_token_id=vocab["[PAD]"],
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        embed = torch.zeros(len(vocab), SOPRANO_HIDDEN)
        embed[torch.arange(len(vocab)), torch.arange(len(vocab))] = 1.0
        model.model.embed_tokens.weight.copy_(embed)
        head = torch.zeros(len(vocab), SOPRANO_HIDDEN)
        successor = {vocab["[START]"]: vocab[chain[0]]}
        for here, there in zip(chain, chain[1:]):
            successor[vocab[here]] = vocab[there]
        successor[vocab[chain[-1]]] = vocab["[STOP]"]
        for token_id in range(len(vocab)):  # anything else (e.g. after EOS) also goes to EOS
            head[successor.get(token_id, vocab["[STOP]"]), token_id] = 1.0
        model.lm_head.weight.copy_(head)
    model.save_pretrained(directory)
    decoder = SopranoDecoder()
    torch.save(decoder.state_dict(), directory / "decoder.pth")
    return directory


# ----------------------------------------------------------------------------------------------
# RVC: content encoder (ContentVec/HuBERT ONNX) + synthesizer (RVC's ONNX export signature).

RVC_CONTENT_HOP = 320  # ContentVec: one frame per 320 samples at 16 kHz (50 Hz)


def build_tiny_rvc(directory: Path, sample_rate: int = 48_000, channels: int = 768, seed: int = 0) -> dict[str, Path]:
    """Write `content.onnx` and `synth.onnx` with the signatures of RVC's ONNX export:

    content encoder: `source` float32 [1, 1, N] at 16 kHz -> float32 [1, N // 320, channels]
    synthesizer:     phone float32 [1, T, channels], phone_lengths int64 [1], pitch int64 [1, T],
                     pitchf float32 [1, T], ds int64 [1], rnd float32 [1, 192, T]
                     -> audio float32 [1, 1, T * sample_rate // 100]

    The synthesizer's audio follows its inputs (a projection of `phone` and a sine at `pitchf`,
    upsampled to the model rate) so tests can check that pitch and content really reach the output.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hop_out = sample_rate // 100

    # Content encoder: frame the waveform (Reshape after cropping), project each frame to `channels`.
    w_content = rng.standard_normal((RVC_CONTENT_HOP, channels)).astype(np.float32) * 0.05
    content_graph = helper.make_graph(
        nodes=[
            helper.make_node("Shape", ["source"], ["shape"]),
            helper.make_node("Gather", ["shape", "axis2"], ["n"], axis=0),
            helper.make_node("Div", ["n", "hop"], ["frames"]),
            helper.make_node("Mul", ["frames", "hop"], ["usable"]),
            helper.make_node("Slice", ["source", "zero1", "usable1", "axis2_1"], ["cropped"]),
            helper.make_node("Unsqueeze", ["frames", "axis0"], ["frames1"]),
            helper.make_node("Concat", ["one1", "frames1", "hop1"], ["frame_shape"], axis=0),
            helper.make_node("Reshape", ["cropped", "frame_shape"], ["framed"]),
            helper.make_node("MatMul", ["framed", "w_content"], ["hidden"]),
            helper.make_node("Tanh", ["hidden"], ["features"]),
        ],
        name="tiny_contentvec",
        inputs=[helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 1, "n"])],
        outputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, "frames", channels])],
        initializer=[
            numpy_helper.from_array(np.array(2, dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array(RVC_CONTENT_HOP, dtype=np.int64), "hop"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero1"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2_1"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one1"),
            numpy_helper.from_array(np.array([RVC_CONTENT_HOP], dtype=np.int64), "hop1"),
            numpy_helper.from_array(w_content, "w_content"),
        ],
    )
    # "usable1" is usable as a 1-D tensor for Slice's `ends`.
    content_graph.node.insert(4, helper.make_node("Unsqueeze", ["usable", "axis0"], ["usable1"]))
    content = helper.make_model(content_graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(content)
    content_path = directory / "content.onnx"
    onnx.save(content, content_path)

    # Synthesizer: a sine whose instantaneous frequency is `pitchf` (phase accumulated with CumSum,
    # so it is continuous across frames), loudness from a projection of `phone`, plus a tiny share
    # of `rnd`; `pitch`, `ds` and `phone_lengths` are consumed (multiplied by 0) like a real graph's.
    w_phone = rng.standard_normal((channels, 1)).astype(np.float32) * 0.05
    synth_graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["phone", "w_phone"], ["loud_raw"]),  # [1, T, 1]
            helper.make_node("Tanh", ["loud_raw"], ["loud_t"]),
            helper.make_node("Mul", ["loud_t", "c005"], ["loud_s"]),
            helper.make_node("Add", ["loud_s", "c01"], ["loudness"]),
            helper.make_node("Mul", ["loudness", "ones_hop"], ["loud_up"]),  # [1, T, hop]
            helper.make_node("Reshape", ["loud_up", "flat"], ["loud_flat"]),
            helper.make_node("Unsqueeze", ["pitchf", "axis2"], ["f0"]),  # [1, T, 1]
            helper.make_node("Mul", ["f0", "ones_hop"], ["f0_up"]),
            helper.make_node("Reshape", ["f0_up", "flat"], ["f0_flat"]),
            helper.make_node("CumSum", ["f0_flat", "axis1_scalar"], ["f0_cum"]),
            helper.make_node("Mul", ["f0_cum", "two_pi_over_sr"], ["phase"]),
            helper.make_node("Sin", ["phase"], ["wave"]),
            helper.make_node("Mul", ["wave", "loud_flat"], ["voiced"]),
            helper.make_node("ReduceMean", ["rnd", "axis1"], ["noise_mean"], keepdims=1),  # [1, 1, T]
            helper.make_node("Transpose", ["noise_mean"], ["noise_t"], perm=[0, 2, 1]),  # [1, T, 1]
            helper.make_node("Mul", ["noise_t", "ones_hop"], ["noise_up"]),
            helper.make_node("Reshape", ["noise_up", "flat"], ["noise_flat"]),
            helper.make_node("Mul", ["noise_flat", "c0001"], ["noise"]),
            helper.make_node("Add", ["voiced", "noise"], ["mixed"]),
            helper.make_node("Cast", ["pitch"], ["pitch_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["pitch_f"], ["pitch_sum"], keepdims=0),
            helper.make_node("Cast", ["ds"], ["ds_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["ds_f"], ["ds_sum"], keepdims=0),
            helper.make_node("Cast", ["phone_lengths"], ["len_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["len_f"], ["len_sum"], keepdims=0),
            helper.make_node("Add", ["pitch_sum", "ds_sum"], ["aux1"]),
            helper.make_node("Add", ["aux1", "len_sum"], ["aux2"]),
            helper.make_node("Mul", ["aux2", "c0"], ["aux_zero"]),
            helper.make_node("Add", ["mixed", "aux_zero"], ["with_aux"]),
            helper.make_node("Reshape", ["with_aux", "out_shape"], ["audio"]),
        ],
        name="tiny_rvc_synth",
        inputs=[
            helper.make_tensor_value_info("phone", TensorProto.FLOAT, [1, "T", channels]),
            helper.make_tensor_value_info("phone_lengths", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("pitch", TensorProto.INT64, [1, "T"]),
            helper.make_tensor_value_info("pitchf", TensorProto.FLOAT, [1, "T"]),
            helper.make_tensor_value_info("ds", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("rnd", TensorProto.FLOAT, [1, 192, "T"]),
        ],
        outputs=[helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 1, "samples"])],
        initializer=[
            numpy_helper.from_array(w_phone, "w_phone"),
            numpy_helper.from_array(np.ones((1, 1, hop_out), dtype=np.float32), "ones_hop"),
            numpy_helper.from_array(np.array(2 * np.pi / sample_rate, dtype=np.float32), "two_pi_over_sr"),
            numpy_helper.from_array(np.array(0.05, dtype=np.float32), "c005"),
            numpy_helper.from_array(np.array(0.1, dtype=np.float32), "c01"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "c0"),
            numpy_helper.from_array(np.array(0.001, dtype=np.float32), "c0001"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "axis1_scalar"),
            numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "flat"),
            numpy_helper.from_array(np.array([1, 1, -1], dtype=np.int64), "out_shape"),
        ],
    )
    synth = helper.make_model(synth_graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(synth)
    synth_path = directory / "synth.onnx"
    onnx.save(synth, synth_path)
    return {"content": content_path, "synth": synth_path}


# ----------------------------------------------------------------------------------------------
# GGUF: a tiny llama model that llama.cpp (llama-cpp-python and its server) loads.

TINY_GGUF_WORDS = ["hello", "world", "miku", "sings", "today", "the", "song", "is", "bright", "blue"]


def build_tiny_gguf(path: Path, seed: int = 0, n_layer: int = 1, n_embd: int = 32, n_ctx: int = 256) -> Path:
    """Write a random 1-layer llama model in GGUF with a small word-level-ish SPM vocabulary.

    Random weights babble, but deterministically for a seed; what matters is that llama.cpp parses the
    file, builds the graph, tokenizes, samples and detokenizes through the real code paths.
    """
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    # Byte fallback tokens let any text tokenize.
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(gguf.TokenType.BYTE)
    for word in TINY_GGUF_WORDS:
        for piece in (f"\u2581{word}", word):
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    for ch in "abcdefghijklmnopqrstuvwxyz.,!?":
        for piece in (ch, f"\u2581{ch}"):
            if piece not in tokens:
                tokens.append(piece)
                types.append(gguf.TokenType.NORMAL)
    tokens.append("\u2581")
    types.append(gguf.TokenType.NORMAL)
    n_vocab = len(tokens)
    scores = [0.0, 0.0, 0.0] + [-1000.0] * 256 + [-float(len(t)) for t in tokens[259:]]
    scores = [-s if i >= 259 else s for i, s in enumerate(scores)]  # longer pieces score higher

    n_head = 2
    n_ff = 64
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("miku-tiny-test")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    # A chat template so llama-cpp-python's server can serve /v1/chat/completions.
    writer.add_chat_template(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    )

    def tensor(name: str, *shape: int, scale: float = 0.2) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("token_embd.weight", n_vocab, n_embd)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    tensor("output.weight", n_vocab, n_embd, scale=1.0)
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        tensor(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        tensor(f"blk.{i}.attn_k.weight", n_embd, n_embd)
        tensor(f"blk.{i}.attn_v.weight", n_embd, n_embd)
        tensor(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def cached_tiny_soprano(tokens_per_sentence: int = 10) -> Path:
    """The tiny Soprano directory, built once per machine and shared by test modules and benchmarks
    (building writes the 120 MB decoder state dict, so it is worth reusing). Built in a scratch
    directory and renamed into place, so a half-written model is never picked up."""
    import os
    import shutil
    import tempfile

    root = Path(tempfile.gettempdir()) / "miku-tiny-models"
    target = root / f"soprano-v1-{tokens_per_sentence}"
    if (target / "decoder.pth").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="soprano-build-", dir=root))
    build_tiny_soprano(scratch, tokens_per_sentence=tokens_per_sentence)
    try:
        os.rename(scratch, target)
    except OSError:  # another process won the race; use its copy
        shutil.rmtree(scratch, ignore_errors=True)
    return target
