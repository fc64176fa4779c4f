"""A mapping's VersionStore on a connection of its own, for the commands and pruning.

The CLI (`skynet versions`, `skynet restore`) and the daemon's pruner read and
remove versions on a fresh connection rather than the mirror's: pruning then never
takes a session from the pool the mirror's workers use (an SFTP pool is sized for
them), and a command needs no daemon running.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from connections import service_module
from skynet.config.settings import Config, MappingConfig
from skynet.versions.model import VersionStore
from skynet.versions.stores import store_for


@contextlib.contextmanager
def connected_store(cfg: Config, m: MappingConfig, now_ns: int | None = None,
                    threads: int | None = None) -> Iterator[VersionStore]:
    """The store of mapping `m` on a new connection, connected now and closed on exit.
    A mapping without versions: VersionsOff, or, given `now_ns`, the remote as it is
    then (CurrentStore: one version per current file). `threads`: how many threads
    will read through it at once (a connection that pools sessions sizes its pool).
    The connection's TransientError or PermanentError when the remote cannot be
    reached or used."""
    from connections.contract.xcon import PoolSized
    from skynet.versions.current import CurrentStore

    con = service_module(cfg.service).build(cfg.service_options, m.target)
    if threads is not None and isinstance(con, PoolSized):
        con.size_pool(threads)
    try:
        con.connect()
        yield CurrentStore(con, now_ns, m.name) if not m.versions and now_ns is not None else store_for(con, m)
    finally:
        con.close()
