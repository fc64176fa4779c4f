"""Notifier: reports what the daemon does to PostgreSQL, for the dashboard.

Rule one: it never slows or stops syncing. The public methods (`event`,
`progress`, `heartbeat`) only take a tiny lock, append a tuple to an in-memory
deque and return; everything else (JSON, SQL, disk, network, retries) happens
in ONE background thread, the writer:

    callers ──append──▶ deque ──writer──▶ PostgreSQL   (one COPY or one INSERT ... unnest(arrays) per batch)
                                   └──▶ spool (SQLite in the state folder) ──▶ PostgreSQL later

* Order and no duplicates: every row gets a sequence number when it is
  appended, and (daemon_id, seq) is the table's primary key. A batch whose
  COMMIT reached the server but whose answer was lost is spooled and sent
  again with INSERT ... ON CONFLICT DO NOTHING, so it cannot duplicate; rows
  never sent before take a cheaper COPY (see Notifier._insert). Rows go to
  PostgreSQL in seq order: as long as the spool holds anything, new rows are
  appended behind it, and the spool is drained oldest first.
* Sequence numbers survive restarts without a round trip: they start at
  max(high-water mark kept in the spool folder, current time in microseconds),
  so neither a lost spool folder nor a clock stepping back alone can reuse one.
* Outages: when PostgreSQL is unreachable the writer appends to the spool and
  reconnects with capped, jittered exponential back-off (skynet.engine.backoff: tenacity's wait
  strategy); it sleeps on an Event in between, so no busy loop. The spool has
  a size cap: when it is hit, the oldest progress rows go first, then the
  oldest "queued" rows, then the oldest of the rest, with a WARNING that says
  how many were dropped and which setting raises the cap.
* Resources: exactly one thread and at most one database connection per
  Notifier; the connection is closed before a reconnect and at close().
  No psycopg_pool here: one writer thread uses one connection at a time, and
  a pool would add its own threads and its own reconnect loop beside the
  spool-aware back-off above (the dashboard, with many request threads, has one).
* No database configured (dsn None): a no-op object with the same methods.

Secrets: the DSN is only ever logged through `redact_dsn()`, and error texts
from libpq are scrubbed of the password before they are logged.
"""
from __future__ import annotations

import collections
import datetime
import json
import logging
import os
import socket
from skynet.state.sqlitelib import sqlite3
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from skynet.reporting import pgschema
from skynet.reporting.pgdsn import UNPARSABLE_DSN, password_of, redact_dsn, scrub_text  # noqa: F401 (re-exported)
from skynet.state.atomicfile import write_atomic
from skynet.engine.backoff import Backoff, BackoffCounter
from skynet.extras import require as require_extra
from skynet.state.folder import StateFolder
from skynet.state.spool import PRIO_OTHER, Row, Spool, prio_of, spooled_max_seq

log = logging.getLogger(__name__)

KINDS = ("queued", "started", "done", "failed", "progress")
ACTIONS = ("send", "delete", "move")

# A row, as appended by callers and stored in the spool (a plain tuple: cheap).
#  0 seq, 1 ts (epoch seconds), 2 mapping, 3 kind, 4 action, 5 path, 6 dest,
#  7 error, 8 bytes_done, 9 bytes_total (skynet.state.spool.Row)

SEQ_BLOCK = 1_000_000_000  # seq numbers reserved ahead in the high-water file
MAX_ERROR_CHARS = 4000

def default_daemon_id(host: str, service: str, state_dir: str) -> str:
    """A daemon id that is stable across restarts and unique per state folder
    (two daemons on one host for the same service have different state)."""
    return StateFolder(state_dir).daemon_id(host, service)


def _pg_text(value: Any, limit: int | None = None) -> str | None:
    """A str PostgreSQL accepts: valid UTF-8 (names with undecodable bytes come
    as surrogate escapes: shown as \\xNN) and no NUL character."""
    if value is None:
        return None
    s = value if isinstance(value, str) else str(value)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = s.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = s.encode("utf-8", "backslashreplace")
        s = raw.decode("utf-8", "backslashreplace")
    if "\x00" in s:
        s = s.replace("\x00", "\\x00")
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


def _size(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


_UTC = datetime.timezone.utc


def _copy_rows(daemon_id: str, rows: Sequence[Row]) -> Iterable[tuple]:
    """The batch as COPY rows: psycopg 3's Copy.write_row() adapts and escapes
    each field (no COPY text of ours to get wrong); text goes through
    `_pg_text` first, as PostgreSQL refuses NUL and invalid UTF-8. Measured
    against a hand-made text block through Copy.write(): 2.9 against 2.5 us of
    client CPU per row (bench/RESULTS.md, issue 22), which buys that."""
    f = _pg_text
    ts = datetime.datetime.fromtimestamp
    for r in rows:
        yield (daemon_id, r[0], ts(r[1], _UTC), f(r[2]), r[3], r[4], f(r[5]), f(r[6]), f(r[7], MAX_ERROR_CHARS),
               r[8], r[9])


# -- the notifier ---------------------------------------------------------------
class Notifier:
    """Reports actions, progress and heartbeats to PostgreSQL without ever
    blocking the caller. See the module docstring for the design.

    dsn: a libpq connection string or URL ("postgresql://user:pw@host:5432/db"),
         "" to use libpq's environment variables (PGHOST, PGUSER, PGPASSWORD,
         PGPASSFILE, PGSSLMODE...), or None: no database, every method is a no-op.
    daemon_id: stable across restarts (see default_daemon_id()).
    spool_dir: where the outage spool and the seq high-water mark live (the
         daemon's state folder).
    """

    def __init__(
        self,
        dsn: str | None,
        host: str,
        service: str,
        daemon_id: str,
        spool_dir: str,
        version: str,
        retention_days: int = 14,
        sslmode: str | None = None,
        *,
        heartbeat_interval: float = 10.0,
        spool_max_bytes: int = 64 << 20,
        buffer_max: int = 200_000,
        batch_max: int = 1000,
        flush_interval: float = 0.1,
        backoff_initial: float = 0.5,
        backoff_cap: float = 30.0,
        progress_interval: float = 1.0,
        progress_min_bytes: int = 4 << 20,
        connect_timeout: int = 5,
        spill_threshold: int = 50_000,
    ) -> None:
        self.dsn = dsn
        self.enabled = dsn is not None
        self.host = host
        self.service = service
        self.daemon_id = daemon_id
        self.version = version
        self.spool_dir = spool_dir
        self.retention_days = retention_days
        self.sslmode = sslmode or None
        self.heartbeat_interval = heartbeat_interval
        self.spool_max_bytes = spool_max_bytes
        self.buffer_max = buffer_max
        self.batch_max = batch_max
        self.flush_interval = flush_interval
        self.progress_interval = progress_interval
        self.progress_min_bytes = progress_min_bytes
        self.connect_timeout = connect_timeout
        self.spill_threshold = spill_threshold
        self.started_at = time.time()

        # Caller side: a lock only to keep seq order == deque order.
        self._lock = threading.Lock()
        self._buf: collections.deque[Row] = collections.deque()
        self._seq = 0
        self._wake = threading.Event()
        self._wake_pending = False
        self._closing = threading.Event()
        self._close_deadline = float("inf")
        self._overflow = [0, 0, 0]  # rows refused because the in-memory buffer was full, per prio
        self._last_progress: dict[tuple[str, str], float] = {}
        self._hb: list[dict] | None = None
        self._hb_new = False
        self._jobs: dict[str, dict] = {}  # job name -> its latest state, sent when new

        # Writer side (only the writer thread touches these after start).
        self._conn: Any = None
        self._spool: Spool | None = None
        self._failures = BackoffCounter(Backoff(initial=backoff_initial, cap=backoff_cap, jitter=backoff_initial))
        self._next_connect = 0.0
        self._next_heartbeat = 0.0
        self._next_prune = 0.0
        self._next_drop_log = 0.0
        self._dropped = [0, 0, 0]
        self._transfer_keys: set[tuple[str, str]] = set()  # (mapping, path) with a transfers row
        self._seq_hw = 0
        self._outage_logged = False
        self._password = password_of(dsn) if self.enabled else None
        self.delivered = 0  # rows PostgreSQL acknowledged (tests, benchmarks)
        self.connects = 0
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()  # set while the writer has nothing in hand

        if not self.enabled:
            return
        folder = StateFolder(spool_dir)
        folder.make()
        self._spool_path = folder.spool()
        self._hw_path = folder.seq()
        self._seq = self._initial_seq()
        self._thread = threading.Thread(target=self._run, name=f"skynet-notifier-{daemon_id}", daemon=True)
        self._thread.start()

    # -- public API: cheap, never raise, never block ---------------------------
    def event(
        self,
        mapping: str,
        kind: str,
        action: str,
        path: str,
        dest: str | None = None,
        error: str | BaseException | None = None,
        bytes_total: int | None = None,
    ) -> None:
        """Record that `action` (send/delete/move) on `path` was queued,
        started, done or failed (`error`: the exception or its text).
        For done sends, `bytes_total` is the bytes that crossed the wire."""
        if not self.enabled:
            return
        try:
            if kind in ("done", "failed"):
                self._last_progress.pop((mapping, path), None)
            if error is not None and not isinstance(error, str):
                error = f"{type(error).__name__}: {error}"
        except Exception:  # an exception whose str() fails: still record the event
            error = type(error).__name__
        self._append(time.time(), mapping, kind, action, path, dest or None, error, None, bytes_total)

    def progress(self, mapping: str, path: str, done: int, total: int) -> None:
        """Bytes done of total for an upload in flight. Only for large uploads
        (total >= progress_min_bytes: a small file's done event says it all).
        Rate-limited to one row per `progress_interval` per path; the final one
        (done >= total) always goes through."""
        if not self.enabled or total < self.progress_min_bytes:
            return
        key = (mapping, path)
        now = time.monotonic()
        if done < total:
            last = self._last_progress.get(key)
            if last is not None and now - last < self.progress_interval:
                return
            if len(self._last_progress) > 10_000:  # transfers that never finished: forget them
                self._last_progress.clear()
            self._last_progress[key] = now
        else:
            self._last_progress.pop(key, None)
        self._append(time.time(), mapping, "progress", "send", path, None, None, done, total)

    def heartbeat(self, mappings: Iterable[dict]) -> None:
        """The daemon is alive; per mapping: name, source, target, queue_depth,
        in_flight, failed, connected. Only those keys are kept (nothing else, so
        no secret, can reach the dashboard). The latest one wins."""
        if not self.enabled:
            return
        keep = ("name", "source", "target", "queue_depth", "in_flight", "failed", "connected")
        try:
            snap = [{k: m.get(k) for k in keep} for m in mappings]
        except Exception:
            log.debug("notifier: bad heartbeat payload", exc_info=True)
            return
        self._hb = snap
        self._hb_new = True
        self._kick()

    def job(self, state: dict) -> None:
        """A job's latest state (what `skynet job status --json` prints): counts by
        status, failed items by class, bytes, rate, ETA. Only those keys are kept;
        the latest one per job wins."""
        if not self.enabled:
            return
        keep = ("name", "source", "target", "counts", "errors", "bytes", "rate", "eta_seconds", "running")
        with self._lock:
            self._jobs[str(state.get("name"))] = {k: state.get(k) for k in keep}
        self._kick()

    def handler_hook(self, mapping: str) -> Callable[[str, Any, object], None]:
        """An `on_event(kind, action, info)` callback for skynet.engine.handler.Handler:
        `action` is a uniqueq.Action, `info` the Outcome (done) or the exception
        (failed)."""
        return lambda kind, action, info: self.on_handler_event(mapping, kind, action, info)

    def on_handler_event(self, mapping: str, kind: str, action: Any, info: object) -> None:
        """The daemon's `_on_event(mapping, kind, action, info)` forwards here
        (twice per file: keep the disabled case a single test)."""
        if not self.enabled:
            return
        try:
            bytes_total = getattr(info, "bytes_sent", None) if kind == "done" else None
            error = info if kind == "failed" else None
            self.event(mapping, kind, action.kind, action.src, action.dest or None, error, bytes_total)
        except Exception:  # a notification must never break a worker
            log.debug("notifier: could not record %s", kind, exc_info=True)

    def progress_hook(self, mapping: str) -> Callable[[str, int, int], None]:
        """A `progress(rel, done, total)` callback for skynet.engine.reconcile.Reconciler."""
        return lambda rel, done, total: self.progress(mapping, rel, done, total)

    def queue_tap(self, mapping: str, queue: Any) -> "NotifyingQueue":
        """Wrap a UniqueQ so every put records a 'queued' event."""
        return NotifyingQueue(queue, self, mapping)

    def _append(self, *fields: Any) -> None:
        try:
            kind = fields[2]
            n = len(self._buf)
            if n >= self.buffer_max or (kind == "progress" and n >= self.buffer_max // 2):
                self._overflow[prio_of(kind)] += 1
                return
            with self._lock:
                self._seq += 1
                self._buf.append((self._seq, *fields))
            self._kick()
        except Exception:
            pass  # never let reporting hurt the caller

    def _kick(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            self._wake.set()

    def pending(self) -> int:
        """Rows not yet in PostgreSQL: in memory and in the spool (approximate)."""
        if not self.enabled:
            return 0
        sp = self._spool
        return len(self._buf) + (sp.count if sp is not None else 0) + len(self._jobs)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything appended so far is in PostgreSQL (tests,
        benchmarks). True if it is."""
        if not self.enabled:
            return True
        deadline = time.monotonic() + timeout
        self._kick()
        while time.monotonic() < deadline:
            if self.pending() == 0 and self._idle.is_set() and not self._buf:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what can be delivered within `timeout` seconds (the rest
        stays in the spool for the next start), then release the thread, the
        database connection and the spool file."""
        if not self.enabled or self._thread is None:
            return
        self._close_deadline = time.monotonic() + max(0.0, timeout - 0.5)
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("notifier: the writer did not finish within %.0fs (database not answering?)", timeout)

    # -- writer thread ---------------------------------------------------------
    def _initial_seq(self) -> int:
        hw = 0
        try:
            with open(self._hw_path) as f:
                hw = int(f.read().strip() or 0)
        except (OSError, ValueError):
            pass
        spooled = spooled_max_seq(self._spool_path)  # rows of an earlier run must keep sorting first
        start = max(hw, spooled, time.time_ns() // 1000)
        self._write_hw(start + SEQ_BLOCK)
        return start

    def _write_hw(self, value: int) -> None:
        try:
            write_atomic(self._hw_path, f"{value}\n")
            self._seq_hw = value
        except OSError as exc:
            log.warning("notifier: cannot write %s: %s", self._hw_path, exc)
            self._seq_hw = value

    def _run(self) -> None:
        try:
            self._open_spool()
            while True:
                if not self._buf and not self._closing.is_set():
                    self._idle.set()
                    self._wake.wait(self._next_timer())
                if self._buf and len(self._buf) < self.batch_max and not self._closing.is_set():
                    self._closing.wait(self.flush_interval)  # let a batch gather
                self._idle.clear()
                self._wake.clear()
                self._wake_pending = False
                self._cycle()
                if self._closing.is_set() and self._finish_close():
                    break
        except Exception:
            log.exception("notifier: writer stopped by an unexpected error; notifications are off")
            self.enabled = False  # callers become no-ops instead of filling the buffer
            self._buf.clear()
        finally:
            self._disconnect(None)
            if self._spool is not None:
                self._spool.close()
            self._idle.set()

    def _open_spool(self) -> None:
        try:
            self._spool = Spool(self._spool_path, self.spool_max_bytes)
        except sqlite3.Error as exc:
            log.error("notifier: cannot open the spool %s (%s); keeping it in memory", self._spool_path, exc)
            self._spool = Spool(":memory:", self.spool_max_bytes)
        if self._spool.count:
            log.info("notifier: %d notification(s) spooled by an earlier run will be delivered", self._spool.count)

    def _next_timer(self) -> float:
        now = time.monotonic()
        due = [self._next_heartbeat if self._conn is not None else float("inf"),
               self._next_prune if self._conn is not None else float("inf")]
        if self._conn is None:
            due.append(self._next_connect)
        if self._spool is not None and self._spool.count and self._conn is not None:
            due.append(now)
        return max(0.05, min(min(due) - now, 60.0))

    def _drain(self) -> list[Row]:
        out: list[Row] = []
        pop = self._buf.popleft
        try:
            while True:
                out.append(pop())
        except IndexError:
            pass
        if out and out[-1][0] > self._seq_hw - SEQ_BLOCK // 2:
            self._write_hw(out[-1][0] + SEQ_BLOCK)
        return out

    def _cycle(self) -> None:
        rows = self._drain()
        now = time.monotonic()
        # While closing, connect only if this run never tried: a short run still
        # delivers, but a database that is down does not hold up the stop.
        if self._conn is None and now >= self._next_connect and (
                not self._closing.is_set() or (self.connects == 0 and self._failures.attempts == 0)):
            self._connect()
        if rows:
            if self._conn is not None and not self._spool.count and len(rows) <= self.spill_threshold:
                for i in range(0, len(rows), self.batch_max):
                    if not self._deliver(rows[i : i + self.batch_max], maybe_seen=False):
                        self._spool_rows(rows[i:])
                        break
            else:
                self._spool_rows(rows)
        if self._conn is not None and self._spool.count:
            closing = self._closing.is_set()
            self._drain_spool(budget=max(0.0, self._close_deadline - now) if closing else 0.5)
        if self._conn is not None and (self._hb_new or now >= self._next_heartbeat):
            self._send_heartbeat()
        if self._conn is not None and self._jobs:
            self._send_jobs()
        if self._conn is not None and now >= self._next_prune and not self._closing.is_set():
            self._prune()
        self._log_drops()

    def _finish_close(self) -> bool:
        """True when the writer may exit: everything delivered, or no database
        (then it is all in the spool), or the close deadline passed."""
        if self._buf:
            return False
        if self._conn is None or time.monotonic() >= self._close_deadline:
            if self._conn is not None:
                self._mark_stopped()
            return True
        if self._spool.count:
            return False
        self._mark_stopped()
        return True

    def _spool_rows(self, rows: list[Row]) -> None:
        try:
            dropped = self._spool.append(rows)
        except sqlite3.Error as exc:
            log.error("notifier: cannot write the spool (%s): %d notification(s) lost", exc, len(rows))
            self._dropped[PRIO_OTHER] += len(rows)
            return
        for prio, n in dropped.items():
            self._dropped[prio] += n

    def _log_drops(self) -> None:
        if time.monotonic() < self._next_drop_log:
            return
        over = self._overflow
        if any(self._dropped) or any(over):
            d, self._dropped = self._dropped, [0, 0, 0]
            o = list(over)
            self._overflow = [0, 0, 0]
            if any(d):
                log.warning(
                    "notifier: spool full (cap %s): dropped the oldest %d progress, %d queued and %d other "
                    "notification(s); PostgreSQL has been unreachable too long (raise notify_spool_mb to keep more)",
                    _size(self.spool_max_bytes), d[0], d[1], d[2],
                )
            if any(o):
                log.warning(
                    "notifier: in-memory buffer full (%d rows): dropped %d progress, %d queued and %d other "
                    "notification(s)", self.buffer_max, o[0], o[1], o[2],
                )
            self._next_drop_log = time.monotonic() + 10

    # -- PostgreSQL ------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        if self._password and self._password in text:
            text = text.replace(self._password, "***")
        return scrub_text(text) if "://" in text or "password" in text.lower() else text

    def _connect(self) -> None:
        import psycopg

        kw: dict[str, Any] = dict(
            connect_timeout=self.connect_timeout,
            application_name=_pg_text(f"skynet-notifier {self.daemon_id}", 63),
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
            tcp_user_timeout=30_000,
            options="-c statement_timeout=30000 -c lock_timeout=10000",
        )
        if self.sslmode:
            kw["sslmode"] = self.sslmode
        conn = None
        try:
            conn = psycopg.connect(self.dsn, **kw)
            pgschema.migrate(conn)
            conn.autocommit = False
            self._conn = conn
            self._register()
        except Exception as exc:
            if conn is not None and self._conn is None:
                try:
                    conn.close()
                except Exception:
                    pass
            self._conn = None
            delay = self._back_off()
            msg = self._first_line(exc)
            if not self._outage_logged:
                log.warning("notifier: PostgreSQL %s unreachable (%s); spooling to %s, retrying in %.1fs",
                            redact_dsn(self.dsn), msg, self._spool_path, delay)
                self._outage_logged = True
            else:
                log.debug("notifier: still unreachable (%s); next try in %.1fs", msg, delay)
            return
        self.connects += 1
        self._failures.reset()
        if self._outage_logged or self._spool.count:
            log.info("notifier: connected to %s; delivering %d spooled notification(s)",
                     redact_dsn(self.dsn), self._spool.count)
        else:
            log.info("notifier: connected to %s", redact_dsn(self.dsn))
        self._outage_logged = False

    def _disconnect(self, exc: BaseException | None) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        if exc is not None:
            delay = self._back_off()
            log.warning("notifier: lost PostgreSQL (%s); spooling until it is back (next try in %.1fs)",
                        self._first_line(exc), delay)
            self._outage_logged = True

    def _back_off(self) -> float:
        """One more failed attempt: when to try again (skynet.engine.backoff)."""
        delay = self._failures.failed()
        self._next_connect = time.monotonic() + delay
        return delay

    def _first_line(self, exc: BaseException) -> str:
        """The first line of an error, scrubbed of secrets, for the log."""
        text = str(exc).strip()
        return self._scrub(text.splitlines()[0] if text else type(exc).__name__)

    def _is_connection_error(self, exc: BaseException) -> bool:
        import psycopg

        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return True
        return self._conn is None or bool(self._conn.closed)

    def _register(self) -> None:
        """Insert or refresh this daemon's row at (re)connection."""
        with self._conn.cursor() as cur:
            self._upsert_daemon(cur, self._hb)
            # Transfers a previous run left half-way will never finish as such.
            cur.execute("DELETE FROM skynet.transfers WHERE daemon_id = %s AND updated_at < to_timestamp(%s)",
                        (self.daemon_id, self.started_at))
        self._conn.commit()
        self._hb_new = False
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval

    def _upsert_daemon(self, cur: Any, snap: list[dict] | None) -> None:
        """One statement for registration and heartbeats: an upsert, so a row
        pruned (or deleted by hand) while the daemon runs comes back by itself.
        last_heartbeat is the server's clock, so staleness is judged on one clock."""
        mappings = None if snap is None else json.dumps(snap, default=str, ensure_ascii=True)
        totals = [None, None, None] if snap is None else [
            sum(int(m.get(k) or 0) for m in snap) for k in ("queue_depth", "in_flight", "failed")]
        cur.execute(
            """INSERT INTO skynet.daemons (id, host, service, version, pid, heartbeat_interval, started_at,
                                           last_heartbeat, stopped_at, mappings, queue_depth, in_flight, failed)
               VALUES (%s, %s, %s, %s, %s, %s, to_timestamp(%s), now(), NULL,
                       coalesce(%s::jsonb, '[]'::jsonb), coalesce(%s, 0), coalesce(%s, 0), coalesce(%s, 0))
               ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, service = EXCLUDED.service,
                   version = EXCLUDED.version, pid = EXCLUDED.pid, heartbeat_interval = EXCLUDED.heartbeat_interval,
                   started_at = EXCLUDED.started_at, last_heartbeat = now(), stopped_at = NULL,
                   mappings = coalesce(%s::jsonb, skynet.daemons.mappings),
                   queue_depth = coalesce(%s, skynet.daemons.queue_depth),
                   in_flight = coalesce(%s, skynet.daemons.in_flight),
                   failed = coalesce(%s, skynet.daemons.failed)""",
            (self.daemon_id, _pg_text(self.host), self.service, self.version, os.getpid(),
             self.heartbeat_interval, self.started_at, mappings, *totals, mappings, *totals),
        )

    def _send_heartbeat(self) -> None:
        snap = self._hb
        self._hb_new = False
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval
        try:
            with self._conn.cursor() as cur:
                self._upsert_daemon(cur, snap)
            self._conn.commit()
        except Exception as exc:
            self._sql_failed(exc, "heartbeat")

    def _send_jobs(self) -> None:
        """Upsert the jobs' latest states; kept for the next try if the database fails."""
        with self._lock:
            jobs, self._jobs = self._jobs, {}
        try:
            with self._conn.cursor() as cur:
                for j in jobs.values():
                    cur.execute(
                        """INSERT INTO skynet.jobs (daemon_id, name, source, target, counts, errors, bytes, rate,
                                                    eta, running, updated_at)
                           VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, now())
                           ON CONFLICT (daemon_id, name) DO UPDATE SET source = EXCLUDED.source,
                               target = EXCLUDED.target, counts = EXCLUDED.counts, errors = EXCLUDED.errors,
                               bytes = EXCLUDED.bytes, rate = EXCLUDED.rate, eta = EXCLUDED.eta,
                               running = EXCLUDED.running, updated_at = now()""",
                        (self.daemon_id, _pg_text(j["name"]), _pg_text(j["source"] or ""), _pg_text(j["target"] or ""),
                         json.dumps(j["counts"] or {}), json.dumps(j["errors"] or {}), int(j["bytes"] or 0),
                         float(j["rate"] or 0), j["eta_seconds"], bool(j["running"])))
            self._conn.commit()
        except Exception as exc:
            with self._lock:
                self._jobs = {**jobs, **self._jobs}
            self._sql_failed(exc, "jobs")

    def _mark_stopped(self) -> None:
        try:
            with self._conn.cursor() as cur:
                cur.execute("UPDATE skynet.daemons SET stopped_at = now(), last_heartbeat = now() WHERE id = %s",
                            (self.daemon_id,))
                cur.execute("DELETE FROM skynet.transfers WHERE daemon_id = %s", (self.daemon_id,))
            self._conn.commit()
        except Exception as exc:
            self._sql_failed(exc, "stop")

    def _rollback(self) -> None:
        """End a failed transaction; a broken connection cannot, and that is fine."""
        try:
            if self._conn is not None and not self._conn.closed:
                self._conn.rollback()
        except Exception:
            pass

    def _sql_failed(self, exc: BaseException, what: str) -> None:
        self._rollback()
        if self._is_connection_error(exc):
            self._disconnect(exc)
        else:
            log.warning("notifier: %s failed: %s", what, self._scrub(str(exc).strip()))

    def _deliver(self, rows: Sequence[Row], maybe_seen: bool = True) -> bool:
        """Insert one batch in one transaction. False if the connection broke
        (the caller spools the rows); a row PostgreSQL rejects as data is
        logged and skipped, so one odd row cannot wedge delivery.
        `maybe_seen=False` only for rows never sent before (see _insert).
        The batch is its own transaction: _insert starts it, this commits it."""
        try:
            self._insert(rows, maybe_seen)
            self._conn.commit()
            self.delivered += len(rows)
            return True
        except Exception as exc:
            self._rollback()
            if self._is_connection_error(exc):
                self._disconnect(exc)
                return False
            log.warning("notifier: PostgreSQL refused a batch (%s); retrying its rows one by one",
                        self._first_line(exc))
        for r in rows:
            try:
                self._insert([r])
                self._conn.commit()
                self.delivered += 1
            except Exception as exc:
                self._rollback()
                if self._is_connection_error(exc):
                    self._disconnect(exc)
                    return False
                log.error("notifier: dropped notification %s %s %r: %s", r[3], r[4], r[5],
                          self._first_line(exc))
        return True

    def _insert(self, rows: Sequence[Row], maybe_seen: bool = True) -> None:
        """Write the events, then update transfers and the throughput roll-up
        from the rows that were really new.

        Rows that may already be in PostgreSQL (`maybe_seen`: they come from
        the spool, i.e. a batch whose fate is unknown, or a previous run) go
        through ONE INSERT ... SELECT FROM unnest(arrays) ON CONFLICT
        (daemon_id, seq) DO NOTHING RETURNING seq: eleven array parameters
        whatever the batch size, so one statement and one round trip (what
        psycopg2's execute_values did by pasting values into the SQL text).
        Rows never sent before take the fast path, COPY FROM STDIN into the
        same table (see bench/notifier_bench.py), and the primary key still
        refuses a duplicate (then the batch is redone the first way). COPY
        carries data, not SQL: psycopg escapes each field (`_copy_rows`).
        """
        import psycopg.errors

        did = self.daemon_id
        with self._conn.cursor() as cur:
            fresh: set[int] | None = None
            if not maybe_seen:
                # The COPY opens the batch's transaction (the caller commits after
                # this), so a duplicate needs no savepoint: roll it all back and
                # take the ON CONFLICT path (two round trips a batch fewer).
                try:
                    with cur.copy("COPY skynet.events (daemon_id, seq, ts, mapping, kind, action, path, dest,"
                                  " error, bytes_done, bytes_total) FROM STDIN") as copy:
                        for row in _copy_rows(did, rows):
                            copy.write_row(row)
                except psycopg.errors.UniqueViolation:
                    self._conn.rollback()
                    maybe_seen = True
            if maybe_seen:
                cur.execute(
                    """INSERT INTO skynet.events (daemon_id, seq, ts, mapping, kind, action, path, dest, error,
                                                  bytes_done, bytes_total)
                       SELECT %s, seq, to_timestamp(ts), mapping, kind, action, path, dest, error, bytes_done,
                              bytes_total
                       FROM unnest(%s::bigint[], %s::float8[], %s::text[], %s::text[], %s::text[], %s::text[],
                                   %s::text[], %s::text[], %s::bigint[], %s::bigint[])
                            AS r(seq, ts, mapping, kind, action, path, dest, error, bytes_done, bytes_total)
                       ON CONFLICT (daemon_id, seq) DO NOTHING RETURNING seq""",
                    (did, [r[0] for r in rows], [float(r[1]) for r in rows], [_pg_text(r[2]) for r in rows],
                     [r[3] for r in rows], [r[4] for r in rows], [_pg_text(r[5]) for r in rows],
                     [_pg_text(r[6]) for r in rows], [_pg_text(r[7], MAX_ERROR_CHARS) for r in rows],
                     [r[8] for r in rows], [r[9] for r in rows]),
                )
                fresh = {s for (s,) in cur.fetchall()}
                if not fresh:
                    return
            # Derived tables, from the new rows only. A transfers row exists
            # only for uploads that reported progress (large ones), so only
            # those are deleted when their send ends: small files cost nothing here.
            transfers: dict[tuple[str, str], tuple | None] = {}
            roll: dict[tuple[int, str], list[int]] = {}
            known = self._transfer_keys
            for r in rows:
                kind = r[3]
                if kind in ("queued", "started") or (fresh is not None and r[0] not in fresh):
                    continue
                key = (r[2], r[5])
                if kind == "progress":
                    transfers[key] = (r[8] or 0, r[9] or 0, r[1])
                elif r[4] == "send" and (key in known or key in transfers):
                    transfers[key] = None
                if kind == "done" and r[4] == "send" or kind == "failed":
                    acc = roll.setdefault((int(r[1] // 60) * 60, r[2]), [0, 0, 0])
                    if kind == "failed":
                        acc[2] += 1
                    else:
                        acc[0] += 1
                        acc[1] += r[9] or 0
            ups = [(_pg_text(m), _pg_text(p), t[0], t[1], float(t[2]))
                   for (m, p), t in transfers.items() if t is not None]
            gone = [(_pg_text(m), _pg_text(p)) for (m, p), t in transfers.items() if t is None]
            if ups:
                cur.execute(
                    """INSERT INTO skynet.transfers (daemon_id, mapping, path, bytes_done, bytes_total,
                                                     started_at, updated_at)
                       SELECT %s, mapping, path, done, total, to_timestamp(ts), to_timestamp(ts)
                       FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::float8[])
                            AS u(mapping, path, done, total, ts)
                       ON CONFLICT (daemon_id, mapping, path) DO UPDATE
                       SET bytes_done = EXCLUDED.bytes_done, bytes_total = EXCLUDED.bytes_total,
                           updated_at = EXCLUDED.updated_at
                       WHERE skynet.transfers.updated_at <= EXCLUDED.updated_at""",
                    (did, *map(list, zip(*ups))),
                )
            if gone:
                cur.execute(
                    """DELETE FROM skynet.transfers t USING unnest(%s::text[], %s::text[]) AS g(mapping, path)
                       WHERE t.daemon_id = %s AND t.mapping = g.mapping AND t.path = g.path""",
                    ([m for m, _ in gone], [p for _, p in gone], did),
                )
            if roll:
                keys = sorted(roll.items())
                cur.execute(
                    """INSERT INTO skynet.throughput (minute, daemon_id, mapping, files, bytes, failed)
                       SELECT to_timestamp(minute), %s, mapping, files, bytes, failed
                       FROM unnest(%s::float8[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[])
                            AS u(minute, mapping, files, bytes, failed)
                       ON CONFLICT (minute, daemon_id, mapping) DO UPDATE
                       SET files = skynet.throughput.files + EXCLUDED.files,
                           bytes = skynet.throughput.bytes + EXCLUDED.bytes,
                           failed = skynet.throughput.failed + EXCLUDED.failed""",
                    (did, [float(m) for (m, _), _ in keys], [_pg_text(mp) for (_, mp), _ in keys],
                     [a[0] for _, a in keys], [a[1] for _, a in keys], [a[2] for _, a in keys]),
                )
        # Only after the statements went through (the caller commits next; if
        # the commit fails, the rows are re-sent and this is recomputed).
        for key, t in transfers.items():
            if t is None:
                known.discard(key)
            elif len(known) < 100_000:
                known.add(key)

    def _drain_spool(self, budget: float) -> None:
        """Deliver spooled rows oldest first, for up to `budget` seconds (so
        the writer keeps emptying the in-memory buffer during a long backlog)."""
        end = time.monotonic() + budget
        while self._conn is not None and self._spool.count and time.monotonic() < end:
            try:
                rows = self._spool.peek(self.batch_max)
            except sqlite3.Error as exc:
                log.error("notifier: cannot read the spool: %s", exc)
                return
            if not rows:
                return
            if not self._deliver(rows):
                return
            self._spool.remove_through(rows[-1][0])
            if self._buf and not self._closing.is_set() and len(self._buf) > self.spill_threshold:
                self._spool_rows(self._drain())  # keep memory flat during a long catch-up

    def _prune(self) -> None:
        """Retention: delete old rows in small batches (SKIP LOCKED, so a
        hundred daemons pruning at once do not queue behind each other)."""
        self._next_prune = time.monotonic() + 3600
        cutoff = time.time() - self.retention_days * 86400
        try:
            total = 0
            with self._conn.cursor() as cur:
                for _ in range(20):
                    cur.execute(
                        """DELETE FROM skynet.events WHERE ctid = ANY(ARRAY(
                               SELECT ctid FROM skynet.events WHERE ts < to_timestamp(%s)
                               LIMIT %s FOR UPDATE SKIP LOCKED))""",
                        (cutoff, 5000),
                    )
                    self._conn.commit()
                    total += cur.rowcount
                    if cur.rowcount < 5000:
                        break
                else:
                    self._next_prune = time.monotonic() + 5  # more to do: come back soon
                cur.execute("DELETE FROM skynet.throughput WHERE minute < to_timestamp(%s)", (cutoff,))
                cur.execute("DELETE FROM skynet.transfers WHERE updated_at < to_timestamp(%s)", (time.time() - 86400,))
                cur.execute("DELETE FROM skynet.daemons WHERE last_heartbeat < to_timestamp(%s)", (cutoff,))
            self._conn.commit()
            if total:
                log.info("notifier: pruned %d event(s) older than %d day(s)", total, self.retention_days)
        except Exception as exc:
            self._sql_failed(exc, "retention")


class NotifyingQueue:
    """A UniqueQ wrapper that records a 'queued' event for each put, for the
    Watcher, SyncSnap and Reconciler; everything else goes to the real queue."""

    def __init__(self, queue: Any, notifier: Notifier, mapping: str) -> None:
        self._q = queue
        self._n = notifier
        self._mapping = mapping

    def put(self, kind: str, src: str, dest: str = "") -> None:
        self._q.put(kind, src, dest)
        self._n.event(self._mapping, "queued", kind, src, dest or None)

    def put_many(self, specs: Iterable[tuple[str, str, str]]) -> int:
        specs = list(specs)
        added = self._q.put_many(specs)
        if self._n.enabled:
            for kind, src, dest in specs:
                self._n.event(self._mapping, "queued", kind, src, dest or None)
        return added

    def __len__(self) -> int:
        return len(self._q)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._q, name)


def local_hostname() -> str:
    return socket.gethostname()


def skynet_version() -> str:
    from skynet import __version__

    return __version__


def from_config(cfg: Any) -> Notifier:
    """The daemon's Notifier, from its Config (attributes read with defaults,
    so this works before and after the notify_* keys exist):

        notify_dsn             "" -> no notifications (a no-op Notifier);
                               "env" -> libpq's environment (PGHOST, PGUSER,
                               PGPASSWORD or PGPASSFILE, PGSSLMODE...);
                               otherwise a URL/DSN (postgresql://user:pw@host/db)
        notify_sslmode         "" -> libpq's default
        notify_retention_days  14
        notify_heartbeat       10 (seconds)
        notify_spool_mb        64
        daemon_id              "" -> default_daemon_id(host, service, state_dir)
    """
    raw = (getattr(cfg, "notify_dsn", "") or "").strip()
    dsn = None if not raw else ("" if raw == "env" else raw)
    if dsn is not None:
        require_extra("postgres", "notify_dsn")
    host = local_hostname()
    return Notifier(
        dsn,
        host=host,
        service=cfg.service,
        daemon_id=getattr(cfg, "daemon_id", "") or default_daemon_id(host, cfg.service, cfg.state_dir),
        spool_dir=cfg.state_dir,
        version=skynet_version(),
        retention_days=int(getattr(cfg, "notify_retention_days", 14)),
        sslmode=getattr(cfg, "notify_sslmode", "") or None,
        heartbeat_interval=float(getattr(cfg, "notify_heartbeat", 10.0)),
        spool_max_bytes=int(getattr(cfg, "notify_spool_mb", 64)) << 20,
    )
