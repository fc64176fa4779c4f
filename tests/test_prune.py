"""Pruning (skynet/versions/prune.py): at most hourly, bounded work per run, a cursor in
the state database that the next run continues from, kill -9 half-way losing nothing,
its own low-priority thread that stops promptly."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from skynet.engine import priority
from skynet.state.db import StateDB
from skynet.versions.prune import META_CURSOR, META_LAST, Pruner
from skynet.versions.retention import COUNT, NS, Policy, to_remove
from tests.fake_versions import FolderVersionStore

REPO = Path(__file__).resolve().parent.parent
T0 = 1_790_000_000  # seconds
KEEP2 = Policy(COUNT, count=2)


def opener(store):
    return lambda: contextlib.nullcontext(store)


class Clock:
    def __init__(self, t: float = T0 + 1000) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def fill(store: FolderVersionStore, paths: int, versions: int) -> None:
    """`paths` files p000..., each with `versions` versions one second apart (the last current)."""
    for p in range(paths):
        for i in range(versions):
            since = (T0 + i) * NS
            store.add(f"d/p{p:03d}", since, None if i == versions - 1 else since + NS)


def remaining(store: FolderVersionStore) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for v in store.history(""):
        out.setdefault(v.rel, []).append(v.since_ns)
    return out


def expected_after_one_pass(store: FolderVersionStore, policy: Policy, now: float) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    by_rel: dict[str, list] = {}
    for v in store.history(""):
        by_rel.setdefault(v.rel, []).append(v)
    for rel, vs in by_rel.items():
        gone = {id(v) for v in to_remove(vs, policy, int(now * NS))}
        out[rel] = [v.since_ns for v in vs if id(v) not in gone]
    return out


@pytest.fixture()
def db(tmp_path: Path):
    d = StateDB(str(tmp_path / "state.db"))
    yield d
    d.close()


def test_a_run_removes_what_the_rules_let_go_and_never_the_current(tmp_path, db) -> None:
    store = FolderVersionStore(tmp_path / "v")
    fill(store, 5, 6)
    store.add("d/deleted", T0 * NS, (T0 + 1) * NS)
    store.add("d/deleted", (T0 + 1) * NS, None, deleted=True)
    clock = Clock()
    want = expected_after_one_pass(store, KEEP2, clock())
    r = Pruner("m", opener(store), db, KEEP2, clock=clock).run_once(store)
    assert r.finished and r.paths == 6 and r.removed == 5 * 4
    assert remaining(store) == want
    assert all(len(v) == 2 for v in want.values())
    assert db.get_meta(META_CURSOR) == "" and float(db.get_meta(META_LAST)) == clock()


def test_at_most_hourly(tmp_path, db) -> None:
    store = FolderVersionStore(tmp_path / "v")
    clock = Clock()
    p = Pruner("m", opener(store), db, KEEP2, clock=clock)
    assert p.wait_seconds() == 3600  # never ran: an hour from the first look, not during the initial sync
    clock.t += 3600
    assert p.wait_seconds() == 0
    p.run_once(store)
    assert p.wait_seconds() == 3600
    clock.t += 3599
    assert p.wait_seconds() == 1
    clock.t += 1
    assert p.wait_seconds() == 0
    # the time lives in the state database: a new daemon (a new Pruner) honours it
    p.run_once(store)
    clock.t += 10
    assert Pruner("m", opener(store), db, KEEP2, clock=clock).wait_seconds() == 3590


def test_bounded_work_per_run_and_the_next_run_continues_from_the_cursor(tmp_path, db) -> None:
    store = FolderVersionStore(tmp_path / "v")
    fill(store, 10, 4)
    clock = Clock()
    want = expected_after_one_pass(store, KEEP2, clock())
    p = Pruner("m", opener(store), db, KEEP2, clock=clock, max_paths=4)
    r1 = p.run_once(store)
    assert (r1.paths, r1.removed, r1.finished) == (4, 8, False) and db.get_meta(META_CURSOR) == "d/p003"
    seen_before = len(store.removed)
    r2 = p.run_once(store)
    assert (r2.paths, r2.finished) == (4, False) and db.get_meta(META_CURSOR) == "d/p007"
    assert {v.rel for v in store.removed[seen_before:]} == {f"d/p{i:03d}" for i in range(4, 8)}
    r3 = p.run_once(store)
    assert (r3.paths, r3.finished) == (2, True) and db.get_meta(META_CURSOR) == ""
    assert remaining(store) == want
    # a budget of removals bounds a run too
    fill(store, 10, 4)  # the same versions again
    r = Pruner("m", opener(store), db, KEEP2, clock=clock, max_removals=5).run_once(store)
    assert (r.paths, r.removed, r.finished) == (3, 6, False)


def test_stop_halts_between_removals_and_keeps_the_cursor_before_the_half_done_path(tmp_path, db) -> None:
    store = FolderVersionStore(tmp_path / "v")
    fill(store, 3, 5)
    p = Pruner("m", opener(store), db, KEEP2, clock=Clock())
    real_remove = store.remove

    def remove(v):
        real_remove(v)
        if len(store.removed) == 4:  # p000 done (3), one of p001's
            p._stop.set()
    store.remove = remove  # type: ignore[method-assign]
    r = p.run_once(store)
    assert r.stopped and r.removed == 4 and db.get_meta(META_CURSOR) == "d/p000"


KILLED_RUN = textwrap.dedent("""
    import contextlib, sys, time
    sys.path.insert(0, {repo!r})
    from skynet.state.db import StateDB
    from skynet.versions.prune import Pruner
    from skynet.versions.retention import COUNT, Policy
    from tests.fake_versions import FolderVersionStore

    store = FolderVersionStore({root!r})
    real = store.remove
    def remove(v):
        real(v)
        if len(store.removed) == {pause_after}:
            print("paused", v.rel, flush=True)
            time.sleep(3600)  # killed here, in the middle of a path
    store.remove = remove
    Pruner("m", lambda: contextlib.nullcontext(store), StateDB({db!r}), Policy(COUNT, count=2), clock=lambda: {now!r}).run_once(store)
""")


def test_kill_9_half_way_loses_nothing_and_the_next_run_continues(tmp_path) -> None:
    root, db_path = tmp_path / "v", tmp_path / "state.db"
    store = FolderVersionStore(root)
    fill(store, 6, 5)  # 3 removals per path
    now = float(T0 + 1000)
    want = expected_after_one_pass(store, KEEP2, now)
    script = KILLED_RUN.format(repo=str(REPO), root=str(root), db=str(db_path), pause_after=8, now=now)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        line = proc.stdout.readline()
        assert line.startswith("paused d/p002"), line  # p000, p001 done; 2 of p002's 3 removals done
    finally:
        proc.kill()  # SIGKILL
        proc.wait(10)
        proc.stdout.close()
    db = StateDB(str(db_path))
    try:
        assert db.get_meta(META_CURSOR) == "d/p001"
        assert len(remaining(store)["d/p002"]) == 3  # half pruned
        # the next run (an hour later) starts at p002 and finishes the pass
        clock = Clock(now + 3600)
        p = Pruner("m", opener(store), db, KEEP2, clock=clock)
        assert p.wait_seconds() == 0
        r = p.run_once(store)
        assert r.finished and r.paths == 4 and r.removed == 1 + 3 * 3
        assert {v.rel for v in store.removed} == {f"d/p{i:03d}" for i in range(2, 6)}
        assert remaining(store) == want  # the same as one uninterrupted pass
    finally:
        db.close()


def test_the_thread_runs_at_the_lowest_priority_and_stops_promptly(tmp_path, db) -> None:
    store = FolderVersionStore(tmp_path / "v")
    fill(store, 3, 4)
    entered, gate = threading.Event(), threading.Event()
    seen: dict[str, object] = {}
    real_remove = store.remove

    def remove(v):
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
        seen["io"] = priority.current_io_class()
        entered.set()
        gate.wait()
        real_remove(v)
    store.remove = remove  # type: ignore[method-assign]
    main_nice, main_io = os.getpriority(os.PRIO_PROCESS, 0), priority.current_io_class()
    p = Pruner("m", opener(store), db, KEEP2, clock=Clock())
    db.set_meta(META_LAST, "0")  # last pruned long ago: due now
    p.start()
    assert entered.wait(30)
    stopper = threading.Thread(target=p.stop, args=(30,))
    stopper.start()
    p._stop.wait()
    gate.set()  # the store call in progress ends; nothing after it starts
    stopper.join()
    assert not p._thread.is_alive()
    assert len(store.removed) == 1
    assert seen == {"nice": 19, "io": "idle"}
    assert (os.getpriority(os.PRIO_PROCESS, 0), priority.current_io_class()) == (main_nice, main_io)


def test_the_cursor_is_saved_after_removals_and_every_few_paths_not_after_each(tmp_path, db, monkeypatch) -> None:
    """Each save is a write transaction beside the mirror's: paths with nothing to
    remove move the cursor every CURSOR_EVERY paths, and where the run stops."""
    from skynet.versions import prune

    monkeypatch.setattr(prune, "CURSOR_EVERY", 2)
    store = FolderVersionStore(tmp_path / "v")
    fill(store, 5, 1)  # five current files: nothing to remove
    writes: list[str] = []
    real = db.set_meta
    monkeypatch.setattr(db, "set_meta", lambda k, v: (writes.append(v) if k == META_CURSOR else None, real(k, v)))
    r = Pruner("m", opener(store), db, KEEP2, clock=Clock(), max_paths=3).run_once(store)
    assert (r.paths, r.finished) == (3, False)
    assert writes == ["d/p001", "d/p002"]  # after the 2nd path, then where the run stopped
    writes.clear()
    r = Pruner("m", opener(store), db, KEEP2, clock=Clock()).run_once(store)
    assert (r.paths, r.finished) == (2, True) and writes == ["d/p004", ""]
