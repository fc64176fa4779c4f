"""A TCP proxy on 127.0.0.1 that tests can cut, to fake a network that drops.

    proxy = FaultProxy(upstream_port).start()
    ... point the client at proxy.port ...
    proxy.cut()        # every open connection is reset; new ones are refused (closed at once)
    proxy.stall()      # connections stay open but nothing gets through (a black hole)
    proxy.restore()    # traffic flows again
    proxy.corrupt(b"abc", b"abd")  # what clients send has every b"abc" turned into b"abd"

Loopback only, and every thread it starts ends at close().
"""
from __future__ import annotations

import select
import socket
import threading


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._mode = "open"  # open | cut | stall
        self._lock = threading.Lock()
        self._mode_changed = threading.Condition(self._lock)
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._rewrite: tuple[bytes, bytes] | None = None  # (old, new) in client -> upstream bytes
        self.connections = 0

    def start(self) -> "FaultProxy":
        t = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    # -- faults ---------------------------------------------------------------
    def cut(self) -> None:
        with self._mode_changed:
            self._mode = "cut"
            self._mode_changed.notify_all()
            conns = list(self._conns)
        for c in conns:
            _kill(c)

    def stall(self) -> None:
        with self._lock:
            self._mode = "stall"

    def restore(self) -> None:
        with self._mode_changed:
            self._mode = "open"
            self._rewrite = None
            self._mode_changed.notify_all()

    def corrupt(self, old: bytes, new: bytes) -> None:
        """Bytes flipped on the wire: in what clients send, every `old` becomes `new` (same
        length, so Content-Length still holds). An occurrence split across two reads gets
        through intact: send `old` many times over to be sure some are hit."""
        assert len(old) == len(new) and old != new
        with self._lock:
            self._rewrite = (old, new)

    # -- plumbing -------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self._mode
            if mode == "cut":
                _kill(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _kill(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
                self.connections += 1
            t = threading.Thread(target=self._pump, args=(client, upstream), name="faultproxy-pump", daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._closed:
                readable, _, _ = select.select([a, b], [], [], 0.5)
                with self._mode_changed:
                    # Stalled: hold everything (the client sees a silent network) and sleep
                    # until cut() or restore(); select() would return at once while data waits.
                    while self._mode == "stall":
                        self._mode_changed.wait()
                    mode = self._mode
                if mode == "cut":
                    break
                for s in readable:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    rewrite = self._rewrite
                    if rewrite is not None and s is a:
                        data = data.replace(*rewrite)
                    peers[s].sendall(data)
        except (OSError, ValueError):  # ValueError: cut() closed a socket under select() (fd -1)
            pass
        finally:
            for s in (a, b):
                _kill(s)
                with self._lock:
                    self._conns.discard(s)

    def close(self) -> None:
        self._closed = True
        try:
            # close() alone does not wake a thread blocked in accept() on Linux (the
            # join below would wait out its timeout); shutdown() makes accept() fail.
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        self.cut()
        for t in self._threads:
            t.join(timeout=2)


def _kill(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
