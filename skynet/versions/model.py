"""What the rest of skynet knows of versions: one record per version of a path,
and the store that lists and reads them.

Two stores implement VersionStore (skynet/versions/): S3 buckets with versioning
use the bucket's own versions and delete markers; every other remote keeps a
versions area under the remote root that mirror listings never see. `versions`
(the CLI), pruning and restore only use this interface, so they work the same
on every backend.

Times are UTC nanoseconds since the epoch. A path's versions tile its history:
each one was the path's content from `since_ns` until `until_ns` (exclusive),
and a deletion is a record of its own (`deleted`), so "the tree at T" is, for
every path, the version with since_ns <= T < until_ns that is not a deletion.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from connections.contract.xcon import FolderEntry, Folders, Sink, XCon


@dataclass(frozen=True)
class Version:
    """One version of one path (a file) under the mapping root."""

    rel: str  # the path under the mapping root it had then
    since_ns: int  # when this content became the path's content on the remote
    until_ns: int | None  # when it stopped being it (overwritten, deleted, moved away); None: current
    size: int  # 0 for a deletion
    mtime_ns: int | None  # the file's own mtime, to restore (None when the remote did not keep it)
    mode: int | None  # permission bits, to restore (None when the remote did not keep them)
    etag: str | None  # hash where known (an MD5 hex, or the remote's ETag)
    deleted: bool = False  # a deletion: the path did not exist from since_ns to until_ns
    ref: str = ""  # how the store reads these bytes back; opaque outside the store

    def covers(self, when_ns: int) -> bool:
        """This version was the path's state at `when_ns`."""
        return self.since_ns <= when_ns and (self.until_ns is None or when_ns < self.until_ns)


class VersionStore(ABC):
    """Lists and reads the versions one mapping's remote keeps."""

    @abstractmethod
    def history(self, prefix: str = "") -> Iterator[Version]:
        """Every version of the file `prefix`, or of every file under the
        folder `prefix` ("" for the whole mapping), deletions included:
        grouped by path, each path's versions newest first. Streamed."""

    @abstractmethod
    def at(self, when_ns: int, prefix: str = "") -> Iterator[Version]:
        """The version each file under `prefix` had at `when_ns` (files that
        did not exist then are absent; no deletions). Streamed, by path."""

    @abstractmethod
    def read_range(self, version: Version, offset: int, length: int) -> bytes:
        """`length` bytes (fewer only at the end) of that version from `offset`.
        A version never changes, so no `expect`; RemoteNotFound when it was
        pruned meanwhile."""

    def read_into(self, version: Version, offset: int, length: int, out: Sink) -> int:
        """read_range()'s bytes handed to `out` in order (streamed where the store's
        connection can: RangeInto); the byte count. This default reads them whole."""
        data = self.read_range(version, offset, length)
        if data:
            out(memoryview(data))
        return len(data)

    @abstractmethod
    def remove(self, version: Version) -> None:
        """Drop one kept version (pruning). Never the current one."""

    def folders(self, prefix: str = "") -> Iterator[FolderEntry]:
        """The folders the remote holds now at or under `prefix`, with their modes, for
        restore to make the empty ones and give each its bits. Now, not as of a time:
        folders have no versions. This default: a remote without folders (S3)."""
        return iter(())

    def holds_files(self, rel: str) -> bool:
        """The remote's folder `rel` holds a file now, at any depth. Restore makes a
        folder that got no file as of its time only when it is empty now (kept empty,
        when made unknown): one that holds files now held other ones then, or none."""
        return False


def holds_files(con: XCon, rel: str) -> bool:
    """VersionStore.holds_files() of a store reading `con` (the first file listed answers)."""
    return next(iter(con.list(rel)), None) is not None


def remote_folders(con: XCon, prefix: str = "") -> Iterator[FolderEntry]:
    """VersionStore.folders() of a store reading `con`: its folders at or under
    `prefix`, never the versions area's. Streamed."""
    from skynet.versions.names import is_area

    if not isinstance(con, Folders):
        return
    top = prefix.rstrip("/")
    if top:  # the folder itself, then only what is below it: not every folder of the remote
        if is_area(top):
            return
        itself = con.folder(top)
        if itself is None:
            return
        yield itself
    for f in con.list_folders(top):
        if not is_area(f.rel):
            yield f
