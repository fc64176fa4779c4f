"""The daemon: wires Watcher, UniqueQ, SyncSnap, Handler and an XCon per mapping.

A mapping with several destinations (`targets`) comes from the config as one
lane per destination, NAME@TARGET, and each lane runs here as a mapping of its
own (its own state, watch, scan, workers and connection), so one that is down
holds back no other. With `placement = most-free` the lanes of a mapping share a
Pool (skynet/engine/placement.py) that puts each file on one of them.

Start-up order matters for never losing a change: the watch is set up *before*
the start-up scan, so a file changed during the scan is caught by one or the
other (both is harmless: the second send finds the Index up to date).
"""
from __future__ import annotations

import errno
import logging
import os
import faulthandler
import signal
from skynet.state.sqlitelib import sqlite3
import sys
import threading
import time
from typing import Callable


from skynet.reporting import sdnotify
from connections.contract.xcon import BatchSend, Folders, FreeSpace, PermanentError, PoolSized, TransientError, XCon
from skynet.config.settings import Config, MappingConfig, connection_for, lanes_of, service_of
from skynet.engine.handler import Handler
from skynet.engine.placement import Lane, Pool, hint_sender
from skynet.engine.late import LateRequests
from skynet.watch.ignore import IgnoreRules, rel_inside
from skynet.engine.mapper import Mapper
from skynet.engine.reconcile import Reconciler, SourceUnavailable
from skynet.state.index import Index
from skynet.state.db import FailedActions, ResumeTable, StateError, open_or_rebuild
from skynet.state.folder import StateFolder, StateLock, StateLocked, mapping_identity
from skynet.state.placement import PlacementTable
from skynet.reporting.progress import ProgressReporter, Snapshot
from skynet.reporting.status import InFlight, write_status
from skynet.engine.syncsnap import SyncSnap
from skynet.transfer.throttle import Schedule, Throttle
from skynet.state.uniqueq import DELETE, SEND, Action, UniqueQ
from skynet.watch.watcher import Observer, TreeWatch, WatchFaultListener, Watcher
from skynet.versions.keeper import keeper_for
from skynet.versions.names import AREA
from skynet.versions.prune import pruner_for

log = logging.getLogger("skynet")

INOTIFY_HINT = (
    "raise the limit with: sudo sysctl fs.inotify.max_user_watches=1048576 "
    "(and add fs.inotify.max_user_watches=1048576 to /etc/sysctl.d/90-skynet.conf to keep it)"
)
OVERFLOW_HINT = (
    "raise the queue with: sudo sysctl fs.inotify.max_queued_events=1048576 "
    "(and add it to /etc/sysctl.d/90-skynet.conf to keep it)"
)



M_ARENA_MAX = -8  # glibc's mallopt() parameter number


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc at `n` arenas. By default every thread that allocates may get
    an arena of its own (up to 8 per core), and each keeps the memory its thread freed:
    measured here with 17 threads, half of the C heap was free-but-kept, and the peak
    RSS of a million-file initial sync fell from 43.7 to 41.0 MiB with two arenas
    (bench/run scale rss --memstats). The GIL serialises most allocations anyway.
    Call it before starting threads; a no-op where libc is not glibc."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False  # the user's own setting wins
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, n))
    except (OSError, AttributeError):
        return False


def _watch_limit() -> str:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as f:
            return f"{int(f.read()):,}"
    except (OSError, ValueError):
        return "?"


class FatalError(Exception):
    """The daemon cannot go on (state unwritable, configuration rejected)."""


class MappingRunner(WatchFaultListener):
    """Everything that keeps one mapping in sync."""

    def __init__(self, cfg: Config, m: MappingConfig, observer, fatal: Callable[[str], None],
                 throttle: Throttle | None = None, on_event: Callable | None = None,
                 on_progress: Callable[[str, int, int], None] | None = None, notifier=None,
                 on_connection: Callable[[], None] | None = None, pool: Pool | None = None) -> None:
        self.cfg = cfg
        self.m = m
        self.observer = observer
        self.fatal = fatal
        self.name = m.name
        folder = StateFolder(cfg.state_dir)
        folder.make()
        self.lock = StateLock(folder.lock(m.name))
        try:
            self.lock.acquire()
        except StateLocked as exc:
            raise FatalError(str(exc)) from None
        db_path = folder.db(m.name)
        existed = os.path.exists(db_path)
        self.db, rebuilt = open_or_rebuild(db_path)
        if rebuilt:
            log.critical("%s: the state database %s was DAMAGED; it was moved aside (%s.corrupt-*) and is rebuilt "
                         "from a full scan and a listing of the remote: files already there are not sent again, "
                         "and nothing is deleted unless it is gone locally", m.name, db_path, db_path)
        elif not existed and os.path.exists(folder.seen(m.name)):
            log.critical("%s: the state database %s is MISSING (deleted?); rebuilding it from a full scan and a "
                         "listing of the remote", m.name, db_path)
        open(folder.seen(m.name), "a").close()
        self.index = Index(self.db)
        self.failed = FailedActions(self.db)
        self.resume = ResumeTable(self.db)
        self._check_identity()
        self.con: XCon = connection_for(cfg, m)
        if isinstance(self.con, PoolSized):  # connections that pool sessions size the pool for our workers
            self.con.size_pool(m.workers)
        self.mapper = Mapper(m.source, m.target)
        inner_state = rel_inside(m.source, cfg.state_dir)
        # The versions area's name at the root is never synced from the source (it would land in the area).
        self.ignore = IgnoreRules(m.ignore, use_defaults=m.default_ignores, extra_paths=(inner_state or "", AREA))
        if os.path.lexists(os.path.join(m.source, AREA)):
            log.warning("%s: %r in the source is not synced: the name is the versions area's on the remote",
                        m.name, AREA)
        self.queue = UniqueQ(self.db, on_put=self._wake, on_fatal=fatal)
        # Producers (watcher, scan, reconciler) put through a tap that reports "queued".
        self.producer_queue = notifier.queue_tap(m.name, self.queue) if notifier is not None else self.queue
        self.pool = pool
        lane = Lane(pool, m.name) if pool is not None else None
        self.reconciler = Reconciler(self.mapper, self.con, self.index, self.producer_queue, self.resume, self.ignore,
                                     follow_symlinks=m.follow_symlinks, progress=on_progress,
                                     complete_sync=m.complete_sync, keeper=keeper_for(self.con, m.versions),
                                     throttle=throttle.consume if throttle and throttle.active else None,
                                     placement=lane)
        self.handler = Handler(m.name, self.queue, self.con, self.reconciler, self.failed, workers=m.workers,
                               max_attempts=cfg.max_attempts, backoff_cap=cfg.backoff_cap, on_fatal=fatal,
                               on_event=on_event, on_reconnect=self._cleanup, on_connection=on_connection)
        self.watcher = Watcher(self.mapper, self.ignore, self.producer_queue, m.complete_sync, settle=cfg.settle_seconds,
                               on_rescan=self.rescan, folders=isinstance(self.con, Folders))
        self.late = LateRequests(self.db, self.index, self.con, self.mapper, self.producer_queue, m.complete_sync,
                                 grace=cfg.late_grace)
        self.watch: TreeWatch | None = None
        self.scan_done = threading.Event()
        self._rescan_wanted = threading.Event()
        self._rescan_why = "start-up"
        self._halt = threading.Event()
        self._unwatched: set[str] = set()  # folders inotify could not watch (absolute), polled instead
        self._unwatched_lock = threading.Lock()
        self._source_missing = False
        self._rewatch_wanted = False
        self._cleaned = False
        self._scanner = threading.Thread(target=self._scan_loop, name=f"{m.name}-scan", daemon=True)
        self.pruner = pruner_for(cfg, m, self.db) if m.versions else None

    def _free_space(self) -> int | None:
        """Room left on this lane's destination, for placement = most-free: the
        connection's FreeSpace, and/or the target's capacity less what the Index holds
        (the smaller when both are known); None when neither tells."""
        known = []
        if isinstance(self.con, FreeSpace):
            known.append(self.con.free_space())
        if self.m.capacity:
            known.append(max(0, self.m.capacity - self.index.total_bytes()))
        known = [k for k in known if k is not None]
        return min(known) if known else None

    def _wake(self) -> None:
        h = getattr(self, "handler", None)
        if h is not None:
            h.wake()

    def _check_identity(self) -> None:
        """If the mapping now points elsewhere, what the Index says is void."""
        ident = mapping_identity(service_of(self.cfg, self.m), self.m.source, self.m.target)
        old = self.db.identity()
        if old is not None and old != ident:
            log.warning("%s: source or target changed since the last run; forgetting what the old remote held",
                        self.name)
            self.index.clear()
        if old != ident:
            self.db.set_identity(ident)

    def start(self) -> None:
        self._recheck_interrupted(self.queue.reset_inflight())
        connected = False
        try:
            self.con.connect()
            connected = True
        except TransientError as exc:
            log.warning("%s: remote not reachable yet (%s); changes are queued until it is", self.name, exc)
        except PermanentError as exc:
            raise FatalError(f"mapping {self.name!r}: {exc}") from exc
        if connected:
            self._cleanup()
        self._watch()
        self._remember_source()
        self.handler.start(connected)
        if self.pool is not None:  # placed on from now on (choices wait for the lanes still starting)
            self.pool.join(self.name, self._free_space, lambda: self.handler.connected,
                           hint_sender(self.producer_queue.put))
        self.late.start(lambda: self.handler.connected, self._halt, self.name)
        self._rescan_wanted.set()
        self._scanner.start()
        if self.pruner is not None:
            self.pruner.start()

    def _recheck_interrupted(self, interrupted: list[Action]) -> None:
        """The previous run died (kill -9, power loss) while these actions were
        claimed: the remote may hold what one of them sent, moved or half-moved
        although the Index never heard of it. For each of their paths that is gone
        from the disk now, a delete hint makes sure no such copy stays behind (the
        start-up scan cannot: it only knows what the Index knows). A hint looks at
        the disk again when it runs. With complete_sync only.

        Also, for a connection that copies in batches (LocalCon's send_many):
        their temporary files go now. A send() cut short leaves one under a
        name derived from the file's, which the next send() would overwrite,
        but a batch copies through a staging folder and never touches it."""
        # A request of theirs may also land on the remote later than this run's
        # own: their paths are checked again once that cannot happen any more.
        self.late.remember(p for a in interrupted for p in a.paths())
        if isinstance(self.con, BatchSend):
            for rel in sorted({a.src for a in interrupted if a.kind == SEND}):
                try:
                    self.con.discard(rel, None)
                except Exception as exc:  # the target away: the daemon says so when it connects
                    log.debug("%s: could not remove a temporary file of %r: %s", self.name, rel, exc)
        if not self.m.complete_sync:
            return
        gone = sorted({p for a in interrupted for p in a.paths()
                       if p and not os.path.lexists(self.mapper.local(p))})
        if gone:
            log.info("%s: %d path(s) were being synced when skynet stopped abruptly and are gone now; "
                     "making sure the remote holds none of them", self.name, len(gone))
            self.queue.put_many((DELETE, p, "") for p in gone)

    def _cleanup(self) -> None:
        """Remove the partial uploads of earlier runs that no resume state needs
        (a kill -9 mid-send leaves some). Once per run, as soon as the remote is
        reachable: at start-up, or at the first reconnection when skynet started
        while the remote was away (else they would stay until the next start)."""
        if self._cleaned:
            return
        try:
            self.con.cleanup(self.resume.all())
            self._cleaned = True
        except Exception as exc:
            log.warning("%s: could not clean up old partial uploads (tried again after a reconnection): %s",
                        self.name, exc)

    def _remember_source(self) -> None:
        """Record which folder (device, inode) the source is, while it holds
        files, so an empty mount point is never taken for it (see
        Reconciler.check_source)."""
        saved = self.db.get_meta("source_id")
        if saved:
            dev, ino = (int(x) for x in saved.split(":"))
            self.reconciler.source_id = (dev, ino)
        try:
            st = os.stat(self.m.source)
            has_files = bool(os.listdir(self.m.source))
        except OSError:
            return
        if has_files and (st.st_dev, st.st_ino) != self.reconciler.source_id:
            self.reconciler.source_id = (st.st_dev, st.st_ino)
            self.db.set_meta("source_id", f"{st.st_dev}:{st.st_ino}")

    def _watch(self) -> None:
        with self._unwatched_lock:
            self._unwatched.clear()
        self.watch = None
        try:
            self.watch = self.observer.schedule(self.watcher, self.m.source, self)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                self.unwatched(self.m.source)
            else:
                raise FatalError(f"mapping {self.name!r}: cannot watch {self.m.source!r}: {exc.strerror}") from exc
        if self._unwatched:  # the watches are set up by now (schedule() does it)
            log.error("%s: %d folder(s) of %r are not watched (fs.inotify.max_user_watches = %s reached); they are "
                      "rescanned every %.0f s, and watched as soon as the limit allows; %s", self.name,
                      len(self._unwatched), self.m.source, _watch_limit(), self.cfg.poll_interval, INOTIFY_HINT)

    def _unwatched_roots(self, folders: set[str]) -> list[str]:
        """Unwatched folders as few subtrees: relative paths, none inside another."""
        roots: list[str] = []
        rels = (r for r in (self.mapper.rel(f) for f in folders) if r)
        for rel in sorted(rels, key=lambda r: r + "/"):  # a folder, then what is inside it
            if not roots or not rel.startswith(roots[-1] + "/"):
                roots.append(rel)
        return roots

    def _poll_unwatched(self) -> None:
        """The polling fallback: try to watch the unwatched folders again (the limit may
        have been raised), then rescan only them, everything below them included."""
        with self._unwatched_lock:
            before = set(self._unwatched)
        roots = self._unwatched_roots(before)
        if self.watch is not None:
            left = self.watch.retry([self.mapper.local(r) for r in roots])
            with self._unwatched_lock:  # a root still (partly) unwatched stands for everything below it
                self._unwatched = (self._unwatched - before) | set(left)
            if not self._unwatched:
                log.warning("%s: every folder is watched again; polling stops", self.name)
        self._scan("polling folders that cannot be watched", roots=roots)

    # -- watch faults (WatchFaultListener) ----------------------------------
    def overflow(self, root: str) -> None:
        log.error("%s: the inotify event queue overflowed, so changes may have been missed; rescanning. %s",
                  self.name, OVERFLOW_HINT)
        self.rescan("event queue overflow")

    def unwatched(self, folder: str) -> None:
        with self._unwatched_lock:  # called on the watch's thread
            first = not self._unwatched
            self._unwatched.add(folder)
        if first:
            log.error("%s: cannot watch %r (inotify watch limit reached); %s. Until then, folders that cannot be "
                      "watched are checked by a rescan every %.0f s.", self.name, folder, INOTIFY_HINT,
                      self.cfg.poll_interval)
            self.rescan("folders not watched")
        else:
            log.debug("%s: cannot watch %r either", self.name, folder)

    def root_lost(self, root: str) -> None:
        log.error("%s: the source folder %r went away (deleted, moved or unmounted); nothing will be deleted on the "
                  "remote; checking for it every %.0f s", self.name, root, self.cfg.poll_interval)
        self._source_missing = True
        self.rescan("source folder went away")

    def rewatch(self, why: str) -> None:
        """Set the watch up afresh, then rescan (done on the scan thread)."""
        self._rewatch_wanted = True
        self.rescan(why)

    def rescan(self, why: str) -> None:
        """Ask for a scan; requests made while one runs fold into one more scan."""
        self._rescan_why = why
        self._rescan_wanted.set()

    def _scan_loop(self) -> None:
        while not self._halt.is_set():
            # Sleep until asked; only while some folders are unwatched do we
            # wake by ourselves (the polling fallback). Idle costs nothing.
            timeout = self.cfg.poll_interval if (self._unwatched or self._source_missing) else None
            asked = self._rescan_wanted.wait(timeout)
            if self._halt.is_set():
                return
            self._rescan_wanted.clear()
            if self._rewatch_wanted and not self._source_missing:
                self._rewatch_wanted = False
                try:
                    self._rewatch()
                except Exception as exc:
                    log.error("%s: cannot watch %r again: %s; the rescan still runs", self.name, self.m.source, exc)
            if self._source_missing:
                try:
                    self.reconciler.check_source()
                except SourceUnavailable:
                    continue
                log.warning("%s: the source folder %r is back; watching it again", self.name, self.m.source)
                self._source_missing = False
                self._rewatch()
            if not asked and self._unwatched and self.m.source not in self._unwatched:
                self._poll_unwatched()
            else:
                self._scan(self._rescan_why if asked else "polling folders that cannot be watched")

    def _rewatch(self) -> None:
        if self.watch is not None:
            try:
                self.observer.unschedule(self.watch)
            except Exception:
                pass
        self._watch()
        self._remember_source()

    def _scan(self, why: str, roots: list[str] | None = None) -> None:
        try:
            snap = SyncSnap(self.mapper, self.index, self.producer_queue, self.ignore, self.m.complete_sync, self.con,
                            follow_symlinks=self.m.follow_symlinks, stop=self._halt, max_delete=self.m.max_delete,
                            allow_mass_delete=self.cfg.allow_mass_delete, precheck=self.reconciler.check_source)
            st = snap.run(roots)
            level = logging.INFO if roots is None or st.sends or st.deletes else logging.DEBUG
            log.log(level, "%s: %s scan%s: %d files in %.1fs: %d to send, %d to delete, %d unchanged%s",
                    self.name, why, "" if roots is None else f" of {len(roots)} folder(s)", st.files,
                    st.seconds, st.sends, st.deletes, st.unchanged,
                    f", {st.adopted} already on the remote" if st.adopted else "")
        except SourceUnavailable as exc:
            log.error("%s: %s; not scanning, nothing is deleted; checking again every %.0f s", self.name, exc,
                      self.cfg.poll_interval)
            self._source_missing = True
        except (sqlite3.Error, StateError) as exc:
            self.fatal(f"{self.name}: cannot write the state database during the scan: {exc}")
        except Exception:
            log.exception("%s: %s scan failed", self.name, why)
        finally:
            self.scan_done.set()

    def stop(self, timeout: float) -> None:
        """Stop in order: no new events, pending settle-delayed sends queued,
        running actions finished or checkpointed, then everything closed.
        Each step runs even if an earlier one failed (a full disk must not
        leave the connection or the lock behind)."""
        self._halt.set()
        self._rescan_wanted.set()
        steps = [
            ("stop pruning versions", lambda: self.pruner is not None and self.pruner.stop(timeout)),
            ("stop watching", lambda: self.watch is not None and self.observer.unschedule(self.watch)),
            ("end the scan", lambda: self._scanner.is_alive() and self._scanner.join(timeout=timeout)),
            ("queue pending sends", self.watcher.close),
            ("flush the queue", self.queue.flush),
            ("leave the placement pool", lambda: self.pool is not None and self.pool.leave(self.name)),
            ("stop the workers", lambda: self.handler.stop(timeout)),
            ("close the queue", self.queue.close),
            ("close the connection", self.con.close),
            ("close the state database", self.db.close),
            ("release the state lock", self.lock.release),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                log.error("%s: could not %s while stopping: %s", self.name, what, exc)


class Daemon:
    """Runs every mapping of a config until SIGTERM/SIGINT.

    Under systemd (Type=notify) it reports READY=1 once every mapping's
    start-up scan has queued its work, STATUS= with queue depths, WATCHDOG=1
    pings and STOPPING=1. SIGHUP re-reads the config: new mappings start,
    removed ones stop, changed ones restart; queued work stays in each
    mapping's state database, so nothing is lost.
    """

    def __init__(self, cfg: Config, reload: Callable[[], Config] | None = None) -> None:
        limit_malloc_arenas()  # before this daemon starts any thread
        self.cfg = cfg
        self.reload_config = reload
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._reload_wanted = False
        self.fatal_reason: str | None = None
        self.runners: dict[str, MappingRunner] = {}
        self.pools: dict[str, Pool] = {}  # mappings with placement = most-free: their lanes' shared placement
        self.observer = Observer()
        self.throttle = Throttle(Schedule(cfg.bwlimit))
        self.in_flight = InFlight()
        self.progress = ProgressReporter(self._progress_snapshot, every=cfg.progress_interval,
                                         on_tick=self._write_status)
        self.ready = False
        from skynet.reporting import notifier as notifiermod
        self.notifier = notifiermod.from_config(cfg)
        self._next_heartbeat = 0.0

    def fatal(self, reason: str) -> None:
        if self.fatal_reason is None:
            self.fatal_reason = reason
            log.critical("stopping: %s", reason)
        self.stop_event.set()
        self._wake.set()

    def _signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self._reload_wanted = True
        elif signum == signal.SIGUSR1:
            for r in list(self.runners.values()):
                r.handler.wake()  # `--retry-failed` queued work from another process
            return
        elif signum == signal.SIGUSR2:
            for r in list(self.runners.values()):
                log.warning("%s: handler state: %s", r.name, r.handler.describe_state())
            return
        else:
            log.info("received %s; stopping", signal.Signals(signum).name)
            self.stop_event.set()
        self._wake.set()

    def _start_mapping(self, m: MappingConfig) -> None:
        r = MappingRunner(self.cfg, m, self.observer, self.fatal, self.throttle, on_event=lambda kind, a, info, name=m.name: self._on_event(name, kind, a, info),
                          on_progress=lambda path, done, total, name=m.name: self._on_progress(name, path, done, total),
                          notifier=self.notifier, on_connection=self.progress.poke, pool=self._pool(m))
        self.runners[m.name] = r
        try:
            r.start()
        except BaseException:
            if r.pool is not None:  # the other lanes place files without it
                r.pool.leave(r.name)
            raise
        log.info("%s: watching %r -> %s", r.name, r.m.source, r.con.describe())

    def _pool(self, m: MappingConfig) -> Pool | None:
        """The placement shared by the lanes of `m`'s mapping, if it places each file on one."""
        if not m.pool or m.placement != "most-free":
            return None
        if m.pool not in self.pools:
            folder = StateFolder(self.cfg.state_dir)
            folder.make()
            self.pools[m.pool] = Pool(PlacementTable(folder.placement(m.pool)))
        self.pools[m.pool].expect([lane.name for lane in lanes_of(self.cfg, m.pool)])
        return self.pools[m.pool]

    def _on_event(self, mapping: str, kind: str, action, info) -> None:
        """Every action's started/done/failed, from the handlers' workers."""
        self.notifier.on_handler_event(mapping, kind, action, info)
        if kind != "started":
            self.in_flight.finish(mapping, action.src)
        self.progress.poke()

    def _on_progress(self, mapping: str, path: str, done: int, total: int) -> None:
        self.notifier.progress(mapping, path, done, total)
        self.in_flight.update(mapping, path, done, total)
        if done >= total:
            self.in_flight.finish(mapping, path)

    def _write_status(self) -> None:
        doc = {"pid": os.getpid(), "updated": time.time(), "in_flight": self.in_flight.snapshot(),
               "mappings": [{"name": r.name, "connected": r.handler.connected} for r in list(self.runners.values())]}
        try:
            write_status(self.cfg.state_dir, doc)
        except OSError as exc:
            log.debug("cannot write status: %s", exc)

    def _progress_snapshot(self) -> Snapshot:
        done = sent = pending = 0
        for r in list(self.runners.values()):
            done += r.handler.done_count + r.handler.failed_count
            sent += r.handler.stats.bytes_sent
            try:
                pending += len(r.queue)
            except Exception:
                pass
        return Snapshot(done, sent, pending)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, self._signal)
        # `kill -USR2 PID` writes every thread's stack to stderr (the journal),
        # then (chained) each handler's scheduling state to the log: where a
        # daemon that stopped making progress is waiting, and on what.
        faulthandler.register(signal.SIGUSR2, all_threads=True, chain=True)
        self.progress.start()
        try:
            self.observer.start()
            for m in self.cfg.mappings:
                self._start_mapping(m)
        except (FatalError, StateError) as exc:
            log.critical("%s", exc)
            self._shutdown()
            return 2
        except (sqlite3.Error, OSError) as exc:
            log.critical("cannot start: %s", exc)
            self._shutdown()
            return 1
        ping = sdnotify.watchdog_interval()
        while not self.stop_event.is_set():
            # Wake for a signal, for systemd's watchdog, while waiting for the
            # start-up scans (to send READY), and otherwise once a minute to
            # check that the watches' threads are alive: if they died, exit
            # non-zero so systemd restarts us rather than run deaf.
            timeout = 60.0 if ping is None else min(60.0, ping)
            if self.notifier.enabled:
                self._heartbeat()
                timeout = min(timeout, max(0.05, self._next_heartbeat - time.monotonic()))
            if not self.ready:
                timeout = min(timeout, 0.2)
            self._wake.wait(timeout)
            self._wake.clear()
            if self.stop_event.is_set():
                break
            if self._reload_wanted:
                self._reload_wanted = False
                self._reload()
            if not self.ready and all(r.scan_done.is_set() for r in self.runners.values()):
                self.ready = True
                sdnotify.notify("READY=1", f"STATUS={self.status_line()}")
                log.info("ready: start-up scans queued; %s", self.status_line())
            elif ping is not None:
                sdnotify.notify("WATCHDOG=1", f"STATUS={self.status_line()}")
            if not self.observer.healthy():
                self.fatal("file watching stopped unexpectedly; exiting so that skynet is restarted")
        sdnotify.notify("STOPPING=1", "STATUS=stopping: finishing or checkpointing work in flight")
        self._shutdown()
        return 1 if self.fatal_reason else 0

    def _heartbeat(self) -> None:
        """Every notify_heartbeat seconds: per mapping, what the dashboard shows."""
        if time.monotonic() < self._next_heartbeat:
            return
        self._next_heartbeat = time.monotonic() + self.cfg.notify_heartbeat
        maps = []
        for r in list(self.runners.values()):
            try:
                depth, failed = len(r.queue), r.failed.count()
            except Exception:
                depth = failed = None
            maps.append({"name": r.name, "source": r.m.source, "target": r.con.describe(), "queue_depth": depth,
                         "in_flight": len(r.handler.in_flight()), "failed": failed,
                         "connected": r.handler.connected})
        self.notifier.heartbeat(maps)

    def status_line(self) -> str:
        parts = []
        for r in self.runners.values():
            try:
                depth = len(r.queue)
                failed = r.failed.count()
            except Exception:
                depth = failed = -1
            state = "connected" if r.handler.connected else "waiting for the remote"
            parts.append(f"{r.name}: {depth} queued, {len(r.handler.in_flight())} in flight, {failed} failed, {state}")
        return "; ".join(parts) or "no mappings"

    def _reload(self) -> None:
        if self.reload_config is None:
            return
        sdnotify.notify("RELOADING=1")
        try:
            new = self.reload_config()
        except Exception as exc:  # ConfigError: keep running the old config
            log.error("reload refused, keeping the running config: %s", exc)
            sdnotify.notify("READY=1")
            return
        old = {m.name: m for m in self.cfg.mappings}
        wanted = {m.name: m for m in new.mappings}
        global_changed = any(getattr(self.cfg, k) != getattr(new, k)
                             for k in ("service_options", "state_dir", "max_attempts", "backoff_cap", "settle_seconds"))
        self.cfg = new
        changed = 0
        for name in list(self.runners):
            if name not in wanted or wanted[name] != old.get(name) or global_changed:
                log.info("reload: stopping mapping %s", name)
                self.runners.pop(name).stop(new.stop_timeout)
                changed += 1
        for name, m in wanted.items():
            if name not in self.runners:
                log.info("reload: starting mapping %s", name)
                changed += 1
                try:
                    self._start_mapping(m)
                except (FatalError, StateError, OSError, sqlite3.Error) as exc:
                    log.error("reload: mapping %s cannot start: %s", name, exc)
        # `systemctl reload` shows nothing else: say what the reload did, even when nothing changed
        log.warning("reload: config %s read again; %s", new.path,
                    f"{changed} mapping start(s)/stop(s)" if changed else "no change to the running mappings")
        sdnotify.notify("READY=1", f"STATUS={self.status_line()}")

    def _shutdown(self) -> None:
        t0 = time.monotonic()
        self.progress.stop()
        threads = [threading.Thread(target=r.stop, args=(self.cfg.stop_timeout,)) for r in self.runners.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.cfg.stop_timeout + 15)
        try:
            self.observer.stop()
            self.observer.join(timeout=5)
        except Exception:
            pass
        self.notifier.close(5)
        for pool in self.pools.values():
            pool.table.close()
        log.info("stopped cleanly in %.1fs", time.monotonic() - t0)
