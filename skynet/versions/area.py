"""AreaStore: the versions of a remote without versions of its own (local, SFTP,
S3 without versioning), read from the versions area and the current tree.

What is there (see names.py for the names, keeper.py for how they get there):
the current files under the root, the kept files `<path>@S.v` (replaced at S)
and `<path>@S.d` (deleted at S), and the move markers `<src>@S.moved` and
`<dest>@S.arrived`.

The rules, from which history() and at() follow:

 1. A path's current file is a Version with until None; a kept file's until is S.
 2. A version's since is the latest of its own mtime (an S3 object without our
    metadata: when it was stored) and the time it came to that path: the S of the keep or move that put it there (a send replacing
    `.v` at S starts the new version at S; a file recreated after a deletion
    at S starts at its mtime, but not before S). A since after the until
    (a clock that went back) is taken as the until.
 3. A deletion at S (`.d`) is a record of its own, from S until the path's
    next version starts (or None: still deleted).
 4. A move src -> dest at S: from S on, what is at dest (or under dest/) came
    from src: before S the same content is the version of the path under src
    (its bytes read from where they are now: the current file under dest, or
    the version kept when it changed there later). The move ends the versions
    at src at S (a deletion record follows there, as in 3) and starts those at
    dest at S. What src held after S was made there after the move.
 5. Whatever dest held when something was moved onto it was kept first, with
    the move's stamp: it is dest's version until S.

They are applied backwards in time: start from the current tree, take the
recorded events newest first (at one stamp, the move before the keep) and undo
each, closing the versions it ends. Every version gets its rel as it was named
then, so at(T) is "per path, the version covering T, deletions left out".

The whole area and the current tree are listed for each call (one listing of
the root, streamed into a temporary SQLite file and read back by path): a prefix
is applied to what comes out, since a move may bring the files of one folder from
anywhere. Memory: one path's records at a time, and the move markers; the paths
under a move's src or dest (tied by rule 4) are walked together, in memory.
"""
from __future__ import annotations

import contextlib
import heapq
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from connections.contract.xcon import (
    Counting,
    FolderEntry,
    PermanentError,
    RemoteChanged,
    RemoteEntry,
    RemoteNotFound,
    Sink,
    XCon,
    read_range_into,
)
from skynet.state.sortspool import SortSpool
from skynet.versions.model import Version, VersionStore, holds_files, remote_folders
from skynet.versions.names import (
    AREA,
    ARRIVED,
    DELETED,
    KEPT,
    MOVED,
    escape,
    is_area,
    parse_area_name,
)

log = logging.getLogger(__name__)

CUR, KEPT_REF = "cur:", "area:"
CUR_KIND = "cur"  # a spooled row of a current file (the others: KEPT, DELETED)
STAT_THREADS = 8
SPOOL_BATCH = 512  # listed entries completed and spooled at a time


@dataclass(frozen=True)
class _Content:
    """One file's bytes where they are now: the current file, or a kept one."""

    ref: str
    size: int
    mtime_ns: int | None
    mode: int | None
    etag: str | None
    born: int  # its own mtime, else when the remote stored it (an object without our metadata)


def _under(rel: str, prefix: str) -> bool:
    return not prefix or rel == prefix or rel.startswith(prefix.rstrip("/") + "/")


class _Timeline:
    """The backwards walk of the rules above: `versions` ends up holding, per
    path, its versions newest first."""

    def __init__(self, current: dict[str, _Content]) -> None:
        self.state: dict[str, tuple[_Content, int | None]] = {p: (c, None) for p, c in current.items()}
        self.next_start: dict[str, int] = {}  # an empty path: when its next version starts
        self.versions: dict[str, list[Version]] = {}

    def _emit(self, rel: str, since: int, until: int | None, c: _Content | None) -> None:
        if c is None:
            if until is not None and until <= since:
                return  # an empty deletion (the path was given new content at once)
            v = Version(rel, since, until, 0, None, None, None, deleted=True)
        else:
            v = Version(rel, since, until, c.size, c.mtime_ns, c.mode, c.etag, ref=c.ref)
        self.versions.setdefault(rel, []).append(v)

    def _close(self, rel: str, floor: int) -> int:
        """End the walk back of the version at `rel`: it began at `floor` or later
        (rule 2); returns when it began."""
        c, until = self.state.pop(rel)
        since = max(c.born, floor)
        if until is not None:
            since = min(since, until)
        self._emit(rel, since, until, c)
        return since

    def vacate(self, rel: str, when: int) -> None:
        """`rel` was emptied at `when` (deleted, moved away): close its later
        version if any, record the deletion (rule 3)."""
        if rel in self.state:
            start = self._close(rel, when)
        else:
            start = self.next_start.get(rel)
        self._emit(rel, when, start, None)
        self.next_start.pop(rel, None)

    def keep(self, rel: str, when: int, kept: _Content, deleted: bool) -> None:
        """Undo a `.v` or `.d` at `when`: before it, `rel` held `kept`."""
        if deleted:
            self.vacate(rel, when)
        elif rel in self.state:
            self._close(rel, when)
        self.next_start.pop(rel, None)
        self.state[rel] = (kept, when)

    def move(self, src: str, dest: str, when: int) -> None:
        """Undo the move src -> dest at `when` (rule 4). Under dest, a file with an
        mtime after the move was made there afterwards, not moved in."""
        def at(top: str) -> list[str]:
            return [p for p in self.state if p == top or p.startswith(top + "/")]

        moving = [p for p in at(dest) if self.state[p][0].born <= when]
        for p in at(src) + [p for p in at(dest) if p not in moving]:
            self.next_start[p] = self._close(p, when)  # made after the move
        back: list[tuple[str, tuple[_Content, int | None]]] = []
        for p in moving:
            c = self.state[p][0]
            self._close(p, when)
            self.next_start[p] = when
            back.append((src + p[len(dest):], (c, when)))
        for q, entry in back:
            start = self.next_start.pop(q, None)
            if start is None or start > when:
                self._emit(q, when, start, None)  # emptied by the move (and filled again at `start`)
            self.state[q] = entry

    def finish(self) -> dict[str, list[Version]]:
        for p in list(self.state):
            self._close(p, 0)
        return self.versions


class AreaStore(VersionStore):
    """The versions a remote keeps in its versions area (see the module)."""

    def __init__(self, con: XCon) -> None:
        self.con = con

    # -- reading the remote ------------------------------------------------
    def _complete(self, entries: list[RemoteEntry], pool: ThreadPoolExecutor | None = None) -> list[RemoteEntry]:
        """Entries with the file's own mtime and mode: an S3 listing has neither
        (only when the object was stored), so those are HEADed, in parallel."""
        todo = [i for i, e in enumerate(entries) if e.mtime_is_stored or (e.mode is None and self.con.abilities.mode)]
        if not todo:
            return entries
        out = list(entries)

        def stat(i: int) -> tuple[int, RemoteEntry | None]:
            return i, self.con.stat(entries[i].rel)

        with contextlib.ExitStack() as stack:
            if pool is None:
                pool = stack.enter_context(ThreadPoolExecutor(min(STAT_THREADS, len(todo))))
            for i, e in pool.map(stat, todo):
                if e is not None:
                    out[i] = replace(e, etag=e.etag or entries[i].etag)
        return out

    def _spool(self, spool: _Spool) -> list[tuple[int, str, str]]:
        """The root's one listing streamed into `spool` (completed a batch at a time);
        returns the moves, (stamp, src, dest), whose markers are the only entries held."""
        markers: dict[int, dict[str, str]] = {}
        batch: list[tuple[RemoteEntry, str, int, str]] = []  # (entry, rel, stamp, kind: CUR_KIND or KEPT/DELETED)
        with ThreadPoolExecutor(STAT_THREADS) as pool:
            def flush() -> None:
                done = self._complete([e for e, *_ in batch], pool)
                spool.add((rel, when, kind, _content((CUR if kind == CUR_KIND else KEPT_REF) + e.rel, e))
                          for e, (_, rel, when, kind) in zip(done, batch))
                batch.clear()

            for e in self.con.list(""):
                if not is_area(e.rel):
                    batch.append((e, e.rel, 0, CUR_KIND))
                else:
                    name = parse_area_name(e.rel)
                    if name is None:
                        continue
                    if name.kind in (MOVED, ARRIVED):
                        markers.setdefault(name.when_ns, {})[name.kind] = name.rel
                    else:
                        batch.append((e, name.rel, name.when_ns, name.kind))
                if len(batch) >= SPOOL_BATCH:
                    flush()
            flush()
        moves = []
        for when, pair in markers.items():
            if MOVED in pair and ARRIVED in pair:
                moves.append((when, pair[MOVED], pair[ARRIVED]))
            else:
                log.info("versions area: a move at %d has only its %s marker; ignored", when, list(pair))
        return moves

    def _by_path(self, prefix: str) -> Iterator[tuple[str, list[Version]]]:
        """(path, its versions in the walk's order) for every path under `prefix`, by
        path (byte order), with the listing spooled to disk: what is held at once is one
        path's entries, plus whatever moves tie together (rule 4 relates every path under
        a move's src and dest, so those subtrees are walked as one, in memory)."""
        with _Spool() as spool:
            moves = self._spool(spool)
            tops = sorted({p for _, src, dest in moves for p in (src, dest)})
            tied = self._tied(spool, moves, tops, prefix)
            plain = ((rel, _walk_one(rel, rows)) for rel, rows in spool.paths(prefix) if not _under_any(rel, tops))
            yield from heapq.merge(tied, plain, key=lambda item: _key(item[0]))

    def _tied(self, spool: _Spool, moves: list[tuple[int, str, str]], tops: list[str],
              prefix: str) -> Iterator[tuple[str, list[Version]]]:
        """The paths under what moves tie together (rule 4), walked as one timeline."""
        if not moves:
            return iter(())
        current: dict[str, _Content] = {}
        events: list[tuple[int, int, str, object]] = [(when, 0, src, dest) for when, src, dest in moves]
        for top in _outer(tops):
            for rel, rows in spool.paths(top):
                for when, kind, c in rows:
                    if kind == CUR_KIND:
                        current[rel] = c
                    else:
                        events.append((when, 1, rel, (c, kind == DELETED)))
        versions = _run(current, events)
        return iter([(rel, versions[rel]) for rel in sorted(versions, key=_key) if _under(rel, prefix)])

    # -- VersionStore ------------------------------------------------------
    def history(self, prefix: str = "") -> Iterator[Version]:
        for _rel, versions in self._by_path(prefix):
            yield from sorted(versions, key=lambda v: -v.since_ns)

    def at(self, when_ns: int, prefix: str = "") -> Iterator[Version]:
        for _rel, versions in self._by_path(prefix):
            for v in versions:
                if v.covers(when_ns):
                    if not v.deleted:
                        yield v
                    break

    def read_range(self, version: Version, offset: int, length: int) -> bytes:
        pieces: list[bytes] = []
        self.read_into(version, offset, length, lambda piece: pieces.append(bytes(piece)))
        return b"".join(pieces)

    def read_into(self, version: Version, offset: int, length: int, out: Sink) -> int:
        """A kept version from its area file; a current one from the file, held to the
        version listed, or, replaced or deleted since, from the area file keeping it now."""
        if version.ref.startswith(KEPT_REF):
            return read_range_into(self.con, version.ref[len(KEPT_REF):], offset, length, out)
        if not version.ref.startswith(CUR):
            raise RemoteNotFound(f"{version.rel!r}: a deletion has no bytes")
        rel = version.ref[len(CUR):]
        expect = RemoteEntry(rel, version.size, version.mtime_ns, version.mode, version.etag)
        counted = Counting(out)
        try:
            return read_range_into(self.con, rel, offset, length, counted, expect=expect)
        except (RemoteChanged, RemoteNotFound):
            # Replaced or deleted since it was listed: its version is in the area now
            # (read again from the start only when none of the other bytes went out).
            kept = self._kept_copy(rel, version) if counted.n == 0 else None
            if kept is None:
                raise
            return read_range_into(self.con, kept, offset, length, out)

    def _kept_copy(self, rel: str, version: Version) -> str | None:
        """The area file holding the version that was current at `rel` (same size and mtime)."""
        folder, _, name = rel.rpartition("/")
        where = "/".join([AREA] + [escape(p) for p in folder.split("/") if p])
        head = escape(name) + "@"
        for e in self._complete([e for e in self.con.list(where) if e.rel[len(where) + 1:].startswith(head)]):
            n = parse_area_name(e.rel)
            if n is not None and n.rel == rel and n.kind in (KEPT, DELETED) and e.size == version.size \
                    and e.mtime_ns == version.mtime_ns:
                return e.rel
        return None

    def folders(self, prefix: str = "") -> Iterator[FolderEntry]:
        return remote_folders(self.con, prefix)

    def holds_files(self, rel: str) -> bool:
        return holds_files(self.con, rel)

    def remove(self, version: Version) -> None:
        if version.deleted:
            return  # a deletion is no object: it goes with the version kept at it
        if not version.ref.startswith(KEPT_REF):
            raise PermanentError(f"{version.rel!r}: the version's bytes are a current file's; not removed")
        self.con.delete(version.ref[len(KEPT_REF):])


def _run(current: dict[str, _Content], events: list[tuple[int, int, str, object]]) -> dict[str, list[Version]]:
    """The backwards walk over recorded events (newest first; at one stamp, the move
    before the keep): every path's versions."""
    t = _Timeline(current)
    events.sort(key=lambda ev: (-ev[0], ev[1]))
    for when, order, rel, what in events:
        if order == 0:
            t.move(rel, what, when)  # type: ignore[arg-type]
        else:
            kept, deleted = what  # type: ignore[misc]
            t.keep(rel, when, kept, deleted)
    return t.finish()


def _walk_one(rel: str, rows: list[tuple[int, str, _Content]]) -> list[Version]:
    """One path no move touched: its versions from its current file and its own keeps."""
    current = {rel: c for _when, kind, c in rows if kind == CUR_KIND}
    return _run(current, [(when, 1, rel, (c, kind == DELETED)) for when, kind, c in rows if kind != CUR_KIND]).get(rel, [])


def _key(rel: str) -> bytes:
    """The order paths come out in: their bytes (the spool's ORDER BY)."""
    return os.fsencode(rel)


def _under_any(rel: str, tops: list[str]) -> bool:
    return any(_under(rel, t) for t in tops)


def _outer(tops: list[str]) -> list[str]:
    """`tops` without those under another one."""
    out: list[str] = []
    for t in sorted(tops, key=_key):
        if not any(_under(t, o) for o in out):
            out.append(t)
    return out


class _Spool(SortSpool):
    """The root's listing on disk, read back path by path in byte order: a sort by
    path whose memory does not grow with the listing."""

    def __init__(self) -> None:
        super().__init__(width=8)

    def add(self, rows: Iterator[tuple[str, int, str, _Content]]) -> None:  # type: ignore[override]
        super().add((_key(rel), when, kind, _key(c.ref), c.size, c.mtime_ns, c.mode, c.etag, c.born)
                    for rel, when, kind, c in rows)

    def paths(self, prefix: str) -> Iterator[tuple[str, list[tuple[int, str, _Content]]]]:
        """(path, its rows: (stamp, kind, content)) for every path at or under `prefix`, by path."""
        for path, rows in self.groups(_key(prefix.rstrip("/")) if prefix else b""):
            yield os.fsdecode(path), [(r[0], r[1], _Content(os.fsdecode(r[2]), r[3], r[4], r[5], r[6], r[7]))
                                      for r in rows]


def _content(ref: str, e: RemoteEntry) -> _Content:
    return _Content(ref, e.size, None if e.mtime_is_stored else e.mtime_ns, e.mode, e.etag, e.mtime_ns or 0)
