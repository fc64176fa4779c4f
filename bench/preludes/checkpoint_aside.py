"""Experiment (bench/run scale latency --prelude bench/preludes/checkpoint_aside.py):
SQLite checkpoints run on a thread of their own instead of inside a COMMIT.

In WAL mode with synchronous=NORMAL a COMMIT does not fsync, but the commit that
takes the WAL past 1,000 pages runs the automatic checkpoint, which fsyncs the WAL
and the database, inside StateDB.write(), so every other writer waits on the
Python write lock. While a large upload fills the disk's write queue that fsync
takes seconds. Here: wal_autocheckpoint=0 on every connection, and a checkpointer
thread runs PRAGMA wal_checkpoint(PASSIVE) (which never blocks writers) when a
commit says the WAL has grown; idle, it sleeps.
"""
from skynet.state.sqlitelib import sqlite3
import threading

import skynet.state.db as state

_orig_conn = state.StateDB.conn
_orig_write = state.StateDB.write
WAL_PAGES = 1000


def _checkpointer(db: "state.StateDB") -> threading.Event:
    ev = threading.Event()

    def loop() -> None:
        c = sqlite3.connect(db.path, isolation_level=None, check_same_thread=False)
        c.execute("PRAGMA wal_autocheckpoint=0")
        while True:
            ev.wait()
            ev.clear()
            try:
                c.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass

    threading.Thread(target=loop, name="checkpointer", daemon=True).start()
    return ev


def conn(self):
    c = getattr(self._local, "conn", None)
    if c is None:
        c = _orig_conn(self)
        c.execute("PRAGMA wal_autocheckpoint=0")
    return c


def write(self):
    if not hasattr(self, "_ckpt_event"):
        self._ckpt_event = _checkpointer(self)
        self._commits = 0
    cm = _orig_write(self)

    class _W:
        def __enter__(inner):
            return cm.__enter__()

        def __exit__(inner, *exc):
            r = cm.__exit__(*exc)
            self._commits += 1
            if self._commits % 200 == 0:  # cheap stand-in for a WAL-size hook
                self._ckpt_event.set()
            return r

    return _W()


state.StateDB.conn = conn
state.StateDB.write = write
