"""Private state files: secrets and databases that only the owner may read, 0600 from the first byte.

The graph keeps a bearer token, queued Discord messages and chat memory on disk. Writing a file and
chmod'ing it afterwards leaves a window in which anyone on the machine can open it (and an open handle
outlives the chmod), so these helpers create files with mode 0600 atomically (`O_CREAT | O_EXCL`) and
directories 0700. A SQLite database is pre-created 0600 before SQLite opens it: SQLite creates its
`-wal`, `-shm` and `-journal` files with the database file's own permissions, so they follow.

Files from an older version with wider modes are tightened on the next start. Nothing here imports Ray.
"""
from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def ensure_private_dir(path: str | Path) -> Path:
    """Create `path` (and missing parents) as 0700; an existing directory is left as it is."""
    path = Path(path).expanduser()
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first: fine
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        directory.chmod(PRIVATE_DIR_MODE)  # mkdir's mode passes through the umask
    return path


def tighten(path: str | Path) -> None:
    """Drop group/other permissions from an existing file (one written by an older version)."""
    with contextlib.suppress(FileNotFoundError):
        mode = os.stat(path).st_mode
        if stat.S_IMODE(mode) & 0o077:
            os.chmod(path, stat.S_IMODE(mode) & 0o700)


def create_private_file(path: str | Path, content: bytes | None = None) -> bool:
    """Create `path` with mode 0600 (atomically: no moment where others can open it), optionally
    writing `content`. Returns False, writing nothing, when the file already existed (then its mode is
    tightened to owner-only). The parent directory is created 0700 when missing."""
    path = Path(path).expanduser()
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    except FileExistsError:
        tighten(path)
        return False
    with os.fdopen(fd, "wb") as handle:
        if content:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    return True


def prepare_private_sqlite(path: str | Path) -> Path:
    """Make `path` an owner-only SQLite database file before `sqlite3.connect()` opens it.

    An empty file is a valid new database to SQLite; its -wal/-shm files inherit its mode. Side files
    left by an older version are tightened too."""
    path = Path(path).expanduser()
    create_private_file(path)
    for suffix in SQLITE_SIDE_FILES:
        tighten(f"{path}{suffix}")
    return path


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Run the block with umask 077, for libraries that create files themselves. The umask is
    process-wide: prefer `create_private_file` / `prepare_private_sqlite`, which need no umask."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)
