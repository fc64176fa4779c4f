"""What the end-to-end tests of versions share (tests/test_versions_e2e.py,
test_restore_e2e.py, test_prune_e2e.py): a backend with versions on, the mirror
side of its remote, and the scenario whose tree is recorded after each step."""
from __future__ import annotations

import os
import shutil
import stat as statmod
import time
from pathlib import Path

import pytest

from skynet.config.settings import MappingConfig
from skynet.versions.names import AREA, is_area
from skynet.versions.stores import store_for
from tests.backends import BACKENDS
from tests.harness import Daemon, wait_converged, write_config

S = 1_000_000_000


@pytest.fixture
def backend(request, tmp_path, servers):
    with BACKENDS[request.param](tmp_path, servers) as b:
        if b.enable_versioning is not None:
            b.enable_versioning()  # SeaweedFS: the bucket's own versions
        yield b


def mirror(backend) -> dict[bytes, bytes]:
    """The remote as the mirror sees it: everything but the versions area."""
    return {k: v for k, v in backend.fetch().items() if not is_area(os.fsdecode(k))}


def source_tree(src: Path) -> dict[str, tuple[bytes, int, int]]:
    """{rel: (bytes, mtime_ns, mode)} of the source now."""
    out = {}
    for folder, _dirs, files in os.walk(src):
        for name in files:
            p = os.path.join(folder, name)
            st = os.stat(p)
            out[os.path.relpath(p, src)] = (Path(p).read_bytes(), st.st_mtime_ns, statmod.S_IMODE(st.st_mode))
    return out


def rounded(tree: dict, precision: int) -> dict:
    return {rel: (data, mtime // precision * precision, mode) for rel, (data, mtime, mode) in tree.items()}


def w(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `path` with its bytes and mode at once (a temporary name the daemon
    ignores, renamed into place): a send between a write and a chmod would make
    a version of its own (the remote really had it), which no step recorded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Steps:
    """Runs the daemon, records (time, source tree) after each step once the mirror caught up."""

    def __init__(self, tmp_path: Path, backend) -> None:
        self.backend = backend
        self.src = tmp_path / "src"
        self.src.mkdir()
        mapping = {**backend.config.get("mapping", {}), "source": str(self.src), "complete_sync": "yes",
                   "versions": "yes"}
        self.cfg = write_config(tmp_path / "skynet.ini", backend.service, {"t": mapping}, tmp_path / "state",
                                backend.config.get("service"))
        self.daemon = Daemon(self.cfg, backend.service)
        self.marks: list[tuple[int, dict]] = []

    def record(self) -> None:
        wait_converged(self.src, lambda: mirror(self.backend), True, 60, daemon=self.daemon)
        now = time.time_ns()
        self.marks.append((now, source_tree(self.src)))
        # Whole-second LastModified (SeaweedFS): the next step must not share this second.
        while time.time_ns() // S == now // S:
            time.sleep(0.01)


def run_scenario(tmp_path: Path, backend) -> "Steps":
    """v1 written, overwritten with v2, deleted (complete_sync), recreated as v3, its
    folder renamed, a folder deleted: the tree recorded after each step (steps.marks)."""
    steps = Steps(tmp_path, backend)
    src = steps.src
    w(src / "d/f.txt", b"version one", 0o600)
    w(src / "d/sub/keep.bin", os.urandom(70_000))
    w(src / "top.txt", b"at the top", 0o640)
    with steps.daemon:
        steps.record()
        w(src / "d/f.txt", b"the second version, longer", 0o644)  # overwritten
        steps.record()
        os.unlink(src / "d/f.txt")  # deleted (complete_sync)
        steps.record()
        w(src / "d/f.txt", b"v3", 0o600)  # recreated
        steps.record()
        os.rename(src / "d", src / "renamed")  # a folder renamed
        steps.record()
        shutil.rmtree(src / "renamed/sub")  # a folder deleted
        steps.record()
        assert steps.daemon.stop() == 0
    return steps


def restored(store, when_ns: int, precision: int) -> dict[str, tuple[bytes, int, int]]:
    """{rel: (bytes, mtime_ns to the remote's precision, mode)} of store.at(when_ns)."""
    out = {}
    for v in store.at(when_ns):
        data = store.read_range(v, 0, v.size + 1)
        out[v.rel] = (data, v.mtime_ns // precision * precision, v.mode)
    return out


def check_the_store_gives_back_every_recorded_tree(backend, steps: Steps) -> None:
    """After run_scenario: the mapping's VersionStore gives each recorded tree back at its
    time (bytes, mtime, mode), the history of d/f.txt tiles time, and the mirror side
    never shows the area. Called by tests/test_restore_e2e.py, whose one run of the
    scenario per backend then checks `skynet restore` on the same history."""
    src = steps.src
    con = backend.con
    store = store_for(con, MappingConfig("t", str(src), "", versions=True))
    precision = max(1, con.abilities.mtime_precision_ns)
    for i, (when, tree) in enumerate(steps.marks):
        assert restored(store, when, precision) == rounded(tree, precision), f"step {i}"
    hist = list(store.history("d/f.txt"))
    assert [v.deleted for v in hist] == [True, False, True, False, False]  # moved away, v3, deleted, v2, v1
    assert [v.size for v in hist if not v.deleted] == [2, 26, 11]
    assert hist[0].until_ns is None
    assert all(newer.since_ns == older.until_ns for newer, older in zip(hist, hist[1:]))
    # the mirror side never holds the area, nor anything else beyond the source
    assert {os.fsdecode(k) for k in mirror(backend)} == set(source_tree(src))
    assert AREA not in (e.rel.split("/")[0] for e in con.list("") if not is_area(e.rel))
