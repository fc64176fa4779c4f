"""A job's item table: one SQLite file per job in the state folder, a row per item.

Why SQLite and not memory: a job may hold ten million items, and after a crash
(kill -9, a reboot) every finished item must stay finished. Every write is a
transaction of many rows (intake inserts thousands per commit; the runner claims
a batch of due items at once and records every result that arrived while the
previous commit ran), so the table keeps up with hundreds of items a second on
one disk. WAL with synchronous=NORMAL: a power cut may lose the last commits,
never corrupt the table; a lost `done` makes the item run again, and the
transfer then finds it at the target and skips it.

    items      one row per item: what (source, dest, size, md5), its state
               (status, error class, HTTP/FTP status, bytes, attempts, times,
               the last error), its own resume state (JSON) and when it is due
    problems   lines of the list that made no item (malformed, duplicate
               destination), with their line numbers
    job_info   key -> JSON: the list's identity, intake progress, run progress
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from skynet.jobs.item import Item
from skynet.state.sqlitelib import connect_wal, sqlite3

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
STATUSES = (QUEUED, RUNNING, DONE, FAILED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY,
    line INTEGER,
    source TEXT NOT NULL,
    dest TEXT NOT NULL UNIQUE,
    size INTEGER, md5 TEXT, mtime_ns INTEGER, mode INTEGER,
    status TEXT NOT NULL DEFAULT 'queued',
    error_class TEXT, status_code INTEGER,
    bytes INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_at REAL, last_at REAL,
    error TEXT,
    resume TEXT,
    next_at REAL NOT NULL DEFAULT 0,
    gen INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_due ON items(status, next_at);
CREATE TABLE IF NOT EXISTS problems(line INTEGER, kind TEXT, text TEXT);
CREATE TABLE IF NOT EXISTS job_info(key TEXT PRIMARY KEY, value TEXT);
"""

ITEM_COLUMNS = "line, source, dest, size, md5, mtime_ns, mode, status, error_class, error, gen"
REPORT_COLUMNS = ("line", "source", "dest", "status", "error_class", "status_code", "bytes", "attempts",
                  "first_at", "last_at", "error")


def by_pages(page_after: Callable[[int], list[tuple]]) -> Iterator[tuple]:
    """Rows read a page at a time by their id (keyset paging: each page starts
    after the last id seen, so a report of ten million items holds one page in
    memory and no page costs more than the first). `page_after(last_id)` returns
    rows whose first column is the id; they are yielded without it."""
    last = -1
    while True:
        page = page_after(last)
        if not page:
            return
        last = page[-1][0]
        for r in page:
            yield r[1:]


@dataclass(frozen=True)
class NewItem:
    """A row intake adds: an item, or (status failed) an item refused at once
    (an unsupported scheme: one clear error per item)."""

    line: int
    item: Item
    status: str = QUEUED
    error_class: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Claimed:
    """An item the runner took: its row id, the item, its attempts so far
    (this one included) and its saved resume state."""

    id: int
    item: Item
    attempts: int
    resume: dict | None


@dataclass(frozen=True)
class Outcome:
    """What one attempt of an item came to, recorded by ItemTable.record().

    kind: done; failed (for good); retry (queued again at `next_at`, the attempt
    counted); release (queued again at `next_at`, the attempt not counted: the
    window closed or the host is backing off)."""

    id: int
    kind: str
    at: float
    bytes: int = 0
    size: int | None = None
    error_class: str | None = None
    status_code: int | None = None
    error: str | None = None
    next_at: float = 0.0


class ItemTable:
    """The item table of one job. Thread-safe: each thread has its own connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.conn().executescript(SCHEMA)

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "c", None)
        if c is None:
            c = connect_wal(self.path)
            self._local.c = c
            with self._lock:
                self._all.append(c)
        return c

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                c.close()
            self._all.clear()
        self._local = threading.local()

    # -- job_info ---------------------------------------------------------------

    def get(self, key: str) -> dict | None:
        row = self.conn().execute("SELECT value FROM job_info WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set(self, key: str, value: dict, c: sqlite3.Connection | None = None) -> None:
        (c or self.conn()).execute("INSERT OR REPLACE INTO job_info(key, value) VALUES(?, ?)", (key, json.dumps(value)))

    # -- intake -----------------------------------------------------------------

    def add(self, rows: list[NewItem], gen: int, info: dict[str, dict],
            problems: list[tuple[int, str, str]] = ()) -> list[tuple[int, str]]:  # type: ignore[assignment]
        """Insert a batch of items read in pass `gen`, and `info` (intake's
        progress) and its `problems` in the same transaction, so a crash never loses or repeats a
        line. An item already in the table from an earlier pass with the same
        source is kept as it is (a finished item stays finished); one whose
        destination now comes from another source starts over; a second line
        with a destination already taken in this pass is not added: returned as
        (line, text) for the problems. Duplicates are rare: the batch goes in
        with one executemany, and only a batch that did not all go in is looked
        at row by row."""
        c = self.conn()
        dups: list[tuple[int, str]] = []
        c.execute("BEGIN IMMEDIATE")
        try:
            before = c.total_changes
            c.executemany(
                f"INSERT INTO items({ITEM_COLUMNS}) VALUES(?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(dest) DO UPDATE SET gen=excluded.gen, line=excluded.line "
                "WHERE items.gen < excluded.gen AND items.source = excluded.source",
                [self._values(r, gen) for r in rows])
            if c.total_changes - before < len(rows):
                dups = self._sort_out(c, rows, gen)
            self.add_problems([*problems, *((line, "duplicate", text) for line, text in dups)], c)
            for key, value in info.items():
                self.set(key, value, c)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return dups

    @staticmethod
    def _values(r: NewItem, gen: int) -> tuple:
        i = r.item
        return (r.line, i.source, i.dest, i.size, i.md5, i.mtime_ns, i.mode, r.status, r.error_class, r.error, gen)

    def _sort_out(self, c: sqlite3.Connection, rows: list[NewItem], gen: int) -> list[tuple[int, str]]:
        """The rows of a batch that did not go in: duplicates of this pass, or
        destinations that now come from another source (replaced)."""
        dups = []
        for r in rows:
            found = c.execute("SELECT id, gen, line, source FROM items WHERE dest=?", (r.item.dest,)).fetchone()
            rid, rgen, rline, rsource = found
            if rgen == gen and (rline != r.line or rsource != r.item.source):
                dups.append((r.line, f"destination {r.item.dest!r} is already that of line {rline}: not copied twice"))
            elif rgen < gen:  # the list now names another source for this destination: a new item
                c.execute("UPDATE items SET line=?, source=?, size=?, md5=?, mtime_ns=?, mode=?, status=?, "
                          "error_class=?, error=?, gen=?, status_code=NULL, bytes=0, attempts=0, resume=NULL, "
                          "next_at=0 WHERE id=?", self._values(r, gen) + (rid,))
        return dups

    def add_problems(self, problems: Iterable[tuple[int, str, str]], c: sqlite3.Connection | None = None) -> None:
        (c or self.conn()).executemany("INSERT INTO problems(line, kind, text) VALUES(?, ?, ?)", list(problems))

    def start_pass(self, gen: int) -> None:
        """A new reading of the whole list: its problems are found again."""
        self.conn().execute("DELETE FROM problems")

    def drop_unseen(self, gen: int) -> int:
        """After a complete pass `gen`: items the list no longer names go, unless
        finished (a finished item is kept, and reported)."""
        c = self.conn()
        cur = c.execute("DELETE FROM items WHERE gen < ? AND status != 'done'", (gen,))
        return cur.rowcount

    # -- the runner ---------------------------------------------------------------

    def requeue_running(self) -> int:
        """Rows left `running` by a run that died: queued again, the attempt not
        counted (it was cut short, not failed). Called at start, under the job's lock."""
        cur = self.conn().execute("UPDATE items SET status='queued', attempts=max(attempts-1, 0) WHERE status='running'")
        return cur.rowcount

    def claim(self, limit: int, now: float) -> list[Claimed]:
        """Up to `limit` due items, oldest due first, marked running (attempt counted), in one transaction."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            rows = c.execute("SELECT id, source, dest, size, md5, mtime_ns, mode, attempts, resume FROM items "
                             "WHERE status='queued' AND next_at<=? ORDER BY next_at LIMIT ?", (now, limit)).fetchall()
            c.executemany("UPDATE items SET status='running', attempts=attempts+1, first_at=coalesce(first_at, ?), "
                          "last_at=? WHERE id=?", [(now, now, r[0]) for r in rows])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return [Claimed(r[0], Item(r[1], r[2], r[3], r[4], r[5], r[6]), r[7] + 1, json.loads(r[8]) if r[8] else None)
                for r in rows]

    def next_due(self) -> float | None:
        """When the next queued item is due (None: nothing queued)."""
        row = self.conn().execute("SELECT min(next_at) FROM items WHERE status='queued'").fetchone()
        return row[0]

    def pending(self) -> int:
        """Items queued or running."""
        c = self.conn()
        return sum(c.execute("SELECT count(*) FROM items WHERE status=?", (s,)).fetchone()[0] for s in (QUEUED, RUNNING))

    def record(self, outcomes: list[Outcome]) -> None:
        """Every outcome in one transaction."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            for o in outcomes:
                if o.kind == DONE:
                    c.execute("UPDATE items SET status='done', bytes=bytes+?, size=coalesce(?, size), last_at=?, "
                              "error_class=NULL, status_code=NULL, error=NULL, resume=NULL WHERE id=?",
                              (o.bytes, o.size, o.at, o.id))
                elif o.kind == FAILED:
                    c.execute("UPDATE items SET status='failed', bytes=bytes+?, last_at=?, error_class=?, "
                              "status_code=?, error=? WHERE id=?",
                              (o.bytes, o.at, o.error_class, o.status_code, o.error, o.id))
                elif o.kind == "retry":
                    c.execute("UPDATE items SET status='queued', bytes=bytes+?, last_at=?, error_class=?, "
                              "status_code=?, error=?, next_at=? WHERE id=?",
                              (o.bytes, o.at, o.error_class, o.status_code, o.error, o.next_at, o.id))
                else:  # release: the attempt did not count
                    c.execute("UPDATE items SET status='queued', bytes=bytes+?, attempts=max(attempts-1, 0), "
                              "next_at=? WHERE id=?", (o.bytes, o.next_at, o.id))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def save_resume(self, item_id: int, state: dict | None) -> None:
        """An item's own resume state, committed at once: a kill -9 right after
        a part was sent must still know the part."""
        self.conn().execute("UPDATE items SET resume=? WHERE id=?",
                            (json.dumps(state) if state is not None else None, item_id))

    def requeue_failed(self, classes: list[str] | None = None) -> int:
        """Failed items queued again with fresh attempts: all, or those of `classes`."""
        sql = "UPDATE items SET status='queued', attempts=0, next_at=0 WHERE status='failed'"
        args: list = []
        if classes:
            sql += f" AND error_class IN ({','.join('?' * len(classes))})"
            args = list(classes)
        return self.conn().execute(sql, args).rowcount

    # -- reading: status and report -----------------------------------------------

    def counts(self) -> dict[tuple[str, str | None], int]:
        """(status, error class) -> items."""
        rows = self.conn().execute("SELECT status, error_class, count(*) FROM items GROUP BY status, error_class")
        return {(s, e): n for s, e, n in rows}

    def bytes_done(self) -> int:
        return self.conn().execute("SELECT coalesce(sum(bytes), 0) FROM items").fetchone()[0]

    def problem_counts(self) -> dict[str, int]:
        return dict(self.conn().execute("SELECT kind, count(*) FROM problems GROUP BY kind").fetchall())

    def rows(self, batch: int = 1000) -> Iterator[tuple]:
        """Every item's row (REPORT_COLUMNS), in list order, streamed a page at a time."""
        c = self.conn()
        sql = f"SELECT id, {', '.join(REPORT_COLUMNS)} FROM items WHERE id > ? ORDER BY id LIMIT ?"
        return by_pages(lambda last: c.execute(sql, (last, batch)).fetchall())

    def problems(self) -> Iterator[tuple[int, str, str]]:
        yield from self.conn().execute("SELECT line, kind, text FROM problems ORDER BY line")

    def item(self, dest: str) -> dict | None:
        """One item's row by destination (tests, `job status` of one item)."""
        c = self.conn()
        cur = c.execute("SELECT * FROM items WHERE dest=?", (dest,))
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else None


class ItemResume:
    """ctx.resume for one item: its row's resume column (connections' ResumeStore)."""

    def __init__(self, table: ItemTable, item_id: int, state: dict | None) -> None:
        self.table, self.item_id, self._state = table, item_id, state

    def load(self) -> dict | None:
        return self._state

    def save(self, state: dict) -> None:
        self._state = dict(state)
        self.table.save_resume(self.item_id, self._state)

    def clear(self) -> None:
        self._state = None
        self.table.save_resume(self.item_id, None)
