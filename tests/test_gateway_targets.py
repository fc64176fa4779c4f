"""The gateway landing uploads in a local folder, an SFTP server and S3 at once: one of them
down while uploading holds back no other and catches up when it returns, versions in order;
and S3 bucket versioning (SeaweedFS) as the versions of a destination."""
from __future__ import annotations

import random
from pathlib import Path


import tests.server_s3  # noqa: F401  (registers "s3")
import tests.server_seaweedfs  # noqa: F401  (registers "seaweedfs")
import tests.server_sshd  # noqa: F401  (registers "sftp")
from skynet.versions.names import AREA
from tests.gateway_helpers import MiB, Gateway, staged, wait_for, write_config
from tests.servers import left_running


def _s3_target(srv, bucket: str) -> dict[str, str]:
    # small parts, so that a 12 MiB upload goes up as a resumable multipart upload
    return {"service": "s3", "root": "root", **srv.service_config(bucket), "multipart_threshold": "5MiB",
            "part_size": "5MiB"}


def _object(srv, bucket: str, key: str) -> bytes | None:
    from botocore.exceptions import ClientError

    try:
        return srv.client().get_object(Bucket=bucket, Key=f"root/{key}")["Body"].read()
    except ClientError:
        return None


def test_one_destination_down_while_uploading(tmp_path, servers):
    """SFTP stops half-way through an upload: the upload lands in the local folder and S3
    (the client is told `Skynet-Pending: sftp`), a second file too; the gateway is killed
    with -9 and restarted meanwhile; when SFTP is back both land there, in order (the
    version they replace kept in its versions area)."""
    sshd = servers.get("sftp")
    s3 = servers.get("s3")
    bucket = s3.new_bucket()
    local_root = tmp_path / "local"
    local_root.mkdir()
    sftp_root = Path(sshd.fresh_folder("gw"))
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {
        "local": {"service": "local", "root": str(local_root)},
        "sftp": {"service": "sftp", "root": str(sftp_root), **sshd.service()},
        "s3": _s3_target(s3, bucket),
    })
    v1, v2 = random.Random(1).randbytes(12 * MiB + 3), random.Random(2).randbytes(6 * MiB)
    with Gateway(cfg, token) as gw, left_running(sshd):
        r = gw.upload("r/a.bin", v1)
        assert r.headers["Skynet-Landed"] == "local, sftp, s3" and r.headers["Skynet-Pending"] == ""
        url = gw.location(gw.create("r/a.bin", len(v2)))
        assert gw.patch(url, 0, v2[:3 * MiB]).status_code == 204
        sshd.stop()
        r = gw.patch(url, 3 * MiB, v2[3 * MiB:])
        assert r.status_code == 204
        assert r.headers["Skynet-Landed"] == "local, s3" and r.headers["Skynet-Pending"] == "sftp"
        r = gw.upload("r/b.bin", b"b" * 1000)
        assert r.headers["Skynet-Pending"] == "sftp"
        assert (local_root / "r" / "a.bin").read_bytes() == v2
        assert _object(s3, bucket, "r/a.bin") == v2 and _object(s3, bucket, "r/b.bin") == b"b" * 1000
        assert gw.get("r/a.bin", rng="bytes=0-99").content == v2[:100]
        assert (sftp_root / "r" / "a.bin").read_bytes() == v1  # held back, not half-written
        assert staged(tmp_path / "state")  # kept on the gateway until SFTP has them
        gw.kill9()  # what waits for SFTP survives the gateway's death too
        gw.start()
        sshd.start()
        wait_for(lambda: (sftp_root / "r" / "b.bin").exists() and (sftp_root / "r" / "a.bin").read_bytes() == v2,
                 "SFTP to catch up", timeout=120)
        wait_for(lambda: staged(tmp_path / "state") == [], "the staged uploads to go once delivered")
        kept = [p for p in (sftp_root / AREA).rglob("*") if p.is_file()]
        assert [p.read_bytes() for p in kept] == [v1]  # version 1 kept there before version 2 replaced it
        gw.wait_log("landed in sftp", count=3)
        assert s3.secret_key not in gw.log_text() and token not in gw.log_text()


def test_native_versions_on_a_versioned_bucket(tmp_path, servers):
    """SeaweedFS with bucket versioning: the destination's versions are the bucket's own;
    a second upload is version 2, and both download whole and by ranges."""
    weed = servers.get("seaweedfs")
    bucket = weed.new_bucket()
    weed.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"weed": _s3_target(weed, bucket)})
    v1, v2 = random.Random(3).randbytes(2 * MiB + 1), random.Random(4).randbytes(MiB)
    with Gateway(cfg, token) as gw:
        gw.upload("n.bin", v1)
        gw.upload("n.bin", v2)
        (entry,) = gw.versions()["files"]
        assert [(v["version"], v["size"], v["current"]) for v in entry["versions"]] == [
            (2, len(v2), True), (1, len(v1), False)]
        assert gw.get("n.bin", version=1).content == v1
        assert gw.get("n.bin", version=1, rng="bytes=1000-2000").content == v1[1000:2001]
        assert gw.get("n.bin", rng="bytes=10-").content == v2[10:]
    versions = weed.client().list_object_versions(Bucket=bucket, Prefix="root/")["Versions"]
    assert len(versions) == 2  # no versions area: the bucket kept version 1 itself
    assert not [k for k in weed.client().list_objects_v2(Bucket=bucket).get("Contents", []) if AREA in k["Key"]]


def test_a_client_is_not_kept_waiting_for_a_retry(tmp_path, servers):
    """Once a destination failed, the next finished upload is answered at once (Skynet-Pending),
    not after the destination's retry_interval (here an hour: the old code answered then)."""
    sshd = servers.get("sftp")
    local_root = tmp_path / "local"
    local_root.mkdir()
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"local": {"service": "local", "root": str(local_root)},
                               "sftp": {"service": "sftp", "root": sshd.fresh_folder("gw"), **sshd.service()}},
                         retry_interval="3600")
    with Gateway(cfg, token) as gw, left_running(sshd):
        sshd.stop()
        r = gw.upload("one", b"1" * 100)  # answered after its one attempt at SFTP
        assert r.headers["Skynet-Landed"] == "local" and r.headers["Skynet-Pending"] == "sftp"
        url = gw.location(gw.create("two", 100))
        r = gw.patch(url, 0, b"2" * 100, timeout=120)
        assert r.headers["Skynet-Landed"] == "local" and r.headers["Skynet-Pending"] == "sftp"
        assert (local_root / "two").read_bytes() == b"2" * 100
