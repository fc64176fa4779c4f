"""The SFTP backend for the shared suites: SFTPCon on the real test sshd.

Each test gets a fresh, empty remote folder; `leftovers()` lists our temporary
files under it (the contract requires none).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from connections.sftp import SFTPCon, build
from tests.backends import Backend
import tests.server_sshd  # noqa: F401  (registers the "sftp" server)


@contextlib.contextmanager
def sftp_backend(tmp_path, servers, **service: str) -> Iterator[Backend]:
    srv = servers.get("sftp")
    root = srv.fresh_folder()
    config = srv.service(**service)
    con: SFTPCon = build(config, root)
    con.connect()
    try:
        yield Backend(
            con=con,
            config={"sftp": config, "mapping": {"target": root}},
            leftovers=con.leftovers,
        )
    finally:
        con.close()
