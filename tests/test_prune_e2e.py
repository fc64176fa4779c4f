"""Pruning and `skynet versions` end to end: the daemon runs as a subprocess with
`versions = yes` and `versions_keep = 2` on each backend (local, SFTP and `rclone serve
s3` keep versions in the versions area; SeaweedFS with bucket versioning keeps its
own), `python main.py versions` lists what was kept, and a daemon whose last pruning
is an hour old removes exactly what the retention lets go, on the remote, leaving the
mirror alone."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from skynet.state.sqlitelib import sqlite3
from tests.backends import backend_params
from tests.harness import Daemon, one_clear_line, run_main, wait_converged, write_config
from tests.versions_harness import S, backend, mirror  # noqa: F401 (backend: the fixture)

def versions_json(cfg: Path, path: str) -> list[dict]:
    res = run_main("versions", path, "--json", "--config-file", str(cfg))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def next_second() -> None:
    """Whole-second LastModified (SeaweedFS): the next change must not share this second."""
    now = time.time_ns()
    while time.time_ns() // S == now // S:
        time.sleep(0.01)


# local (the versions area) and SeaweedFS (a bucket's own versions) in the default suite;
# SFTP and rclone serve s3 (the area again, through other connections) with -m slow
@pytest.mark.parametrize("backend", [pytest.param(p.values[0], id=p.id, marks=p.marks if p.id in ("local", "seaweedfs")
                                                  else (*p.marks, pytest.mark.slow)) for p in backend_params()],
                         indirect=True)
def test_versions_lists_what_was_kept_and_pruning_keeps_what_the_rules_say(backend, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    mapping = {**backend.config.get("mapping", {}), "source": str(src), "complete_sync": "yes",
               "versions": "yes", "versions_keep": "2"}
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "skynet.ini", backend.service, {"t": mapping}, state,
                       backend.config.get("service"))
    cfg.chmod(0o600)  # it holds the remote's secrets: no warning line before the commands' output
    daemon = Daemon(cfg, backend.service)
    with daemon:
        for i in range(1, 5):  # f.txt: four versions, the last one current
            (src / "f.txt").write_bytes(b"v" * i)
            if i == 1:
                (src / "sub").mkdir()
                (src / "sub" / "g.txt").write_bytes(b"to be deleted")
            wait_converged(src, lambda: mirror(backend), True, 60, daemon=daemon)
            next_second()
        os.unlink(src / "sub" / "g.txt")  # deleted, with complete_sync
        wait_converged(src, lambda: mirror(backend), True, 60, daemon=daemon)
    rows = versions_json(cfg, "f.txt")
    assert [r["size"] for r in rows] == [4, 3, 2, 1] and rows[0]["current"], rows
    assert all(r["path"] == "f.txt" for r in rows)
    if backend.service == "s3":  # the hash where the remote knows one (local and SFTP keep none)
        assert all(len(r["hash"]) == 32 for r in rows), rows
    g = versions_json(cfg, str(src / "sub"))
    assert [(r["path"], r["deleted"]) for r in g] == [("sub/g.txt", True), ("sub/g.txt", False)], g
    text = run_main("versions", ".", "--config-file", str(cfg))
    assert text.returncode == 0 and "f.txt" in text.stdout and "sub/g.txt" in text.stdout and "deleted" in text.stdout
    never = run_main("versions", "never.txt", "--config-file", str(cfg))
    assert never.stdout == "" and one_clear_line(never, "never.txt", "never synced")

    # The last pruning was an hour ago (the first start counted as one): the next start prunes.
    with sqlite3.connect(state / "t.db") as db:
        db.execute("UPDATE meta SET value = '0' WHERE key = 'versions_prune_last'")
    assert db.total_changes == 1
    db.close()
    before = mirror(backend)
    with daemon:
        daemon.wait_log("t: pruned 2 version(s) of 2 path(s)", timeout=60)
    rows = versions_json(cfg, "f.txt")
    assert [r["size"] for r in rows] == [4, 3], rows  # the newest two
    assert [r["deleted"] for r in versions_json(cfg, "sub/g.txt")] == [True, False]  # kept: it is one of 2
    assert mirror(backend) == before


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_versions_of_a_mapping_without_versions_lists_the_current_copy(backend, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("abc")
    cfg = write_config(tmp_path / "skynet.ini", "local", {"t": {**backend.config["mapping"], "source": str(src)}},
                       tmp_path / "state")
    daemon = Daemon(cfg, "local")
    with daemon:
        wait_converged(src, lambda: mirror(backend), True, 60, daemon=daemon)
    res = run_main("versions", "a.txt", "--json", "--config-file", str(cfg))
    assert res.returncode == 0 and "keeps no versions (versions = no)" in res.stderr
    rows = json.loads(res.stdout)
    assert [(r["path"], r["size"], r["current"]) for r in rows] == [("a.txt", 3, True)]
    never = run_main("versions", "b.txt", "--config-file", str(cfg))
    assert never.stdout == "" and one_clear_line(never, "b.txt", "never synced")
