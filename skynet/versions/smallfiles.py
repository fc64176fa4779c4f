"""The small files of a restore, read many at once by one thread.

A restore hands each file to a pool of worker threads; for small files read whole
with their metadata (S3: one GET each) that pool's cost is the threads themselves:
16 threads each blocking on its own connection spent most of the restore's CPU
handing the interpreter lock around (perf: a third of the process's time in context
switches). Where the store reads many files at once from one thread
(Completes.reads_many: S3's WholeReadMany), this lane takes the small files the
listing hands it and does everything for them in one thread: the GETs in flight over
several connections, each reply checked and landed (restore.land: an unnamed file
linked in place) as it arrives. Measured, 10,000 x 4 KiB from `rclone serve s3`:
see bench/RESULTS.md.

Anything out of the ordinary goes to the pool's usual path (`pooled`), which does it
the way it always has: a file already in DIR at that size (maybe finished: the pool
checks it without reading), and every file the lane's reads give back (an error
reply, another version, a dropped connection), so errors are told and counted there.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Callable

from connections.contract.xcon import END, EndOfWork
from skynet.versions.current import Completes
from skynet.versions.model import Version

if TYPE_CHECKING:
    from skynet.versions.restore import Restore

log = logging.getLogger(__name__)
WAIT = 0.05  # seconds take() waits for the listing when no read is in flight, before looking at the stop flag


class SmallFiles:
    """One thread reading and landing the small files put() to it; close() waits for it."""

    def __init__(self, restore: "Restore", store: Completes, pooled: Callable[[Version], None],
                 release: Callable[[], None], largest: int, width: int) -> None:
        self.restore, self.store = restore, store
        self.pooled = pooled  # restores a file the usual way, then releases its room
        self.release = release  # the room of a file this lane finished (landed, failed or dropped)
        self.largest = largest
        self.width = width
        self._q: queue.SimpleQueue[Version | EndOfWork] = queue.SimpleQueue()
        self._taken: dict[str, tuple[Version, str]] = {}  # rel -> (version, its path in DIR): read, not landed yet
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="restore-small", daemon=True)
        self._thread.start()

    def takes(self, v: Version) -> bool:
        """A file this lane restores: small, its metadata still to be read with its bytes."""
        return (v.mtime_ns is None or v.mode is None) and v.size <= self.largest

    def put(self, v: Version) -> None:
        self._q.put(v)

    def close(self) -> None:
        """No more files: wait until every one put here is landed or handed to the pool."""
        self._q.put(END)
        self._thread.join()

    def _run(self) -> None:
        try:
            for v, got in self.store.complete_read_many(self._take, self.width, self.restore.stop):
                _v, dest = self._taken.pop(v.rel)
                if got is None:
                    self.pooled(v)
                    continue
                done, data = got
                self.restore.account(done, lambda: self.restore.land(done, data, dest))
                self.release()
        except Exception:  # a bug: what it held, and what comes after, is restored the usual way
            log.exception("restoring small files many at once failed; the rest go one by one")
            for v, _dest in self._taken.values():
                self.pooled(v)
            self._taken.clear()
        self._drain()

    def _take(self, block: bool) -> Version | None | EndOfWork:
        """The next file to read (None: none listed yet, when not to block; END: no more).
        Its folder in DIR is made first; one with a file of its size there already goes
        to the pool, which may find it finished without reading it."""
        from skynet.versions.restore import lstat_or_none, same_size

        while not self._ended:
            try:
                v = self._q.get(block=block, timeout=WAIT if block else None)
            except queue.Empty:
                if block and not self.restore.stop.is_set():
                    continue
                return None
            if isinstance(v, EndOfWork):
                self._ended = True
                break
            if self.restore.stop.is_set():
                self.release()  # stopped: not read, not failed (the same command restores it)
                continue
            try:
                dest = self.restore.dest(v.rel)
            except Exception:  # a name leading out of DIR: the pool fails that file and says why
                self.pooled(v)
                continue
            if same_size(lstat_or_none(dest), v.size):
                self.pooled(v)
                continue
            self._taken[v.rel] = (v, dest)
            return v
        return END

    def _drain(self) -> None:
        """After the reads: whatever is still queued goes to the pool (or is dropped if stopped)."""
        while not self._ended:
            v = self._q.get()
            if isinstance(v, EndOfWork):
                self._ended = True
            elif self.restore.stop.is_set():
                self.release()
            else:
                self.pooled(v)
