"""The S3 backend for the shared suites: S3Con on a fresh bucket of the rclone test server.

Each test gets its own bucket, and the connection works under the prefix "root" so that
prefix handling is exercised too (nothing may appear outside it).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import tests.server_s3  # noqa: F401  (registers the "s3" server starter)
from connections.s3 import S3Con

ROOT = "root"


@contextlib.contextmanager
def s3_backend(tmp_path, servers, **options: Any) -> Iterator[Any]:
    """Yield a tests.backends.Backend around a connected S3Con; `options` go to S3Con."""
    from tests.backends import Backend  # here, not at the top: backends.py imports this module

    srv = servers.get("s3")
    bucket = srv.new_bucket()
    con = S3Con(prefix=ROOT, **{**srv.con_kwargs(bucket), **options})
    con.connect()

    def leftovers() -> list[str]:
        """Open multipart uploads anywhere in the bucket, and objects outside the root."""
        client = srv.client()
        out = [f"upload {u['key']} {u['upload_id']}" for u in S3Con(**srv.con_kwargs(bucket)).uploads()]
        out += [
            f"object {o['Key']}" for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])
            if not o["Key"].startswith(ROOT + "/")
        ]
        return out

    try:
        yield Backend(
            con=con,
            config={"s3": srv.service_config(bucket), "mapping": {"service": "s3", "target": ROOT}},
            leftovers=leftovers,
        )
    finally:
        con.close()


def pytest_configure(config) -> None:
    """`pytest -p tests.backend_s3` adds this backend to the shared suites without
    editing tests/backends.py (which owns the permanent BACKENDS list)."""
    from tests.backends import BACKENDS

    BACKENDS.setdefault("s3", s3_backend)
