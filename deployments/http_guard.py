"""Bounds on what an HTTP client sends the graph's routes, and 4xx answers that can always be sent.

FastAPI parses request bodies with Python's `json`, which takes `NaN`/`Infinity`, numbers beyond a
float's range, and nesting deep enough to raise RecursionError; and its 422 echoes the offending input,
which cannot be serialised when it holds NaN (a 500 instead of a 4xx). Every route of the ingress app
(the controller's, the brain's and the voice graph's) sits behind this one guard instead of each
router checking for itself:

- `JSONBodyGuard` (ASGI middleware) refuses request headers over `max_header_bytes` in all (HTTP 431;
  a WebSocket is refused at the handshake), reads each request body up to `max_body_bytes` (413
  beyond; a body is never buffered past the limit) and refuses JSON that nests too deep or holds
  non-finite numbers with a 422 naming the problem, before any route parses it. The checks are linear
  regex scans.

Serve's HTTP proxy (uvicorn with httptools) itself puts no limit on header sizes, and its WebSocket
upgrade (uvicorn's websockets sans-io protocol) never sends the 431 that `websockets` produces for a
header line over `WEBSOCKETS_MAX_LINE_LENGTH` (8 KiB by default): the handshake hangs. `PROXY_ENV` in
deployments/app.py therefore raises that limit to 1 MiB in the proxy, so such a request reaches this
guard and is refused at once.
- `validation_error_handler` turns FastAPI's validation errors into a 422 whose detail is always valid
  JSON: non-finite floats become strings, long inputs are cut.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from graph.voice.protocol import MAX_NUMBER_DIGITS, json_depth

MAX_BODY_BYTES = 1 * 2**20  # well under Serve's gRPC proxy limit (4 MiB) and any event the bot sends
MAX_BODY_DEPTH = 32
MAX_HEADER_BYTES = 16 * 1024  # all request headers together; a bot or browser sends well under 4 KiB
MAX_ECHOED_CHARS = 200  # of a bad input quoted back in a 422

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"', re.DOTALL)
_BARE_CONSTANT = re.compile(r"\b(?:NaN|Infinity)\b")
_EXPONENT_NUMBER = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_LONG_NUMBER = re.compile(r"\d{%d,}" % (MAX_NUMBER_DIGITS + 1))
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def json_body_problem(text: str, max_depth: int = MAX_BODY_DEPTH) -> str | None:
    """Why a JSON body is refused before parsing (None: fine). Only what lies outside strings counts."""
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        return f"the JSON body nests deeper than {max_depth} levels"
    bare = _JSON_STRING.sub('""', text)
    constant = _BARE_CONSTANT.search(bare)
    if constant:
        return f"numbers must be finite: {constant.group()} is not accepted"
    for number in _EXPONENT_NUMBER.findall(bare):
        if not math.isfinite(float(number)):
            return f"number {number[:40]} is out of range"
    if _LONG_NUMBER.search(bare):
        return f"a number in the JSON body has more than {MAX_NUMBER_DIGITS} digits"
    return None


def _json_safe(value: Any) -> Any:
    """`value` with non-finite floats as strings and long strings cut, so json.dumps cannot fail on it."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > MAX_ECHOED_CHARS:
        return value[:MAX_ECHOED_CHARS] + "..."
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value[:50]]
    return value


async def validation_error_handler(_request: Request, error: RequestValidationError) -> JSONResponse:
    detail = _json_safe(jsonable_encoder(error.errors(), custom_encoder={float: lambda f: f if math.isfinite(f) else str(f)}))
    return JSONResponse({"detail": detail}, status_code=422)


def _plain_response(status: int, detail: str):
    body = json.dumps({"detail": detail}).encode()
    return (
        {"type": "http.response.start", "status": status,
         "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]},
        {"type": "http.response.body", "body": body},
    )


def _may_be_json(scope) -> bool:
    """A body our routes would parse as JSON: declared so, or not declared at all."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return b"json" in value.lower()
    return True


class JSONBodyGuard:
    """ASGI middleware: a bounded body, and no JSON that would break the parser or the 422."""

    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_BODY_DEPTH,
                 max_header_bytes: int = MAX_HEADER_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_depth = max_depth
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            header_bytes = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
            if header_bytes > self.max_header_bytes:
                detail = f"request headers of {header_bytes} bytes; the limit is {self.max_header_bytes}"
                if scope["type"] == "websocket":  # before accept: the handshake is refused (HTTP 403)
                    await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
                else:
                    await self._answer(send, 431, detail)
                return
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._answer(send, 413, f"the request body is larger than {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = None
        if body and _may_be_json(scope):
            try:
                problem = json_body_problem(body.decode("utf-8"), self.max_depth)
            except UnicodeDecodeError as error:
                problem = f"the JSON body is not valid UTF-8 (at byte {error.start})"
        if problem:
            await self._answer(send, 422, problem)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, as the route expects

        await self.app(scope, replay, send)

    @staticmethod
    async def _answer(send, status: int, detail: str) -> None:
        start, body = _plain_response(status, detail)
        await send(start)
        await send(body)


def install(app: FastAPI) -> None:
    """Put the guard and the serialisable 422 on `app` (every router it includes is covered)."""
    app.add_middleware(JSONBodyGuard)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
