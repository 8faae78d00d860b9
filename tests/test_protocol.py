"""The /v1/voice wire protocol: every kind of bad input gets a clear error."""
import json

import pytest

from graph.voice.pipeline import UtteranceMode
from graph.voice.protocol import (
    InterruptRequest,
    ProtocolError,
    parse_client_message,
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
