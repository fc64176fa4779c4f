"""Restore: a mapping's tree, or some of its paths, as it was at a time, into a folder.

Everything reads through a VersionStore (model.py), so the same code restores
from S3's native versions, from a versions area, or from a mirror that keeps
no versions (current.py: the remote as it is now). Each file goes through
skynet/transfer/fetch.py, so it is ranged and parallel when large, written to
a part file and renamed into place only when complete and checked (size, and
MD5 where the hash is one), with its mtime and permission bits set before the
rename: a file present under its own name in DIR is a finished file.

Resume after kill -9 is the same command again: a file already in DIR with the
version's size, mtime and mode is skipped without a byte read, and a large
file continues from the chunks its part file's state lists.

Bad input (a time out of range, a path never synced, a DIR that cannot be
written) is found before anything is written: RestoreRefused, one line.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import stat as statmod
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import chain
from typing import TYPE_CHECKING, Callable

from connections.contract.xcon import TransferContext, UnsafePath, check_rel
from skynet.transfer.chunks import TransferStopped
from skynet.transfer.fetch import CHUNK, CONCURRENCY, ReadInto, Wanted, fetch_ranges, from_bytes, land_bytes
from skynet.versions.current import Completes, NoHistory
from skynet.versions.model import Version, VersionStore

if TYPE_CHECKING:
    from skynet.versions.smallfiles import SmallFiles

#: a file no larger is read whole, in one request, when its metadata must be asked for too
#: and nothing of its size is at its place in DIR yet (else a HEAD first: it may be finished)
WHOLE_READ = 1 << 20
SPECIAL_BITS = statmod.S_ISUID | statmod.S_ISGID | statmod.S_ISVTX
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?|w|weeks?)"
                       r"\s+ago\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class RestoreRefused(Exception):
    """Bad input, found before anything was written: one line for the user (exit 2)."""


def parse_when(text: str | None, now_ns: int) -> int:
    """--at: ISO 8601 with or without a zone (without: local time), `now`, or `N{s,m,h,d,w} ago`.
    A time in the future is refused: nothing can be restored from it."""
    if text is None or text.strip().lower() == "now":
        return now_ns
    m = _RELATIVE.match(text)
    if m:
        when = now_ns - int(float(m.group(1)) * _UNIT_S[m.group(2)[0].lower()] * 1_000_000_000)
    else:
        try:
            parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00") if text.strip().endswith("Z") else text.strip())
        except ValueError:
            raise RestoreRefused(f"--at {text!r}: not a time (ISO 8601 such as 2026-12-04T12:00 or "
                                 "2026-12-04T12:00+01:00, or relative such as '2h ago', '3d ago', 'now')") from None
        if parsed.tzinfo is None:
            parsed = parsed.astimezone()  # a time without a zone is the local time
        when = int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1000
    if when > now_ns:
        raise RestoreRefused(f"--at {text!r} is in the future ({_show(when)}); nothing is known of it yet")
    return when


def _show(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass
class Options:
    """One restore: what, as of when, where, and how wide."""

    dest: str
    when_ns: int
    prefixes: list[str] = field(default_factory=lambda: [""])  # paths under the mapping root; "" the whole tree
    keep_special_bits: bool = False
    workers: int = 16  # files in flight at once (small files each take one)
    big_files: int = 2  # large files in flight at once, each with `concurrency` chunks
    chunk_size: int = CHUNK
    concurrency: int = CONCURRENCY
    throttle: Callable[[int], None] | None = None  # the bandwidth limit, called with each new byte count


@dataclass
class Summary:
    """What a restore did: the line printed at the end, and the progress bar's counters."""

    listed: int = 0  # versions handed to the workers so far
    files: int = 0  # restored now
    bytes: int = 0  # read from the remote now (a resumed file counts only what it lacked)
    skipped: int = 0  # already in DIR, finished
    failed: int = 0
    folders: int = 0  # folders made or given their mode (on a remote that has folders)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def handled(self) -> int:
        return self.files + self.skipped + self.failed

    def line(self) -> str:
        from skynet.reporting.progress import human_bytes

        return (f"restored {self.files:,} files, {human_bytes(self.bytes)} fetched, {self.skipped:,} skipped "
                f"(already there), {self.failed:,} failed")


def norm_prefix(path: str) -> str:
    """A PATH given relative to the mapping root, as the store names it ("" for the root)."""
    rel = path.strip("/")
    if rel in ("", "."):
        return ""
    try:
        return check_rel(os.path.normpath(rel))
    except UnsafePath as exc:
        raise RestoreRefused(f"{path!r}: {exc}") from None


def outermost(prefixes: list[str]) -> list[str]:
    """The given paths without those inside another given one (each file restored once)."""
    out: list[str] = []
    for p in sorted(set(prefixes), key=lambda s: (s.count("/"), s)):
        if not any(q == "" or p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def check_dest(dest: str) -> None:
    """DIR is a folder we may write in, or can be made one: refused before anything is written."""
    probe = os.path.abspath(dest)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise RestoreRefused(f"--to {dest}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RestoreRefused(f"--to {dest}: {probe} is not writable")


def _under(rel: str, prefix: str) -> bool:
    return prefix == "" or rel == prefix or rel.startswith(prefix + "/")


def _versions(store: VersionStore, when_ns: int, prefix: str) -> Iterator[Version]:
    """What the store had under `prefix` at `when_ns`, held to that prefix (a store's
    listing of "a/b" may hold "a/b.bak"), deletions never (a store must not, but a
    deletion restored would be an empty file where none was)."""
    try:
        for v in store.at(when_ns, prefix):
            if _under(v.rel, prefix) and not v.deleted:
                yield v
    except NoHistory as exc:
        raise RestoreRefused(str(exc)) from None


def first_of(store: VersionStore, when_ns: int, prefix: str) -> Iterator[Version]:
    """The versions under `prefix` at `when_ns`, the first one already read: an empty
    answer is refused here, before anything is written, with the reason it is empty."""
    stream = _versions(store, when_ns, prefix)
    first = next(stream, None)
    if first is None:
        raise RestoreRefused(_why_empty(store, when_ns, prefix))
    return chain([first], stream)


def _why_empty(store: VersionStore, when_ns: int, prefix: str) -> str:
    """Nothing at that time: the path was never synced, or TIME is before its first version, or it was deleted."""
    what = repr(prefix) if prefix else "the mapping"
    oldest: int | None = None
    for v in store.history(prefix):
        if _under(v.rel, prefix) and (oldest is None or v.since_ns < oldest):
            oldest = v.since_ns
    if oldest is None:
        return f"{what}: never synced (the remote has no version of it)"
    if when_ns < oldest:
        return f"{what}: {_show(when_ns)} is before its first version ({_show(oldest)})"
    return f"{what}: nothing there at {_show(when_ns)} (deleted by then)"


class Restore:
    """One restore run: lists, hands files to a bounded pool, counts."""

    def __init__(self, store: VersionStore, opts: Options, stop: threading.Event | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.store, self.opts = store, opts
        self.stop = stop or threading.Event()
        self.on_change = on_change or (lambda: None)
        self.summary = Summary()
        self.root = os.path.abspath(opts.dest)
        self._made: set[str] = set()
        self._made_lock = threading.Lock()
        self._big = threading.Semaphore(opts.big_files)
        self.unsynced = False  # a small file landed without its own fsync: the tree is synced once at the end
        umask = os.umask(0)
        os.umask(umask)
        self._default_mode = 0o666 & ~umask

    def run(self) -> Summary:
        """Check every path first (RestoreRefused: nothing written), then restore them."""
        check_dest(self.opts.dest)
        streams = [first_of(self.store, self.opts.when_ns, p) for p in outermost(self.opts.prefixes)]
        os.makedirs(self.root, exist_ok=True)
        self.root = os.path.realpath(self.root)
        self._made.add(self.root)
        room = threading.Semaphore(self.opts.workers * 4)  # listed but unfinished files held in memory
        # the chunk pool outlives the file pool: a large file's worker hands its chunks to it until it ends
        with ThreadPoolExecutor(self.opts.concurrency * self.opts.big_files, thread_name_prefix="chunk") as chunks, \
                ThreadPoolExecutor(self.opts.workers, thread_name_prefix="restore") as files:
            def pooled(v: Version) -> None:
                fut = files.submit(self._one, v, chunks)
                fut.add_done_callback(lambda _f: room.release())

            small = self._small_files(pooled, room.release)
            try:
                for v in chain.from_iterable(streams):
                    if self.stop.is_set():
                        break
                    room.acquire()
                    with self.summary.lock:
                        self.summary.listed += 1
                    if small is not None and small.takes(v):
                        small.put(v)
                    else:
                        pooled(v)
            except BaseException:
                self.stop.set()  # the files in flight end at their next chunk; the pool waits for them
                raise
            finally:
                if small is not None:
                    small.close()
        if not self.stop.is_set():
            self._restore_folders()
        if self.unsynced:
            # Small files were not fsynced one by one: one sync makes the tree durable. Only then: syncfs
            # waits for every dirty page of the file system, other programs' too (0.2-1.2 s measured on the
            # shared bench machine), and a large file is fsynced before it lands anyway.
            _syncfs(self.root)
        return self.summary

    def _small_files(self, pooled: Callable[[Version], None], release: Callable[[], None]) -> "SmallFiles | None":
        """The lane that reads small files many at once from one thread, where the store
        can (S3) and no bandwidth limit is to be kept (it meters per file, the lane
        would not); None: every file goes to the pool."""
        from skynet.versions.smallfiles import SmallFiles

        store = self.store
        if not isinstance(store, Completes) or not store.reads_many() or self.opts.throttle is not None:
            return None
        return SmallFiles(self, store, pooled, release, min(WHOLE_READ, self.opts.chunk_size), self.opts.workers)

    def _restore_folders(self) -> None:
        """The remote's folders under the restored paths (on a remote that has them),
        each given its mode, after the files and deepest first, so a read-only folder
        was still writable while it was filled (and only once no file failed). A folder
        no restored file is in is made only when it is empty on the remote now (see
        VersionStore.holds_files)."""
        found: list[tuple[str, int | None]] = []
        for prefix in outermost(self.opts.prefixes):
            for f in self.store.folders(prefix):
                path = os.path.join(self.root, check_rel(f.rel))
                if not os.path.isdir(path) and self.store.holds_files(f.rel):
                    continue  # its files now came after TIME (or moved here since): not there then
                self._folder(path, f.rel)
                found.append((f.rel, f.mode))
        found.sort(key=lambda f: -f[0].count("/"))
        if self.summary.failed:
            found = []  # no mode yet: the same command, run again for the failed files, must still write them
        for rel, mode in found:
            if mode is not None:
                os.chmod(os.path.join(self.root, rel), self._bits(mode))
        with self.summary.lock:
            self.summary.folders += len(found)

    def _one(self, v: Version, chunks: ThreadPoolExecutor) -> None:
        self.account(v, lambda: self._restore_file(v, chunks))

    def account(self, v: Version, work: Callable[[], int | None]) -> None:
        """Run one file's restore (`work`: the bytes fetched, None if DIR had it) and count
        what came of it; one file's failure is not the others'."""
        try:
            fetched = work()
        except (TransferStopped, InterruptedError):
            if not self.stop.is_set():
                raise
            return  # stopped, not failed: the same command resumes it
        except Exception as exc:  # one file's failure is not the others'; counted and named
            with self.summary.lock:
                self.summary.failed += 1
                self.summary.errors.append(f"{v.rel}: {type(exc).__name__}: {exc}")
        else:
            with self.summary.lock:
                if fetched is None:
                    self.summary.skipped += 1
                else:
                    self.summary.files += 1
        self.on_change()

    def _restore_file(self, v: Version, chunks: ThreadPoolExecutor) -> int | None:
        """Restore one version; None when DIR already holds it, finished."""
        if self.stop.is_set():
            raise InterruptedError("stopped")
        dest = self.dest(v.rel)
        store = self.store
        read: ReadInto = lambda offset, length, out: store.read_into(v, offset, length, out)  # noqa: E731
        there = lstat_or_none(dest)
        ctx: TransferContext | None = None
        if isinstance(store, Completes) and (v.mtime_ns is None or v.mode is None):
            if v.size <= WHOLE_READ and not same_size(there, v.size):
                # nothing there to skip: metadata and bytes in one request (S3: a GET, not a HEAD and a GET),
                # the bandwidth limit's budget for them taken first (the fetch below then owes nothing)
                ctx = self._context()
                ctx.start_at(0, v.size)
                ctx.ahead(v.size)
                v, data = store.complete_read(v)
                if len(data) <= self.opts.chunk_size:  # (always, but for a chunk size below WHOLE_READ)
                    return self.land(v, data, dest)
                read = from_bytes(lambda offset, length: data[offset: offset + length])
            else:
                v = store.complete(v)
        want = Wanted(v.rel, v.size, v.etag, {"since_ns": v.since_ns, "mtime_ns": v.mtime_ns, "ref": v.ref},
                      v.mtime_ns, self._mode(v))
        if there is not None and _finished(dest, there, want):
            return None
        ctx = ctx or self._context()
        if v.size <= self.opts.chunk_size:
            self.unsynced = True  # (before it lands: a kill after the rename leaves nothing unsynced behind a sync)
            return fetch_ranges(read, want, dest, ctx, chunks, chunk_size=self.opts.chunk_size, sync=False)
        with self._big:
            return fetch_ranges(read, want, dest, ctx, chunks, chunk_size=self.opts.chunk_size,
                                concurrency=self.opts.concurrency)

    def land(self, v: Version, data: bytes, dest: str) -> int:
        """A small file read whole, landed from memory (fetch.land_bytes)."""
        want = Wanted(v.rel, v.size, v.etag, mtime_ns=v.mtime_ns, mode=self._mode(v))
        self.unsynced = True  # (before it lands: a kill after the link leaves nothing unsynced behind a sync)
        land_bytes(data, want, dest, sync=False)
        with self.summary.lock:
            self.summary.bytes += len(data)
        return len(data)

    def _context(self) -> TransferContext:
        """One file's TransferContext: the run's stop flag and bandwidth limit, its bytes counted."""
        return TransferContext(stop=self.stop, throttle=self.opts.throttle, progress=self._meter())

    def _meter(self) -> Callable[[int, int], None]:
        """ctx.progress for one file: adds what it reads to the run's byte count as it arrives."""
        last = [0]
        first = [True]

        def progress(done: int, _total: int) -> None:
            if first[0]:  # the first report is where a resumed file starts: not fetched now
                first[0] = False
                last[0] = done
                return
            with self.summary.lock:
                self.summary.bytes += done - last[0]
            last[0] = done
            self.on_change()
        return progress

    def _mode(self, v: Version) -> int:
        if v.mode is None:
            return self._default_mode
        return self._bits(v.mode)

    def _bits(self, mode: int) -> int:
        """Permission bits to give: setuid, setgid and sticky only with --keep-special-bits."""
        return mode & (0o7777 if self.opts.keep_special_bits else 0o7777 & ~SPECIAL_BITS)

    def dest(self, rel: str) -> str:
        """DIR/rel, its folders made, none of them a link leading out of DIR."""
        rel = check_rel(rel)
        dest = os.path.join(self.root, rel)
        self._folder(os.path.dirname(dest), rel)
        return dest

    def _folder(self, path: str, rel: str) -> None:
        """The folder `path` in DIR (for `rel`) made, and not a link leading out of DIR.
        A folder already made is found without the lock (a set's `in` is atomic), so
        the 16 workers do not queue behind one that is making a new folder."""
        if path in self._made:
            return
        with self._made_lock:
            if path not in self._made:
                os.makedirs(path, exist_ok=True)
                real = os.path.realpath(path)
                if real != self.root and not real.startswith(self.root + os.sep):
                    raise UnsafePath(f"{rel}: its folder in {self.root} leads elsewhere ({real})")
                self._made.add(path)


def lstat_or_none(dest: str) -> os.stat_result | None:
    """What is at `dest` in DIR now (a link not followed), once per file: None if nothing."""
    try:
        return os.lstat(dest)
    except FileNotFoundError:
        return None


def same_size(st: os.stat_result | None, size: int) -> bool:
    """A regular file of that size is there: maybe a finished one, to be checked before any read."""
    return st is not None and statmod.S_ISREG(st.st_mode) and st.st_size == size


def _finished(dest: str, st: os.stat_result, want: Wanted) -> bool:
    """DIR already holds this version at `dest` (`st`: its lstat), restored by an earlier,
    interrupted run: its size, mode and mtime -- set only just before the rename that
    made it appear -- or, for a version without an mtime, its MD5."""
    if not statmod.S_ISREG(st.st_mode) or st.st_size != want.size:
        return False
    if want.mode is not None and statmod.S_IMODE(st.st_mode) != want.mode:
        return False
    if want.mtime_ns is not None:
        return st.st_mtime_ns == want.mtime_ns
    if want.plain_md5:
        return _md5(dest) == want.etag
    return False


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _syncfs(path: str) -> None:
    """syncfs(2) of the file system holding `path` (Linux); os.sync() where there is none."""
    libc_name = ctypes.util.find_library("c")
    fn = getattr(ctypes.CDLL(libc_name, use_errno=True), "syncfs", None) if libc_name else None
    if fn is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fn(fd)
    finally:
        os.close(fd)


def restore(store: VersionStore, opts: Options, stop: threading.Event | None = None,
            on_change: Callable[[], None] | None = None) -> Summary:
    """Restore the tree `opts` describes from `store`; RestoreRefused for bad input (nothing written)."""
    return Restore(store, opts, stop, on_change).run()


def now_ns() -> int:
    return time.time_ns()

