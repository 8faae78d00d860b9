"""The /v1/voice wire protocol: every kind of bad input gets a clear error."""
import json

import pytest

from graph.voice.pipeline import UtteranceMode
from graph.voice.protocol import (
    InterruptRequest,
    ProtocolError,
    json_depth,
    parse_client_message,
    parse_json_message,
    parse_pitch_shift,
    sanitize_text,
)


def msg(**fields) -> str:
    return json.dumps(fields)


def test_prompt_and_say_parse():
    request = parse_client_message(msg(type="prompt", id="a1", text="Hello there", session_id="s"))
    assert request.mode is UtteranceMode.PROMPT and request.text == "Hello there" and request.session_id == "s"
    assert parse_client_message(msg(type="say", id="b", text="Hi")).mode is UtteranceMode.SAY
    assert isinstance(parse_client_message(msg(type="interrupt")), InterruptRequest)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (msg(type="sing", id="x", text="la"), "unknown message type"),
        (msg(type="say", text="no id"), "'id'"),
        (msg(type="say", id="", text="blank id"), "'id'"),
        (msg(type="say", id="x" * 200, text="long id"), "'id'"),
        (msg(type="say", id="x", text=5), "'text' must be a string"),
        (msg(type="say", id="x", text="   \n\t "), "empty"),
        (msg(type="say", id="x", text="\x00\x01\x02"), "empty"),
        (msg(type="say", id="x", text="a" * 4001), "too long: 4001"),
        (msg(type="say", id="x", text="hi", pitch_shift="up"), "pitch_shift"),
        (msg(type="say", id="x", text="hi", pitch_shift=99), "pitch_shift"),
        (msg(type="say", id="x", text="hi", session_id=3), "session_id"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(raw, fragment):
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(raw)
    assert fragment in caught.value.message


def test_error_keeps_the_request_id_when_there_is_one():
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(msg(type="say", id="keep-me", text=""))
    assert caught.value.request_id == "keep-me"


def test_limit_is_configurable_and_counts_after_cleaning():
    assert parse_client_message(msg(type="say", id="x", text="a" * 50 + "\x00" * 20), max_text_chars=50).text == "a" * 50
    with pytest.raises(ProtocolError):
        parse_client_message(msg(type="say", id="x", text="a" * 51), max_text_chars=50)


def test_control_characters_and_invalid_utf8_are_removed():
    assert sanitize_text("he\x00llo\x07 wo\u202erld\ufeff") == "hello world"
    assert sanitize_text("line one\nline two\ttab") == "line one\nline two tab"
    raw = b'{"type": "say", "id": "u", "text": "caf\xc3\xa9 \xff\xfe ok"}'
    assert parse_client_message(raw).text == "café  ok"


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("[" * 1000 + "]" * 1000, "nests deeper"),
        ('{"a":' * 1000 + "1" + "}" * 1000, "nests deeper"),
        ('{"type": "say", "id": "x", "text": "hi", "pitch_shift": NaN}', "finite"),
        ('{"type": "say", "id": "x", "text": "hi", "pitch_shift": Infinity}', "finite"),
        ('{"type": "say", "id": "x", "text": "hi", "pitch_shift": -Infinity}', "finite"),
        ('{"type": "say", "id": "x", "text": "hi", "pitch_shift": 1e999}', "out of range"),
        ('{"type": "say", "id": "x", "text": "hi", "pitch_shift": ' + "9" * 5000 + "}", "out of range"),
        ('{"type": "say", "id": "x", "text": "hi", "pitch_shift": 1e300}', "pitch_shift"),
        ('{"type": "say", "id": "x", "text": "' + "a" * 70_000 + '"}', "too large"),
    ],
)
def test_hostile_json_is_a_protocol_error_not_an_exception(raw, fragment):
    """Deep nesting used to escape as RecursionError (closing the connection); NaN passed as a pitch."""
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(raw)
    assert fragment in caught.value.message
    with pytest.raises(ProtocolError):
        parse_client_message(raw.encode())  # the same as a binary message


def test_nesting_is_measured_outside_strings_only():
    text = "[[[{{{" * 10 + '\\" still inside'
    request = parse_client_message(json.dumps({"type": "say", "id": "x", "text": text}))
    assert request.text == text
    assert json_depth('{"a": [[["]]]]]]"]]]}') == 4 and json_depth("[]") == 1 and json_depth('"[[["') == 0


def test_parse_json_message_bounds_are_configurable():
    assert parse_json_message('{"token": "hi"}', max_bytes=15) == {"token": "hi"}
    with pytest.raises(ProtocolError, match="too large: 16 bytes"):
        parse_json_message('{"token": "hi!"}', max_bytes=15)
    assert parse_json_message('{"a": {"b": 1}}', max_depth=2) == {"a": {"b": 1}}
    with pytest.raises(ProtocolError, match="deeper than 2"):
        parse_json_message('{"a": {"b": [1]}}', max_depth=2)


def test_pitch_shift_must_be_finite_and_in_range():
    assert parse_pitch_shift(None) is None and parse_pitch_shift(-24) == -24.0 and parse_pitch_shift(3.5) == 3.5
    for bad in (float("nan"), float("inf"), -float("inf"), 24.5, True, "2", [1]):
        with pytest.raises(ProtocolError, match="finite number"):
            parse_pitch_shift(bad, "r")
