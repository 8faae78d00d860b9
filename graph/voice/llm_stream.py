"""Turn an LLM server's streaming HTTP body into text tokens.

The LLM backends read bytes from aiohttp in whatever pieces the network delivers; a piece can end
inside a line, inside a `\\r\\n`, or inside a multi-byte UTF-8 character. Two layers handle this:

- `SSEDecoder`: an incremental Server-Sent Events decoder (WHATWG rules: `\\n`, `\\r\\n` and `\\r`
  line endings, multi-line `data:`, comments, `event:`/`id:`/`retry:`), that also keeps
  non-standard fields (llama.cpp reports stream errors as an `error: {...}` line) and, optionally,
  bare JSON lines (newline-delimited JSON). A stream cut mid-line is reported on `close()`.
- `LLMStreamParser`: reads the events of one response in a known format ("openai-chat",
  "openai-completions", "llamacpp") and yields only the spoken text: reasoning fields, role-only
  deltas and usage chunks are skipped, `[DONE]` / `stop: true` end the stream, an error object
  raises `LLMStreamError`, and malformed or partial lines are tolerated, counted and reported.
"""
from __future__ import annotations

import codecs
import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any

_LINE_END = re.compile(r"\r\n|\r|\n")
_MAX_KEPT_PROBLEMS = 50  # keep the first problems' text; count all of them
_SNIPPET = 120  # characters of a bad line quoted in a problem report
_REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")


# --------------------------------------------------------------------------------------------------
# Server-Sent Events


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event. `complete` is False for an event the stream ended in the middle of."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    extra: dict[str, str] = field(default_factory=dict)  # non-standard fields, e.g. llama.cpp's `error`
    complete: bool = True


class SSEDecoder:
    """Incremental SSE decoder: `feed(bytes)` returns the events those bytes completed.

    `json_lines=True` also accepts a bare line starting with `{` as a complete data event (no SSE
    field name can start with `{`), for servers that stream newline-delimited JSON instead.
    Invalid UTF-8 is replaced with U+FFFD rather than raising.
    """

    def __init__(self, json_lines: bool = False):
        self.json_lines = json_lines
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""  # text after the last line ending
        self._skip_lf = False  # the previous feed ended with "\r": a leading "\n" belongs to it
        self._closed = False
        self._started = False
        self._reset_event()
        self.last_event_id: str | None = None
        self.comments = 0

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self._closed:
            raise RuntimeError("SSEDecoder is closed")
        text = self._utf8.decode(bytes(data))
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":  # a byte-order mark is not part of the first field name
                text = text[1:]
                if not text:
                    return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        # Only the new text is scanned: the held partial line has no line ending by construction.
        events: list[SSEEvent] = []
        partial = self._partial
        start = 0
        for match in _LINE_END.finditer(text):
            line = text[start : match.start()]
            if partial:
                line, partial = partial + line, ""
            self._line(line, events)
            start = match.end()
        if start:
            self._partial = text[start:]
            self._skip_lf = start == len(text) and text[-1] == "\r"
        else:
            self._partial = partial + text
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: report a last line without a line ending and an undispatched event
        (both marked `complete=False`) instead of dropping them."""
        if self._closed:
            return []
        self._closed = True
        tail = self._utf8.decode(b"", final=True)
        buf = self._partial + tail
        self._partial = ""
        events: list[SSEEvent] = []
        if buf:
            self._line(buf, events)
        if self._has_event():
            events.append(self._build_event(complete=False))
        self._reset_event()
        return events

    @property
    def pending(self) -> bool:
        """True while a line or an event is half received."""
        return bool(self._partial) or self._has_event()

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            if self._has_event():
                events.append(self._build_event(complete=True))
            self._reset_event()
            return
        if line[0] == ":":
            self.comments += 1
            return
        if self.json_lines and line[0] == "{":
            if self._has_event():  # an unterminated SSE event before it
                events.append(self._build_event(complete=False))
                self._reset_event()
            events.append(SSEEvent(data=line))
            return
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        else:
            self._extra[name] = value

    def _has_event(self) -> bool:
        return bool(self._data) or bool(self._extra)

    def _build_event(self, complete: bool) -> SSEEvent:
        return SSEEvent(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._id,
            retry=self._retry,
            extra=dict(self._extra),
            complete=complete,
        )

    def _reset_event(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._extra: dict[str, str] = {}


# --------------------------------------------------------------------------------------------------
# LLM response formats


class StreamFormat(enum.Enum):
    OPENAI_CHAT = "openai-chat"  # /v1/chat/completions: choices[0].delta.content
    OPENAI_COMPLETIONS = "openai-completions"  # /v1/completions: choices[0].text
    LLAMACPP = "llamacpp"  # llama.cpp native /completion: content, stop


class StreamEventKind(enum.Enum):
    TOKEN = "token"
    DONE = "done"
    PROBLEM = "problem"


@dataclass(frozen=True)
class StreamEvent:
    kind: StreamEventKind
    text: str = ""  # the token (TOKEN), why it ended (DONE), or what was wrong (PROBLEM)


class ParserState(enum.Enum):
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"


class LLMStreamError(RuntimeError):
    """The server reported an error inside the stream (an `error` object or an `error` event).

    `tokens_before` holds the tokens parsed from the same `feed()` call before the error, so
    nothing already generated is lost.
    """

    def __init__(
        self,
        message: str,
        code: Any = None,
        error_type: str | None = None,
        raw: str = "",
        tokens_before: list[str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.error_type = error_type
        self.raw = raw
        self.tokens_before = tokens_before or []


class LLMStreamParser:
    """Parse one streaming LLM response into text tokens.

    `feed(bytes) -> list[str]` returns the tokens those bytes completed (`feed_events` returns
    typed `StreamEvent`s including DONE and PROBLEM); `close()` at end of body handles a last
    unterminated line. `done` turns True at `data: [DONE]` (OpenAI formats) or `stop: true`
    (llama.cpp). Problems (malformed JSON, a cut-off last line, unexpected shapes, a stream that
    ended without its end marker) never raise: they are counted in `problem_count` and described
    in `problems` (the first 50). A server-reported error raises `LLMStreamError`.
    """

    def __init__(self, fmt: StreamFormat | str):
        self.format = StreamFormat(fmt)
        self._sse = SSEDecoder(json_lines=True)
        self.state = ParserState.STREAMING
        self.problems: list[str] = []
        self.problem_count = 0
        self.finish_reason: str | None = None
        self.tokens = 0
        self.reasoning_chars = 0  # skipped reasoning text, for traces
        self.events_seen = 0

    @property
    def done(self) -> bool:
        return self.state is ParserState.DONE

    def feed(self, data: bytes) -> list[str]:
        return [e.text for e in self.feed_events(data) if e.kind is StreamEventKind.TOKEN]

    def close(self) -> list[str]:
        return [e.text for e in self.close_events() if e.kind is StreamEventKind.TOKEN]

    def feed_events(self, data: bytes) -> list[StreamEvent]:
        return self._handle(self._sse.feed(data))

    def close_events(self) -> list[StreamEvent]:
        out = self._handle(self._sse.close())
        if self.state is ParserState.STREAMING:
            if self.finish_reason is not None:
                # Finished generating but the [DONE] line never came: the text is whole.
                self.state = ParserState.DONE
                out.append(StreamEvent(StreamEventKind.DONE, self.finish_reason))
            else:
                out.append(self._problem("stream ended before its end marker ([DONE] or stop)"))
        return out

    # -- internals ---------------------------------------------------------------------------------

    def _handle(self, events: list[SSEEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in events:
            if self.state is ParserState.FAILED:
                break
            try:
                self._event(event, out)
            except LLMStreamError as exc:
                self.state = ParserState.FAILED
                exc.tokens_before = [e.text for e in out if e.kind is StreamEventKind.TOKEN]
                raise
        return out

    def _event(self, event: SSEEvent, out: list[StreamEvent]) -> None:
        self.events_seen += 1
        if "error" in event.extra:  # llama.cpp: `error: {"code":500,"message":...}`
            self._raise_error(event.extra["error"])
        if event.extra:
            names = ", ".join(sorted(event.extra))
            out.append(self._problem(f"unexpected SSE field(s) {names}"))
        if event.event == "error":
            self._raise_error(event.data)
        data = event.data.strip()
        if not data:
            return
        if data == "[DONE]":
            if self.state is ParserState.STREAMING:
                self.state = ParserState.DONE
                out.append(StreamEvent(StreamEventKind.DONE, self.finish_reason or "[DONE]"))
            return
        try:
            payload = json.loads(data)
        except ValueError:
            cut = "stream cut mid-line" if not event.complete else "malformed JSON"
            out.append(self._problem(f"{cut}: {data[:_SNIPPET]!r}"))
            return
        if not isinstance(payload, dict):
            out.append(self._problem(f"expected a JSON object, got {data[:_SNIPPET]!r}"))
            return
        if payload.get("error") is not None:
            self._raise_error(payload["error"])
        if self.state is not ParserState.STREAMING:
            out.append(self._problem(f"data after end of stream ignored: {data[:_SNIPPET]!r}"))
            return
        if self.format is StreamFormat.LLAMACPP:
            self._llamacpp(payload, out)
        else:
            self._openai(payload, out)

    def _openai(self, payload: dict, out: list[StreamEvent]) -> None:
        choices = payload.get("choices")
        if choices is None:
            out.append(self._problem(f"chunk without choices: {json.dumps(payload)[:_SNIPPET]}"))
            return
        if not isinstance(choices, list):
            out.append(self._problem("choices is not a list"))
            return
        if not choices:  # usage-only chunk (stream_options.include_usage)
            return
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            return  # another choice's chunk (n > 1): we speak choice 0 only
        if self.format is StreamFormat.OPENAI_CHAT:
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                out.append(self._problem("delta is not an object"))
                return
            for name in _REASONING_FIELDS:
                if isinstance(delta.get(name), str):
                    self.reasoning_chars += len(delta[name])
            text = delta.get("content")
        else:
            text = choice.get("text")
        self._token(text, out)
        reason = choice.get("finish_reason")
        if reason is not None:
            self.finish_reason = str(reason)

    def _llamacpp(self, payload: dict, out: list[StreamEvent]) -> None:
        self._token(payload.get("content"), out)
        if payload.get("stop") is True:
            self.finish_reason = str(payload.get("stop_type") or "stop")
            self.state = ParserState.DONE
            out.append(StreamEvent(StreamEventKind.DONE, self.finish_reason))

    def _token(self, text: Any, out: list[StreamEvent]) -> None:
        if text is None or text == "":
            return
        if not isinstance(text, str):
            out.append(self._problem(f"token is not a string: {json.dumps(text)[:_SNIPPET]}"))
            return
        self.tokens += 1
        out.append(StreamEvent(StreamEventKind.TOKEN, text))

    def _problem(self, message: str) -> StreamEvent:
        self.problem_count += 1
        if len(self.problems) < _MAX_KEPT_PROBLEMS:
            self.problems.append(message)
        return StreamEvent(StreamEventKind.PROBLEM, message)

    def _raise_error(self, error: Any) -> None:
        raw = error if isinstance(error, str) else json.dumps(error)
        if isinstance(error, str):
            try:
                error = json.loads(error)
            except ValueError:
                pass
        if isinstance(error, dict) and isinstance(error.get("error"), (dict, str)):
            error = error["error"]  # `event: error` data is often {"error": {...}}
        if isinstance(error, dict):
            message = str(error.get("message") or raw)
            raise LLMStreamError(message, code=error.get("code"), error_type=error.get("type"), raw=raw)
        raise LLMStreamError(str(error) or "error event without details", raw=raw)
