"""PoolStore: the versions of a mapping with several destinations, read as one.

With `placement = most-free` each file lives on one destination, so a restore or
a listing must see them all: every lane's store is read and the streams merged
by path. A version's `ref` is prefixed with its lane's index, so a read goes back
to the store that listed it.
"""
from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterator

from connections.contract.xcon import FolderEntry
from skynet.versions.model import Version, VersionStore


class PoolStore(VersionStore):
    """Several lanes' stores as one (in lane order where a path is on more than one)."""

    def __init__(self, stores: list[VersionStore]) -> None:
        self.stores = stores

    def _tagged(self, i: int, versions: Iterator[Version]) -> Iterator[Version]:
        for v in versions:
            yield dataclasses.replace(v, ref=f"{i}:{v.ref}")

    def _route(self, v: Version) -> tuple[VersionStore, Version]:
        i, _, ref = v.ref.partition(":")
        return self.stores[int(i)], dataclasses.replace(v, ref=ref)

    def history(self, prefix: str = "") -> Iterator[Version]:
        return heapq.merge(*(self._tagged(i, s.history(prefix)) for i, s in enumerate(self.stores)),
                           key=lambda v: v.rel)

    def at(self, when_ns: int, prefix: str = "") -> Iterator[Version]:
        """Each path once: where two lanes hold it (a file placed, then moved over
        another's path), the first lane's wins."""
        last = None
        for v in heapq.merge(*(self._tagged(i, s.at(when_ns, prefix)) for i, s in enumerate(self.stores)),
                             key=lambda v: v.rel):
            if v.rel != last:
                last = v.rel
                yield v

    def folders(self, prefix: str = "") -> Iterator[FolderEntry]:
        """Every lane's folders, each path once (the first lane's mode)."""
        seen: set[str] = set()
        for s in self.stores:
            for f in s.folders(prefix):
                if f.rel not in seen:
                    seen.add(f.rel)
                    yield f

    def holds_files(self, rel: str) -> bool:
        return any(s.holds_files(rel) for s in self.stores)

    def read_range(self, version: Version, offset: int, length: int) -> bytes:
        store, v = self._route(version)
        return store.read_range(v, offset, length)

    def remove(self, version: Version) -> None:
        store, v = self._route(version)
        store.remove(v)
