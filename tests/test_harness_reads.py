"""The harness's own reads of the remote survive a test server that restarts.

The torture test stops and restarts the S3 and SFTP servers on purpose; the test's
look at the remote (Backend.fetch, Backend.leftovers) must then wait for the server
instead of failing the test, and a read that still fails must report its own error
and the server's state, never an error of the harness's making (issue 18, item 10:
`ConnectionClosedError`, then an `UnboundLocalError` from check_trial's `finally`).
"""
from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import asyncssh
import botocore.exceptions as bce
import pytest

import tests.harness as harness
from connections.contract.xcon import TransientError
from skynet.state.sqlitelib import sqlite3
from tests.backend_s3 import ROOT, s3_backend
from tests.backend_sftp import sftp_backend
from tests.backends import Backend
from tests.servers import Servers

LISTING = {b"a.txt": b"hello", b"d/b.bin": b"\x00\x01"}


def client_error(code: str, status: int) -> bce.ClientError:
    return bce.ClientError({"Error": {"Code": code, "Message": code},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


#: what a read of a restarting server raises: botocore's own errors (the harness's boto3
#: client), the connections' TransientError (S3Con, SFTPCon), asyncssh's and the socket's
TRANSIENT: dict[str, Callable[[], BaseException]] = {
    "s3 connection closed": lambda: bce.ConnectionClosedError(endpoint_url="http://127.0.0.1:1/b/k"),
    "s3 connection refused": lambda: bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b/k"),
    "s3 read timeout": lambda: bce.ReadTimeoutError(endpoint_url="http://127.0.0.1:1/b/k"),
    "s3 503": lambda: client_error("ServiceUnavailable", 503),
    "s3 500": lambda: client_error("InternalError", 500),
    "sftp EOF": lambda: EOFError(),
    "ssh session ended": lambda: asyncssh.ConnectionLost("Connection lost"),
    "sftp channel closed": lambda: asyncssh.SFTPConnectionLost("Connection lost"),
    "connection reset": lambda: ConnectionResetError(104, "Connection reset by peer"),
    "connection refused": lambda: ConnectionRefusedError(111, "Connection refused"),
    "XCon transient": lambda: TransientError("list: connection lost or timed out (EOFError: )"),
}


class Flaky:
    """A reader whose first `failures` calls raise (a fresh exception each), then return `value`."""

    def __init__(self, make_error: Callable[[], BaseException], failures: int, value=LISTING) -> None:
        self.make_error, self.failures, self.value = make_error, failures, value
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.make_error()
        return self.value


@pytest.fixture
def short_budget(monkeypatch):
    """A 1 s retry budget: a read that never succeeds fails fast in these tests."""
    monkeypatch.setattr(harness, "READ_BUDGET", 1.0, raising=False)


@pytest.mark.parametrize("kind", sorted(TRANSIENT))
def test_fetch_retries_transient_errors(kind):
    fetch = Flaky(TRANSIENT[kind], failures=3)
    backend = Backend(con=None, fetch=fetch, service="s3")
    assert backend.fetch() == LISTING
    assert fetch.calls == 4


@pytest.mark.parametrize("kind", ["sftp EOF", "ssh session ended", "XCon transient"])
def test_leftovers_retry_transient_errors(kind):
    leftovers = Flaky(TRANSIENT[kind], failures=2, value=[])
    backend = Backend(con=None, leftovers=leftovers, service="sftp")
    assert backend.leftovers() == []
    assert leftovers.calls == 3


@pytest.mark.parametrize("kind", ["s3 connection closed", "sftp EOF"])
def test_a_read_that_never_succeeds_raises_its_own_error_after_the_budget(kind, short_budget):
    fetch = Flaky(TRANSIENT[kind], failures=10**9)
    backend = Backend(con=None, fetch=fetch, service="s3")
    started = time.monotonic()
    with pytest.raises(type(TRANSIENT[kind]())) as info:
        backend.fetch()
    assert fetch.calls > 1, "not retried"
    assert time.monotonic() - started < 10  # bounded by the budget (1 s), not by a test timeout
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "transient, retried" in notes and "budget 1 s" in notes, notes


@pytest.mark.parametrize("refusal", [
    lambda: client_error("AccessDenied", 403),
    lambda: asyncssh.PermissionDenied("key refused"),
    lambda: asyncssh.HostKeyNotVerifiable("host key changed"),
], ids=["s3 access denied", "ssh key refused", "ssh host key"])
def test_a_read_that_fails_for_good_is_not_retried(refusal):
    """Access denied, a refused key: asking again would only delay the report."""
    fetch = Flaky(refusal, failures=10**9)
    backend = Backend(con=None, fetch=fetch, service="s3")
    with pytest.raises(Exception) as info:
        backend.fetch()
    assert fetch.calls == 1
    assert any("not transient" in n for n in info.value.__notes__)


def test_the_failure_report_names_the_server_state(short_budget):
    backend = Backend(con=None, fetch=Flaky(TRANSIENT["s3 connection closed"], failures=10**9), service="s3",
                      diagnose=lambda: "rclone serve s3 server: NOT running; log: bind: address already in use")
    with pytest.raises(bce.ConnectionClosedError) as info:
        backend.fetch()
    assert any("NOT running" in n and "address already in use" in n for n in info.value.__notes__)


def test_a_failing_diagnosis_does_not_hide_the_error(short_budget):
    def broken() -> str:
        raise OSError("log gone")

    backend = Backend(con=None, fetch=Flaky(TRANSIENT["sftp EOF"], failures=10**9), service="sftp", diagnose=broken)
    with pytest.raises(EOFError) as info:
        backend.fetch()
    assert any("no diagnosis: OSError: log gone" in n for n in info.value.__notes__)


# -- the torture test's check: its `finally` must not replace the error ---------------------
def stub_trial(tmp_path: Path, fetch: Callable[[], dict]) -> SimpleNamespace:
    """What check_trial uses of a Torture, around a backend whose fetch is `fetch`: a
    source tree, a daemon that is not asked for anything (the read fails first) and
    the daemon's state with its `failed` table."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"hello")
    (tmp_path / "state").mkdir()
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "t.db")) as db:
        db.execute("CREATE TABLE failed (kind TEXT, src TEXT, error TEXT)")
        db.commit()
    daemon = SimpleNamespace(proc=None, log_text=lambda: "", stop=lambda: 0)
    backend = Backend(con=None, fetch=fetch, service="s3")  # (its fetch is the harness's retrying read)
    return SimpleNamespace(backend=backend, daemon=daemon, src=tmp_path / "src", ops=0, big_writes=0, faults={},
                           evidence=lambda: {}, versions=False, mirror=backend.fetch, mirror_folders=dict,
                           wait_idle=lambda timeout: None)


def test_check_trial_reports_the_read_error_not_its_own(tmp_path, monkeypatch, short_budget):
    import tests.test_torture as torture

    monkeypatch.setattr(torture, "REPORT", tmp_path / "report.jsonl")
    t = stub_trial(tmp_path, Flaky(TRANSIENT["s3 connection closed"], failures=10**9))
    with pytest.raises(bce.ConnectionClosedError):
        torture.check_trial(t, tmp_path, 1.0, 7, time.monotonic())
    report = (tmp_path / "report.jsonl").read_text()
    assert '"error": "ConnectionClosedError: ' in report and '"seed": 7' in report, report


def test_check_trial_passes_once_the_server_answers_again(tmp_path, monkeypatch):
    import tests.test_torture as torture

    monkeypatch.setattr(torture, "REPORT", tmp_path / "report.jsonl")
    t = stub_trial(tmp_path, Flaky(TRANSIENT["s3 connection closed"], failures=2, value={b"a.txt": b"hello"}))
    result = torture.check_trial(t, tmp_path, 1.0, 7, time.monotonic())
    assert result["mismatches"] == 0 and result["read_retries"] == 2 and result["error"] is None


# -- the real servers, stopped and started again ---------------------------------------------
@pytest.fixture
def own_servers(tmp_path) -> Iterator[Servers]:
    """Servers for these tests alone (they stop and restart them)."""
    s = Servers(tmp_path / "servers")
    yield s
    s.close()


@pytest.fixture
def s3(tmp_path, own_servers) -> Iterator[tuple[Backend, object]]:
    with s3_backend(tmp_path, own_servers) as b:
        srv = own_servers.get("s3")
        for rel, data in LISTING.items():
            srv.client().put_object(Bucket=b.config["service"]["bucket"], Key=f"{ROOT}/{rel.decode()}", Body=data)
        yield b, srv


@pytest.fixture
def sftp(tmp_path, own_servers) -> Iterator[tuple[Backend, object]]:
    with sftp_backend(tmp_path, own_servers) as b:
        yield b, own_servers.get("sftp")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_s3_read_right_after_a_restart(s3, sig):
    backend, srv = s3
    assert backend.fetch() == LISTING  # the clients' pools now hold connections to this process
    srv.stop(sig)
    srv.start()
    assert backend.fetch() == LISTING
    assert backend.leftovers() == []


def read_while_down(backend: Backend, srv, read: Callable[[], object]) -> object:
    """Stop the server, read, and start the server again only once that read has failed
    and is being retried: the read must wait for the server and then succeed."""
    srv.stop(signal.SIGKILL)
    done = threading.Event()

    def start_after_first_failure() -> None:
        while not done.is_set():
            if getattr(backend, "read_retries", None):  # (old harness: no retries; left_running restarts)
                srv.start()
                return
            time.sleep(0.01)

    helper = threading.Thread(target=start_after_first_failure)
    helper.start()
    try:
        return read()
    finally:
        done.set()
        helper.join()


def test_s3_read_waits_for_a_server_that_is_down(s3):
    backend, srv = s3
    assert read_while_down(backend, srv, backend.fetch) == LISTING
    assert backend.read_retries, "the read never saw the server down"


def test_sftp_read_waits_for_a_server_that_is_down(sftp):
    backend, srv = sftp
    assert backend.leftovers() == []  # the connection's pool now holds a session to this sshd
    assert read_while_down(backend, srv, backend.leftovers) == []
    assert backend.read_retries, "the read never saw the server down"


# -- readiness: a restarted server is ready when it answers, not when its port accepts --------
def test_sshd_is_not_ready_while_its_port_only_accepts(tmp_path):
    """A listener that accepts and says nothing (a port bound, sshd not yet serving)."""
    from tests.server_sshd import wait_port

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        running = SimpleNamespace(poll=lambda: None)
        log = tmp_path / "sshd.log"
        log.write_text("")
        with pytest.raises(RuntimeError, match="did not"):
            wait_port(port, running, log, timeout=1.0)


def test_s3_server_answers_a_signed_request_as_soon_as_started(s3):
    """The first signed request after start() is answered at once (no retry)."""
    import boto3
    from botocore.config import Config

    backend, srv = s3
    srv.stop(signal.SIGKILL)
    srv.start()
    fresh = boto3.Session(aws_access_key_id=srv.access_key, aws_secret_access_key=srv.secret_key,
                          region_name=srv.region).client(
        "s3", endpoint_url=srv.endpoint_url,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))
    try:
        assert backend.config["service"]["bucket"] in {b["Name"] for b in fresh.list_buckets()["Buckets"]}
    finally:
        fresh.close()


# -- the local reader: a tree the daemon changes while the harness reads it -------------------
def test_tree_skips_a_file_that_became_a_folder(tmp_path, monkeypatch):
    """os.walk listed `x` as a file; by the time it is read the daemon has put a folder
    there (the local target, or the SFTP server's folder, changes under the reader)."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").write_bytes(b"y")
    root = os.fsencode(str(tmp_path))
    monkeypatch.setattr(harness.os, "walk", lambda top: iter([(root, [], [b"x", b"y"])]))
    assert harness.tree(tmp_path) == {b"y": b"y"}


@pytest.mark.timeout(20)
def test_tree_does_not_block_on_a_fifo(tmp_path):
    """A FIFO is not a file with content: reading it would wait for a writer for ever."""
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "y").write_bytes(b"y")
    os.symlink(tmp_path / "y", tmp_path / "link")
    assert harness.tree(tmp_path) == {b"y": b"y"}


# -- the harness's S3 client reads a 5xx as the ClientError it is ------------------------------
class _BusyS3(http.server.BaseHTTPRequestHandler):
    """Answers every request as rclone serve s3 answers a GET of a file being renamed:
    500 InternalError, with a checksum header as on its other answers."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = b"<?xml version='1.0'?><Error><Code>InternalError</Code><Message>busy</Message></Error>"
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-checksum-crc32", "AAAAAA==")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_harness_s3_client_reads_a_server_error_as_a_client_error(tmp_path):
    """botocore's default response checksum check wrapped the 500's body in a checksum
    reader and then failed to parse it (AttributeError): the fetch, which skips an
    object that errs, crashed instead."""
    from tests.server_s3 import S3Server

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BusyS3) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            srv = S3Server(f"http://127.0.0.1:{httpd.server_address[1]}", "skynettestkey", "skynettestsecret", tmp_path)
            with pytest.raises(bce.ClientError) as info:
                srv.client().get_object(Bucket="b", Key="root/a.txt")
            assert info.value.response["Error"]["Code"] == "InternalError"
            assert harness.is_transient(info.value)
        finally:
            httpd.shutdown()
