"""The notifier's outage spool: a bounded, on-disk FIFO of rows waiting for PostgreSQL.

It lives in the state folder (skynet.state.folder names its file) and, like
every other SQLite file there, its SQL lives beside the state's (see
skynet.state.db). skynet.reporting.notifier decides what to spool and when to drain it.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from skynet.state.sqlitelib import sqlite3

# A row as the notifier appends it: (seq, ..., kind, ...), a plain tuple (cheap).
Row = tuple

PRIO_PROGRESS, PRIO_QUEUED, PRIO_OTHER = 0, 1, 2


def prio_of(kind: str) -> int:
    return PRIO_PROGRESS if kind == "progress" else PRIO_QUEUED if kind == "queued" else PRIO_OTHER


class Spool:
    """A bounded, on-disk FIFO of rows waiting for PostgreSQL (a small SQLite file).

    SQLite rather than JSON lines because the cap drops rows *selectively*
    (progress first), and a delivered prefix is removed without rewriting the
    file. Only the writer thread uses it. `max_bytes` caps the rows' encoded
    size; the file itself is that plus SQLite's small per-row overhead.
    """

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(path, isolation_level=None)
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA journal_size_limit=4194304")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY, prio INTEGER NOT NULL,"
            " size INTEGER NOT NULL, row TEXT NOT NULL)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS spool_prio ON spool(prio, seq)")
        self.count, self.bytes = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()

    def max_seq(self) -> int:
        return self.db.execute("SELECT coalesce(max(seq), 0) FROM spool").fetchone()[0]

    def append(self, rows: Sequence[Row]) -> dict[int, int]:
        """Store rows; returns {prio: rows dropped} if the cap was hit.
        count and bytes are kept up to date incrementally: a long outage
        fills the spool with millions of rows, and appends must stay cheap."""
        recs = []
        added = 0
        for r in rows:
            text = json.dumps(r, separators=(",", ":"))
            recs.append((r[0], prio_of(r[3]), len(text), text))
            added += len(text)
        self.db.execute("BEGIN")
        try:
            cur = self.db.executemany("INSERT OR IGNORE INTO spool(seq, prio, size, row) VALUES (?,?,?,?)", recs)
            inserted = cur.rowcount if cur.rowcount >= 0 else len(recs)
            if inserted != len(recs):  # some were there already (never expected): recount
                self.count, self.bytes = self.db.execute(
                    "SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()
            else:
                self.count += inserted
                self.bytes += added
            dropped = self._enforce_cap()
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self.count, self.bytes = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()
            raise
        return dropped

    def _enforce_cap(self) -> dict[int, int]:
        dropped: dict[int, int] = {}
        for prio in (PRIO_PROGRESS, PRIO_QUEUED, PRIO_OTHER):
            while self.bytes > self.max_bytes:
                victims = self.db.execute(
                    "SELECT seq, size FROM spool WHERE prio = ? ORDER BY seq LIMIT 2000", (prio,)
                ).fetchall()
                if not victims:
                    break
                cut = []
                for seq, size in victims:
                    cut.append((seq,))
                    self.bytes -= size
                    self.count -= 1
                    if self.bytes <= self.max_bytes:
                        break
                self.db.executemany("DELETE FROM spool WHERE seq = ?", cut)
                dropped[prio] = dropped.get(prio, 0) + len(cut)
        return dropped

    def peek(self, limit: int) -> list[Row]:
        """The oldest `limit` rows, in seq order."""
        return [
            tuple(json.loads(t))
            for (t,) in self.db.execute("SELECT row FROM spool ORDER BY seq LIMIT ?", (limit,))
        ]

    def remove_through(self, seq: int) -> None:
        """Forget every row up to `seq` (they are in PostgreSQL)."""
        self.db.execute("BEGIN")
        try:
            n, size = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM spool WHERE seq <= ?",
                                      (seq,)).fetchone()
            self.db.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.count -= n
        self.bytes -= size

    def close(self) -> None:
        try:
            self.db.close()
        except Exception:
            pass


def spooled_max_seq(path: str) -> int:
    """The highest seq in the spool file at `path` (0: none, or no readable
    spool): rows of an earlier run must keep sorting first."""
    if not os.path.exists(path):
        return 0
    try:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT coalesce(max(seq), 0) FROM spool").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0
