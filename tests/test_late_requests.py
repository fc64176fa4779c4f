"""A killed run's requests may land on the remote after the next run looked
(skynet/engine/late.py): the paths it held are remembered across crashes and
checked again once the remote has been reachable for a while.

The torture test found it: seed 943513205 on S3 left a deleted key behind (a
PUT of the killed daemon, held by a stalled network, landed after the new
daemon's delete)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from connections.local.con import LocalCon
from skynet.engine.late import LateRequests
from skynet.engine.mapper import Mapper
from skynet.state.db import StateDB
from skynet.state.index import Index
from skynet.state.uniqueq import DELETE, SEND


class Hints:
    """The queue, as far as LateRequests uses it."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, str]] = []

    def put_many(self, specs) -> int:
        specs = list(specs)
        self.got.extend(specs)
        return len(specs)


class Rig:
    def __init__(self, tmp_path: Path, complete_sync: bool = True) -> None:
        self.tmp = tmp_path
        self.src, self.remote = tmp_path / "src", tmp_path / "remote"
        self.src.mkdir(exist_ok=True)
        self.remote.mkdir(exist_ok=True)
        self.db = StateDB(str(tmp_path / "state.db"))
        self.index = Index(self.db)
        self.con = LocalCon(str(self.remote))
        self.con.connect()
        self.hints = Hints()
        self.late = LateRequests(self.db, self.index, self.con, Mapper(str(self.src)), self.hints, complete_sync,
                                 grace=0.2)

    def synced(self, rel: str, data: bytes) -> None:
        """`rel` on the disk, on the remote and in the Index, as after a good send."""
        for root in (self.src, self.remote):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        st = (self.src / rel).stat()
        remote = self.con.stat(rel)
        self.index.put_many([(rel, st.st_size, st.st_mtime_ns, 0o644, st.st_ino, remote.etag)])


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.con.close()
    r.db.close()


def test_remembered_paths_survive_a_restart_and_merge(rig, tmp_path):
    rig.late.remember(["a", "b/c"])
    rig.db.close()
    again = Rig(tmp_path)
    again.late.remember(["b/c", "d"])
    assert again.late.pending() == ["a", "b/c", "d"]
    again.db.close()


def test_a_path_gone_from_the_disk_is_deleted_again(rig):
    (rig.remote / "late.txt").write_bytes(b"put by the dead run, landed late")
    rig.late.remember(["late.txt"])
    assert rig.late.check() == 1
    assert rig.hints.got == [(DELETE, "late.txt", "")]
    assert rig.late.pending() == []


def test_without_complete_sync_what_the_disk_lost_stays(tmp_path):
    r = Rig(tmp_path, complete_sync=False)
    r.late.remember(["gone.txt"])
    assert r.late.check() == 0
    assert r.late.pending() == []
    r.db.close()


def test_a_remote_copy_replaced_by_an_older_upload_is_sent_again(rig):
    rig.synced("f.txt", b"the new version")
    (rig.remote / "f.txt").write_bytes(b"the OLD one, late")  # the dead run's upload lands
    rig.late.remember(["f.txt"])
    assert rig.late.check() == 1
    assert rig.hints.got == [(SEND, "f.txt", "")]
    assert rig.index.get("f.txt") is None  # else the send would be skipped as up to date


def test_files_a_late_folder_delete_took_under_a_folder_are_sent_again(rig):
    """A dead run's delete (or move) of a folder lands after the next run uploaded a
    file under it again: the folder's hint must not trust the Index for the files
    the remote lost or holds in another version (torture, S3, d1/sub/inner/f)."""
    rig.synced("d1/sub/inner/f", b"uploaded again by the new run")
    rig.synced("d1/sub/kept", b"untouched")
    rig.synced("d1/other", b"replaced late")
    (rig.remote / "d1" / "sub" / "inner" / "f").unlink()  # the late folder delete
    (rig.remote / "d1" / "other").write_bytes(b"an OLD version, late")
    rig.late.remember(["d1"])
    assert rig.late.check() == 1
    assert rig.hints.got == [(SEND, "d1", "")]  # the walk then sends what the Index lacks
    assert rig.index.get("d1/sub/inner/f") is None and rig.index.get("d1/other") is None
    assert rig.index.get("d1/sub/kept") is not None  # what the remote still holds as sent stays


def test_a_remote_copy_that_is_what_was_sent_costs_nothing(rig):
    rig.synced("ok.txt", b"same")
    rig.late.remember(["ok.txt"])
    assert rig.late.check() == 0
    assert rig.index.get("ok.txt") is not None


def test_the_check_waits_until_the_remote_was_reachable_for_the_grace(rig):
    (rig.remote / "x").write_bytes(b"late")
    rig.late.remember(["x"])
    up = threading.Event()
    halt = threading.Event()
    rig.late.start(up.is_set, halt, "t")
    try:
        time.sleep(0.6)  # three graces with the remote away: nothing may happen
        assert rig.hints.got == []
        up.set()
        deadline = time.monotonic() + 10
        while not rig.hints.got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rig.hints.got == [(DELETE, "x", "")]
    finally:
        halt.set()


def _claimed(state_db: Path) -> list[str]:
    """Paths of the actions the daemon holds right now (read-only look at its state)."""
    from skynet.state.db import StateReader
    from skynet.state.sqlitelib import sqlite3

    try:
        with StateReader(str(state_db)) as r:
            return [src for _, src, _, _ in r.claimed(100)]
    except sqlite3.Error:
        return []


def _wait(cond, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_put_of_a_killed_daemon_landing_late_is_taken_back(tmp_path, servers):
    """End to end on S3: the daemon is killed -9 while its PUT of `late.txt` hangs in a
    stalled network; the file is deleted meanwhile; the next daemon starts, is done with
    its start-up checks, and only then the dead run's object appears on the server (the
    late landing, made certain here by a PUT of the test's own). Before, it stayed for good:
    nothing queued it again. Now the remembered path is checked once the remote has been
    reachable for late_grace, and the object goes."""
    from tests.backend_s3 import s3_backend
    from tests.harness import Daemon, wait_converged, write_config

    with s3_backend(tmp_path, servers) as b:
        src = tmp_path / "src"
        src.mkdir()
        (src / "keep.txt").write_bytes(b"stays")
        cfg = write_config(tmp_path / "c.ini", "s3", {"t": dict(b.config["mapping"], source=str(src),
                                                             complete_sync="yes")},
                           tmp_path / "state", b.config["service"], extra={"late_grace": "3", "backoff_cap": "1"})
        d = Daemon(cfg, "s3").start()
        try:
            wait_converged(src, b.fetch, exact=True, daemon=d)
            stall, restore = b.faults["network stall"]
            stall()
            (src / "late.txt").write_bytes(b"the dead run's upload")
            _wait(lambda: "late.txt" in _claimed(tmp_path / "state" / "t.db"), "the PUT never started")
            d.kill9()
            (src / "late.txt").unlink()
            restore()
            d = Daemon(cfg, "s3").start()
            d.wait_log("done delete 'late.txt'")  # the start-up recheck: gone here, so gone there
            servers.get("s3").client().put_object(Bucket=b.config["service"]["bucket"], Key="root/late.txt",
                                                  Body=b"the dead run's upload, landing now")
            assert b"late.txt" in b.fetch()
            wait_converged(src, b.fetch, exact=True, timeout=60, daemon=d)
            assert "synced again, in case a request of that run reached the remote late" in d.log_text()
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
