"""The gateway's direct landing (skynet/gateway/app.py, _direct): a whole small file in its
creation request goes from memory into the local destination, with no staged file, record
or ack line, and keeps the tus semantics of the staged way. `python main.py serve` as a
subprocess on 127.0.0.1, driven with requests and a raw socket."""
from __future__ import annotations

import hashlib
import os
import random
import socket

import pytest

from tests.gateway_helpers import OCTETS, MiB, Gateway, b64, md5_header, records, staged, wait_for, write_config

DIRECT = "landed from the request"  # the DEBUG line of a direct landing


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def one_local(tmp_path):
    """(config path, token, root) for a gateway landing in one local folder."""
    root = tmp_path / "dest"
    root.mkdir()
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"a": {"service": "local", "root": str(root)}}, max_uploads_in_flight="1")
    return cfg, token, root


def _visible(root) -> list[str]:
    """Every name under the destination root, skynet's own included."""
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files)


def test_whole_body_creation_lands_from_the_request(one_local, tmp_path):
    """The file lands byte for byte, from the request (its DEBUG line), with nothing ever on
    the gateway's disk; the answer has the Location, the full offset and the ETag of the
    md5 the client gave; HEAD on the Location reports every byte; it cannot be terminated."""
    cfg, token, root = one_local
    data = _rand(MiB + 11, 1)
    with Gateway(cfg, token) as gw:
        r = gw.create("docs/a.bin", len(data), body=data, md5=hashlib.md5(data).hexdigest())
        assert r.status_code == 201, r.text
        assert r.headers["Upload-Offset"] == str(len(data)) and r.headers["Skynet-Landed"] == "a"
        assert r.headers["Skynet-Pending"] == "" and r.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
        assert r.headers["Upload-Expires"].endswith("GMT")
        assert gw.log_text().count(DIRECT) == 1
        assert (root / "docs" / "a.bin").read_bytes() == data and _visible(root) == ["docs", "docs/a.bin"]
        assert oct((root / "docs" / "a.bin").stat().st_mode & 0o777) == oct(0o644)
        assert staged(tmp_path / "state") == [] and records(tmp_path / "state") == []
        url = gw.location(r)
        head = gw.head(url)
        assert head.status_code == 200 and head.headers["Upload-Offset"] == str(len(data))
        assert head.headers["Upload-Length"] == str(len(data))
        import requests

        assert requests.delete(url, headers=gw.auth, timeout=30).status_code == 403
        assert gw.get("docs/a.bin").content == data
        # max_uploads_in_flight = 1: a direct upload leaves the count when it is done
        r = gw.create("docs/b.bin", 5, body=b"hello", headers={"Upload-Checksum": md5_header(b"hello")})
        assert r.status_code == 201 and gw.log_text().count(DIRECT) == 2 and "ETag" not in r.headers


@pytest.mark.parametrize("how", ["chunk checksum", "md5 metadata"])
def test_checksum_mismatch_refused_with_nothing_visible(one_local, tmp_path, how):
    """460 before anything is written: no file, no temporary, nothing staged, no Location;
    the same name sent right then lands as version 1."""
    cfg, token, root = one_local
    data = _rand(MiB, 2)
    bad = data[:-1] + bytes([data[-1] ^ 1])
    with Gateway(cfg, token) as gw:
        if how == "chunk checksum":
            r = gw.create("x/c.bin", len(data), body=data, headers={"Upload-Checksum": md5_header(bad)})
        else:
            r = gw.create("x/c.bin", len(data), body=data, md5=hashlib.md5(bad).hexdigest())
        assert r.status_code == 460 and "Location" not in r.headers
        assert _visible(root) == [] and staged(tmp_path / "state") == [] and records(tmp_path / "state") == []
        r = gw.create("x/c.bin", len(data), body=data, md5=hashlib.md5(data).hexdigest())
        assert r.status_code == 201 and (root / "x" / "c.bin").read_bytes() == data
        (entry,) = gw.versions("x")["files"]
        assert [v["version"] for v in entry["versions"]] == [1]


def _cut_body(gw: Gateway, name: str, length: int, sent: bytes) -> socket.socket:
    """A creation-with-upload whose body stops after `sent` (the connection stays open)."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    head = (f"POST /uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {gw.token}\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Length: {length}\r\nContent-Length: {length}\r\n"
            f"Content-Type: {OCTETS}\r\nUpload-Metadata: filename {b64(name.encode())}\r\n\r\n")
    s.sendall(head.encode() + sent)
    return s


@pytest.mark.parametrize("who", ["server", "client"])
def test_kill9_mid_body_leaves_nothing(one_local, tmp_path, who):
    """The gateway (restarted) or the client killed half-way through the body: nothing at
    the name, no temporary in the destination, nothing staged, no upload counted in flight
    (max_uploads_in_flight = 1); the upload sent again lands as version 1."""
    cfg, token, root = one_local
    data = _rand(4 * MiB, 3)
    gw = Gateway(cfg, token).start()
    try:
        s = _cut_body(gw, "k/half.bin", len(data), data[:len(data) // 2])
        if who == "server":
            gw.kill9()
            s.close()
            gw.start()
        else:
            s.close()  # the client dies: its connection ends mid-body
        assert _visible(root) == [] and staged(tmp_path / "state") == [] and records(tmp_path / "state") == []
        r = gw.create("k/half.bin", len(data), body=data)
        assert r.status_code == 201 and r.headers["Skynet-Landed"] == "a"
        assert (root / "k" / "half.bin").read_bytes() == data and _visible(root) == ["k", "k/half.bin"]
        (entry,) = gw.versions("k")["files"]
        assert [v["version"] for v in entry["versions"]] == [1]
    finally:
        gw.stop()


def test_second_upload_of_the_name_is_version_2(one_local):
    """Two direct uploads of one name: the second is current, the first kept as version 1,
    both downloadable; one version each (no version made twice)."""
    cfg, token, root = one_local
    v1, v2 = _rand(MiB + 1, 4), _rand(2 * MiB + 5, 5)
    with Gateway(cfg, token) as gw:
        assert gw.create("p/x.raw", len(v1), body=v1).status_code == 201
        assert gw.create("p/x.raw", len(v2), body=v2).status_code == 201
        assert gw.log_text().count(DIRECT) == 2
        (entry,) = gw.versions("p")["files"]
        assert [(v["version"], v["size"], v["current"]) for v in entry["versions"]] == [
            (2, len(v2), True), (1, len(v1), False)]
        assert gw.get("p/x.raw").content == v2 and (root / "p" / "x.raw").read_bytes() == v2
        assert gw.get("p/x.raw", version=1).content == v1
        assert gw.get("p/x.raw", version=1, rng="bytes=10-19").content == v1[10:20]


def test_a_destination_that_refuses_gets_the_bytes_staged(tmp_path):
    """Direct landing fails in b (a file stands where its folder must be): the upload is in
    a, staged for b (`Skynet-Pending: b`, made durable), and lands in b, from the staged
    bytes, once the way is clear."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "sub").write_bytes(b"in the way")
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"a": {"service": "local", "root": str(a)}, "b": {"service": "local", "root": str(b)}})
    data = _rand(MiB + 9, 6)
    with Gateway(cfg, token) as gw:
        r = gw.create("sub/f.bin", len(data), body=data, md5=hashlib.md5(data).hexdigest())
        assert r.status_code == 201, r.text
        assert r.headers["Skynet-Landed"] == "a" and r.headers["Skynet-Pending"] == "b"
        assert (a / "sub" / "f.bin").read_bytes() == data
        assert records(tmp_path / "state") and staged(tmp_path / "state")
        head = gw.head(gw.location(r))
        assert head.status_code == 200 and head.headers["Upload-Offset"] == str(len(data))
        (b / "sub").unlink()
        wait_for(lambda: (b / "sub" / "f.bin").exists(), "the staged upload to land in b")
        assert (b / "sub" / "f.bin").read_bytes() == data
        wait_for(lambda: staged(tmp_path / "state") == [], "its staged bytes to go once b has them")
        (entry,) = gw.versions("sub")["files"]  # (a's versions: landed there once)
        assert [v["version"] for v in entry["versions"]] == [1]
