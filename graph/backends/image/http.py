"""HTTP calls the image and vision backends share: one aiohttp session, and every failure a MediaError
that names the server (its URL), says whether it was unreachable or timed out, and quotes its answer."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from graph.backends.image.base import MediaError, MediaErrorKind


class MediaHTTP:
    def __init__(self, stage: str, label: str, base_url: str, timeout_s: float, connect_timeout_s: float = 5.0,
                 headers: dict[str, str] | None = None):
        self.stage, self.label, self.base_url = stage, label, base_url
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s, sock_connect=self.connect_timeout_s)
            )
        return self._session

    def error(self, message: str, kind: MediaErrorKind = MediaErrorKind.FAILED) -> MediaError:
        return MediaError(self.stage, self.label, message, kind)

    async def request(self, method: str, path: str, *, json_body: Any = None, timeout_s: float | None = None,
                      expect: str = "json", params: dict[str, str] | None = None) -> Any:
        """One call; `expect` "json" (parsed), "bytes" or "none". Non-2xx answers raise with their text."""
        url = self.base_url + path
        limit = timeout_s if timeout_s is not None else self.timeout_s
        try:
            async with asyncio.timeout(limit):
                async with self.session().request(method, url, json=json_body, headers=self.headers, params=params) as response:
                    body = await response.read()
                    if response.status >= 400:
                        raise HTTPFailure(response.status, body[:600].decode("utf-8", "replace").strip())
        except HTTPFailure:
            raise
        except TimeoutError:
            raise self.error(f"{self.label} timed out after {limit:g} s ({method} {path})", MediaErrorKind.TIMEOUT) from None
        except (aiohttp.ClientError, OSError) as error:
            raise self.error(f"{self.label} is unreachable at {url}: {error or type(error).__name__}",
                             MediaErrorKind.UNREACHABLE) from None
        if expect == "bytes":
            return body
        if expect == "none":
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise self.error(f"{self.label} answered {method} {path} with something that is not JSON: {body[:80]!r}",
                             MediaErrorKind.BAD_OUTPUT) from None

    async def probe(self, path: str) -> None:
        """The backends' health probe: GET `path`; unreachable, a time-out or a 5xx answer raises (a 4xx
        still proves the server is up)."""
        try:
            await self.request("GET", path, timeout_s=4, expect="none")
        except HTTPFailure as failure:
            if failure.status >= 500:
                raise self.error(f"{self.label} is down: HTTP {failure.status}", MediaErrorKind.UNREACHABLE) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HTTPFailure(Exception):
    """A server's non-2xx answer: the backend decides whether it was a safety refusal or a failure."""

    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.text = text
