"""Crash windows the torture test fell into, set up exactly: the state database
and the remote are put in the state a kill -9 at the worst moment leaves, the
local tree changes while skynet is down, and the restarted daemon must still
converge (with complete_sync: nothing extra may stay on the remote).

Each test first lets a daemon sync a file and stop, so the state database
exists; then it writes the queue the way the killed run would have left it.
"""
from __future__ import annotations

import os
import shutil

import pytest

from connections.contract.xcon import BatchSend, LocalFile, TransferContext
from skynet.state.db import StateDB
from skynet.state.uniqueq import MOVE, SEND
from tests.backends import BACKENDS, enabled_backends
from tests.harness import Daemon, wait_converged, write_config


@pytest.fixture(params=enabled_backends())
def backend(request, tmp_path, servers):
    with BACKENDS[request.param](tmp_path, servers) as b:
        yield b


def synced_then_stopped(tmp_path, backend, files: dict[str, bytes]):
    """A daemon that synced `files` and stopped cleanly; returns (src, config)."""
    src = tmp_path / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    mapping = dict(backend.config.get("mapping", {}), source=str(src), complete_sync="yes")
    cfg = write_config(tmp_path / "c.ini", backend.service, {"t": mapping}, tmp_path / "state",
                       backend.config.get("service"))
    d = Daemon(cfg, backend.service).start()
    wait_converged(src, backend.fetch, exact=True, daemon=d)
    assert d.stop() == 0
    return src, cfg


def leave_in_queue(tmp_path, specs: list[tuple[str, str, str]], claimed: bool) -> None:
    """Queue actions as a killed run leaves them: waiting, or claimed (running)."""
    db = StateDB(str(tmp_path / "state" / "t.db"))
    with db.write() as c:
        c.executemany("INSERT INTO queue(kind, src, dest, state, queued_at) VALUES (?, ?, ?, ?, 0)",
                      [(k, os.fsencode(s), os.fsencode(d), 1 if claimed else 0) for k, s, d in specs])
    db.close()


def send_directly(backend, tmp_path, rel: str, data: bytes) -> None:
    """Put a file on the remote behind skynet's back (what a finished upload did)."""
    path = tmp_path / "direct"
    path.write_bytes(data)
    st = os.stat(path)
    backend.con.send(LocalFile(str(path), rel, st.st_size, st.st_mtime_ns, 0o644, st.st_ino), TransferContext())


def test_upload_finished_but_not_recorded_of_a_file_deleted_while_down(tmp_path, backend):
    """kill -9 between the remote's answer to an upload and the Index write: the
    remote holds the file, the Index does not know it, and the file is deleted
    while skynet is down. The replayed send finds nothing to send and the start-up
    scan knows nothing to delete: the remote copy used to stay for ever."""
    src, cfg = synced_then_stopped(tmp_path, backend, {"keep.txt": b"keep"})
    send_directly(backend, tmp_path, "gone.txt", b"uploaded, then skynet died")
    leave_in_queue(tmp_path, [(SEND, "gone.txt", "")], claimed=True)
    d = Daemon(cfg, backend.service).start()
    wait_converged(src, backend.fetch, exact=True, daemon=d)
    assert d.stop() == 0


def test_replayed_move_whose_destination_went_while_down(tmp_path, backend):
    """A folder move still queued when skynet died, then the moved folder deleted
    while it was down: the start-up scan deletes the old paths (still the Index's),
    the replayed move then renames them on the remote to the new ones, which are
    gone from the disk. They used to stay on the remote for ever."""
    src, cfg = synced_then_stopped(tmp_path, backend, {"d/x": b"x", "d/sub/y": b"y", "keep.txt": b"keep"})
    os.rename(src / "d", src / "e")  # the watcher saw this; its move never ran
    leave_in_queue(tmp_path, [(MOVE, "d", "e")], claimed=False)
    shutil.rmtree(src / "e")  # while skynet is down
    d = Daemon(cfg, backend.service).start()
    wait_converged(src, backend.fetch, exact=True, daemon=d)
    assert d.stop() == 0


def test_a_send_killed_mid_copy_leaves_no_temp_file_when_the_rerun_goes_in_a_batch(tmp_path, servers):
    """LocalCon copies batches through a staging folder, so the rerun of a send
    that kill -9 cut short never overwrites the temporary file that send was
    writing. The restart removes it (MappingRunner._recheck_interrupted).
    Local only: the other connections send one file at a time."""
    from connections.local.con import temp_name

    with BACKENDS["local"](tmp_path, servers) as backend:
        assert isinstance(backend.con, BatchSend)
        _killed_batch_scenario(tmp_path, backend, temp_name)


def _killed_batch_scenario(tmp_path, backend, temp_name) -> None:
    src, cfg = synced_then_stopped(tmp_path, backend, {"keep.txt": b"k"})
    rels = [f"burst/{i}.txt" for i in range(300)]  # enough for batches of several files
    for rel in rels:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode() * 50)
    remote = backend.con.root
    os.makedirs(os.path.join(remote, "burst"), exist_ok=True)
    half = os.path.join(remote, "burst", temp_name("3.txt"))
    with open(half, "wb") as f:
        f.write(b"half a copy")  # the killed send() was writing this
    leave_in_queue(tmp_path, [(SEND, rel, "") for rel in rels], claimed=True)
    d = Daemon(cfg, backend.service).start()
    wait_converged(src, backend.fetch, exact=True, daemon=d)
    assert d.stop() == 0
    assert backend.leftovers() == []
