"""A job's item table in PostgreSQL ([skynet] jobs_dsn): the same rows, columns
and statuses as the SQLite ItemTable (skynet/jobs/table.py), shared by every
machine of a fleet (`skynet job submit`, `skynet worker`, `job status/retry/report`).

Everything lives in its own schema, ``skynet_jobs``, next to procrastinate's
tables; versioned migrations (``skynet_jobs.schema_version``) run in one
transaction under an advisory lock, as skynet/reporting/pgschema.py does, so a
hundred workers starting at once migrate once. psycopg 3 with a connection pool
(one connection per thread in use); every value is a parameter.

What PostgreSQL adds to the SQLite table:
- an item becomes `done` once: the UPDATE that says so is conditional
  (``WHERE status <> 'done'``) and counts itself in ``done_transitions``; a
  worker that lost its batch to another cannot undo or repeat a finish;
- ``worker`` names who holds an item now (status, the dashboard);
- ``skynet_jobs.workers``: one row per `skynet worker` (host, pid, heartbeat,
  batches held, items done, rate) and ``skynet_jobs.pauses``: a job's queue
  paused by its window, read by every worker (procrastinate 3.10 has no queue
  pausing of its own).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from skynet.jobs.item import Item
from skynet.jobs.table import DONE, FAILED, QUEUED, REPORT_COLUMNS, RUNNING, Claimed, NewItem, Outcome, by_pages
from skynet.reporting import pgschema

log = logging.getLogger("skynet.jobs")

SCHEMA = "skynet_jobs"
ADVISORY_LOCK_KEY = 0x736B796E65744A32  # "skynetJ2"

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "items, problems, job_info, workers, pauses", [
        """CREATE TABLE IF NOT EXISTS skynet_jobs.items (
               id bigserial PRIMARY KEY,
               job text NOT NULL,
               line bigint,
               source text NOT NULL,
               dest text NOT NULL,
               size bigint, md5 text, mtime_ns bigint, mode integer,
               status text NOT NULL DEFAULT 'queued',
               error_class text, status_code integer,
               bytes bigint NOT NULL DEFAULT 0,
               attempts integer NOT NULL DEFAULT 0,
               first_at double precision, last_at double precision,
               error text,
               resume text,
               next_at double precision NOT NULL DEFAULT 0,
               gen integer NOT NULL DEFAULT 0,
               worker text,
               done_transitions integer NOT NULL DEFAULT 0,
               UNIQUE (job, dest)
           )""",
        "CREATE INDEX IF NOT EXISTS items_job_status ON skynet_jobs.items (job, status, error_class)",
        "CREATE TABLE IF NOT EXISTS skynet_jobs.problems (job text NOT NULL, line bigint, kind text, text text)",
        "CREATE INDEX IF NOT EXISTS problems_job ON skynet_jobs.problems (job, line)",
        """CREATE TABLE IF NOT EXISTS skynet_jobs.job_info (
               job text NOT NULL, key text NOT NULL, value jsonb NOT NULL, PRIMARY KEY (job, key))""",
        """CREATE TABLE IF NOT EXISTS skynet_jobs.workers (
               id text PRIMARY KEY,
               jobs text[] NOT NULL,
               host text NOT NULL,
               pid integer NOT NULL,
               started_at timestamptz NOT NULL,
               last_heartbeat timestamptz NOT NULL,
               batches_held integer NOT NULL DEFAULT 0,
               done bigint NOT NULL DEFAULT 0,
               failed bigint NOT NULL DEFAULT 0,
               bytes bigint NOT NULL DEFAULT 0,
               rate double precision NOT NULL DEFAULT 0,
               stopped_at timestamptz)""",
        """CREATE TABLE IF NOT EXISTS skynet_jobs.pauses (
               job text PRIMARY KEY, paused boolean NOT NULL, reason text NOT NULL,
               changed_at timestamptz NOT NULL DEFAULT now())""",
    ]),
]

_ITEM = "id, source, dest, size, md5, mtime_ns, mode, attempts, resume"


def conninfo(dsn: str) -> str:
    """[skynet] jobs_dsn as libpq takes it: 'env' is libpq's environment (an empty conninfo)."""
    return "" if dsn.strip() == "env" else dsn.strip()


def migrate(conn: Any) -> int:
    """Apply the missing migrations of `skynet_jobs` (skynet/reporting/pgschema.py's
    runner: one transaction under this schema's advisory lock)."""
    return pgschema.migrate(conn, "skynet_jobs", MIGRATIONS, ADVISORY_LOCK_KEY, "jobs schema")


def make_pool(dsn: str, size: int = 4, *, idle_in_transaction: float | None = None) -> Any:
    """A psycopg 3 pool on jobs_dsn, its schema migrated. `idle_in_transaction`
    (seconds): the server ends a session left inside a transaction that long. A
    worker cut off mid-transaction (a silent network) would otherwise keep its
    row locks until TCP gives up (hours), and the items it held could not be
    taken over; workers set it to half their stall timeout."""
    from psycopg_pool import ConnectionPool

    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
    if idle_in_transaction:
        kwargs["options"] = f"-c idle_in_transaction_session_timeout={int(idle_in_transaction * 1000)}"
    pool = ConnectionPool(conninfo(dsn), min_size=1, max_size=max(2, size), open=True, kwargs=kwargs)
    with pool.connection() as c:
        migrate(c)
    return pool


class PgItemTable:
    """The item table of one job in PostgreSQL. Thread-safe: a pooled connection per call."""

    def __init__(self, pool: Any, job: str, *, worker: str | None = None, own_pool: bool = False,
                 stall_timeout: float = 30.0) -> None:
        self.pool, self.job, self.worker, self.own_pool = pool, job, worker, own_pool
        self.stall_timeout = stall_timeout

    @classmethod
    def open(cls, dsn: str, job: str, size: int = 4) -> "PgItemTable":
        return cls(make_pool(dsn, size), job, own_pool=True)

    def close(self) -> None:
        if self.own_pool:
            self.pool.close()

    def _all(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        with self.pool.connection() as c:
            return c.execute(sql, args).fetchall()

    def _one(self, sql: str, args: tuple | list = ()) -> tuple | None:
        with self.pool.connection() as c:
            return c.execute(sql, args).fetchone()

    # -- job_info ---------------------------------------------------------------

    def get(self, key: str) -> dict | None:
        row = self._one("SELECT value FROM skynet_jobs.job_info WHERE job=%s AND key=%s", (self.job, key))
        return row[0] if row else None

    def set(self, key: str, value: dict, c: Any = None) -> None:
        sql = ("INSERT INTO skynet_jobs.job_info(job, key, value) VALUES (%s, %s, %s::jsonb) "
               "ON CONFLICT (job, key) DO UPDATE SET value = excluded.value")
        args = (self.job, key, json.dumps(value))
        if c is not None:
            c.execute(sql, args)
            return
        with self.pool.connection() as conn:
            conn.execute(sql, args)

    # -- intake -----------------------------------------------------------------

    def add(self, rows: list[NewItem], gen: int, info: dict[str, dict],
            problems: list[tuple[int, str, str]] = ()) -> list[tuple[int, str]]:  # type: ignore[assignment]
        """As ItemTable.add: a batch, intake's progress and its problems in one transaction."""
        dups: list[tuple[int, str]] = []
        with self.pool.connection() as c, c.transaction():
            with c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO skynet_jobs.items(job, line, source, dest, size, md5, mtime_ns, mode, status, "
                    "error_class, error, gen) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                    "ON CONFLICT (job, dest) DO UPDATE SET gen=excluded.gen, line=excluded.line "
                    "WHERE items.gen < excluded.gen AND items.source = excluded.source",
                    [(self.job, *self._values(r, gen)) for r in rows])
                changed = cur.rowcount
            if changed < len(rows):
                dups = self._sort_out(c, rows, gen)
            self.add_problems([*problems, *((line, "duplicate", text) for line, text in dups)], c)
            for key, value in info.items():
                self.set(key, value, c)
        return dups

    @staticmethod
    def _values(r: NewItem, gen: int) -> tuple:
        i = r.item
        return (r.line, i.source, i.dest, i.size, i.md5, i.mtime_ns, i.mode, r.status, r.error_class, r.error, gen)

    def _sort_out(self, c: Any, rows: list[NewItem], gen: int) -> list[tuple[int, str]]:
        dups = []
        for r in rows:
            rid, rgen, rline, rsource = c.execute(
                "SELECT id, gen, line, source FROM skynet_jobs.items WHERE job=%s AND dest=%s",
                (self.job, r.item.dest)).fetchone()
            if rgen == gen and (rline != r.line or rsource != r.item.source):
                dups.append((r.line, f"destination {r.item.dest!r} is already that of line {rline}: not copied twice"))
            elif rgen < gen:
                c.execute("UPDATE skynet_jobs.items SET line=%s, source=%s, size=%s, md5=%s, mtime_ns=%s, mode=%s, "
                          "status=%s, error_class=%s, error=%s, gen=%s, status_code=NULL, bytes=0, attempts=0, "
                          "resume=NULL, next_at=0 WHERE id=%s", self._values(r, gen) + (rid,))
        return dups

    def add_problems(self, problems: Iterable[tuple[int, str, str]], c: Any = None) -> None:
        rows = [(self.job, *p) for p in problems]
        if not rows:
            return
        sql = "INSERT INTO skynet_jobs.problems(job, line, kind, text) VALUES (%s, %s, %s, %s)"
        if c is not None:
            c.cursor().executemany(sql, rows)
            return
        with self.pool.connection() as conn:
            conn.cursor().executemany(sql, rows)

    def start_pass(self, gen: int) -> None:
        with self.pool.connection() as c:
            c.execute("DELETE FROM skynet_jobs.problems WHERE job=%s", (self.job,))

    def drop_unseen(self, gen: int) -> int:
        with self.pool.connection() as c:
            return c.execute("DELETE FROM skynet_jobs.items WHERE job=%s AND gen < %s AND status <> 'done'",
                             (self.job, gen)).rowcount

    def ids_after(self, last: int, limit: int) -> list[int]:
        """Queued items' ids above `last`, in order: what `job submit` enqueues next."""
        return [r[0] for r in self._all("SELECT id FROM skynet_jobs.items WHERE job=%s AND id > %s AND status = "
                                        "'queued' ORDER BY id LIMIT %s", (self.job, last, limit))]

    # -- the worker ---------------------------------------------------------------

    def claim_ids(self, ids: list[int], now: float) -> list[Claimed]:
        """These items (of a batch), unless done or failed for good, marked running by
        this worker. An item another worker holds is left to it while that worker's
        heartbeat is fresh (its lease); one a dead worker left running is taken over
        without a new attempt being counted (its attempt was cut short, not failed)."""
        rows = self._all(
            "UPDATE skynet_jobs.items i SET status='running', worker=%s, last_at=%s, "
            "attempts = i.attempts + CASE WHEN i.status='running' THEN 0 ELSE 1 END, first_at=coalesce(i.first_at, %s) "
            "WHERE i.job=%s AND i.id = ANY(%s) AND (i.status = 'queued' OR (i.status = 'running' AND NOT EXISTS ("
            "  SELECT 1 FROM skynet_jobs.workers w WHERE w.id = i.worker AND w.stopped_at IS NULL"
            "  AND w.last_heartbeat > now() - make_interval(secs => %s)))) "
            f"RETURNING {', '.join('i.' + c.strip() for c in _ITEM.split(','))}",
            (self.worker, now, now, self.job, ids, self.stall_timeout))
        by_id = {r[0]: r for r in rows}
        return [Claimed(r[0], Item(r[1], r[2], r[3], r[4], r[5], r[6]), max(r[7], 1), json.loads(r[8]) if r[8] else None)
                for r in (by_id[i] for i in ids if i in by_id)]

    def record(self, outcomes: list[Outcome]) -> int:
        """Every outcome in one transaction; returns how many items became done NOW.
        Nothing here touches an item that is already done."""
        done = [o for o in outcomes if o.kind == DONE]
        rest = [o for o in outcomes if o.kind != DONE]
        finished = 0
        with self.pool.connection() as c, c.transaction():
            if done:
                finished = len(c.execute(
                    "UPDATE skynet_jobs.items i SET status='done', bytes=i.bytes+u.bytes, size=coalesce(u.size, i.size), "
                    "last_at=u.at, error_class=NULL, status_code=NULL, error=NULL, resume=NULL, worker=NULL, "
                    "done_transitions = i.done_transitions + 1 "
                    "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::float8[]) AS u(id, bytes, size, at) "
                    "WHERE i.job=%s AND i.id=u.id AND i.status <> 'done' RETURNING i.id",
                    ([o.id for o in done], [o.bytes for o in done], [o.size for o in done], [o.at for o in done],
                     self.job)).fetchall())
            with c.cursor() as cur:
                for kind, sql, args in self._others(rest):
                    cur.executemany(sql, args)
        return finished

    def _others(self, outcomes: list[Outcome]) -> Iterator[tuple[str, str, list]]:
        where = " WHERE job=%s AND id=%s AND status <> 'done'"
        failed = [(o.bytes, o.at, o.error_class, o.status_code, o.error, self.job, o.id) for o in outcomes if o.kind == FAILED]
        retry = [(o.bytes, o.at, o.error_class, o.status_code, o.error, o.next_at, self.job, o.id)
                 for o in outcomes if o.kind == "retry"]
        release = [(o.bytes, o.next_at, self.job, o.id) for o in outcomes if o.kind == "release"]
        if failed:
            yield FAILED, ("UPDATE skynet_jobs.items SET status='failed', worker=NULL, bytes=bytes+%s, last_at=%s, "
                           "error_class=%s, status_code=%s, error=%s" + where), failed
        if retry:
            yield "retry", ("UPDATE skynet_jobs.items SET status='queued', worker=NULL, bytes=bytes+%s, last_at=%s, "
                            "error_class=%s, status_code=%s, error=%s, next_at=%s" + where), retry
        if release:
            yield "release", ("UPDATE skynet_jobs.items SET status='queued', worker=NULL, bytes=bytes+%s, "
                              "attempts=greatest(attempts-1, 0), next_at=%s" + where), release

    def save_resume(self, item_id: int, state: dict | None) -> None:
        with self.pool.connection() as c:
            c.execute("UPDATE skynet_jobs.items SET resume=%s WHERE job=%s AND id=%s AND status <> 'done'",
                      (json.dumps(state) if state is not None else None, self.job, item_id))

    def requeue_failed_ids(self, classes: list[str] | None = None) -> list[int]:
        """Failed items queued again with fresh attempts; their ids (to enqueue as batches)."""
        sql = "UPDATE skynet_jobs.items SET status='queued', attempts=0, next_at=0 WHERE job=%s AND status='failed'"
        args: list = [self.job]
        if classes:
            sql += " AND error_class = ANY(%s)"
            args.append(list(classes))
        return sorted(r[0] for r in self._all(sql + " RETURNING id", args))

    def requeue_failed(self, classes: list[str] | None = None) -> int:
        return len(self.requeue_failed_ids(classes))

    # -- reading --------------------------------------------------------------------

    def counts(self) -> dict[tuple[str, str | None], int]:
        rows = self._all("SELECT status, error_class, count(*) FROM skynet_jobs.items WHERE job=%s "
                         "GROUP BY status, error_class", (self.job,))
        return {(s, e): n for s, e, n in rows}

    def pending(self) -> int:
        row = self._one("SELECT count(*) FROM skynet_jobs.items WHERE job=%s AND status IN (%s, %s)",
                        (self.job, QUEUED, RUNNING))
        return row[0] if row else 0

    def bytes_done(self) -> int:
        row = self._one("SELECT coalesce(sum(bytes), 0) FROM skynet_jobs.items WHERE job=%s", (self.job,))
        return int(row[0]) if row else 0

    def problem_counts(self) -> dict[str, int]:
        return dict(self._all("SELECT kind, count(*) FROM skynet_jobs.problems WHERE job=%s GROUP BY kind", (self.job,)))

    def rows(self, batch: int = 1000) -> Iterator[tuple]:
        sql = (f"SELECT id, {', '.join(REPORT_COLUMNS)} FROM skynet_jobs.items"
               " WHERE job=%s AND id > %s ORDER BY id LIMIT %s")
        return by_pages(lambda last: self._all(sql, (self.job, last, batch)))

    def problems(self) -> Iterator[tuple[int, str, str]]:
        yield from self._all("SELECT line, kind, text FROM skynet_jobs.problems WHERE job=%s ORDER BY line", (self.job,))

    def item(self, dest: str) -> dict | None:
        with self.pool.connection() as c:
            cur = c.execute("SELECT * FROM skynet_jobs.items WHERE job=%s AND dest=%s", (self.job, dest))
            row = cur.fetchone()
            return dict(zip([d.name for d in cur.description], row)) if row else None
