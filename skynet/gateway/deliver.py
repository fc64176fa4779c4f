"""Landing finished uploads in every destination ([gateway] targets).

Each destination has its own workers and its own order: the uploads of one name
land in the order they finished (so version 2 never lands before version 1, even
on a destination that was down for both), and a destination that is down holds
back no other. A send is XCon.send: atomic on the destination (readers never see
half a file) and resumable (a large file goes in parts; the parts done survive a
restart through a resume file beside the upload). Before a send replaces a file,
the keeper of issue 20 keeps the current one as a version (the bucket's own
versions on S3 with versioning; else the versions area).

A destination that fails (down, full, refusing) keeps the upload pending for it;
it is tried again every retry_interval, and at every start. The staged bytes stay
until every destination has them.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from connections.contract.source import local_file
from connections.contract.xcon import (
    LocalFile, PermanentError, PutBytes, ResumeStore, SendResult, TakeOver, TransferContext, Unsupported, XCon,
)
from skynet.config.settings import TargetConfig
from skynet.gateway.early import EarlySends
from skynet.gateway.staging import Staging, Upload
from skynet.state.atomicfile import write_atomic
from skynet.versions.keeper import Keeper, keeper_for

log = logging.getLogger(__name__)

WORKERS_PER_TARGET = 8  # sends in flight per destination (rclone copy: --transfers 4 by default)


class FileResume(ResumeStore):
    """Resume state of one upload's send to one destination, in a file beside it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def save(self, state: dict) -> None:
        write_atomic(self.path, json.dumps(state), 0o600)

    def clear(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@dataclass
class Destination:
    """One [target NAME]: its connection, its keeper, and whether it answers."""

    cfg: TargetConfig
    con: XCon
    keeper: Keeper
    retry_interval: float = 30.0
    up: bool = False
    failed_at: float = 0.0  # monotonic time of the last failed connect
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.cfg.name

    def ensure(self) -> bool:
        """Connected (connecting now if it was down); False while it is unreachable."""
        with self.lock:
            if self.up:
                return True
            if self.failed_at and time.monotonic() - self.failed_at < min(self.retry_interval, 5.0):
                return False  # asked again at once (downloads, each worker): not a connect each time
            try:
                self.con.connect()
            except Exception as exc:  # down or refusing: stays pending, retried later
                self.failed_at = time.monotonic()
                log.warning("gateway: destination %s (%s) unreachable: %s", self.name, self.con.describe(), exc)
                return False
            self.up = True
            log.info("gateway: destination %s (%s) connected", self.name, self.con.describe())
            return True

    def lost(self) -> None:
        with self.lock:
            self.up = False


class Deliveries:
    """Per-destination queues of finished uploads, worked by a few threads each."""

    def __init__(self, staging: Staging, targets: list[TargetConfig], retry_interval: float) -> None:
        self.staging = staging
        self.retry_interval = retry_interval
        self.dests = [self._destination(t, retry_interval) for t in targets]
        self._cond = threading.Condition()
        self._busy: dict[str, set[str]] = {d.name: set() for d in self.dests}  # filenames in flight per destination
        self._failed_at: dict[str, float] = {}  # destination -> when its last attempt failed
        self._waiters: dict[tuple[str, str], list[Future]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.early = EarlySends(staging, self.dests, FileResume)  # large uploads sent while they arrive
        # whole small uploads may land from the request itself (claim()): every destination takes bytes
        self.direct = bool(self.dests) and all(isinstance(d.con, PutBytes) for d in self.dests)

    @staticmethod
    def _destination(t: TargetConfig, retry_interval: float) -> Destination:
        con = t.build()
        return Destination(cfg=t, con=con, keeper=keeper_for(con, True), retry_interval=retry_interval)

    def start(self) -> None:
        for up in self.staging.partial():  # unfinished at the last stop: their early sends continue
            self.early.begin(up)
        for d in self.dests:
            d.ensure()
            for i in range(WORKERS_PER_TARGET):
                th = threading.Thread(target=self._work, args=(d,), name=f"deliver-{d.name}-{i}", daemon=True)
                th.start()
                self._threads.append(th)

    def stop(self) -> None:
        self._stop.set()
        self.early.stop()
        with self._cond:
            self._cond.notify_all()
        for th in self._threads:
            th.join(timeout=5)
        for d in self.dests:
            try:
                d.con.close()
            except Exception:
                pass

    def submit(self, up: Upload) -> dict[str, Future]:
        """Wake the workers for a newly finished upload; one Future per destination,
        done (True: landed, False: pending) after its first attempt there, or at once
        (False) for a destination whose last attempt failed and waits for its retry."""
        out: dict[str, Future] = {}
        with self._cond:
            for name in up.pending:
                fut: Future = Future()
                if name in self._failed_at:  # down now: the client is not kept waiting for its retry
                    fut.set_result(False)
                else:
                    self._waiters.setdefault((up.id, name), []).append(fut)
                out[name] = fut
            self._cond.notify_all()
        return out

    # -- direct landings (a whole small upload, from the request: app.py) -------
    def claim(self, filename: str) -> list[Destination] | None:
        """Every destination, held for landing `filename` straight from the request
        that carries it: None unless each takes bytes from memory (PutBytes), is
        connected and not waiting for a retry, and has no upload of that name being
        sent or pending (uploads of one name land in the order they finished).
        release() gives them back."""
        if not self.direct:
            return None
        with self._cond:
            for d in self.dests:
                if not d.up or d.name in self._failed_at or filename in self._busy[d.name]:
                    return None
            if any(u.filename == filename for u in self.staging.undelivered()):
                return None
            for d in self.dests:
                self._busy[d.name].add(filename)
        return self.dests

    def release(self, filename: str) -> None:
        """End of claim(): the workers wake only when an upload of that name waits."""
        with self._cond:
            for d in self.dests:
                self._busy[d.name].discard(filename)
            if any(u.filename == filename for u in self.staging.undelivered()):
                self._cond.notify_all()

    def put(self, up: Upload, dests: list[Destination], body: memoryview) -> list[str]:
        """Land the verified bytes of `up` in each of `dests` (claimed) from memory; the
        names of those that failed (they stay pending: the caller stages the bytes)."""
        failed = []
        for d in dests:
            try:
                d.con.put_bytes(up.filename, body, mode=0o644,  # type: ignore[attr-defined]
                                replacing=lambda d=d: self._keep(d, up))
            except Exception as exc:
                if not isinstance(exc, PermanentError):
                    d.lost()
                log.warning("gateway: %r not landed in %s from the request (%s: %s); staged and retried",
                            up.filename, d.name, type(exc).__name__, exc)
                self.staging.note(up, d.name, error=f"{type(exc).__name__}: {exc}")
                failed.append(d.name)
                continue
            log.info("gateway: %r (%d bytes, upload %s) landed in %s", up.filename, up.length, up.id, d.name)
        return failed

    def _keep(self, d: Destination, up: Upload) -> None:
        """The file `up` replaces on `d` becomes a version first (once per upload)."""
        if d.name not in up.kept:
            d.keeper.replacing(up.filename)
            self.staging.note(up, d.name, kept=True)

    def kick(self) -> None:
        """Try the destinations that failed again now (a test, an operator)."""
        with self._cond:
            self._failed_at.clear()
            self._cond.notify_all()

    # -- workers ------------------------------------------------------------
    def _next(self, d: Destination) -> Upload | None:
        """The oldest upload pending for `d` whose name is not being sent there and
        has no older upload of the same name still pending there (order per name)."""
        seen: set[str] = set()
        for up in self.staging.undelivered():
            if d.name not in up.pending:
                continue
            if up.filename in seen or up.filename in self._busy[d.name]:
                seen.add(up.filename)
                continue
            return up
        return None

    def _work(self, d: Destination) -> None:
        while not self._stop.is_set():
            with self._cond:
                failed = self._failed_at.get(d.name)
                wait = None if failed is None else failed + self.retry_interval - time.time()
                up = self._next(d) if wait is None or wait <= 0 else None
                if up is None:
                    self._cond.wait(timeout=min(wait, 1.0) if wait and wait > 0 else 1.0)
                    continue
                self._busy[d.name].add(up.filename)
            ok = False
            try:
                ok = self._land(d, up)
            finally:
                with self._cond:
                    self._busy[d.name].discard(up.filename)
                    if ok:
                        self._failed_at.pop(d.name, None)
                    else:
                        self._failed_at[d.name] = time.time()
                    for fut in self._waiters.pop((up.id, d.name), []):
                        fut.set_result(ok)
                    self._cond.notify_all()

    def _land(self, d: Destination, up: Upload) -> bool:
        """One attempt to put `up` on `d`; True when it is there."""
        if not d.ensure():
            self.staging.note(up, d.name, error="unreachable")
            return False
        path = self.staging.part(up.id)
        try:
            if up.filename and d.name not in up.kept:
                if d.con.stat(up.filename) is not None:
                    self._keep(d, up)  # the current file becomes a version first
                else:  # nothing to keep: said all the same before the send, so that a landing done
                    # again after a kill -9 between the send and the landed record does not keep
                    # this very upload's file as a version of itself
                    self.staging.note(up, d.name, kept=True)
            early = self.early.take(up, d)  # verified and the old version kept: its last bytes go now
            if early is not None:
                res = early.result()
            else:
                res = self._put(d, local_file(path, up.filename, os.stat(path)), up)
        except Exception as exc:  # every failure leaves it pending: retried in order
            if not isinstance(exc, PermanentError):
                d.lost()
            log.warning("gateway: %r not landed in %s yet (%s: %s); retried in %gs", up.filename, d.name,
                        type(exc).__name__, exc, self.retry_interval)
            self.staging.note(up, d.name, error=f"{type(exc).__name__}: {exc}")
            return False
        log.info("gateway: %r (%d bytes, upload %s) landed in %s%s", up.filename, res.size, up.id, d.name,
                 " (sent while it arrived)" if early is not None else "")
        self.early.done(up, d)
        self.staging.landed(up, d.name)
        return True

    def _put(self, d: Destination, f: LocalFile, up: Upload) -> SendResult:
        """The finished staging file onto `d`: taken over by a hard link where `d`
        can (a local folder on the staging's file system: nothing copied, the
        gateway never writes a finished upload again), else sent."""
        if isinstance(d.con, TakeOver):
            try:
                return d.con.take_over(f)
            except Unsupported:
                pass  # another file system: a copy
        return d.con.send(f, TransferContext(resume=FileResume(self.staging.resume_file(up.id, d.name))))
