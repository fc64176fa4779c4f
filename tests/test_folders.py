"""Folders are part of the mirror on targets that have them (issue 24): local and SFTP.

main.py runs as a subprocess (tests/test_e2e.py's Env), with and without
complete_sync, on every backend that declares connections.contract.xcon.Folders
(S3 has no folders: nothing here applies to it). Each scenario ends with the
target equal to the source as `diff -r` sees it, folders and their modes
included (tests.harness.converged): exactly with complete_sync, a superset without.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.backends import BACKENDS, enabled_backends
from tests.harness import run_main
from tests.test_e2e import Env, w

#: the test backends whose connection has folders (see DECLARED in test_xcon_contract)
FOLDER_BACKENDS = [n for n in enabled_backends() if n in ("local", "sftp")]


def _params(modes: tuple[bool, ...]) -> list:
    return [pytest.param((n, c), id=f"{'complete_sync' if c else 'copy'}-{n}") for n in FOLDER_BACKENDS for c in modes]


def _env(request, tmp_path, servers):
    name, complete = request.param
    with BACKENDS[name](tmp_path, servers) as backend:
        e = Env(tmp_path, backend, complete)
        yield e
        if e.daemon and e.daemon.proc and e.daemon.proc.poll() is None:
            assert e.daemon.stop() == 0, e.daemon.log_text()[-3000:]
        assert backend.leftovers() == [], "partial uploads left behind"


@pytest.fixture(params=_params((False, True)))
def env(request, tmp_path, servers):
    yield from _env(request, tmp_path, servers)


@pytest.fixture(params=_params((True,)))
def mirror(request, tmp_path, servers):
    """With complete_sync only: the cases where something on the target must go."""
    yield from _env(request, tmp_path, servers)


def remote_root(env: Env) -> Path:
    """The target folder as a path on this machine (the test sshd's folder is a local one)."""
    return Path(env.backend.config["mapping"]["target"])


def remote_folders(env: Env) -> dict[bytes, int]:
    return env.backend.fetch_folders()


def mkdir(path: Path, mode: int) -> Path:
    path.mkdir(parents=True)
    os.chmod(path, mode)
    return path


def failed(env: Env) -> dict[str, str]:
    """{path: error} of the daemon's failed actions (skynet --failed --json)."""
    res = run_main("--failed", "--json", "--config-file", str(env.cfg))
    assert res.returncode == 0, res.stderr
    return {r["path"]: r["error"] for r in json.loads(res.stdout)}


def test_empty_folders_are_made_with_their_modes(env):
    mkdir(env.src / "pre/empty", 0o750)
    w(env.src / "pre/file.txt", "x")
    env.start()
    env.converge()
    assert remote_folders(env)[b"pre/empty"] == 0o750
    mkdir(env.src / "e1", 0o700)  # empty, made while watched
    mkdir(env.src / "e2/sub/deeper", 0o755)
    os.chmod(env.src / "e2", 0o711)
    os.chmod(env.src / "pre", 0o775)  # a folder's mode changed
    os.chmod(env.src / "pre/empty", 0o2755)  # special bits are not kept
    env.converge()
    got = remote_folders(env)
    assert (got[b"e1"], got[b"e2"], got[b"e2/sub/deeper"], got[b"pre"], got[b"pre/empty"]) == \
        (0o700, 0o711, 0o755, 0o775, 0o755)


def test_removed_folders_go_with_complete_sync_only(env):
    mkdir(env.src / "gone/empty", 0o755)
    w(env.src / "tree/a/b.txt", "b")
    mkdir(env.src / "tree/sub", 0o700)
    w(env.src / "keep/k.txt", "k")
    env.start()
    env.converge()
    os.rmdir(env.src / "gone/empty")
    shutil.rmtree(env.src / "tree")
    env.converge()
    got = remote_folders(env)
    if env.complete:
        assert b"gone/empty" not in got and not any(k.startswith(b"tree") for k in got)
        assert b"keep" in got and b"gone" in got
    else:
        assert b"gone/empty" in got and b"tree/sub" in got  # deletes are not propagated


def test_folder_deleted_while_stopped_goes_at_the_next_start(env):
    w(env.src / "keep/x.txt", "x")
    w(env.src / "old/a.txt", "a")
    mkdir(env.src / "old/inner", 0o755)
    mkdir(env.src / "lone", 0o700)
    d = env.start()
    env.converge()
    assert d.stop() == 0
    shutil.rmtree(env.src / "old")
    os.rmdir(env.src / "lone")
    mkdir(env.src / "new/empty", 0o750)
    env.start()
    env.converge()
    got = remote_folders(env)
    assert got[b"new/empty"] == 0o750
    if env.complete:
        assert not ({b"old", b"old/inner", b"lone"} & set(got)) and b"old/a.txt" not in env.remote()
    else:
        assert {b"old", b"old/inner", b"lone"} <= set(got)


def test_folder_rename_is_one_move(env):
    for i in range(20):
        w(env.src / f"album/{i}.jpg", f"photo {i}")
    mkdir(env.src / "album/empty", 0o700)
    env.start()
    env.converge()
    sent = env.wait_uploads(20)
    os.rename(env.src / "album", env.src / "album-2024")
    os.rename(env.src / "album-2024/empty", env.src / "album-2024/still-empty")
    env.converge()
    got = remote_folders(env)
    assert got[b"album-2024/still-empty"] == 0o700 and b"album" not in got  # moved, even without complete_sync
    assert env.uploads() == sent, "a folder rename is a rename on the remote, not new uploads"


def test_file_and_folder_swapped_both_ways(env):
    """A file replaced by a folder of the same name, and a folder by a file, while
    watched. With complete_sync the old one goes and the mirror converges; without,
    it stays, the conflict is a failed action that says so, and it is tried again when
    the source side changes (here once the user has cleared the target by hand)."""
    w(env.src / "swap1", "a file, then a folder")
    w(env.src / "swap2/f.txt", "a folder, then a file")
    env.start()
    env.converge()
    (env.src / "swap1").unlink()
    w(env.src / "swap1/in.txt", "inside")
    shutil.rmtree(env.src / "swap2")
    w(env.src / "swap2", "now a file")
    if env.complete:
        env.converge()
        assert env.remote()[b"swap2"] == b"now a file" and b"swap1" in remote_folders(env)
        return
    env.daemon.wait_log("FAILED send 'swap1'", timeout=30)  # the folder cannot be made (nor, then, what it holds)
    env.daemon.wait_log("FAILED send 'swap2'", timeout=30)
    errors = failed(env)
    assert "a file is in the way of folder 'swap1'" in errors["swap1"], errors
    assert "a folder is in the way of the file" in errors["swap2"], errors
    assert all("complete_sync is off" in errors[p] for p in ("swap1", "swap2")), errors
    assert env.remote()[b"swap1"] == b"a file, then a folder" and b"swap2" in remote_folders(env)
    root = remote_root(env)
    (root / "swap1").unlink()  # the user clears the way on the target...
    shutil.rmtree(root / "swap2")
    w(env.src / "swap1/in.txt", "inside, again")  # ...and the source side changes: tried again
    w(env.src / "swap2", "now a file, again")
    os.chmod(env.src / "swap1", 0o750)
    env.converge()
    assert failed(env) == {}


def test_swap_while_stopped_and_blockers_found_at_start(env):
    """The target holds, in the way of the source, a folder the source never had (with
    a file of its own in it: issue 24's "a folder is in the way of the file") and a
    file where the source has a folder; a swap also happened while the daemon was
    stopped. complete_sync clears them and converges; without it they stay, each a
    failed action, tried again at the next start once the target is cleared."""
    root = remote_root(env)
    env.backend.seed({"report/foreign.txt": b"not the source's", "docs": b"a file in the way"})
    w(env.src / "report", "the source's report")
    w(env.src / "docs/readme", "read me")
    w(env.src / "flip", "a file first")
    d = env.start()
    if env.complete:
        env.converge()
        assert env.remote()[b"report"] == b"the source's report"
        assert d.stop() == 0
        (env.src / "flip").unlink()
        mkdir(env.src / "flip", 0o700)  # swapped while stopped
        env.start()
        env.converge()
        assert remote_folders(env)[b"flip"] == 0o700
        return
    d.wait_log("FAILED send 'report'", timeout=30)
    d.wait_log("FAILED send 'docs/readme'", timeout=30)
    assert (root / "report/foreign.txt").exists() and (root / "docs").is_file()
    assert d.stop() == 0
    shutil.rmtree(root / "report")  # cleared on the target while the daemon was stopped
    (root / "docs").unlink()
    env.start()  # the start-up scan tries them again
    env.converge()
    assert env.remote()[b"report"] == b"the source's report"


def test_folder_holding_source_files_is_never_removed(env):
    for i in range(5):
        w(env.src / f"busy/{i}.txt", f"{i}")
    w(env.src / "nested/keep.txt", "keep")
    mkdir(env.src / "nested/inner/empty", 0o755)
    env.start()
    env.converge()
    shutil.rmtree(env.src / "busy")  # removed, and made again at once with a file in it
    w(env.src / "busy/back.txt", "back")
    shutil.rmtree(env.src / "nested/inner")  # a folder below one that keeps its file
    env.converge()
    got = remote_folders(env)
    assert b"busy" in got and env.remote()[b"busy/back.txt"] == b"back"
    assert b"nested" in got and env.remote()[b"nested/keep.txt"] == b"keep"


def test_max_delete_and_an_emptied_source_count_folders(mirror):
    env = mirror
    for i in range(5):
        mkdir(env.src / f"e{i}", 0o755)
    w(env.src / "keep.txt", "keep")
    d = env.start()
    env.converge()
    assert d.stop() == 0
    for i in range(5):
        os.rmdir(env.src / f"e{i}")
    text = env.cfg.read_text().replace("complete_sync = yes", "complete_sync = yes\nmax_delete = 3")
    env.cfg.write_text(text)
    d = env.start()
    d.wait_log("NOT deleting 0 file(s) and 5 folder(s)", timeout=30)
    assert "max_delete = 3" in d.log_text()
    assert {b"e0", b"e1", b"e2", b"e3", b"e4"} <= set(remote_folders(env))
    assert d.stop() == 0
    (env.src / "keep.txt").unlink()  # the source empty (an unmounted disk looks so): nothing goes
    env.cfg.write_text(text.replace("max_delete = 3", "max_delete = 100"))
    d = env.start()
    d.wait_log("the source folder is empty", timeout=30)
    assert {b"e0", b"e1", b"e2", b"e3", b"e4"} <= set(remote_folders(env))
    assert b"keep.txt" in env.remote()


# -- the pieces below the daemon: the folders table and the start-up scan's merge ----------


def test_the_index_records_folders_and_moves_and_forgets_them_with_their_files(tmp_path):
    from skynet.state.db import StateDB
    from skynet.state.index import Index

    index = Index(StateDB(str(tmp_path / "s.db")))
    for rel, mode in (("a", 0o755), ("a/b", 0o700), ("a.b", 0o711), ("ab", 0o750), ("a/b/c", 0o755)):
        index.put_folder(rel, mode)
    index.put_many([("a/b/f.txt", 1, 1, 0o644, 1, None)])
    # the scan's walk order: "a.b/" < "a/" < "a/b/" < "ab/" (a folder's key is its path and "/")
    assert [f.rel for f in index.iter_folders_under("")] == ["a.b", "a", "a/b", "a/b/c", "ab"]
    assert [f.rel for f in index.iter_folders_under("a")] == ["a/b", "a/b/c"]  # never "a" itself
    index.rename("a", "z")
    assert index.folder("a") is None and index.folder("z/b").mode == 0o700 and index.get("z/b/f.txt") is not None
    assert index.folder("a.b").mode == 0o711  # a sibling sharing the prefix stays
    index.remove("z/b")
    assert [f.rel for f in index.iter_folders_under("")] == ["a.b", "ab", "z"] and index.get("z/b/f.txt") is None


def test_the_start_up_scan_compares_folders_in_walk_order(tmp_path):
    """Folders and files whose names sort differently as paths and as folders ("a.b",
    "a", "a/x"): the merge meets each one once, so a scan queues exactly the new or
    changed folders, and deletes (with complete_sync) exactly those the disk lost."""
    from connections.local.con import LocalCon
    from skynet.engine.mapper import Mapper
    from skynet.engine.syncsnap import SyncSnap
    from skynet.state.db import StateDB
    from skynet.state.index import Index
    from skynet.state.uniqueq import DELETE, SEND, UniqueQ
    from skynet.watch.ignore import IgnoreRules

    src, dst = tmp_path / "src", tmp_path / "dst"
    for rel in ("a", "a/x", "a.b", "ab", "new", "moded"):
        mkdir(src / rel, 0o755)
    os.chmod(src / "moded", 0o700)
    w(src / "a/x/f.txt", "f")
    w(src / "a.txt", "t")
    dst.mkdir()
    db = StateDB(str(tmp_path / "s.db"))
    index, queue = Index(db), UniqueQ(db)
    index.put_many([("a/x/f.txt", 1, os.stat(src / "a/x/f.txt").st_mtime_ns, 0o644, 1, None)])
    for rel in ("a", "a/x", "a.b", "ab", "moded", "gone", "gone/deeper"):
        index.put_folder(rel, 0o755)
    snap = SyncSnap(Mapper(str(src), str(dst)), index, queue, IgnoreRules(), True, LocalCon(str(dst)))
    st = snap.run()
    rows = {(k, os.fsdecode(s)) for k, s in db.conn().execute("SELECT kind, src FROM queue").fetchall()}
    assert rows == {(SEND, "a.txt"), (SEND, "new"), (SEND, "moded"), (DELETE, "gone"), (DELETE, "gone/deeper")}, rows
    assert (st.folders, st.unchanged, st.deletes, st.folder_deletes) == (6, 1, 2, 2)
