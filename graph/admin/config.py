"""The `admin:` settings of the app config: who may log in, how long a login lasts, the lockout.

    admin:
      enabled: true
      users: {}                         # name -> argon2 hash (or use users_file / MIKU_ADMIN_PASSWORD_HASH)
      users_file: .miku/admin-users     # written by `miku admin set-password`, 0600
      secret_file: .miku/admin-secret   # cookie signing key, created on first start (0600); or MIKU_ADMIN_SECRET
      session_lifetime_s: 28800         # a login lasts at most 8 h ...
      session_idle_s: 3600              # ... and ends after 1 h without a request
      secure_cookie: false              # true when a TLS proxy serves the panel (the cookie gets `Secure`)
      lockout: {max_failures: 5, window_s: 900, lockout_s: 900}
      overview_interval_s: 1.0          # how often the live overview is pushed
"""
from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from graph.admin.lockout import LockoutPolicy
from graph.files import create_private_file

ENV_SECRET = "MIKU_ADMIN_SECRET"


class AdminConfigError(ValueError):
    pass


@dataclass(frozen=True)
class AdminConfig:
    enabled: bool = True
    users: Mapping[str, str] = field(default_factory=dict)
    users_file: str = ".miku/admin-users"
    secret_file: str = ".miku/admin-secret"
    session_lifetime_s: float = 8 * 3600.0
    session_idle_s: float = 3600.0
    secure_cookie: bool = False
    lockout: LockoutPolicy = field(default_factory=LockoutPolicy)
    overview_interval_s: float = 1.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "AdminConfig":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdminConfigError(f"admin: unknown key(s) {unknown}; expected {sorted(known)}")
        lockout = data.pop("lockout", None) or {}
        if not isinstance(lockout, Mapping):
            raise AdminConfigError("admin.lockout must be a mapping")
        try:
            policy = LockoutPolicy(**lockout)
        except (TypeError, ValueError) as error:
            raise AdminConfigError(f"admin.lockout: {error}") from None
        users = data.get("users") or {}
        if not isinstance(users, Mapping) or not all(isinstance(v, str) and v.startswith("$argon2") for v in users.values()):
            raise AdminConfigError("admin.users maps names to argon2 hashes (`miku admin set-password` makes one)")
        data["users"] = dict(users)
        config = cls(**data, lockout=policy)
        for name in ("session_lifetime_s", "session_idle_s", "overview_interval_s"):
            value = getattr(config, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise AdminConfigError(f"admin.{name} must be a positive number, got {value!r}")
        return config

    def redacted(self) -> dict[str, Any]:
        """The settings as the panel may show them: hashes and secrets never leave the graph."""
        return {
            "enabled": self.enabled, "users": sorted(self.users), "users_file": self.users_file,
            "session_lifetime_s": self.session_lifetime_s, "session_idle_s": self.session_idle_s,
            "secure_cookie": self.secure_cookie, "overview_interval_s": self.overview_interval_s,
            "lockout": {"max_failures": self.lockout.max_failures, "window_s": self.lockout.window_s,
                        "lockout_s": self.lockout.lockout_s},
        }


def resolve_secret(secret_file: str, environ: Mapping[str, str] = os.environ) -> bytes:
    """The cookie signing key: MIKU_ADMIN_SECRET, else the secret file (created 0600 on first use)."""
    env = environ.get(ENV_SECRET, "").strip()
    if env:
        if len(env) < 16:
            raise AdminConfigError(f"{ENV_SECRET} must have at least 16 characters")
        return env.encode()
    path = Path(secret_file).expanduser()
    fresh = secrets.token_hex(32)
    if create_private_file(path, (fresh + "\n").encode()):
        return fresh.encode()
    existing = path.read_text().strip()
    if len(existing) >= 16:
        return existing.encode()
    path.write_text(fresh + "\n")  # an empty or short file (already tightened to 0600)
    return fresh.encode()
