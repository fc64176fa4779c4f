"""UniqueQ: de-duplication of waiting actions, the in-flight trap, crash recovery."""
from __future__ import annotations

import threading

from skynet.state import StateDB
from skynet.uniqueq import DELETE, MOVE, SEND, UniqueQ


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
