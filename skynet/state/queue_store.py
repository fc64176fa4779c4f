"""The SQL of the action queue: the `queue` table of a mapping's state database.

skynet.state.uniqueq is the queue's behaviour (buffering, group commit, the writer
thread, Action objects); this is only how its rows are stored and changed, so
that every statement on the state database lives beside its schema
(skynet.state.db). Uniqueness applies among *waiting* rows only (state 0), see
the queue_unique_waiting index.
"""
from __future__ import annotations

import time
from typing import Iterable

from skynet.state.index import Index, IndexEntry
from skynet.state.db import FailedActions, StateDB, dec, enc

WAITING, CLAIMED = 0, 1

#: (id, kind, src, dest, Index entry of src or None)
ClaimedRow = tuple[int, str, str, str, "IndexEntry | None"]


class QueueTable:
    def __init__(self, db: StateDB) -> None:
        self.db = db
        self.index = Index(db)

    def insert(self, specs: Iterable[tuple[str, str, str]]) -> int:
        """(kind, src, dest) rows, in one transaction; an identical waiting row
        is not added twice. Returns how many were new."""
        now = time.time()
        with self.db.write() as c:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO queue(kind, src, dest, state, queued_at) VALUES (?, ?, ?, 0, ?)",
                ((k, enc(s), enc(d), now) for k, s, d in specs),
            )
            return c.total_changes - before

    def reset_claimed(self) -> list[tuple[int, str, str, str]]:
        """Every claimed row goes back to waiting, or is dropped where an
        identical one waits (UPDATE OR IGNORE leaves it claimed, then it is
        deleted). Returns (id, kind, src, dest) of the rows that were claimed."""
        with self.db.write() as c:
            rows = c.execute("SELECT id, kind, src, dest FROM queue WHERE state = 1").fetchall()
            c.execute("UPDATE OR IGNORE queue SET state = 0 WHERE state = 1")
            c.execute("DELETE FROM queue WHERE state = 1")
        return [(r[0], r[1], dec(r[2]), dec(r[3])) for r in rows]

    def claim(self, limit: int) -> list[ClaimedRow]:
        """Mark up to `limit` waiting rows claimed, oldest first, each read with
        the Index entry of its source path in the same transaction."""
        with self.db.write() as c:
            rows = c.execute(
                "SELECT q.id, q.kind, q.src, q.dest, e.path IS NOT NULL, e.size, e.mtime_ns, e.mode, e.ino, e.etag "
                "FROM queue AS q LEFT JOIN entries AS e ON e.path = q.src "
                "WHERE q.state = 0 ORDER BY q.id LIMIT ?", (limit,)
            ).fetchall()
            if rows:
                c.executemany("UPDATE queue SET state = 1 WHERE id = ?", ((r[0],) for r in rows))
        out: list[ClaimedRow] = []
        for r in rows:
            src = dec(r[2])
            out.append((r[0], r[1], src, dec(r[3]), IndexEntry(src, *r[5:]) if r[4] else None))
        return out

    def release(self, ids: Iterable[int]) -> None:
        """Claimed rows back to waiting; one still claimed then has an identical
        waiting twin and is redundant, so it goes."""
        ids = list(ids)
        with self.db.write() as c:
            c.executemany("UPDATE OR IGNORE queue SET state = 0 WHERE id = ?", ((i,) for i in ids))
            c.executemany("DELETE FROM queue WHERE id = ? AND state = 1", ((i,) for i in ids))

    def delete(self, action_id: int) -> None:
        with self.db.write() as c:
            c.execute("DELETE FROM queue WHERE id = ?", (action_id,))

    def finish(self, finished: list[tuple[int, list[tuple], Iterable[str]]]) -> None:
        """Finished actions as (id, Index rows, paths), in one transaction: the
        rows go into the Index (its one route, in the order given), failures
        recorded for the paths are settled, the actions leave the queue."""
        with self.db.write() as c:
            rows = [r for _, index_rows, _ in finished for r in index_rows]
            if rows:
                self.index.apply(put=rows, c=c)
            FailedActions.clear_paths(c, [p for _, _, paths in finished for p in paths])
            c.executemany("DELETE FROM queue WHERE id = ?", ((i,) for i, _, _ in finished))

    def count(self) -> int:
        return self.db.conn().execute("SELECT count(*) FROM queue").fetchone()[0]
