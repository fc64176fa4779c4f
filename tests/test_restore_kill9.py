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
