"""Bounds on what the controller stores and answers, so no request can grow its state or an answer past
what the transports carry (Serve's gRPC proxy refuses messages over 4 MiB).

- Stored: a queued message's `content` (Discord's longest message, 4000 characters with Nitro) and its
  `event` mapping (the client's event, which repeats the content, plus room for its other fields), by
  encoded bytes; the event must be plain JSON (no NaN or infinities) and shallowly nested.
- Asked: integers within SQLite's signed 64-bit range, ids of bounded length.
- Answered: pages that stop at a byte budget (`take_within_budget`), with a cursor to the next page.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from graph.controller.errors import InvalidRequest, PayloadTooLarge

SQLITE_MAX_INT = 2**63 - 1
MAX_ID_CHARS = 128  # session ids, request ids, feature names, personas
MAX_DISCORD_ID_CHARS = 64
MAX_CONTENT_CHARS = 4000
MAX_CONTENT_BYTES = 4 * MAX_CONTENT_CHARS  # UTF-8: at most 4 bytes a character
MAX_EVENT_BYTES = 32 * 1024
MAX_EVENT_DEPTH = 32
MAX_PAGE_BYTES = 1024 * 1024  # one answer, well under the proxy's 4 MiB
MAX_PAGE_ITEMS = 1000

T = TypeVar("T")


def encoded_size(value: Any) -> int:
    """Bytes of `value` as compact JSON (what a stored row or an answer costs)."""
    return len(json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode())


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping (without recursing further) once past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def check_message_size(content: str, event: Mapping[str, Any]) -> None:
    """Refuse a message the queue must not store: PayloadTooLarge (413) or InvalidRequest (422)."""
    if not isinstance(content, str):
        raise InvalidRequest(f"content must be text, got {type(content).__name__}")
    if len(content) > MAX_CONTENT_CHARS:
        raise PayloadTooLarge(f"content is {len(content)} characters; at most {MAX_CONTENT_CHARS} can be queued")
    content_bytes = len(content.encode("utf-8", "surrogatepass"))
    if content_bytes > MAX_CONTENT_BYTES:
        raise PayloadTooLarge(f"content is {content_bytes} bytes; at most {MAX_CONTENT_BYTES} can be queued")
    if not isinstance(event, Mapping):
        raise InvalidRequest(f"event must be a JSON object, got {type(event).__name__}")
    depth = _depth(event, MAX_EVENT_DEPTH)
    if depth > MAX_EVENT_DEPTH:
        raise InvalidRequest(f"event is nested deeper than {MAX_EVENT_DEPTH} levels")
    try:
        size = encoded_size(dict(event))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"event must be plain JSON (no NaN or infinity): {exc}") from exc
    if size > MAX_EVENT_BYTES:
        raise PayloadTooLarge(f"event is {size} bytes as JSON; at most {MAX_EVENT_BYTES} can be queued")


def check_int_range(name: str, value: int, low: int = 0, high: int = SQLITE_MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def check_id(name: str, value: str, limit: int = MAX_ID_CHARS) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidRequest(f"{name} must be 1 to {limit} characters")
    return value


def take_within_budget(
    items: Sequence[T], size_of: Callable[[T], int], budget_bytes: int = MAX_PAGE_BYTES
) -> tuple[T, ...]:
    """The longest prefix of `items` whose sizes add up to at most `budget_bytes` (at least one item, which
    the stored-size bounds keep far under any budget)."""
    taken: list[T] = []
    used = 0
    for item in items:
        size = size_of(item)
        if taken and used + size > budget_bytes:
            break
        taken.append(item)
        used += size
    return tuple(taken)
