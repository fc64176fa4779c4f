"""The S3 backends for the shared suites: S3Con on a fresh bucket of a real S3 server,
`rclone serve s3` ("s3", tests/server_s3.py) or SeaweedFS ("seaweedfs",
tests/server_seaweedfs.py), addressed path-style.

Each test gets its own bucket, and the connection works under the prefix "root" so that
prefix handling is exercised too (nothing may appear outside it). The daemon of an
end-to-end test reaches the server through a tests.faultproxy.FaultProxy, which the
torture test cuts or stalls ("network cut" / "network stall"); the torture test also
stops the server process and starts it again ("server stop (TERM)" / "(KILL)"), which
makes rclone forget multipart uploads in progress and user metadata other than mtime
(SeaweedFS keeps both).
"""
from __future__ import annotations

import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

from botocore.exceptions import ClientError

import tests.server_s3  # noqa: F401  (registers the "s3" server starter)
import tests.server_seaweedfs  # noqa: F401  (registers the "seaweedfs" server starter)
from connections.contract.xcon import LocalFile, TransferContext
from connections.s3.con import S3Con

ROOT = "root"


@contextlib.contextmanager
def s3_backend(tmp_path, servers, server: str = "s3", **options: Any) -> Iterator[Any]:
    """Yield a tests.backends.Backend around a connected S3Con on the test server named
    `server` (see tests/servers.py); `options` go to S3Con."""
    from tests.backends import Backend, write_tree  # here, not at the top: backends.py imports this module
    from tests.faultproxy import FaultProxy
    from tests.harness import server_diagnosis
    from tests.servers import left_running, server_faults

    srv = servers.get(server)
    bucket = srv.new_bucket()
    con = S3Con(prefix=ROOT, **{**srv.con_kwargs(bucket), **options})
    con.connect()
    proxy = FaultProxy(int(srv.endpoint_url.rsplit(":", 1)[1])).start()
    service = {**srv.service_config(bucket), "endpoint_url": f"http://127.0.0.1:{proxy.port}"}

    def leftovers() -> list[str]:
        """Open multipart uploads anywhere in the bucket, and objects outside the root."""
        out = [f"upload {u['key']} {u['upload_id']}" for u in S3Con(**srv.con_kwargs(bucket)).uploads()]
        pages = srv.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        out += [f"object {o['Key']}" for p in pages for o in p.get("Contents", []) if not o["Key"].startswith(ROOT + "/")]
        return out

    def fetch() -> dict[bytes, bytes]:
        """{relative path bytes: content} of every object under the root. The daemon may be
        moving things meanwhile: an object that fails between LIST and GET is left out, and
        the caller's convergence loop simply looks again."""
        client = srv.client()
        out: dict[bytes, bytes] = {}
        for e in con.list():
            try:
                out[e.rel.encode("utf-8")] = client.get_object(Bucket=bucket, Key=f"{ROOT}/{e.rel}")["Body"].read()
            except ClientError:  # gone (404), or rclone's 500 for a file being renamed
                continue
        return out

    def seed(files: dict[str, bytes]) -> None:
        """rclone serve s3 keeps each object as a plain file under data_dir/bucket: written
        there directly. SeaweedFS keeps them in its own store: PUT by 16 threads of a
        second S3Con (its own HTTP client costs a sixth of boto3's CPU per object)."""
        if server != "seaweedfs":
            write_tree(srv.data_dir / bucket, {f"{ROOT}/{rel}": data for rel, data in files.items()})
            return
        local = tmp_path / "seed"
        seeds = [make_local(local, rel, data) for rel, data in files.items()]
        seeder = S3Con(prefix=ROOT, **srv.con_kwargs(bucket))
        try:
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda f: seeder.send(f, TransferContext()), seeds))
        finally:
            seeder.close()

    def enable_versioning() -> None:
        srv.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    faults = {"network cut": (proxy.cut, proxy.restore), "network stall": (proxy.stall, proxy.restore),
              **server_faults(srv)}
    try:
        with left_running(srv):
            yield Backend(
                con=con,
                config={"service": service, "mapping": {"target": ROOT}},
                leftovers=leftovers,
                fetch=fetch,
                service="s3",
                faults=faults,
                diagnose=lambda: server_diagnosis("SeaweedFS" if server == "seaweedfs" else "rclone serve s3", srv.running, srv.pid, srv.log),
                seed=seed,
                # rclone serve s3 keeps no versions; SeaweedFS does, once the bucket asks for them
                enable_versioning=enable_versioning if server == "seaweedfs" else None,
            )
    finally:
        con.close()
        proxy.close()


def make_local(folder, rel: str, data: bytes) -> LocalFile:
    """A local file under `folder` holding `data`, described for a send."""
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    st = path.stat()
    return LocalFile(str(path), rel, st.st_size, st.st_mtime_ns, 0o644, st.st_ino)


#: the same backend on SeaweedFS, which checks checksums and keeps uploads across restarts
seaweedfs_backend = functools.partial(s3_backend, server="seaweedfs")


def pytest_configure(config) -> None:
    """`pytest -p tests.backend_s3` adds this backend to the shared suites without
    editing tests/backends.py (which owns the permanent BACKENDS list)."""
    from tests.backends import BACKENDS

    BACKENDS.setdefault("s3", s3_backend)
    BACKENDS.setdefault("seaweedfs", seaweedfs_backend)
