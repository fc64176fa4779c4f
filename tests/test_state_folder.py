"""The state folder's owner: its layout, lock and holder (skynet.state.folder), the
read-only view beside the daemon (skynet.state.db.StateReader), and the Index's one
write route (skynet.state.index.Index.apply)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from skynet.state.index import Index
from skynet.state.sqlitelib import sqlite3
from skynet.state.db import FailedActions, StateDB, StateReader
from skynet.state.folder import (StateFolder, StateLock, StateLocked, mapping_identity, parse_identity,
                                 set_aside)
from skynet.state.uniqueq import UniqueQ


def test_layout_names_every_file_under_the_root(tmp_path):
    f = StateFolder(str(tmp_path))
    assert [os.path.relpath(p, tmp_path) for p in (f.db("m"), f.lock("m"), f.seen("m"), f.status(), f.spool(),
                                                    f.seq())] == \
        ["m.db", "m.lock", "m.seen", "status.json", "notifier-spool.sqlite", "notifier.seq"]
    for name in ("b.db", "a.db", "a.db-wal", "a.db.corrupt-1", "a.lock", "x.sqlite"):
        (tmp_path / name).write_bytes(b"")
    assert f.mappings() == ["a", "b"]


def test_the_lock_names_its_holder_and_refuses_a_second_daemon(tmp_path):
    f = StateFolder(str(tmp_path / "state"))
    assert f.holder("m") is None  # no lock file yet
    lock = StateLock(f.lock("m"))
    lock.acquire()
    try:
        assert f.holder("m") == os.getpid()
        with pytest.raises(StateLocked, match="already running"):
            StateLock(f.lock("m")).acquire()
    finally:
        lock.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with open(f.lock("m"), "w") as fh:
        fh.write(dead.stdout)
    assert f.holder("m") is None  # a PID whose process is gone holds nothing


def test_a_damaged_database_is_set_aside_with_its_wal(tmp_path):
    db = tmp_path / "m.db"
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"m.db{suffix}").write_bytes(b"x")
    set_aside(str(db))
    left = sorted(os.listdir(tmp_path))
    assert len(left) == 3 and all(n.startswith("m.db.corrupt-") for n in left)
    assert {n[-4:] for n in left} >= {"-wal", "-shm"}


def test_identity_round_trip():
    ident = mapping_identity("s3", "/home/u/a b", "bucket/x|y")
    assert parse_identity(ident) == ("s3", "/home/u/a b", "bucket/x|y")
    assert parse_identity("junk") is None and parse_identity(None) is None


def test_the_reader_sees_what_the_daemon_wrote_and_never_creates_a_file(tmp_path):
    path = str(tmp_path / "m.db")
    with pytest.raises(sqlite3.Error):
        StateReader(path)
    assert not os.path.exists(path)
    db = StateDB(path)
    db.set_identity(mapping_identity("local", "/src", "/dst"))
    q = UniqueQ(db)
    q.put_many([("send", f"f{i}", "") for i in range(3)])
    q.claim(1)
    FailedActions(db).record("send", "old", "", "first", 1)
    FailedActions(db).record("delete", "new", "", "second", 2)
    with StateReader(path) as r:
        assert r.queue_counts() == (2, 1)
        assert r.failed_count() == 2
        assert parse_identity(r.identity()) == ("local", "/src", "/dst")
        assert [c[:3] for c in r.claimed(10)] == [("send", "f0", "")]
        assert [f.src for f in r.failures(1)] == ["new"]  # newest first, limited
    q.close()
    db.close()


def test_index_apply_writes_everything_in_one_transaction(tmp_path):
    db = StateDB(str(tmp_path / "s.db"))
    idx = Index(db)
    idx.apply(put=[("a/x", 1, 1, 0o644, 1, None), ("a/y", 2, 2, 0o644, 2, None), ("gone", 3, 3, 0o644, 3, None)])
    with pytest.raises(RuntimeError):
        with db.write() as c:
            idx.apply(rename=[("a", "b")], forget=["gone"], put=[("new", 4, 4, 0o644, 4, None)], c=c)
            raise RuntimeError("the caller's transaction fails")
    assert [e.rel for e in idx.iter_sorted()] == ["a/x", "a/y", "gone"]  # none of it happened
    idx.apply(rename=[("a", "b")], forget=["gone"], put=[("new", 4, 4, 0o644, 4, None), ("new", 5, 5, 0o600, 5, "e")])
    assert [e.rel for e in idx.iter_sorted()] == ["b/x", "b/y", "new"]
    assert idx.get("new").size == 5  # the later row for a path wins
    db.close()


def test_index_ranges_hold_exactly_a_folder_and_the_root_holds_every_name(tmp_path):
    db = StateDB(str(tmp_path / "s.db"))
    idx = Index(db)
    odd = os.fsdecode(b"\xff" * 9)  # sorts after under_range('')'s upper bound
    idx.put_many([(r, 1, 1, 0, 1, None) for r in ("a/1", "a/2/3", "a.bak", "a0", "ab/1", odd)])
    assert [e.rel for e in idx.iter_under("a", batch=1)] == ["a/1", "a/2/3"]
    assert [e.rel for e in idx.iter_under("", batch=2)][-1] == odd
    idx.clear()
    assert idx.count() == 0
    db.close()
