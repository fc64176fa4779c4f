"""The state database under stress: damaged, deleted, or on a full disk."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.harness import Daemon, tree, wait_converged, write_config


def setup(tmp_path, state=None):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(60):
        (src / f"d{i % 3}").mkdir(exist_ok=True)
        (src / f"d{i % 3}" / f"{i}.txt").write_text(f"file {i}")
    state = state or tmp_path / "state"
    cfg = write_config(tmp_path / "c.ini", "local",
                       {"m": {"source": str(src), "target": str(dst), "complete_sync": "yes"}}, state)
    return src, dst, cfg, state


def uploads(d: Daemon) -> int:
    return d.log_text().count(" uploaded (")


def test_damaged_state_is_rebuilt_without_resending(tmp_path):
    src, dst, cfg, state = setup(tmp_path)
    with Daemon(cfg) as d:
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
    before = uploads(d)
    db = state / "m.db"
    with open(db, "r+b") as f:  # scribble over the header and the first pages
        f.write(os.urandom(8192))
    for extra in ("-wal", "-shm"):
        if os.path.exists(str(db) + extra):
            os.unlink(str(db) + extra)
    (src / "d0" / "new.txt").write_text("added while the state was broken")
    (src / "d1" / "1.txt").unlink()
    with Daemon(cfg) as d2:
        d2.wait_log("DAMAGED", timeout=15)
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d2)
        d2.wait_log("first sync: the remote already holds 60 file(s)", timeout=10)
        assert uploads(d2) - before == 1  # only the new file; the 59 others were recognised
    assert any(p.name.startswith("m.db.corrupt-") for p in state.iterdir())


def test_deleted_state_is_rebuilt_loudly(tmp_path):
    src, dst, cfg, state = setup(tmp_path)
    with Daemon(cfg) as d:
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
    before = uploads(d)
    for p in state.glob("m.db*"):
        p.unlink()
    with Daemon(cfg) as d2:
        d2.wait_log("MISSING", timeout=15)
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d2)
        time.sleep(1)
        assert uploads(d2) == before  # nothing sent again, nothing deleted


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_state_disk_stops_cleanly_and_recovers(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "skynet-full", str(state)], check=True)
    try:
        src, dst, cfg, _ = setup(tmp_path, state)
        d = Daemon(cfg).start()
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
        # fill the state disk to the last byte
        with open(state / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to flush (ENOSPC) at close
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        for i in range(500):  # work that needs the state database
            (src / "d2" / f"more{i}.txt").write_text("x" * 200)
        rc = d.proc.wait(60)
        log = d.log_text()
        assert rc == 1, log[-2000:]
        assert "stopping:" in log and ("disk is full" in log or "No space left" in log), log[-2000:]
        assert "Traceback" not in log
        (state / "filler").unlink()
        with Daemon(cfg) as d2:  # the state is intact: it picks up where it stopped
            wait_converged(src, lambda: tree(dst), exact=True, daemon=d2, timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
