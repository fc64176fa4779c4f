"""The placement table: which destination holds each file of a mapping with
`placement = most-free` (a pool of destinations, each file on one of them).

One SQLite file per such mapping, shared by its lanes (they run in one daemon,
so one connection behind a lock serves them all). A path's row is written when
the file is first placed, and follows it when it is moved; a delete leaves it, so
a file made again under the same name goes back where it was. Paths are BLOBs of
their exact bytes, as in the Index.
"""
from __future__ import annotations

import threading

from skynet.state.db import dec, enc, under_range
from skynet.state.sqlitelib import connect_wal

SCHEMA = "CREATE TABLE IF NOT EXISTS placed (path BLOB PRIMARY KEY, lane TEXT NOT NULL) WITHOUT ROWID"


class PlacementTable:
    """path -> the destination (lane name) it was placed on."""

    def __init__(self, path: str) -> None:
        self._c = connect_wal(path)
        self._c.execute(SCHEMA)
        self._lock = threading.Lock()

    def owner(self, rel: str) -> str | None:
        with self._lock:
            row = self._c.execute("SELECT lane FROM placed WHERE path = ?", (enc(rel),)).fetchone()
        return row[0] if row else None

    def claim(self, rel: str, lane: str) -> str:
        """Place `rel` on `lane` unless it is placed already; where it is now."""
        with self._lock:
            self._c.execute("INSERT OR IGNORE INTO placed(path, lane) VALUES (?, ?)", (enc(rel), lane))
            return self._c.execute("SELECT lane FROM placed WHERE path = ?", (enc(rel),)).fetchone()[0]

    def move(self, src: str, dest: str) -> list[tuple[str, str]]:
        """The rows of `src` and of everything under it now name `dest` instead (a file
        or folder renamed). Returns (path, lane) of the rows this replaced at `dest`
        whose lane differs from the one the path holds now: copies to remove there."""
        b_src, b_dest = enc(src), enc(dest)
        lo, hi = under_range(src)
        with self._lock:
            self._c.execute("BEGIN IMMEDIATE")
            try:
                rows = self._c.execute("SELECT path, lane FROM placed WHERE path = ? OR (path >= ? AND path < ?)",
                                       (b_src, lo, hi)).fetchall()
                stale = []
                for path, lane in rows:
                    new = b_dest + bytes(path)[len(b_src):]
                    old = self._c.execute("SELECT lane FROM placed WHERE path = ?", (new,)).fetchone()
                    if old and old[0] != lane:
                        stale.append((dec(new), old[0]))
                    self._c.execute("DELETE FROM placed WHERE path = ?", (path,))
                    self._c.execute("INSERT OR REPLACE INTO placed(path, lane) VALUES (?, ?)", (new, lane))
                self._c.execute("COMMIT")
            except BaseException:
                self._c.execute("ROLLBACK")
                raise
        return stale

    def close(self) -> None:
        with self._lock:
            self._c.close()
