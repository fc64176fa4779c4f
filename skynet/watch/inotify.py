"""Our own small inotify layer (Linux): the three system calls and the event records.

ctypes over libc's `inotify_init1`, `inotify_add_watch` and `inotify_rm_watch`, and
the parsing of the `struct inotify_event` records read from the descriptor. Nothing
more: which folders to watch, pairing moves by cookie, and what an overflow or the
watch limit means for skynet are skynet/watch/watcher.py's (TreeWatch).

Why a layer of our own rather than watchdog: skynet must know when the kernel's
event queue overflowed (IN_Q_OVERFLOW) and when a folder could not be watched
(ENOSPC from inotify_add_watch: fs.inotify.max_user_watches reached), to log the
sysctl that fixes it and rescan, and it watches trees of 100,000 folders. watchdog's
public API (Observer, FileSystemEventHandler, the event classes) reports neither
fault (it rebuilds its watches, and skips folders it cannot watch, silently) and
keeps ~330 bytes per watched folder; getting both from it took subclassing its
private members and importing its private `inotify_c` module, which a watchdog
release could change under us. Linux only, as skynet is.
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
from typing import NamedTuple

# <sys/inotify.h>
IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_CLOSE_NOWRITE = 0x00000010
IN_OPEN = 0x00000020
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000  # the file system holding the watched object was unmounted
IN_Q_OVERFLOW = 0x00004000  # events were lost (fs.inotify.max_queued_events)
IN_IGNORED = 0x00008000  # the watch is gone (removed, object deleted, unmounted)
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_MASK_ADD = 0x20000000
IN_ISDIR = 0x40000000

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of NUL-padded name
READ_SIZE = 64 * 1024  # the kernel returns as many whole records as fit


class RawEvent(NamedTuple):
    """One `struct inotify_event`: `name` is empty for an event about the watched
    folder itself (and for IN_Q_OVERFLOW, whose wd is -1)."""

    wd: int
    mask: int
    cookie: int
    name: bytes


def parse_events(buf: bytes) -> list[RawEvent]:
    """The records in one read() of an inotify descriptor (always whole records)."""
    events: list[RawEvent] = []
    off, end, size = 0, len(buf), _HEADER.size
    while off + size <= end:
        wd, mask, cookie, length = _HEADER.unpack_from(buf, off)
        off += size
        name = buf[off:off + length]
        off += length
        nul = name.find(b"\0")
        events.append(RawEvent(wd, mask, cookie, name if nul < 0 else name[:nul]))
    return events


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc (glibc or musl)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_LIBC: ctypes.CDLL | None = None


def _call_failed(what: bytes | str | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), *(() if what is None else (os.fsdecode(what),)))


class Inotify:
    """One inotify instance: a descriptor, its watches, and a way to wake a reader.

    `read()` waits for events (or `interrupt()`, or a timeout) and returns the records;
    the descriptor is non-blocking, so a reader never hangs in read() itself."""

    def __init__(self) -> None:
        global _LIBC
        if _LIBC is None:
            _LIBC = _libc()
        self._libc = _LIBC
        fd = self._libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if fd < 0:
            raise _call_failed()  # EMFILE: fs.inotify.max_user_instances reached
        self.fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)
        self._poll.register(self._wake_r, select.POLLIN)
        self.closed = False
        self._closing = threading.Lock()  # interrupt() never writes to a closed (reused) descriptor

    def add_watch(self, path: bytes, mask: int) -> int:
        """The watch descriptor for `path` (the same one again for an object already
        watched). OSError: ENOSPC at the watch limit, ENOENT/ENOTDIR/EACCES..."""
        wd = self._libc.inotify_add_watch(self.fd, path, mask)
        if wd < 0:
            raise _call_failed(path)
        return wd

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; one the kernel already removed (EINVAL) is no error.
        The kernel queues IN_IGNORED for it."""
        if self._libc.inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            raise _call_failed()

    def read(self, timeout: float | None = None) -> list[RawEvent]:
        """The events queued now, waiting up to `timeout` seconds (None: until some
        arrive or interrupt() is called). [] on a timeout or an interruption."""
        ready = self._poll.poll(None if timeout is None else max(0, int(timeout * 1000)))
        events: list[RawEvent] = []
        for fd, _flags in ready:
            if fd == self._wake_r:
                try:
                    os.read(self._wake_r, 512)
                except BlockingIOError:
                    pass
            elif fd == self.fd:
                try:
                    events = parse_events(os.read(self.fd, READ_SIZE))
                except BlockingIOError:
                    pass
        return events

    def interrupt(self) -> None:
        """Wake a read() in another thread (safe from any thread)."""
        with self._closing:
            if self.closed:
                return
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # a wake-up is pending already

    def close(self) -> None:
        """Close the descriptor: every watch goes with it."""
        with self._closing:
            if self.closed:
                return
            self.closed = True
            for fd in (self.fd, self._wake_r, self._wake_w):
                os.close(fd)
