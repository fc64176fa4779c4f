"""SQLite checkpoints happen on the Checkpointer's thread, never inside a COMMIT
(an automatic checkpoint's fsync inside COMMIT stalled every writer for ~1 s
during a large upload: bench/RESULTS.md, issue 8 (4))."""
from __future__ import annotations

from skynet.state.sqlitelib import sqlite3
import threading
import time

from skynet.state.db import Checkpointer, StateDB


def test_commits_never_checkpoint_and_the_checkpointer_catches_up(tmp_path):
    db = StateDB(str(tmp_path / "state.db"))
    try:
        assert db.conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for i in range(Checkpointer.CHECKPOINT_EVERY * 2):
            db.set_meta(f"k{i}", "x" * 200)
        cp = db._checkpointer
        assert cp is not None and cp._thread.name == "state-checkpoint"
        deadline = time.monotonic() + 10
        while cp.rounds < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cp.rounds >= 1
        # Once the checkpointer has caught up, every frame of the WAL is in the database file.
        deadline = time.monotonic() + 10
        while True:
            other = sqlite3.connect(db.path)
            try:
                busy, log_frames, done = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                other.close()
            if (busy == 0 and log_frames == done) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert busy == 0 and log_frames == done
    finally:
        db.close()
    assert not any(t.name == "state-checkpoint" and t.is_alive() for t in threading.enumerate() if t is cp._thread)


def test_an_idle_database_has_no_checkpoint_thread(tmp_path):
    db = StateDB(str(tmp_path / "state.db"))
    try:
        db.conn().execute("SELECT 1").fetchall()
        assert db._checkpointer is None  # started by the first write only
    finally:
        db.close()
