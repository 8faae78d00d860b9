"""Unit tests for the session controller state machine (graph/controller/state_machine.py) and its SQLite checkpoint.

Time is an injected clock, ids come from a counter, so every test is deterministic. Faults are real ones:
a second SQLite connection holding the write lock, a state directory that is a file.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from graph.controller.audit import AuditAction
from graph.controller.checkpoint import (
    DB_FILE_NAME,
    SCHEMA_VERSION,
    SqliteCheckpoint,
    StateDelta,
    StateDirError,
)
from graph.controller.config import ControllerConfig
from graph.controller.errors import (
    CheckpointError,
    InvalidRequest,
    PayloadTooLarge,
    SessionConflict,
    SessionGone,
    UnknownFeature,
    UnknownSession,
)
from graph.controller.features import (
    CONFLICT_MESSAGE,
    IMAGE_MESSAGE,
    TEXT_QUEUE_FEATURE,
    VISION_MESSAGE,
    VRAM_MESSAGE,
    Effect,
)
from graph.controller.headroom import HeadroomVerdict
from graph.controller.limits import (
    MAX_CONTENT_CHARS,
    MAX_EVENT_BYTES,
    MAX_PAGE_BYTES,
    SQLITE_MAX_INT,
)
from graph.controller.sessions import SessionRequest, SessionState
from graph.controller.state_machine import SessionController
from graph.controller.telemetry import VramHeadroom
from graph.controller.text_queue import IncomingMessage
from graph.controller.vram_watch import VramWatch, WatchUpdate
from tests.support.vram import SettableRx6800, telemetry_with

CONFIG_FILE = Path(__file__).resolve().parents[1] / "configs" / "controller.yaml"
ALL_FEATURES = (
    "vision",
    "image_generation",
    "bipolar_mode",
    "profile_picture",
    "autonomous_engine",
    "scheduled_events",
    "figurine_notifier",
    "text_channel_messages",
    "text_inference",
)


class Clock:
    """A settable wall clock for the controller."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(state_dir, clock, *, headroom=None, **overrides) -> SessionController:
    config = ControllerConfig(state_dir=str(state_dir), checkpoint_busy_timeout_s=0.05, **overrides)
    counter = itertools.count(1)
    return SessionController.open(config, clock=clock, headroom=headroom, id_factory=lambda: f"s{next(counter)}")


def request(n: int = 1, **kw) -> SessionRequest:
    return SessionRequest(guild_id="g1", voice_channel_id=f"v{n}", text_channel_id="t1", user_id=f"u{n}", **kw)


def msg(n: int, **kw) -> IncomingMessage:
    return IncomingMessage(channel_id="t1", author_id="u9", content=f"hello {n}", message_id=f"m{n}", **kw)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ctl(tmp_path, clock):
    controller = make(tmp_path, clock)
    yield controller
    controller.close()


def assert_all_free(controller: SessionController) -> None:
    for result in controller.features():
        assert result.allowed and result.effect is None and not result.held_by, result
    assert controller.check("text_inference").route == "default"


# ------------------------------------------------------------------------------------------ features
def test_config_file_defines_every_feature_with_the_issue_messages():
    config = ControllerConfig.from_file(CONFIG_FILE)
    assert tuple(spec.feature_id for spec in config.features) == ALL_FEATURES
    specs = {spec.feature_id: spec for spec in config.features}
    assert specs["vision"].message == VISION_MESSAGE
    assert specs["image_generation"].message == IMAGE_MESSAGE
    assert config.message("session_conflict", None, None) == CONFLICT_MESSAGE
    assert (config.lease_s, config.queue_limit, config.max_sessions) == (30, 100, 1)


def test_session_switches_every_feature_and_end_restores_them(ctl):
    assert_all_free(ctl)
    started = ctl.start_session(request())
    assert started.session.lease_s == 30.0
    by_id = {r.feature: r for r in started.blackouts}
    assert set(by_id) == set(ALL_FEATURES)

    vision = ctl.check("vision")
    assert (vision.allowed, vision.silent, vision.effect) == (False, False, Effect.BLOCKED)
    assert vision.message == VISION_MESSAGE
    assert ctl.check("image_generation").message == IMAGE_MESSAGE
    for silent in ("bipolar_mode", "profile_picture", "autonomous_engine", "scheduled_events", "figurine_notifier"):
        result = ctl.check(silent)
        assert not result.allowed and result.silent and result.message is None, result
    assert ctl.check("profile_picture").effect is Effect.LOCKED
    assert ctl.check("autonomous_engine").effect is Effect.PAUSED
    assert ctl.check(TEXT_QUEUE_FEATURE).effect is Effect.QUEUED
    inference = ctl.check("text_inference")
    assert inference.allowed and inference.route == "rx6800" and inference.held_by == ("s1",)

    ended = ctl.end_session("s1")
    assert ended.ended and set(ended.restored) == set(ALL_FEATURES)
    assert_all_free(ctl)


def test_unknown_feature_is_an_error_naming_the_known_ones(ctl):
    with pytest.raises(UnknownFeature, match="vision"):
        ctl.check("telepathy")


def test_persona_messages_override_and_fall_back(tmp_path, clock):
    base = ControllerConfig.from_file(CONFIG_FILE)
    config = ControllerConfig(
        state_dir=str(tmp_path), features=base.features, messages={"evil": {"vision": "no."}}
    )
    ctl = SessionController.open(config, clock=clock)
    ctl.start_session(request(persona="evil"))
    assert ctl.check("vision", persona="evil").message == "no."
    assert ctl.check("image_generation", persona="evil").message == IMAGE_MESSAGE
    assert ctl.check("vision").message == VISION_MESSAGE
    with pytest.raises(SessionConflict) as err:
        ctl.start_session(request(2, persona="evil"))
    assert err.value.message == CONFLICT_MESSAGE
    ctl.close()


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="lease"):
        ControllerConfig.from_mapping({"lease": 3})
    with pytest.raises(ValueError, match="queue_limit"):
        ControllerConfig(queue_limit=0)
    with pytest.raises(ValueError, match="unknown keys"):
        ControllerConfig(messages={"default": {"telepathy": "x"}})
    with pytest.raises(ValueError, match="effect"):
        ControllerConfig.from_mapping({"features": [{"id": "x", "effect": "vanished"}]})


# ------------------------------------------------------------------------------------------ sessions
def test_second_session_is_refused_with_the_user_facing_message(ctl):
    ctl.start_session(request(1))
    with pytest.raises(SessionConflict) as err:
        ctl.start_session(request(2))
    assert err.value.message == CONFLICT_MESSAGE and err.value.http_status == 409
    assert [s.session_id for s in ctl.sessions()] == ["s1"]


def test_retried_start_with_the_same_request_id_gets_the_same_session(ctl):
    first = ctl.start_session(request(request_id="r1"))
    again = ctl.start_session(request(request_id="r1"))
    assert again.reused and again.session.session_id == first.session.session_id
    assert len(ctl.sessions()) == 1


def test_heartbeats_keep_the_lease_and_silence_expires_it(ctl, clock):
    ctl.start_session(request())
    for _ in range(5):
        clock.advance(20)
        assert ctl.heartbeat("s1").expires_at == clock.now + 30
    assert ctl.check("vision").blocked
    clock.advance(29.9)
    assert ctl.expire_stale() == ()
    clock.advance(0.2)
    expired = ctl.expire_stale()
    assert [s.state for s in expired] == [SessionState.EXPIRED]
    assert_all_free(ctl)
    assert ctl.stats().expired_total == 1
    with pytest.raises(SessionGone) as err:
        ctl.heartbeat("s1")
    assert err.value.http_status == 410


def test_check_expires_a_lapsed_lease_without_waiting_for_the_loop(ctl, clock):
    ctl.start_session(request())
    clock.advance(31)
    assert ctl.check("vision").allowed
    assert ctl.session("s1").state is SessionState.EXPIRED


def test_ending_twice_is_a_no_op_that_says_so(ctl, clock):
    ctl.start_session(request())
    assert ctl.end_session("s1").ended
    again = ctl.end_session("s1")
    assert not again.ended and again.state is SessionState.ENDED and "already" in again.message
    ctl.start_session(request(2))
    clock.advance(31)
    late = ctl.end_session("s2")
    assert not late.ended and late.state is SessionState.EXPIRED


def test_unknown_session_ids_are_404s(ctl):
    for call in (ctl.heartbeat, ctl.end_session, ctl.session):
        with pytest.raises(UnknownSession) as err:
            call("nope")
        assert err.value.http_status == 404


def test_more_sessions_only_when_configured_and_headroom_admits(tmp_path, clock):
    verdicts = [HeadroomVerdict(True, "12 GB free"), HeadroomVerdict(False, "RX 6800 has 1.2 GB free, 3 GB needed")]
    ctl = make(tmp_path, clock, max_sessions=3, headroom=lambda: verdicts.pop(0))
    verdicts.insert(0, HeadroomVerdict(True, "14 GB free"))  # every start asks the probe, the first one too
    ctl.start_session(request(1))
    ctl.start_session(request(2))
    with pytest.raises(SessionConflict, match="1.2 GB free"):
        ctl.start_session(request(3))
    assert len(ctl.sessions()) == 2 and verdicts == []
    # Blackouts hold until the last session ends.
    assert ctl.end_session("s1").restored == ()
    assert ctl.check("vision").held_by == ("s2",)
    assert set(ctl.end_session("s2").restored) == set(ALL_FEATURES)
    assert_all_free(ctl)
    ctl.close()


def test_without_telemetry_the_configured_capacity_decides(tmp_path, clock):
    ctl = make(tmp_path, clock, max_sessions=4, configured_capacity=2)
    ctl.start_session(request(1))
    ctl.start_session(request(2))
    with pytest.raises(SessionConflict, match="configured capacity is 2"):
        ctl.start_session(request(3))
    ctl.close()


def test_a_failing_headroom_probe_refuses_rather_than_risking_the_gpu(tmp_path, clock):
    def broken() -> HeadroomVerdict:
        raise RuntimeError("NVML not found")

    ctl = make(tmp_path, clock, max_sessions=2, headroom=broken)
    with pytest.raises(SessionConflict, match="NVML not found") as err:  # the first start asks it too
        ctl.start_session(request(1))
    assert err.value.message.startswith(VRAM_MESSAGE) and ctl.sessions() == ()
    ctl.close()


def test_the_first_session_is_refused_when_the_rx6800_is_already_over_14_gb(tmp_path, clock):
    card = SettableRx6800(tmp_path / "vram", used_gb=14.5)
    ctl = make(tmp_path / "state", clock, headroom=VramHeadroom(telemetry=telemetry_with(card).snapshot))
    with pytest.raises(SessionConflict) as err:
        ctl.start_session(request())
    assert err.value.message.startswith(VRAM_MESSAGE) and "rx6800 uses 14.5 GB" in err.value.message
    assert err.value.http_status == 409 and ctl.sessions() == ()
    assert_all_free(ctl)
    card.set(9.0)  # the card frees up: the same request now starts
    assert ctl.start_session(request()).session.session_id == "s1"
    ctl.close()


def test_a_persona_words_the_vram_refusal(tmp_path, clock):
    card = SettableRx6800(tmp_path / "vram", used_gb=15.0)
    config = ControllerConfig(state_dir=str(tmp_path / "state"), messages={"evil": {"vram_short": "no room."}})
    ctl = SessionController.open(config, clock=clock, headroom=VramHeadroom(telemetry=telemetry_with(card).snapshot))
    with pytest.raises(SessionConflict, match=r"^no room\. \(rx6800 uses 15.0 GB"):
        ctl.start_session(request(persona="evil"))
    ctl.close()


def test_absent_telemetry_does_not_block_a_session_on_a_cpu_only_machine(tmp_path, clock):
    # The real probes: no NVIDIA driver, no amdsmi here. Nothing to protect, so the session starts.
    ctl = make(tmp_path, clock, headroom=VramHeadroom())
    assert ctl.start_session(request()).session.session_id == "s1"
    ctl.close()


def test_vram_watch_warns_once_per_crossing_during_a_session(tmp_path):
    card = SettableRx6800(tmp_path / "vram", used_gb=12.0)
    limits = VramHeadroom(telemetry=telemetry_with(card).snapshot)
    watch = VramWatch()
    assert watch.observe(limits.excess(), at=1.0) == WatchUpdate() and watch.warnings() == ()
    card.set(14.6)
    first = watch.observe(limits.excess(), at=2.0)
    assert [w.excess.resource for w in first.crossed] == ["rx6800"]
    card.set(15.1)
    still = watch.observe(limits.excess(), at=3.0)
    assert still.crossed == () and still.recovered == ()  # still over: no second warning
    (warning,) = watch.warnings()
    body = warning.to_dict()
    assert body["kind"] == "vram_over_limit" and body["since"] == 2.0 and body["used_gb"] == pytest.approx(15.1)
    assert body["limit_gb"] == 14.0 and "over its 14 GB limit" in body["message"]
    card.set(13.0)
    assert watch.observe(limits.excess(), at=4.0).recovered == ("rx6800",) and watch.warnings() == ()
    card.set(14.2)
    again = watch.observe(limits.excess(), at=5.0)  # a new crossing is reported again
    assert len(again.crossed) == 1 and watch.crossings_total == 2
    assert watch.clear().recovered == ("rx6800",)
    assert VramHeadroom().excess() == ()  # no card visible: nothing to warn about


# ------------------------------------------------------------------------------------------ atomicity
def hold_write_lock(state_dir) -> sqlite3.Connection:
    other = sqlite3.connect(Path(state_dir) / DB_FILE_NAME, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


def test_failed_checkpoint_on_start_changes_nothing_and_says_why(ctl, tmp_path):
    other = hold_write_lock(tmp_path)
    with pytest.raises(CheckpointError, match="database is locked") as err:
        ctl.start_session(request())
    assert "state unchanged" in err.value.message
    assert ctl.sessions() == ()
    assert_all_free(ctl)
    other.execute("ROLLBACK")
    other.close()
    assert ctl.start_session(request()).session.session_id == "s2"
    assert ctl.check("vision").blocked


def test_failed_checkpoint_on_end_keeps_the_session_whole(ctl, tmp_path, clock):
    ctl.start_session(request())
    ctl.enqueue(msg(1))
    other = hold_write_lock(tmp_path)
    with pytest.raises(CheckpointError):
        ctl.end_session("s1")
    # Expiry that cannot be stored is not applied either; check() still answers (fail closed).
    clock.advance(31)
    assert ctl.check("vision").blocked
    assert [s.session_id for s in ctl.sessions()] == ["s1"]
    assert all(r.held_by == ("s1",) for r in ctl.features())
    other.execute("ROLLBACK")
    other.close()
    assert ctl.end_session("s1").ended is False  # the lease ran out meanwhile: expired, then a no-op
    assert_all_free(ctl)
    assert [m.content for m in ctl.replay().messages] == ["hello 1"]


def test_a_write_failing_half_way_stores_none_of_the_change(ctl, tmp_path, clock):
    """The queue row is written before the counters; a failure at the counters must take the row back too."""
    ctl.start_session(request())
    ctl.enqueue(msg(1))
    other = sqlite3.connect(Path(tmp_path) / DB_FILE_NAME, isolation_level=None)
    other.execute(
        "CREATE TRIGGER fail_counters BEFORE INSERT ON counters BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
    )
    with pytest.raises(CheckpointError, match="disk trouble"):
        ctl.enqueue(msg(2))
    assert [m.content for m in ctl.queue()] == ["hello 1"] and ctl.stats().queue_length == 1
    other.execute("DROP TRIGGER fail_counters")
    other.close()
    ctl.close()
    reopened = make(tmp_path, clock)
    assert [m.content for m in reopened.queue()] == ["hello 1"]
    assert reopened.enqueue(msg(2)).message.queue_id == 2  # the failed change took no id
    reopened.close()


# ------------------------------------------------------------------------------------------ durability
def test_checkpoint_round_trip_restores_sessions_features_queue_and_audit(tmp_path, clock):
    first = make(tmp_path, clock, queue_limit=2)
    first.start_session(request(persona="evil", request_id="r"))
    for n in range(3):
        first.enqueue(msg(n, sent_at=500.0 + n, event={"type": "message", "author_name": "Rin"}))
    before = (first.sessions(), first.features(), first.queue(), first.stats(), first.audit())
    first.close()

    second = make(tmp_path, clock, queue_limit=2)
    assert (second.sessions(), second.features(), second.queue(), second.stats(), second.audit()) == before
    assert second.queue()[0].event == {"type": "message", "author_name": "Rin"} and second.queue()[0].sent_at == 501.0
    second.close()


def test_a_session_whose_lease_ran_out_while_down_is_expired_on_load(tmp_path, clock):
    first = make(tmp_path, clock)
    first.start_session(request())
    first.close()
    clock.advance(3600)  # the whole cluster was down for an hour
    second = make(tmp_path, clock)
    assert second.sessions() == ()
    assert_all_free(second)
    last = second.audit()[-1]
    assert last.action is AuditAction.SESSION_EXPIRED and set(last.features) == set(ALL_FEATURES)
    with pytest.raises(SessionGone):
        second.heartbeat("s1")
    second.close()


def test_a_checkpoint_holder_without_a_session_is_released_on_load(tmp_path, clock):
    first = make(tmp_path, clock)
    first.start_session(request())
    first.end_session("s1")
    first.close()
    # A checkpoint claiming a blackout that no session holds (hand-edited or from a buggy build).
    store = SqliteCheckpoint(tmp_path)
    state = store.load()
    state["holders"] = {"vision": ["ghost"], "old_feature": ["ghost"]}
    store.replace(state)
    store.close()
    second = make(tmp_path, clock)
    assert_all_free(second)
    assert second.audit()[-1].action is AuditAction.FEATURES_RECONCILED
    second.close()


class RecordingCheckpoint(SqliteCheckpoint):
    """The real store, remembering what each change asked it to write."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deltas: list[StateDelta] = []

    def apply(self, delta, audit=()):
        self.deltas.append(delta)
        super().apply(delta, audit)


def test_a_change_writes_only_the_rows_it_touches(tmp_path, clock):
    store = RecordingCheckpoint(tmp_path)
    ctl = SessionController(ControllerConfig(state_dir=str(tmp_path)), store, clock=clock, id_factory=lambda: "s1")
    ctl.start_session(request())
    big = "x" * 3900
    for n in range(100):
        ctl.enqueue(msg(n, event={"content": big}))
    store.deltas.clear()

    clock.advance(5)
    ctl.heartbeat("s1")
    (beat,) = store.deltas
    assert [sid for sid, _ in beat.sessions_upserted] == ["s1"]
    assert not (beat.queue_added or beat.queue_removed or beat.holders_added or beat.holders_removed)
    assert not (beat.ended_added or beat.sessions_removed) and beat.counters == {}

    ctl.enqueue(msg(100))  # the 101st: one row in, the oldest row out, nothing else rewritten
    queued = store.deltas[-1]
    assert [q for q, _ in queued.queue_added] == [101] and queued.queue_removed == [1]
    assert queued.sessions_upserted == [] and set(queued.counters) == {"next_queue_id", "next_audit_seq", "dropped_total"}

    ctl.end_session("s1")
    ended = store.deltas[-1]
    assert ended.sessions_removed == ["s1"] and [sid for sid, _ in ended.ended_added] == ["s1"]
    assert {f for f, _ in ended.holders_removed} == set(ALL_FEATURES) and ended.queue_added == []
    ctl.close()

    reopened = make(tmp_path, clock)
    assert [m.queue_id for m in reopened.queue()] == list(range(2, 102))
    assert reopened.queue()[0].event == {"content": big}
    assert reopened.session("s1").state is SessionState.ENDED
    reopened.close()


V1_SCHEMA = """
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE audit (seq INTEGER PRIMARY KEY, at REAL NOT NULL, action TEXT NOT NULL, session_id TEXT,
                    features TEXT NOT NULL, detail TEXT NOT NULL);
"""


def test_a_version_1_checkpoint_is_migrated_on_load(tmp_path, clock):
    # Build the state with today's code, then write it the way version 1 did: one JSON blob.
    source = make(tmp_path / "source", clock, max_sessions=2, configured_capacity=2)
    source.start_session(request(1, persona="evil"))
    source.start_session(request(2))
    source.end_session("s1")
    for n in range(3):
        source.enqueue(msg(n, event={"n": n}))
    before = (source.sessions(), source.features(), source.queue(), source.stats(), source.session("s1"))
    audit = source.audit()
    document = dict(source._state.to_dict(), version=1)
    source.close()

    old = tmp_path / "old"
    old.mkdir()
    conn = sqlite3.connect(old / DB_FILE_NAME)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO state VALUES ('controller', ?), ('opened', '1')", (json.dumps(document),))
    conn.executemany(
        "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?)",
        [(e.seq, e.at, e.action.value, e.session_id, json.dumps(list(e.features)), json.dumps(dict(e.detail))) for e in audit],
    )
    conn.commit()
    conn.close()

    migrated = make(old, clock, max_sessions=2, configured_capacity=2)
    assert (migrated.sessions(), migrated.features(), migrated.queue(), migrated.stats(), migrated.session("s1")) == before
    assert migrated.audit() == audit
    assert migrated.enqueue(msg(9)).message.queue_id == 4  # the counters came along
    migrated.close()
    store = SqliteCheckpoint(old)
    assert store.schema_version() == SCHEMA_VERSION
    tables = {name for (name,) in store._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "state" not in tables and {"sessions", "holders", "queue", "counters"} <= tables
    store.close()


def test_an_unknown_checkpoint_version_is_a_startup_error_and_keeps_the_file(tmp_path, clock):
    conn = sqlite3.connect(tmp_path / DB_FILE_NAME)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO state VALUES ('controller', ?)", (json.dumps({"version": 7}),))
    conn.commit()
    conn.close()
    with pytest.raises(StateDirError, match="version 7"):
        make(tmp_path, clock)
    conn = sqlite3.connect(tmp_path / DB_FILE_NAME)
    assert conn.execute("SELECT value FROM state").fetchone() == ('{"version": 7}',)  # rolled back, not lost
    conn.close()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_checkpoint_files_are_private_from_creation(tmp_path, clock):
    previous = os.umask(0o022)  # the usual umask, which would give 0644 files
    try:
        state_dir = tmp_path / "fresh" / "controller"
        ctl = make(state_dir, clock)
        db = state_dir / DB_FILE_NAME
        files = [db, db.with_name(DB_FILE_NAME + "-wal"), db.with_name(DB_FILE_NAME + "-shm")]
        assert all(f.exists() for f in files)  # WAL mode: SQLite made both side files at open
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert _mode(state_dir) == 0o700
        ctl.start_session(request())
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        ctl.close()
    finally:
        os.umask(previous)


def test_checkpoint_files_left_world_readable_by_an_old_build_are_tightened(tmp_path, clock):
    first = make(tmp_path, clock)
    first.start_session(request())
    db = tmp_path / DB_FILE_NAME
    side = [db.with_name(DB_FILE_NAME + s) for s in ("-wal", "-shm")]
    for path in [db, *side]:
        os.chmod(path, 0o644)
    reopened = make(tmp_path, clock)  # opened while the first still holds the files
    assert {p.name: _mode(p) for p in [db, *side]} == {p.name: 0o600 for p in [db, *side]}
    assert [s.session_id for s in reopened.sessions()] == ["s1"]
    reopened.close()
    first.close()


def test_unwritable_state_dir_is_a_startup_error(tmp_path, clock):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StateDirError, match="a-file"):
        make(blocker / "state", clock)
    (tmp_path / "db-is-dir" / DB_FILE_NAME).mkdir(parents=True)
    with pytest.raises(StateDirError, match="not usable|not writable"):
        make(tmp_path / "db-is-dir", clock)


# ------------------------------------------------------------------------------------------ text queue
def test_outside_a_session_messages_are_not_queued(ctl):
    result = ctl.enqueue(msg(1))
    assert not result.queued and "handle it now" in result.reason
    assert ctl.queue() == ()


def test_queue_keeps_order_and_timestamps_and_drops_the_oldest_with_a_warning(tmp_path, clock):
    ctl = make(tmp_path, clock, queue_limit=3)
    ctl.start_session(request())
    results = []
    for n in range(5):
        clock.advance(1)
        results.append(ctl.enqueue(msg(n)))
    assert [r.dropped for r in results[:3]] == [(), (), ()]
    assert [m.content for m in results[3].dropped] == ["hello 0"]
    assert "1 message" in results[3].warning and results[2].warning is None
    assert [m.content for m in ctl.queue()] == ["hello 2", "hello 3", "hello 4"]
    assert [m.sent_at for m in ctl.queue()] == [clock.now - 2, clock.now - 1, clock.now]
    assert ctl.stats().dropped_total == 2 and ctl.stats().queue_length == 3
    ctl.close()


def test_a_retried_enqueue_is_not_stored_twice(ctl):
    ctl.start_session(request())
    first = ctl.enqueue(msg(1))
    again = ctl.enqueue(msg(1))
    assert again.duplicate and again.message == first.message
    assert len(ctl.queue()) == 1


def test_replay_waits_for_the_session_to_end_then_hands_back_in_order(ctl):
    ctl.start_session(request())
    for n in range(4):
        ctl.enqueue(msg(n))
    waiting = ctl.replay()
    assert not waiting.ready and waiting.messages == () and waiting.remaining == 4
    assert ctl.end_session("s1").replay_pending == 4
    batch = ctl.replay(limit=3)
    assert batch.ready and [m.content for m in batch.messages] == ["hello 0", "hello 1", "hello 2"]
    assert batch.remaining == 4
    assert ctl.replay().messages[:3] == batch.messages  # fetching changes nothing


def test_crash_mid_replay_loses_nothing_and_repeats_nothing(tmp_path, clock):
    ctl = make(tmp_path, clock)
    ctl.start_session(request())
    ids = [ctl.enqueue(msg(n)).message.queue_id for n in range(6)]
    ctl.end_session("s1")
    handled = []
    for message in ctl.replay().messages[:2]:
        handled.append(message.content)
        ctl.ack([message.queue_id])
    ctl.close()  # the process dies in the middle of the replay

    revived = make(tmp_path, clock)
    batch = revived.replay()
    assert [m.queue_id for m in batch.messages] == ids[2:]
    handled.extend(m.content for m in batch.messages)
    result = revived.ack([m.queue_id for m in batch.messages] + ids[:1])
    assert result.acked == tuple(ids[2:]) and result.unknown == (ids[0],) and result.remaining == 0
    assert handled == [f"hello {n}" for n in range(6)]
    assert revived.replay().messages == ()
    revived.close()


def test_audit_records_every_change_with_its_features(ctl):
    ctl.start_session(request())
    ctl.heartbeat("s1")
    ctl.enqueue(msg(1))
    ctl.end_session("s1")
    ctl.ack([1])
    entries = ctl.audit()
    assert [e.action for e in entries] == [
        AuditAction.SESSION_STARTED,
        AuditAction.MESSAGE_QUEUED,
        AuditAction.SESSION_ENDED,
        AuditAction.MESSAGES_ACKED,
    ]
    assert set(entries[0].features) == set(ALL_FEATURES) == set(entries[2].features)
    assert entries[0].session_id == "s1" and entries[0].detail["guild_id"] == "g1"
    assert [e.seq for e in ctl.audit(after_seq=2, limit=1)] == [3]


# ------------------------------------------------------------------------------------------ bounds and pages
def test_oversized_or_non_json_messages_are_refused_and_nothing_is_stored(ctl):
    ctl.start_session(request())
    with pytest.raises(PayloadTooLarge, match="4000") as err:
        ctl.enqueue(IncomingMessage("t1", "u9", "x" * (MAX_CONTENT_CHARS + 1)))
    assert err.value.http_status == 413
    with pytest.raises(PayloadTooLarge, match="event is") as err:
        ctl.enqueue(IncomingMessage("t1", "u9", "hi", event={"blob": "y" * MAX_EVENT_BYTES}))
    with pytest.raises(InvalidRequest, match="NaN") as err:
        ctl.enqueue(IncomingMessage("t1", "u9", "hi", event={"x": float("nan")}))
    assert err.value.http_status == 422
    nested: dict = {}
    for _ in range(5000):  # far deeper than Python's recursion limit: refused, not a RecursionError
        nested = {"n": nested}
    with pytest.raises(InvalidRequest, match="nested"):
        ctl.enqueue(IncomingMessage("t1", "u9", "hi", event=nested))
    assert ctl.queue() == () and ctl.stats().queue_length == 0
    # the largest message allowed goes in whole
    biggest = ctl.enqueue(IncomingMessage("t1", "u9", "é" * MAX_CONTENT_CHARS, event={"content": "é" * 4000}))
    assert biggest.queued and ctl.queue()[0].content == "é" * MAX_CONTENT_CHARS


def test_replay_pages_stay_under_the_byte_budget_and_walk_the_whole_queue(ctl):
    ctl.start_session(request())
    for n in range(100):
        ctl.enqueue(msg(n, event={"content": "z" * 30_000}))  # ~3 MB in all
    ctl.end_session("s1")
    seen, after, pages = [], 0, 0
    while True:
        page = ctl.replay(limit=100, after_id=after)
        pages += 1
        assert len(json.dumps(page.to_dict()).encode()) <= MAX_PAGE_BYTES + 1024
        assert page.remaining == 100 and page.messages
        seen.extend(m.queue_id for m in page.messages)
        if page.next_after_id is None:
            break
        assert page.next_after_id == page.messages[-1].queue_id
        after = page.next_after_id
    assert seen == list(range(1, 101)) and pages > 1
    small = ctl.replay(limit=3, max_bytes=10**9)
    assert [m.queue_id for m in small.messages] == [1, 2, 3] and small.next_after_id == 3
    assert ctl.replay(after_id=SQLITE_MAX_INT).messages == ()
    with pytest.raises(InvalidRequest, match="after_id"):
        ctl.replay(after_id=2**63)


def test_audit_pages_and_refuses_cursors_sqlite_cannot_hold(ctl):
    ctl.start_session(request())
    for n in range(5):
        ctl.enqueue(msg(n))
    first = ctl.audit_page(0, 4)
    assert [e.seq for e in first.entries] == [1, 2, 3, 4] and first.next_after_seq == 4
    last = ctl.audit_page(first.next_after_seq, 4)
    assert [e.seq for e in last.entries] == [5, 6] and last.next_after_seq is None
    assert ctl.audit_page(SQLITE_MAX_INT).entries == ()
    for bad in (2**63, -1):
        with pytest.raises(InvalidRequest, match="after_seq"):
            ctl.audit_page(bad)
    with pytest.raises(InvalidRequest, match="limit"):
        ctl.audit_page(0, 0)


# ------------------------------------------------------------------------------------------ invariant
class ControllerWalk(RuleBasedStateMachine):
    """Random starts, ends, heartbeats, expiries, enqueues, replays and restarts from the checkpoint.

    After every step: no feature is in blackout without an active session holding it, every active session
    holds every feature, and the queue holds exactly the messages queued and not yet acknowledged.
    """

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="miku-ctl-")
        self.clock = Clock()
        self.ids = itertools.count(1)
        self.seen: list[str] = []
        self.unacked: list[int] = []  # model of the queue, in order
        self.acked: set[int] = set()
        self.ctl = self._open()

    def _open(self) -> SessionController:
        config = ControllerConfig(
            state_dir=self.dir, lease_s=30, queue_limit=5, max_sessions=2, configured_capacity=2
        )
        return SessionController.open(config, clock=self.clock, id_factory=lambda: f"s{next(self.ids)}")

    def teardown(self):
        self.ctl.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _known(self, index: int) -> str:
        return self.seen[index % len(self.seen)]

    @rule(persona=st.sampled_from([None, "evil"]))
    def start(self, persona):
        try:
            started = self.ctl.start_session(request(len(self.seen), persona=persona))
        except SessionConflict:
            assert len(self.ctl.sessions()) == 2
            return
        self.seen.append(started.session.session_id)

    @precondition(lambda self: self.seen)
    @rule(index=st.integers(0, 50))
    def end(self, index):
        session_id = self._known(index)
        was_active = session_id in {s.session_id for s in self.ctl.sessions()}
        result = self.ctl.end_session(session_id)
        assert result.ended == was_active

    @precondition(lambda self: self.seen)
    @rule(index=st.integers(0, 50))
    def heartbeat(self, index):
        try:
            self.ctl.heartbeat(self._known(index))
        except SessionGone:
            assert self.ctl.session(self._known(index)).state is not SessionState.ACTIVE

    @rule(seconds=st.sampled_from([1.0, 10.0, 29.0, 31.0, 120.0]))
    def time_passes(self, seconds):
        self.clock.advance(seconds)
        self.ctl.expire_stale()

    @rule()
    def restart_from_checkpoint(self):
        self.ctl.close()
        self.ctl = self._open()

    @rule(n=st.integers(0, 10_000))
    def enqueue(self, n):
        result = self.ctl.enqueue(IncomingMessage(channel_id="t", author_id="a", content=str(n)))
        assert result.queued == bool(self.ctl.sessions())
        if result.queued:
            self.unacked.append(result.message.queue_id)
            dropped = [m.queue_id for m in result.dropped]
            assert dropped == self.unacked[: len(dropped)]
            del self.unacked[: len(dropped)]

    @rule(count=st.integers(0, 3))
    def replay_and_ack_some(self, count):
        batch = self.ctl.replay(limit=3)
        if not batch.ready:
            return
        ids = [m.queue_id for m in batch.messages]
        assert ids == self.unacked[: len(ids)] and not self.acked & set(ids)
        self.ctl.ack(ids[:count])
        self.acked.update(ids[:count])
        del self.unacked[: min(count, len(ids))]

    @invariant()
    def no_blackout_without_a_holder(self):
        active = {s.session_id for s in self.ctl.sessions()}
        assert len(active) <= 2
        for result in self.ctl.features():
            assert set(result.held_by) == active, result
            if not active:
                assert result.allowed and result.effect is None
            elif result.feature != "text_inference":
                assert result.blocked

    @invariant()
    def queue_matches_the_model(self):
        assert [m.queue_id for m in self.ctl.queue()] == self.unacked


ControllerWalk.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None, database=None)
TestControllerWalk = ControllerWalk.TestCase
