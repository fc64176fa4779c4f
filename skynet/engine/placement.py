"""Placement for a pool of destinations (`placement = most-free`).

Each lane of the mapping runs on its own (queue, Index, connection) and is handed
every action, as with `placement = all`; what makes a file go to one destination
only is checked where the reconciler is about to upload it (Lane.owns): a file
not placed yet is placed now, on the destination with most free space, and the
choice is recorded in the mapping's placement table, shared by its lanes, so the
file stays there (an overwrite goes where the file is). A lane asked to send a
file placed elsewhere sends nothing, and removes a copy it holds (one a move left
behind). Deciding at upload time, not when the watcher queues, keeps every lane's
actions hints that converge on the disk, in whatever order lanes run them.

Free space comes from the connection's FreeSpace ability (local statvfs, SFTP
statvfs@openssh.com), or from a `capacity` set on the target minus what its Index
holds (S3 has no free space to ask), the smaller of the two when both are known;
a destination that is down or cannot tell ranks last. Readings are kept a few
seconds, less what was placed since, so a burst of new files is spread rather
than all sent to the destination that looked emptiest at its start.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from skynet.state.placement import PlacementTable
from skynet.state.uniqueq import SEND

log = logging.getLogger(__name__)

#: seconds a free-space reading is used before it is asked again
FREE_TTL = 5.0
#: seconds a choice waits for the lanes still starting
JOIN_WAIT = 60.0


@dataclass
class _Slot:
    free: Callable[[], int | None]  # bytes free now, None when unknown
    up: Callable[[], bool]  # the destination is reachable (one that is not ranks last)
    hint: Callable[[str], None]  # queue a send of a path on this lane (it then checks where the file is)
    reading: int | None = None
    read_at: float = float("-inf")
    placed_since: int = 0  # bytes placed on it since the reading


@dataclass
class Pool:
    """The lanes of one mapping with `placement = most-free`, and its placement table."""

    table: PlacementTable
    clock: Callable[[], float] = time.monotonic
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _expected: frozenset[str] = frozenset()

    def expect(self, lanes: list[str]) -> None:
        """The lanes the config names: the daemon starts them one after the other, and
        a choice made before all of them joined would skip the ones still starting."""
        with self._lock:
            self._expected = frozenset(lanes)

    def join(self, lane: str, free: Callable[[], int | None], up: Callable[[], bool],
             hint: Callable[[str], None]) -> Lane:
        """Lane `lane` takes part (again, after a reload), once it runs: its free space,
        whether it is reachable, and its queue."""
        with self._lock:
            self._slots[lane] = _Slot(free, up, hint)
            self._lock.notify_all()
        return Lane(self, lane)

    def leave(self, lane: str) -> None:
        """Lane `lane` stops (the daemon stops, or a reload removed it): nothing new is placed on it."""
        with self._lock:
            self._slots.pop(lane, None)
            self._expected = self._expected - {lane}  # (a restart expects it again)

    def choose(self, size: int) -> str:
        """The lane with most free space now (the first in lane order on a tie; lanes
        that cannot tell last), charged `size` bytes."""
        with self._lock:
            # (short: lanes start one after the other; one that cannot start is waited for once)
            if not self._lock.wait_for(lambda: self._expected <= set(self._slots), timeout=JOIN_WAIT):
                log.warning("placing files without %s: not started", ", ".join(sorted(self._expected - set(self._slots))))
                self._expected = frozenset(self._slots)
            now = self.clock()
            best, best_key = None, None
            for name, slot in self._slots.items():
                if not slot.up():  # not asked: a call to a destination that is down could hang
                    room = None
                else:
                    if now - slot.read_at >= FREE_TTL:
                        slot.reading, slot.read_at, slot.placed_since = _ask(name, slot.free), now, 0
                    room = None if slot.reading is None else slot.reading - slot.placed_since
                key = (room is not None, room or 0)
                if best_key is None or key > best_key:
                    best, best_key = name, key
            assert best is not None
            self._slots[best].placed_since += size
            return best

    def moved(self, src: str, dest: str) -> None:
        """`src` (a file or a folder) was renamed `dest`: its rows follow it, and a lane
        that held something now placed elsewhere at `dest` is told to look again."""
        for rel, lane in self.table.move(src, dest):
            slot = self._slots.get(lane)
            if slot is not None:
                slot.hint(rel)


def _ask(lane: str, free: Callable[[], int | None]) -> int | None:
    try:
        return free()
    except Exception as exc:  # a destination that cannot answer ranks last
        log.debug("%s: free space unknown: %s", lane, exc)
        return None


@dataclass
class Lane:
    """One lane's view of its pool, for its reconciler."""

    pool: Pool
    name: str

    def owns(self, rel: str, size: int, held: bool) -> bool:
        """Is file `rel` (`size` bytes) to be on this lane? Placed now if it was not
        (on this lane if it `held` it already: a lost table is rebuilt, not reshuffled)."""
        table = self.pool.table
        where = table.owner(rel)
        if where is None:
            where = table.claim(rel, self.name if held else self.pool.choose(size))
            if where != self.name:
                log.debug("%s: %r placed on %s", self.name, rel, where)
        return where == self.name

    def moved(self, src: str, dest: str) -> None:
        self.pool.moved(src, dest)


def capacity_free(capacity: int, held: Callable[[], int]) -> Callable[[], int | None]:
    """Free space of a destination with a configured `capacity`: what its Index does not hold."""
    return lambda: max(0, capacity - held())


def hint_sender(put: Callable[[str, str, str], None]) -> Callable[[str], None]:
    """A lane's queue, as Pool hints use it: a send of the path (its reconciler then
    removes a copy the lane should not hold)."""
    return lambda rel: put(SEND, rel, "")
