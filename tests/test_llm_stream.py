"""SSE decoding and LLM stream parsing on the real wire formats, cut at every byte."""
from __future__ import annotations

import json
import random

import pytest

from graph.voice.llm_stream import (
    LLMStreamError,
    LLMStreamParser,
    SSEDecoder,
    StreamEventKind,
    StreamFormat,
)


def sse(*payloads, eol: str = "\n") -> bytes:
    """Frame payloads as the servers do: `data: <json>` + blank line."""
    out = []
    for p in payloads:
        body = p if isinstance(p, str) else json.dumps(p, ensure_ascii=False)
        out.append(f"data: {body}{eol}{eol}")
    return "".join(out).encode()


def chat_chunk(delta: dict, finish_reason=None, **extra) -> dict:
    # Shape of llama.cpp server / llama-swap / OpenAI chat.completion.chunk
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1735000000,
        "model": "qwen2.5-7b-instruct",
        "system_fingerprint": "b4500-adc5dd92",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    }


CHAT_TOKENS = ["Hi", " there", "! ", "ミク", "です", " 🎤", "."]
CHAT_STREAM = sse(
    chat_chunk({"role": "assistant", "content": None}),
    chat_chunk({"reasoning_content": "The user greets me."}),
    chat_chunk({"reasoning_content": " Answer briefly."}),
    *[chat_chunk({"content": t}) for t in CHAT_TOKENS],
    chat_chunk({}, finish_reason="stop"),
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1735000000,
        "model": "qwen2.5-7b-instruct",
        "choices": [],
        "usage": {"completion_tokens": 7, "prompt_tokens": 12, "total_tokens": 19},
    },
    "[DONE]",
)

COMPLETION_TOKENS = ["Once", " upon", " a", " time", ", «", "naïve", "»"]
COMPLETIONS_STREAM = sse(
    *[
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1735000000,
            "model": "llama",
            "choices": [{"text": t, "index": 0, "logprobs": None, "finish_reason": None}],
        }
        for t in COMPLETION_TOKENS
    ],
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1735000000,
        "model": "llama",
        "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}],
    },
    "[DONE]",
)

LLAMACPP_TOKENS = [" Hello", ",", " world", " — ", "世界", "!"]
LLAMACPP_STREAM = sse(
    *[
        {"index": 0, "content": t, "tokens": [], "stop": False, "id_slot": -1,
         "tokens_predicted": i + 1, "tokens_evaluated": 6}
        for i, t in enumerate(LLAMACPP_TOKENS)
    ],
    {
        "index": 0, "content": "", "tokens": [], "id_slot": 0, "stop": True, "model": "gpt-3.5-turbo",
        "tokens_predicted": 6, "tokens_evaluated": 6, "stop_type": "eos", "stopping_word": "",
        "tokens_cached": 11, "truncated": False,
        "timings": {"prompt_n": 6, "prompt_ms": 21.3, "predicted_n": 6, "predicted_ms": 80.1},
    },
)

STREAMS = {
    "openai-chat": (CHAT_STREAM, CHAT_TOKENS),
    "openai-completions": (COMPLETIONS_STREAM, COMPLETION_TOKENS),
    "llamacpp": (LLAMACPP_STREAM, LLAMACPP_TOKENS),
}


def run(fmt: str, pieces: list[bytes]) -> tuple[list[str], LLMStreamParser]:
    parser = LLMStreamParser(fmt)
    tokens: list[str] = []
    for piece in pieces:
        tokens += parser.feed(piece)
    tokens += parser.close()
    return tokens, parser


def with_eol(stream: bytes, eol: str) -> bytes:
    return stream.replace(b"\n", eol.encode())


# --- whole streams ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", STREAMS)
@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_real_stream_in_one_piece(fmt, eol):
    stream, expected = STREAMS[fmt]
    tokens, parser = run(fmt, [with_eol(stream, eol)])
    assert tokens == expected
    assert parser.done
    assert parser.problem_count == 0, parser.problems


def test_chat_metadata():
    tokens, parser = run("openai-chat", [CHAT_STREAM])
    assert parser.finish_reason == "stop"
    assert parser.reasoning_chars == len("The user greets me. Answer briefly.")
    assert parser.tokens == len(CHAT_TOKENS)
    assert "greets" not in "".join(tokens)


# --- arbitrary cuts --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", STREAMS)
@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_cut_at_every_byte_gives_same_tokens(fmt, eol):
    stream, expected = STREAMS[fmt]
    stream = with_eol(stream, eol)
    for cut in range(len(stream) + 1):
        tokens, parser = run(fmt, [stream[:cut], stream[cut:]])
        assert "".join(tokens) == "".join(expected), cut
        assert tokens == expected, cut
        assert parser.done and parser.problem_count == 0, (cut, parser.problems)


@pytest.mark.parametrize("fmt", STREAMS)
def test_byte_by_byte_and_random_pieces(fmt):
    stream, expected = STREAMS[fmt]
    assert run(fmt, [stream[i : i + 1] for i in range(len(stream))])[0] == expected
    rng = random.Random(fmt)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 30)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        assert run(fmt, pieces)[0] == expected


@pytest.mark.parametrize("fmt", STREAMS)
def test_stream_cut_mid_line_is_reported_not_dropped_or_crashing(fmt):
    stream, expected = STREAMS[fmt]
    complete_at = len(stream)
    for end in range(len(stream)):
        tokens, parser = run(fmt, [stream[:end]])
        # Whatever arrived is a clean prefix of the real tokens: nothing invented or garbled.
        assert tokens == expected[: len(tokens)], end
        if not parser.done:
            assert parser.problem_count >= 1, end
            assert any("end marker" in p for p in parser.problems)
    # A cut inside a JSON line names it as such.
    line_end = stream.index(b"\n\n", 40)
    tokens, parser = run(fmt, [stream[: line_end - 5]])
    assert any("cut mid-line" in p for p in parser.problems), parser.problems
    assert run(fmt, [stream[:complete_at]])[1].problem_count == 0


def test_complete_json_without_trailing_blank_line_still_counts():
    body = sse({"content": "a", "stop": False}, {"content": "b", "stop": True}).rstrip(b"\n")
    tokens, parser = run("llamacpp", [body])
    assert tokens == ["a", "b"] and parser.done and parser.problem_count == 0


# --- tolerated problems ----------------------------------------------------------------------------


def test_malformed_json_is_counted_and_the_stream_goes_on():
    body = (
        sse(chat_chunk({"content": "one"}))
        + b'data: {"choices": [{"delta": {"content": "tw\n\n'
        + b"data: not json at all\n\n"
        + sse(chat_chunk({"content": " two"}), "[DONE]")
    )
    tokens, parser = run("openai-chat", [body])
    assert tokens == ["one", " two"]
    assert parser.done
    assert parser.problem_count == 2
    assert all("malformed JSON" in p for p in parser.problems)


def test_keepalive_comments_event_and_id_fields_are_ignored_for_tokens():
    body = (
        b": keep-alive\n\n"
        + b"event: message\nid: 7\nretry: 1000\n"
        + sse(chat_chunk({"content": "ok"}))
        + b": ping\n\n"
        + sse("[DONE]")
    )
    tokens, parser = run("openai-chat", [body])
    assert tokens == ["ok"] and parser.done and parser.problem_count == 0


def test_data_after_done_and_odd_shapes_are_reported():
    body = sse(
        chat_chunk({"content": 5}),
        {"object": "chat.completion.chunk"},
        [1, 2],
        chat_chunk({"content": "x"}),
        "[DONE]",
        chat_chunk({"content": "late"}),
    )
    tokens, parser = run("openai-chat", [body])
    assert tokens == ["x"]
    assert parser.problem_count == 4
    assert "after end" in parser.problems[-1]


def test_unknown_sse_field_is_reported():
    tokens, parser = run("openai-chat", [b"<html>bad gateway</html>\n\n"])
    assert tokens == [] and not parser.done
    assert parser.problem_count == 2  # the odd field, then the missing end marker


def test_finish_reason_without_done_line_ends_cleanly():
    tokens, parser = run("openai-chat", [sse(chat_chunk({"content": "a"}), chat_chunk({}, "length"))])
    assert tokens == ["a"] and parser.done and parser.finish_reason == "length"
    assert parser.problem_count == 0


def test_only_choice_zero_is_spoken():
    two = chat_chunk({"content": "B"})
    two["choices"][0]["index"] = 1
    tokens, _ = run("openai-chat", [sse(chat_chunk({"content": "A"}), two, "[DONE]")])
    assert tokens == ["A"]


def test_llamacpp_newline_delimited_json():
    body = b'{"content":"Hel","stop":false}\n{"content":"lo","stop":false}\n{"content":"","stop":true}\n'
    tokens, parser = run("llamacpp", [body[:7], body[7:33], body[33:]])
    assert tokens == ["Hel", "lo"] and parser.done and parser.problem_count == 0


def test_feed_events_kinds():
    parser = LLMStreamParser(StreamFormat.OPENAI_CHAT)
    events = parser.feed_events(sse(chat_chunk({"content": "a"}), "oops", "[DONE]"))
    assert [e.kind for e in events] == [StreamEventKind.TOKEN, StreamEventKind.PROBLEM, StreamEventKind.DONE]
    assert parser.close_events() == []


# --- server errors ---------------------------------------------------------------------------------


def test_openai_error_object_raises_with_tokens_kept():
    body = sse(
        chat_chunk({"content": "partial"}),
        {"error": {"message": "model overloaded", "type": "server_error", "code": 503}},
    )
    parser = LLMStreamParser("openai-chat")
    with pytest.raises(LLMStreamError) as info:
        parser.feed(body)
    assert info.value.message == "model overloaded"
    assert info.value.code == 503 and info.value.error_type == "server_error"
    assert info.value.tokens_before == ["partial"]
    assert parser.feed(sse(chat_chunk({"content": "more"}))) == []  # failed streams stay failed


def test_llamacpp_error_field_raises():
    # llama.cpp's server_sent_event(sink, "error", ...) writes a non-standard `error:` field.
    body = (
        b'error: {"code":400,"message":"the request exceeds the available context size, '
        b'try increasing it","type":"exceed_context_size_error"}\n\n'
    )
    parser = LLMStreamParser("llamacpp")
    with pytest.raises(LLMStreamError, match="exceeds the available context") as info:
        for i in range(len(body)):
            parser.feed(body[i : i + 1])
    assert info.value.code == 400


def test_error_event_type_raises():
    body = b'event: error\ndata: {"error": {"message": "upstream timeout"}}\n\n'
    with pytest.raises(LLMStreamError, match="upstream timeout"):
        LLMStreamParser("openai-completions").feed(body)


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError):
        LLMStreamParser("anthropic")


# --- the SSE decoder itself ------------------------------------------------------------------------


def test_sse_multiline_data_fields_and_line_endings():
    body = b"event: update\r\nid: 42\rdata: first\ndata:second\r\ndata:  third\n\nretry: 250\ndata: x\n\n"
    events = SSEDecoder().feed(body)
    assert [e.data for e in events] == ["first\nsecond\n third", "x"]
    assert events[0].event == "update" and events[0].id == "42"
    assert events[1].event == "message" and events[1].retry == 250


def test_sse_crlf_split_between_feeds_is_one_line_end():
    dec = SSEDecoder()
    events = dec.feed(b"data: a\r") + dec.feed(b"\ndata: b\r") + dec.feed(b"\n\r\n")
    assert [e.data for e in events] == ["a\nb"]


def test_sse_utf8_split_and_invalid_bytes():
    text = "data: ミク🎤\n\n".encode()
    dec = SSEDecoder()
    events = []
    for i in range(len(text)):
        events += dec.feed(text[i : i + 1])
    assert [e.data for e in events] == ["ミク🎤"]
    bad = SSEDecoder().feed(b"data: \xff\xfeok\n\n")
    assert bad[0].data == "\ufffd\ufffdok"


def test_sse_close_reports_incomplete_line_and_event():
    dec = SSEDecoder()
    first = dec.feed(b"\xef\xbb\xbf: hi\n\ndata: one\n\ndata: tw")
    assert [e.data for e in first] == ["one"] and dec.comments == 1 and dec.pending
    last = dec.close()
    assert [(e.data, e.complete) for e in last] == [("tw", False)]
    assert dec.close() == []
    with pytest.raises(RuntimeError):
        dec.feed(b"x")


def test_sse_truncated_utf8_at_close_is_replaced_not_raised():
    dec = SSEDecoder()
    dec.feed("data: ミ".encode()[:-1])
    (event,) = dec.close()
    assert event.data == "\ufffd" and not event.complete
