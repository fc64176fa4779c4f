"""Restore from S3 without versions (the current-only store): a listing carries no user
metadata, so each small file's mtime and mode come with its bytes in ONE GET
(S3Con.read_whole, or read_whole_many: many from one thread), not a HEAD and a GET; a
file that may be finished in DIR is HEADed first, and skipped without a GET when it is."""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

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
    for name in ("stat", "read_range", "read_whole", "read_whole_many"):
        counted(con, name, calls)
    counted(con._http(), "get_head", calls)  # the head of each GET read_whole_many sends
    now = time.time_ns()
    out = tmp_path / "out"
    summary = restore(CurrentStore(con, now), Options(str(out), now))
    assert summary.files == 5 and summary.failed == 0
    # one GET each (read many at once from one thread), no HEAD, no second read
    assert sorted(calls) == ["get_head"] * 5 + ["read_whole_many"]
    for i, (rel, data) in enumerate(files.items()):
        st = os.stat(out / rel)
        assert (out / rel).read_bytes() == data and stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_mtime_ns == 1_600_000_000_000_000_000 + i
    calls.clear()
    summary = restore(CurrentStore(con, now), Options(str(out), now))
    assert summary.skipped == 5 and sorted(calls) == ["read_whole_many"] + ["stat"] * 5  # finished: a HEAD each, no GET


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


def test_small_files_read_many_at_once_stop_and_resume(s3, tmp_path):
    """Stopped half-way, the lane reading small files many at once leaves only whole files
    in DIR; the same restore again reads only the files not there yet (one GET each) and
    finds the others finished without a GET."""
    import threading

    con = s3.con
    files = {f"d{i % 3}/f{i:02d}": os.urandom(300 + i) for i in range(60)}
    for rel, data in files.items():
        con.send(make_local(tmp_path / "seed", rel, data), TransferContext())
    now = time.time_ns()
    out = tmp_path / "out"
    stop = threading.Event()
    landed = [0]

    def changed() -> None:
        landed[0] += 1
        if landed[0] >= 20:
            stop.set()
    first = restore(CurrentStore(con, now), Options(str(out), now, workers=4), stop=stop, on_change=changed)
    assert first.failed == 0 and 20 <= first.files < 60
    there = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert all((out / rel).read_bytes() == files[rel] for rel in there)  # whole files only, no part files
    calls: list[str] = []
    counted(con._http(), "get_head", calls)
    second = restore(CurrentStore(con, now), Options(str(out), now, workers=4))
    assert second.failed == 0 and second.files == 60 - len(there) and second.skipped == len(there)
    assert len(calls) == 60 - len(there)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_a_failing_lane_hands_its_files_to_the_pool(s3, tmp_path, monkeypatch):
    """Should reading many at once break (a bug), what it held and what comes after are
    restored one by one as before: nothing is lost, nothing counted failed."""
    con = s3.con
    files = {f"f{i:02d}": os.urandom(200 + i) for i in range(30)}
    for rel, data in files.items():
        con.send(make_local(tmp_path / "seed", rel, data), TransferContext())
    real = con.read_whole_many

    def breaks(take, width, stop):
        for n, got in enumerate(real(take, width, stop)):
            if n == 5:
                raise RuntimeError("a bug")
            yield got
    monkeypatch.setattr(con, "read_whole_many", breaks)
    now = time.time_ns()
    out = tmp_path / "out"
    summary = restore(CurrentStore(con, now), Options(str(out), now, workers=3))
    assert (summary.files, summary.failed) == (30, 0)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def cli_restore(s3, tmp_path, files: dict[str, bytes]) -> tuple[list[str], Path]:
    """`files` seeded on the server, a config of one mapping without versions (0600), and
    the `python main.py restore` command a user runs for it: (command, its --to folder)."""
    import sys

    from tests.harness import REPO, write_config

    s3.seed(files)
    mapping = dict(s3.config.get("mapping", {}), source=str(tmp_path / "src"))
    (tmp_path / "src").mkdir()
    cfg = write_config(tmp_path / "c.ini", s3.service, {"t": mapping}, tmp_path / "state",
                       dict(s3.config.get("service", {})))
    os.chmod(cfg, 0o600)
    out = tmp_path / "out"
    return [sys.executable, str(REPO / "main.py"), "restore", "--config-file", str(cfg), "--to", str(out)], out


def wait_landed(proc, folder, count: int) -> None:
    """Until `count` files are in `folder` (the restore `proc` is then mid-way), or it ended."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and len(os.listdir(folder)) >= count:
            return
        time.sleep(0.005)


def test_cli_restore_of_many_small_files_killed_then_run_again(s3, tmp_path):
    """`python main.py restore` from S3 without versions, as a user runs it: small files
    go through the lane that reads many at once. Killed with -9 while they land, it
    leaves only whole files under their own names (nothing half-written, no temporary
    name); the same command then restores the rest and skips what is there."""
    import signal
    import subprocess

    from tests.harness import REPO

    files = {f"many/{i:04d}.txt": os.urandom(1000 + i % 97) for i in range(3000)}
    cmd, out = cli_restore(s3, tmp_path, files)
    first = subprocess.Popen(cmd, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_landed(first, out / "many", 50)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    landed = os.listdir(out / "many")
    assert 50 <= len(landed) < len(files)  # killed mid-way
    assert all(name in {rel.split("/")[1] for rel in files} for name in landed), landed  # no temporary names
    assert all((out / "many" / name).read_bytes() == files[f"many/{name}"] for name in landed)
    again = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(landed):,} skipped" in again.stdout, again.stdout
    assert {f"many/{p.name}": p.read_bytes() for p in (out / "many").iterdir()} == files


def test_cli_restore_when_the_network_is_cut_mid_way_then_run_again(s3, tmp_path):
    """The network to the S3 server cut while the lane reads small files (the listing,
    one page, is done): the restore ends with exit 1, the files it could not read
    counted failed and nothing half-written left; with the network back, the same
    command restores the rest. Cut before it starts: one clear line, exit 1."""
    import subprocess

    from tests.harness import REPO

    files = {f"cut/{i:03d}.txt": os.urandom(500 + i % 89) for i in range(1000)}  # one listing page
    cmd, out = cli_restore(s3, tmp_path, files)
    cut, heal = s3.faults["network cut"]
    cut()
    try:
        res = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=120)
    finally:
        heal()
    err = res.stderr.strip()
    assert res.returncode == 1 and "Traceback" not in err and len(err.splitlines()) == 1, (res.returncode, err)
    assert "cannot be reached now" in err and "the same command resumes" in err, err
    assert not (out / "cut").exists()
    first = subprocess.Popen(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_landed(first, out / "cut", 50)
        cut()
        stdout, stderr = first.communicate(timeout=240)
    finally:
        heal()
        if first.poll() is None:
            first.kill()
    landed = os.listdir(out / "cut")
    assert first.returncode == 1 and 50 <= len(landed) < len(files), (first.returncode, len(landed), stderr[-2000:])
    assert f"{len(files) - len(landed):,} failed" in stdout, (stdout, stderr[-2000:])
    assert all((out / "cut" / name).read_bytes() == files[f"cut/{name}"] for name in landed)  # whole files only
    again = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {f"cut/{p.name}": p.read_bytes() for p in (out / "cut").iterdir()} == files


def test_a_full_disk_fails_the_small_files_and_leaves_nothing(s3, tmp_path, monkeypatch):
    """ENOSPC while the lane writes small files: each counted failed with the disk's own
    words, no file and no temporary name left in DIR; with room again, the same restore
    restores them all."""
    import errno

    con = s3.con
    files = {f"f{i:02d}": os.urandom(300 + i) for i in range(40)}
    for rel, data in files.items():
        con.send(make_local(tmp_path / "seed", rel, data), TransferContext())

    def full(*_args, **_kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "pwrite", full)
    now = time.time_ns()
    out = tmp_path / "out"
    first = restore(CurrentStore(con, now), Options(str(out), now, workers=4))
    assert (first.files, first.failed) == (0, 40) and "No space left on device" in first.errors[0]
    assert os.listdir(out) == []
    monkeypatch.undo()
    second = restore(CurrentStore(con, now), Options(str(out), now, workers=4))
    assert (second.files, second.failed) == (40, 0)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
