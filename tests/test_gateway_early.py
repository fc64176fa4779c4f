"""Early delivery (skynet/gateway/early.py): a large upload goes up to S3 as a multipart
upload while its chunks arrive; the object appears only after the whole upload was
received and verified, after the version it replaces was kept; a wrong final MD5 leaves
nothing at the key; a kill -9 mid-upload loses nothing and makes no wrong object."""
from __future__ import annotations

import hashlib
import random

import tests.server_s3  # noqa: F401  (registers "s3")
from tests.gateway_helpers import MiB, Gateway, md5_header, wait_for, write_config


def _setup(tmp_path, servers):
    s3 = servers.get("s3")
    bucket = s3.new_bucket()
    cfg = tmp_path / "gw.ini"
    # small parts: a 12 MiB upload is a multipart upload of 5 MiB parts
    token = write_config(cfg, {"s3": {"service": "s3", "root": "root", **s3.service_config(bucket),
                                      "multipart_threshold": "5MiB", "part_size": "5MiB"}})
    return s3, bucket, Gateway(cfg, token)


def _object(s3, bucket: str, key: str) -> bytes | None:
    from botocore.exceptions import ClientError

    try:
        return s3.client().get_object(Bucket=bucket, Key=f"root/{key}")["Body"].read()
    except ClientError:
        return None


def _parts_up(s3, bucket: str) -> int:
    """Parts uploaded so far in the bucket's unfinished multipart uploads."""
    c = s3.client()
    return sum(len(c.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
               for u in _multiparts(s3, bucket))


def _multiparts(s3, bucket: str) -> list:
    """The bucket's unfinished multipart uploads (rclone serve s3 answers NoSuchUpload
    for a bucket that never had one)."""
    from botocore.exceptions import ClientError

    try:
        return s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
            return []
        raise


def _send(gw: Gateway, url: str, data: bytes, start: int, end: int, chunk: int = 2 * MiB) -> object:
    resp = None
    for off in range(start, end, chunk):
        piece = data[off:min(off + chunk, end)]
        resp = gw.patch(url, off, piece, checksum=md5_header(piece))
        assert resp.status_code == 204, resp.text
    return resp


def test_parts_go_up_while_the_upload_arrives(tmp_path, servers):
    """Half-way through the upload S3 holds parts of it (the old code sent nothing before
    the last byte), nothing is visible at the key until the end; the old version is kept
    (version 1) before version 2 replaces it, and both download byte for byte."""
    s3, bucket, gw = _setup(tmp_path, servers)
    v1, v2 = random.Random(1).randbytes(MiB), random.Random(2).randbytes(12 * MiB + 5)
    with gw:
        gw.upload("d/big.bin", v1)
        url = gw.location(gw.create("d/big.bin", len(v2), md5=hashlib.md5(v2).hexdigest()))
        _send(gw, url, v2, 0, 10 * MiB)
        wait_for(lambda: _parts_up(s3, bucket) >= 1, "a part to be in S3 before the upload ended")
        assert _object(s3, bucket, "d/big.bin") == v1  # not visible before the end
        r = _send(gw, url, v2, 10 * MiB, len(v2))
        assert r.headers["Skynet-Landed"] == "s3"
        assert _object(s3, bucket, "d/big.bin") == v2
        gw.wait_log("landed in s3 (sent while it arrived)")
        (entry,) = gw.versions()["files"]
        assert [(v["version"], v["size"]) for v in entry["versions"]] == [(2, len(v2)), (1, len(v1))]
        assert gw.get("d/big.bin", version=1).content == v1
        assert gw.get("d/big.bin", rng="bytes=7-5242999").content == v2[7:5243000]
    assert _multiparts(s3, bucket) == []


def test_a_wrong_final_md5_makes_nothing_visible(tmp_path, servers):
    """The client's MD5 does not match: the last PATCH gets 460, the parts already in S3 never
    become an object (their multipart upload is aborted), the old version stays current."""
    s3, bucket, gw = _setup(tmp_path, servers)
    v1, v2 = random.Random(3).randbytes(MiB), random.Random(4).randbytes(12 * MiB)
    with gw:
        gw.upload("x.bin", v1)
        url = gw.location(gw.create("x.bin", len(v2), md5=hashlib.md5(b"something else").hexdigest()))
        _send(gw, url, v2, 0, 10 * MiB)
        wait_for(lambda: _parts_up(s3, bucket) >= 1, "the early send to put parts in S3")
        last = v2[10 * MiB:]
        r = gw.patch(url, 10 * MiB, last, checksum=md5_header(last))
        assert r.status_code == 460
        assert _object(s3, bucket, "x.bin") == v1
        wait_for(lambda: _multiparts(s3, bucket) == [], "the early multipart upload to be aborted")
        gw.wait_log("s3: aborting upload of root/x.bin")
        assert _object(s3, bucket, "x.bin") == v1
        assert gw.get("x.bin").content == v1
        (entry,) = gw.versions()["files"]
        assert [v["version"] for v in entry["versions"]] == [1]


def test_terminated_upload_leaves_nothing(tmp_path, servers):
    """DELETE of an upload being sent early: its multipart upload is aborted, no object."""
    s3, bucket, gw = _setup(tmp_path, servers)
    data = random.Random(5).randbytes(12 * MiB)
    with gw:
        url = gw.location(gw.create("t.bin", len(data)))
        _send(gw, url, data, 0, 10 * MiB)
        wait_for(lambda: _parts_up(s3, bucket) >= 1, "the early send to put parts in S3")
        import requests

        assert requests.delete(url, headers=gw.auth, timeout=60).status_code == 204
        wait_for(lambda: _multiparts(s3, bucket) == [], "the early multipart upload to be aborted")
        assert _object(s3, bucket, "t.bin") is None


def test_kill9_mid_upload_resumes(tmp_path, servers):
    """The gateway is killed with -9 while parts are in S3: after the restart the client
    resumes from HEAD's offset, the early send continues its multipart upload (the same
    upload id: no part sent twice from scratch), and the object is exactly the file."""
    s3, bucket, gw = _setup(tmp_path, servers)
    data = random.Random(6).randbytes(17 * MiB + 11)
    with gw:
        url = gw.location(gw.create("k/r.bin", len(data), md5=hashlib.md5(data).hexdigest()))
        _send(gw, url, data, 0, 12 * MiB)
        wait_for(lambda: _parts_up(s3, bucket) >= 2, "two parts to be in S3")
        (before,) = _multiparts(s3, bucket)
        gw.kill9()
        gw.start()
        offset = int(gw.head(url).headers["Upload-Offset"])
        assert offset == 12 * MiB
        r = _send(gw, url, data, offset, len(data))
        assert r.headers["Skynet-Landed"] == "s3"
        assert _object(s3, bucket, "k/r.bin") == data
        gw.wait_log("landed in s3 (sent while it arrived)")
        log = gw.log_text()
        assert "vanished" not in log and "starting again" not in log and "s3: aborting upload" not in log
    assert before["UploadId"] and _multiparts(s3, bucket) == []
