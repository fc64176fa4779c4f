"""The Reconciler on its own (real LocalCon, real state database, no threads):
action orders the watcher and the daemon's timing can produce, replayed one by
one, must end with the remote equal to the disk. The torture test found these
by chance; here each runs every time."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from connections.contract.xcon import Abilities, ServerSideMove, XCon
from connections.local.con import LocalCon, temp_name
from skynet.watch.ignore import IgnoreRules
from skynet.engine.mapper import Mapper
from skynet.engine.reconcile import Reconciler
from skynet.state.db import ResumeTable, StateDB
from skynet.state.index import Index
from skynet.state.uniqueq import DELETE, MOVE, SEND, UniqueQ
from tests.harness import tree


class Rig:
    """A source folder, a LocalCon remote, and the reconciler between them."""

    def __init__(self, tmp_path: Path) -> None:
        self.src, self.remote = tmp_path / "src", tmp_path / "remote"
        self.src.mkdir()
        self.remote.mkdir()
        self.db = StateDB(str(tmp_path / "state.db"))
        self.queue = UniqueQ(self.db)
        self.index = Index(self.db)
        self.con = LocalCon(str(self.remote))
        self.con.connect()
        self.rec = Reconciler(Mapper(str(self.src)), self.con, self.index, self.queue, ResumeTable(self.db),
                              IgnoreRules(), complete_sync=True)

    def write(self, rel: str, data: bytes) -> None:
        p = self.src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def run(self, kind: str, src: str, dest: str = "") -> None:
        """Queue one action, then run the queue dry, as the handler would (in order)."""
        self.queue.put(kind, src, dest)
        self.queue.flush()
        while batch := self.queue.claim(100):
            for a in batch:
                out = self.rec.run(a)
                self.queue.finish(a.id, out.index_rows, a.paths())
            self.queue.flush()

    def close(self) -> None:
        self.queue.close()
        self.con.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def test_folder_moved_away_and_made_again_before_its_move_runs(rig):
    """d moves to e, then d/x is written again before the move action runs: the
    move becomes a copy (d is there), and the remote d/y, which left with the
    move, must still go (it used to stay for ever)."""
    rig.write("d/x", b"x1")
    for i in range(30):
        rig.write(f"d/sub/f{i}", b"f")
    rig.run(SEND, "d")
    assert len(tree(rig.remote)) == 31
    os.rename(rig.src / "d", rig.src / "e")
    rig.write("d/x", b"x2")
    rig.run(MOVE, "d", "e")
    rig.run(SEND, "d/x")
    assert tree(rig.remote) == tree(rig.src)
    assert tree(rig.remote)[b"d/x"] == b"x2" and len(tree(rig.remote)) == 32


def test_index_paths_under_pages_through_a_folder(rig):
    """paths_under() reads the Index a page at a time: every path below the
    folder, in order, none outside it (not 'd2/...' nor 'd.bak')."""
    rows = [(f"d/f{i:02d}", 1, 1, 0o644, 1, None) for i in range(7)] + [("d2/x", 1, 1, 0o644, 1, None),
                                                                        ("d.bak", 1, 1, 0o644, 1, None)]
    rig.index.put_many(rows)
    assert list(rig.index.paths_under("d", batch=3)) == [f"d/f{i:02d}" for i in range(7)]
    assert list(rig.index.paths_under("d", batch=7)) == [f"d/f{i:02d}" for i in range(7)]


def test_file_moved_away_and_written_again_before_its_move_runs(rig):
    """The same for a file: a moved to b, then a written again; both arrive."""
    rig.write("a", b"a1")
    rig.run(SEND, "a")
    os.rename(rig.src / "a", rig.src / "b")
    rig.write("a", b"a2")
    rig.run(MOVE, "a", "b")
    rig.run(SEND, "a")
    assert tree(rig.remote) == tree(rig.src) == {b"a": b"a2", b"b": b"a1"}


def test_delete_of_a_folder_that_came_back_keeps_only_what_is_there(rig, tmp_path):
    """d moved out of the root (its only event: delete d), then made again before
    the hint ran: the hint syncs what is there, and the files that left with d
    must still go from the remote (they used to stay for ever)."""
    rig.write("d/x", b"x1")
    rig.write("d/sub/y", b"y1")
    rig.run(SEND, "d")
    os.rename(rig.src / "d", tmp_path / "moved-out")
    rig.write("d/z", b"z1")
    rig.run(DELETE, "d")
    assert tree(rig.remote) == tree(rig.src) == {b"d/z": b"z1"}


def test_rewrite_in_the_same_second_with_the_same_size_is_sent(rig):
    """A remote that keeps whole-second mtimes (SFTP) must not hide a new version
    of the same size written in the same second: the Index holds the local mtime
    to the nanosecond, so it is compared to the nanosecond."""
    rig.con.abilities = Abilities(mtime_precision_ns=1_000_000_000)
    base = 1_700_000_000_000_000_000
    rig.write("a", b"v1")
    os.utime(rig.src / "a", ns=(base + 100_000_000, base + 100_000_000))
    rig.run(SEND, "a")
    rig.write("a", b"v2")
    os.utime(rig.src / "a", ns=(base + 600_000_000, base + 600_000_000))
    rig.run(SEND, "a")
    assert tree(rig.remote) == {b"a": b"v2"}


def test_temp_file_of_a_file_gone_before_its_send_is_removed(rig):
    """A send cut short (kill -9, unmounted share) left a temp file; the file is
    gone when its send runs again: the temp file goes too."""
    (rig.remote / "d").mkdir()
    (rig.remote / "d" / temp_name("q")).write_bytes(b"half a file")
    rig.run(SEND, "d/q")
    assert os.listdir(rig.remote / "d") == []


class NoServerSideMove(XCon):
    """A LocalCon behind the bare XCon contract: it does not declare ServerSideMove,
    so the engine must never call its move() (it fails the test if it does)."""

    def __init__(self, inner: LocalCon) -> None:
        self.inner = inner
        self.abilities = inner.abilities

    def connect(self) -> None:
        self.inner.connect()

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()

    def send(self, f, ctx):
        return self.inner.send(f, ctx)

    def delete(self, rel: str) -> None:
        self.inner.delete(rel)

    def move(self, src: str, dest: str) -> None:
        raise AssertionError("move() called on a connection that does not declare ServerSideMove")

    def stat(self, rel: str):
        return self.inner.stat(rel)

    def read_range(self, rel, offset, length, *, expect=None):
        return self.inner.read_range(rel, offset, length, expect=expect)

    def list(self, rel: str = ""):
        return self.inner.list(rel)


def test_a_move_without_server_side_move_sends_again_and_deletes(rig):
    """The engine checks the ability by type: a connection that does not declare
    ServerSideMove gets the destination sent and the source deleted instead."""
    assert isinstance(rig.con, ServerSideMove)
    rig.rec.con = NoServerSideMove(rig.con)
    rig.write("d/a", b"a")
    rig.write("d/sub/b", b"b")
    rig.run(SEND, "d")
    os.rename(rig.src / "d", rig.src / "e")
    rig.run(MOVE, "d", "e")
    assert tree(rig.remote) == tree(rig.src) == {b"e/a": b"a", b"e/sub/b": b"b"}
    assert rig.index.get("e/sub/b") is not None and rig.index.get("d/a") is None
