"""Fetch one remote file to a local path: ranged, parallel, atomic, verified, resumable.

Restore and migrations between stores read large files back. Each goes
through here (fetch() for a connection's file, fetch_ranges() for any ranged
reader: a version a VersionStore keeps), so each gets the same guarantees:

* ranged and parallel: the chunk scheduler (chunks.each) runs `concurrency`
  ranged reads of `chunk_size` bytes at once (a backend only reads one range),
  each streamed into the part file at its offset as it arrives (ReadInto: a
  connection that can hands the bytes over piece by piece, RangeInto);
* one version: every range is read with `expect=entry`, so an object replaced
  on the remote mid-download raises RemoteChanged instead of stitching two
  versions into one file;
* atomic: bytes go to a hidden part file beside the destination, which is
  fsynced and renamed over it only when complete and checked;
* verified: the size always, the MD5 where the remote's hash is a plain MD5
  (an S3 single-PUT ETag);
* resumable: finished chunks are listed in a small state file beside the part
  file (written atomically after each chunk); after kill -9 the same call
  fetches only the chunks it lacks, and only if the remote is still the same
  version (size, mtime, hash) -- else it starts over.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import logging
import mmap
import queue
import re
import threading
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

from connections.contract.xcon import RemoteEntry, Sink, TransferContext, XCon, read_range_into
from skynet.state.atomicfile import write_atomic
from skynet.transfer.chunks import Meter, Plan, ShortChunk, each

CHUNK = 16 << 20
CONCURRENCY = 4
PART_SUFFIX = ".skynet-part"
_MD5 = re.compile(r"[0-9a-f]{32}")
_PART_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
log = logging.getLogger("skynet.transfer.fetch")


class PartBusy(OSError):
    """Another process (a second restore into the same folder) is writing this part file."""


def _open_part(part: str, truncate: bool) -> int:
    """The part file, opened and held under an exclusive lock for this fetch: two
    restores into one folder would otherwise write, truncate and hash one file at once
    (and a truncation under the MD5's mapping is a SIGBUS, not an error). The loser
    fails that file with one clear line and the folder's content is left as it was."""
    fd = os.open(part, _PART_FLAGS, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if truncate:
            os.ftruncate(fd, 0)
    except BlockingIOError:
        os.close(fd)
        raise PartBusy(f"another process is fetching into {part}; not touched") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class VerifyFailed(Exception):
    """The fetched bytes are not the remote file's (size or hash differ)."""


ReadRange = Callable[[int, int], bytes]  # (offset, length) -> that many bytes (fewer only at the end)
#: (offset, length, out) -> the byte count: the bytes of a ranged read handed to `out` in order as
#: they arrive (fewer only at the end). Streamed, a chunk is written where it belongs piece by piece.
ReadInto = Callable[[int, int, Sink], int]
HASH_STEP = 256 << 10  # without a mapping, the MD5 reads the part file back in pieces this size, into one cached buffer
MAP_STEP = 64 << 20  # the MD5 maps at most this much of the part file at a time
REPORT_STEP = 1 << 20  # progress (and the bandwidth limit) is told about a streamed chunk every MiB


def from_bytes(read: ReadRange) -> ReadInto:
    """A ReadInto over a ranged read that returns bytes (held in memory, handed over in one piece)."""
    def read_into(offset: int, length: int, out: Sink) -> int:
        data = read(offset, length)
        if data:
            out(memoryview(data))
        return len(data)
    return read_into


@dataclass(frozen=True)
class Wanted:
    """What the local file must become: the remote bytes' size and hash (checked),
    their identity (resume state saved for another identity is dropped), and the
    mtime and permission bits to give the file before it lands (None: leave them)."""

    rel: str
    size: int
    etag: str | None
    ident: dict = field(default_factory=dict)
    mtime_ns: int | None = None
    mode: int | None = None

    @property
    def plain_md5(self) -> bool:
        """The remote's hash is a plain MD5 of the bytes (an S3 single-PUT ETag): checked."""
        return bool(self.etag and _MD5.fullmatch(self.etag))


class _WriteAt:
    """The Sink of one chunk: each piece pwritten at its place in the part file as it
    arrives, progress told every REPORT_STEP bytes (and at the end, by done()): to `got`
    (the byte count) and to `front` (where the chunk's bytes on the file now end: the
    MD5 follows them)."""

    __slots__ = ("fd", "pos", "got", "unreported", "front")

    def __init__(self, fd: int, pos: int, got: Meter, front: Callable[[int], None] | None = None) -> None:
        self.fd, self.pos, self.got, self.unreported, self.front = fd, pos, got, 0, front

    def __call__(self, piece: memoryview) -> None:
        fd, pos = self.fd, self.pos
        while piece:
            written = os.pwrite(fd, piece, pos)
            piece, pos = piece[written:], pos + written
        self.unreported += pos - self.pos
        self.pos = pos
        if self.unreported >= REPORT_STEP:
            self.done()

    def done(self) -> None:
        if self.unreported:
            n, self.unreported = self.unreported, 0
            self.got(n)
            if self.front is not None:
                self.front(self.pos)


def part_paths(dest: str) -> tuple[str, str]:
    """The hidden part file and its resume state, beside `dest`."""
    folder, name = os.path.split(dest)
    part = os.path.join(folder, "." + name + PART_SUFFIX)
    return part, part + ".json"


def _identity(want: Wanted, chunk_size: int) -> dict:
    return {"rel": want.rel, "size": want.size, "etag": want.etag, **want.ident, "chunk": chunk_size}


def _load_done(state_path: str, ident: dict, count: int) -> set[int]:
    """Chunks an earlier attempt finished for this very version; else none."""
    try:
        with open(state_path, "rb") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return set()
    if not isinstance(state, dict) or state.get("ident") != ident:
        return set()
    return {n for n in state.get("done", []) if isinstance(n, int) and 0 <= n < count}


def fetch(con: XCon, entry: RemoteEntry, dest: str, ctx: TransferContext, pool: Executor, *,
          chunk_size: int = CHUNK, concurrency: int = CONCURRENCY) -> int:
    """Make local `dest` hold the remote file `entry` describes; return the bytes fetched now.

    `dest`'s folder must exist and be the caller's to write in (restore checks
    where it writes). Raises what the connection raises (RemoteChanged when the
    remote file is replaced meanwhile: the caller stats again and calls again),
    TransferStopped on ctx.stop (the next call resumes), VerifyFailed.
    """
    want = Wanted(entry.rel, entry.size, entry.etag, {"mtime_ns": entry.mtime_ns})

    def read(offset: int, length: int, out: Sink) -> int:
        return read_range_into(con, entry.rel, offset, length, out, expect=entry)
    return fetch_ranges(read, want, dest, ctx, pool, chunk_size=chunk_size, concurrency=concurrency)


def fetch_ranges(read: ReadInto, want: Wanted, dest: str, ctx: TransferContext, pool: Executor, *,
                 chunk_size: int = CHUNK, concurrency: int = CONCURRENCY, sync: bool = True,
                 slots: threading.Semaphore | None = None) -> int:
    """fetch() from any ranged reader (a remote file, a kept version): `dest`
    ends up holding `want`'s bytes with its mtime and mode, or is untouched.
    Returns the bytes read now (a resumed fetch reads only the chunks it lacks).

    A file of one chunk is read in this thread with one ranged read and keeps
    no resume state (there is nothing finished to keep); a larger one goes
    through chunks.each on `pool`. `sync=False` leaves the fsync of a
    small file to the caller (restore syncs the whole tree once at the end:
    ten thousand fsyncs cost more than the files)."""
    if want.size <= chunk_size:
        return _fetch_whole(read, want, dest, ctx, sync)
    plan = Plan(want.size, chunk_size, concurrency)
    part, state_path = part_paths(dest)
    ident = _identity(want, chunk_size)
    done = _load_done(state_path, ident, plan.count)
    fd = _open_part(part, truncate=not done)
    moved = [0]

    def got(n: int) -> None:
        moved[0] += n

    try:
        md5 = _FollowingMD5(fd, plan, done) if want.plain_md5 else None
        saver = _Saver(fd, state_path, ident, done)

        def fetched(n: int, start: int, end: int, meter: Meter) -> None:
            front = None if md5 is None else md5.front_of(n)
            _fetch_chunk(read, fd, n, start, end, meter, got, want.rel, front)

        try:
            try:
                each(plan, fetched, ctx, pool, done=set(done), on_chunk=lambda n, _r: saver.add(n), slots=slots)
            finally:
                saver.close()  # every finished chunk recorded (also when stopped or failed), the thread gone
            digest = md5.finish() if md5 is not None else None
        finally:
            if md5 is not None:
                md5.close()
        os.ftruncate(fd, want.size)  # a resumed part file may hold more (never the case, cheap to make sure)
        _finish(fd, want, dest, sync=True, md5=digest)
    finally:
        os.close(fd)
    _land(part, dest)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path)
    return moved[0]


def _fetch_chunk(read: ReadInto, fd: int, n: int, start: int, end: int, meter: Meter, count: Meter,
                 rel: str, front: Callable[[int], None] | None = None) -> None:
    """One chunk on a pool thread: streamed into the part file at its offset; ShortChunk
    if the remote has fewer bytes there than planned (it changed: the caller starts over)."""
    sink = _WriteAt(fd, start, meter, front)
    try:
        got = read(start, end - start, sink)
    finally:
        sink.done()
    count(got)
    if got != end - start:
        raise ShortChunk(f"chunk {n + 1}: the remote returned {got} of {end - start} bytes")
    log.debug("fetched chunk %d of %s (%d bytes at %d)", n, rel, got, start)


def _fetch_whole(read: ReadInto, want: Wanted, dest: str, ctx: TransferContext | None, sync: bool) -> int:
    """A file of one chunk: one ranged read (none for an empty file), hashed as it is
    written, checked, landed. `ctx` None: no progress or bandwidth limit to tell.

    Where the file system has unnamed files (O_TMPFILE), the bytes go into one in
    dest's folder, linked in place once checked: no part name, no lock, no truncation
    and no rename, and a kill -9 mid-way leaves nothing. On ext4 this also keeps the
    new inode's allocation out from under the folder's lock (creat() scans for a free
    inode holding it; an unnamed file takes it only to link): 16 workers filling one
    folder spent more time spinning on that lock than writing (10,000 x 4 KiB, 16
    threads: 7.1 s with part files, 3.7 s unnamed, on this machine's ext4). Elsewhere
    the named part file, as a chunked fetch uses, renamed into place."""
    if ctx is not None:
        ctx.start_at(0, want.size)
        ctx.ahead(want.size)  # the bandwidth limit, taken before the one read (its piece is the whole file)
    part = None
    fd = _unnamed_in(os.path.dirname(dest))
    if fd is None:
        part = part_paths(dest)[0]
        fd = _open_part(part, truncate=True)
    try:
        write = _WriteAt(fd, 0, lambda _n: None)
        h = hashlib.md5() if want.plain_md5 else None
        if h is None:
            sink: Sink = write
        else:
            def sink(piece: memoryview) -> None:
                h.update(piece)
                write(piece)
        got = read(0, want.size, sink) if want.size else 0
        log.debug("fetched chunk 0 of %s (%d bytes at 0)", want.rel, got)
        if ctx is not None:
            ctx.report(got, want.size)
        _finish(fd, want, dest, sync, md5=None if h is None else h.hexdigest())
        if part is None:
            _link_unnamed(fd, dest)
    finally:
        os.close(fd)
    if part is not None:
        _land(part, dest)
    return got


def land_bytes(data: bytes | memoryview, want: Wanted, dest: str, *, sync: bool = True) -> int:
    """Make `dest` hold `data`, a small file read whole (with its metadata, in one
    request), as _fetch_whole() lands a file of one read: checked (size, MD5 where the
    hash is one) before it gets its name, with its mode and mtime."""
    view = memoryview(data)
    return _fetch_whole(from_bytes(lambda offset, length: view[offset: offset + length]), want, dest, None, sync)


class _Unnamed:
    """Whether unnamed files can be made and linked here: O_TMPFILE (Linux 3.11+, most
    local file systems) and /proc/self/fd to link them by. The first refusal turns them
    off for the process."""

    usable = os.path.isdir("/proc/self/fd") and hasattr(os, "O_TMPFILE")
    anchor = -1  # a folder descriptor, see _link_unnamed
    lock = threading.Lock()


def _unnamed_in(folder: str) -> int | None:
    """An unnamed file in `folder`, open for writing; None where there are none."""
    if not _Unnamed.usable:
        return None
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        _Unnamed.usable = False
        return None


def _link_unnamed(fd: int, dest: str) -> None:
    """Give the unnamed file `fd` the name `dest`: linked there when the name is free
    (a restore into an empty folder), else linked at the part name and renamed over
    what is there, so the old file is replaced in one step (never followed if a link).
    The part name is taken only if no other fetch holds it (PartBusy).

    It is linked by its /proc/self/fd name with linkat(AT_SYMLINK_FOLLOW), which needs
    no privilege (AT_EMPTY_PATH does). Python calls linkat only when given a folder
    descriptor, so it gets one, which an absolute `dest` makes linkat ignore."""
    try:
        _link_fd(fd, dest)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.ENOENT, errno.EOPNOTSUPP):
            _Unnamed.usable = False  # the next files go through named part files
        raise
    part = part_paths(dest)[0]
    held = _open_part(part, truncate=False)
    try:
        os.unlink(part)
        _link_fd(fd, part)
    finally:
        os.close(held)
    _land(part, dest)


def _link_fd(fd: int, path: str) -> None:
    if _Unnamed.anchor < 0:
        with _Unnamed.lock:
            if _Unnamed.anchor < 0:
                _Unnamed.anchor = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    os.link(f"/proc/self/fd/{fd}", os.path.abspath(path), dst_dir_fd=_Unnamed.anchor, follow_symlinks=True)


class _Saver:
    """Records finished chunks on a thread of its own, in the order they finish: fsync the
    part file (a chunk is on disk before the state says so), then write the resume state.
    Several chunks finished meanwhile share one fsync and one state write. On the
    scheduling thread an fsync per chunk kept it from starting the next ranged read while
    the other reads went on; here it overlaps them. The MD5 is not taken here: waiting
    behind an fsync of hundreds of dirty MiB it fell seconds behind the download
    (_FollowingMD5). close() waits for everything handed over and re-raises the first
    error it met."""

    def __init__(self, fd: int, state_path: str, ident: dict, done: set[int]) -> None:
        self.fd, self.state_path, self.ident, self.done = fd, state_path, ident, done
        self.error: BaseException | None = None
        self._q: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fetch-save", daemon=True)
        self._thread.start()

    def add(self, n: int) -> None:
        self._q.put(n)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            batch = [self._q.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._q.get_nowait())
            finished = [n for n in batch if n is not None]
            if finished and self.error is None:
                try:
                    self._record(finished)
                except BaseException as exc:  # handed to the caller by close()
                    self.error = exc
            if None in batch:
                return

    def _record(self, finished: list[int]) -> None:
        os.fsync(self.fd)  # the chunks are on disk before the state says so
        self.done.update(finished)
        write_atomic(self.state_path, json.dumps({"ident": self.ident, "done": sorted(self.done)}), sync=False)


class _FollowingMD5:
    """The MD5 of a file being fetched in chunks, taken on a thread of its own as close
    behind the writes as they let it: it hashes the bytes from the start of the part file
    that are written so far -- chunks kept from an earlier attempt, whole chunks fetched
    now, and the written front of the chunk under way, which each chunk's sink reports
    every MiB (front_of) -- and waits for more. So the MD5 runs beside the download
    instead of trailing it, and it is the MD5 of the bytes on disk (each byte read from
    the file after it was written there, and never written again by this fetch: a chunk
    is fetched once per call). Kept chunks are hashed from disk like the others, so a kept
    chunk that went bad fails the check.

    The bytes are read through a read-only mapping of the part file (its page-cache pages
    hashed in place, one update() per range without the GIL: a read-back copied each
    byte once more, 0.1 CPU-s per GiB on the MD5's thread, which is the restore's
    critical path); where the file cannot be mapped, through pread into one buffer. A
    mapping faults (SIGBUS) if the file is truncated under it: only this fetch truncates
    its part file, before and after hashing, and it holds the file's lock (_open_part)."""

    def __init__(self, fd: int, plan: Plan, kept: set[int]) -> None:
        self.fd, self.plan = fd, plan
        self.pos = 0  # the bytes [0, pos) are hashed
        self.h = hashlib.md5()
        self.error: BaseException | None = None
        self._fronts = {n: plan.bounds(n)[1] for n in kept}  # chunk -> where its bytes on the file end
        self._more = threading.Event()
        self._closed = False
        self._can_map = True
        self._buf = memoryview(bytearray(HASH_STEP))  # reused: a fresh bytes object per read costs page faults
        self._thread = threading.Thread(target=self._run, name="fetch-md5", daemon=True)
        self._thread.start()

    def front_of(self, n: int) -> Callable[[int], None]:
        """What chunk `n`'s sink calls with the offset its written bytes reach."""
        def front(upto: int) -> None:
            self._fronts[n] = upto
            self._more.set()
        return front

    def finish(self) -> str:
        """The hex MD5 once every byte is hashed (all chunks must be on the file)."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.h.hexdigest()

    def close(self) -> None:
        """Stop the thread (a fetch that failed or stopped: the rest never comes)."""
        self._closed = True
        self._more.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while self.pos < self.plan.size and not self._closed:
                self._more.clear()
                upto = self._written_from(self.pos)
                if upto <= self.pos:
                    self._more.wait()
                    continue
                self._hash(self.pos, upto)
                self.pos = upto
        except BaseException as exc:  # handed to the caller by finish()
            self.error = exc

    def _written_from(self, pos: int) -> int:
        """Where the bytes on the file that start at `pos` (a chunk's start or inside it) end."""
        n = pos // self.plan.chunk_size
        return self._fronts.get(n, self.plan.bounds(n)[0])

    def _hash(self, pos: int, end: int) -> None:
        while pos < end:
            step = min(end, pos + MAP_STEP)
            if not self._hash_mapped(pos, step):
                self._hash_read(pos, step)
            pos = step

    def _hash_mapped(self, pos: int, end: int) -> bool:
        """Hash [pos, end) of the file through a mapping; False if it cannot be mapped."""
        if not self._can_map:
            return False
        start = pos - pos % mmap.ALLOCATIONGRANULARITY
        try:
            mapped = mmap.mmap(self.fd, end - start, prot=mmap.PROT_READ, offset=start)
        except (OSError, ValueError):  # a file system without mmap: read instead, from now on
            self._can_map = False
            return False
        with mapped, memoryview(mapped) as view:
            self.h.update(view[pos - start:])
        return True

    def _hash_read(self, pos: int, end: int) -> None:
        buf, h, fd = self._buf, self.h, self.fd
        while pos < end:
            got = os.preadv(fd, [buf[: min(HASH_STEP, end - pos)]], pos)
            if not got:
                raise VerifyFailed(f"the part file ends at {pos}, before the {end} bytes written to it")
            h.update(buf[:got])
            pos += got


def _finish(fd: int, want: Wanted, dest: str, sync: bool, md5: str | None = None) -> None:
    """Check the part file (`md5`: its MD5 already taken), give it its mode and mtime, and
    make it durable: all before it lands."""
    try:
        _verify(fd, want, md5)
    except VerifyFailed:
        discard(dest)  # never resume from bytes that failed the check
        raise
    if want.mode is not None:
        os.fchmod(fd, want.mode)
    if want.mtime_ns is not None:
        os.utime(fd, ns=(want.mtime_ns, want.mtime_ns))
    if sync:
        os.fsync(fd)


def _land(part: str, dest: str) -> None:
    os.replace(part, dest)


def _verify(fd: int, entry: Wanted, md5: str | None = None) -> None:
    """Size always; the MD5 when the remote's hash is one (`md5`: taken already)."""
    size = os.fstat(fd).st_size
    if size != entry.size:
        raise VerifyFailed(f"{entry.rel}: fetched {size} bytes, the remote has {entry.size}")
    if entry.plain_md5:
        if md5 is None:
            h = hashlib.md5()
            pos = 0
            while chunk := os.pread(fd, CHUNK, pos):
                h.update(chunk)
                pos += len(chunk)
            md5 = h.hexdigest()
        if md5 != entry.etag:
            raise VerifyFailed(f"{entry.rel}: MD5 {md5} of the fetched bytes is not the remote's {entry.etag}")


def discard(dest: str) -> None:
    """Forget an unfinished fetch of `dest` (its part file and state)."""
    for path in part_paths(dest):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
