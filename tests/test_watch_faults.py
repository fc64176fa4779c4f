"""inotify faults: an overflowing event queue and the watch limit.

Both are logged with the sysctl that fixes them and handled by rescanning, not
by exiting. The kernel limits are machine-wide, so these tests need root; they
lower a limit only for the moment the daemon sets up its watches.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.harness import INOTIFY_SYSCTL as INOTIFY, Daemon, inotify_sysctl, tree, unprivileged_prefix, wait_converged, world_writable_tmp, write_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not INOTIFY.exists(), reason="changing inotify limits needs root")




@pytest.mark.serial  # sets a machine-wide inotify sysctl: no other daemon may start meanwhile (tests/conftest.py)
def test_queue_overflow_is_logged_and_rescanned(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, tmp_path / "state")
    # The queue size is fixed when the daemon's inotify instance is created.
    with inotify_sysctl("max_queued_events", 16):
        d = Daemon(cfg).start()
    try:
        for i in range(3000):
            (src / f"f{i}.txt").write_text(str(i))
        d.wait_log("overflowed", timeout=30)
        assert "fs.inotify.max_queued_events" in d.log_text()
        wait_converged(src, lambda: tree(dst), exact=False, daemon=d, timeout=60)
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


@pytest.mark.serial  # sets a machine-wide inotify sysctl: no other daemon may start meanwhile (tests/conftest.py)
def test_watch_limit_is_logged_and_polled():
    base = world_writable_tmp("skynet-watch-")
    try:
        src, dst, state = base / "src", base / "dst", base / "state"
        for d in (src, dst, state):
            d.mkdir()
            os.chmod(d, 0o777)
        for i in range(40):
            (src / f"d{i}").mkdir()
            os.chmod(src / f"d{i}", 0o777)
            (src / f"d{i}" / "f.txt").write_text(f"{i}")
            os.chmod(src / f"d{i}" / "f.txt", 0o666)
        cfg = write_config(base / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, state,
                           extra={"poll_interval": "1"})
        os.chmod(cfg, 0o644)
        # The daemon runs as 'nobody', whose watch count starts at 0: a limit of
        # 10 lets it watch the root and a few folders, not all 40.
        d = Daemon(cfg, prefix=unprivileged_prefix(), log=base / "log.txt")
        with inotify_sysctl("max_user_watches", 10):
            d.start()
            d.wait_log("inotify watch limit reached", timeout=30)
        try:
            assert "sysctl fs.inotify.max_user_watches" in d.log_text()
            wait_converged(src, lambda: tree(dst), exact=False, daemon=d)
            # a change in a folder that is not watched still arrives (the polling fallback)
            unwatched = re.search(r"cannot watch '([^']+)' \(inotify watch limit", d.log_text()).group(1)
            assert unwatched.startswith(str(src / "d"))
            time.sleep(1.2)
            (Path(unwatched) / "f.txt").write_text("changed in an unwatched folder")
            wait_converged(src, lambda: tree(dst), exact=False, daemon=d, timeout=20)
            assert re.search(r"\d+ folder\(s\) of '.*' are not watched \(fs.inotify.max_user_watches = 10 reached\)",
                             d.log_text())
            # The limit is back up: a poll watches those folders again, and polling stops.
            d.wait_log("every folder is watched again", timeout=20)
            (Path(unwatched) / "f.txt").write_text("changed once watched again")
            wait_converged(src, lambda: tree(dst), exact=False, daemon=d, timeout=20)
            assert d.proc.poll() is None
        finally:
            assert d.stop() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)
