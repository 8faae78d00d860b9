"""Fetching the images and videos people post, without becoming a way into the private network.

Only hosts on the allow-list are fetched (Discord's CDN by default: cdn.discordapp.com, media.discordapp.net
and the embed proxies *.discordapp.net); every address a name resolves to is checked (no loopback, private,
link-local, reserved or multicast address unless `allow_internal` is set, for tests on loopback), and the
connection goes to the address that was checked (the resolver is the guard, so a name cannot re-resolve
elsewhere between check and connect). Redirects are followed by hand, each hop checked again. The body is
read up to `max_bytes` and no further: a 50 MB file stops at the limit with a clear message.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

DISCORD_CDN_HOSTS = ("cdn.discordapp.com", "media.discordapp.net", ".discordapp.net", "cdn.discord.com")


class FetchRefused(ValueError):
    """The URL may not be fetched, or what came back is not acceptable; the message is for the user."""


@dataclass(frozen=True, kw_only=True)
class FetchConfig:
    allowed_hosts: tuple[str, ...] = DISCORD_CDN_HOSTS  # exact names, or ".suffix" for a domain's subdomains
    allow_internal: bool = False
    allow_http: bool = False  # https only unless set (tests on loopback)
    max_bytes: int = 25 * 2**20
    timeout_s: float = 20.0
    max_redirects: int = 3

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "FetchConfig":
        raw = dict(raw or {})
        if "allowed_hosts" in raw:
            raw["allowed_hosts"] = tuple(str(h).lower() for h in raw["allowed_hosts"])
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"vision fetch: unknown key(s) {unknown}")
        return cls(**raw)

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == h or (h.startswith(".") and host.endswith(h)) for h in self.allowed_hosts)


def is_internal(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing internal addresses (unless allowed): the check and the connection
    use the same answer."""

    def __init__(self, allow_internal: bool):
        self.allow_internal = allow_internal
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[dict[str, Any]]:
        results = await self._inner.resolve(host, port, family)
        if not self.allow_internal:
            bad = [r["host"] for r in results if is_internal(r["host"])]
            if bad:
                raise FetchRefused(f"{host} resolves to an internal address ({bad[0]}); it is not fetched")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class Fetched:
    url: str
    content_type: str
    data: bytes


class MediaFetcher:
    def __init__(self, config: FetchConfig):
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def check_url(self, url: str) -> str:
        parts = urlsplit(url)
        schemes = ("https", "http") if self.config.allow_http else ("https",)
        if parts.scheme not in schemes:
            raise FetchRefused(f"only {' and '.join(schemes)} links are fetched, not {parts.scheme or 'this'!r}: {url[:100]}")
        host = parts.hostname or ""
        if not self.config.host_allowed(host):
            raise FetchRefused(f"{host or url[:60]} is not an allowed media host (Discord's CDN only, unless configured)")
        if not self.config.allow_internal and _is_ip(host) and is_internal(host):
            raise FetchRefused(f"{host} is an internal address; it is not fetched")  # names: checked as they resolve
        return url

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.config.allow_internal), limit=8)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
                total=None, connect=self.config.timeout_s, sock_read=self.config.timeout_s))
        return self._session

    async def fetch(self, url: str) -> Fetched:
        try:
            async with asyncio.timeout(self.config.timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise FetchRefused(f"fetching {url[:100]} timed out after {self.config.timeout_s:g} s") from None

    async def _fetch(self, url: str) -> Fetched:
        for _ in range(self.config.max_redirects + 1):
            self.check_url(url)
            try:
                async with self._client().get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status != 200:
                        raise FetchRefused(f"the media link answered HTTP {response.status}: {url[:100]}")
                    limit = self.config.max_bytes
                    declared = response.content_length
                    if declared is not None and declared > limit:
                        raise FetchRefused(f"the file is {declared / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB limit")
                    chunks, size = [], 0
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        size += len(chunk)
                        if size > limit:
                            raise FetchRefused(f"the file is over the {limit / 2**20:.0f} MB limit")
                        chunks.append(chunk)
                    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                    return Fetched(url, content_type, b"".join(chunks))
            except FetchRefused:
                raise
            except aiohttp.ClientConnectorError as error:
                if isinstance(error.__cause__, FetchRefused) or isinstance(getattr(error, "os_error", None), FetchRefused):
                    raise FetchRefused(str(error.__cause__ or error.os_error)) from None
                raise FetchRefused(f"the media host could not be reached: {error}") from None
            except (aiohttp.ClientError, OSError) as error:
                cause = error.__cause__ or error.__context__
                if isinstance(cause, FetchRefused):
                    raise cause from None
                raise FetchRefused(f"fetching the media failed: {error or type(error).__name__}") from None
        raise FetchRefused(f"too many redirects (over {self.config.max_redirects})")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
