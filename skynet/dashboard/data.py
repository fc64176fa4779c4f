"""Where the dashboard's figures come from: PostgreSQL, or the local state files.

Both sources return the same JSON-ready shape (see `empty_status()`), so the
page does not care which one is behind it.

PostgreSQL: every query is read-only, parameterised, LIMITed, and served by an
index (see skynet/reporting/pgschema.py): daemons are a few hundred rows at most, the
hour chart reads the per-minute roll-up, the lists of completions and failures
walk a partial index on (ts, daemon_id, seq) backwards and paginate by keyset,
so a page costs the same with a thousand events or a hundred million.

Local: without a database, the dashboard reads the daemon's own SQLite state
files (one per mapping, found by skynet.state.folder, read through
skynet.state.db.StateReader) read-only, so one machine can still be watched.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

from skynet.reporting.notifier import redact_dsn
from skynet.state.sqlitelib import sqlite3
from skynet.state.db import StateReader
from skynet.state.folder import StateFolder, parse_identity

LIST_LIMIT = 50
DAEMON_LIMIT = 1000
TRANSFER_LIMIT = 200


def empty_status(mode: str) -> dict[str, Any]:
    return {
        "mode": mode,  # "postgres" | "local"
        "now": time.time(),
        "note": "",
        "daemons": [],  # {id, host, service, version, started_at, last_heartbeat, age, stale, stopped, mappings: [...]}
        "transfers": [],  # {daemon_id, host, mapping, path, bytes_done, bytes_total, updated_at}
        "throughput": [],  # {minute, files, bytes, failed}
        "recent": [],  # {ts, daemon_id, host, mapping, action, path, dest, bytes}
        "failures": [],  # {ts, daemon_id, host, mapping, action, path, dest, error}
        "failures_next": None,  # cursor for the next (older) page of failures
        "jobs": [],  # {daemon_id, host, name, source, target, counts: {status: n}, errors: {class: n}, bytes, rate, eta, running, updated_at}
    }


def _text(value: Any) -> Any:
    """Strings safe for JSON (undecodable bytes shown as \\xNN)."""
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


class PgSource:
    """Read-only queries against the notifier's tables."""

    mode = "postgres"

    def __init__(self, dsn: str, sslmode: str | None = None, stale_factor: float = 3.0, max_conns: int = 4) -> None:
        """A psycopg_pool.ConnectionPool of up to `max_conns` read-only,
        autocommit connections, opened lazily (min_size 0: a dashboard nobody
        looks at holds no connection). The pool checks a connection before
        lending it (a server restart leaves dead ones behind) and drops the
        ones a request broke. A request waits at most 3 s for one, then gets
        503 as with a database that is down (queries take milliseconds, and
        statement_timeout caps them at 5 s)."""
        from psycopg_pool import ConnectionPool

        self.dsn = dsn
        self.stale_factor = stale_factor
        kw: dict[str, Any] = dict(
            connect_timeout=5,
            application_name="skynet-dashboard",
            options="-c default_transaction_read_only=on -c statement_timeout=5000",
            autocommit=True,
        )
        if sslmode:
            kw["sslmode"] = sslmode
        self._pool = ConnectionPool(dsn, min_size=0, max_size=max_conns, kwargs=kw, open=True, timeout=3,
                                    check=ConnectionPool.check_connection, name="skynet-dashboard")

    def describe(self) -> str:
        return redact_dsn(self.dsn)

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        with self._pool.connection() as conn, conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        self._pool.close()

    def status(self, failures_before: str | None = None) -> dict[str, Any]:
        out = empty_status(self.mode)
        with self._cursor() as cur:
            cur.execute("SELECT to_regclass('skynet.events') IS NOT NULL, extract(epoch FROM now())")
            ready, now = cur.fetchone()
            out["now"] = float(now)
            if not ready:
                out["note"] = "No daemon has reported to this database yet."
                return out
            out["daemons"] = self._daemons(cur)
            out["transfers"] = self._transfers(cur)
            out["throughput"] = self._throughput(cur)
            out["recent"] = self._recent(cur)
            out["failures"], out["failures_next"] = self.failures(cur, failures_before)
            out["jobs"] = self._jobs(cur)
        return out

    def _jobs(self, cur: Any) -> list[dict]:
        """Migration jobs (issue 21), newest first; none before schema 2."""
        cur.execute("SELECT to_regclass('skynet.jobs') IS NOT NULL")
        if not cur.fetchone()[0]:
            return []
        cur.execute(
            """SELECT j.daemon_id, d.host, j.name, j.source, j.target, j.counts, j.errors, j.bytes, j.rate, j.eta,
                      j.running, extract(epoch FROM j.updated_at)
               FROM skynet.jobs j LEFT JOIN skynet.daemons d ON d.id = j.daemon_id
               ORDER BY j.updated_at DESC LIMIT %s""",
            (LIST_LIMIT,),
        )
        return [
            {"daemon_id": r[0], "host": r[1], "name": r[2], "source": r[3], "target": r[4],
             "counts": {str(k): int(v) for k, v in (r[5] or {}).items()},
             "errors": {str(k): int(v) for k, v in (r[6] or {}).items()}, "bytes": r[7], "rate": float(r[8]),
             "eta": None if r[9] is None else float(r[9]), "running": bool(r[10]), "updated_at": float(r[11])}
            for r in cur.fetchall()
        ]

    def failures_page(self, before: str | None) -> dict[str, Any]:
        with self._cursor() as cur:
            rows, nxt = self.failures(cur, before)
        return {"failures": rows, "failures_next": nxt}

    def _daemons(self, cur: Any) -> list[dict]:
        cur.execute(
            """SELECT id, host, service, version, mappings, queue_depth, in_flight, failed, heartbeat_interval,
                      extract(epoch FROM started_at), extract(epoch FROM last_heartbeat),
                      extract(epoch FROM stopped_at), extract(epoch FROM now() - last_heartbeat)
               FROM skynet.daemons ORDER BY host, service, id LIMIT %s""",
            (DAEMON_LIMIT,),
        )
        out = []
        for r in cur.fetchall():
            interval = float(r[8] or 10)
            age = float(r[12])
            stopped = r[11] is not None
            out.append({
                "id": r[0], "host": r[1], "service": r[2], "version": r[3],
                "mappings": _clean_mappings(r[4]),
                "queue_depth": r[5], "in_flight": r[6], "failed": r[7],
                "heartbeat_interval": interval,
                "started_at": float(r[9]), "last_heartbeat": float(r[10]),
                "stopped_at": float(r[11]) if stopped else None,
                "age": age,
                "stopped": stopped,
                "stale": (not stopped) and age > self.stale_factor * interval,
            })
        return out

    def _transfers(self, cur: Any) -> list[dict]:
        cur.execute(
            """SELECT t.daemon_id, d.host, t.mapping, t.path, t.bytes_done, t.bytes_total,
                      extract(epoch FROM t.started_at), extract(epoch FROM t.updated_at)
               FROM skynet.transfers t LEFT JOIN skynet.daemons d ON d.id = t.daemon_id
               WHERE t.updated_at > now() - interval '10 minutes'
               ORDER BY t.updated_at DESC LIMIT %s""",
            (TRANSFER_LIMIT,),
        )
        return [
            {"daemon_id": r[0], "host": r[1], "mapping": r[2], "path": r[3], "bytes_done": r[4],
             "bytes_total": r[5], "started_at": float(r[6]), "updated_at": float(r[7])}
            for r in cur.fetchall()
        ]

    def _throughput(self, cur: Any) -> list[dict]:
        cur.execute(
            """SELECT extract(epoch FROM minute)::bigint, sum(files)::bigint, sum(bytes)::bigint, sum(failed)::bigint
               FROM skynet.throughput
               WHERE minute >= date_trunc('minute', now()) - interval '59 minutes'
               GROUP BY minute ORDER BY minute"""
        )
        return [{"minute": r[0], "files": r[1], "bytes": r[2], "failed": r[3]} for r in cur.fetchall()]

    def _recent(self, cur: Any) -> list[dict]:
        cur.execute(
            """SELECT e.ts, e.daemon_id, d.host, e.mapping, e.action, e.path, e.dest, e.bytes_total
               FROM skynet.events e LEFT JOIN skynet.daemons d ON d.id = e.daemon_id
               WHERE e.kind = 'done'
               ORDER BY e.ts DESC, e.daemon_id DESC, e.seq DESC LIMIT %s""",
            (LIST_LIMIT,),
        )
        return [
            {"ts": r[0].timestamp(), "daemon_id": r[1], "host": r[2], "mapping": r[3], "action": r[4],
             "path": r[5], "dest": r[6], "bytes": r[7]}
            for r in cur.fetchall()
        ]

    def failures(self, cur: Any, before: str | None) -> tuple[list[dict], str | None]:
        """Newest failures first; `before` is the cursor a previous page returned."""
        params: list[Any] = []
        where = "e.kind = 'failed'"
        cursor = _parse_cursor(before)
        if cursor is not None:
            where += " AND (e.ts, e.daemon_id, e.seq) < (%s::timestamptz, %s, %s)"
            params += list(cursor)
        cur.execute(
            "SELECT e.ts, e.daemon_id, e.seq, d.host, e.mapping, e.action, e.path, e.dest, e.error"
            " FROM skynet.events e LEFT JOIN skynet.daemons d ON d.id = e.daemon_id"
            f" WHERE {where}"  # one of two constant strings above; values stay parameters
            " ORDER BY e.ts DESC, e.daemon_id DESC, e.seq DESC LIMIT %s",
            (*params, LIST_LIMIT + 1),
        )
        rows = cur.fetchall()
        more = len(rows) > LIST_LIMIT
        rows = rows[:LIST_LIMIT]
        out = [
            {"ts": r[0].timestamp(), "daemon_id": r[1], "host": r[3], "mapping": r[4], "action": r[5],
             "path": r[6], "dest": r[7], "error": r[8]}
            for r in rows
        ]
        nxt = None
        if more and rows:
            last = rows[-1]
            nxt = f"{last[0].isoformat()}|{last[2]}|{last[1]}"
        return out, nxt


def _parse_cursor(text: str | None) -> tuple[str, str, int] | None:
    """'ISO-timestamp|seq|daemon_id' -> (ts, daemon_id, seq); None if absent or malformed."""
    if not text or len(text) > 400:
        return None
    try:
        ts, seq, daemon_id = text.split("|", 2)
        datetime.fromisoformat(ts)
        return ts, daemon_id, int(seq)
    except ValueError:
        return None


_MAPPING_KEYS = ("name", "source", "target", "queue_depth", "in_flight", "failed", "connected")


def _clean_mappings(raw: Any) -> list[dict]:
    """Only the known keys of each mapping (the notifier already filters them;
    this keeps the page safe from whatever else might be in the column)."""
    if not isinstance(raw, list):
        return []
    return [{k: m.get(k) for k in _MAPPING_KEYS} for m in raw if isinstance(m, dict)]


class LocalSource:
    """The local daemon's state, read from its SQLite files (no database)."""

    mode = "local"

    def __init__(self, state_dirs: list[str]) -> None:
        self.state_dirs = [os.path.abspath(os.path.expanduser(d)) for d in state_dirs]

    def describe(self) -> str:
        return "local state in " + ", ".join(self.state_dirs)

    def close(self) -> None:
        pass

    def failures_page(self, before: str | None) -> dict[str, Any]:
        return {"failures": [], "failures_next": None}

    def status(self, failures_before: str | None = None) -> dict[str, Any]:
        out = empty_status(self.mode)
        out["note"] = "No database configured: showing this machine's state files only (no history)."
        for sd in self.state_dirs:
            mappings = []
            newest = 0.0
            folder = StateFolder(sd)
            names = folder.mappings()
            for name in names:
                m, transfers, failures = self._mapping(sd, name, folder.db(name))
                mappings.append(m)
                out["transfers"] += transfers
                out["failures"] += failures
                newest = max(newest, folder.last_write(name))
            if not mappings:
                continue
            pid = next((p for p in map(folder.holder, names) if p is not None), None)
            running = pid is not None
            out["daemons"].append({
                "id": sd, "host": os.uname().nodename, "service": os.path.basename(sd), "version": "",
                "mappings": mappings,
                "queue_depth": sum(m["queue_depth"] or 0 for m in mappings),
                "in_flight": sum(m["in_flight"] or 0 for m in mappings),
                "failed": sum(m["failed"] or 0 for m in mappings),
                "heartbeat_interval": 0, "started_at": None, "last_heartbeat": newest or None,
                "stopped_at": None, "age": (time.time() - newest) if newest else None,
                "stopped": not running, "stale": False,
            })
        out["failures"].sort(key=lambda f: f["ts"], reverse=True)
        out["failures"] = out["failures"][:LIST_LIMIT]
        return out

    def _mapping(self, sd: str, name: str, db_path: str) -> tuple[dict, list[dict], list[dict]]:
        m = {"name": _text(name), "source": None, "target": None, "queue_depth": None, "in_flight": None,
             "failed": None, "connected": None}
        transfers: list[dict] = []
        failures: list[dict] = []
        host = os.uname().nodename
        try:
            db = StateReader(db_path)
        except sqlite3.Error as exc:
            m["error"] = str(exc)
            return m, transfers, failures
        try:
            waiting, claimed = db.queue_counts()
            m["queue_depth"], m["in_flight"] = waiting + claimed, claimed
            m["failed"] = db.failed_count()
            ident = parse_identity(db.identity())
            if ident:
                m["source"], m["target"] = _text(ident[1]), _text(ident[2])
            for kind, src, dest, queued_at in db.claimed(TRANSFER_LIMIT):
                transfers.append({"daemon_id": sd, "host": host, "mapping": name,
                                  "action": kind, "path": _text(src), "dest": _text(dest) or None,
                                  "bytes_done": None, "bytes_total": None, "started_at": queued_at,
                                  "updated_at": queued_at})
            for f in db.failures(LIST_LIMIT):
                failures.append({"ts": f.last_at, "daemon_id": sd, "host": host, "mapping": name,
                                 "action": f.kind, "path": _text(f.src), "dest": _text(f.dest) or None,
                                 "error": f"{f.error} (after {f.attempts} attempt(s))"})
        except sqlite3.Error as exc:
            m["error"] = str(exc)
        finally:
            db.close()
        return m, transfers, failures
