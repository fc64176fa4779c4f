"""A local target under a hostile or unlucky tree (issue 18, items 1, 3 and 5):

* special permission bits (setuid, setgid, sticky) never land on the target,
  by send(), by the batched cp path, nor end to end;
* a write error (full disk, I/O error, a NAS share gone stale) is a
  TransientError, and a full target pauses the mapping until there is room:
  the files then land, nothing is recorded as failed, no traceback;
* a target folder swapped for a link (after skynet once wrote into it) never
  leads a write, a delete or a move outside the root.
"""
from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import connections.local.con as local
from connections.contract.xcon import BatchSend, LocalFile, RemoteNotFound, TransferContext, TransientError
from connections.local.con import LocalCon
from tests.harness import Daemon, tree, wait_converged, write_config


def _file(src: Path, rel: str, data: bytes, mode: int = 0o644) -> LocalFile:
    p = src / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, mode)
    st = os.stat(p)
    return LocalFile(str(p), rel, st.st_size, st.st_mtime_ns, mode, st.st_ino)


def _mode(path: Path | str) -> int:
    return os.stat(path).st_mode & 0o7777


# -- item 1: special permission bits --------------------------------------------
SPECIAL = {"suid": (0o4755, 0o755), "sgid": (0o2755, 0o755), "sticky": (0o1644, 0o644), "all": (0o7777, 0o777)}


def test_send_never_applies_setuid_setgid_or_sticky(tmp_path):
    con = LocalCon(str(tmp_path / "dst"))
    os.makedirs(con.root)
    for name, (mode, want) in SPECIAL.items():
        con.send(_file(tmp_path / "src", f"bin/{name}", b"#!/bin/sh\n", mode), TransferContext())
        assert _mode(f"{con.root}/bin/{name}") == want, name


def test_send_many_never_applies_setuid_setgid_or_sticky(tmp_path, monkeypatch):
    """The batched path (one cp into a staging folder, then renames) too; a
    sticky source folder gives no sticky target folder."""
    runs: list[list[str]] = []
    real_run = subprocess.run
    monkeypatch.setattr(local.subprocess, "run", lambda argv, **kw: runs.append(argv) or real_run(argv, **kw))
    con = LocalCon(str(tmp_path / "dst"))
    os.makedirs(con.root)
    assert isinstance(con, BatchSend)
    src = tmp_path / "src"
    files = [_file(src, f"bin/{name}", b"#!/bin/sh\n", mode) for name, (mode, _) in SPECIAL.items()]
    files += [_file(src, f"shared/{i}", b"s") for i in range(3)]
    os.chmod(src / "shared", 0o1777)
    results = con.send_many(files, threading.Event())
    assert all(r.size == f.size for f, r in zip(files, results)), results
    assert len([a for a in runs if a[0].endswith("cp")]) == 1  # the batch path, not send() one by one
    for name, (_, want) in SPECIAL.items():
        assert _mode(f"{con.root}/bin/{name}") == want, name
    assert _mode(f"{con.root}/shared") & 0o7000 == 0
    assert con.leftovers() == []


def test_special_bits_end_to_end(tmp_path):
    """main.py, as a user runs it, root or not: the target holds 0755 files."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    dst.mkdir()
    for name, (mode, _) in SPECIAL.items():
        _file(src, f"bin/{name}", b"#!/bin/sh\n", mode)
    cfg = write_config(tmp_path / "skynet.ini", "local", {"t": {"source": str(src), "target": str(dst)}},
                       tmp_path / "state")
    with Daemon(cfg) as d:
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
    for name, (_, want) in SPECIAL.items():
        assert _mode(dst / "bin" / name) == want, name
    assert "Traceback" not in d.log_text()


# -- item 3: write errors ---------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE, errno.ENOTCONN])
@pytest.mark.parametrize("path", ["sendfile", "write"])
def test_a_write_error_on_the_target_is_transient(tmp_path, monkeypatch, code, path):
    """It used to be NameError (a static method calling self._error): an
    unexpected error, a traceback and a failure recorded for good."""
    con = LocalCon(str(tmp_path / "dst"))
    os.makedirs(con.root)
    f = _file(tmp_path / "src", "d/big", os.urandom(1 << 16))

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    if path == "write":  # the fallback where sendfile cannot be used
        monkeypatch.setattr(local.os, "sendfile", lambda *a: (_ for _ in ()).throw(OSError(errno.EINVAL, "no")))
        monkeypatch.setattr(local.os, "write", refuse)
    else:
        monkeypatch.setattr(local.os, "sendfile", refuse)
    with pytest.raises(TransientError):
        con.send(f, TransferContext())
    monkeypatch.undo()
    assert con.leftovers() == []  # the temp file went
    con.send(f, TransferContext())  # and the next try lands
    assert (Path(con.root) / "d" / "big").read_bytes() == Path(f.path).read_bytes()


def test_check_reports_a_full_target_until_there_is_room(tmp_path, monkeypatch):
    """The handler asks check() after a transient error: "full" pauses the
    mapping (and polls connect() with back-off) instead of retrying the file
    until it is recorded as failed."""
    con = LocalCon(str(tmp_path / "dst"))
    os.makedirs(con.root)
    f = _file(tmp_path / "src", "big", os.urandom(1 << 20))
    real_statvfs = os.statvfs
    free = {"bytes": 100 << 10}

    def statvfs(path):
        st = real_statvfs(path)
        return os.statvfs_result((4096, 4096, st.f_blocks, free["bytes"] // 4096, free["bytes"] // 4096,
                                  st.f_files, st.f_ffree, st.f_favail, st.f_flag, st.f_namemax))

    con.check()
    monkeypatch.setattr(local.os, "sendfile", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(TransientError, match="full"):
        con.send(f, TransferContext())
    monkeypatch.undo()
    monkeypatch.setattr(local.os, "statvfs", statvfs)
    with pytest.raises(TransientError, match="full"):
        con.check()
    with pytest.raises(TransientError, match="full"):
        con.connect()  # what the reconnect loop polls
    free["bytes"] = 64 << 20
    con.connect()
    free["bytes"] = 0
    con.check()  # room was found: forgotten until a write finds the target full again


def _mounted(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode == 0


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs (root only): a target that fills up for real."""
    if os.geteuid() != 0:
        pytest.skip("root only: mounts a small tmpfs as the target")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"root only: cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_target_pauses_and_the_files_land_once_there_is_room(tmp_path, small_tmpfs):
    """6 MiB of files onto a 2 MiB tmpfs: the daemon pauses (no file recorded
    as failed, no traceback); once the tmpfs is grown, every file lands."""
    src = tmp_path / "src"
    for i in range(24):  # 24 x 256 KiB: singles and batches of small files alike
        _file(src, f"d{i % 3}/{i}.bin", os.urandom(256 << 10))
    for i in range(40):
        _file(src, f"small/{i}.txt", os.urandom(4 << 10))
    cfg = write_config(tmp_path / "skynet.ini", "local", {"t": {"source": str(src), "target": str(small_tmpfs)}},
                       tmp_path / "state", extra={"backoff_cap": "1", "max_attempts": "2"})
    with Daemon(cfg) as d:
        deadline = time.monotonic() + 30
        while not any(w in d.log_text() for w in ("pausing", "FAILED")) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = d.log_text()
        assert "pausing" in log and "is full" in log and "FAILED" not in log, log[-4000:]
        assert d.proc.poll() is None
        r = subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        wait_converged(src, lambda: tree(small_tmpfs), exact=True, timeout=30, daemon=d)
        log = d.log_text()
    assert "FAILED" not in log and "Traceback" not in log, log[-4000:]
    assert _mounted(small_tmpfs)


# -- item 5: links planted in the target ------------------------------------------
@pytest.fixture
def planted(tmp_path):
    """A target where a/b/x was written, then a/b swapped for a link to a
    folder outside the root that holds a file of its own named x."""
    con = LocalCon(str(tmp_path / "dst"))
    os.makedirs(con.root)
    src = tmp_path / "src"
    con.send(_file(src, "a/b/x", b"ours"), TransferContext())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"theirs")
    b = Path(con.root) / "a" / "b"
    os.rename(b, tmp_path / "old-b")
    b.symlink_to(outside)
    return con, src, outside


def _outside_untouched(outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["x"] and (outside / "x").read_bytes() == b"theirs"


def test_a_send_through_a_folder_swapped_for_a_link_stays_in_the_root(planted):
    """The link is not skynet's (it makes none): it is removed itself, never
    what it points to, and a real folder made in its place (no file lost)."""
    con, src, outside = planted
    con.send(_file(src, "a/b/y", b"new"), TransferContext())
    _outside_untouched(outside)
    b = Path(con.root) / "a" / "b"
    assert not b.is_symlink() and (b / "y").read_bytes() == b"new"


def test_a_batch_through_a_folder_swapped_for_a_link_stays_in_the_root(planted):
    con, src, outside = planted
    files = [_file(src, f"a/b/y{i}", b"new%d" % i) for i in range(6)]
    results = con.send_many(files, threading.Event())
    assert all(r.size == f.size for f, r in zip(files, results)), results
    _outside_untouched(outside)
    b = Path(con.root) / "a" / "b"
    assert not b.is_symlink() and sorted(os.listdir(b)) == [f"y{i}" for i in range(6)]
    assert con.leftovers() == []


def test_delete_move_stat_and_list_never_go_through_a_planted_link(planted):
    con, src, outside = planted
    with pytest.raises(RemoteNotFound):  # an outside file is never pulled into the target
        con.move("a/b/x", "c/x")
    _outside_untouched(outside)
    con.delete("a/b/x")  # not ours to delete: what is beyond a link is not in the target
    con.discard("a/b/x", None)
    _outside_untouched(outside)
    assert con.stat("a/b/x") is None
    assert [e.rel for e in con.list("")] == [] and list(con.list("a/b")) == []
    con.send(_file(src, "c/y", b"ours"), TransferContext())
    con.move("c/y", "a/b/z")  # a move into it: the link is replaced by a real folder
    _outside_untouched(outside)
    assert (Path(con.root) / "a" / "b" / "z").read_bytes() == b"ours"


def test_deleting_a_folder_removes_a_link_in_it_not_what_it_points_to(planted):
    con, src, outside = planted
    (Path(con.root) / "a" / "b").unlink()
    (Path(con.root) / "a" / "b").mkdir()
    (Path(con.root) / "a" / "b" / "link").symlink_to(outside)
    (Path(con.root) / "a" / "file-link").symlink_to(outside / "x")
    con.delete("a/file-link")
    con.delete("a")
    _outside_untouched(outside)
    assert os.listdir(con.root) == []


def test_a_file_cp_left_cut_short_is_never_renamed_into_place(tmp_path, monkeypatch):
    """cp stopped by a full target leaves a staged file cut short: it used to
    be renamed into place and recorded as sent. Only a whole copy counts; the
    rest goes through send(), which reports the error."""
    real_run = subprocess.run

    def cp_cut_short(argv, **kw):
        done = real_run(argv, **kw)
        if "-t" not in argv:  # (cp --version)
            return done
        stage = argv[argv.index("-t") + 1]
        first = argv[argv.index("--") + 1]  # /proc/self/fd/N, staged as N: the file d/0
        os.truncate(f"{stage}/{os.path.basename(first)}", 1)  # what a write refused half-way leaves
        return subprocess.CompletedProcess(argv, 1)

    monkeypatch.setattr(local.subprocess, "run", cp_cut_short)
    con = LocalCon(str(tmp_path / "dst"))
    os.makedirs(con.root)
    files = [_file(tmp_path / "src", f"d/{i}", b"%d" % i * 1000) for i in range(5)]
    results = con.send_many(files, threading.Event())
    assert all(r.size == f.size for f, r in zip(files, results)), results
    assert tree(con.root) == {f"d/{i}".encode(): b"%d" % i * 1000 for i in range(5)}


def test_a_link_planted_under_a_staging_folders_name_is_unlinked_at_cleanup(tmp_path):
    con = LocalCon(str(tmp_path / "dst"))
    os.makedirs(con.root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"theirs")
    (Path(con.root) / f"{local.STAGE_PREFIX}999-0").symlink_to(outside)
    con.cleanup([])
    _outside_untouched(outside)
    assert os.listdir(con.root) == []
