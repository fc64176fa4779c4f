"""A mapping's VersionStore on a connection of its own, for the commands and pruning.

The CLI (`skynet versions`, `skynet restore`) and the daemon's pruner read and
remove versions on a fresh connection rather than the mirror's: pruning then never
takes a session from the pool the mirror's workers use (an SFTP pool is sized for
them), and a command needs no daemon running.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from skynet.config.settings import Config, MappingConfig, connection_for
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
    if m.pool == m.name:  # a mapping with several destinations, as a whole
        with pool_store(cfg, m, now_ns, threads) as store:
            yield store
        return
    from connections.contract.xcon import PoolSized
    from skynet.versions.current import CurrentStore

    con = connection_for(cfg, m)
    if threads is not None and isinstance(con, PoolSized):
        con.size_pool(threads)
    try:
        con.connect()
        yield CurrentStore(con, now_ns, m.name) if not m.versions and now_ns is not None else store_for(con, m)
    finally:
        con.close()


@contextlib.contextmanager
def pool_store(cfg: Config, m: MappingConfig, now_ns: int | None = None,
               threads: int | None = None) -> Iterator[VersionStore]:
    """The store of a mapping with several destinations. `placement = all`: every
    destination holds every file, so the first one that answers serves (the
    connection errors of the last one when none does). `most-free`: each file is on
    one destination, so all of them are read as one (PoolStore)."""
    from connections.contract.xcon import TransientError
    from skynet.config.settings import lanes_of
    from skynet.versions.pool import PoolStore

    lanes = lanes_of(cfg, m.name)
    with contextlib.ExitStack() as stack:
        if m.placement != "all":
            yield PoolStore([stack.enter_context(connected_store(cfg, lane, now_ns, threads)) for lane in lanes])
            return
        for i, lane in enumerate(lanes):
            try:
                store = stack.enter_context(connected_store(cfg, lane, now_ns, threads))
            except TransientError:
                if i == len(lanes) - 1:
                    raise
                continue
            yield store
            return
