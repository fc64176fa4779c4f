"""NativeStore: the versions an S3 bucket with versioning keeps by itself.

Nothing is written while mirroring: every PUT over a key makes a new version,
every delete a delete marker, and a move (CopyObject, then delete) a version
at the new key and a delete marker at the old one. The rules:

  * a version's since is its LastModified (when the store took it), its until
    the LastModified of the next newer version or delete marker of that key
    (None for the current one);
  * a delete marker is a deletion record from its LastModified until the next
    newer version's (None: still deleted);
  * mtime and mode are ours, from the version's metadata (one HEAD each, for
    the versions given out with bytes; ListObjectVersions carries no metadata).

Stores that give LastModified in whole seconds (SeaweedFS) put two versions
made within one second at the same since: the older one then covers no time.

The versions area of an earlier run without bucket versioning is not read
here (is_area keys are skipped as everywhere else).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from connections.contract.xcon import VersionEntry, Versions, XCon
from skynet.versions.model import Version, VersionStore
from skynet.versions.names import is_area

STAT_THREADS = 8


class NativeStore(VersionStore):
    def __init__(self, con: XCon) -> None:
        assert isinstance(con, Versions)
        self.con = con
        self.versions: Versions = con

    def _groups(self, prefix: str) -> Iterator[tuple[str, list[VersionEntry]]]:
        listed = (v for v in self.versions.list_versions_under(prefix.rstrip("/")) if not is_area(v.rel))
        for rel, group in itertools.groupby(listed, key=lambda v: v.rel):
            yield rel, list(group)

    @staticmethod
    def _records(rel: str, entries: list[VersionEntry]) -> list[Version]:
        """One key's versions (newest first) as records, without mtime and mode yet."""
        out = []
        until: int | None = None
        for e in entries:
            since = e.mtime_ns or 0
            if until is not None:
                since = min(since, until)
            out.append(Version(rel, since, until, 0 if e.deleted else e.size, None, None,
                               None if e.deleted else e.etag, deleted=e.deleted, ref=e.version_id))
            until = since
        return out

    def _with_metadata(self, versions: list[Version]) -> list[Version]:
        """mtime and mode from each version's metadata (deletions have none), HEADs in parallel."""
        from dataclasses import replace

        def fill(v: Version) -> Version:
            if v.deleted:
                return v
            st = self.versions.stat_version(v.rel, v.ref)
            return replace(v, mtime_ns=st.mtime_ns if not st.mtime_is_stored else None, mode=st.mode)

        if len(versions) <= 1:
            return [fill(v) for v in versions]
        with ThreadPoolExecutor(min(STAT_THREADS, len(versions))) as pool:
            return list(pool.map(fill, versions))

    def history(self, prefix: str = "") -> Iterator[Version]:
        for rel, entries in self._groups(prefix):
            yield from self._with_metadata(self._records(rel, entries))

    def at(self, when_ns: int, prefix: str = "") -> Iterator[Version]:
        for rel, entries in self._groups(prefix):
            for v in self._records(rel, entries):
                if v.covers(when_ns):
                    if not v.deleted:
                        yield self._with_metadata([v])[0]
                    break

    def read_range(self, version: Version, offset: int, length: int) -> bytes:
        return self.versions.read_version_range(version.rel, version.ref, offset, length)

    def remove(self, version: Version) -> None:
        self.versions.delete_version(version.rel, version.ref)
