"""The SFTP backend for the shared suites: SFTPCon on the real test sshd.

Each test gets a fresh, empty remote folder; `leftovers()` lists our temporary
files under it (the contract requires none). The daemon of an end-to-end test
reaches sshd through a tests.faultproxy.FaultProxy (with a known_hosts line for
the proxy's port), which the torture test cuts or stalls; it also stops sshd with
all its sessions and starts it again on the same port ("server stop (TERM)" / "(KILL)").
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import tests.server_sshd  # noqa: F401  (registers the "sftp" server)
from connections.sftp.con import SFTPCon, build


@contextlib.contextmanager
def sftp_backend(tmp_path, servers, **service: str) -> Iterator["Backend"]:
    # Imported here so that tests/backends.py may import this module at its top.
    from tests.backends import Backend, write_tree
    from tests.faultproxy import FaultProxy
    from tests.harness import folders, server_diagnosis, tree
    from tests.servers import left_running, server_faults

    srv = servers.get("sftp")
    root = srv.fresh_folder()
    config = srv.service(**service)
    con: SFTPCon = build(config, root)
    con.connect()
    proxy = FaultProxy(srv.port).start()
    known = tmp_path / "known_hosts.proxy"
    known.write_text(srv.known_hosts_line(proxy.port))
    daemon_config = dict(config, port=str(proxy.port), known_hosts=str(known))

    def fetch() -> dict[bytes, bytes]:
        # The server runs on this machine without chroot: the remote folder is a local one.
        return tree(root, skip=lambda rel: rel.rsplit("/", 1)[-1].startswith(".skynet-tmp-"))

    faults = {"network cut": (proxy.cut, proxy.restore), "network stall": (proxy.stall, proxy.restore),
              **server_faults(srv)}
    try:
        with left_running(srv):
            yield Backend(
                con=con,
                config={"service": daemon_config, "mapping": {"target": root}},
                leftovers=con.leftovers,
                fetch=fetch,
                fetch_folders=lambda: folders(root),  # (the server's folder is a local one)
                service="sftp",
                faults=faults,
                diagnose=lambda: server_diagnosis("sshd", srv.running, srv.pid, srv.log),
                seed=lambda files: write_tree(root, files),  # the server's folder is a local one
            )
    finally:
        con.close()
        proxy.close()
