"""Handler scheduling: per-path ordering, parallelism, failure classification."""
from __future__ import annotations

import threading
import time

from connections.contract.xcon import PermanentError, TransientError
from skynet.engine.handler import Handler, PathLocks
from skynet.engine.reconcile import Outcome
from skynet.state.db import FailedActions, StateDB
from skynet.state.uniqueq import MOVE, SEND, UniqueQ


def test_path_locks_conflicts():
    L = PathLocks()
    L.add("a/b")
    assert L.conflicts("a/b") and L.conflicts("a") and L.conflicts("") and L.conflicts("a/b/c")
    assert not L.conflicts("a/bc") and not L.conflicts("a/c") and not L.conflicts("b")


class FakeReconciler:
    def check_source(self):
        pass

    def __init__(self, delay=0.05, fail=None):
        self.delay = delay
        self.fail = fail or {}
        self.log: list[tuple[str, str, float, float]] = []
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0

    def run(self, a, stop=None):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        t0 = time.monotonic()
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
            self.log.append((a.kind, a.src, t0, time.monotonic()))
        err = self.fail.get(a.src)
        if err:
            raise err
        return Outcome()


class OkCon:
    def check(self):
        pass

    def connect(self):
        pass


def run_handler(tmp_path, specs, rec, workers=4):
    db = StateDB(str(tmp_path / "s.db"))
    h = None
    q = UniqueQ(db, on_put=lambda: h and h.wake())
    h = Handler("t", q, OkCon(), rec, FailedActions(db), workers=workers, max_attempts=2)
    h.start(connected=True)
    q.put_many(specs)
    deadline = time.monotonic() + 20
    while len(q) and time.monotonic() < deadline:
        time.sleep(0.02)
    h.stop(5)
    return q, FailedActions(db)


def test_same_path_runs_in_order_and_never_concurrently(tmp_path):
    rec = FakeReconciler()
    specs = [(SEND, "a", ""), (MOVE, "a", "b"), (SEND, "b", ""), (SEND, "x", ""), (SEND, "y", "")]
    run_handler(tmp_path, specs, rec)
    order = [(k, s) for k, s, _, _ in sorted(rec.log, key=lambda r: r[2])]
    touching_ab = [o for o in order if o[1] in ("a", "b")]
    assert touching_ab == [(SEND, "a"), (MOVE, "a"), (SEND, "b")]
    spans = {(k, s): (t0, t1) for k, s, t0, t1 in rec.log}
    assert spans[(SEND, "a")][1] <= spans[(MOVE, "a")][0] + 1e-3
    assert rec.max_running >= 2  # unrelated paths ran in parallel


def test_folder_and_path_under_it_do_not_overlap(tmp_path):
    rec = FakeReconciler()
    run_handler(tmp_path, [(SEND, "d/1", ""), (MOVE, "d", "e"), (SEND, "e/1", "")], rec)
    spans = sorted(rec.log, key=lambda r: r[2])
    for (_, _, _, end), (_, _, start, _) in zip(spans, spans[1:]):
        assert end <= start + 1e-3


def test_permanent_error_does_not_block_the_rest(tmp_path):
    rec = FakeReconciler(fail={"bad": PermanentError("nope")})
    q, failed = run_handler(tmp_path, [(SEND, "bad", "")] + [(SEND, f"ok{i}", "") for i in range(10)], rec)
    assert len(q) == 0
    assert [f.src for f in failed.list()] == ["bad"]
    assert len(rec.log) == 11


def test_transient_error_retried_then_failed(tmp_path):
    rec = FakeReconciler(delay=0.0, fail={"flaky": TransientError("timeout")})
    q, failed = run_handler(tmp_path, [(SEND, "flaky", "")], rec)
    assert len([r for r in rec.log if r[1] == "flaky"]) == 2  # max_attempts=2
    assert failed.list()[0].attempts == 2


def test_a_new_action_claimed_while_the_last_one_commits_gets_a_fresh_id(tmp_path):
    """The stalled-burst bug, forced: the committer has deleted the queue's last
    row but not yet released its paths when a new action is claimed. Its id must
    not be the finished one's (SQLite reuses the highest rowid unless the table
    says AUTOINCREMENT), or the handler's bookkeeping mixes the two up and a path
    stays locked for ever."""
    db = StateDB(str(tmp_path / "s.db"))
    h = None
    q = UniqueQ(db, on_put=lambda: h and h.wake())
    real_finish = q.finish_many
    claimed_meanwhile = threading.Event()

    def finish_then_race(finished):
        real_finish(finished)  # rows gone; the committer has not taken the lock yet
        if not claimed_meanwhile.is_set():
            q.put_many([(SEND, "dir/b", "")])
            deadline = time.monotonic() + 5
            while not h.in_flight() or h.in_flight()[0].src != "dir/b":
                assert time.monotonic() < deadline, "the new action was not claimed"
                time.sleep(0.005)
            claimed_meanwhile.set()

    q.finish_many = finish_then_race
    h = Handler("t", q, OkCon(), FakeReconciler(delay=0.01), FailedActions(db), workers=2)
    h.start(connected=True)
    try:
        q.put_many([(SEND, "dir/a", "")])
        deadline = time.monotonic() + 10
        while not (claimed_meanwhile.is_set() and h.idle() and len(q) == 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert claimed_meanwhile.is_set()
        assert h.idle() and len(q) == 0, h.describe_state()
        assert h._running.held == {} and h._running.inner == {}, h.describe_state()
        # and the next action on that folder still runs
        q.put_many([(SEND, "dir", "")])
        deadline = time.monotonic() + 5
        while len(q) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(q) == 0, h.describe_state()
    finally:
        h.stop(5)
        db.close()


def test_a_claimed_index_entry_is_kept_only_if_nothing_older_can_change_it(tmp_path):
    from skynet.state.index import IndexEntry
    from skynet.state.uniqueq import DELETE, LOOK_UP, Action

    db = StateDB(str(tmp_path / "s.db"))
    try:
        h = Handler("t", UniqueQ(db), OkCon(), FakeReconciler(), FailedActions(db))
        e = IndexEntry("x", 1, 2, 0o644, 3, None)
        h._hold(Action(1, MOVE, "moving/a", "moved/a", e))  # running (or waiting for its commit)
        h._window = [Action(2, DELETE, "d/gone", "", None)]  # claimed earlier, still waiting
        batch = [
            Action(3, SEND, "free", "", e),            # nothing older touches it: kept
            Action(4, SEND, "moved/a", "", e),         # a running move writes this entry: look up
            Action(5, SEND, "d/gone", "", e),          # an older waiting delete: look up
            Action(6, SEND, "d", "", None),            # a folder over that delete: look up
            Action(7, SEND, "later", "", e),
            Action(8, SEND, "later", "", e),           # behind #7 in the same batch: look up
            Action(9, SEND, "free2", "", None),        # "not on the remote" is vouched for too
        ]
        got = {a.id: a.entry for a in h._vouch(batch)}
        assert got == {3: e, 4: LOOK_UP, 5: LOOK_UP, 6: LOOK_UP, 7: e, 8: LOOK_UP, 9: None}
    finally:
        db.close()


class BatchingReconciler(FakeReconciler):
    """Takes batches of sends (as the reconciler of a LocalCon mapping does)."""

    def __init__(self):
        super().__init__(delay=0.001)
        self.batches: list[list[tuple[str, str]]] = []

    def batch_ok(self):
        return True

    def run_many(self, actions, stop=None):
        with self.lock:
            self.batches.append([(a.kind, a.src) for a in actions])
        return [self.run(a, stop) for a in actions]


def test_sends_are_taken_in_batches_and_keep_their_order_rules(tmp_path):
    rec = BatchingReconciler()
    specs = [(SEND, f"d{i % 5}/{i}", "") for i in range(400)]
    specs.insert(100, (SEND, "d1", ""))  # a folder: nothing under it may share its batch's time
    specs.insert(200, (MOVE, "d2/7", "d2/7b"))
    q, failed = run_handler(tmp_path, specs, rec, workers=4)
    assert len(q) == 0 and failed.count() == 0
    assert max(len(b) for b in rec.batches) > 1
    for b in rec.batches:
        if len(b) > 1:
            assert all(kind == SEND for kind, _ in b)
            paths = [p for _, p in b]
            assert len(set(paths)) == len(paths)
            locks = PathLocks()
            for p in paths:
                assert not locks.conflicts(p), b  # no two actions of a batch overlap
                locks.add(p)
    done = [(k, p) for k, p, _, _ in rec.log]
    assert done.index((SEND, "d1")) > done.index((SEND, "d1/96"))  # queued before the folder: done before it
    assert done.index((SEND, "d1")) < done.index((SEND, "d1/101"))


def test_a_batch_is_a_share_of_the_window_among_the_idle_workers_only(tmp_path):
    """Workers busy with their own batch take nothing from the window: dividing
    it among all of them made every batch small (many more cp start-ups)."""
    from skynet.engine.handler import BATCH
    from skynet.state.uniqueq import Action

    db = StateDB(str(tmp_path / "s.db"))
    try:
        h = Handler("t", UniqueQ(db), OkCon(), BatchingReconciler(), FailedActions(db), workers=8)
        h._window = [Action(i, SEND, f"d{i % 7}/{i}", "", None) for i in range(1, 601)]
        h._idle = 0  # the seven others are copying: this worker may take a full batch
        taken, _ = h._take()
        assert len(taken) == BATCH
        h._idle = 3  # three wait for work too: a quarter of what is left each
        left = len(h._window)
        taken, _ = h._take()
        assert len(taken) == (left + 1) // 4
    finally:
        db.close()
