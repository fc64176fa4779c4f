"""The SSH side of SFTPCon: one event loop thread, the connections in it, and their pool.

asyncssh runs in ONE event loop thread owned by the connection (Loop); the
engine's worker threads submit coroutines to it and wait. Session is one SSH
connection with its SFTP client, a watchdog that aborts it when requests go
unanswered for `timeout` seconds, and the server's optional extensions. Pool
keeps up to `connections` sessions and replaces broken ones. BatchedTCP gives
asyncssh a TCP transport (through its `tunnel=` argument: any object with
`create_connection`, as asyncssh's own type hints say) whose writes made in one
pass of the loop leave in one send(): asyncssh writes every SSH packet, and an
IGNORE before each, with a send() of its own.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import asyncssh

from connections.contract.xcon import TransientError

log = logging.getLogger("skynet.sftp")
T = TypeVar("T")


def is_missing(exc: BaseException) -> bool:
    """The SFTP error says "no such file"."""
    return isinstance(exc, asyncssh.SFTPError) and exc.code == asyncssh.FX_NO_SUCH_FILE


class Loop:
    """One asyncio loop in one daemon thread: where asyncssh runs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future:
        with self._lock:
            if self.loop is None:
                loop = asyncio.new_event_loop()
                self.thread = threading.Thread(target=self._main, args=(loop,), name=self.name, daemon=True)
                self.loop = loop
                self.thread.start()
            return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def stop(self, last: Callable[[], Awaitable[None]] | None = None, timeout: float = 10.0) -> None:
        """Run `last()` on the loop, then end the loop and its thread."""
        with self._lock:
            loop, thread, self.loop, self.thread = self.loop, self.thread, None, None
        if loop is None or thread is None:
            return
        if last is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(last(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)


class BatchedTransport(asyncio.Transport):
    """The TCP transport asyncssh writes to, with the packets written during
    one pass of the event loop sent together, in one send().

    Why: asyncssh writes every SSH packet on its own (and puts an empty
    IGNORE packet before each one), so each SFTP request cost two send()
    calls, and a 1 GiB file 65,536 of them; on a fast link those system
    calls and the wake-ups they cause in sshd were the largest single cost
    of the loop thread (bench/sftp_peers.py, RESULTS.md "Issue 19"). Packets
    keep their order; they leave at most one loop pass later (call_soon)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, inner: asyncio.Transport) -> None:
        super().__init__()
        self.loop, self.inner = loop, inner
        self.pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(data)  # type: ignore[arg-type]

    def flush(self) -> None:
        if not self.pending:
            return
        data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending = []
        if not self.inner.is_closing():
            self.inner.write(data)

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size() + sum(len(d) for d in self.pending)

    def close(self) -> None:
        self.flush()
        self.inner.close()

    def abort(self) -> None:
        self.pending = []
        self.inner.abort()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self.inner.write_eof()


class BatchedProtocol(asyncio.Protocol):
    """Sits between the TCP transport and asyncssh's connection (the protocol
    asyncssh's factory makes), giving the connection a BatchedTransport."""

    def __init__(self, factory: Callable[[], asyncio.Protocol]) -> None:
        self.conn = factory()
        self.transport: BatchedTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = BatchedTransport(asyncio.get_running_loop(), transport)  # type: ignore[arg-type]
        self.conn.connection_made(self.transport)

    def data_received(self, data: bytes) -> None:
        self.conn.data_received(data)

    def eof_received(self) -> bool | None:
        return self.conn.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.transport.pending = []
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()


class BatchedTCP:
    """How our SSH connections reach the server: a plain TCP connection whose
    writes are batched (BatchedTransport). Passed as asyncssh.connect's
    `tunnel`, which takes any object with this create_connection (asyncssh's
    own tunnel protocol: it opens the connection and hands back (transport,
    the connection asyncssh's factory made))."""

    async def create_connection(self, session_factory: Callable[[], Any], host: str,
                                port: int) -> tuple[asyncio.BaseTransport, Any]:
        loop = asyncio.get_running_loop()
        _tcp, proto = await loop.create_connection(lambda: BatchedProtocol(session_factory), host, port)
        assert proto.transport is not None
        return proto.transport, proto.conn

    def close(self) -> None:
        """Nothing to close: the connection closes its own transport."""

    async def wait_closed(self) -> None:
        """Nothing to wait for (see close)."""


@dataclass(eq=False)
class Session:
    """One SSH connection with one SFTP channel, shared by every coroutine
    that uses it (asyncssh pipelines their requests)."""

    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    write_size: int
    timeout: float
    posix_rename: bool = True  # until the server shows it has none
    busy: int = 0  # calls using it now
    pending: int = 0  # requests waiting for a reply
    last: float = 0.0  # when a reply last came (or the first request went)
    watcher: asyncio.Task | None = None

    async def req(self, aw: Awaitable[T]) -> T:
        """One request's reply, watched: see watch()."""
        loop = asyncio.get_running_loop()
        if not self.pending:
            self.last = loop.time()
        self.pending += 1
        try:
            return await aw
        finally:
            self.pending -= 1
            self.last = loop.time()

    async def watch(self) -> None:
        """Abort the connection when requests wait more than `timeout`
        seconds without any reply: a dead link (or a hung server) is found
        within seconds, and every request waiting on it fails at once."""
        loop = asyncio.get_running_loop()
        step = max(0.05, min(1.0, self.timeout / 4))
        while not self.conn.is_closed():
            await asyncio.sleep(step)
            if self.pending and loop.time() - self.last > self.timeout:
                log.info("sftp: no reply for %.1f s: dropping the connection", self.timeout)
                self.conn.abort()
                return

    def alive(self) -> bool:
        return not self.conn.is_closed()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        self.conn.abort()

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs | None:
        try:
            return await self.req(self.sftp.lstat(path))
        except asyncssh.SFTPError as exc:
            if is_missing(exc):
                return None
            raise

    async def lstat_many(self, paths: list[bytes]) -> list[asyncssh.SFTPAttrs | None | asyncssh.SFTPError]:
        """LSTAT of every path, all in flight at once: one round trip. None
        for a missing path; any other refusal is handed back in its place
        (the caller decides which matters: a level above comes first)."""
        if not paths:
            return []
        replies = await asyncio.gather(*(self.lstat(p) for p in paths), return_exceptions=True)
        for r in replies:
            if isinstance(r, BaseException) and not isinstance(r, asyncssh.SFTPError):
                raise r
        return list(replies)

    async def remove(self, path: bytes, missing_ok: bool = True) -> bool:
        try:
            await self.req(self.sftp.remove(path))
            return True
        except asyncssh.SFTPError as exc:
            if missing_ok and is_missing(exc):
                return False
            raise

    async def scandir(self, path: bytes) -> list[asyncssh.SFTPName]:
        """Entries of one folder, names as raw bytes (any encoding survives)."""
        async def read() -> list[asyncssh.SFTPName]:
            return [e for e in [x async for x in self.sftp.scandir(path)] if e.filename not in (b".", b"..")]

        return await self.req(read())


class Pool:
    """Up to `size` sessions, used only from the loop thread. A call takes
    an idle session, else opens one while there is room, else shares the
    least busy (requests are pipelined: sharing costs no round trips)."""

    def __init__(self, factory: Callable[[], Awaitable[Session]], size: int) -> None:
        self._factory = factory
        self.size = size
        self.sessions: list[Session] = []
        self._opening = 0
        self._opened: asyncio.Event | None = None

    async def acquire(self) -> Session:
        while True:
            for s in [s for s in self.sessions if not s.alive()]:
                self.sessions.remove(s)
                s.close()
            idle = [s for s in self.sessions if not s.busy]
            if idle:
                s = idle[-1]
            elif len(self.sessions) + self._opening < self.size:
                s = await self._open()
            elif self.sessions:
                s = min(self.sessions, key=lambda x: x.busy)
            else:  # every place is being opened by another call: wait for one
                if self._opened is None:
                    self._opened = asyncio.Event()
                await self._opened.wait()
                continue
            s.busy += 1
            return s

    async def _open(self) -> Session:
        self._opening += 1
        try:
            s = await self._factory()
            self.sessions.append(s)
            return s
        finally:
            self._opening -= 1
            if self._opened is not None:
                self._opened.set()
                self._opened = None

    def release(self, s: Session, broken: bool) -> None:
        """Return a session; a broken one is closed, and so are the idle ones:
        they most likely share its fate (same network path), and finding that
        out one timeout at a time would delay the reconnection."""
        s.busy -= 1
        if not broken:
            return
        drop = [x for x in self.sessions if x is s or not x.busy]
        if s not in drop:
            drop.append(s)
        for x in drop:
            with contextlib.suppress(ValueError):
                self.sessions.remove(x)
            x.close()

    async def close(self) -> None:
        sessions, self.sessions = self.sessions, []
        self._opened = None
        for s in sessions:
            s.close()
        for s in sessions:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.conn.wait_closed(), 2)
