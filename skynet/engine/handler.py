"""Handler: runs queued actions on a pool of workers, in a safe order.

Scheduling only (s3transfer's split: this decides *when*, the Reconciler
decides *what*, the XCon *how*):

* Ordering: two actions touching the same path, or a folder and a path under
  it, never run at once and run in queue order; unrelated paths run in
  parallel. The dispatcher keeps a window of claimed actions and hands out the
  oldest one whose paths conflict with nothing running and nothing older that
  is still waiting.
* Wake-ups: the queue calls `wake()` after each commit and workers notify when
  they finish, so an idle handler sleeps on a condition variable and reacts at
  once. The only timed wait is for a retry's back-off.
* Failures: a TransientError first checks the connection. If the remote is
  down, every worker pauses and a reconnect loop polls with capped exponential
  back-off and jitter (skynet.engine.backoff); the action goes back to the front of the
  window and is retried, not dropped. If the remote is fine, the action alone
  is retried with back-off, up to `max_attempts`, then recorded as failed. A
  PermanentError records it as failed at once. Either way the queue moves on.
"""
from __future__ import annotations

import dataclasses
import logging
from queue import SimpleQueue
import threading
import time
from typing import Callable

from connections.contract.xcon import PermanentError, TransientError, XCon
from skynet.engine.backoff import Backoff
from skynet.engine.reconcile import Outcome, Reconciler, SourceUnavailable
from skynet.state.db import FailedActions
from skynet.state.uniqueq import LOOK_UP, SEND, Action, UniqueQ

log = logging.getLogger(__name__)

WINDOW = 2048  # claimed actions held in memory: enough for every worker to take a full batch
# Sends one worker takes at once when the reconciler takes batches: LocalCon
# copies a batch with one cp, whose start-up (~2 ms of CPU) is then shared by
# up to 256 files (measured, 10,000 files: ~50 cp runs of median 256 files,
# against ~190 of median 20 with 64 and the window split among all workers).
BATCH = 256
BATCH_LOOKAHEAD = 2 * BATCH  # how far into the window a batch looks for more sends


def ancestors(rel: str) -> list[str]:
    """'a/b/c' -> ['', 'a', 'a/b'] (the root '' is every path's ancestor)."""
    out = [""]
    i = rel.find("/")
    while i != -1:
        out.append(rel[:i])
        i = rel.find("/", i + 1)
    return out


class PathLocks:
    """A multiset of paths held by actions, with a conflict test that costs
    O(depth): p conflicts with q when p == q or one is a folder holding the
    other. Counted, so that the handler can keep one instance for the running
    actions and update it as they start and end instead of rebuilding it."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}
        self.inner: dict[str, int] = {}  # every proper ancestor of a held path

    def add(self, rel: str) -> None:
        self.held[rel] = self.held.get(rel, 0) + 1
        if rel:
            for a in ancestors(rel):
                self.inner[a] = self.inner.get(a, 0) + 1

    def remove(self, rel: str) -> None:
        _decrement(self.held, rel)
        if rel:
            for a in ancestors(rel):
                _decrement(self.inner, a)

    def conflicts(self, rel: str) -> bool:
        if rel in self.held or rel in self.inner:
            return True
        if rel == "":
            return bool(self.held)
        return any(a in self.held for a in ancestors(rel))


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]


class Handler:
    def __init__(
        self,
        name: str,
        queue: UniqueQ,
        con: XCon,
        reconciler: Reconciler,
        failed: FailedActions,
        workers: int = 8,
        max_attempts: int = 5,
        backoff_cap: float = 60.0,
        on_event: Callable[[str, Action, object], None] | None = None,
        on_fatal: Callable[[str], None] | None = None,
        on_reconnect: Callable[[], None] | None = None,
        on_connection: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.queue = queue
        self.con = con
        self.reconciler = reconciler
        self.failed = failed
        self.n_workers = workers
        self.max_attempts = max_attempts
        self.backoff_cap = backoff_cap
        # One action's retries: 0.5 s, 1 s, 2 s... (+ up to 0.5 s), at most backoff_cap.
        self.retry_backoff = Backoff(initial=0.5, cap=backoff_cap, jitter=0.5)
        # Reconnection attempts while the remote is away: the same, with up to 1 s of jitter.
        self.reconnect_backoff = Backoff(initial=0.5, cap=backoff_cap, jitter=1.0)
        self.on_event = on_event or (lambda kind, action, info: None)
        self.on_fatal = on_fatal or (lambda reason: None)
        # called once the remote is back, before the workers resume (must not raise)
        self.on_reconnect = on_reconnect or (lambda: None)
        # the daemon rewrites its status (--status, the dashboard) when this changes
        self.on_connection = on_connection or (lambda: None)

        self._cv = threading.Condition()
        self._window: list[Action] = []
        self._busy: dict[int, Action] = {}  # running, or done and waiting for their commit
        self._running = PathLocks()  # the paths of the actions in _busy
        self._attempts: dict[int, int] = {}
        self._not_before: dict[int, float] = {}
        self._dirty = True  # the queue may hold work we have not claimed
        self._stopping = False
        self._paused = False
        self.connected = False
        self._idle = 0  # workers waiting on the condition
        self._threads: list[threading.Thread] = []
        # Finished actions wait here for the committer thread, which records a
        # whole batch in one transaction (group commit): under load the batch
        # grows by itself, when quiet each action is committed at once.
        # A SimpleQueue (C, one lock) rather than a Condition: Condition.notify
        # is Python code and showed up at ~6% of the GIL time per small file.
        self._to_commit: SimpleQueue[tuple[Action, Outcome] | None] = SimpleQueue()
        self._committer: threading.Thread | None = None
        self._stop_event = threading.Event()  # tells transfers in flight to stop
        self._halt = threading.Event()  # wakes the reconnect loop's back-off sleep at stop
        # Batches only where they pay: connections that copy many files in one
        # go (LocalCon's cp), and no bandwidth limit (see Reconciler.batch_ok).
        self._batching = bool(getattr(reconciler, "batch_ok", lambda: False)())
        self.stats = Outcome()
        self.done_count = 0
        self.failed_count = 0

    # -- lifecycle ---------------------------------------------------------
    def start(self, connected: bool) -> None:
        self.connected = connected
        self._threads = [
            threading.Thread(target=self._worker_loop, name=f"{self.name}-worker-{i}", daemon=True)
            for i in range(self.n_workers)
        ]
        self._committer = threading.Thread(target=self._commit_loop, name=f"{self.name}-commit", daemon=True)
        self._committer.start()
        for t in self._threads:
            t.start()
        if not connected:
            self._pause("not connected at start-up")

    def wake(self) -> None:
        with self._cv:
            self._dirty = True
            if self._idle:
                self._cv.notify()  # one is enough: a worker that finds more passes the baton on

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop taking work; let running actions finish for up to `timeout`
        seconds, then ask transfers to stop at their next checkpoint (they stay
        resumable). Claimed-but-unstarted actions go back to the queue."""
        deadline = time.monotonic() + timeout
        self._halt.set()
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            while self._busy and time.monotonic() < deadline:
                self._cv.wait(max(0.01, deadline - time.monotonic()))
            if self._busy:
                log.warning("%s: %d action(s) still running at stop; interrupting them (they resume next start)",
                            self.name, len(self._busy))
                self._stop_event.set()
                end = time.monotonic() + 5
                while self._busy and time.monotonic() < end:
                    self._cv.wait(0.1)
            leftover = [a.id for a in self._window]
            self._window.clear()
        if leftover:
            self.queue.release(leftover)
        for t in self._threads:
            t.join(timeout=2)
        self._to_commit.put(None)  # the committer stops once everything before it is committed
        if self._committer is not None:
            self._committer.join(timeout=10)
        return not self._busy

    def idle(self) -> bool:
        """No action running, none claimed, none waiting (for tests and status)."""
        with self._cv:
            return not self._busy and not self._window and not self._dirty and not self._paused

    def describe_state(self) -> str:
        """The scheduler's state in one line (SIGUSR2: why is nothing moving?).
        Reads without the lock if it is held for long: a wedged lock is itself the answer."""
        locked = self._cv.acquire(timeout=2)
        try:
            head = ", ".join(f"#{a.id} {a}" for a in self._window[:5])
            busy = ", ".join(f"#{i} {a}" for i, a in list(self._busy.items())[:5])
            held = list(self._running.held)[:5]
            return (f"{'' if locked else 'LOCK HELD ELSEWHERE; '}window {len(self._window)} [{head}], "
                    f"busy {len(self._busy)} [{busy}], held paths {len(self._running.held)} {held}, "
                    f"dirty {self._dirty}, idle workers {self._idle}/{self.n_workers}, paused {self._paused}, "
                    f"stopping {self._stopping}, retry timers {len(self._not_before)}, "
                    f"to commit {self._to_commit.qsize()}")
        finally:
            if locked:
                self._cv.release()

    def in_flight(self) -> list[Action]:
        with self._cv:
            return list(self._busy.values())

    # -- workers: each one takes its next action itself ----------------------
    # There is no dispatcher thread: a worker that finishes picks the next
    # runnable action under the lock and runs it, so a busy handler hands work
    # over without waking anybody (one thread switch less per file). Idle
    # workers sleep on the condition and are woken only when there is work.
    def _worker_loop(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._stopping:
                        return
                    if self._paused:
                        self._wait(None)
                        continue
                    taken, timeout = self._take()
                    if taken:
                        if self._idle and self._window:
                            self._cv.notify()  # more may be runnable: pass the baton on
                        break
                    self._wait(timeout)
            if len(taken) == 1:
                self._run(taken[0])
            else:
                self._run_batch(taken)

    def _wait(self, timeout: float | None) -> None:
        self._idle += 1
        try:
            self._cv.wait(timeout)
        finally:
            self._idle -= 1

    def _take(self) -> tuple[list[Action], float | None]:
        """The oldest action whose paths conflict with nothing running and
        nothing older still waiting (called with the lock held); if it is a
        `send` and the reconciler takes batches, more runnable sends after it,
        up to this worker's share of the window. Returns them, or [] and how
        long to sleep (None: until woken)."""
        if self._dirty and len(self._window) < WINDOW // 2:
            self._dirty = False
            try:
                claimed = self.queue.claim(WINDOW - len(self._window))
            except Exception as exc:  # state database unusable
                self.on_fatal(f"{self.name}: cannot read the action queue: {exc}")
                return [], None
            self._window.extend(self._vouch(claimed))
            if len(claimed) >= WINDOW // 2:
                self._dirty = True  # probably more behind them
        if not self._window:
            return [], None
        skipped: PathLocks | None = None  # paths of older actions still waiting
        now: float | None = None
        next_due: float | None = None
        taken: list[Action] = []
        want = 1
        i = -1
        while i + 1 < len(self._window):
            i += 1
            a = self._window[i]
            if taken and (a.kind != SEND or i > BATCH_LOOKAHEAD or a.id in self._attempts):
                break  # a batch holds first tries of sends only, found near the front
            paths = a.paths()
            blocked = any(self._running.conflicts(p) or (skipped is not None and skipped.conflicts(p)) for p in paths)
            due = self._not_before.get(a.id) if self._not_before else None
            if not blocked and due is not None:
                now = time.monotonic() if now is None else now
                if due > now:
                    blocked = True
                    next_due = due if next_due is None else min(next_due, due)
            if blocked:
                skipped = skipped or PathLocks()
                for p in paths:  # later actions on these paths must wait too
                    skipped.add(p)
                continue
            del self._window[i]
            i -= 1
            self._hold(a)  # later sends in the batch conflict-check against it too
            taken.append(a)
            # A retry runs alone: a send() that failed may have left a temporary
            # file that only another send() of the same file overwrites.
            if len(taken) == 1 and a.kind == SEND and self._batching and a.id not in self._attempts:
                # This worker's share of the window: split with the workers free
                # to take the rest now, not with those busy with their own batch.
                want = min(BATCH, max(1, (len(self._window) + 1) // (self._idle + 1)))
            if len(taken) >= want:
                break
        if taken:
            return taken, None
        return [], (None if next_due is None else max(0.0, next_due - (now or time.monotonic())))

    def _vouch(self, claimed: list[Action]) -> list[Action]:
        """Keep the Index entry each action was claimed with only if nothing can
        change it before the action runs (lock held). Only an action on the same
        path or a folder around it writes that entry, and those run in queue
        order: so the entry is stale only if such an action is running or not
        yet committed, or waits ahead of this one. Otherwise the worker looks
        the entry up itself when the action runs, as before."""
        ahead = PathLocks()
        for a in self._window:
            for p in a.paths():
                ahead.add(p)
        out = []
        for a in claimed:
            paths = a.paths()
            if a.entry is not LOOK_UP and any(self._running.conflicts(p) or ahead.conflicts(p) for p in paths):
                a = dataclasses.replace(a, entry=LOOK_UP)
            for p in paths:
                ahead.add(p)
            out.append(a)
        return out

    def _hold(self, a: Action) -> None:
        """`a` starts: its paths are busy until it is committed or given back (lock held)."""
        self._busy[a.id] = a
        for p in a.paths():
            self._running.add(p)

    def _drop(self, a: Action) -> None:
        """`a` is no longer running (lock held)."""
        if self._busy.pop(a.id, None) is not None:
            for p in a.paths():
                self._running.remove(p)

    def _released(self, n: int = 1) -> None:
        """Paths of `n` actions were freed (lock held): wake as many idle
        workers, and stop() if it waits for the last running action."""
        if self._idle:
            self._cv.notify_all() if self._stopping else self._cv.notify(n)
        elif self._stopping:
            self._cv.notify_all()

    def _run(self, a: Action) -> None:
        self.on_event("started", a, None)
        try:
            result: Outcome | Exception = self.reconciler.run(a, self._stop_event)
        except Exception as exc:  # classified below; nothing escapes a worker
            result = exc
        self._settle(a, result)

    def _run_batch(self, batch: list[Action]) -> None:
        """Several sends through Reconciler.run_many; each settles on its own."""
        for a in batch:
            self.on_event("started", a, None)
        try:
            results: list[Outcome | Exception] = self.reconciler.run_many(batch, self._stop_event)
        except Exception as exc:  # run_many hands errors back per action; this is a bug
            log.exception("%s: a batch of %d sends failed as a whole", self.name, len(batch))
            results = [exc] * len(batch)
        for a, result in zip(batch, results):
            self._settle(a, result)

    def _settle(self, a: Action, result: Outcome | Exception) -> None:
        """An action ran: commit its outcome, or retry or record its error."""
        error = result if isinstance(result, Exception) else None
        if error is None:
            self._finish(a, result)
        elif isinstance(error, TransientError) and not self._stopping:
            self._transient(a, error)
        elif isinstance(error, TransientError):
            self._give_back(a)  # stopping: leave it queued for the next start
        else:
            self._fail(a, error)

    def _finish(self, a: Action, outcome: Outcome) -> None:
        """Hand a finished action to the committer. Its paths stay busy until
        its Index rows are committed, so a later action on the same path (a
        delete, say) can never be overtaken by this one's Index write."""
        self._to_commit.put((a, outcome))

    def _commit_loop(self) -> None:
        """Wait for one finished action, then take every other one already
        waiting: that is the batch, committed in one transaction."""
        todo = self._to_commit
        while True:
            item = todo.get()
            batch = []
            while item is not None:
                batch.append(item)
                if todo.empty():
                    break
                item = todo.get()
            if batch:
                self._commit(batch)
            if item is None:
                return

    def _commit(self, batch: list[tuple[Action, Outcome]]) -> None:
        try:
            self.queue.finish_many([(a.id, o.index_rows, a.paths()) for a, o in batch])
        except Exception as exc:  # disk full, state folder gone: stop rather than drift
            self.on_fatal(f"{self.name}: cannot record {len(batch)} finished action(s) in the state database: {exc}")
        if log.isEnabledFor(logging.INFO):
            for a, o in batch:
                log.info("%s: done %s%s", self.name, a, _describe(o))
        stats = self.stats
        with self._cv:
            for a, o in batch:
                self._drop(a)
                if self._attempts:
                    self._attempts.pop(a.id, None)
                    self._not_before.pop(a.id, None)
                stats.uploaded += o.uploaded
                stats.bytes_sent += o.bytes_sent
                stats.deleted += o.deleted
                stats.moved += o.moved
            self.done_count += len(batch)
            self._released(len(batch))
        for a, o in batch:
            self.on_event("done", a, o)

    def _fail(self, a: Action, error: Exception) -> None:
        attempts = self._attempts.get(a.id, 0) + 1
        kind = "permanent error" if isinstance(error, PermanentError) else "error"
        if not isinstance(error, (PermanentError, TransientError)):
            log.exception("%s: unexpected error in %s", self.name, a, exc_info=error)
        log.error("%s: FAILED %s after %d attempt(s): %s: %s", self.name, a, attempts, kind, error)
        try:
            self.failed.record(a.kind, a.src, a.dest, str(error), attempts)
            self.queue.done(a.id)
        except Exception as exc:
            self.on_fatal(f"{self.name}: cannot record the failure of {a} in the state database: {exc}")
        with self._cv:
            self._drop(a)
            self._attempts.pop(a.id, None)
            self._not_before.pop(a.id, None)
            self.failed_count += 1
            self._cv.notify_all()
        self.on_event("failed", a, error)

    def _give_back(self, a: Action, retry: tuple[int, float] | None = None) -> None:
        """`a` waits again, at the front of the window (its paths first in line);
        `retry`: (attempts so far, monotonic time before which it must not run)."""
        with self._cv:
            if retry is not None:
                self._attempts[a.id], self._not_before[a.id] = retry
            self._drop(a)
            self._window.insert(0, _unvouched(a))
            self._cv.notify_all()

    def _transient(self, a: Action, error: Exception) -> None:
        if isinstance(error, SourceUnavailable):
            log.error("%s: %s; pausing this mapping until it is back (nothing is deleted meanwhile)", self.name, error)
            self._give_back(a)
            self._pause(str(error))
            return
        try:
            self.con.check()
            remote_ok = True
        except Exception:
            remote_ok = False
        if not remote_ok:
            log.warning("%s: remote unreachable during %s: %s", self.name, a, error)
            self._give_back(a)  # retried first when we are back
            self._pause(str(error))
            return
        attempts = self._attempts.get(a.id, 0) + 1
        if attempts >= self.max_attempts:
            self._attempts[a.id] = attempts - 1
            self._fail(a, error)
            return
        delay = self.retry_backoff.delay(attempts)
        log.warning("%s: %s failed (%s); retry %d/%d in %.1fs", self.name, a, error, attempts,
                    self.max_attempts - 1, delay)
        self._give_back(a, retry=(attempts, time.monotonic() + delay))

    # -- reconnection ------------------------------------------------------
    def _pause(self, why: str) -> None:
        with self._cv:
            if self._paused or self._stopping:
                return
            self._paused = True
            self.connected = False
        log.warning("%s: pausing: %s; reconnecting in the background", self.name, why)
        self.on_connection()
        threading.Thread(target=self._reconnect_loop, name=f"{self.name}-reconnect", daemon=True).start()

    def _reconnect_loop(self) -> None:
        def sleep(seconds: float) -> None:
            self._halt.wait(seconds)
            if self._stopping:
                raise _Stop()

        def before_sleep(rs) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            log.info("%s: still unreachable (%s); next try in %.1fs", self.name, exc, rs.next_action.sleep)

        retrying = self.reconnect_backoff.retrying(sleep, before_sleep)
        try:
            for attempt in retrying:
                with attempt:
                    if self._stopping:
                        return
                    try:
                        self.reconciler.check_source()
                        self.con.connect()
                    except PermanentError as exc:
                        log.critical("%s: cannot reconnect: %s", self.name, exc)
                        raise
        except _Stop:
            return
        except PermanentError:
            return
        log.warning("%s: source and remote are reachable again; resuming", self.name)
        self.on_reconnect()
        with self._cv:
            self._paused = False
            self.connected = True
            self._dirty = True
            self._cv.notify_all()
        self.on_connection()


def _unvouched(a: Action) -> Action:
    """`a` goes back to wait: its claimed Index entry is not vouched for any more."""
    return a if a.entry is LOOK_UP else dataclasses.replace(a, entry=LOOK_UP)


class _Stop(Exception):
    """Raised inside the reconnect loop's sleep when the daemon stops."""


def _describe(o: Outcome | None) -> str:
    if o is None:
        return ""
    bits = []
    if o.uploaded:
        bits.append(f"{o.uploaded} uploaded ({o.bytes_sent} bytes)")
    if o.folders_made:
        bits.append("folder made on the remote")
    if o.moved:
        bits.append("moved on the remote")
    if o.deleted:
        bits.append("deleted on the remote")
    if o.queued:
        bits.append(f"{o.queued} file(s) queued")
    return (": " + ", ".join(bits)) if bits else ": nothing to do"
