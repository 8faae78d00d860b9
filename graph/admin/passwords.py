"""Admin passwords: argon2id hashes (argon2-cffi) per user, from config, the environment or a 0600 file.

Why a file of hashes: `miku admin set-password` must work without editing YAML by hand, and a hash (never
the password) is all the graph may keep. Sources, later ones winning for the same user:

- the `admin.users` mapping of the app config (`{name: "$argon2id$..."}`),
- `MIKU_ADMIN_PASSWORD_HASH` (for the user named by `MIKU_ADMIN_USER`, default `admin`),
- the users file (`admin.users_file`, default `.miku/admin-users`): one `name:hash` per line, 0600.

The file is read again on every login, so a new password works at once without a restart.
Verification is constant-effort: an unknown user is checked against a dummy hash, so the time taken
does not tell which names exist.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from graph.files import PRIVATE_FILE_MODE, ensure_private_dir

USER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024  # argon2 hashes anything, but a 1 MB "password" is only a way to burn CPU
ENV_HASH = "MIKU_ADMIN_PASSWORD_HASH"
ENV_USER = "MIKU_ADMIN_USER"
DEFAULT_USER = "admin"


class PasswordPolicyError(ValueError):
    """A new password or user name that may not be set (too short, bad characters)."""


def check_user_name(name: str) -> str:
    if not USER_NAME.match(name or ""):
        raise PasswordPolicyError("a user name is 1-64 letters, digits, '_', '.' or '-'")
    return name


def check_new_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordPolicyError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise PasswordPolicyError(f"the password must have at most {MAX_PASSWORD_CHARS} characters")
    return password


def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    """An argon2id hash of a new password (argon2-cffi's defaults: RFC 9106's low-memory profile)."""
    return (hasher or PasswordHasher()).hash(check_new_password(password))


def read_users_file(path: str | Path) -> dict[str, str]:
    """`name:hash` lines; blank lines and `#` comments skipped. A missing file is no users."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    users = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, _, hashed = line.partition(":")
        if USER_NAME.match(name) and hashed.startswith("$argon2"):
            users[name] = hashed
    return users


def write_user_hash(path: str | Path, user: str, hashed: str) -> Path:
    """Set `user`'s hash in the users file, replacing the file atomically; 0600 from the first byte."""
    check_user_name(user)
    if not hashed.startswith("$argon2") or "\n" in hashed:
        raise ValueError("not an argon2 hash")
    path = Path(path).expanduser()
    ensure_private_dir(path.parent)
    users = read_users_file(path)
    users[user] = hashed
    body = "# Miku admin panel users: name:argon2 hash (set with `miku admin set-password`)\n"
    body += "".join(f"{name}:{value}\n" for name, value in sorted(users.items()))
    fd, temporary = tempfile.mkstemp(prefix=".admin-users.", dir=path.parent)  # mkstemp creates 0600
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


@dataclass
class PasswordBook:
    """Who may log in, and the check of a password (blocking: run it off the event loop)."""

    inline: Mapping[str, str] = field(default_factory=dict)
    users_file: str | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    hasher: PasswordHasher = field(default_factory=PasswordHasher)

    def __post_init__(self) -> None:
        self._dummy = self.hasher.hash("not a password of anyone's")

    def users(self) -> dict[str, str]:
        users = {name: value for name, value in self.inline.items() if USER_NAME.match(name)}
        env_hash = self.environ.get(ENV_HASH, "").strip()
        if env_hash:
            users[self.environ.get(ENV_USER, DEFAULT_USER).strip() or DEFAULT_USER] = env_hash
        if self.users_file:
            users.update(read_users_file(self.users_file))
        return users

    def configured(self) -> bool:
        return bool(self.users())

    def verify(self, user: str, password: str) -> bool:
        """True when `password` is `user`'s. Same work whether or not the user exists."""
        if len(password) > MAX_PASSWORD_CHARS:
            return False
        hashed = self.users().get(user)
        try:
            self.hasher.verify(hashed or self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return hashed is not None
