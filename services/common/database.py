"""Opening the services' SQLite files (run stores, the answer cache) with errors a user can act on."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path

from services.common.errors import StorageFullError, StoreError


def open_database(path: str | Path, what: str, schema: str) -> sqlite3.Connection:
    """A WAL-mode connection to `path` with `schema` applied. A file that is not a database, a
    read-only or full directory, ... raise StoreError naming `what` and the path; the file is
    left as it was."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(schema)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"{what} {path} cannot be used: {exc} (nothing in it was changed)") from exc
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, what: str, path: str | Path):
    """One write transaction on an autocommit connection: committed, or rolled back on any error.
    SQLite's "database or disk is full" becomes StorageFullError naming `what` and the path."""
    try:
        with conn:
            conn.execute("BEGIN")
            yield conn
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
            raise StorageFullError(f"{what} {path}: {exc}; nothing stored was lost, free space and retry") from exc
        raise


def hold_exclusive(path: str | Path, what: str) -> int:
    """Lock `path`.lock for this process's lifetime (the fd is returned and kept open); StoreError
    if another process holds it, e.g. a second optimizer pointed at the same store."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{what} {path} cannot be used: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(f"{what} {path} is in use by another process (pid {holder}); one service per store") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
