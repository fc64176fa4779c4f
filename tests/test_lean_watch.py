"""TreeWatch (skynet/watch/watcher.py): one recursive watch on our own inotify layer.

Its watch table stays lean (a relative path per folder, in two dicts), nested roots
(two mappings, one inside the other) each see their tree, folders moved inside the
tree keep their watches and those moved out lose them, moves are paired, and the
faults reach the listener: folders past the watch limit, an overflow, the root gone.
"""
from __future__ import annotations

import errno
import os
import queue
import shutil
import sys
import threading
import time
from typing import Callable

import pytest

from skynet.watch import inotify
from skynet.watch.watcher import CREATED, DELETED, MOVED, Event, Observer, TreeWatch


class Listener:
    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[str, str]] = queue.Queue()

    def overflow(self, root: str) -> None:
        self.calls.put(("overflow", root))

    def unwatched(self, folder: str) -> None:
        self.calls.put(("unwatched", folder))

    def root_lost(self, root: str) -> None:
        self.calls.put(("root_lost", root))

    def rescan(self, why: str) -> None: ...

    def rewatch(self, why: str) -> None:
        self.calls.put(("rewatch", why))

    def drain(self) -> list[tuple[str, str]]:
        out = []
        while not self.calls.empty():
            out.append(self.calls.get_nowait())
        return out


class Events:
    """A handler that keeps what it is given; `until` waits for a matching event."""

    def __init__(self) -> None:
        self.q: queue.Queue[Event] = queue.Queue()
        self.dispatch = self.q.put

    def until(self, pred, timeout: float = 10.0) -> list[Event]:
        seen: list[Event] = []
        end = time.monotonic() + timeout
        while True:
            try:
                ev = self.q.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching event within {timeout}s; saw {seen}") from None
            seen.append(ev)
            if pred(ev):
                return seen


def closed(path) -> Callable[[Event], bool]:
    return lambda ev: ev.kind == "closed" and ev.path == str(path)


@pytest.fixture
def watch(tmp_path):
    made: list[TreeWatch] = []

    def make(root, listener=None, **kw) -> tuple[TreeWatch, Events]:
        ev = Events()
        tw = TreeWatch(str(root), ev.dispatch, listener, **kw).start()
        made.append(tw)
        return tw, ev

    yield make
    for tw in made:
        tw.stop()


def _tree(root, n: int) -> None:
    for i in range(n):
        (root / f"d{i // 10}" / f"e{i}").mkdir(parents=True)


def test_the_watch_table_is_lean(tmp_path, watch):
    src = tmp_path / "src"
    _tree(src, 300)  # 30 + 300 folders, and the root
    tw, _ = watch(src)
    assert tw.watched() == 331
    table = tw._wd_path
    assert set(table.values()) == set(tw._path_wd) and b"d3/e31" in tw._path_wd  # relative paths, shared
    per_folder = (sys.getsizeof(tw._wd_path) + sys.getsizeof(tw._path_wd)
                  + sum(sys.getsizeof(p) for p in table.values())) / len(table)
    assert per_folder < 160, per_folder  # watchdog kept ~330 bytes per folder, plus its path dicts


def test_nested_roots_each_see_their_tree_and_unwatch_cleanly(tmp_path):
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    (inner / "deep").mkdir(parents=True)
    obs = Observer()
    a, b = Events(), Events()
    wa = obs.schedule(a, str(outer))
    obs.schedule(b, str(inner))
    try:
        (inner / "deep" / "one").write_text("1")
        a.until(closed(inner / "deep" / "one"))
        b.until(closed(inner / "deep" / "one"))
        obs.unschedule(wa)
        assert obs.healthy()
        (inner / "deep" / "two").write_text("2")
        b.until(closed(inner / "deep" / "two"))  # the inner mapping still sees its tree
        (outer / "three").write_text("3")
        (inner / "four").write_text("4")
        b.until(closed(inner / "four"))
        assert all(ev.path != str(outer / "three") for ev in list(a.q.queue))
    finally:
        obs.stop()
    assert not any(t.name.startswith("watch-") and t.is_alive() for t in threading.enumerate())


def test_folder_moves_keep_or_drop_their_watches(tmp_path, watch):
    src, out = tmp_path / "src", tmp_path / "out"
    (src / "a" / "b").mkdir(parents=True)
    out.mkdir()
    tw, ev = watch(src, move_wait=0.05)
    os.rename(src / "a", src / "c")
    assert ev.until(lambda e: e.kind == MOVED)[-1] == Event(MOVED, str(src / "a"), True, str(src / "c"))
    (src / "c" / "b" / "f").write_text("x")  # a watch moved with its folder: the new path is reported
    ev.until(closed(src / "c" / "b" / "f"))
    os.rename(src / "c", out / "c")  # out of the tree: a delete, and its watches go
    assert ev.until(lambda e: e.kind == DELETED)[-1] == Event(DELETED, str(src / "c"), True)
    assert tw.watched() == 1
    (out / "c" / "b" / "g").write_text("x")
    os.rename(out / "c", src / "back")  # in from outside: new here, watched again below
    assert ev.until(lambda e: e.kind == CREATED)[-1] == Event(CREATED, str(src / "back"), True)
    assert tw.is_watched(str(src / "back" / "b")) and tw.watched() == 3
    (src / "back" / "b" / "h").write_text("x")
    seen = ev.until(closed(src / "back" / "b" / "h"))
    assert not any("g" == os.path.basename(e.path) for e in seen)


def test_a_move_out_is_reported_before_what_follows_it(tmp_path, watch):
    """A lone IN_MOVED_FROM is resolved by the next event, so a file moved away and made
    again is deleted, then sent: never the other way round."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    (src / "f").write_text("old")
    _, ev = watch(src, move_wait=30)  # the wait never decides here
    os.rename(src / "f", out / "f")
    (src / "f").write_text("new")
    seen = ev.until(closed(src / "f"))
    kinds = [(e.kind, os.path.basename(e.path)) for e in seen]
    assert kinds.index(("deleted", "f")) < kinds.index(("created", "f"))


def test_a_file_renamed_inside_is_one_move(tmp_path, watch):
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "f.part").write_text("data")
    _, ev = watch(src)
    os.rename(src / "f.part", src / "x" / "f")
    (src / "marker").write_text("")
    seen = ev.until(closed(src / "marker"))
    assert [e for e in seen if e.kind != "created" or e.path != str(src / "marker")][0] == \
        Event(MOVED, str(src / "f.part"), False, str(src / "x" / "f"))


def test_folders_past_the_watch_limit_are_reported_once_and_retried(tmp_path, watch, monkeypatch):
    src = tmp_path / "src"
    folders = ["a", "a/a1", "a/a2", "b", "b/b1", "c"]
    for name in folders:
        (src / name).mkdir(parents=True, exist_ok=True)
    listener = Listener()
    limit = {"left": 3, "refused": 0}  # the root and two folders

    def add_watch(self, path, mask, _real=inotify.Inotify.add_watch):
        if limit["left"] <= 0:
            limit["refused"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsdecode(path))
        limit["left"] -= 1
        return _real(self, path, mask)

    monkeypatch.setattr(inotify.Inotify, "add_watch", add_watch)
    tw, ev = watch(src, listener)
    reported = [f for kind, f in listener.drain() if kind == "unwatched"]
    assert limit["refused"] == 1  # nothing is tried after the first refusal
    # every folder is watched, or reported with (or below) one reported folder: once
    for name in folders:
        path = str(src / name)
        covering = [r for r in reported if path == r or path.startswith(r + "/")]
        assert tw.is_watched(path) != bool(covering), (name, reported)
        assert len(covering) <= 1, (name, reported)
    assert tw.watched() == 3 and reported
    assert tw.retry(reported) == reported  # still at the limit
    limit["left"] = 10**6  # the limit was raised
    assert tw.retry(reported) == []
    assert tw.watched() == 7 and all(tw.is_watched(str(src / n)) for n in folders)
    (src / "b" / "b1" / "f").write_text("x")
    ev.until(closed(src / "b" / "b1" / "f"))


def test_a_new_folder_past_the_limit_is_reported(tmp_path, watch, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    listener = Listener()
    tw, ev = watch(src, listener)

    def full(self, path, mask):
        raise OSError(errno.ENOSPC, "No space left on device", os.fsdecode(path))

    monkeypatch.setattr(inotify.Inotify, "add_watch", full)
    (src / "new").mkdir()
    ev.until(lambda e: e.kind == CREATED)
    assert listener.calls.get(timeout=10) == ("unwatched", str(src / "new"))


def test_an_overflow_is_reported_and_the_table_checked_against_the_disk(tmp_path, watch):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    listener = Listener()
    tw, ev = watch(src, listener)
    with tw._lock:  # as if an overflow had cost a rename of a: the table still says a, a/b
        os.rename(src / "a", src / "z")
        wd = tw._path_wd.pop(b"a")  # (the real pair is in the queue: drop the table's view of it)
        tw._wd_path[wd] = b"lost"
        tw._translate([inotify.RawEvent(-1, inotify.IN_Q_OVERFLOW, 0, b"")])
    assert listener.drain() == [("overflow", str(src))]
    assert sorted(tw._path_wd) == [b"", b"z", b"z/b"] and tw.watched() == 3


def test_the_root_going_away_ends_the_watch(tmp_path, watch):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    listener = Listener()
    tw, ev = watch(src, listener)
    shutil.rmtree(src)
    ev.until(lambda e: e == Event(DELETED, str(src), True))
    assert listener.calls.get(timeout=10) == ("root_lost", str(src))
    tw._thread.join(10)
    assert tw.ended and tw.healthy() and tw._ino.closed


def test_the_root_moved_away_ends_the_watch(tmp_path, watch):
    src = tmp_path / "src"
    src.mkdir()
    listener = Listener()
    tw, ev = watch(src, listener)
    os.rename(src, tmp_path / "elsewhere")
    assert listener.calls.get(timeout=10) == ("root_lost", str(src))
    tw._thread.join(10)
    assert tw.ended and tw._ino.closed  # no watch left on the moved tree


def test_the_root_that_cannot_be_watched_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        TreeWatch(str(tmp_path / "missing"), lambda e: None).start()
