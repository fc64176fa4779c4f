"""UniqueQ: the disk-backed, de-duplicating queue of actions.

It keeps the contract of persist-queue's UniqueQ (an identical waiting action is
stored once; actions survive kill -9) but lives as a table of the mapping's state
database, for two measured reasons (see README, "Why not persist-queue"):

* persist-queue commits (and fsyncs) every put: ~2,800 puts/s here, so a
  million-file start-up scan would spend minutes in the queue. Here puts are
  group-committed: the watcher's puts are buffered and written by one thread in
  one transaction per burst, and the scan writes thousands per transaction.
* persist-queue's UniqueQ forgets an item once it is handed out, so a new
  identical action arriving while the first is in flight is silently dropped
  (the lost-last-write trap). Here uniqueness only applies among *waiting*
  actions; an action is deleted only when the handler has finished it.
"""
from __future__ import annotations

import logging
from skynet.state.sqlitelib import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from skynet.state.index import IndexEntry
from skynet.state.db import StateDB, StateError
from skynet.state.queue_store import QueueTable

log = logging.getLogger(__name__)

SEND, DELETE, MOVE = "send", "delete", "move"
KINDS = (SEND, DELETE, MOVE)


class LookUp:
    """Type of LOOK_UP: the Index was not read with the action; read it when it runs."""

    def __repr__(self) -> str:
        return "LOOK_UP"


LOOK_UP = LookUp()


@dataclass(frozen=True)
class Action:
    """One queued hint: make the remote match the disk for these paths.

    `entry` is the Index entry of `src` as read in the same transaction that
    claimed the action (None: the remote has nothing there), or LOOK_UP. The
    handler keeps it only while no older action could still change that entry
    (Handler._vouch); then the worker needs no query of its own. Measured: one
    Index query per file from 8 worker threads cut a bare copy loop's files/s in
    half (SQLite's per-statement locking, each step a GIL hand-off); one join per
    claimed batch costs next to nothing."""

    id: int
    kind: str
    src: str
    dest: str = ""
    entry: "IndexEntry | None | LookUp" = field(default=LOOK_UP, compare=False, repr=False)

    def paths(self) -> tuple[str, ...]:
        return (self.src, self.dest) if self.kind == MOVE else (self.src,)

    def __str__(self) -> str:
        return f"{self.kind} {self.src!r}" + (f" -> {self.dest!r}" if self.kind == MOVE else "")


ActionSpec = tuple[str, str, str]  # (kind, src, dest)


class UniqueQ:
    """The action queue of one mapping.

    put() is cheap and non-blocking (buffered, group-committed by a writer
    thread); put_many() writes synchronously in one transaction (used by the
    start-up scan). `on_put` is called after each commit so the handler wakes
    at once: no polling anywhere.
    """

    def __init__(
        self,
        db: StateDB,
        on_put: Callable[[], None] | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.db = db
        self.table = QueueTable(db)
        self.on_put = on_put or (lambda: None)
        self.on_fatal = on_fatal or (lambda reason: None)
        self._buf: list[ActionSpec] = []
        self._cv = threading.Condition()
        self._closing = False
        self._writing = False
        self.error: Exception | None = None  # set if the writer could not write (disk full...)
        self._writer = threading.Thread(target=self._write_loop, name="uniqueq-writer", daemon=True)
        self._writer.start()

    # -- producers ---------------------------------------------------------
    def put(self, kind: str, src: str, dest: str = "") -> None:
        assert kind in KINDS
        with self._cv:
            self._buf.append((kind, src, dest))
            self._cv.notify_all()

    def put_many(self, specs: Iterable[ActionSpec]) -> int:
        """Insert in one transaction; returns how many were new."""
        added = self.table.insert(specs)
        if added:
            self.on_put()
        return added

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every buffered put is committed."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while (self._buf or self._writing) and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)

    def _write_loop(self) -> None:
        while True:
            with self._cv:
                while not self._buf and not self._closing:
                    self._cv.wait()
                if not self._buf and self._closing:
                    return
                batch, self._buf = self._buf, []
                self._writing = True
            try:
                self.put_many(batch)
            except (sqlite3.Error, StateError, OSError) as exc:
                self.error = exc
                self.on_fatal(f"cannot write the action queue in {self.db.path}: {exc}")
            finally:
                with self._cv:
                    self._writing = False
                    self._cv.notify_all()

    # -- the handler's side ------------------------------------------------
    def reset_inflight(self) -> list[Action]:
        """At start-up: actions claimed by a previous run go back to waiting.
        Returns them: that run died while they were claimed, so what they did on
        the remote is unknown (the daemon re-checks their paths).

        If an identical action is also waiting, the claimed copy is redundant
        and dropped (UPDATE OR IGNORE leaves it at state 1, then it is deleted).
        """
        return [Action(*r) for r in self.table.reset_claimed()]

    def claim(self, limit: int) -> list[Action]:
        """Hand out up to `limit` waiting actions, oldest first, marking them
        claimed, each with the Index entry of its source path (see Action)."""
        return [Action(i, kind, src, dest, entry) for i, kind, src, dest, entry in self.table.claim(limit)]

    def release(self, ids: Iterable[int]) -> None:
        """Give claimed actions back (graceful stop with work still queued)."""
        self.table.release(ids)

    def done(self, action_id: int) -> None:
        """The action's effect is on the remote and in the Index: forget it."""
        self.table.delete(action_id)

    def finish(self, action_id: int, index_rows: list[tuple], settled: Iterable[str]) -> None:
        """finish_many() for one action."""
        self.finish_many([(action_id, index_rows, settled)])

    def finish_many(self, finished: list[tuple[int, list[tuple], Iterable[str]]]) -> None:
        """Finished actions, as (action id, Index rows, paths), in one
        transaction: what the remote now holds goes into the Index, any failure
        recorded for their paths is settled, and the actions leave the queue.
        Either all of it is on disk or none of it (then the actions run again
        after a crash, which is harmless). Rows are written in the order given,
        so a later action's row for a path wins."""
        self.table.finish(finished)

    def __len__(self) -> int:
        return self.table.count() + len(self._buf)

    def close(self) -> None:
        self.flush()
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._writer.join(timeout=10)
