"""S3Con.read_whole_many (connections/s3/wholegets.py): many whole-object GETs from one
thread. Against the real S3 servers: every file read, held to the version listed, with the
entry read_whole() gives; what it cannot take on (missing, replaced, no ETag) handed back.
Against a scripted server (tests/scripted_http.py: fault injection): each odd reply gives back its own
file only, and the rest are still read."""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from connections.contract.xcon import END, RemoteEntry, TransferContext
from connections.s3.con import S3Con
from tests.backend_s3 import make_local
from tests.backends import BACKENDS, enabled_backends
from tests.scripted_http import Scripted, ok


@pytest.fixture(params=[n for n in enabled_backends() if n in ("s3", "seaweedfs")])
def s3(request, tmp_path, servers):
    with BACKENDS[request.param](tmp_path, servers) as b:
        yield b


def feeder(items: list) -> callable:
    """A take() handing over `items`, then END."""
    it = iter(items)

    def take(_block: bool):
        return next(it, END)
    return take


def test_many_small_files_are_read_each_held_to_its_version(s3, tmp_path):
    con = s3.con
    data = {f"d/f{i:02d}": os.urandom(100 + i) for i in range(40)}
    for rel, body in data.items():
        con.send(make_local(tmp_path / "seed", rel, body), TransferContext())
    listed = {e.rel: e for e in con.list("d")}
    con.send(make_local(tmp_path / "seed2", "d/f05", b"replaced after the listing"), TransferContext())
    con.delete("d/f07")
    items = [(rel, e) for rel, e in sorted(listed.items())]
    items.append(("no-etag", RemoteEntry("d/f08", listed["d/f08"].size)))
    got = {tag: (entry, body) for tag, entry, body in con.read_whole_many(feeder(items), 8, threading.Event())}
    assert set(got) == set(listed) | {"no-etag"}
    for rel in ("d/f05", "d/f07", "no-etag"):  # replaced, gone, nothing to hold it to: read_whole() says why
        assert got[rel] == (None, b""), rel
    for rel, (entry, body) in got.items():
        if rel in ("d/f05", "d/f07", "no-etag"):
            continue
        assert body == data[rel]
        whole_entry, whole_body = con.read_whole(rel, expect=listed[rel])
        assert entry == whole_entry and body == whole_body


def test_a_stop_ends_the_reads_without_taking_more(s3, tmp_path):
    con = s3.con
    for i in range(20):
        con.send(make_local(tmp_path / "seed", f"s{i:02d}", b"x" * 10), TransferContext())
    entries = sorted(con.list(""), key=lambda e: e.rel)
    stop = threading.Event()
    asked = []

    def take(_block: bool):
        if len(asked) == 5:
            stop.set()
        if len(asked) >= len(entries):
            return END
        asked.append(entries[len(asked)])
        return asked[-1].rel, asked[-1]

    got = list(con.read_whole_many(take, 2, stop))
    assert len(asked) <= 6 and {tag for tag, _e, _b in got} == {e.rel for e in asked}


def ok_object(body: bytes, *extra: str) -> bytes:
    """A GET's 200 with an object's ETag and our mtime metadata."""
    return ok(body, "".join(f"{h}\r\n" for h in ('ETag: "e"', "x-amz-meta-mtime: 1600000000", *extra)))


def test_odd_replies_give_back_their_own_file_only(tmp_path, monkeypatch):
    replies = {
        **{f"ok{i}": ok_object(b"body %d" % i) for i in range(10)},
        "closing": ok_object(b"then closed", "Connection: close"),
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"e\"\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "error": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        "garbage": b"this is no HTTP reply\r\n\r\n",
        "silent": "silent",
    }
    srv = Scripted(replies)
    try:
        con = S3Con(bucket="b", endpoint_url=f"http://127.0.0.1:{srv.port}", region="us-east-1",
                    addressing_style="path", access_key_id="k", secret_access_key="s")
        monkeypatch.setattr(con._http(), "timeout", 1.0)  # the silent one is given back after a second
        keys = ["closing", "chunked", "error", "garbage", "silent"] + [f"ok{i}" for i in range(10)]
        items = [(k, RemoteEntry(k, 1, None, None, "e")) for k in keys]
        got = {tag: (entry, body) for tag, entry, body in con.read_whole_many(feeder(items), 3, threading.Event())}
    finally:
        srv.close()
    assert set(got) == set(keys)
    assert got["closing"][1] == b"then closed" and got["closing"][0].mtime_ns == 1_600_000_000 * 10**9
    for k in ("chunked", "error", "garbage", "silent"):
        assert got[k] == (None, b""), k
    for i in range(10):
        assert got[f"ok{i}"][1] == b"body %d" % i


@pytest.fixture
def tls_s3(tmp_path, monkeypatch):
    """`rclone serve s3` over TLS on 127.0.0.1, its certificate self-signed for that address
    and trusted through AWS_CA_BUNDLE (as a user with a private CA would)."""
    import datetime
    import ipaddress
    import secrets
    import subprocess

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tests.server_s3 import _stop, rclone_binary
    from tests.servers import start_on_free_port

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_file, 0o600)
    data = tmp_path / "data"
    (data / "tls").mkdir(parents=True)
    ak, sk = f"skynettest{secrets.token_hex(4)}", f"skynetsecret{secrets.token_hex(16)}"

    def start(port: int):
        proc = subprocess.Popen([rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key",
                                 f"{ak},{sk}", "--cert", str(cert_file), "--key", str(key_file), "--config",
                                 os.devnull, str(data)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    _stop(proc)
                    raise RuntimeError("rclone serve s3 with TLS did not start") from None
                time.sleep(0.1)

    proc, port = start_on_free_port(start, "rclone serve s3 (TLS)")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert_file))
    try:
        yield S3Con(bucket="tls", endpoint_url=f"https://127.0.0.1:{port}", region="us-east-1",
                    addressing_style="path", access_key_id=ak, secret_access_key=sk)
    finally:
        _stop(proc)


def test_many_reads_over_tls(tls_s3, tmp_path):
    """The same reads over TLS: records a select() saw as readable may hold several replies'
    bytes, which the TLS socket has decrypted and holds back (pending)."""
    con = tls_s3
    con.connect()
    data = {f"t{i:02d}": os.urandom(20_000 + i) for i in range(24)}  # each reply several TLS records
    for rel, body in data.items():
        con.send(make_local(tmp_path / "seed", rel, body), TransferContext())
    items = [(e.rel, e) for e in con.list("")]
    got = {tag: body for tag, entry, body in con.read_whole_many(feeder(items), 6, threading.Event())}
    assert got == data
