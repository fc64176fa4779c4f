"""The one chunk scheduler: large files cut into chunks, moved in parallel, both ways.

Why one module: S3 multipart uploads, SFTP parallel writes and ranged parallel
downloads (restore, migrations) all need the same loop -- cut the file into
chunks, keep a bounded number in flight, reuse a bounded set of buffers, meter
progress and the bandwidth limit, remember finished chunks for resume, stop
cleanly, never leave a thread running behind the caller. Written once here, a
backend only moves ONE chunk (rclone's `lib/multipart` and its `ChunkWriter`;
s3transfer keeps scheduling apart from transfer the same way).

    writer.write_chunk(n, offset, data, sent) -> token     (S3: UploadPart -> ETag)
    reader.read_chunk(n, offset, length, got) -> bytes     (S3: ranged GET)

Threads: the caller's thread reads the local file (uploads) or writes it
(downloads: pool threads pwrite at their offsets), hands chunks to `pool`, and
is the only thread that calls `on_chunk` -- so resume state can be saved in the
engine's SQLite database, whose connections belong to one thread. `sent`/`got`
are called by the pool thread moving the chunk: `TransferContext.report` is
thread-safe, and the bandwidth limit then sleeps in the thread that moves the
bytes (a backend whose bytes move in an asyncio loop must call them from the
thread waiting for the loop, never from the loop).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

from connections.contract.xcon import FIRST_PIECE, TransferContext

Meter = Callable[[int], None]  # called with each new number of bytes moved
T = TypeVar("T")


class ChunkWriter(Protocol):
    """A backend's half of an upload: write one chunk."""

    def write_chunk(self, n: int, offset: int, data: memoryview, sent: Meter) -> str:
        """Write chunk `n` (0-based), the file's bytes [offset, offset + len(data)).
        Runs on a pool thread; calls sent(k) as k more bytes go out. Returns what
        the backend needs to finish the upload (S3: the part's ETag; else "")."""
        ...


class ChunkReader(Protocol):
    """A backend's half of a download: read one chunk (a ranged read)."""

    def read_chunk(self, n: int, offset: int, length: int, got: Meter) -> bytes:
        """The remote bytes [offset, offset + length); calls got(k) as they arrive."""
        ...


class TransferStopped(Exception):
    """ctx.stop was set: chunks in flight were finished and reported, no new one started."""

    def __init__(self, finished: int, count: int) -> None:
        super().__init__(f"stopped with {finished} of {count} chunks done")
        self.finished, self.count = finished, count


class StaleChunk(Exception):
    """A chunk kept from an earlier attempt does not hold this file's bytes."""


class SourceChanged(Exception):
    """The local file got shorter or longer while it was being read."""


class ShortChunk(Exception):
    """The remote returned fewer bytes than the chunk asked for (it got shorter)."""


@dataclass(frozen=True)
class Plan:
    """How one file is cut: every chunk but the last holds `chunk_size` bytes;
    at most `concurrency` chunks (and so buffers) are in flight at once."""

    size: int
    chunk_size: int
    concurrency: int

    def __post_init__(self) -> None:
        if self.size < 0 or self.chunk_size <= 0 or self.concurrency <= 0:
            raise ValueError(f"bad transfer plan {self}")

    @property
    def count(self) -> int:
        """Number of chunks; an empty file is one empty chunk (a part to complete)."""
        return max(1, -(-self.size // self.chunk_size))

    def bounds(self, n: int) -> tuple[int, int]:
        """[start, end) of chunk `n`."""
        start = n * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def length(self, n: int) -> int:
        start, end = self.bounds(n)
        return end - start

    def bytes_in(self, chunks: set[int] | dict[int, str]) -> int:
        return sum(self.length(n) for n in chunks if 0 <= n < self.count)


class _Progress:
    """Cumulative bytes of one transfer, passed to ctx.report from whichever
    thread moved them (each thread is charged the bandwidth for its own bytes)."""

    def __init__(self, ctx: TransferContext, total: int, start: int) -> None:
        self.ctx, self.total = ctx, total
        self.done = start
        self.moved = 0  # bytes moved by this attempt (not the resumed ones)
        self._lock = threading.Lock()
        ctx.start_at(start, total)

    def add(self, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self.done += n
            self.moved += n
            done = self.done
        self.ctx.report(min(done, self.total), self.total)


class _Flight:
    """The chunks in flight: bounded, reaped in the calling thread.

    The calling thread submits with `start`; `reap` waits for at least one to
    finish (or none, with block=False) and hands each result to `finished` in
    that same thread. The first failure is kept and stops new chunks; `drain`
    waits for every chunk still running, so no pool thread outlives the call."""

    def __init__(self, pool: Executor, limit: int, finished: Callable[[int, object], None],
                 slots: threading.Semaphore | None) -> None:
        self.pool, self.limit, self.finished, self.slots = pool, limit, finished, slots
        self.pending: dict[Future, int] = {}
        self.error: BaseException | None = None

    def start(self, n: int, fn: Callable[[], object], release: Callable[[], None]) -> None:
        """Run fn for chunk n on the pool; `release` runs when it ends, however it ends."""
        try:
            fut = self.pool.submit(fn)
        except BaseException:
            release()
            raise
        fut.add_done_callback(lambda _f: release())
        self.pending[fut] = n

    def room(self, stop: threading.Event) -> bool:
        """Wait until another chunk may start (a free place, and a connection-wide
        slot when `slots` is given); False when the transfer must not go on."""
        while len(self.pending) >= self.limit and self.error is None:
            self.reap()
        held = False  # a slot taken here, to give back if the chunk does not start after all
        if self.slots is not None:
            while self.error is None and not stop.is_set():
                held = self.slots.acquire(timeout=0.2)
                if held:
                    break
                self.reap(block=False)
        # The loop above ends holding a slot unless the transfer must stop, so going
        # on always holds one (when there are slots at all).
        go = self.error is None and not stop.is_set()
        if not go and held:
            self.slots.release()  # type: ignore[union-attr]
        return go

    def release_slot(self) -> None:
        if self.slots is not None:
            self.slots.release()

    def reap(self, block: bool = True) -> None:
        if not self.pending:
            return
        ready, _ = wait(list(self.pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for fut in ready:
            n = self.pending.pop(fut)
            exc = fut.exception()
            if exc is not None:
                if self.error is None:
                    self.error = exc
            else:
                self.finished(n, fut.result())

    def drain(self) -> None:
        while self.pending:
            self.reap()


def upload(fd: int, plan: Plan, writer: ChunkWriter, ctx: TransferContext, pool: Executor, *,
           done: dict[int, str] | None = None,
           check_done: Callable[[int, memoryview, str], bool] | None = None,
           on_chunk: Callable[[int, str], None] | None = None,
           slots: threading.Semaphore | None = None) -> dict[int, str]:
    """Send every chunk of the open file `fd` that is not in `done`; return every chunk's token.

    The file is read in order (pread, into at most `plan.concurrency` reused
    buffers). A chunk in `done` (kept from an earlier attempt: chunk -> token) is
    skipped without sending; with `check_done` it is read and checked first, and
    a chunk the remote holds other bytes for raises StaleChunk (the caller starts
    the upload over). The file must keep the plan's size: SourceChanged otherwise.
    `slots` (optional) is a connection-wide limit on chunks in flight across all
    transfers. The first chunk error is re-raised as it was (the backend
    classifies it) after the chunks in flight have ended; ctx.stop raises
    TransferStopped. on_chunk(n, token) runs in this thread as chunks finish.
    """
    def fill(view: memoryview, offset: int) -> int:
        _read_exactly(fd, view, offset)
        return len(view)

    tokens = _send_chunks(fill, plan, writer, ctx, pool, done=done, check_done=check_done, on_chunk=on_chunk,
                          slots=slots, skip_unread=check_done is None)
    if os.pread(fd, 1, plan.size):
        raise SourceChanged("the file grew while it was being sent")
    return tokens


def upload_stream(fill: Callable[[memoryview], int], plan: Plan, writer: ChunkWriter, ctx: TransferContext,
                  pool: Executor, *, first: int = 0, done: dict[int, str] | None = None,
                  check_done: Callable[[int, memoryview, str], bool] | None = None,
                  on_chunk: Callable[[int, str], None] | None = None,
                  slots: threading.Semaphore | None = None, open_ended: bool = False) -> dict[int, str]:
    """upload() from a stream read in order (an HTTP body, an FTP data connection)
    instead of a file: `fill(view)` puts the next bytes into `view` and returns
    how many (fewer only where the stream ends). Chunks before `first` are kept
    and not read (the stream starts at chunk `first`'s offset); a later chunk in
    `done` is read (the stream must go past it) and, with `check_done`, checked,
    but not sent again. With `open_ended` the size is unknown: `plan.size` is a
    bound, and the first short chunk is the last (an empty one after the first is
    not sent); return value's length is then the number of chunks. Without it a
    stream that ends early raises SourceChanged."""
    kept = {n: t for n, t in (done or {}).items() if n < first}
    later = {n: t for n, t in (done or {}).items() if n >= first}

    def filled(view: memoryview, _offset: int) -> int:
        got = fill(view)
        if got < len(view) and not open_ended:
            raise SourceChanged(f"the stream ended {len(view) - got} bytes early")
        return got

    return _send_chunks(filled, plan, writer, ctx, pool, done={**kept, **later}, check_done=check_done,
                        on_chunk=on_chunk, slots=slots, skip_unread=False, first=first, open_ended=open_ended)


def _send_chunks(fill: Callable[[memoryview, int], int], plan: Plan, writer: ChunkWriter, ctx: TransferContext,
                 pool: Executor, *, done: dict[int, str] | None, check_done: Callable[[int, memoryview, str], bool] | None,
                 on_chunk: Callable[[int, str], None] | None, slots: threading.Semaphore | None,
                 skip_unread: bool, first: int = 0, open_ended: bool = False) -> dict[int, str]:
    """The loop of upload() and upload_stream(): chunks are filled in order in this
    thread and sent on the pool. `skip_unread`: a kept chunk is neither read nor
    checked (a file can be read at any offset; a stream cannot skip)."""
    kept = {n: t for n, t in (done or {}).items() if 0 <= n < plan.count}
    tokens: dict[int, str] = dict(kept)
    progress = _Progress(ctx, plan.size, plan.bytes_in(kept))
    buffers = _Buffers(plan.chunk_size)
    count = plan.count

    def finished(n: int, token: object) -> None:
        tokens[n] = str(token)
        if on_chunk is not None and n not in kept:
            on_chunk(n, tokens[n])

    flight = _Flight(pool, plan.concurrency, finished, slots)
    try:
        for n in range(first, plan.count):
            if n in kept and skip_unread:
                continue
            if not flight.room(ctx.stop):
                break
            buf = buffers.take()
            start, end = plan.bounds(n)
            view = memoryview(buf)[: end - start]

            def release(buf: bytearray = buf) -> None:
                buffers.give(buf)
                flight.release_slot()

            try:
                got = fill(view, start)
            except BaseException:
                release()
                raise
            if got < len(view):  # open-ended: the stream's end
                view = view[:got]
                count = n + 1 if got or n == 0 else n
                if not got and n > 0:
                    release()
                    break
            if n in kept:
                flight.start(n, _checker(n, view, kept[n], check_done), release)
            else:
                ctx.ahead(min(FIRST_PIECE, len(view)))  # the bandwidth limit, taken before the chunk's first piece
                flight.start(n, _sender(writer, n, start, view, progress.add), release)
            flight.reap(block=False)
            if count != plan.count:
                break
        flight.drain()
    except BaseException:
        flight.drain()  # never leave chunk threads running behind the caller
        raise
    if flight.error is not None:
        raise flight.error
    got_all = all(n in tokens for n in range(count))
    if not got_all:
        raise TransferStopped(len(tokens), count)
    return {n: tokens[n] for n in range(count)}


def download(reader: ChunkReader, plan: Plan, out_fd: int, ctx: TransferContext, pool: Executor, *,
             done: set[int] | None = None,
             on_chunk: Callable[[int], None] | None = None,
             slots: threading.Semaphore | None = None) -> None:
    """Fetch every chunk not in `done` with ranged reads, in parallel, written
    with pwrite at its offset into `out_fd` (which the caller opened, and later
    syncs and renames into place). A chunk shorter than planned raises
    ShortChunk (the remote changed: the caller checks and starts over). Same
    rules as upload() for errors, stop, `slots` and `on_chunk`."""
    def fetched(n: int, start: int, end: int, got: Meter) -> None:
        data = reader.read_chunk(n, start, end - start, got)
        if len(data) != end - start:
            raise ShortChunk(f"chunk {n + 1}: the remote returned {len(data)} of {end - start} bytes")
        view = memoryview(data)
        while view:
            written = os.pwrite(out_fd, view, start)
            view, start = view[written:], start + written

    each(plan, fetched, ctx, pool, done=done, on_chunk=None if on_chunk is None else (lambda n, _r: on_chunk(n)),
         slots=slots)


def each(plan: Plan, work: Callable[[int, int, int, Meter], T], ctx: TransferContext, pool: Executor, *,
         done: set[int] | None = None,
         on_chunk: Callable[[int, T], None] | None = None,
         slots: threading.Semaphore | None = None) -> dict[int, T]:
    """Run work(n, start, end, meter) for every chunk not in `done`, in parallel;
    return each chunk's result. For chunks whose bytes do not pass through this
    process's file (a ranged download; a server-side part copy, which moves no
    bytes here and so calls no meter). Same rules as upload() for errors, stop,
    `slots` and `on_chunk` (called in this thread)."""
    kept = {n for n in (done or set()) if 0 <= n < plan.count}
    progress = _Progress(ctx, plan.size, plan.bytes_in(kept))
    results: dict[int, T] = {}

    def finished(n: int, result: object) -> None:
        results[n] = result  # type: ignore[assignment]
        if on_chunk is not None:
            on_chunk(n, results[n])

    flight = _Flight(pool, plan.concurrency, finished, slots)
    try:
        for n in range(plan.count):
            if n in kept:
                continue
            if not flight.room(ctx.stop):
                break
            start, end = plan.bounds(n)
            ctx.ahead(min(FIRST_PIECE, end - start))
            flight.start(n, _bound(work, n, start, end, progress.add), flight.release_slot)
            flight.reap(block=False)
        flight.drain()
    except BaseException:
        flight.drain()
        raise
    if flight.error is not None:
        raise flight.error
    if len(results) + len(kept) < plan.count:
        raise TransferStopped(len(results) + len(kept), plan.count)
    return results


def _bound(work: Callable[[int, int, int, Meter], T], n: int, start: int, end: int, meter: Meter) -> Callable[[], T]:
    return lambda: work(n, start, end, meter)


def _sender(writer: ChunkWriter, n: int, offset: int, data: memoryview, sent: Meter) -> Callable[[], str]:
    return lambda: writer.write_chunk(n, offset, data, sent)


def _checker(n: int, data: memoryview, token: str,
             check: Callable[[int, memoryview, str], bool] | None) -> Callable[[], str]:
    def run() -> str:
        if check is not None and not check(n, data, token):
            raise StaleChunk(f"chunk {n + 1} on the remote does not hold this file's bytes")
        return token
    return run


def _read_exactly(fd: int, view: memoryview, offset: int) -> None:
    """Fill `view` from the file at `offset`; SourceChanged if the file ends first."""
    pos = 0
    while pos < len(view):
        n = os.preadv(fd, [view[pos:]], offset + pos)
        if n == 0:
            raise SourceChanged("the file got shorter while it was being sent")
        pos += n


class _Buffers:
    """Reused chunk buffers: a large transfer allocates `concurrency` of them
    once instead of one per chunk (a 64 MiB bytearray costs page faults each time)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)
