"""SyncSnap: the start-up scan that catches up with what happened while we were away.

At every start the local tree is walked and compared with the Index (what the
remote holds): new or changed files get a `send`; files the Index knows but the
disk no longer has get a `delete` (with complete_sync). Changes made while the
daemon was stopped, or lost in a crash or a watch-queue overflow, are found here.

Memory stays flat whatever the tree size: the walk holds one folder listing
per level, the Index is read in byte order page by page, and the two streams
are merge-joined. Each folder's entries are sorted by name, with "/" appended
to folder names, which makes the walk's order exactly the byte order of the
full paths (the Index's ORDER BY). Actions go to the queue in batches.

First sync: when the Index is empty and the connection can list, the remote is
listed once (paged) and its files are taken into the Index, so files already
there and identical (same size and mtime, or same content hash) are not sent.

On a target with folders (Folders) the folders are compared too: the walk yields
each folder (key: its path and "/", the order of the Index's `folders` table) and
the Index's files and folders are merged into one stream in that order. A folder
the remote lacks, or holds with other permission bits, gets a `send`; one the
mirror holds that the disk lost gets a `delete` (with complete_sync), counted
with the files' deletes against max_delete.
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import os
import stat as statmod
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from connections.contract.xcon import EtagCheck, Folders, LocalFile, XCon
from connections.contract.source import local_file, open_source
from skynet.watch.ignore import IgnoreRules
from skynet.engine.mapper import Mapper
from skynet.engine.reconcile import FOLDER_MODE_BITS, index_matches, is_special
from skynet.state.index import Index, IndexEntry, IndexFolder, folder_key
from skynet.state.db import under_range
from skynet.state.uniqueq import DELETE, SEND, UniqueQ
from skynet.versions.names import is_area

log = logging.getLogger(__name__)

BATCH = 2000
# The first sends go to the queue after this many files, and each later flush
# is twice the last one, up to BATCH: the workers start copying while the scan
# is still walking, instead of waiting for the first 2,000 files to be listed.
FIRST_BATCH = 64


@dataclass
class ScanStats:
    files: int = 0
    folders: int = 0  # on a target with folders
    sends: int = 0
    deletes: int = 0  # files and folders
    folder_deletes: int = 0  # of which folders
    unchanged: int = 0
    adopted: int = 0  # already on the remote at first sync
    refused_deletes: int = 0  # held back by the mass-delete guard
    errors: int = 0
    seconds: float = 0.0


def _md5(f: LocalFile) -> str | None:
    h = hashlib.md5()
    try:
        with open_source(f) as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except Exception:  # unreadable, or not the file listed: not known identical, so sent (and checked) later
        return None
    return h.hexdigest()


class SyncSnap:
    def __init__(
        self,
        mapper: Mapper,
        index: Index,
        queue: UniqueQ,
        ignore: IgnoreRules,
        complete_sync: bool,
        con: XCon | None = None,
        follow_symlinks: bool = False,
        stop: "threading.Event | None" = None,
        max_delete: int = 1000,
        allow_mass_delete: bool = False,
        precheck: "Callable[[], None] | None" = None,
    ) -> None:
        self.mapper = mapper
        self.index = index
        self.queue = queue
        self.ignore = ignore
        self.complete_sync = complete_sync
        self.con = con
        self.follow_symlinks = follow_symlinks
        self.stop = stop or threading.Event()
        self.max_delete = max_delete
        self.allow_mass_delete = allow_mass_delete
        self.precheck = precheck or (lambda: None)
        self.stats = ScanStats()
        self.partial = False  # scanning only some folders (run(roots=...))
        self.folders = isinstance(con, Folders)  # folders are part of the mirror

    # -- the walk ----------------------------------------------------------
    def walk(self, rel_dir: str = "", dir_entry: os.DirEntry | None = None
             ) -> Iterator[tuple[bytes, str, os.DirEntry, bool]]:
        """(key, rel, entry, is_dir) of every regular file under `rel_dir` (key: its
        path's bytes), and on a target with folders of every folder too (key: its
        path's bytes and "/"), in key order.

        The listing alone tells a file from a folder. The stat is left to the
        caller, because only files the Index knows need one: skipping it for
        new files keeps the first scan of a big tree from making one system
        call per file, each a wait for the GIL while the workers copy.

        A start-up scan also yields what it cannot send: FIFOs, sockets and
        devices, and (as `dir_entry`) a folder it cannot list, a path over
        PATH_MAX say. Their sends record the reason in the failed actions."""
        try:
            with os.scandir(self.mapper.local(rel_dir)) as it:
                entries = []
                for e in it:
                    try:
                        is_dir = e.is_dir(follow_symlinks=self.follow_symlinks)
                    except OSError:
                        continue
                    key = os.fsencode(e.name) + (b"/" if is_dir else b"")
                    entries.append((key, e.name, is_dir, e))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            log.error("cannot list folder %r: %s", rel_dir or ".", exc.strerror)
            self.stats.errors += 1
            if dir_entry is not None and not self.partial and not self.folders:
                yield os.fsencode(rel_dir), rel_dir, dir_entry, False  # (with folders: the folder's own send says so)
            return
        entries.sort(key=lambda t: t[0])
        prefix = os.fsencode(rel_dir) + b"/" if rel_dir else b""
        for key, name, is_dir, e in entries:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if self.ignore.ignored(rel, is_dir=is_dir):
                continue
            if is_dir:
                if self.folders:
                    yield prefix + key, rel, e, True
                yield from self.walk(rel, e)
                continue
            try:
                regular = e.is_file(follow_symlinks=self.follow_symlinks)
            except OSError:
                continue
            if regular or (not self.partial and is_special(e, self.follow_symlinks)):
                yield prefix + key, rel, e, False  # a FIFO, socket...: its send records why it is not sent (at start-up)
        del entries

    # -- first sync --------------------------------------------------------
    def adopt_remote(self) -> int:
        """Take a listing of the remote into the empty Index (first sync only)."""
        if self.con is None or self.index.count() > 0:
            return 0
        n = 0
        batch: list[tuple] = []
        try:
            for e in self.con.list(""):
                if is_area(e.rel):
                    continue  # the versions area is no mirrored file (never sent, never deleted)
                # a stored time (S3's LastModified) is not the file's mtime: not known
                mtime = None if e.mtime_is_stored else e.mtime_ns
                batch.append((e.rel, e.size, mtime, e.mode, None, e.etag))
                if len(batch) >= BATCH:
                    self.index.put_many(batch)
                    n += len(batch)
                    batch = []
        except Exception as exc:
            log.warning("could not list the remote for the first sync (%s); every file will be sent", exc)
            return n
        if batch:
            self.index.put_many(batch)
            n += len(batch)
        self._adopt_folders()
        if n:
            log.info("first sync: the remote already holds %d file(s); identical ones will not be sent", n)
        return n

    def _adopt_folders(self) -> None:
        """First sync on a target with folders: the folders there go into the Index
        with their modes, so those the source has alike are not made again."""
        if not isinstance(self.con, Folders):
            return
        rows = ((f.rel, f.mode) for f in self.con.list_folders("") if not is_area(f.rel))  # (never the versions area)
        try:
            while batch := list(itertools.islice(rows, BATCH)):
                self.index.apply(folders=batch)
        except Exception as exc:
            log.warning("could not list the remote's folders for the first sync (%s); each will be made", exc)

    def _identical_to_listing(self, rel: str, st: os.stat_result, entry: IndexEntry) -> bool:
        """At first sync: is the remote copy (listed, not yet verified) this file?"""
        if entry.size != st.st_size or not statmod.S_ISREG(st.st_mode):
            return False
        precision = self.con.abilities.mtime_precision_ns if self.con else 1
        if entry.mtime_ns is not None:
            return entry.mtime_ns // precision == st.st_mtime_ns // precision
        etag = (entry.etag or "").strip('"').lower()
        if not etag:
            return False
        # A connection that knows how its ETags are made (S3: plain MD5, or
        # the multipart "md5-of-md5s-N") recomputes them from the local file.
        # Read as a send reads it: beneath the source folder, the file listed.
        f = local_file(self.mapper.local(rel), rel, st, self.mapper.source, self.follow_symlinks)
        if isinstance(self.con, EtagCheck):
            try:
                return etag in {e.strip('"').lower() for e in self.con.local_etags(f)}
            except Exception:  # unreadable or replaced: not known identical, so sent (and checked) later
                return False
        if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
            return _md5(f) == etag
        return False

    def _streams(self, roots: list[str] | None) -> tuple[Iterator, Iterator]:
        """(files and folders on disk, Index entries and folders), both in key order:
        the whole tree, or only the folders in `roots` (disjoint), each a contiguous
        byte range of keys."""
        if roots is None:
            return self.walk(""), self._recorded("")
        roots = sorted((r for r in roots if not self.ignore.ignored(r, is_dir=True)), key=lambda r: under_range(r)[0])
        return (itertools.chain.from_iterable(self.walk(r) for r in roots),
                itertools.chain.from_iterable(self._recorded(r) for r in roots))

    def _recorded(self, rel: str) -> Iterator[tuple[bytes, IndexEntry | IndexFolder]]:
        """(key, entry) of the files the Index holds below `rel`, and on a target with
        folders of the folders it records there, merged in key order."""
        files = ((os.fsencode(e.rel), e) for e in self.index.iter_under(rel, BATCH))
        if not self.folders:
            return files
        folders = ((folder_key(f.rel), f) for f in self.index.iter_folders_under(rel, BATCH))
        return heapq.merge(files, folders, key=lambda t: t[0])

    # -- the scan ----------------------------------------------------------
    def run(self, roots: list[str] | None = None) -> ScanStats:
        """Compare the disk with the Index and queue the differences: the whole
        tree, or only below `roots` (relative folders, none inside another: the
        folders inotify could not watch, polled instead).

        Raises SourceUnavailable (from `precheck`) if the source folder is
        missing or is an empty stand-in for it: then nothing is compared."""
        t0 = time.monotonic()
        s = self.stats
        self.precheck()
        first = roots is None and self.adopt_remote() > 0
        self.partial = roots is not None
        sends: list[tuple[str, str, str]] = []
        deletes: list[tuple[str, str, str]] = []
        refresh: list[tuple] = []
        prec = self.con.abilities.mtime_precision_ns if self.con else 1

        batch = FIRST_BATCH

        def flush(force: bool = False) -> None:
            nonlocal sends, refresh, batch
            if sends and (force or len(sends) >= batch):
                self.queue.put_many(sends)
                sends = []
                batch = min(BATCH, 2 * batch)
            if refresh and (force or len(refresh) >= BATCH):
                self.index.put_many(refresh)
                refresh = []

        local, remote = self._streams(roots)
        lf = next(local, None)
        ir = next(remote, None)
        while (lf is not None or ir is not None) and not self.stop.is_set():
            lkey = lf[0] if lf is not None else None
            ikey = ir[0] if ir is not None else None
            ie = ir[1] if ir is not None else None
            if ikey is None or (lkey is not None and lkey < ikey):
                rel = lf[1]  # not in the Index: sent whatever its stat says
                if lf[3]:
                    s.folders += 1
                else:
                    s.files += 1
                sends.append((SEND, rel, ""))
                s.sends += 1
                lf = next(local, None)
            elif lkey is None or ikey < lkey:
                # (a folder the mirror holds, gone from the disk, is counted like a file)
                if isinstance(ie, IndexEntry) and ie.mtime_ns is None and not self.complete_sync:
                    pass  # a remote-only file seen at first sync: leave it alone
                elif self.ignore.ignored_path(ie.rel):
                    pass  # excluded now, but not ours to delete
                elif self.complete_sync:
                    s.deletes += 1
                    s.folder_deletes += isinstance(ie, IndexFolder)
                    if len(deletes) <= self.max_delete or self.allow_mass_delete:
                        deletes.append((DELETE, ie.rel, ""))
                        if self.allow_mass_delete and len(deletes) >= BATCH:
                            self.queue.put_many(deletes)
                            deletes = []
                ir = next(remote, None)
            else:
                _key, rel, dentry, is_dir = lf
                lf = next(local, None)
                try:
                    st = dentry.stat(follow_symlinks=self.follow_symlinks)
                except OSError:
                    continue  # gone since the listing: ie meets the next file, or counts as deleted
                if is_dir:
                    s.folders += 1
                    assert isinstance(ie, IndexFolder)  # (the same key: a folder both sides)
                    if ie.mode != statmod.S_IMODE(st.st_mode) & FOLDER_MODE_BITS:
                        sends.append((SEND, rel, ""))  # its permission bits changed
                        s.sends += 1
                    ir = next(remote, None)
                    flush()
                    continue
                s.files += 1
                assert isinstance(ie, IndexEntry)
                if index_matches(ie, st, prec):
                    s.unchanged += 1
                elif first and self._identical_to_listing(rel, st, ie):
                    refresh.append((rel, st.st_size, st.st_mtime_ns, statmod.S_IMODE(st.st_mode), st.st_ino, ie.etag))
                    s.adopted += 1
                else:
                    sends.append((SEND, rel, ""))
                    s.sends += 1
                ir = next(remote, None)
            flush()
        flush(force=True)
        if deletes and not self.stop.is_set():
            self._queue_deletes(deletes)
        s.seconds = time.monotonic() - t0
        return s

    def _queue_deletes(self, deletes: list[tuple[str, str, str]]) -> None:
        """The mass-delete guard (rclone's --max-delete): a start-up scan that
        would delete more than `max_delete` files, or every file because the
        source is empty, deletes nothing unless the user allowed it."""
        s = self.stats
        # an empty unwatched folder is no empty source; one with folders in it neither
        empty_source = s.files == 0 and s.folders == 0 and not self.partial
        if not self.allow_mass_delete and (s.deletes > self.max_delete or empty_source):
            s.refused_deletes = s.deletes
            why = ("the source folder is empty" if empty_source
                   else f"that is more than max_delete = {self.max_delete}")
            folders = f" and {s.folder_deletes} folder(s)" if s.folder_deletes else ""
            log.error(
                "NOT deleting %d file(s)%s on the remote that are gone from %r: %s. If that is intended, run once "
                "with --allow-mass-delete (or SKYNET_ALLOW_MASS_DELETE=1), or raise max_delete for this mapping.",
                s.deletes - s.folder_deletes, folders, self.mapper.source, why)
            return
        self.queue.put_many(deletes)
