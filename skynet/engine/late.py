"""Late requests: what a run killed mid-request may still do to the remote.

A daemon killed with -9 (or a machine that lost power) while a request was on the
wire does not take the request with it. Its bytes may sit in a stalled network,
in a proxy, or in the orphaned socket the kernel keeps trying to deliver, and
land on the server *after* the next run has already looked at the path: a PUT of
a file deleted meanwhile makes it reappear, an older upload replaces a newer one.
The next run's start-up checks (Daemon._recheck_interrupted) come too early to
see that, and the Index, which only records what this machine saw succeed,
cannot.

So the paths of the actions a dead run held are remembered in the state database
(they survive further crashes until checked) and looked at again once the remote
has been reachable for LATE_GRACE seconds -- by then the network that held the
requests has delivered or dropped them (the torture test's stalls end with the
proxy forwarding what it held within milliseconds; a kernel gives up an orphaned
socket within about a minute of its peer answering again). The check is cheap:
one stat per path, at most a few hundred paths (the actions in flight at the
crash), once per unclean stop.

For each path:
* gone from the disk: a delete hint (with complete_sync: without it, the remote
  keeps what the disk lost anyway);
* a file whose remote copy is not the one the Index recorded (size, hash, or our
  mtime): the Index entry is dropped and a send hint queued, so it goes up again;
* a folder: what the Index records under it whose remote copy is gone or another one
  are dropped (a late folder delete or move), then a send hint, which walks it
  against the Index and so sends them again.
"""
from __future__ import annotations

import json
import logging
import os
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterable

from connections.contract.xcon import RemoteEntry, TransientError, XCon
from skynet.engine.mapper import Mapper
from skynet.state.db import StateDB
from skynet.state.index import Index, IndexEntry
from skynet.state.uniqueq import DELETE, SEND

log = logging.getLogger(__name__)

LATE_GRACE = 60.0  # seconds the remote must have been reachable before the check
META_KEY = "late_requests"
MAX_PATHS = 10_000  # a bound on what is remembered (a dead run holds a few hundred at most)
POLL = 1.0


def remote_differs(entry: IndexEntry | None, remote: RemoteEntry | None) -> bool:
    """The remote copy is not the one the Index says was sent (or one is missing)."""
    if entry is None or remote is None:
        return entry is not remote
    if remote.size != entry.size:
        return True
    ours, theirs = (entry.etag or "").strip('"'), (remote.etag or "").strip('"')
    # A multipart ETag ("<md5 of md5s>-N") and a plain MD5 of the same bytes differ
    # (rclone serve s3 answers HEAD with the plain one): only like is compared.
    if ours and theirs and ("-" in ours) == ("-" in theirs) and ours != theirs:
        return True
    return bool(entry.mtime_ns is not None and remote.mtime_ns is not None and not remote.mtime_is_stored
                and abs(remote.mtime_ns - entry.mtime_ns) >= 1_000_000_000)


class LateRequests:
    """Remembers the paths a dead run was working on; checks them once it is safe."""

    def __init__(self, db: StateDB, index: Index, con: XCon, mapper: Mapper, queue, complete_sync: bool,
                 grace: float = LATE_GRACE) -> None:
        self.db, self.index, self.con, self.mapper = db, index, con, mapper
        self.queue = queue
        self.complete_sync = complete_sync
        self.grace = grace
        self._thread: threading.Thread | None = None

    # -- what is remembered ------------------------------------------------
    def pending(self) -> list[str]:
        try:
            paths = json.loads(self.db.get_meta(META_KEY) or "[]")
        except ValueError:
            return []
        return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []

    def remember(self, paths: Iterable[str]) -> None:
        """Add the paths of a dead run's actions (kept across further crashes)."""
        merged = sorted(set(self.pending()) | {p for p in paths if p})[:MAX_PATHS]
        if merged:
            self.db.set_meta(META_KEY, json.dumps(merged))

    def _forget(self, checked: list[str]) -> None:
        left = sorted(set(self.pending()) - set(checked))  # a crash after start may have added more
        self.db.set_meta(META_KEY, json.dumps(left))

    # -- when and how they are checked -------------------------------------
    def start(self, connected: Callable[[], bool], halt: threading.Event, name: str) -> None:
        """Check in the background once the remote has been reachable for `grace` seconds."""
        if not self.pending():
            return
        self._thread = threading.Thread(target=self._run, args=(connected, halt), name=f"{name}-late", daemon=True)
        self._thread.start()

    def _run(self, connected: Callable[[], bool], halt: threading.Event) -> None:
        since: float | None = None
        while not halt.is_set():
            now = time.monotonic()
            if not connected():
                since = None
            elif since is None:
                since = now
            elif now - since >= self.grace:
                try:
                    self.check()
                    return
                except TransientError as exc:  # the remote went away again: wait for it anew
                    log.info("late-request check postponed: %s", exc)
                    since = None
            halt.wait(POLL)

    def check(self) -> int:
        """Look at every remembered path now; returns the hints queued."""
        paths = self.pending()
        hints: list[tuple[str, str, str]] = []
        for rel in paths:
            hint = self._hint(rel)
            if hint is not None:
                hints.append(hint)
        if hints:
            log.info("%d path(s) a killed run was syncing are synced again, in case a request of that run "
                     "reached the remote late", len(hints))
            self.queue.put_many(hints)
        self._forget(paths)
        return len(hints)

    def _forget_what_the_remote_lost(self, rel: str) -> None:
        """A folder a dead run was working on: its delete or move (a listing, then a
        request per file) may land after the next run sent files under it again. The
        folder's send hint walks it against the Index, so every Index entry under it
        whose remote copy is gone or another one is dropped first: the walk then
        sends it. One listing of the folder (held as a dict: the folders of the
        actions a dead run held, once per unclean stop)."""
        remote = {e.rel: e for e in self.con.list(rel)}
        lost = [e.rel for e in self.index.iter_under(rel) if remote_differs(e, remote.get(e.rel))]
        if lost:
            self.index.apply(forget=lost)  # one transaction, however many
            log.info("%d file(s) under %r are not on the remote as sent: sent again", len(lost), rel)

    def _hint(self, rel: str) -> tuple[str, str, str] | None:
        try:
            st = os.lstat(self.mapper.local(rel))
        except FileNotFoundError:
            return (DELETE, rel, "") if self.complete_sync else None
        except OSError:
            return None  # unreadable: the scan and the watcher say so
        if statmod.S_ISDIR(st.st_mode):
            self._forget_what_the_remote_lost(rel)
            return (SEND, rel, "")
        if not statmod.S_ISREG(st.st_mode):
            return None
        entry = self.index.get(rel)
        if entry is not None and not remote_differs(entry, self.con.stat(rel)):
            return None
        if entry is not None:
            self.index.remove(rel)  # the remote is not what we sent: the send must not be skipped
        return (SEND, rel, "")
