"""Bad input gets one clear line and loses nothing."""
from __future__ import annotations

import os
from skynet.state.sqlitelib import sqlite3
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness import Daemon, one_clear_line, run_main, tree, unprivileged_prefix, wait_converged, write_config




def good_config(tmp_path: Path, **mapping) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    m = {"source": str(tmp_path / "src"), "target": str(tmp_path / "dst")}
    m.update(mapping)
    return write_config(tmp_path / "c.ini", "local", {"m": m}, tmp_path / "state")


def test_missing_config_file(tmp_path):
    res = run_main("--run-with", "local", "--config-file", str(tmp_path / "nope.ini"))
    one_clear_line(res, "nope.ini", "no such config file")


def test_default_config_location_follows_xdg(tmp_path):
    res = run_main("--run-with", "local", env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    one_clear_line(res, str(tmp_path / "xdg" / "skynet" / "local.ini"))


def test_config_from_environment_variable(tmp_path):
    res = run_main("--run-with", "local", env={"SKYNET_CONFIG": str(tmp_path / "env.ini")})
    one_clear_line(res, "env.ini")


@pytest.mark.parametrize(
    "mutate, needles",
    [
        (lambda t: t.replace("[skynet]", "garbage line\n[skynet]", 1), ["line 1"]),
        (lambda t: t + "complete_sync = maybe\n", ["[mapping m] complete_sync", "expected yes or no", "'maybe'"]),
        (lambda t: t + "workerz = 3\n", ["[mapping m] workerz", "unknown key"]),
        (lambda t: t.replace("log_level = DEBUG", "log_level = LOUD"), ["[skynet] log_level", "LOUD"]),
        (lambda t: t.replace("service = local", "service = ftp"), ["[skynet] service", "'ftp'"]),
        (lambda t: t + "[nonsense]\nx = 1\n", ["[nonsense]", "unknown section"]),
        (lambda t: t.replace("[mapping m]", "[mapping m]\nsource = /a\n", 1), ["source", "twice"]),
        (lambda t: t + "workers = lots\n", ["[mapping m] workers", "whole number"]),
    ],
    ids=["not-ini", "bad-bool", "unknown-key", "bad-level", "bad-service", "unknown-section", "duplicate-key", "bad-int"],
)
def test_malformed_config(tmp_path, mutate, needles):
    cfg = good_config(tmp_path)
    cfg.write_text(mutate(cfg.read_text()))
    one_clear_line(run_main("--run-with", "local", "--config-file", str(cfg)), str(cfg), *needles)


def test_missing_source_folder(tmp_path):
    cfg = good_config(tmp_path, source=str(tmp_path / "not-there"))
    one_clear_line(run_main("--run-with", "local", "--config-file", str(cfg)), "[mapping m] source", "does not exist")


def test_target_inside_source_refused(tmp_path):
    cfg = good_config(tmp_path, target=str(tmp_path / "src" / "mirror"))
    one_clear_line(run_main("--run-with", "local", "--config-file", str(cfg)), "is inside the source")


def test_unreadable_file_is_failed_and_others_continue():
    # As root every file is readable, so the daemon runs as 'nobody' here.
    base = Path(tempfile.mkdtemp(prefix="skynet-perm-"))
    try:
        os.chmod(base, 0o777)
        src, dst, state = base / "src", base / "dst", base / "state"
        for d in (src, dst, state):
            d.mkdir()
            os.chmod(d, 0o777)
        for i in range(5):
            (src / f"ok{i}.txt").write_text(f"ok {i}")
            os.chmod(src / f"ok{i}.txt", 0o644)
        secret = src / "secret.txt"
        secret.write_text("you cannot read me")
        os.chmod(secret, 0o000)
        cfg = write_config(base / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, state)
        os.chmod(cfg, 0o644)
        d = Daemon(cfg, prefix=unprivileged_prefix(), log=base / "log.txt")
        if not d.prefix and os.access(secret, os.R_OK):
            pytest.skip("cannot make a file unreadable here")
        d.start()
        try:
            d.wait_log("FAILED send 'secret.txt'", timeout=30)
            assert "Permission denied" in d.log_text()
            wait_converged(src, lambda: tree(dst), exact=False, skip=lambda r: r == "secret.txt", daemon=d)
            db = sqlite3.connect(state / "m.db")
            rows = db.execute("SELECT kind, src, error FROM failed").fetchall()
            assert rows and rows[0][0] == "send" and rows[0][1] == b"secret.txt"
            # fixing the permissions is a change on disk: it is retried by itself
            os.chmod(secret, 0o644)
            wait_converged(src, lambda: tree(dst), exact=False, skip=None, daemon=d)
            assert d.proc.poll() is None
        finally:
            assert d.stop() == 0
        rows = sqlite3.connect(state / "m.db").execute("SELECT count(*) FROM failed").fetchone()
        assert rows[0] == 0  # the later success settled it
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_file_vanishing_during_copy(tmp_path):
    cfg = good_config(tmp_path, complete_sync="yes")
    (tmp_path / "dst").mkdir()
    src = tmp_path / "src"
    d = Daemon(cfg).start()
    try:
        for i in range(5):
            big = src / f"big{i}.bin"
            big.write_bytes(os.urandom(20 << 20))
            time.sleep(0.05)
            big.unlink()
        (src / "stays.txt").write_text("stays")
        wait_converged(src, lambda: tree(tmp_path / "dst"), exact=True, daemon=d)
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def test_state_dir_locked_by_another_daemon(tmp_path):
    cfg = good_config(tmp_path)
    (tmp_path / "dst").mkdir()
    with Daemon(cfg):
        res = run_main("--run-with", "local", "--config-file", str(cfg))
        assert res.returncode == 2
        assert "another skynet is already running" in res.stderr
