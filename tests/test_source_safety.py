"""An unmounted source disk or an emptied source folder never wipes the remote."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.harness import Daemon, tree, wait_converged, write_config

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def setup(tmp_path, **mapping):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    m = {"source": str(src), "target": str(dst), "complete_sync": "yes"}
    m.update(mapping)
    cfg = write_config(tmp_path / "c.ini", "local", {"m": m}, tmp_path / "state", extra={"poll_interval": "1"})
    return src, dst, cfg


def fill(src, n, prefix="f"):
    for i in range(n):
        (src / f"{prefix}{i % 5}").mkdir(exist_ok=True)
        (src / f"{prefix}{i % 5}" / f"{i}.txt").write_text(f"file {i}")


def mount_tmpfs(path):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "skynet-test", str(path)], check=True)


def umount(path):
    subprocess.run(["umount", "-l", str(path)], check=True)


@needs_root
def test_source_unmounted_while_running_deletes_nothing(tmp_path):
    src, dst, cfg = setup(tmp_path)
    mount_tmpfs(src)
    mounted = True
    try:
        fill(src, 50)
        with Daemon(cfg) as d:
            wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
            before = tree(dst)
            umount(src)
            mounted = False
            d.wait_log("went away", timeout=15)
            time.sleep(3)
            assert tree(dst) == before, "files were deleted on the remote after the source was unmounted"
            # the disk comes back, with one more file
            mount_tmpfs(src)
            mounted = True
            fill(src, 50)
            (src / "new.txt").write_text("written after the remount")
            d.wait_log("is back", timeout=20)
            wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
    finally:
        if mounted:
            umount(src)


@needs_root
def test_restart_with_source_unmounted_deletes_nothing(tmp_path):
    src, dst, cfg = setup(tmp_path)
    mount_tmpfs(src)
    try:
        fill(src, 30)
        with Daemon(cfg) as d:
            wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
    finally:
        umount(src)
    before = tree(dst)
    assert len(before) == 30
    with Daemon(cfg) as d:
        d.wait_log("not the folder skynet synced before", timeout=15)
        time.sleep(2)
        assert tree(dst) == before


def test_emptied_source_needs_confirmation(tmp_path):
    src, dst, cfg = setup(tmp_path)
    fill(src, 20)
    with Daemon(cfg) as d:
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
    for child in src.iterdir():
        shutil.rmtree(child)
    with Daemon(cfg) as d:
        d.wait_log("NOT deleting 20 file(s)", timeout=15)
        assert "the source folder is empty" in d.log_text()
        time.sleep(1)
        assert len(tree(dst)) == 20
    with Daemon(cfg, args=["--allow-mass-delete"]) as d:
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)


def test_max_delete_limits_a_start_up_scan(tmp_path):
    src, dst, cfg = setup(tmp_path, max_delete="10")
    fill(src, 40)
    with Daemon(cfg) as d:
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
    for p in sorted(src.rglob("*.txt"))[:25]:
        p.unlink()
    with Daemon(cfg) as d:
        d.wait_log("NOT deleting 25 file(s)", timeout=15)
        assert "max_delete = 10" in d.log_text()
        # live deletes (the user deleting while skynet watches) are not limited
        for p in sorted(src.rglob("*.txt"))[:3]:
            p.unlink()
        time.sleep(2)
        assert len(tree(dst)) == 40 - 3
    d = Daemon(cfg)
    os.environ["SKYNET_ALLOW_MASS_DELETE"] = "1"
    try:
        d.start()
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
    finally:
        del os.environ["SKYNET_ALLOW_MASS_DELETE"]
        d.stop()
