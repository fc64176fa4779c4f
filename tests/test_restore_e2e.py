"""`skynet restore --at` end to end (issue 20 items 3-4), per backend: the daemon runs as a
subprocess with `versions = yes` (local, SFTP and `rclone serve s3` keep versions in the
versions area, SeaweedFS with bucket versioning its own); v1 written, overwritten with v2,
deleted, recreated as v3, a folder renamed and one deleted, the time recorded after each
step; then `python main.py restore --at T --to DIR` for each recorded time gives back the
tree of that moment, byte for byte, mode for mode and mtime for mtime (to the remote's
precision). A time before the first version is one clear line and exit 2."""
from __future__ import annotations

import os
import stat as statmod
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.backends import backend_params
from tests.harness import one_clear_line, run_main
from tests.versions_harness import (  # noqa: F401  (backend: the fixture)
    backend,
    check_the_store_gives_back_every_recorded_tree,
    rounded,
    run_scenario,
    source_tree,
)


def iso(ns: int) -> str:
    """A recorded time as --at takes it: ISO 8601 with its zone, to the microsecond (rounded down)."""
    return datetime.fromtimestamp(ns // 1000 / 1e6, tz=timezone.utc).isoformat(timespec="microseconds")


def tree_of(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """{rel: (bytes, mtime_ns, mode)} of a restored folder; no part file may be left in it."""
    out = source_tree(folder) if folder.exists() else {}
    assert not [rel for rel in out if rel.endswith((".skynet-part", ".skynet-part.json"))], out.keys()
    return out


@pytest.mark.parametrize("backend", backend_params(), indirect=True)
def test_restore_at_each_recorded_time_gives_that_tree_back(backend, tmp_path):
    """Also the keeping side's own check (test_versions_e2e): one run of the scenario
    per backend serves both (the default suite's time)."""
    steps = run_scenario(tmp_path, backend)
    check_the_store_gives_back_every_recorded_tree(backend, steps)
    precision = max(1, backend.con.abilities.mtime_precision_ns)
    os.chmod(steps.cfg, 0o600)  # it holds secrets (S3, SFTP): else a warning line precedes the error
    cfg = str(steps.cfg)
    for i, (when, tree) in enumerate(steps.marks):
        out = tmp_path / f"restored-{i}"
        res = run_main("restore", "--config-file", cfg, "--at", iso(when), "--to", str(out), timeout=120)
        assert res.returncode == 0, (i, res.stdout, res.stderr)
        assert rounded(tree_of(out), precision) == rounded(tree, precision), f"step {i}: {res.stdout}"
        assert f"restored {len(tree)} files" in res.stdout
    # one path, as it was before it was deleted and recreated: the second version
    out = tmp_path / "one"
    res = run_main("restore", "--config-file", cfg, "--at", iso(steps.marks[1][0]), "--to", str(out), "d/f.txt")
    assert res.returncode == 0, res.stderr
    assert (out / "d/f.txt").read_bytes() == b"the second version, longer"
    assert statmod.S_IMODE(os.stat(out / "d/f.txt").st_mode) == 0o644
    # the same restore again: everything there already, nothing fetched
    res = run_main("restore", "--config-file", cfg, "--at", iso(steps.marks[1][0]), "--to", str(out), "d/f.txt")
    assert res.returncode == 0 and "0 B fetched, 1 skipped" in res.stdout, res.stdout
    # bad input on a real store: before the first version; a path never synced
    first = min(v[1] for v in steps.marks[0][1].values())
    for args, needle in ((["--at", iso(first - 3600 * 10**9)], "before its first version"),
                         (["--at", iso(steps.marks[-1][0]), "never/there"], "never synced")):
        out = tmp_path / "bad"
        one_clear_line(run_main("restore", "--config-file", cfg, "--to", str(out), *args), needle)
        assert not out.exists()


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.id in ("local", "sftp")], indirect=True)
def test_restore_makes_empty_folders_and_gives_folders_their_modes(backend, tmp_path):
    """On a remote with folders: an empty folder comes back, each folder with its mode
    (a read-only one still gets its file: modes go on last, deepest first); a folder
    made after TIME, with its files, does not. Old code: neither `empty` nor the modes
    (every folder 0o755 from makedirs, `empty` absent)."""
    from skynet.versions.names import is_area
    from tests.harness import wait_converged
    from tests.versions_harness import Steps, mirror, w

    # (the mirror itself cannot fill a read-only folder on an SFTP server: there `ro` is writable)
    ro = 0o555 if backend.service == "local" else 0o705
    steps = Steps(tmp_path, backend)
    src = steps.src
    (src / "empty").mkdir()
    os.chmod(src / "empty", 0o750)
    w(src / "ro/f.txt", b"in a read-only folder")
    os.chmod(src / "ro", ro)
    w(src / "d/deep/g.txt", b"deep")
    os.chmod(src / "d", 0o710)

    def folders() -> dict[bytes, int]:
        return {k: m for k, m in backend.fetch_folders().items() if not is_area(os.fsdecode(k))}

    with steps.daemon:
        wait_converged(src, lambda: mirror(backend), True, 60, daemon=steps.daemon, fetch_folders=folders)
        steps.record()
        w(src / "later/x.txt", b"made after the time restored")
        wait_converged(src, lambda: mirror(backend), True, 60, daemon=steps.daemon, fetch_folders=folders)
        assert steps.daemon.stop() == 0
    os.chmod(steps.cfg, 0o600)
    out = tmp_path / "out"
    res = run_main("restore", "--config-file", str(steps.cfg), "--at", iso(steps.marks[0][0]), "--to", str(out),
                   timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    modes = {rel: statmod.S_IMODE(os.stat(out / rel).st_mode) for rel in ("empty", "ro", "d", "d/deep")}
    assert modes == {"empty": 0o750, "ro": ro, "d": 0o710, "d/deep": 0o755}, {k: oct(v) for k, v in modes.items()}
    assert (out / "ro/f.txt").read_bytes() == b"in a read-only folder" and os.listdir(out / "empty") == []
    assert not (out / "later").exists()
    one = tmp_path / "one"  # one folder of the tree: it and what is below it, with their modes
    res = run_main("restore", "d", "--config-file", str(steps.cfg), "--at", iso(steps.marks[0][0]), "--to", str(one),
                   timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(os.listdir(one)) == ["d"] and (one / "d/deep/g.txt").read_bytes() == b"deep"
    assert {rel: statmod.S_IMODE(os.stat(one / rel).st_mode) for rel in ("d", "d/deep")} == {"d": 0o710, "d/deep": 0o755}
