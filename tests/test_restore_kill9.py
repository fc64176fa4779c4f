"""kill -9 during a 200 MiB restore, then the same command: it fetches no finished
chunk and no finished file again (skynet/versions/restore.py over
skynet/transfer/fetch.py), on a local target, SFTP and S3 (a mirror without
versions: the current-only store). A bandwidth limit slows the restore down so
the kill lands in its middle; the part file's resume state times the kill."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skynet.transfer.chunks import Plan
from skynet.transfer.fetch import CHUNK, CONCURRENCY, part_paths
from tests.backends import BACKENDS, enabled_backends
from tests.harness import REPO, write_config

SIZE = 200 * 1024**2
SMALL = {f"small/{i:02d}.txt": os.urandom(10_000) for i in range(30)}
_CHUNK_LINE = re.compile(r"fetched chunk (\d+) of (\S+) \((\d+) bytes at (\d+)\)")


@pytest.fixture(params=[b for b in enabled_backends() if b in ("local", "sftp", "s3")])
def backend(request, tmp_path, servers):
    with BACKENDS[request.param](tmp_path, servers) as b:
        yield b


def restore_cmd(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, str(REPO / "main.py"), "restore", "--config-file", str(cfg), "--to", str(out), "-v"]


def chunks_fetched(stderr: str) -> list[tuple[str, int, int]]:
    """(file, chunk, bytes) of every chunk the restore read, from its -v lines."""
    return [(m.group(2), int(m.group(1)), int(m.group(3))) for m in _CHUNK_LINE.finditer(stderr)]


def wait_chunks(state: Path, proc: subprocess.Popen, count: int) -> set[int]:
    """Until the part file's resume state lists `count` finished chunks (the restore is then mid-way)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the restore ended before it could be killed"
        try:
            done = set(json.loads(state.read_text())["done"])
        except (OSError, ValueError, KeyError):
            done = set()
        if len(done) >= count:
            return done
        time.sleep(0.05)
    raise AssertionError("the restore did not get going")


def test_kill9_mid_restore_then_the_same_command_fetches_only_the_rest(tmp_path, backend):
    big = os.urandom(SIZE)
    backend.seed({"big.bin": big, **SMALL})
    mapping = dict(backend.config.get("mapping", {}), source=str(tmp_path / "src"))
    (tmp_path / "src").mkdir()
    cfg = write_config(tmp_path / "c.ini", backend.service, {"t": mapping}, tmp_path / "state",
                       dict(backend.config.get("service", {})), extra={"bwlimit": "40M"})
    out = tmp_path / "out"
    state = Path(part_paths(str(out / "big.bin"))[1])
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(restore_cmd(cfg, out), cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_chunks(state, first, 3)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
    done = set(json.loads(state.read_text())["done"])  # what the killed run had finished, for sure
    landed = {p.relative_to(out).as_posix() for p in (out / "small").glob("*.txt")} if (out / "small").exists() else set()
    assert not (out / "big.bin").exists()  # nothing half-written under the file's own name

    again = subprocess.run(restore_cmd(cfg, out), cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "big.bin").read_bytes() == big
    for rel, data in SMALL.items():
        assert (out / rel).read_bytes() == data
    fetched = chunks_fetched(again.stderr)
    big_chunks = {n for f, n, _b in fetched if f == "big.bin"}
    assert not big_chunks & done, "a finished chunk was fetched again"
    plan = Plan(SIZE, CHUNK, CONCURRENCY)
    remainder = SIZE - plan.bytes_in(done)
    big_bytes = sum(b for f, _n, b in fetched if f == "big.bin")
    assert big_bytes == remainder < SIZE  # exactly what the state did not list
    assert not {f for f, _n, _b in fetched} & landed, "a finished small file was fetched again"
    assert f"{len(landed)} skipped" in again.stdout
    print(f"{backend.service}: killed with {len(done)} of {plan.count} chunks done; the second run fetched "
          f"{big_bytes / 2**20:.0f} MiB of the big file (remainder {remainder / 2**20:.0f} MiB), "
          f"skipped {len(landed)} finished files")


@pytest.fixture(params=[b for b in enabled_backends() if b == "s3"])
def md5_backend(request, tmp_path, servers):
    """rclone serve s3 with the objects written into its folder: each ETag is the plain MD5."""
    with BACKENDS[request.param](tmp_path, servers) as b:
        yield b


def test_kill9_then_a_kept_chunk_spoilt_on_disk_fails_the_md5_and_the_next_run_starts_over(tmp_path, md5_backend):
    """The MD5 is taken beside the download (fetch.py _FollowingMD5) and cannot be kept
    across a kill: the resumed run hashes the kept chunks from the part file. One of them
    spoilt after the kill fails the check (nothing lands, exit 1), and the run after that
    fetches the file afresh and lands it."""
    size = 5 * CHUNK
    big = os.urandom(size)
    md5_backend.seed({"big.bin": big})
    mapping = dict(md5_backend.config.get("mapping", {}), source=str(tmp_path / "src"))
    (tmp_path / "src").mkdir()
    cfg = write_config(tmp_path / "c.ini", md5_backend.service, {"t": mapping}, tmp_path / "state",
                       dict(md5_backend.config.get("service", {})), extra={"bwlimit": "40M"})
    out = tmp_path / "out"
    part, state = (Path(p) for p in part_paths(str(out / "big.bin")))
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(restore_cmd(cfg, out), cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
        try:
            done = wait_chunks(state, first, 1)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
    kept = min(json.loads(state.read_text())["done"])
    with open(part, "r+b") as fh:
        fh.seek(kept * CHUNK + 1000)
        fh.write(b"\0" * 16)

    second = subprocess.run(restore_cmd(cfg, out), cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stderr[-3000:]
    assert "MD5" in second.stderr and not (out / "big.bin").exists()
    assert kept not in {n for f, n, _b in chunks_fetched(second.stderr) if f == "big.bin"}  # it was resumed
    assert not part.exists() and not state.exists()  # bytes that failed the check are not resumed from

    third = subprocess.run(restore_cmd(cfg, out), cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (out / "big.bin").read_bytes() == big
    assert done and len({n for f, n, _b in chunks_fetched(third.stderr) if f == "big.bin"}) == 5
