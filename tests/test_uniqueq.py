"""UniqueQ: de-duplication of waiting actions, the in-flight trap, crash recovery."""
from __future__ import annotations

import threading

from skynet.state.db import StateDB
from skynet.state.uniqueq import DELETE, MOVE, SEND, UniqueQ


def make(tmp_path, on_put=None):
    return UniqueQ(StateDB(str(tmp_path / "q.db")), on_put=on_put)


def test_identical_waiting_action_is_stored_once(tmp_path):
    q = make(tmp_path)
    assert q.put_many([(SEND, "a", ""), (SEND, "a", ""), (SEND, "b", ""), (DELETE, "a", "")]) == 3
    assert len(q) == 3
    got = q.claim(10)
    assert [(a.kind, a.src) for a in got] == [(SEND, "a"), (SEND, "b"), (DELETE, "a")]


def test_new_action_identical_to_one_in_flight_is_kept(tmp_path):
    """The lost-last-write trap: a write during an upload must cause another upload."""
    q = make(tmp_path)
    q.put_many([(SEND, "a", "")])
    (inflight,) = q.claim(10)
    q.put_many([(SEND, "a", "")])  # the file changed while it was uploading
    q.done(inflight.id)
    again = q.claim(10)
    assert [(a.kind, a.src) for a in again] == [(SEND, "a")]


def test_send_delete_send_keeps_order(tmp_path):
    q = make(tmp_path)
    q.put_many([(SEND, "a", ""), (DELETE, "a", ""), (SEND, "a", "")])
    assert [(a.kind, a.src) for a in q.claim(10)] == [(SEND, "a"), (DELETE, "a")]
    # the second send duplicates a waiting one; because actions are hints (the
    # handler looks at the disk), send, delete is enough to converge.


def test_claimed_actions_come_back_after_a_crash(tmp_path):
    q = make(tmp_path)
    q.put_many([(SEND, "a", ""), (MOVE, "b", "c")])
    q.claim(10)
    q.put_many([(SEND, "a", "")])  # identical to a claimed one
    # crash: reopen the same file
    q2 = make(tmp_path)
    q2.reset_inflight()
    got = q2.claim(10)
    assert sorted((a.kind, a.src, a.dest) for a in got) == [(MOVE, "b", "c"), (SEND, "a", "")]


def test_buffered_put_is_committed_and_wakes(tmp_path):
    woke = threading.Event()
    q = make(tmp_path, on_put=woke.set)
    q.put(SEND, "x")
    q.flush()
    assert woke.wait(5)
    assert [a.src for a in q.claim(5)] == ["x"]


def test_odd_bytes_in_names_survive(tmp_path):
    import os

    name = os.fsdecode(b"bad-\xff-name\nline")
    q = make(tmp_path)
    q.put_many([(SEND, name, "")])
    (a,) = q.claim(1)
    assert os.fsencode(a.src) == b"bad-\xff-name\nline"


def test_release_returns_work(tmp_path):
    q = make(tmp_path)
    q.put_many([(SEND, f"f{i}", "") for i in range(5)])
    got = q.claim(5)
    q.release([a.id for a in got])
    assert len(q.claim(10)) == 5


def test_ids_are_never_reused(tmp_path):
    """The handler knows an action by its id after its row is gone (until its
    paths are released): a later action must never get that id again."""
    q = UniqueQ(StateDB(str(tmp_path / "s.db")))
    q.put_many([(SEND, "a", ""), (SEND, "b", "")])
    first = q.claim(10)
    q.finish_many([(a.id, [], a.paths()) for a in first])
    assert len(q) == 0
    q.put_many([(SEND, "c", "")])
    (c,) = q.claim(10)
    assert c.id > max(a.id for a in first)


def test_a_schema_1_queue_is_migrated_with_its_rows(tmp_path):
    import os
    from skynet.state.sqlitelib import sqlite3

    path = str(tmp_path / "old.db")
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE queue (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, src BLOB NOT NULL,
            dest BLOB NOT NULL DEFAULT x'', state INTEGER NOT NULL DEFAULT 0, queued_at REAL NOT NULL);
        CREATE UNIQUE INDEX queue_unique_waiting ON queue(kind, src, dest) WHERE state = 0;
        CREATE INDEX queue_order ON queue(state, id);
        INSERT INTO queue VALUES (7, 'send', x'61', x'', 0, 1.0), (9, 'delete', x'62', x'', 1, 2.0);
    """)
    old.close()
    db = StateDB(path)
    try:
        c = db.conn()
        assert "AUTOINCREMENT" in c.execute("SELECT sql FROM sqlite_master WHERE name = 'queue'").fetchone()[0]
        assert c.execute("SELECT id, kind, src, state FROM queue ORDER BY id").fetchall() == [
            (7, "send", b"a", 0), (9, "delete", b"b", 1)]
        assert db.get_meta("schema") == "2"
        q = UniqueQ(db)
        assert q.put_many([(SEND, "a", "")]) == 0  # the waiting-action uniqueness survived
        q.put_many([(SEND, "z", "")])
        assert max(r[0] for r in c.execute("SELECT id FROM queue")) > 9
        assert not [n for (n,) in c.execute("SELECT name FROM sqlite_master") if n.endswith("_v1")]
    finally:
        db.close()
    assert os.path.exists(path)


def test_claim_reads_each_sources_index_entry(tmp_path):
    from skynet.state.index import Index, IndexEntry

    db = StateDB(str(tmp_path / "s.db"))
    Index(db).put_many([("has", 5, 6, 0o600, 7, "etag")])
    q = UniqueQ(db)
    q.put_many([(SEND, "has", ""), (SEND, "new", ""), (MOVE, "has", "elsewhere")])
    got = {(a.kind, a.src): a.entry for a in q.claim(10)}
    assert got == {(SEND, "has"): IndexEntry("has", 5, 6, 0o600, 7, "etag"), (SEND, "new"): None,
                   (MOVE, "has"): IndexEntry("has", 5, 6, 0o600, 7, "etag")}
