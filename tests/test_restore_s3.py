"""Restore from S3 without versions (the current-only store): a listing carries no user
metadata, so each small file's mtime and mode come with its bytes in ONE GET
(S3Con.read_whole), not a HEAD and a GET; a file that may be finished in DIR is HEADed
first, and skipped without a GET when it is."""
from __future__ import annotations

import os
import stat
import time

import pytest

from connections.contract.xcon import LocalFile, RemoteChanged, RemoteEntry, TransferContext
from skynet.versions.current import CurrentStore
from skynet.versions.restore import Options, restore
from tests.backends import BACKENDS
from tests.backend_s3 import make_local


@pytest.fixture
def s3(tmp_path, servers):
    with BACKENDS["s3"](tmp_path, servers) as b:
        yield b


def counted(con, name: str, calls: list[str]) -> None:
    """Count the connection's calls of `name` (a test's own wrapper on this one instance)."""
    inner = getattr(con, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return inner(*args, **kwargs)
    setattr(con, name, wrapper)


def test_small_files_come_with_their_metadata_in_one_get(s3, tmp_path):
    con = s3.con
    files = {f"f{i}.txt": os.urandom(500 + i) for i in range(5)}
    for i, (rel, data) in enumerate(files.items()):
        path = tmp_path / "seed" / rel
        make_local(tmp_path / "seed", rel, data)
        os.chmod(path, 0o640)
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
        st = path.stat()
        con.send(LocalFile(str(path), rel, st.st_size, st.st_mtime_ns, 0o640, st.st_ino), TransferContext())
    calls: list[str] = []
    for name in ("stat", "read_range", "read_whole"):
        counted(con, name, calls)
    now = time.time_ns()
    out = tmp_path / "out"
    summary = restore(CurrentStore(con, now), Options(str(out), now))
    assert summary.files == 5 and summary.failed == 0
    assert sorted(calls) == ["read_whole"] * 5  # no HEAD, no second read
    for i, (rel, data) in enumerate(files.items()):
        st = os.stat(out / rel)
        assert (out / rel).read_bytes() == data and stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_mtime_ns == 1_600_000_000_000_000_000 + i
    calls.clear()
    summary = restore(CurrentStore(con, now), Options(str(out), now))
    assert summary.skipped == 5 and sorted(calls) == ["stat"] * 5  # finished: a HEAD each, no GET


def test_read_whole_is_held_to_the_version_listed(s3, tmp_path):
    con = s3.con
    con.send(make_local(tmp_path / "seed", "x", b"one"), TransferContext())
    entry = con.stat("x")
    got, data = con.read_whole("x", expect=entry)
    assert data == b"one" and (got.size, got.etag, got.mtime_ns, got.mode) == (entry.size, entry.etag, entry.mtime_ns, entry.mode)
    con.send(make_local(tmp_path / "seed2", "x", b"two!"), TransferContext())
    with pytest.raises(RemoteChanged):
        con.read_whole("x", expect=entry)
    with pytest.raises(RemoteChanged):
        con.read_whole("x", expect=RemoteEntry("x", 3))  # no ETag to hold it to
