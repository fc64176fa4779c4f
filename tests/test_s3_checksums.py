"""Checksums the S3 server verifies, against both real test servers (rclone serve s3 and
SeaweedFS): what S3Con sends on every PUT and UploadPart, and that a body which does not
match it is refused by the server itself (not merely noticed by us afterwards).

The wire-level version (bytes flipped by a proxy between S3Con and the server, then sent
again intact) is tests/test_s3_con.py::test_bytes_changed_on_the_wire_are_refused_and_sent_again.
"""
from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest

import tests.server_s3  # noqa: F401  (registers the "s3" server)
from connections.s3 import rest as s3rest
from connections.contract.xcon import TransferContext, TransientError
from connections.s3.con import MiB, S3Con
from tests.server_seaweedfs import SeaweedServer  # noqa: F401  (registers the "seaweedfs" server)
from tests.test_s3_con import SMALL_MP, connections_to, make_file


@pytest.fixture(params=["s3", "seaweedfs"])
def srv(request, servers):
    return servers.get(request.param)


@pytest.fixture
def con(srv):
    with connections_to(srv, **SMALL_MP) as make:
        yield make()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def recorded(con: S3Con) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(method, query parameters, headers) of every request `con` makes from now on."""
    rest = con._http()
    real = rest.request
    seen: list[tuple[str, dict[str, str], dict[str, str]]] = []

    def request(method, path, params=None, headers=None, *args, **kwargs):
        seen.append((method, dict(params or {}), dict(headers or {})))
        return real(method, path, params, headers, *args, **kwargs)

    rest.request = request
    return seen


def test_every_put_and_part_carries_the_checksums_the_servers_check(con, tmp_path):
    seen = recorded(con)
    small = os.urandom(1000)
    con.send(make_file(tmp_path, "c/small", small), TransferContext())
    big = os.urandom(11 * MiB)  # 3 parts
    con.send(make_file(tmp_path, "c/big", big), TransferContext())
    single = [h for method, params, h in seen if method == "PUT" and not params]
    parts = {int(params["partNumber"]): h for method, params, h in seen if "partNumber" in params}
    assert len(single) == 1 and sorted(parts) == [1, 2, 3]  # parts go in parallel: any order
    assert single[0]["content-md5"] == b64(hashlib.md5(small).digest())
    assert single[0]["x-amz-checksum-crc32"] == b64(zlib.crc32(small).to_bytes(4, "big"))
    for n, h in parts.items():
        assert h["content-md5"] == b64(hashlib.md5(big[(n - 1) * 5 * MiB:n * 5 * MiB]).digest())


@pytest.mark.parametrize("header", ["content-md5", "x-amz-checksum-crc32"])
def test_a_put_whose_body_does_not_match_its_checksum_is_refused(con, srv, header):
    """The server checks the body against Content-MD5 (both servers) and x-amz-checksum-crc32
    (SeaweedFS; rclone serve s3 ignores it, which is why Content-MD5 is on every request)."""
    body, other = b"the bytes that arrive", b"the bytes that were meant"
    right = {"content-md5": b64(hashlib.md5(body).digest()),
             "x-amz-checksum-crc32": b64(zlib.crc32(body).to_bytes(4, "big"))}
    wrong = {"content-md5": b64(hashlib.md5(other).digest()),
             "x-amz-checksum-crc32": b64(zlib.crc32(other).to_bytes(4, "big"))}
    rest = con._http()
    key = con._key("refused")
    checks = header == "content-md5" or isinstance(srv, SeaweedServer)
    if checks:
        with pytest.raises(s3rest.S3Error) as info:
            rest.put(key, body, {**right, header: wrong[header]}, None)
        assert info.value.code == "BadDigest" and info.value.status == 400
        assert con.stat("refused") is None
        assert isinstance(con._classify(info.value, "send 'refused'", key), TransientError)
    else:
        rest.put(key, body, {**right, header: wrong[header]}, None)  # rclone: not checked
    rest.put(key, body, right, None)
    assert con._get(key, "read") == body


def test_a_part_whose_body_does_not_match_its_content_md5_is_refused(con):
    rest = con._http()
    key = con._key("part")
    upload_id = rest.create_multipart(key, {})
    body = os.urandom(5 * MiB)
    with pytest.raises(s3rest.S3Error) as info:
        rest.upload_part(key, upload_id, 1, body, b64(hashlib.md5(body[1:]).digest()), None)
    assert info.value.code == "BadDigest"
    con._abort(key, upload_id)
