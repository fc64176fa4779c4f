"""Large uploads survive the daemon dying mid-way: after kill -9 (or a SIGTERM
that checkpoints), the restarted daemon sends only what was not sent yet, and
the remote file's bytes match. A file changed in between starts over.

Runs on the backends that resume (S3 multipart, SFTP temp-file append). A
bandwidth limit slows the upload down so the kill lands in its middle.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from connections.local.con import TMP_PREFIX
from tests.backends import BACKENDS, enabled_backends
from tests.harness import Daemon, wait_converged, write_config

SIZE = 200 * 1024**2
RESUMABLE = [b for b in enabled_backends() if b in ("s3", "sftp")]


@pytest.fixture(params=RESUMABLE)
def backend(request, tmp_path, servers):
    with BACKENDS[request.param](tmp_path, servers) as b:
        yield b


def setup(tmp_path, backend, rate="20M", size=SIZE):
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    with open(big, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
    mapping = dict(backend.config.get("mapping", {}), source=str(src), complete_sync="yes")
    service = dict(backend.config.get("service", {}))
    if backend.service == "s3":
        service.update(multipart_threshold="16MiB", part_size="8MiB")
    cfg = write_config(tmp_path / "c.ini", backend.service, {"t": mapping}, tmp_path / "state", service,
                       extra={"bwlimit": rate, "stop_timeout": "2"})
    return src, big, cfg


def sent_bytes(log: str, name: str) -> int:
    return sum(int(n) for n in re.findall(rf"done send '{re.escape(name)}': 1 uploaded \((\d+) bytes\)", log))


def wait_started(d: Daemon, backend, fraction: float, size: int = SIZE) -> int:
    """Until the daemon's status shows the upload `fraction` done; returns the
    bytes done. Every backend reports the progress of each part as it goes
    (SFTP's parallel parts too), so the status is what times the kill."""
    import json

    deadline = time.monotonic() + 60
    status = d.config.parent / "state" / "status.json"
    while time.monotonic() < deadline:
        try:
            doc = json.loads(status.read_text())
            for u in doc.get("in_flight", []):
                if u["path"] == "big.bin" and u["done"] >= fraction * size:
                    return u["done"]
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("the upload did not get going:\n" + d.log_text()[-2000:])


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_interrupted_upload_resumes_with_the_remainder_only(tmp_path, backend, how):
    src, big, cfg = setup(tmp_path, backend)
    d = Daemon(cfg, backend.service).start()
    done_before = wait_started(d, backend, 0.25)
    if how == "kill -9":
        d.kill9()
    else:
        t0 = time.monotonic()
        assert d.stop(timeout=30) == 0
        assert time.monotonic() - t0 < 15, "SIGTERM must checkpoint within stop_timeout"
    first = sent_bytes(d.log_text(), "big.bin")
    assert first == 0  # it did not finish
    d2 = Daemon(cfg, backend.service, log=d.log).start()
    # full speed now
    wait_converged(src, backend.fetch, exact=True, timeout=180, daemon=d2)
    d2.wait_log("done send 'big.bin'", timeout=30)
    again = sent_bytes(d2.log_text(), "big.bin")
    print(f"{backend.service} {how}: second run sent {again / 2**20:.0f} MiB of {SIZE / 2**20:.0f} MiB")
    # Only the remainder travels again: what was done before the interruption
    # is kept, give or take the parts that were in flight (S3: 8 MiB parts;
    # SFTP: 16 MiB parts over 2 connections).
    slack = 40 * 2**20
    assert 0 < again <= SIZE - done_before + slack and again < SIZE, (
        f"sent {again} bytes again after {done_before} were done")
    got = backend.fetch()[b"big.bin"]
    assert hashlib.sha256(got).digest() == hashlib.sha256(big.read_bytes()).digest()
    assert d2.stop() == 0
    assert backend.leftovers() == []


def test_file_changed_while_stopped_starts_over(tmp_path, backend):
    src, big, cfg = setup(tmp_path, backend)
    d = Daemon(cfg, backend.service).start()
    wait_started(d, backend, 0.3)
    d.kill9()
    with open(big, "r+b") as f:  # a new version: the old partial upload is useless
        f.seek(1000)
        f.write(os.urandom(4096))
    d2 = Daemon(cfg, backend.service, log=d.log).start()
    wait_converged(src, backend.fetch, exact=True, timeout=180, daemon=d2)
    d2.wait_log("done send 'big.bin'", timeout=30)
    assert sent_bytes(d2.log_text(), "big.bin") == SIZE  # all of it again
    assert d2.stop() == 0
    assert backend.leftovers() == []  # the old multipart upload / temp file is gone


def test_partial_upload_of_a_file_deleted_while_stopped_is_removed(tmp_path, backend):
    """The file of an interrupted upload is deleted while the daemon is down: its
    replayed send finds nothing to send, and must not leave the half-done upload
    (S3 multipart upload, SFTP temp file) on the remote for ever. Its resume state
    used to keep it safe from every later start-up cleanup."""
    small = 40 * 1024**2  # still resumable (S3: 5 parts; SFTP: over 8 MiB), quicker to set up
    src, big, cfg = setup(tmp_path, backend, size=small)
    d = Daemon(cfg, backend.service).start()
    wait_started(d, backend, 0.3, size=small)
    d.kill9()
    assert backend.leftovers() != []  # the half-done upload this is about
    big.unlink()
    (src / "small.txt").write_text("something to converge on")
    d2 = Daemon(cfg, backend.service, log=d.log).start()
    wait_converged(src, backend.fetch, exact=True, timeout=60, daemon=d2)
    d2.wait_log("done send 'big.bin'", timeout=30)  # the replayed send ran
    assert d2.stop() == 0
    assert backend.leftovers() == []


def plant_leftover(backend) -> None:
    """What a kill -9 in the middle of a send can leave with no resume state naming
    it: an open multipart upload (S3), a temporary file (SFTP)."""
    if backend.service == "s3":
        backend.con.client.create_multipart_upload(Bucket=backend.con.bucket, Key=backend.con._key("orphan.bin"))
    else:  # the test sshd serves this machine's files: the remote folder is a local one
        Path(backend.config["mapping"]["target"], TMP_PREFIX + "orphan").write_bytes(b"half a file")
    assert backend.leftovers() != []


def test_started_while_the_remote_is_away_still_cleans_up_earlier_runs(tmp_path, backend):
    """Start-up cleanup used to run only if the remote answered at start-up: a
    daemon restarted during an outage left the partial uploads of its previous
    run behind for as long as it ran. Now it cleans up when the remote is back."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("sent once the remote is back")
    mapping = dict(backend.config.get("mapping", {}), source=str(src), complete_sync="yes")
    cfg = write_config(tmp_path / "c.ini", backend.service, {"t": mapping}, tmp_path / "state",
                       backend.config.get("service"), extra={"backoff_cap": "1"})
    plant_leftover(backend)
    begin, finish = backend.faults["network cut"]
    begin()
    try:
        d = Daemon(cfg, backend.service).start()
        d.wait_log("pausing", timeout=30)
    finally:
        finish()
    wait_converged(src, backend.fetch, exact=True, timeout=60, daemon=d)  # the workers resume after the cleanup
    assert backend.leftovers() == []
    assert d.stop() == 0
