"""The one test suite every connection must pass (rclone's backend contract idea).

Only the XCon interface is used here, so a connection that passes behaves the
way the handler expects, whatever the storage behind it.
"""
from __future__ import annotations

import os
import threading

import pytest

from connections.base import (
    LocalFile,
    RemoteNotFound,
    TransferContext,
    UnsafePath,
    check_rel,
)
from tests.backends import BACKENDS, enabled_backends


@pytest.fixture(params=enabled_backends())
def backend(request, tmp_path, servers):
    with BACKENDS[request.param](tmp_path, servers) as b:
        yield b


def make_file(tmp_path, rel: str, data: bytes, mode: int = 0o640, mtime_ns: int = 1_600_000_000_123_456_789):
    path = tmp_path / "src" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    st = os.stat(path)
    return LocalFile(str(path), rel, st.st_size, st.st_mtime_ns, mode, st.st_ino, st.st_uid, st.st_gid)


def send(backend, tmp_path, rel, data, **kw):
    f = make_file(tmp_path, rel, data, **kw)
    return backend.con.send(f, TransferContext())


def listing(backend, rel=""):
    return {e.rel: e for e in backend.con.list(rel)}


def test_send_then_stat_keeps_size_mtime_mode(backend, tmp_path):
    res = send(backend, tmp_path, "a/b/c.txt", b"hello", mode=0o640)
    assert res.size == 5
    e = backend.con.stat("a/b/c.txt")
    assert e is not None and e.size == 5
    prec = backend.con.abilities.mtime_precision_ns
    assert e.mtime_ns is not None and e.mtime_ns // prec == 1_600_000_000_123_456_789 // prec
    if backend.con.abilities.mode:
        assert e.mode == 0o640
    assert backend.leftovers() == []


def test_send_replaces_existing(backend, tmp_path):
    send(backend, tmp_path, "x", b"one")
    send(backend, tmp_path, "x", b"second version")
    assert backend.con.stat("x").size == len(b"second version")
    assert list(listing(backend)) == ["x"]


def test_send_empty_file(backend, tmp_path):
    send(backend, tmp_path, "empty", b"")
    assert backend.con.stat("empty").size == 0


def test_send_progress_reports_total(backend, tmp_path):
    seen = []
    f = make_file(tmp_path, "big.bin", os.urandom(3 << 20))
    backend.con.send(f, TransferContext(progress=lambda d, t: seen.append((d, t))))
    assert seen and seen[-1] == (3 << 20, 3 << 20)


def test_send_missing_local_file_raises_filenotfound(backend, tmp_path):
    f = make_file(tmp_path, "gone", b"x")
    os.unlink(f.path)
    with pytest.raises(FileNotFoundError):
        backend.con.send(f, TransferContext())
    assert backend.con.stat("gone") is None
    assert backend.leftovers() == []


def test_stat_missing_is_none(backend):
    assert backend.con.stat("nope/never") is None


def test_list_is_recursive_and_relative(backend, tmp_path):
    for rel in ("a", "d/b", "d/e/c"):
        send(backend, tmp_path, rel, rel.encode())
    assert set(listing(backend)) == {"a", "d/b", "d/e/c"}
    assert set(listing(backend, "d")) == {"d/b", "d/e/c"}


def test_delete_file_only_that_file(backend, tmp_path):
    for rel in ("foo", "foo.bak", "foo2/x", "foo/x"):
        send(backend, tmp_path, rel.replace("foo/x", "foo_dir/x"), b"1")
    backend.con.delete("foo")
    assert set(listing(backend)) == {"foo.bak", "foo2/x", "foo_dir/x"}
    backend.con.delete("foo")  # missing: not an error


def test_delete_folder_respects_prefix_boundary(backend, tmp_path):
    for rel in ("dir/a", "dir/sub/b", "dir2/c", "dir.bak", "dirx/d"):
        send(backend, tmp_path, rel, b"1")
    backend.con.delete("dir")
    assert set(listing(backend)) == {"dir2/c", "dir.bak", "dirx/d"}


def test_move_file_and_replace(backend, tmp_path):
    send(backend, tmp_path, "m/src.txt", b"moved")
    send(backend, tmp_path, "dest.txt", b"old")
    backend.con.move("m/src.txt", "n/dest.txt")
    backend.con.move("n/dest.txt", "dest.txt")
    assert set(listing(backend)) == {"dest.txt"}
    assert backend.con.stat("dest.txt").size == 5


def test_move_folder_moves_everything_under_it(backend, tmp_path):
    for i in range(5):
        send(backend, tmp_path, f"old/sub{i % 2}/f{i}", b"z" * i)
    send(backend, tmp_path, "old2/keep", b"k")
    backend.con.move("old", "new")
    got = listing(backend)
    assert set(got) == {f"new/sub{i % 2}/f{i}" for i in range(5)} | {"old2/keep"}


def test_move_missing_source_raises(backend):
    with pytest.raises(RemoteNotFound):
        backend.con.move("not-there", "x")


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a/../../b", "", "a//b", "./a"])
def test_paths_outside_root_refused(backend, tmp_path, bad):
    with pytest.raises(UnsafePath):
        check_rel(bad)
    if bad:
        with pytest.raises(UnsafePath):
            backend.con.delete(bad)
        with pytest.raises(UnsafePath):
            backend.con.move(bad, "x")


def test_odd_names_arrive_intact(backend, tmp_path):
    names = ["with space", "quote's \"double\"", "$(touch pwned)", "uni-çé日本", "semi;colon&amp"]
    for n in names:
        send(backend, tmp_path, f"odd/{n}", n.encode())
    assert set(listing(backend, "odd")) == {f"odd/{n}" for n in names}
    assert not os.path.exists("pwned")


def test_parallel_sends_from_threads(backend, tmp_path):
    files = [make_file(tmp_path, f"p/{i}", os.urandom(1000 + i)) for i in range(24)]
    errors = []

    def run(chunk):
        try:
            for f in chunk:
                backend.con.send(f, TransferContext())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(files[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = listing(backend, "p")
    assert {k: v.size for k, v in got.items()} == {f"p/{i}": 1000 + i for i in range(24)}


def test_send_many_sends_each_file_and_reports_each_failure_alone(backend, tmp_path):
    """send_many (batched by LocalCon, one send() after another elsewhere): every
    file arrives with its mtime and mode, names repeat across folders, and a file
    that vanished fails alone."""
    files = [make_file(tmp_path, f"m/{d}/same-{i}.txt", f"{d}-{i}".encode() * 30, mode=0o600 + d,
                       mtime_ns=1_600_000_000_000_000_000 + i) for d in range(3) for i in range(6)]
    odd = make_file(tmp_path, "m/-dash\nnew line $(x)", b"odd")
    gone = make_file(tmp_path, "m/gone.txt", b"soon gone")
    os.unlink(gone.path)
    batch = files + [odd, gone]
    results = backend.con.send_many(batch, threading.Event())
    assert len(results) == len(batch)
    assert isinstance(results[-1], FileNotFoundError)
    assert all(not isinstance(r, Exception) and r.size == f.size for f, r in zip(batch[:-1], results[:-1]))
    got = listing(backend, "m")
    prec = backend.con.abilities.mtime_precision_ns
    for f in files + [odd]:
        e = backend.con.stat(f.rel)
        assert e is not None and e.size == f.size and e.mtime_ns // prec == f.mtime_ns // prec
        if backend.con.abilities.mode:
            assert e.mode == f.mode
    assert "m/gone.txt" not in got
    assert backend.leftovers() == []
