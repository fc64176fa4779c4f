"""Watcher: turns file-system events into queued actions.

The event rules of DESIGN.md live here, and only here:

| event                          | action                                              |
|--------------------------------|-----------------------------------------------------|
| file closed after writing      | send, at once                                       |
| file created / modified / chmod| send after `settle` seconds of quiet (a file moved   |
|                                | in, or written through mmap, never reports a close)  |
| folder created (or moved in)   | send of the folder after settle: queues its files    |
|                                | (on a target with folders: makes it, empty too)      |
| folder chmod                   | on a target with folders: send of the folder after   |
|                                | settle (its mode); else nothing                      |
| moved inside the root          | move (one event for a folder move: its contents     |
|                                | move with it)                                        |
| moved from an ignored name     | send of the destination (editor save, x.part -> x)   |
| moved to an ignored name / out | delete (only with complete_sync)                     |
| deleted                        | delete (only with complete_sync)                     |

Events are only hints; the Reconciler checks the disk when the action runs.
Only the event types we use are subscribed, so reading files (our own uploads
included) wakes nothing.

The events come from TreeWatch, one recursive inotify watch per mapping, on our
own inotify layer (skynet/watch/inotify.py, which says why it is ours): it pairs moves,
and tells the mapping (a WatchFaultListener) about what makes it miss events: an
overflowing event queue, folders it cannot watch (the watch limit), the source
folder going away.
"""
from __future__ import annotations

import errno
import heapq
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from skynet.watch import inotify
from skynet.watch.ignore import IgnoreRules
from skynet.engine.mapper import Mapper
from skynet.state.uniqueq import DELETE, MOVE, SEND, UniqueQ

log = logging.getLogger(__name__)

# What a TreeWatch reports (Event.kind).
CREATED, MODIFIED, ATTRIB, CLOSED, MOVED, DELETED = "created", "modified", "attrib", "closed", "moved", "deleted"


@dataclass(frozen=True, slots=True)
class Event:
    """One change under a watched root: absolute paths; `dest` for MOVED only."""

    kind: str
    path: str
    is_dir: bool = False
    dest: str = ""


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


class Watcher:
    """The event rules for one mapping's source folder (TreeWatch calls `dispatch`)."""

    def __init__(
        self,
        mapper: Mapper,
        ignore: IgnoreRules,
        queue: UniqueQ,
        complete_sync: bool,
        settle: float = 1.0,
        on_rescan: Callable[[str], None] | None = None,
        folders: bool = False,
    ) -> None:
        self.mapper = mapper
        self.ignore = ignore
        self.queue = queue
        self.complete_sync = complete_sync
        self.debouncer = Debouncer(settle, lambda rel: self.queue.put(SEND, rel))
        self.on_rescan = on_rescan or (lambda why: None)
        self.folders = folders  # the target has folders (Folders): a folder's mode is mirrored
        self.events = 0

    def dispatch(self, event: Event) -> None:  # called on the TreeWatch's thread
        self.events += 1
        try:
            self._handle(event)
        except Exception:  # never let one odd event stop the watch
            log.exception("could not handle event %r", event)

    def _handle(self, event: Event) -> None:
        if event.kind == MOVED:
            self._moved(event)
            return
        rel = self.mapper.rel(event.path)
        if rel is None:
            return
        if rel == "":
            if event.kind == DELETED:
                log.error("the source folder %r itself was deleted or moved away", self.mapper.source)
                self.on_rescan("source folder deleted")
            return
        if self.ignore.ignored(rel, is_dir=event.is_dir):
            return
        if event.kind == CLOSED:
            self.debouncer.cancel(rel)
            self.queue.put(SEND, rel)
        elif event.kind == ATTRIB and event.is_dir:
            if self.folders:
                self.debouncer.touch(rel)
        elif event.kind in (CREATED, MODIFIED, ATTRIB):
            self.debouncer.touch(rel)
        elif event.kind == DELETED:
            self.debouncer.cancel_under(rel)
            if self.complete_sync:
                self.queue.put(DELETE, rel)

    def _moved(self, event: Event) -> None:
        is_dir = event.is_dir
        src = self.mapper.rel(event.path)
        dest = self.mapper.rel(event.dest)
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


# -- watching a tree ----------------------------------------------------------


class WatchFaultListener:
    """What a mapping does about watch faults (see skynet/engine/daemon.py). Called on the
    TreeWatch's thread (unwatched: also on the thread that starts the watch)."""

    def overflow(self, root: str) -> None: ...

    def unwatched(self, folder: str) -> None: ...

    def root_lost(self, root: str) -> None: ...

    def rescan(self, why: str) -> None: ...

    def rewatch(self, why: str) -> None: ...


WATCH_MASK = (inotify.IN_CREATE | inotify.IN_MODIFY | inotify.IN_ATTRIB | inotify.IN_CLOSE_WRITE
              | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO | inotify.IN_DELETE | inotify.IN_DELETE_SELF
              | inotify.IN_MOVE_SELF | inotify.IN_ONLYDIR | inotify.IN_DONT_FOLLOW | inotify.IN_EXCL_UNLINK)
LIMIT_ERRNOS = (errno.ENOSPC, errno.EMFILE)  # inotify_add_watch at fs.inotify.max_user_watches
MOVE_WAIT = 0.5  # how long a lone IN_MOVED_FROM waits for its IN_MOVED_TO (watchdog's delay too)


class WatchLimit(Exception):
    """inotify_add_watch hit the watch limit (internal to TreeWatch)."""


class TreeWatch:
    """A recursive inotify watch on one folder, on a thread of its own.

    The watch table is lean on purpose: per watched folder, its path relative to the
    root (one bytes object) in two dicts, wd -> path and path -> wd: ~150 bytes with
    the dict slots, for trees of 100,000 folders. New folders are watched as they
    appear (IN_CREATE, IN_MOVED_TO); a folder moved inside the tree keeps its watches
    (the paths under it are renamed in the table); a folder moved out loses them.

    Moves are paired by cookie: the kernel queues IN_MOVED_FROM and its IN_MOVED_TO
    together, so a lone IN_MOVED_FROM is a move out of the tree as soon as any other
    event follows it, or after MOVE_WAIT when it was the last one read.

    Faults go to the listener: IN_Q_OVERFLOW (events lost: the table is checked
    against the disk, since lost moves and creations make it wrong, and the listener
    rescans); a folder that cannot be watched at the watch limit (the folders after
    it are not tried: each is reported once, with what is below it); the root
    deleted, moved away or unmounted (the watch ends; the mapping watches it afresh
    when it is back)."""

    def __init__(self, root: str, handler: Callable[[Event], None], listener: WatchFaultListener | None = None,
                 move_wait: float = MOVE_WAIT) -> None:
        self.root = os.path.abspath(root)
        self._root_b = os.fsencode(self.root)
        self._handler = handler
        self._listener = listener
        self._move_wait = move_wait
        self._wd_path: dict[int, bytes] = {}  # wd -> path relative to the root (b"" for the root)
        self._path_wd: dict[bytes, int] = {}
        self._moves: dict[int, tuple[bytes, bool, float]] = {}  # cookie -> (path, is_dir, deadline)
        self._lock = threading.Lock()  # the table: the watch thread, and retry() from the scan thread
        self._ino = inotify.Inotify()
        self._stopping = False
        self.ended = False  # stopped, or the root went away: not a fault
        self._thread = threading.Thread(target=self._run, name=f"watch-{os.path.basename(self.root) or '/'}",
                                        daemon=True)

    # -- life cycle ----------------------------------------------------------
    def start(self) -> "TreeWatch":
        """Watch the root and everything below it, then read events on the thread.
        OSError if the root itself cannot be watched (ENOSPC: the watch limit)."""
        try:
            with self._lock:
                self._add(b"")
                self._watch_below(b"", report=True)
        except BaseException:
            self._ino.close()
            raise
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._ino.interrupt()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            with self._lock:
                self._ino.close()
                self._wd_path.clear()
                self._path_wd.clear()
            self.ended = True

    def healthy(self) -> bool:
        """False if the thread died unexpectedly (then events are no longer seen)."""
        return self.ended or self._thread.is_alive()

    def watched(self) -> int:
        """How many folders are watched."""
        return len(self._wd_path)

    def is_watched(self, folder: str) -> bool:
        rel = self._rel(folder)
        return rel is not None and rel in self._path_wd

    def retry(self, roots: list[str]) -> list[str]:
        """Watch again, with everything under them, folders that could not be watched
        (the limit may have been raised since). Returns the roots still not fully
        watched: from the first one that hits the limit on, the rest are not tried."""
        with self._lock:
            if self._stopping or self.ended:
                return roots
            for i, root in enumerate(roots):
                rel = self._rel(root)
                if rel is None:
                    continue
                try:
                    if rel not in self._path_wd and self._add(rel) is None:
                        continue  # gone meanwhile
                    self._watch_below(rel, report=False)
                except WatchLimit:
                    return roots[i:]
        return []

    # -- the table -----------------------------------------------------------
    def _abs(self, rel: bytes) -> bytes:
        return self._root_b + b"/" + rel if rel else self._root_b

    def _rel(self, folder: str) -> bytes | None:
        path = os.fsencode(os.path.abspath(folder))
        if path == self._root_b:
            return b""
        prefix = self._root_b.rstrip(b"/") + b"/"
        return path[len(prefix):] if path.startswith(prefix) else None

    def _add(self, rel: bytes) -> int | None:
        """Watch one folder (lock held). None if it is gone or not a folder now;
        WatchLimit at the watch limit; the root's other errors are raised."""
        try:
            wd = self._ino.add_watch(self._abs(rel), WATCH_MASK)
        except OSError as exc:
            if exc.errno in LIMIT_ERRNOS:
                if not rel:
                    raise
                raise WatchLimit() from exc
            if not rel:
                raise
            return None
        old = self._wd_path.get(wd)
        if old is not None and old != rel:
            self._path_wd.pop(old, None)  # the same folder, known under an older path
        self._wd_path[wd] = rel
        self._path_wd[rel] = wd
        return wd

    def _watch_below(self, top: bytes, report: bool) -> None:
        """Watch every folder below `top` that has no watch yet (lock held): a folder's
        sub-folders, then each one's tree (symbolic links are not followed). At the watch limit: with `report`, each
        folder not watched is told to the listener (once, for what is below it too) and no
        more are tried; without, WatchLimit is raised."""
        limit = False
        stack = [top]
        while stack:
            base = stack.pop()
            try:
                with os.scandir(self._abs(base)) as entries:
                    names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue  # gone or unreadable meanwhile
            below: list[bytes] = []
            for name in names:
                rel = base + b"/" + name if base else name
                if rel in self._path_wd:
                    below.append(rel)
                    continue
                if not limit:
                    try:
                        if self._add(rel) is not None:
                            below.append(rel)
                        continue
                    except WatchLimit:
                        if not report:
                            raise
                        limit = True
                self._unwatched(rel)
            stack.extend(reversed(below))

    def _unwatched(self, rel: bytes) -> None:
        if self._listener is not None:
            self._listener.unwatched(os.fsdecode(self._abs(rel)))

    def _forget(self, wd: int) -> None:
        rel = self._wd_path.pop(wd, None)
        if rel is not None and self._path_wd.get(rel) == wd:
            del self._path_wd[rel]

    def _under(self, rel: bytes) -> list[bytes]:
        prefix = rel + b"/"
        return [p for p in self._path_wd if p == rel or p.startswith(prefix)]

    def _renamed(self, src: bytes, dest: bytes) -> None:
        """A folder moved inside the tree: its watches (and those below) stay; their paths change."""
        for old in self._under(src):
            wd = self._path_wd.pop(old)
            new = dest + old[len(src):]
            self._wd_path[wd] = new
            self._path_wd[new] = wd

    def _drop_under(self, rel: bytes) -> None:
        """A folder moved out of the tree: stop watching it and what is below it."""
        for path in self._under(rel):
            wd = self._path_wd.pop(path)
            self._wd_path.pop(wd, None)
            self._ino.rm_watch(wd)

    def _resync(self) -> None:
        """After an overflow: lost moves and creations leave the table wrong. Watch the
        tree afresh (add_watch returns the same descriptor for a folder watched already,
        so nothing is missed meanwhile), then drop the watches no folder has now."""
        before = set(self._wd_path)
        self._wd_path.clear()
        self._path_wd.clear()
        self._moves.clear()
        try:
            if self._add(b"") is None:
                return
        except OSError:
            return  # the root is gone: IN_IGNORED / IN_DELETE_SELF will say so
        self._watch_below(b"", report=True)
        for wd in before - set(self._wd_path):
            self._ino.rm_watch(wd)

    # -- the events ----------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping and not self.ended:
                timeout = None
                if self._moves:
                    timeout = max(0.0, min(d for _p, _i, d in self._moves.values()) - time.monotonic())
                events = self._ino.read(timeout)
                if self._stopping:
                    break
                try:
                    with self._lock:
                        out = self._translate(events)
                except Exception:  # a bug here must not leave the mapping deaf
                    log.exception("watching %r: could not follow the events; watching it afresh", self.root)
                    if self._listener is not None:
                        self._listener.rewatch("watch error")
                    continue
                for ev in out:
                    self._handler(ev)
        finally:
            self.ended = self.ended or self._stopping
            if self.ended:  # the root went away: its watches (a moved tree's included) go now
                with self._lock:
                    self._ino.close()
                    self._wd_path.clear()
                    self._path_wd.clear()

    def _translate(self, events: list[inotify.RawEvent]) -> list[Event]:
        """Raw records to Events, in order (lock held); faults go to the listener."""
        out: list[Event] = []
        overflow = lost = False
        for ev in events:
            mask = ev.mask
            if mask & inotify.IN_Q_OVERFLOW:
                overflow = True
                continue
            if self._moves and not (mask & inotify.IN_MOVED_TO and ev.cookie in self._moves):
                self._moved_out(out)  # a lone IN_MOVED_FROM: its IN_MOVED_TO would have come first
            rel = self._wd_path.get(ev.wd)
            if rel is None:
                continue  # a watch dropped already (its IN_IGNORED, or late events)
            if not ev.name:  # about a watched folder itself
                if rel == b"" and mask & (inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_UNMOUNT
                                          | inotify.IN_IGNORED):
                    lost = True
                    break
                if mask & inotify.IN_IGNORED:
                    self._forget(ev.wd)
                continue
            self._one(out, rel + b"/" + ev.name if rel else ev.name, mask, ev.cookie)
        if self._moves and not events:
            self._moved_out(out, time.monotonic())
        if lost:
            self._root_lost(out)
        elif overflow:
            self._resync()
            if self._listener is not None:
                self._listener.overflow(self.root)
        return out

    def _one(self, out: list[Event], rel: bytes, mask: int, cookie: int) -> None:
        is_dir = bool(mask & inotify.IN_ISDIR)
        if mask & inotify.IN_MOVED_FROM:
            self._moves[cookie] = (rel, is_dir, time.monotonic() + self._move_wait)
            return
        path = os.fsdecode(self._abs(rel))
        if mask & inotify.IN_MOVED_TO:
            src = self._moves.pop(cookie, None)
            if src is not None:
                if is_dir:
                    self._renamed(src[0], rel)
                out.append(Event(MOVED, os.fsdecode(self._abs(src[0])), is_dir, path))
                return
            mask = inotify.IN_CREATE  # moved in from outside: new here
        if mask & inotify.IN_CREATE:
            if is_dir:
                self._new_folder(rel)
            out.append(Event(CREATED, path, is_dir))
        elif mask & inotify.IN_DELETE:
            out.append(Event(DELETED, path, is_dir))  # the folder's own watch ends with IN_IGNORED
        elif is_dir:
            if mask & inotify.IN_ATTRIB:
                out.append(Event(ATTRIB, path, True))  # its mode, kept where the target has folders
            return
        elif mask & inotify.IN_CLOSE_WRITE:
            out.append(Event(CLOSED, path))
        elif mask & inotify.IN_MODIFY:
            out.append(Event(MODIFIED, path))
        elif mask & inotify.IN_ATTRIB:
            out.append(Event(ATTRIB, path))

    def _new_folder(self, rel: bytes) -> None:
        """Watch a new folder and what is already below it (files made before its watch
        existed are the folder's send's to find)."""
        try:
            if self._add(rel) is None:
                return
        except WatchLimit:
            self._unwatched(rel)
            return
        self._watch_below(rel, report=True)

    def _moved_out(self, out: list[Event], now: float | None = None) -> None:
        """Pending IN_MOVED_FROMs (all of them, or those past their wait at `now`)
        whose pair never came: moved out of the tree, i.e. deleted here."""
        for cookie, (rel, is_dir, deadline) in list(self._moves.items()):
            if now is not None and deadline > now:
                continue
            del self._moves[cookie]
            if is_dir:
                self._drop_under(rel)
            out.append(Event(DELETED, os.fsdecode(self._abs(rel)), is_dir))

    def _root_lost(self, out: list[Event]) -> None:
        """The root was deleted, moved away or unmounted: the watch ends here."""
        self.ended = True
        self._moves.clear()
        out.append(Event(DELETED, self.root, True))
        if self._listener is not None:
            self._listener.root_lost(self.root)


class Observer:
    """The daemon's watches: one TreeWatch per mapping."""

    def __init__(self) -> None:
        self._watches: set[TreeWatch] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Nothing to start: each watch has its own thread (kept for the daemon's start order)."""

    def schedule(self, handler: Watcher, root: str, listener: WatchFaultListener | None = None) -> TreeWatch:
        """Watch `root` recursively for `handler`; OSError if the root cannot be watched."""
        watch = TreeWatch(root, handler.dispatch, listener).start()
        with self._lock:
            self._watches.add(watch)
        return watch

    def unschedule(self, watch: TreeWatch) -> None:
        with self._lock:
            self._watches.discard(watch)
        watch.stop()

    def healthy(self) -> bool:
        """False if a watch's thread died (then events are no longer seen)."""
        with self._lock:
            return all(w.healthy() for w in self._watches)

    def stop(self) -> None:
        with self._lock:
            watches, self._watches = list(self._watches), set()
        for w in watches:
            w.stop()

    def join(self, timeout: float | None = None) -> None:
        """The watches' threads are joined by stop()."""
