"""Watcher: turns watchdog's file-system events into queued actions.

The event rules of DESIGN.md live here, and only here:

| event                          | action                                              |
|--------------------------------|-----------------------------------------------------|
| file closed after writing      | send, at once                                       |
| file created / modified / chmod| send after `settle` seconds of quiet (a file moved   |
|                                | in, or written through mmap, never reports a close)  |
| folder created (or moved in)   | send of the folder after settle: queues its files    |
| moved inside the root          | move (watchdog's per-child copies of a folder move   |
|                                | are ignored: the folder move covers them)            |
| moved from an ignored name     | send of the destination (editor save, x.part -> x)   |
| moved to an ignored name / out | delete (only with complete_sync)                     |
| deleted                        | delete (only with complete_sync)                     |

Events are only hints; the Reconciler checks the disk when the action runs.
Only the event types we use are subscribed, so reading files (our own uploads
included) wakes nothing.
"""
from __future__ import annotations

import errno
import heapq
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter, InotifyFD, InotifyWatchGroup
from watchdog.observers.inotify_c import inotify_add_watch

from skynet.ignore import IgnoreRules
from skynet.mapper import Mapper
from skynet.uniqueq import DELETE, MOVE, SEND, UniqueQ

log = logging.getLogger(__name__)

EVENT_TYPES = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
]


class Debouncer:
    """Delays `send`s until a path has been quiet for `settle` seconds.

    One thread sleeping on a condition until the earliest deadline: no polling.
    A later event on the same path pushes its deadline back (many writes, one
    upload); `fire_now` and `cancel` drop a pending send.
    """

    def __init__(self, settle: float, fire: Callable[[str], None]) -> None:
        self.settle = settle
        self.fire = fire
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="debouncer", daemon=True)
        self._thread.start()

    def touch(self, rel: str) -> None:
        when = time.monotonic() + self.settle
        with self._cv:
            self._due[rel] = when
            heapq.heappush(self._heap, (when, rel))
            if self._heap[0][1] == rel:
                self._cv.notify()

    def cancel(self, rel: str) -> bool:
        with self._cv:
            return self._due.pop(rel, None) is not None

    def cancel_under(self, rel: str) -> None:
        prefix = rel + "/"
        with self._cv:
            for k in [k for k in self._due if k == rel or k.startswith(prefix)]:
                del self._due[k]

    def pending(self) -> int:
        with self._cv:
            return len(self._due)

    def _loop(self) -> None:
        while True:
            ready: list[str] = []
            with self._cv:
                while not self._closed:
                    now = time.monotonic()
                    while self._heap and self._heap[0][0] <= now:
                        when, rel = heapq.heappop(self._heap)
                        if self._due.get(rel) == when:
                            del self._due[rel]
                            ready.append(rel)
                    if ready:
                        break
                    self._cv.wait(self._heap[0][0] - now if self._heap else None)
                if self._closed:
                    return
            for rel in ready:
                self.fire(rel)

    def flush(self) -> None:
        """Fire everything pending now (used at stop so nothing is forgotten)."""
        with self._cv:
            rels = list(self._due)
            self._due.clear()
            self._heap.clear()
        for rel in rels:
            self.fire(rel)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=5)


class Watcher(FileSystemEventHandler):
    """watchdog event handler for one mapping's source folder."""

    def __init__(
        self,
        mapper: Mapper,
        ignore: IgnoreRules,
        queue: UniqueQ,
        complete_sync: bool,
        settle: float = 1.0,
        on_rescan: Callable[[str], None] | None = None,
    ) -> None:
        self.mapper = mapper
        self.ignore = ignore
        self.queue = queue
        self.complete_sync = complete_sync
        self.debouncer = Debouncer(settle, lambda rel: self.queue.put(SEND, rel))
        self.on_rescan = on_rescan or (lambda why: None)
        self.events = 0

    def _rel(self, path: str | bytes) -> str | None:
        rel = self.mapper.rel(path)
        if rel is None:
            return None
        return rel

    def dispatch(self, event: FileSystemEvent) -> None:  # called on watchdog's thread
        self.events += 1
        try:
            self._handle(event)
        except Exception:  # never let one odd event kill the observer thread
            log.exception("could not handle event %r", event)

    def _handle(self, event: FileSystemEvent) -> None:
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            if event.is_synthetic:
                return  # a child of a folder move: the folder's move covers it
            self._moved(event)
            return
        rel = self._rel(event.src_path)
        if rel is None:
            return
        if rel == "":
            if isinstance(event, DirDeletedEvent):
                log.error("the source folder %r itself was deleted or moved away", self.mapper.source)
                self.on_rescan("source folder deleted")
            return
        is_dir = event.is_directory
        if self.ignore.ignored(rel, is_dir=is_dir):
            return
        if isinstance(event, FileClosedEvent):
            self.debouncer.cancel(rel)
            self.queue.put(SEND, rel)
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent, FileAttribEvent, DirCreatedEvent)):
            self.debouncer.touch(rel)
        elif isinstance(event, (FileDeletedEvent, DirDeletedEvent)):
            self.debouncer.cancel_under(rel)
            if self.complete_sync:
                self.queue.put(DELETE, rel)

    def _moved(self, event: FileSystemEvent) -> None:
        is_dir = event.is_directory
        src = self._rel(event.src_path)
        dest = self._rel(event.dest_path)
        src_ok = src not in (None, "") and not self.ignore.ignored(src, is_dir=is_dir)
        dest_ok = dest not in (None, "") and not self.ignore.ignored(dest, is_dir=is_dir)
        if src:
            self.debouncer.cancel_under(src)
        if src_ok and dest_ok:
            self.queue.put(MOVE, src, dest)
        elif dest_ok:
            self.queue.put(SEND, dest)  # from an ignored name: the final file arrives
        elif src_ok and self.complete_sync:
            self.queue.put(DELETE, src)  # to an ignored name, or out of the root

    def close(self) -> None:
        self.debouncer.flush()
        self.debouncer.close()


# -- watch faults -------------------------------------------------------------
# watchdog 7 handles an inotify queue overflow by rebuilding its watches, and
# skips sub-folders it cannot watch (watch limit reached) without telling the
# application. Both mean events were or will be missed, so skynet must know:
# the small subclasses below report them to a listener (the mapping runner),
# which logs the fix and rescans. They rely on two methods of watchdog's
# InotifyWatchGroup (pinned in requirements.txt; tests/test_watch_faults.py
# fails if they change).


class WatchFaultListener:
    """What a mapping does about watch faults (see skynet/daemon.py)."""

    def overflow(self, root: str) -> None: ...

    def unwatched(self, folder: str) -> None: ...

    def root_lost(self, root: str) -> None: ...

    def rescan(self, why: str) -> None: ...

    def rewatch(self, why: str) -> None: ...

    def watching(self, group: "_ReportingWatchGroup") -> None:
        """The mapping's watch group, once its initial watches are set up."""


@dataclass
class _ReportingWatchGroup(InotifyWatchGroup):
    listener: Any = None

    def on_queue_overflow(self) -> None:
        try:
            super().on_queue_overflow()
        except KeyError:
            self._lost_track()
            return
        if self.listener is not None:
            self.listener.overflow(os.fsdecode(self.path))

    def on_watch_deleted(self, wd) -> None:
        # The root's own watch ends when the folder is deleted, moved away or
        # its file system unmounted (IN_IGNORED after IN_UNMOUNT).
        lost_root = self._active_callbacks_by_watch.get(wd) == self.path
        try:
            super().on_watch_deleted(wd)
        except KeyError:
            self._lost_track()
            return
        if lost_root and self.listener is not None:
            self.listener.root_lost(os.fsdecode(self.path))

    def _lost_track(self) -> None:
        """watchdog 7.1 can lose track of its watches when folders are deleted
        and renamed in quick succession; the KeyError would kill its inotify
        thread, and with it every later event. Instead, the mapping sets up its
        watch afresh and rescans (the listener does it on its own thread)."""
        log.warning("watchdog lost track of its watches under %r; watching it afresh and rescanning",
                    os.fsdecode(self.path))
        if self.listener is not None:
            self.listener.rewatch("watches lost")

    def _add_callback(self, path: bytes) -> None:
        super()._add_callback(path)
        if path not in self._active_callbacks_by_path and os.path.isdir(path) and self.listener is not None:
            self.listener.unwatched(os.fsdecode(path))

    def retry(self, roots: list[str]) -> list[str]:
        """Watch again, with everything under them, folders that could not be watched
        (the limit may have been raised since). Returns the roots still not fully
        watched: from the first one that hits the limit on, the rest are not tried."""
        with self._lock:
            if not self.is_active:
                return roots
            for i, root in enumerate(roots):
                try:
                    self._watch_subtree(os.fsencode(root))
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EMFILE):
                        return roots[i:]
        return []

    def _watch_subtree(self, root: bytes) -> None:
        """Add a watch on `root` and every folder below it that has none (lock held).
        Raises OSError(ENOSPC) at the watch limit; folders that vanish are skipped."""
        for folder, dirs, _files in os.walk(root, followlinks=self.follow_symlink):
            if not self.follow_symlink:
                dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
            if folder in self._active_callbacks_by_path:
                continue
            try:
                wd = self._inotify_fd.add_callback(folder, self.event_mask, self._callback, self._id)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EMFILE):
                    raise
                continue  # gone or unreadable meanwhile
            self._active_callbacks_by_path[folder] = wd
            self._active_callbacks_by_watch[wd] = folder


class _LeanWatch:
    """One inotify watch, standing in for watchdog's `Watch` with a fraction of
    its memory. watchdog keeps a dataclass instance plus a dict of callbacks per
    watched folder, ~330 bytes; a tree of 100,000 folders paid 30 MiB for them.
    Nearly every watch has exactly one callback (the watch group of the one
    mapping whose tree holds the folder), so it sits in two slots, and the
    watch is its own `callbacks` mapping (the part of the dict API watchdog 7.1
    uses: `in`, item assignment, `pop`, `values`, truth); a second callback
    (two mappings watching the same folder) goes to a dict. ~90 bytes in all."""

    __slots__ = ("wd", "mask", "_initial_creation_path", "_id", "_cb", "_more")

    def __init__(self, wd: int, mask: int, path: bytes) -> None:
        self.wd, self.mask, self._initial_creation_path = wd, mask, path
        self._id: Any = None
        self._cb: Any = None
        self._more: dict | None = None

    @property
    def callbacks(self) -> "_LeanWatch":
        return self

    @property
    def is_used(self) -> bool:
        return bool(self)

    def short_str(self) -> str:
        return f"<watch wd={self.wd} path={self._initial_creation_path!r}>"

    def __contains__(self, id_: Any) -> bool:
        return (self._cb is not None and self._id == id_) or (self._more is not None and id_ in self._more)

    def __setitem__(self, id_: Any, callback: Any) -> None:
        if self._cb is None or self._id == id_:
            self._id, self._cb = id_, callback
        else:
            if self._more is None:
                self._more = {}
            self._more[id_] = callback

    def pop(self, id_: Any, default: Any = None) -> Any:
        if self._cb is not None and self._id == id_:
            cb, self._id, self._cb = self._cb, None, None
            if self._more:  # promote one of the others into the slots
                self._id, self._cb = self._more.popitem()
            return cb
        if self._more is not None:
            return self._more.pop(id_, default)
        return default

    def values(self) -> list[Any]:
        if self._cb is None:
            return []
        return [self._cb, *self._more.values()] if self._more else [self._cb]

    def __bool__(self) -> bool:
        return self._cb is not None


class _LeanInotifyFD(InotifyFD):
    """watchdog's inotify reader, keeping its watches as `_LeanWatch`es."""

    def _get_or_create_watch(self, path: bytes, mask: int) -> Any:
        # Same steps as watchdog 7.1's own (inotify_add_watch returns the
        # existing descriptor for a folder watched already).
        wd = inotify_add_watch(self._inotify_fd, path, mask)
        if wd == -1:
            InotifyFD._raise_error()
        watch = self._watch_for_wd.get(wd)
        if watch is None:
            watch = self._watch_for_wd[wd] = _LeanWatch(wd, mask, path)
        return watch


class _ReportingEmitter(InotifyEmitter):
    listeners: dict[str, WatchFaultListener] = {}

    def on_thread_start(self) -> None:
        path = os.fsencode(self.watch.path)
        self._inotify = _ReportingWatchGroup(
            self._inotify_fd,
            path,
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
            listener=self.listeners.get(os.fsdecode(path)),
        )
        if self._inotify.listener is not None:
            self._inotify.listener.watching(self._inotify)


class FaultReportingObserver(BaseObserver):
    """An inotify observer that tells a listener about overflows and folders
    it could not watch. `listen(root, listener)` before `schedule(root)`."""

    def __init__(self) -> None:
        self._inotify_fd = _LeanInotifyFD()
        self._inotify_fd.start()
        super().__init__(_ReportingEmitter, inotify_fd=self._inotify_fd)

    def healthy(self) -> bool:
        """False if watchdog's threads died (then events are no longer seen)."""
        return self.is_alive() and self._inotify_fd.is_alive()

    @staticmethod
    def listen(root: str, listener: WatchFaultListener) -> None:
        _ReportingEmitter.listeners[os.path.abspath(root)] = listener

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._inotify_fd.stop()
        self._inotify_fd.join()
