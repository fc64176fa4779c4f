"""The VersionStore of a mapping that keeps no versions: the remote as it is now.

A mirror without `versions = yes` still holds the tree as it is now, and
restoring that (a new machine, a lost disk) is the commonest restore of all.
This store lists the remote's current files as versions that began at most at
the moment the store was opened and are still current, so `skynet restore
--at now` works on every mapping; any older time is refused with a clear
error (NoHistory) instead of quietly handing back today's files as
yesterday's.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

from connections.contract.xcon import (
    EndOfWork, FolderEntry, RemoteEntry, RemoteNotFound, Sink, WholeRead, WholeReadMany, XCon, read_range_into,
)
from skynet.versions.model import Version, VersionStore, holds_files, remote_folders


class NoHistory(Exception):
    """The store knows only the present and an earlier time was asked for."""


class Completes(ABC):
    """A store whose listing may lack a version's mtime or mode (S3 listings carry no
    user metadata): complete() fills them in with one more request. Restore calls
    it on its worker threads, so the requests run in parallel, never one by one
    while listing."""

    @abstractmethod
    def complete(self, version: Version) -> Version:
        """`version` with its mtime and mode, where the remote keeps them."""

    @abstractmethod
    def complete_read(self, version: Version) -> tuple[Version, bytes]:
        """complete() and the whole version's bytes, in one request where the remote
        can (S3: a GET carries the metadata a listing lacks). For small files."""

    def reads_many(self) -> bool:
        """Whether complete_read_many() reads several files at once from one thread."""
        return False

    def complete_read_many(self, take: Callable[[bool], Version | None | EndOfWork], width: int,
                           stop: threading.Event) -> Iterator[tuple[Version, tuple[Version, bytes] | None]]:
        """complete_read() of the versions `take` hands over (as WholeReadMany's take does),
        `width` at once, from the calling thread: (version, (completed version, bytes)), or
        (version, None) for one to read with complete_read(). Only where reads_many()."""
        raise NotImplementedError


class CurrentStore(VersionStore, Completes):
    """The remote's current files, as of `now_ns` (the time the caller calls "now")."""

    def __init__(self, con: XCon, now_ns: int, mapping: str = "") -> None:
        self.con, self.now_ns, self.mapping = con, now_ns, mapping

    def history(self, prefix: str = "") -> Iterator[Version]:
        """One version per current file: the only one this store knows."""
        return self._current(prefix)

    def at(self, when_ns: int, prefix: str = "") -> Iterator[Version]:
        if when_ns < self.now_ns:
            name = f"mapping {self.mapping!r}" if self.mapping else "this mapping"
            raise NoHistory(f"{name} keeps no versions (versions = no): only its current state can be "
                            "restored (--at now)")
        return self._current(prefix)

    def folders(self, prefix: str = "") -> Iterator[FolderEntry]:
        return remote_folders(self.con, prefix)

    def holds_files(self, rel: str) -> bool:
        return holds_files(self.con, rel)

    def read_range(self, version: Version, offset: int, length: int) -> bytes:
        """The current file's bytes, held to the version listed (RemoteChanged if replaced since)."""
        return self.con.read_range(version.rel, offset, length, expect=_entry(version))

    def read_into(self, version: Version, offset: int, length: int, out: Sink) -> int:
        """read_range(), streamed to `out` where the connection can."""
        return read_range_into(self.con, version.rel, offset, length, out, expect=_entry(version))

    def remove(self, version: Version) -> None:
        raise NotImplementedError("a mirror without versions has nothing kept to remove")

    def reads_many(self) -> bool:
        return isinstance(self.con, WholeReadMany)

    def complete_read_many(self, take: Callable[[bool], Version | None | EndOfWork], width: int,
                           stop: threading.Event) -> Iterator[tuple[Version, tuple[Version, bytes] | None]]:
        """The connection's read_whole_many(), each version held to its listed entry."""
        assert isinstance(self.con, WholeReadMany)

        def entries(block: bool) -> tuple[Version, RemoteEntry] | None | EndOfWork:
            v = take(block)
            return v if v is None or isinstance(v, EndOfWork) else (v, _entry(v))

        for v, entry, data in self.con.read_whole_many(entries, width, stop):
            yield v, None if entry is None else (self._completed(v, entry), data)

    def complete(self, version: Version) -> Version:
        """stat() the file: the mtime and mode its metadata keeps (S3), else the time it was stored."""
        if version.mtime_ns is not None and version.mode is not None:
            return version
        entry = self.con.stat(version.rel)
        if entry is None:
            raise RemoteNotFound(f"{version.rel}: no longer on the remote")
        return self._completed(version, entry)

    def complete_read(self, version: Version) -> tuple[Version, bytes]:
        """One GET where the connection reads a file whole with its metadata, else stat() and a read."""
        if isinstance(self.con, WholeRead):
            entry, data = self.con.read_whole(version.rel, expect=_entry(version))
            return self._completed(version, entry), data
        version = self.complete(version)
        return version, self.read_range(version, 0, version.size)

    def _completed(self, version: Version, entry: RemoteEntry) -> Version:
        return Version(version.rel, version.since_ns, None, entry.size, entry.mtime_ns,
                       entry.mode if version.mode is None else version.mode, entry.etag or version.etag)

    def _current(self, prefix: str) -> Iterator[Version]:
        """The file `prefix`, or every file under the folder `prefix` ("" for all)."""
        if prefix:
            entry = self.con.stat(prefix)
            if entry is not None:
                yield self._version(entry)
                return
        for entry in self.con.list(prefix):
            yield self._version(entry)

    def _version(self, entry: RemoteEntry) -> Version:
        """A current file as a version: since the time the remote stored it (no later than now), still current.
        A time the remote stored it is no mtime of the file's: left None, for complete() to fill in."""
        since = min(entry.mtime_ns, self.now_ns) if entry.mtime_ns is not None else 0
        mtime = None if entry.mtime_is_stored else entry.mtime_ns
        return Version(entry.rel, since, None, entry.size, mtime, entry.mode, entry.etag)


def _entry(version: Version) -> RemoteEntry:
    """The RemoteEntry a listing showed for this version: what read_range's `expect` compares."""
    return RemoteEntry(version.rel, version.size, version.mtime_ns, version.mode, version.etag)
