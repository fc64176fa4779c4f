"""One job, many machines, on procrastinate (a PostgreSQL task queue).

`skynet job submit NAME` reads the job's source into its PostgreSQL item table
(skynet/jobs/pgtable.py, through the same Intake as `job run`) and enqueues its
items by batches (`batch_size`, default 1,000 ids) as procrastinate jobs of the
task ``skynet.batch`` on the job's own queue (``skynet-job-NAME``).
`skynet worker` runs procrastinate workers on those queues; a batch runs its
items through the same per-item code as `job run` (skynet/jobs/attempt.py,
skynet/jobs/transfer.py), `job.workers` at a time, skipping items already done.

Nothing here coordinates on its own; procrastinate does:
- leases: a procrastinate worker heartbeats (every stall_timeout / 3 s); a
  periodic task (``skynet.reap``, every 5 s, on the ``skynet-fleet`` queue every
  skynet worker serves) re-queues the batches of workers whose heartbeat is older
  than stall_timeout (JobManager.get_stalled_jobs + retry_job), and a starting
  worker prunes stalled workers (procrastinate's own start-up);
- retries: the batch task's retry strategy (FleetRetry, a BaseRetryStrategy)
  turns what a batch raised into procrastinate's RetryDecision: items retried on
  the job's `retry_after` (each item's next try, its attempts bounded by
  `max_attempts`, as in `job run`), a window that closed (retry when it opens),
  a worker that stopped (retry now, elsewhere).
Exactly once: an item is claimed only if queued, or running for a worker whose
heartbeat in skynet_jobs.workers is stale; it becomes done by a conditional
UPDATE (pgtable.PgItemTable.record). A worker that cannot renew its own
heartbeat for half the stall timeout stops its transfers and kills itself: it
never works on a batch another worker may have taken over.

Windows: procrastinate 3.10 has no queue pausing, so the pause is a row
(skynet_jobs.pauses) every worker checks each second: at the window's end it
is set, every worker stops serving the job's queue, transfers in flight stop at
a chunk boundary (ctx.stop, as in `job run`) and their batches are retried when
the window opens.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import procrastinate

from skynet.config.settings import JobConfig
from skynet.jobs.attempt import ItemAttempt, SystemClock
from skynet.jobs.pgtable import PgItemTable, conninfo, make_pool
from skynet.jobs.table import DONE, FAILED, Outcome
from skynet.transfer.throttle import Window

log = logging.getLogger("skynet.jobs.fleet")

FLEET_QUEUE = "skynet-fleet"
BATCH_TASK = "skynet.batch"
REAP_TASK = "skynet.reap"
STATES_EVERY = 15.0  # seconds between two readings of the jobs' items by state (/metrics)
REAP_EVERY = 5  # seconds between two looks for stalled batches (at most; less with a short stall timeout)
STALL_TIMEOUT = 30.0
SCHEMA_LOCK = 0x736B796E65745051  # "skynetPQ": one process applies procrastinate's schema


def queue_of(job: str) -> str:
    return f"skynet-job-{job}"


# -- what a batch raises: procrastinate's retry strategy reads it ----------------------------

class BatchNotFinished(Exception):
    """Items of the batch are still to run: try the batch again in `seconds`."""

    def __init__(self, seconds: float, why: str) -> None:
        super().__init__(f"{why}; the batch runs again in {seconds:.0f} s")
        self.seconds = max(seconds, 0.0)


class QueuePaused(Exception):
    """The job's window closed (or its worker stopped): the batch runs again at `at` (epoch seconds)."""

    def __init__(self, at: float, why: str) -> None:
        super().__init__(why)
        self.at = at


class FleetRetry(procrastinate.BaseRetryStrategy):
    """The batch task's procrastinate retry strategy (a BaseRetryStrategy): the
    job's retry_after schedule and max_attempts are applied per item (what the
    batch raised says when its next item is due; an item fails for good after
    max_attempts); anything else a batch raises (a lost database connection) is
    retried on the same schedule: a batch never fails for good, its items do."""

    def __init__(self, jobs: Callable[[str], JobConfig | None]) -> None:
        self.jobs = jobs

    def get_retry_decision(self, *, exception: BaseException, job: Any) -> procrastinate.RetryDecision | None:
        RetryDecision = procrastinate.RetryDecision
        if isinstance(exception, QueuePaused):
            return RetryDecision(retry_at=datetime.datetime.fromtimestamp(exception.at, datetime.timezone.utc))
        if isinstance(exception, BatchNotFinished):
            return RetryDecision(retry_in={"seconds": round(exception.seconds, 3)})
        j = self.jobs(job.task_kwargs.get("job", ""))
        schedule = j.retry_after if j is not None else [30.0]
        return RetryDecision(retry_in={"seconds": schedule[min(job.attempts, len(schedule) - 1)]})


# -- the app ------------------------------------------------------------------------------

_RUNTIME: "FleetWorker | None" = None  # the worker of this process (the tasks run in it)


def build_app(dsn: str, *, sync: bool = False, pool_size: int = 10, stall_timeout: float = STALL_TIMEOUT) -> Any:
    """A procrastinate App on jobs_dsn with skynet's two tasks registered. The
    reaper runs every 5 s (every stall_timeout / 4 s when that is shorter), so a
    dead worker's batches wait at most stall_timeout + 5 s."""
    kwargs = {"conninfo": conninfo(dsn), "kwargs": {"connect_timeout": 10}, "min_size": 1, "max_size": pool_size}
    connector = procrastinate.SyncPsycopgConnector(**kwargs) if sync else procrastinate.PsycopgConnector(**kwargs)
    app = procrastinate.App(connector=connector)
    retry = FleetRetry(lambda name: _RUNTIME.job_config(name) if _RUNTIME else None)
    app.task(name=BATCH_TASK, pass_context=True, retry=retry)(run_batch)
    every = max(1, min(REAP_EVERY, int(stall_timeout / 4)))
    app.periodic(cron=f"* * * * * */{every}", periodic_id="reap")(  # croniter's sixth field: seconds
        app.task(name=REAP_TASK, queue=FLEET_QUEUE, pass_context=True)(reap_stalled))
    return app


def ensure_schema(dsn: str) -> None:
    """procrastinate's schema, applied once (under an advisory lock) if missing."""
    import psycopg

    with psycopg.connect(conninfo(dsn), autocommit=True, connect_timeout=10) as c:
        c.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        try:
            if c.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is None:
                app = build_app(dsn, sync=True)
                with app.open():
                    app.schema_manager.apply_schema()
        finally:
            c.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))


# -- submit ------------------------------------------------------------------------------

def enqueue(app: Any, table: PgItemTable, batch_size: int, *, ids: list[int] | None = None) -> int:
    """Enqueue the job's queued items not enqueued yet (or these `ids`) as batches; how many batches."""
    task = app.tasks[BATCH_TASK].configure(queue=queue_of(table.job))
    if ids is not None:
        chunks = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
        if chunks:
            task.batch_defer(*({"job": table.job, "ids": c} for c in chunks))
        return len(chunks)
    done = table.get("submitted") or {"last_id": 0, "batches": 0}
    n = 0
    while True:
        page = table.ids_after(done["last_id"], batch_size * 20)
        if not page:
            return n
        chunks = [page[i:i + batch_size] for i in range(0, len(page), batch_size)]
        task.batch_defer(*({"job": table.job, "ids": c} for c in chunks))
        done = {"last_id": page[-1], "batches": done["batches"] + len(chunks)}
        table.set("submitted", done)  # a crash before this re-enqueues these batches: harmless (done items are skipped)
        n += len(chunks)


# -- the tasks ---------------------------------------------------------------------------

async def reap_stalled(context: Any, timestamp: int) -> int:
    """Re-queue the batches of workers whose heartbeat is older than the stall timeout."""
    stall = _RUNTIME.stall_timeout if _RUNTIME else STALL_TIMEOUT
    manager = context.app.job_manager
    n = 0
    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=stall):
        if job.task_name == REAP_TASK:
            continue
        try:
            await manager.retry_job(job)
            n += 1
        except Exception as exc:  # another worker's reaper was first
            log.debug("re-queueing stalled batch %s: %s", job.id, exc)
    if n:
        log.warning("%d stalled batch(es) re-queued (their worker's heartbeat is over %.0f s old)", n, stall)
        if _RUNTIME:
            _RUNTIME.reaped += n
    return n


def run_batch(context: Any, job: str, ids: list[int]) -> dict:
    """A batch of one job's items, run here (the worker process's FleetWorker)."""
    if _RUNTIME is None:
        raise RuntimeError("skynet.batch runs in `skynet worker` only")
    try:
        return _RUNTIME.run_batch(job, ids)
    except (QueuePaused, BatchNotFinished):
        raise
    except Exception:  # procrastinate retries it; say why here, where the log level is skynet's
        log.exception("job %s: a batch of %d item(s) broke; it is retried", job, len(ids))
        raise


# -- the worker --------------------------------------------------------------------------

@dataclass
class JobRuntime:
    """One job served by this worker."""

    job: JobConfig
    table: PgItemTable
    attempt: ItemAttempt
    window: Window
    stop: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task | None = None
    paused: bool | None = None


@dataclass
class WorkerStats:
    started: float = field(default_factory=time.time)
    done: int = 0
    failed: int = 0
    bytes: int = 0
    batches_held: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcomes: list[Outcome], finished: int) -> None:
        with self.lock:
            self.done += finished
            self.failed += sum(1 for o in outcomes if o.kind == FAILED)
            self.bytes += sum(o.bytes for o in outcomes)


class FleetWorker:
    """`skynet worker`: procrastinate workers on the jobs' queues, heartbeats,
    windows, and the batches' items."""

    def __init__(self, dsn: str, jobs: list[JobConfig], make_transfer: Callable[[JobConfig], Any], *,
                 concurrency: int = 1, exit_when_idle: bool = False, stall_timeout: float = STALL_TIMEOUT,
                 throttle: Callable[[JobConfig], Callable[[int], None] | None] = lambda j: None,
                 on_outcomes: Callable[[str, list[Outcome]], None] = lambda job, outcomes: None,
                 on_states: Callable[[str, dict[str, int]], None] | None = None) -> None:
        self.dsn, self.concurrency, self.exit_when_idle = dsn, concurrency, exit_when_idle
        self.stall_timeout = stall_timeout
        self.heartbeat_every = stall_timeout / 6  # ours; procrastinate's own every stall_timeout / 3
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        size = concurrency * max(j.workers for j in jobs) + concurrency + 4
        self.pool = make_pool(dsn, size, idle_in_transaction=stall_timeout / 2)
        self.jobs: dict[str, JobRuntime] = {}
        for j in jobs:
            table = PgItemTable(self.pool, j.name, worker=self.id, stall_timeout=stall_timeout)
            transfer = make_transfer(j)
            self.jobs[j.name] = JobRuntime(j, table, ItemAttempt(j, table, transfer, SystemClock(),
                                                                 throttle=throttle(j)), Window(j.window))
        self.transfers = [rt.attempt.transfer for rt in self.jobs.values()]
        self.stats = WorkerStats()
        self.on_outcomes = on_outcomes
        self.on_states = on_states  # the whole job's items by state (metrics), every STATES_EVERY s
        self._states_at = 0.0
        self.stopping = threading.Event()
        self.last_beat = time.monotonic()
        self.reaped = 0

    def job_config(self, name: str) -> JobConfig | None:
        rt = self.jobs.get(name)
        return rt.job if rt else None

    # -- one batch (a procrastinate task, in one of its threads) ----------------------------

    def run_batch(self, name: str, ids: list[int]) -> dict:
        rt = self.jobs.get(name)
        if rt is None:
            raise RuntimeError(f"this worker does not serve job {name!r}")
        stop = rt.stop
        if stop.is_set():
            raise QueuePaused(self._resume_at(rt), f"job {name}: paused")
        with self.stats.lock:
            self.stats.batches_held += 1
        try:
            self._run_items(rt, ids, stop)
        except BaseException:
            self._release(rt, ids)
            raise
        finally:
            with self.stats.lock:
                self.stats.batches_held -= 1
        if stop.is_set():
            raise QueuePaused(self._resume_at(rt), f"job {name}: paused; its items in flight stopped at a chunk boundary")
        queued, due, held = self._left(rt, ids)
        if queued or held:
            wait_s = max(due - time.time(), 0.0) if queued else self.stall_timeout / 2
            raise BatchNotFinished(wait_s, f"job {name}: {queued} item(s) of the batch to try again, "
                                           f"{held} held by another worker")
        return {"items": len(ids)}

    def _release(self, rt: JobRuntime, ids: list[int]) -> None:
        """A batch that broke (a database error): its items this worker holds go back
        to queued at once (uncharged), so its retry, here or elsewhere, takes them."""
        try:
            with self.pool.connection() as c:
                c.execute("UPDATE skynet_jobs.items SET status='queued', worker=NULL, attempts=greatest(attempts-1, 0) "
                          "WHERE job=%s AND id = ANY(%s) AND status='running' AND worker=%s", (rt.job.name, ids, self.id))
        except Exception as exc:  # the database is away: the items wait for the stall timeout instead
            log.warning("job %s: could not hand back a broken batch's items: %s", rt.job.name, exc)

    def _resume_at(self, rt: JobRuntime) -> float:
        """When a paused batch should run again: the window's opening (now + 1 s
        when the worker itself stopped: another worker takes it)."""
        now = time.time()
        if self.stopping.is_set() or rt.window.is_open(now):
            return now
        return rt.window.next_change(now)

    def _left(self, rt: JobRuntime, ids: list[int]) -> tuple[int, float, int]:
        """The batch's items not finished: queued ones (and when the first is due), running ones (held elsewhere)."""
        with self.pool.connection() as c:
            queued, due, held = c.execute(
                "SELECT count(*) FILTER (WHERE status='queued'), coalesce(min(next_at) FILTER (WHERE status='queued'), 0), "
                "count(*) FILTER (WHERE status='running') FROM skynet_jobs.items WHERE job=%s AND id = ANY(%s)",
                (rt.job.name, ids)).fetchone()
        return queued, due, held

    def _run_items(self, rt: JobRuntime, ids: list[int], stop: threading.Event) -> None:
        """The batch's items, `workers` at a time: claimed a few at a time (skipping
        done ones and ones a live worker holds), outcomes recorded as they come."""
        width = rt.job.workers
        todo = list(ids)
        running: set[Future] = set()
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix=f"batch-{rt.job.name}") as pool:
            while todo or running:
                if todo and len(running) <= width // 2 and not stop.is_set():
                    take, todo = todo[:width - len(running)], todo[width - len(running):]
                    for c in rt.table.claim_ids(take, time.time()):
                        running.add(pool.submit(rt.attempt.attempt, c, stop))
                    if not running:
                        continue
                elif stop.is_set():
                    todo = []
                if not running:
                    break
                finished, running = wait(running, timeout=self.heartbeat_every, return_when=FIRST_COMPLETED)
                if finished:
                    self._record(rt, [f.result() for f in finished])

    def _record(self, rt: JobRuntime, outcomes: list[Outcome]) -> None:
        finished = rt.table.record(outcomes)
        self.stats.add(outcomes, finished)
        self.on_outcomes(rt.job.name, outcomes)
        lost = sum(1 for o in outcomes if o.kind == DONE) - finished
        if lost:
            log.info("job %s: %d item(s) were already done (finished by another worker)", rt.job.name, lost)

    # -- heartbeat: our own lease ----------------------------------------------------------

    def _beat_loop(self) -> None:
        import psycopg

        conn = None
        while not self.stopping.wait(self.heartbeat_every if conn is not None else 0.2):
            try:
                if conn is None:
                    conn = psycopg.connect(conninfo(self.dsn), autocommit=True,
                                           connect_timeout=max(2, int(self.heartbeat_every)))
                self._beat(conn)
                self.last_beat = time.monotonic()
                self._report_states()
            except Exception as exc:
                log.warning("worker %s: heartbeat failed: %s", self.id, exc)
                with contextlib.suppress(Exception):
                    conn.close()  # type: ignore[union-attr]
                conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.execute("UPDATE skynet_jobs.workers SET stopped_at=now(), batches_held=0 WHERE id=%s", (self.id,))
                conn.close()

    def _report_states(self) -> None:
        """The jobs' item counts for /metrics: a GROUP BY over the job's items, so not every beat."""
        if self.on_states is None or time.monotonic() - self._states_at < STATES_EVERY:
            return
        self._states_at = time.monotonic()
        for name, rt in self.jobs.items():
            by_state: dict[str, int] = {}
            for (status, _cls), n in rt.table.counts().items():
                by_state[status] = by_state.get(status, 0) + n
            self.on_states(name, by_state)

    def _beat(self, conn: Any) -> None:
        s = self.stats
        elapsed = max(time.time() - s.started, 1e-6)
        conn.execute(
            "INSERT INTO skynet_jobs.workers(id, jobs, host, pid, started_at, last_heartbeat, batches_held, done, "
            "failed, bytes, rate) VALUES (%s, %s, %s, %s, to_timestamp(%s), now(), %s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET last_heartbeat=now(), batches_held=excluded.batches_held, "
            "done=excluded.done, failed=excluded.failed, bytes=excluded.bytes, rate=excluded.rate",
            (self.id, list(self.jobs), socket.gethostname(), os.getpid(), s.started, s.batches_held, s.done,
             s.failed, s.bytes, s.done / elapsed))

    def lease_ok(self) -> bool:
        """Renewed within half the stall timeout: nobody can declare this worker
        stalled before it has stopped (half the timeout is its margin to stop)."""
        return time.monotonic() - self.last_beat < self.stall_timeout / 2

    # -- the supervisor: windows, pauses, idleness, the lease -------------------------------

    def stop(self) -> None:
        self.stopping.set()
        for rt in self.jobs.values():
            rt.stop.set()

    def run(self) -> int:
        global _RUNTIME
        _RUNTIME = self
        ensure_schema(self.dsn)
        with self.pool.connection() as c:
            self._beat(c)
        self.last_beat = time.monotonic()
        beat = threading.Thread(target=self._beat_loop, name="fleet-heartbeat", daemon=True)
        beat.start()
        threading.Thread(target=self._watch_lease, name="fleet-lease", daemon=True).start()
        try:
            return asyncio.run(self._main())
        finally:
            self.stop()
            beat.join(timeout=5)
            for t in self.transfers:
                with contextlib.suppress(Exception):
                    t.close()
            self.pool.close()
            _RUNTIME = None

    async def _main(self) -> int:
        app = build_app(self.dsn, pool_size=self.concurrency * len(self.jobs) + 6, stall_timeout=self.stall_timeout)
        async with app.open_async():
            reaper = asyncio.create_task(self._serve(app, [FLEET_QUEUE], 1))
            try:
                while not self.stopping.is_set():
                    try:
                        await self._windows(app)
                        if self.exit_when_idle and await self._idle(app):
                            log.info("worker %s: no batch left on %s: exiting", self.id, ", ".join(self.jobs))
                            break
                    except Exception as exc:  # the database is away: the lease check above decides
                        log.warning("worker %s: %s", self.id, exc)
                    await asyncio.sleep(0.5)
            finally:
                self.stop()
                for task in [rt.task for rt in self.jobs.values()] + [reaper]:
                    if task is not None:
                        task.cancel()
                for task in [rt.task for rt in self.jobs.values()] + [reaper]:
                    if task is not None:
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
        return 0

    def _watch_lease(self) -> None:
        """A thread of its own (the event loop may be stuck on a silent network):
        not renewed for half the stall timeout, soon others may take this worker's
        batches. Its transfers stop (at a chunk boundary, if they can within a
        moment) and the process ends at once: threads blocked on an unreachable
        database must not get to write anything after another worker took over."""
        while self.lease_ok():
            if self.stopping.wait(0.25):
                return
        self.stop()
        time.sleep(min(2.0, self.heartbeat_every))
        log.error("worker %s: heartbeat not renewed for %.0f s: its transfers stopped; the worker kills itself "
                  "(SIGKILL: no thread blocked on the database may write after another worker took over)",
                  self.id, time.monotonic() - self.last_beat)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)

    def _serve(self, app: Any, queues: list[str], concurrency: int) -> Any:
        return app.run_worker_async(
            queues=queues, concurrency=concurrency, name=f"{self.id}/{queues[0]}", install_signal_handlers=False,
            update_heartbeat_interval=self.heartbeat_every, stalled_worker_timeout=self.stall_timeout,
            delete_jobs="successful", fetch_job_polling_interval=2.0, shutdown_graceful_timeout=self.stall_timeout / 2)

    async def _windows(self, app: Any) -> None:
        """Each job's pause row follows its window; a paused job's queue is not served."""
        now = time.time()
        for name, rt in self.jobs.items():
            paused = await asyncio.to_thread(self._pause_row, name, not rt.window.is_open(now))
            if paused == rt.paused:
                continue
            rt.paused = paused
            if paused:
                log.info("job %s: window closed: its queue is paused; items in flight stop at a chunk boundary", name)
                rt.stop.set()
                if rt.task is not None:
                    rt.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await rt.task
                    rt.task = None
            else:
                if rt.task is not None or self.stopping.is_set():
                    continue
                log.info("job %s: window open: taking batches", name)
                rt.stop = threading.Event()
                rt.task = asyncio.create_task(self._serve(app, [queue_of(name)], self.concurrency))

    def _pause_row(self, job: str, closed: bool) -> bool:
        return sync_pause(self.pool, job, closed)

    async def _idle(self, app: Any) -> bool:
        for name in self.jobs:
            for q in await app.job_manager.list_queues_async(queue=queue_of(name)):
                if q["todo"] or q["doing"]:
                    return False
        return True


def sync_pause(pool: Any, job: str, closed: bool) -> bool:
    """Set the job's pause row from its window (every worker writes the same; an
    operator's pause is left alone), and return what the row says: paused or not."""
    with pool.connection() as c:
        c.execute("INSERT INTO skynet_jobs.pauses(job, paused, reason) VALUES (%s, %s, 'window') "
                  "ON CONFLICT (job) DO UPDATE SET paused=excluded.paused, changed_at=now() "
                  "WHERE pauses.paused IS DISTINCT FROM excluded.paused AND pauses.reason = 'window'",
                  (job, closed))
        return c.execute("SELECT paused FROM skynet_jobs.pauses WHERE job=%s", (job,)).fetchone()[0]


def set_pause(pool: Any, job: str, paused: bool) -> None:
    """`job pause`: every worker stops taking the job's batches until `job resume`
    (reason 'operator': a window does not undo it); resume hands the row back to the window."""
    with pool.connection() as c:
        c.execute("INSERT INTO skynet_jobs.pauses(job, paused, reason) VALUES (%s, %s, %s) ON CONFLICT (job) DO UPDATE "
                  "SET paused=excluded.paused, reason=excluded.reason, changed_at=now()",
                  (job, paused, "operator" if paused else "window"))


def pause_state(pool: Any, job: str) -> str | None:
    """Why the job's queue is paused ('window', 'operator'), or None."""
    with pool.connection() as c:
        row = c.execute("SELECT reason FROM skynet_jobs.pauses WHERE job=%s AND paused", (job,)).fetchone()
    return row[0] if row else None


def worker_rows(pool: Any, job: str | None = None, *, live_within: float = 3600.0) -> list[dict]:
    """The workers seen in the last `live_within` seconds (all jobs, or those serving `job`)."""
    with pool.connection() as c:
        cur = c.execute(
            "SELECT id, host, pid, jobs, extract(epoch FROM last_heartbeat)::float8, batches_held, done, failed, bytes, rate, "
            "stopped_at IS NOT NULL, extract(epoch FROM now() - last_heartbeat)::float8 FROM skynet_jobs.workers "
            "WHERE last_heartbeat > now() - make_interval(secs => %s) AND (%s::text IS NULL OR %s = ANY(jobs)) "
            "ORDER BY host, pid", (live_within, job, job))
        keys = ("id", "host", "pid", "jobs", "last_heartbeat", "batches_held", "done", "failed", "bytes", "rate",
                "stopped", "age")
        return [dict(zip(keys, r)) for r in cur.fetchall()]
