"""Keeping versions end to end (issue 20 item 1): the daemon runs as a subprocess
with `versions = yes` on every backend (local, SFTP and `rclone serve s3` keep
them in the versions area, SeaweedFS with bucket versioning keeps its own); the
tree is snapshotted after each step once the mirror caught up, and the mapping's
VersionStore gives each snapshot back at its time, byte for byte and mode for mode,
while the mirror side never shows the area (that scenario runs once per backend, in
tests/test_restore_e2e.py, which checks the store and `skynet restore` on it: see
tests/versions_harness.py). Here: the area never mirrored nor deleted, batches, kill -9
mid-replacement, deletions found by the start-up scan."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from skynet.config.settings import MappingConfig
from skynet.versions.names import AREA, is_area
from skynet.watch.ignore import IgnoreRules
from skynet.versions.stores import store_for
from tests.backends import backend_params
from tests.harness import Daemon, wait_converged
from tests.versions_harness import Steps, backend, mirror, w  # noqa: F401 (backend: the fixture)

def indexed_folders(state_db: Path) -> list[bytes]:
    """The folders the daemon's Index says the mirror made on the remote (targets with folders)."""
    import contextlib

    from skynet.state.sqlitelib import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)) as db:
        return sorted(bytes(r[0]) for r in db.execute("SELECT key FROM folders"))


def indexed(state_db: Path) -> list[bytes]:
    """The paths the daemon's Index says the remote holds."""
    import contextlib

    from skynet.state.sqlitelib import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)) as db:
        return sorted(bytes(r[0]) if not isinstance(r[0], str) else r[0].encode() for r in
                      db.execute("SELECT path FROM entries"))


def area_files(backend) -> dict[str, bytes]:
    return {os.fsdecode(k): v for k, v in backend.fetch().items() if is_area(os.fsdecode(k))}


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.id in ("local", "s3")], indirect=True)
def test_the_area_is_never_mirrored_nor_deleted(backend, tmp_path):
    """A first sync with complete_sync lists the remote (to adopt what is there)
    and deletes what the source lacks: the versions area is neither adopted nor
    deleted; a source folder named like the area is not synced (into the area)."""
    kept = {f"{AREA}/old.txt@20240101T000000.000000000Z.d": b"kept before", f"{AREA}/x%40y/z@20240101T000000.000000001Z.v": b"k2"}
    backend.seed(kept)
    steps = Steps(tmp_path, backend)
    w(steps.src / "x.txt", b"mirrored")
    w(steps.src / AREA / "sneaky.txt", b"must not land in the area")
    def skip(rel: str) -> bool:
        return is_area(rel) or IgnoreRules().ignored(rel)

    with steps.daemon:
        wait_converged(steps.src, lambda: mirror(backend), True, 60, skip, daemon=steps.daemon)
        w(steps.src / "y.txt", b"a later file")
        os.unlink(steps.src / "x.txt")
        wait_converged(steps.src, lambda: mirror(backend), True, 60, skip, daemon=steps.daemon)
        assert steps.daemon.stop() == 0
        log = steps.daemon.log_text()
    assert set(mirror(backend)) == {b"y.txt"}
    area = area_files(backend)
    assert {k: area[k] for k in kept} == kept  # untouched
    assert not any("sneaky" in k for k in area)
    assert f"{AREA!r} in the source is not synced" in log
    assert indexed(tmp_path / "state" / "t.db") == [b"y.txt"]  # the first sync adopted nothing of the area
    # nor its folders (a target with folders): an adopted area folder, absent from the
    # source, was deleted as gone by the next start's scan, taking every version with it
    assert not any(k.startswith(AREA.encode()) for k in indexed_folders(tmp_path / "state" / "t.db"))
    with steps.daemon:
        wait_converged(steps.src, lambda: mirror(backend), True, 60, skip, daemon=steps.daemon)
        assert steps.daemon.stop() == 0
    area = area_files(backend)
    assert {k: area[k] for k in kept} == kept  # still untouched after a restart's scan
    store = store_for(backend.con, MappingConfig("t", str(steps.src), "", versions=True))
    assert [v.deleted for v in store.history("x.txt")] == [True, False]


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.id == "local"], indirect=True)
def test_files_overwritten_in_a_batch_are_kept_too(backend, tmp_path):
    """Small files overwritten together go to the handler as a batch (LocalCon's one cp
    for many): each one's old version is kept all the same."""
    steps = Steps(tmp_path, backend)
    names = [f"many/f{i:02d}" for i in range(24)]
    for n in names:
        w(steps.src / n, b"old " + n.encode())
    with steps.daemon:
        steps.record()
        for n in names:
            w(steps.src / n, b"new " + n.encode())
        steps.record()
        assert steps.daemon.stop() == 0
    store = store_for(backend.con, MappingConfig("t", str(steps.src), "", versions=True))
    got = {}
    for v in store.history("many"):
        got.setdefault(v.rel, []).append(store.read_range(v, 0, 100))
    assert got == {n: [b"new " + n.encode(), b"old " + n.encode()] for n in names}


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.id in ("local", "sftp")], indirect=True)
def test_kill_9_while_a_replacement_is_sent_loses_no_version(backend, tmp_path):
    """The old version is linked into the area before the new one is sent: a kill -9
    while the new one is on its way leaves the old one at its name and in the area;
    the restarted daemon finishes, and both versions read back."""
    steps = Steps(tmp_path, backend)
    steps.cfg.write_text(steps.cfg.read_text().replace("[skynet]\n", "[skynet]\nbwlimit = 1M\n"))
    old, new = os.urandom(300_000), os.urandom(3 << 20)
    w(steps.src / "big.bin", old)
    steps.daemon.start()
    try:
        steps.record()
        w(steps.src / "big.bin", new)
        deadline = time.monotonic() + 30
        while not area_files(backend) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mirror(backend)[b"big.bin"] == old, "the new version arrived before the kill"
        steps.daemon.kill9()
        assert mirror(backend)[b"big.bin"] == old
        assert list(area_files(backend).values()) == [old]
        steps.daemon = Daemon(steps.cfg, backend.service)
        steps.daemon.start()
        steps.record()
        assert steps.daemon.stop() == 0
    finally:
        if steps.daemon.proc is not None and steps.daemon.proc.poll() is None:
            steps.daemon.kill9()
    store = store_for(backend.con, MappingConfig("t", str(steps.src), "", versions=True))
    bodies = [store.read_range(v, 0, len(new) + 1) for v in store.history("big.bin")]
    assert bodies[0] == new and set(bodies[1:]) == {old}  # kept again by the restarted send: the same bytes
    assert [store.read_range(v, 0, len(new) + 1) for v in store.at(steps.marks[0][0])] == [old]


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.id in ("local", "sftp")], indirect=True)
def test_deletions_found_by_the_start_up_scan_are_kept(backend, tmp_path):
    """Files deleted while the daemon was stopped are deleted by the start-up scan
    (complete_sync): through the keeper like any other delete."""
    steps = Steps(tmp_path, backend)
    w(steps.src / "gone/a.txt", b"deleted while stopped")
    w(steps.src / "b.txt", b"stays")
    with steps.daemon:
        steps.record()
        assert steps.daemon.stop() == 0
    shutil.rmtree(steps.src / "gone")
    steps.daemon = Daemon(steps.cfg, backend.service)
    with steps.daemon:
        steps.record()
        assert steps.daemon.stop() == 0
    store = store_for(backend.con, MappingConfig("t", str(steps.src), "", versions=True))
    assert [(v.deleted, v.size) for v in store.history("gone")] == [(True, 0), (False, 21)]
    assert {v.rel: store.read_range(v, 0, 100) for v in store.at(steps.marks[0][0])} == {
        "gone/a.txt": b"deleted while stopped", "b.txt": b"stays"}
