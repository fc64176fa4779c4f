"""Pruning in the daemon: removes, per mapping, the kept versions its retention lets go.

It must never cost the mirror anything and never lose its place:

- At most one run an hour per mapping. The start of the last run is kept in the
  mapping's state database (meta `versions_prune_last`), so a daemon restarted
  every few minutes does not prune every few minutes; the first run comes an hour
  after the mapping's first start, never during its initial sync.
- Bounded work per run: at most `max_paths` paths looked at and `max_removals`
  versions removed. Where a run stops, the cursor (meta `versions_prune_cursor`,
  the last path it finished) says where the next one starts; a pass that reaches
  the end starts over from the first path next time.
- kill -9 at any point loses nothing: each removal is one atomic call
  (VersionStore.remove), the cursor only moves past a path once all of its
  removals are done (it is saved after each path that had some, and every
  CURSOR_EVERY paths), and the rules give the same answer on a path half pruned
  (what a pass keeps, a second pass over it keeps too), so the next run simply
  looks at that path again. A version already gone (RemoteNotFound) is fine.
- Its own thread at the lowest CPU and I/O priority; it looks at the stop flag
  between paths and between removals, so a daemon stop waits for one store call
  at most.

Paths are visited in the order the store lists them, by path, which is byte order
(S3 lists keys so; the versions area walks its folders sorted): the cursor is
compared in that order.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from connections.contract.xcon import PermanentError, RemoteNotFound
from skynet.state.db import StateDB
from skynet.versions.model import Version, VersionStore
from skynet.versions.retention import NS, Policy, to_remove, with_max_age

log = logging.getLogger("skynet.versions.prune")

META_LAST = "versions_prune_last"  # wall-clock seconds when the last run started
META_CURSOR = "versions_prune_cursor"  # the last path the current pass finished ("" or absent: none yet)

INTERVAL = 3600.0
MAX_PATHS = 50_000
MAX_REMOVALS = 5_000
#: the cursor is saved after every path that had removals, else every this many paths (each save is a write
#: transaction beside the mirror's): a kill -9 makes the next run look at up to this many paths again, no more
CURSOR_EVERY = 500


@dataclass
class RunResult:
    """What one run did."""

    paths: int = 0  # paths looked at (not those skipped to reach the cursor)
    removed: int = 0
    finished: bool = False  # the pass reached the last path; the next run starts a new one
    stopped: bool = False  # the daemon is stopping; the cursor is where the run got to


def by_path(versions: Iterable[Version]) -> Iterator[list[Version]]:
    """The store's stream (grouped by path) as one list per path."""
    group: list[Version] = []
    for v in versions:
        if group and v.rel != group[0].rel:
            yield group
            group = []
        group.append(v)
    if group:
        yield group


StoreOpener = Callable[[], contextlib.AbstractContextManager[VersionStore]]


class Pruner:
    """Prunes one mapping's versions; `run_once` is one bounded run, `start` runs them
    hourly on a thread of their own, each on a store from `open_store` (a connection
    of its own, opened for the run and closed after it)."""

    def __init__(self, name: str, open_store: StoreOpener, db: StateDB, policy: Policy,
                 clock: Callable[[], float] = time.time, interval: float = INTERVAL,
                 max_paths: int = MAX_PATHS, max_removals: int = MAX_REMOVALS) -> None:
        self.name = name
        self.open_store = open_store
        self.db = db
        self.policy = policy
        self.clock = clock
        self.interval = interval
        self.max_paths = max_paths
        self.max_removals = max_removals
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one run ---------------------------------------------------------------
    def wait_seconds(self) -> float:
        """Seconds until the next run may start (0: now). A mapping that never pruned
        counts its first look as a run: its first pruning comes an interval later, not
        during the initial sync (nothing kept yet needs it sooner)."""
        last = self.db.get_meta(META_LAST)
        if last is None:
            self.db.set_meta(META_LAST, repr(self.clock()))
            return self.interval
        return max(0.0, float(last) + self.interval - self.clock())

    def run_once(self, store: VersionStore) -> RunResult:
        """One bounded run from the saved cursor; records its start first, so that a
        run cut short (kill -9, an error) still counts for 'at most hourly'."""
        now = self.clock()
        self.db.set_meta(META_LAST, repr(now))
        cursor = os.fsencode(self.db.get_meta(META_CURSOR) or "")
        result = RunResult()
        saved, done = cursor, cursor  # the cursor in the database; the last path finished
        for versions in by_path(store.history("")):
            rel = versions[0].rel
            if cursor and os.fsencode(rel) <= cursor:
                continue
            if self._stop.is_set() or result.paths >= self.max_paths or result.removed >= self.max_removals:
                result.stopped = self._stop.is_set()
                break
            removed_before = result.removed
            if not self._prune_path(store, versions, int(now * NS), result):
                result.stopped = True
                break
            result.paths += 1
            done = os.fsencode(rel)
            if result.removed > removed_before or result.paths % CURSOR_EVERY == 0:
                self.db.set_meta(META_CURSOR, rel)
                saved = done
        else:
            self.db.set_meta(META_CURSOR, "")
            result.finished = True
            return result
        if done != saved:
            self.db.set_meta(META_CURSOR, os.fsdecode(done))
        return result

    def _prune_path(self, store: VersionStore, versions: list[Version], now_ns: int, result: RunResult) -> bool:
        """Remove what the rules let go of one path; False if stopped half-way."""
        for v in to_remove(versions, self.policy, now_ns):
            if self._stop.is_set():
                return False
            try:
                store.remove(v)
            except RemoteNotFound:
                pass  # gone already: a run killed just after removing it, or removed by hand
            except PermanentError as exc:  # the store will not (its bytes are a current file's, after a move)
                log.debug("%s: version of %r since %d not removed: %s", self.name, v.rel, v.since_ns, exc)
                continue
            result.removed += 1
        return True

    # -- the thread ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"{self.name}-prune", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        from skynet.engine import priority

        priority.lower(19, "idle")  # this thread only: Linux priorities are per thread
        while not self._stop.wait(self.wait_seconds()):
            try:
                with self.open_store() as store:
                    r = self.run_once(store)
            except Exception as exc:  # the remote away, a store error: the next run tries again
                log.warning("%s: pruning versions stopped: %s; trying again in %.0f s", self.name, exc,
                            self.interval)
                continue
            if r.removed or not r.finished:
                log.info("%s: pruned %d version(s) of %d path(s) (keeping %s)%s", self.name, r.removed, r.paths,
                         self.policy.describe(), "" if r.finished else "; the next run continues from there")


def pruner_for(cfg, m, db: StateDB) -> Pruner:
    """The pruner of mapping `m` (versions on): its retention, a connection of its own per run."""
    from skynet.versions.session import connected_store

    return Pruner(m.name, lambda: connected_store(cfg, m), db, with_max_age(m.versions_keep, m.versions_max_age))
