"""The SQLite every part of skynet uses: pysqlite3's bundled library when it is installed.

Why not Python's own `sqlite3`: it links the system's libsqlite3 (3.40.1 on Debian 12),
which has the "WAL-reset bug" (SQLite 3.7.0 to 3.51.2, fixed in 3.51.3). When one
connection checkpoints while another commits the transaction that starts the WAL over,
the checkpoint can record frames as copied that were not. Readers then take those pages
from the database file: they miss rows that are committed. skynet checkpoints on a
thread of its own while the workers write (state.Checkpointer), which is that pattern,
and it showed: a burst of 5,000 files stalled with 4,409 actions waiting in the queue
that the handler's claim could not see (tests/test_e2e.py, 1 run in 5 on this machine).
pysqlite3 is the standard library's module built against a current SQLite (3.53.4 in
0.6.1), with the same API, so nothing else changes.

One library per process: two copies of SQLite in one process do not share their POSIX
locks, and closing a file in one drops the other's locks on it. So every module of the
daemon imports `sqlite3` from here, never the standard library's.
"""
from __future__ import annotations

try:
    from pysqlite3 import dbapi2 as sqlite3
except ImportError:  # pragma: no cover - a platform without its wheel: see WAL_RESET_FIXED
    import sqlite3  # type: ignore[no-redef]

# With an older library, state.Checkpointer holds the write lock while it checkpoints,
# so no commit can race it (slower under a large upload, but correct).
WAL_RESET_FIXED: bool = sqlite3.sqlite_version_info >= (3, 51, 3)



def connect_wal(path: str) -> "sqlite3.Connection":
    """A connection to a state database in WAL mode, as every one of them is opened:
    autocommit (transactions are explicit), fsync at checkpoints only (a crash loses
    no committed row, a power cut at most the last commits), and a minute's wait for
    a lock before "database is locked" (a checkpoint or a reader may hold it briefly).
    One per thread: the callers keep them in a threading.local."""
    c = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("PRAGMA busy_timeout=60000")
    return c


__all__ = ["sqlite3", "WAL_RESET_FIXED", "connect_wal"]
