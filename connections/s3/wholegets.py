"""WholeGets: many small GETs driven by ONE thread over several keep-alive connections.

Why: a restore of 10,000 x 4 KiB objects through 16 threads, each with its blocking
connection, spent 4.7 CPU-s for what one thread waiting on 16 sockets does in 1.3
(`rclone serve s3` on loopback, 2 cores): every blocking call releases the interpreter
lock and takes it back, and with 16 threads each of those is a hand-off between threads
(futex waits and context switches were a third of the process's CPU in `perf`). Here one
thread sends a request on every free connection, waits in one select() for whichever
reply comes first, and hands each finished reply to its caller; the caller's own work
(writing the file) runs in the same thread, between two waits.

What it takes on: only the plain case. A reply is handed back when it is a 200 framed
by Content-Length; anything else (an error status, chunked framing, a dropped
connection, a timeout, a head too long) gives the job back as None, for the caller to
read the usual way (Rest.get_object through S3Con.read_whole), which tells the error
apart, retries and classifies it as every other request does. Connections come from
Rest.connection(), so TLS, the CA bundle and proxies are those of every other request.
"""
from __future__ import annotations

import selectors
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from connections.contract.xcon import EndOfWork
from connections.s3.rest import _MAX_HEAD, _RECV, HttpConn, ProtocolError, Reply, Rest, keeps_alive, parse_head

#: (tag, key, etag the object must have): one GET's job; `take` returns one, None (none ready yet) or END
Job = tuple[Any, str, str]
POLL = 0.02  # seconds a wait lasts while the caller may have more work soon (take() said None)


class _Slot:
    """One connection and the request it is waiting on."""

    __slots__ = ("conn", "job", "buf", "head_end", "sent_at")

    def __init__(self, conn: HttpConn) -> None:
        self.conn = conn
        self.job: Job | None = None
        self.buf = bytearray()
        self.head_end = -1
        self.sent_at = 0.0


class WholeGets:
    """GETs of whole objects, `width` in flight, from the calling thread."""

    def __init__(self, rest: Rest, width: int) -> None:
        self.rest = rest
        self.width = max(1, width)

    def run(self, take: Callable[[bool], Job | None | EndOfWork], stop: threading.Event
            ) -> Iterator[tuple[Any, Reply | None]]:
        """Yield (tag, reply) for every job `take` hands over, reply None for one to read
        the usual way. take(block) is asked with block=False while requests are in flight
        (it must not wait then), and with block=True when nothing is."""
        slots = [_Slot(self.rest.connection()) for _ in range(self.width)]
        sel = selectors.DefaultSelector()
        done: deque[tuple[Any, Reply | None]] = deque()
        ended = False
        try:
            while True:
                busy = sum(1 for s in slots if s.job is not None)
                for slot in slots:  # every free connection gets a request, while there is work
                    if slot.job is not None or ended:
                        continue
                    job = None if stop.is_set() else take(busy == 0)
                    if job is None or isinstance(job, EndOfWork):
                        ended = job is not None or stop.is_set()  # (not None: the end of the work)
                        break
                    if self._send(sel, slot, job):
                        busy += 1
                    else:
                        done.append((job[0], None))
                while done:
                    yield done.popleft()
                if busy == 0:
                    if ended:
                        return
                    continue
                self._wait(sel, slots, done, POLL if not ended else 1.0)
                while done:
                    yield done.popleft()
        finally:
            sel.close()
            for slot in slots:
                slot.conn.close()

    def _send(self, sel: selectors.BaseSelector, slot: _Slot, job: Job) -> bool:
        """Send the job's GET on the slot's connection (connecting it first); False if that failed."""
        _tag, key, etag = job
        conn = slot.conn
        try:
            fresh = conn.sock is None
            conn.open()
            assert conn.sock is not None
            if fresh:
                sel.register(conn.sock, selectors.EVENT_READ, slot)
            conn.sock.sendall(self.rest.get_head(key, if_match=etag))
        except (OSError, ProtocolError, ValueError):
            self._drop(sel, slot)
            return False
        slot.job, slot.buf, slot.head_end, slot.sent_at = job, bytearray(), -1, time.monotonic()
        return True

    def _wait(self, sel: selectors.BaseSelector, slots: list[_Slot], done: deque, timeout: float) -> None:
        """One select(): read what arrived; finished replies (or given-up jobs) go to `done`."""
        for key, _events in sel.select(timeout):
            slot: _Slot = key.data
            try:
                self._receive(slot)
                reply = self._reply(sel, slot)
            except (OSError, ProtocolError, ValueError):
                if slot.job is not None:
                    done.append((slot.job[0], None))
                    slot.job = None
                self._drop(sel, slot)
                continue
            if reply is not None:
                done.append(reply)
        now = time.monotonic()
        for slot in slots:  # a server that stopped answering: given back, the connection dropped
            if slot.job is not None and now - slot.sent_at > self.rest.timeout:
                done.append((slot.job[0], None))
                slot.job = None
                self._drop(sel, slot)

    @staticmethod
    def _receive(slot: _Slot) -> None:
        """What the socket holds now (a TLS socket: every record it has decrypted)."""
        sock = slot.conn.sock
        assert sock is not None
        try:
            data = sock.recv(_RECV)
        except ssl.SSLWantReadError:  # a TLS record not complete yet
            return
        if not data:
            raise ProtocolError("the server closed the connection")
        if slot.job is None:
            raise ProtocolError("a reply nobody asked for")
        slot.buf += data
        while isinstance(sock, ssl.SSLSocket) and sock.pending():
            slot.buf += sock.recv(sock.pending())

    def _reply(self, sel: selectors.BaseSelector, slot: _Slot) -> tuple[Any, Reply | None] | None:
        """The slot's reply once it is all there: (tag, Reply) for a 200 framed by a length,
        (tag, None) for anything else (the connection then dropped); None while incomplete."""
        buf = slot.buf
        if slot.head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ProtocolError("reply headers too long")
                return None
            slot.head_end = end
        status, version, headers = parse_head(bytes(buf[: slot.head_end]))
        length = headers.get("content-length", "")
        job = slot.job
        assert job is not None
        if status != 200 or not length.isdigit() or "transfer-encoding" in headers:
            slot.job = None
            self._drop(sel, slot)  # its body is not read here: the connection cannot be reused
            return job[0], None
        start = slot.head_end + 4
        have = len(buf) - start
        if have < int(length):
            return None
        slot.job = None
        if have > int(length):
            raise ProtocolError("bytes after the reply")
        body = bytes(buf[start:])
        if not keeps_alive(version, headers):
            self._drop(sel, slot)
        return job[0], Reply(status, headers, body)

    @staticmethod
    def _drop(sel: selectors.BaseSelector, slot: _Slot) -> None:
        """Close the slot's connection (its next job connects again)."""
        sock = slot.conn.sock
        if sock is not None:
            try:
                sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        slot.conn.close()
