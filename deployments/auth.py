"""Bearer-token auth for every route but the public liveness answer of /healthz.

WebSockets send it as `Authorization: Bearer <token>`; `/ws/stream`, whose existing clients (the
Soprano->RVC API's) cannot set headers, also takes `?token=<token>` in its URL. Both are compared in
constant time.

The token comes from `MIKU_GRAPH_TOKEN`, else the config's `token`, else `token_file` (created with a
random token on first use, mode 0600, like a Jupyter token) so a local graph is never left open.
"""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import Header, HTTPException, WebSocket, status

from graph.files import create_private_file

_expected_token: str | None = None


def resolve_token(token: str | None = None, token_file: str | None = None) -> str:
    env = os.environ.get("MIKU_GRAPH_TOKEN")
    if env:
        return env.strip()
    if token:
        return token
    path = Path(token_file or ".miku/token").expanduser()
    if path.exists():
        existing = path.read_text().strip()
        if existing:
            return existing
    fresh = secrets.token_urlsafe(24)
    # 0600 from creation (no window where others can read it); another process won the race: use theirs
    if not create_private_file(path, (fresh + "\n").encode()):
        existing = path.read_text().strip()
        if existing:
            return existing
        path.write_text(fresh + "\n")  # an empty file left behind, already tightened to 0600
    return fresh


def configure(token: str) -> None:
    """Set the token this process checks against (called by the ingress replica at start)."""
    global _expected_token
    if not token:
        raise ValueError("the graph's bearer token must not be empty")
    _expected_token = token


def token_matches(authorization: str | None) -> bool:
    """`authorization` is an `Authorization` header carrying the graph's bearer token."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return bare_token_matches(value.strip())


def bare_token_matches(token: str | None) -> bool:
    """`token` (e.g. a `?token=` query parameter) is the graph's token; constant time."""
    if _expected_token is None or not token:
        return False
    return hmac.compare_digest(token.encode("utf-8", errors="replace"), _expected_token.encode())


def query_token(query: str) -> str | None:
    """The `token` parameter of a URL's query string (the last one if repeated), else None."""
    values = parse_qs(query, keep_blank_values=True, max_num_fields=32).get("token") if query else None
    return values[-1] if values else None


def request_authorized(authorization: str | None, query: str = "", allow_query_token: bool = False) -> bool:
    """A request carries the token in its header, or (where allowed) in its query string."""
    if token_matches(authorization):
        return True
    if not allow_query_token:
        return False
    try:
        return bare_token_matches(query_token(query))
    except ValueError:  # more query fields than any client of ours sends
        return False


async def require_token(authorization: str | None = Header(default=None)) -> None:
    """FastAPI dependency for HTTP routes."""
    if not token_matches(authorization):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def websocket_authorized(websocket: WebSocket, allow_query_token: bool = False) -> bool:
    """WebSocket routes check before accept(): a rejected handshake does no work at all."""
    return request_authorized(websocket.headers.get("authorization"), websocket.url.query, allow_query_token)
