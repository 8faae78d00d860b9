"""Panel sessions: a signed cookie naming a server-side session, with expiry, and its CSRF token.

The cookie's value is the session id signed with itsdangerous (HMAC-SHA256 by a 32-byte secret, with its
signing time): a forged or altered cookie is refused before any lookup, and one older than the session
lifetime is refused by the signature's own age even if the table still held it. The table (in the
ingress replica's memory) is what logout deletes, so a logged-out cookie is dead at once, and where the
idle timeout lives. Each session has its own random CSRF token, which every change must send back in
the `X-CSRF-Token` header (compared in constant time); the cookie itself is HttpOnly, so a script on
another site can neither read the token nor the cookie.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

MAX_SESSIONS = 256  # at most this many panel logins at once; the oldest is dropped beyond it


@dataclass
class PanelSession:
    session_id: str
    user: str
    csrf_token: str
    created_at: float
    last_seen: float


class PanelSessions:
    def __init__(self, secret: bytes, *, lifetime_s: float = 8 * 3600.0, idle_s: float = 3600.0,
                 clock: Callable[[], float] = time.time, signer_clock: Callable[[], float] | None = None):
        if len(secret) < 16:
            raise ValueError("the session signing secret must have at least 16 bytes")
        if lifetime_s <= 0 or idle_s <= 0:
            raise ValueError("session lifetime and idle timeout must be positive")
        self.lifetime_s = lifetime_s
        self.idle_s = idle_s
        self._clock = clock
        self._signer = _ClockedSigner(secret, salt="miku-admin-session", clock=signer_clock or clock)
        self._sessions: OrderedDict[str, PanelSession] = OrderedDict()

    def create(self, user: str) -> tuple[PanelSession, str]:
        """A new session for `user` and the cookie value that names it."""
        now = self._clock()
        session = PanelSession(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        self._sessions[session.session_id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session, self._signer.sign(session.session_id).decode()

    def resolve(self, cookie: str | None) -> PanelSession | None:
        """The live session a cookie names (touching its idle timer), else None."""
        if not cookie or len(cookie) > 512:
            return None
        try:
            session_id = self._signer.unsign(cookie.encode(), max_age=self.lifetime_s).decode()
        except (SignatureExpired, BadSignature, UnicodeDecodeError):
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.created_at > self.lifetime_s or now - session.last_seen > self.idle_s:
            self._sessions.pop(session_id, None)
            return None
        session.last_seen = now
        return session

    def end(self, session: PanelSession) -> None:
        self._sessions.pop(session.session_id, None)

    def count(self) -> int:
        return len(self._sessions)

    @staticmethod
    def csrf_ok(session: PanelSession, token: str | None) -> bool:
        if not token:
            return False
        return hmac.compare_digest(token.encode("utf-8", errors="replace"), session.csrf_token.encode())


class _ClockedSigner(TimestampSigner):
    """itsdangerous' TimestampSigner reading the injected clock instead of time.time()."""

    def __init__(self, secret: bytes, *, salt: str, clock: Callable[[], float]):
        super().__init__(secret, salt=salt, digest_method=hashlib.sha256)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())
