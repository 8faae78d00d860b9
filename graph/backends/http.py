"""HTTP plumbing shared by the backends that stream from a server (LLM servers, speech servers).

One aiohttp session per backend, opened lazily; errors that name the stage and the server when it cannot
be reached or answers with an error status; and the rule that a response not read to its end is
*closed*, not released, so the server sees the client leave and stops generating.
"""
from __future__ import annotations

from typing import Any

import aiohttp

from graph.voice.types import StageError


def http_url(url: str, what: str) -> str:
    """`url` without a trailing slash, or a ValueError naming `what` when it is not http(s)."""
    if not url or not url.startswith(("http://", "https://")):
        raise ValueError(f"{what}: url must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


class HTTPStreamClient:
    """A lazily opened aiohttp session with no total timeout: long streams are fine, silent servers are not."""

    def __init__(self, timeout_s: float, connect_timeout_s: float):
        self.timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def post(
        self, stage: str, label: str, url: str, body: dict[str, Any], headers: dict[str, str], unreachable: str
    ) -> aiohttp.ClientResponse:
        """POST `body`; a server that cannot be reached is a StageError starting with `unreachable`."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            return await self._session.post(url, json=body, headers=headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise StageError(stage, label, f"{unreachable}: {error or type(error).__name__}") from error

    async def probe(self, stage: str, label: str, url: str, timeout_s: float, headers: dict[str, str] | None = None) -> None:
        """GET `url`: any answer below 500 means the server is up (a 404 or 401 still answers);
        no connection, no answer within `timeout_s` or a 5xx is a StageError saying it is down."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.get(url, headers=headers or {}, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise StageError(stage, label, f"the server at {url} is down: {error or type(error).__name__}") from error
        if status >= 500:
            raise StageError(stage, label, f"the server at {url} is down: HTTP {status}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def raise_for_status(response: aiohttp.ClientResponse, stage: str, label: str, where: str = "") -> None:
    """A StageError with the start of the server's answer unless the status is 200."""
    if response.status != 200:
        detail = (await response.text(errors="replace"))[:300].strip()
        raise StageError(stage, label, f"HTTP {response.status}{where}: {detail}")


def end_response(response: aiohttp.ClientResponse, read_to_end: bool) -> None:
    """Give a response read to its end back to the pool; drop the connection of any other."""
    if read_to_end:
        response.release()
    else:
        response.close()  # closing (not releasing) drops the connection: the server stops generating
