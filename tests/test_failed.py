"""Failed actions: recorded with their error, listed by --failed, queued again by --retry-failed."""
from __future__ import annotations

import json

from tests.harness import Daemon, run_main, tree, wait_converged, write_config


def test_failed_list_and_retry(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "blocker").mkdir(parents=True)
    (src / "blocker" / "x.txt").write_text("needs a folder named blocker on the target")
    (src / "fine.txt").write_text("fine")
    dst.mkdir()
    (dst / "blocker").write_text("a file in the way of the folder")  # a permanent error for send
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, tmp_path / "state")
    with Daemon(cfg) as d:
        d.wait_log("FAILED send 'blocker/x.txt'", timeout=20)
        # the target has folders: the folder itself is a failed send too (it cannot be made)
        d.wait_log("FAILED send 'blocker'", timeout=20)
        assert (dst / "fine.txt").read_text() == "fine"  # the queue moved on

        res = run_main("--failed", "--config-file", str(cfg))
        assert res.returncode == 0 and "blocker/x.txt" in res.stdout and "in the way" in res.stdout, res.stdout
        rows = {r["path"]: r for r in json.loads(run_main("--failed", "--json", "--config-file", str(cfg)).stdout)}
        assert set(rows) == {"blocker", "blocker/x.txt"}, rows
        row = rows["blocker/x.txt"]
        assert row["action"] == "send" and row["attempts"] == 1
        assert "in the way" in rows["blocker"]["error"] and "complete_sync is off" in rows["blocker"]["error"]

        (dst / "blocker").unlink()  # the user fixes the cause
        res = run_main("--retry-failed", "blocker/x.txt", "blocker", "--config-file", str(cfg))
        assert res.returncode == 0 and "2 action(s) queued again" in res.stdout
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
        assert json.loads(run_main("--failed", "--json", "--config-file", str(cfg)).stdout) == []
