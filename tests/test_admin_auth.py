"""Unit tests of the admin panel's auth pieces: argon2 passwords, lockout, signed sessions, CSRF."""
from __future__ import annotations

import os
import stat

import pytest
from argon2 import PasswordHasher

from graph.admin.config import AdminConfig, AdminConfigError, resolve_secret
from graph.admin.latency import LatencyHistory
from graph.admin.lockout import LockoutPolicy, LoginThrottle, LoginVerdict
from graph.admin.passwords import (
    PasswordBook,
    PasswordPolicyError,
    hash_password,
    read_users_file,
    write_user_hash,
)
from graph.admin.sessions import PanelSessions

FAST = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_hash_is_argon2id_and_verifies_only_the_right_password():
    hashed = hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    book = PasswordBook(inline={"admin": hashed}, environ={})
    assert book.verify("admin", "correct horse battery")
    assert not book.verify("admin", "correct horse batterY")
    assert not book.verify("nobody", "correct horse battery")


def test_short_and_huge_passwords_are_refused():
    with pytest.raises(PasswordPolicyError):
        hash_password("short")
    book = PasswordBook(inline={"admin": hash_password("a" * 12, FAST)}, environ={}, hasher=FAST)
    assert not book.verify("admin", "a" * 100_000)


def test_users_file_is_private_and_replaced_atomically(tmp_path):
    path = tmp_path / "state" / "admin-users"
    write_user_hash(path, "alice", hash_password("alice-password", FAST))
    write_user_hash(path, "bob", hash_password("bob-password!", FAST))
    write_user_hash(path, "alice", hash_password("alice-new-password", FAST))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(read_users_file(path)) == ["alice", "bob"]
    book = PasswordBook(users_file=str(path), environ={}, hasher=FAST)
    assert book.verify("alice", "alice-new-password")
    assert not book.verify("alice", "alice-password")
    assert book.verify("bob", "bob-password!")
    with pytest.raises(PasswordPolicyError):
        write_user_hash(path, "bad name:", hash_password("whatever-password", FAST))


def test_env_hash_names_a_user():
    hashed = hash_password("from-the-environment", FAST)
    book = PasswordBook(environ={"MIKU_ADMIN_PASSWORD_HASH": hashed, "MIKU_ADMIN_USER": "owner"}, hasher=FAST)
    assert book.users() == {"owner": hashed}
    assert book.verify("owner", "from-the-environment")


def test_lockout_after_repeated_failures_and_its_end():
    clock = Clock()
    throttle = LoginThrottle(LockoutPolicy(max_failures=3, window_s=60, lockout_s=300), clock)
    assert not throttle.failed("Admin")
    assert not throttle.failed("admin")
    assert throttle.check("admin") is LoginVerdict.ALLOWED
    assert throttle.failed("admin")  # the third within the window locks
    assert throttle.check("ADMIN") is LoginVerdict.LOCKED
    assert throttle.retry_after_s("admin") == pytest.approx(300)
    clock.now += 299
    assert throttle.check("admin") is LoginVerdict.LOCKED
    clock.now += 2
    assert throttle.check("admin") is LoginVerdict.ALLOWED
    assert throttle.check("someone-else") is LoginVerdict.ALLOWED


def test_failures_outside_the_window_do_not_add_up():
    clock = Clock()
    throttle = LoginThrottle(LockoutPolicy(max_failures=2, window_s=60, lockout_s=300), clock)
    throttle.failed("admin")
    clock.now += 61
    assert not throttle.failed("admin")
    throttle.succeeded("admin")
    assert not throttle.failed("admin")


def test_session_cookie_resolves_until_logout():
    clock = Clock()
    sessions = PanelSessions(b"0123456789abcdef0123456789abcdef", clock=clock)
    session, cookie = sessions.create("admin")
    assert sessions.resolve(cookie) is session
    sessions.end(session)
    assert sessions.resolve(cookie) is None


def test_tampered_or_foreign_cookies_are_refused():
    sessions = PanelSessions(b"0123456789abcdef0123456789abcdef", clock=Clock())
    other = PanelSessions(b"fedcba9876543210fedcba9876543210", clock=Clock())
    session, cookie = sessions.create("admin")
    assert sessions.resolve(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None
    assert sessions.resolve(session.session_id) is None  # the bare id is not a cookie
    _, foreign = other.create("admin")
    assert sessions.resolve(foreign) is None
    assert sessions.resolve("x" * 10_000) is None
    assert sessions.resolve(None) is None


def test_session_expires_by_lifetime_and_by_idleness():
    clock = Clock()
    sessions = PanelSessions(b"0123456789abcdef0123456789abcdef", lifetime_s=100, idle_s=30, clock=clock)
    _, cookie = sessions.create("admin")
    for _ in range(3):
        clock.now += 25
        assert sessions.resolve(cookie) is not None  # each request resets the idle timer
    clock.now += 31
    assert sessions.resolve(cookie) is None
    _, cookie = sessions.create("admin")
    for _ in range(4):
        clock.now += 25
        assert sessions.resolve(cookie) is not None
    clock.now += 25  # 125 s after login: past the lifetime although never idle
    assert sessions.resolve(cookie) is None


def test_csrf_token_is_per_session_and_compared_exactly():
    sessions = PanelSessions(b"0123456789abcdef0123456789abcdef", clock=Clock())
    first, _ = sessions.create("admin")
    second, _ = sessions.create("admin")
    assert first.csrf_token != second.csrf_token
    assert PanelSessions.csrf_ok(first, first.csrf_token)
    assert not PanelSessions.csrf_ok(first, second.csrf_token)
    assert not PanelSessions.csrf_ok(first, None)
    assert not PanelSessions.csrf_ok(first, "")


def test_secret_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "admin-secret"
    first = resolve_secret(str(path), environ={})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert resolve_secret(str(path), environ={}) == first
    assert resolve_secret(str(path), environ={"MIKU_ADMIN_SECRET": "s" * 20}) == b"s" * 20


def test_admin_config_validates_and_never_shows_hashes():
    hashed = hash_password("a-good-password", FAST)
    config = AdminConfig.from_dict({"users": {"admin": hashed}, "lockout": {"max_failures": 3}})
    assert config.lockout.max_failures == 3
    assert hashed not in str(config.redacted())
    for bad in ({"users": {"admin": "plaintext"}}, {"session_idle_s": 0}, {"lockout": {"max_failures": 0}},
                {"no_such_key": 1}, {"session_lifetime_s": float("nan")}):
        with pytest.raises(AdminConfigError):
            AdminConfig.from_dict(bad)


def test_latency_history_keeps_the_last_hour_as_columns():
    clock = Clock()
    history = LatencyHistory(window_s=3600, clock=clock)
    history.add({"first_token": 10.0, "first_frame": 120.0, "unknown": 5.0}, "prompt")
    clock.now += 1800
    history.add({"first_frame": 80.0}, "say")
    data = history.columns()
    assert data["columns"]["t"] == [1_000_000.0, 1_001_800.0]
    assert data["columns"]["first_frame"] == [120.0, 80.0]
    assert data["columns"]["first_token"] == [10.0, None]
    assert [p["ttfa_ms"] for p in history.recent_ttfa()] == [80.0, 120.0]
    clock.now += 1801
    assert history.columns()["columns"]["t"] == [1_001_800.0]


def test_admin_changes_land_in_the_controller_audit_log_with_their_user(tmp_path):
    from graph.controller.audit import AuditAction
    from graph.controller.config import ControllerConfig
    from graph.controller.errors import InvalidRequest
    from graph.controller.state_machine import SessionController

    clock = Clock()
    ctl = SessionController.open(ControllerConfig(state_dir=str(tmp_path)), clock=clock)
    for index in range(5):
        ctl.record_admin("alice", "persona.switch", {"guild_id": "1", "persona": f"p{index}"})
    tail = ctl.audit_tail(2).entries
    assert [e.detail["args"]["persona"] for e in tail] == ["p3", "p4"]
    assert all(e.action is AuditAction.ADMIN_CHANGE and e.detail["user"] == "alice" for e in tail)
    with pytest.raises(InvalidRequest):
        ctl.record_admin("alice", "x", {"blob": "y" * 20_000})
    reopened = SessionController.open(ControllerConfig(state_dir=str(tmp_path)), clock=clock)
    assert reopened.audit_tail(1).entries[0].detail["change"] == "persona.switch"  # checkpointed


def test_cli_set_password_writes_a_private_hash_the_book_accepts(tmp_path, monkeypatch, capsys):
    import io

    from deployments.cli import main

    path = tmp_path / "admin-users"
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-enough-password\n"))
    assert main(["admin", "set-password", "--user", "owner", "--users-file", str(path), "--password-stdin"]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "a-long-enough-password" not in path.read_text()
    assert PasswordBook(users_file=str(path), environ={}).verify("owner", "a-long-enough-password")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["admin", "set-password", "--users-file", str(path), "--password-stdin"]) == 2
    assert "at least" in capsys.readouterr().err


async def test_overview_is_built_once_per_interval_for_every_open_panel():
    from deployments.admin.routes import OverviewCache

    clock = Clock()
    builds = []

    async def build():
        builds.append(clock.now)
        return {"build": len(builds)}

    cache = OverviewCache(build, max_age_s=0.5, clock=clock)
    assert [await cache.get() for _ in range(3)] == [{"build": 1}] * 3
    clock.now += 0.6
    assert (await cache.get()) == {"build": 2}
    assert len(builds) == 2
