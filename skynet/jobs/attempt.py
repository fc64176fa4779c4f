"""One try of one item, as the Outcome to record: the per-item logic `job run`
(skynet/jobs/runner.py) and `skynet worker` (skynet/jobs/fleet.py) share, so an
item behaves the same on one machine or a hundred: the window checked before it
starts, its host's back-off, its own resume state, the transfer, the
classification of its failure (retried on the job's schedule, or failed for good).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from connections.contract.xcon import TransferContext
from skynet.config.settings import JobConfig
from skynet.engine.backoff import Backoff, BackoffCounter
from skynet.jobs.item import OTHER, REFUSED, TIMEOUT, Item, ItemFailed, ItemResult, scheme_host
from skynet.jobs.table import DONE, FAILED, Claimed, ItemResume, Outcome
from skynet.transfer.chunks import TransferStopped
from skynet.transfer.throttle import Window

log = logging.getLogger("skynet.jobs")

HOST_ERRORS = (REFUSED,)  # the host, not the item: its other items wait too (a timeout may be one stalled item)
HOST_BACKOFF = Backoff(initial=1.0, cap=60.0, jitter=1.0)


class Clock(Protocol):
    """Time for the runner: now() in epoch seconds; wait() sleeps on a queue."""

    def now(self) -> float: ...

    def max_wait(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def max_wait(self) -> float:
        return 60.0  # wake at least this often (a changed table, a signal)


class ResumeSaver(Protocol):
    """What an item's resume store writes to: either item table."""

    def save_resume(self, item_id: int, state: dict | None) -> None: ...


class HostGate:
    """Per-host back-off: after a refused connection or a timeout, the host's
    items wait (uncharged) until it is due again; a success resets it."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._lock = threading.Lock()
        self._hosts: dict[str, tuple[BackoffCounter, float]] = {}

    @staticmethod
    def host(item: Item) -> str:
        return scheme_host(item.source)[1]

    def until(self, item: Item) -> float:
        if not self._hosts:  # no host is backing off (nearly always): no lock, no parsing per item
            return 0.0
        with self._lock:
            found = self._hosts.get(self.host(item))
        return found[1] if found else 0.0

    def failed(self, item: Item, now: float) -> float:
        host = self.host(item)
        with self._lock:
            counter = self._hosts.get(host, (BackoffCounter(self.backoff), 0.0))[0]
            until = now + counter.failed()
            self._hosts[host] = (counter, until)
        return until

    def ok(self, item: Item) -> None:
        if self._hosts:
            with self._lock:
                self._hosts.pop(self.host(item), None)


class ItemAttempt:
    """attempt(claimed, stop) -> Outcome. One per run (or worker), shared by its threads."""

    def __init__(self, job: JobConfig, table: ResumeSaver, transfer: Callable[[Item, TransferContext], ItemResult],
                 clock: Clock, *, throttle: Callable[[int], None] | None = None,
                 gate: HostGate | None = None) -> None:
        self.job, self.table, self.transfer, self.clock, self.throttle = job, table, transfer, clock, throttle
        self.window = Window(job.window)
        self.gate = gate or HostGate(HOST_BACKOFF)

    def attempt(self, c: Claimed, stop: threading.Event) -> Outcome:
        """One try of one item, as the outcome to record. `stop` is ctx.stop: set,
        the transfer ends at a chunk boundary and the item is released."""
        now = self.clock.now()
        if stop.is_set() or not self.window.is_open(now):  # the window closed since it was claimed
            return Outcome(c.id, "release", now)
        until = self.gate.until(c.item)
        if until > now:  # its host refused moments ago: this item fails with it, without a request of its own
            host = HostGate.host(c.item)
            return self.failed(c, ItemFailed(REFUSED, f"{c.item.source}: not tried: {host} refused a connection "
                                             f"and is backing off", permanent=False), stop, probe=False)
        ctx = TransferContext(resume=ItemResume(self.table, c.id, c.resume), stop=stop,  # type: ignore[arg-type]
                              throttle=self.throttle)
        try:
            result = self.transfer(c.item, ctx)
        except TransferStopped:
            return Outcome(c.id, "release", self.clock.now())
        except ItemFailed as exc:
            return self.failed(c, exc, stop)
        except Exception as exc:  # a bug or an unclassified error: transient, and logged whole
            log.exception("job %s: %s: unexpected error", self.job.name, c.item.source)
            return self.failed(c, ItemFailed(OTHER, f"{type(exc).__name__}: {exc}", permanent=False), stop)
        self.gate.ok(c.item)
        return Outcome(c.id, DONE, self.clock.now(), bytes=result.bytes_sent, size=result.size)

    def failed(self, c: Claimed, exc: ItemFailed, stop: threading.Event, probe: bool = True) -> Outcome:
        """The outcome of a failed attempt: retried on the job's schedule (and not
        before its host is due again), or failed for good. `probe`: the attempt
        reached for the host (not one set aside because the host is backing off)."""
        now = self.clock.now()
        if stop.is_set() and exc.error_class in (REFUSED, TIMEOUT):
            # a transfer cut short by the window's end may fail as a timeout: not its fault
            return Outcome(c.id, "release", now)
        next_at = 0.0
        if exc.error_class in HOST_ERRORS:
            next_at = self.gate.failed(c.item, now) if probe else self.gate.until(c.item)
        args = dict(error_class=exc.error_class, status_code=exc.status, error=exc.text)
        if exc.permanent or c.attempts >= self.job.max_attempts:
            log.warning("job %s: %s failed%s: %s", self.job.name, c.item.source,
                        "" if exc.permanent else f" after {c.attempts} attempts", exc.text)
            return Outcome(c.id, FAILED, now, **args)
        wait = retry_wait(self.job, c.attempts)
        return Outcome(c.id, "retry", now, next_at=max(now + wait, next_at), **args)


def retry_wait(job: JobConfig, attempts: int) -> float:
    """The wait before the next try after `attempts` tries (the schedule's last wait repeats)."""
    return job.retry_after[min(max(attempts, 1), len(job.retry_after)) - 1]
