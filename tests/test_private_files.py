"""State files that hold secrets or queued Discord messages are owner-only from creation (graph.files):
the graph's bearer token, the brain's SQLite memory with its -wal/-shm files, and their directories."""
import os
import stat
import threading

import pytest

from deployments.auth import resolve_token
from graph.brain.memory import MemoryStore
from graph.files import create_private_file, ensure_private_dir, prepare_private_sqlite, private_umask


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def permissive_umask():
    """The usual desktop umask (022), under which a plain open() makes world-readable files."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_private_file_is_created_0600_and_its_missing_directories_0700(tmp_path):
    path = tmp_path / "a" / "b" / "secret"
    assert create_private_file(path, b"s3cret\n")
    assert mode(path) == 0o600 and path.read_bytes() == b"s3cret\n"
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700


def test_the_file_is_never_readable_by_others_not_even_while_it_is_written(tmp_path, monkeypatch):
    """os.open gets mode 0600 itself: there is no chmod afterwards that could come too late."""
    seen = []
    real_open = os.open

    def watching_open(path, flags, mode_=0o777, *args, **kwargs):
        seen.append((flags, mode_))
        return real_open(path, flags, mode_, *args, **kwargs)

    monkeypatch.setattr(os, "open", watching_open)
    create_private_file(tmp_path / "token", b"x")
    flags, created_mode = seen[-1]
    assert flags & os.O_EXCL and flags & os.O_CREAT and created_mode == 0o600


def test_an_existing_file_is_kept_and_tightened(tmp_path):
    path = tmp_path / "old"
    path.write_text("kept")
    path.chmod(0o644)
    assert not create_private_file(path, b"new")
    assert path.read_text() == "kept" and mode(path) == 0o600


def test_concurrent_creators_write_exactly_one_file(tmp_path):
    path = tmp_path / "raced"
    results = []
    barrier = threading.Barrier(8)

    def create(i):
        barrier.wait()
        results.append(create_private_file(path, f"{i}".encode()))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1 and mode(path) == 0o600


def test_the_graph_token_file_is_created_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("MIKU_GRAPH_TOKEN", raising=False)
    path = tmp_path / ".miku" / "token"
    token = resolve_token(None, str(path))
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert path.read_text().strip() == token and resolve_token(None, str(path)) == token


async def test_the_brain_memory_and_its_wal_and_shm_files_are_0600(tmp_path):
    path = tmp_path / "state" / "brain.sqlite3"
    store = await MemoryStore.open(path)
    try:
        await store._db.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        await store._db.execute("INSERT INTO probe VALUES (1)")
        await store._db.commit()
        for name in ("brain.sqlite3", "brain.sqlite3-wal", "brain.sqlite3-shm"):
            assert (tmp_path / "state" / name).exists(), name
            assert mode(tmp_path / "state" / name) == 0o600, name
        assert mode(tmp_path / "state") == 0o700
    finally:
        await store.close()


def test_a_plain_sqlite3_database_prepared_first_keeps_its_side_files_private(tmp_path):
    """What the controller's checkpoint does: prepare_private_sqlite, then sqlite3.connect."""
    import sqlite3

    path = prepare_private_sqlite(tmp_path / "controller" / "controller.sqlite3")
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        for suffix in ("", "-wal", "-shm"):
            assert mode(f"{path}{suffix}") == 0o600, suffix
    finally:
        conn.close()


def test_old_side_files_are_tightened_and_private_umask_restores_the_previous_one(tmp_path):
    db = tmp_path / "x.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"x.sqlite3{suffix}").write_bytes(b"")
        (tmp_path / f"x.sqlite3{suffix}").chmod(0o644)
    prepare_private_sqlite(db)
    assert {mode(tmp_path / f"x.sqlite3{s}") for s in ("", "-wal", "-shm")} == {0o600}
    with private_umask():
        (tmp_path / "made-inside").write_text("x")
    (tmp_path / "made-after").write_text("x")
    assert mode(tmp_path / "made-inside") == 0o600 and mode(tmp_path / "made-after") == 0o644
    assert ensure_private_dir(tmp_path / "d") == tmp_path / "d" and mode(tmp_path / "d") == 0o700
