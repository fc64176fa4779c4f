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
from typing import Any, Iterator

from botocore.exceptions import ClientError

import tests.server_s3  # noqa: F401  (registers the "s3" server starter)
import tests.server_seaweedfs  # noqa: F401  (registers the "seaweedfs" server starter)
from connections.s3 import S3Con

ROOT = "root"


@contextlib.contextmanager
def s3_backend(tmp_path, servers, server: str = "s3", **options: Any) -> Iterator[Any]:
    """Yield a tests.backends.Backend around a connected S3Con on the test server named
    `server` (see tests/servers.py); `options` go to S3Con."""
    from tests.backends import Backend  # here, not at the top: backends.py imports this module
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
            )
    finally:
        con.close()
        proxy.close()


#: the same backend on SeaweedFS, which checks checksums and keeps uploads across restarts
seaweedfs_backend = functools.partial(s3_backend, server="seaweedfs")


def pytest_configure(config) -> None:
    """`pytest -p tests.backend_s3` adds this backend to the shared suites without
    editing tests/backends.py (which owns the permanent BACKENDS list)."""
    from tests.backends import BACKENDS

    BACKENDS.setdefault("s3", s3_backend)
    BACKENDS.setdefault("seaweedfs", seaweedfs_backend)
