"""The job runner: worker threads take due items from the item table, transfer
each one, and the results go back into the table.

One thread (the caller of run()) owns the table's writes for the run: it
claims due items a batch at a time, hands them to the workers through a
bounded queue, and records every outcome that arrived while its previous
commit ran in one transaction (group commit: batches grow with the load, a
lone result is committed at once). So the table is never the bottleneck, and
the window between an item finishing and its row saying so stays short.

Retries: a transient failure (timeout, refused, 5xx, reset) is tried again
after `retry_after[attempt-1]` (the last wait repeats) until `max_attempts`;
a permanent one (404, 410, checksum, too large, unsupported) fails at once.
A host that refuses connections also backs off as a whole (skynet's one
back-off): while it does, its other items fail with it without a request of
their own (an attempt each, retried no earlier than the host is due again), so
a dead host costs one connection per back-off and its items still reach their
end after max_attempts, however many there are. Nothing polls: the loop sleeps until the next
result, the next due item or the next change of the window.

Windows: outside its window the job starts no item, and the transfers in
flight are asked to stop (ctx.stop); they end at a chunk boundary with their
resume state saved, and are queued again without being charged an attempt,
to continue mid-file when the window opens.

The clock is injectable: tests run days of retries and windows in moments.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from connections.contract.xcon import TransferContext
from skynet.config.settings import JobConfig
from skynet.engine.backoff import Backoff
from skynet.jobs.attempt import HOST_BACKOFF, Clock, HostGate, ItemAttempt, SystemClock  # noqa: F401 (re-exported)
from skynet.jobs.intake import Intake
from skynet.jobs.item import OTHER, Item, ItemResult
from skynet.jobs.table import DONE, FAILED, QUEUED, RUNNING, Claimed, ItemTable, Outcome
from skynet.transfer.throttle import Window

log = logging.getLogger("skynet.jobs")

EXIT_DONE, EXIT_STOPPED, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
PROGRESS_EVERY = 5.0  # seconds between the run's progress rows (`job status` reads them)
GROUP_WAIT = 0.01  # seconds an outcome may wait for others to share its transaction (_gather)
GROUP_POLL = 0.002
CLAIM_AHEAD = 2  # items claimed per worker beyond the one it runs


@dataclass
class Counters:
    """This run's numbers, for the progress bar and the progress row."""

    started: float
    done: int = 0
    failed: int = 0
    bytes: int = 0
    pending: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # every failed attempt, by class
    failed_by_class: dict[str, int] = field(default_factory=dict)  # items failed for good, by class


class Runner:
    """Runs one job until every item is done or failed for good (or stop())."""

    def __init__(self, job: JobConfig, table: ItemTable, transfer: Callable[[Item, TransferContext], ItemResult], *,
                 intake: Intake | None = None, clock: Clock | None = None, throttle: Callable[[int], None] | None = None,
                 host_backoff: Backoff = HOST_BACKOFF, on_change: Callable[[], None] | None = None) -> None:
        self.job, self.table, self.transfer = job, table, transfer
        self.intake = intake
        self.clock = clock or SystemClock()
        self.throttle = throttle
        self.window = Window(job.window)
        self.gate = HostGate(host_backoff)
        self.attempts = ItemAttempt(job, table, transfer, self.clock, throttle=throttle, gate=self.gate)
        self.on_change = on_change or (lambda: None)
        self.on_progress: Callable[[dict], None] = lambda state: None  # the notifier's job()
        self.base: dict[tuple[str, str | None], int] = {}  # the table's counts when the run started
        self.base_bytes = 0
        self.work: queue.Queue[Claimed | None] = queue.Queue()
        self.outcomes: queue.Queue[Outcome | None] = queue.Queue()
        self.pause = threading.Event()  # ctx.stop of the transfers started in this opening of the window
        self.stopping = threading.Event()
        self.in_flight = 0  # claimed, outcome not yet recorded
        self.counters = Counters(started=self.clock.now())
        self._last_progress = 0.0

    # -- control ------------------------------------------------------------------

    def stop(self) -> None:
        """End the run soon (SIGTERM, SIGINT): no new item; transfers in flight
        stop at a chunk boundary and keep their resume state."""
        self.stopping.set()
        self.pause.set()
        self.outcomes.put(None)  # wake the loop

    # -- the table thread ---------------------------------------------------------

    def run(self) -> int:
        requeued = self.table.requeue_running()
        if requeued:
            log.info("job %s: %d item(s) a stopped run left running are queued again", self.job.name, requeued)
        self.base, self.base_bytes = self.table.counts(), self.table.bytes_done()
        self.counters.pending = sum(n for (status, _), n in self.base.items() if status in (QUEUED, RUNNING))
        intake_thread = self._start_intake()
        workers = [threading.Thread(target=self._worker, name=f"job-{i}", daemon=True) for i in range(self.job.workers)]
        for w in workers:
            w.start()
        try:
            self._loop(intake_thread)
        finally:
            self.pause.set()
            for _ in workers:
                self.work.put(None)
            self._drain_unstarted()
            while self.in_flight:
                self._record([self.outcomes.get()])
            for w in workers:
                w.join()
            if intake_thread is not None:
                intake_thread.join()
            self._progress(force=True, running=False)
        return self.exit_code()

    def exit_code(self) -> int:
        if self.stopping.is_set():
            return EXIT_STOPPED
        counts = self.table.counts()
        failed = sum(n for (status, _), n in counts.items() if status == FAILED)
        return EXIT_FAILED if failed or self.table.problem_counts() else EXIT_DONE

    def _start_intake(self) -> threading.Thread | None:
        if self.intake is None or self.intake.finished.is_set():
            return None

        def added(n: int) -> None:
            self.counters.pending += n
            self.outcomes.put(None)  # new items may be due: wake the loop

        self.intake.on_added = added
        t = threading.Thread(target=self._intake, name="job-intake", daemon=True)
        t.start()
        return t

    def _intake(self) -> None:
        try:
            self.intake.run(self.stopping)  # type: ignore[union-attr]
        except Exception:
            log.exception("job %s: reading its source failed", self.job.name)
            self.stop()
        finally:
            self.outcomes.put(None)

    def _intake_done(self) -> bool:
        return self.intake is None or self.intake.finished.is_set()

    def _loop(self, intake_thread: threading.Thread | None) -> None:
        is_open = None
        while not self.stopping.is_set():
            now = self.clock.now()
            was, is_open = is_open, self.window.is_open(now)
            if was is not None and was != is_open:
                log.info("job %s: window %s", self.job.name, "opens: items start again" if is_open else
                         "closes: no new item; transfers in flight pause at a chunk boundary")
            if not is_open:
                self.pause.set()
                self._drain_unstarted()
            elif self.pause.is_set():
                self.pause = threading.Event()
            claimed = self._top_up(now) if is_open else 0
            if not claimed and not self.in_flight and self._intake_done() and (intake_thread is None or not intake_thread.is_alive()):
                due = self.table.next_due()
                if due is None:
                    return  # every item is done or failed for good
            self._wait(now, is_open)
            self._progress()

    def _hungry(self) -> bool:
        """Claim only once a worker's worth of items is gone: one transaction
        then takes a batch, not an item at a time."""
        return self.in_flight <= CLAIM_AHEAD * self.job.workers

    def _top_up(self, now: float) -> int:
        """Claim due items so that every worker has one and CLAIM_AHEAD more wait
        (enough that the workers never idle while outcomes gather for a commit)."""
        room = (CLAIM_AHEAD + 1) * self.job.workers - self.in_flight
        if not self._hungry() or room <= 0:
            return 0
        batch = self.table.claim(room, now)
        for c in batch:
            self.in_flight += 1
            self.work.put(c)
        return len(batch)

    def _wait(self, now: float, is_open: bool) -> None:
        """Sleep until an outcome arrives, the next item is due or the window changes."""
        if is_open and self._hungry():
            due = self.table.next_due()
            until = due if due is not None else now + self.clock.max_wait()
        else:
            until = now + self.clock.max_wait()
        if not self.window.always:
            until = min(until, self.window.next_change(now))
        timeout = min(max(until - now, 0.0), self.clock.max_wait())
        got: list[Outcome | None] = []
        try:
            got.append(self.outcomes.get(timeout=timeout) if timeout > 0 else self.outcomes.get_nowait())
        except queue.Empty:
            return
        if got[0] is not None:
            self._gather()
        while True:  # everything that is there: one transaction
            try:
                got.append(self.outcomes.get_nowait())
            except queue.Empty:
                break
        self._record([o for o in got if o is not None])

    def _gather(self) -> None:
        """Group commit: after an outcome, let the other transfers in flight finish into
        the same transaction, for at most GROUP_WAIT and only while the workers have
        items waiting (they never idle for it). One outcome per commit cost 85 us of this
        thread's CPU per item on a job of small items (half of it the transaction)."""
        deadline = time.monotonic() + GROUP_WAIT
        enough = max(2, self.job.workers)
        while self.outcomes.qsize() < min(enough, self.in_flight) and self.work.qsize() * 2 >= self.job.workers:
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping.is_set():
                return
            time.sleep(min(left, GROUP_POLL))

    def _record(self, outcomes: list[Outcome | None]) -> None:
        real = [o for o in outcomes if o is not None]
        if not real:
            return
        self.table.record(real)
        self.in_flight -= len(real)
        for o in real:
            if o.kind == DONE:
                self.counters.done += 1
                self.counters.pending -= 1
            elif o.kind == FAILED:
                self.counters.failed += 1
                self.counters.pending -= 1
                cls = o.error_class or OTHER
                self.counters.failed_by_class[cls] = self.counters.failed_by_class.get(cls, 0) + 1
            if o.error_class:
                self.counters.errors[o.error_class] = self.counters.errors.get(o.error_class, 0) + 1
            self.counters.bytes += o.bytes
        self.on_change()

    def _drain_unstarted(self) -> None:
        """Items handed out but not started go back, uncharged."""
        while True:
            try:
                c = self.work.get_nowait()
            except queue.Empty:
                return
            if c is None:
                self.work.put(None)  # a worker's end: leave it for the worker
                return
            self.outcomes.put(Outcome(c.id, "release", self.clock.now()))

    def _progress(self, force: bool = False, running: bool = True) -> None:
        now = self.clock.now()
        if not force and now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        c = self.counters
        elapsed = max(now - c.started, 1e-6)
        self.table.set("progress", {"at": now, "started": c.started, "running": running, "done": c.done,
                                    "failed": c.failed, "bytes": c.bytes, "rate": c.done / elapsed,
                                    "bytes_rate": c.bytes / elapsed, "pending": max(c.pending, 0)})
        self.on_progress(self.snapshot(running))

    def snapshot(self, running: bool = True) -> dict:
        """The job's state from the counts at start and this run's outcomes, without
        scanning the table: what the notifier reports (the shape of `job status --json`)."""
        c = self.counters
        by_status = {s: 0 for s in (QUEUED, RUNNING, DONE, FAILED)}
        errors: dict[str, int] = {}
        for (status, cls), n in self.base.items():
            by_status[status] = by_status.get(status, 0) + n
            if status == FAILED and cls:
                errors[cls] = errors.get(cls, 0) + n
        for cls, n in c.failed_by_class.items():
            errors[cls] = errors.get(cls, 0) + n
        pending = max(c.pending, 0)
        in_flight = min(self.in_flight, self.job.workers, pending) if running else 0  # claimed ahead: still queued
        elapsed = max(self.clock.now() - c.started, 1e-6)
        rate = c.done / elapsed if running else 0.0
        by_status.update({DONE: by_status[DONE] + c.done, FAILED: by_status[FAILED] + c.failed,
                          RUNNING: in_flight, QUEUED: pending - in_flight})
        return {"name": self.job.name, "source": self.job.source, "target": self.job.target, "counts": by_status,
                "errors": errors, "bytes": self.base_bytes + c.bytes, "rate": rate,
                "eta_seconds": pending / rate if rate > 0 else None, "running": running}

    # -- the workers --------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            c = self.work.get()
            if c is None:
                return
            self.outcomes.put(self._attempt(c))

    def _attempt(self, c: Claimed) -> Outcome:
        """One try of one item (skynet/jobs/attempt.py: the same code as `skynet worker`)."""
        return self.attempts.attempt(c, self.pause)
