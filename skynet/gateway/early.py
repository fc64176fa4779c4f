"""Early delivery: a large upload goes to a streaming destination while it arrives.

Without it a 1 GiB upload is received whole into staging, and only then sent to
S3 as a multipart upload: two long steps one after the other (rclone copy does
only the second). Here, when an upload of known Upload-Length at or above a
destination's multipart threshold is created, a StreamSend of it starts at once
for every destination that can stream (not a TakeOver one: a local folder takes
the finished file by a hard link, nothing to overlap). Its StreamOpener reads
the staging .part file as it grows: a read blocks (a Condition, woken by
Staging.watch) until the *acknowledged* offset (the chunk's .ack line written,
so a kill -9 keeps it) passes what it needs, so the multipart parts go up while
the next chunks arrive.

Verified before visible: the last bytes of the stream (the last chunk is never
acknowledged before finish()) are released only by take(), which the delivery
worker calls after Staging.finish() verified the whole upload (size, chunk
checksums, the client's MD5) and after the keeper kept the version it replaces.
The multipart upload can only be completed (the object made visible) once the
stream has ended, so a failed verification, a termination or an expiry
(Staging.remove) makes the blocked read raise UploadGone instead: the send
aborts its multipart upload and nothing appears at the key. The stream is
`checked` (Stream.checked): the send does not hash the whole file a second time
(Staging did, when the client gave an MD5: ~1.4 CPU s/GiB saved); the client's
MD5 is still given to send_stream, as the object's metadata.

Restarts: the send keeps its resume state in `<id>.<target>.early`; its stream's
version names the upload and the kernel's boot, so after a kill -9 (same boot:
the page cache holds every acknowledged byte) the send is started again for the
unfinished upload and continues its multipart upload, while after a reboot (the
parts may hold bytes the disk lost) it starts over from byte 0.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from connections.contract.xcon import (
    ChecksumMismatch, SendResult, StreamSend, Stream, TakeOver, TransferContext, TransientError,
)
from skynet.gateway import acklog
from skynet.gateway.staging import Staging, Upload, UploadError

if TYPE_CHECKING:
    from skynet.gateway.deliver import Destination

log = logging.getLogger(__name__)


class UploadGone(ChecksumMismatch):
    """The upload was terminated, expired or failed verification: its last bytes will
    never be released. A ChecksumMismatch, so that the send drops (aborts) its
    multipart upload and makes nothing visible."""


@dataclass
class _Send:
    """One early send of one upload to one destination."""

    released: bool = False  # its last bytes may be read (verified, the old version kept)
    future: Future = field(default_factory=Future)
    ctx: TransferContext = field(default_factory=TransferContext)


class EarlySends:
    """The early sends in flight, and the gate their streams wait at."""

    def __init__(self, staging: Staging, dests: list["Destination"], resume_store) -> None:
        """`resume_store(path)`: the ResumeStore of a file (deliver.FileResume)."""
        self.staging = staging
        self.dests = dests
        self._resume_store = resume_store
        self._cond = threading.Condition()
        self._acked: dict[str, int] = {}  # upload id -> acknowledged offset
        self._sends: dict[tuple[str, str], _Send] = {}
        self._stopped = False
        self._boot = acklog.boot_id() or ""
        staging.watch(self._changed)

    # -- which uploads ------------------------------------------------------
    @staticmethod
    def streams(d: "Destination", length: int) -> bool:
        """Whether `d` gets uploads of `length` bytes early: it streams, does not take
        files over, and sends this size in parts (below, one PUT after the end is as fast)."""
        if not isinstance(d.con, StreamSend) or isinstance(d.con, TakeOver):
            return False
        threshold = d.con.parts_from()
        return threshold is not None and length >= threshold

    def resume_file(self, uid: str, target: str) -> str:
        return os.path.join(self.staging.folder, f"{uid}.{target}.early")

    def begin(self, up: Upload) -> None:
        """Start the early sends of a new (or, at start-up, unfinished) upload."""
        with self._cond:
            if self._stopped:
                return
            self._acked[up.id] = up.offset
            todo = [d for d in self.dests if self.streams(d, up.length) and (up.id, d.name) not in self._sends]
            for d in todo:
                self._sends[(up.id, d.name)] = _Send()
        for d in todo:
            self._start(d, up)

    def take(self, up: Upload, d: "Destination") -> Future | None:
        """For the delivery worker, once `up` is verified and the version it replaces kept:
        release the stream's last bytes; the send's Future (its SendResult, or the error).
        None when `up` has no early send to `d`. A send that failed is started again
        from its resume state (its multipart upload continues), released at once."""
        key = (up.id, d.name)
        with self._cond:
            send = self._sends.get(key)
            if send is not None and send.future.done() and send.future.exception() is not None:
                del self._sends[key]
                send = None
            if send is None:
                if self._stopped or not os.path.exists(self.resume_file(up.id, d.name)):
                    return None
                send = self._sends[key] = _Send(released=True)
                self._acked.setdefault(up.id, up.offset)
                self._start(d, up)
            send.released = True
            self._cond.notify_all()
            return send.future

    def done(self, up: Upload, d: "Destination") -> None:
        """`up` landed on `d` (or was given up): forget its send."""
        with self._cond:
            self._sends.pop((up.id, d.name), None)
            if not any(k[0] == up.id for k in self._sends):
                self._acked.pop(up.id, None)

    def stop(self) -> None:
        """The gateway stops: every waiting stream raises (resume state kept)."""
        with self._cond:
            self._stopped = True
            for send in self._sends.values():
                send.ctx.stop.set()
            self._cond.notify_all()

    # -- the sends ----------------------------------------------------------
    def _changed(self, uid: str) -> None:
        """Staging.watch: a chunk acknowledged, or the upload removed."""
        try:
            offset = self.staging.get(uid).offset
        except UploadError:
            offset = -1  # gone
        with self._cond:
            if uid in self._acked:
                self._acked[uid] = offset
                self._cond.notify_all()

    def _start(self, d: "Destination", up: Upload) -> None:
        """The thread of the send of `up` to `d` (its _Send is registered first)."""
        threading.Thread(target=self._run, args=(d, up), name=f"early-{d.name}-{up.id[:8]}", daemon=True).start()

    def _run(self, d: "Destination", up: Upload) -> None:
        send = self._sends[(up.id, d.name)]
        send.ctx.resume = self._resume_store(self.resume_file(up.id, d.name))
        try:
            if not d.ensure():
                raise TransientError(f"{d.name} is unreachable")
            res: SendResult = d.con.send_stream(up.filename, lambda off: self._open(d, up, send, off), send.ctx,
                                                md5=up.md5)  # type: ignore[attr-defined]
        except BaseException as exc:  # the worker sees it in take() and tries again
            if isinstance(exc, UploadGone):
                self.done(up, d)  # nobody will take() it: forgotten now
            else:
                log.info("gateway: early send of %r to %s stopped (%s: %s)", up.filename, d.name,
                         type(exc).__name__, exc)
            send.future.set_exception(exc)
            return
        send.future.set_result(res)

    def _open(self, d: "Destination", up: Upload, send: _Send, offset: int) -> Stream:
        """The upload's bytes from `offset`, as they are acknowledged (StreamOpener)."""
        fd = os.open(self.staging.part(up.id), os.O_RDONLY | os.O_NOFOLLOW)
        pos = offset

        def read(n: int) -> bytes:
            nonlocal pos
            if pos >= up.length:
                return b""
            limit = self._wait(up, send, pos)
            data = os.pread(fd, min(n, limit - pos), pos)
            if not data:
                raise TransientError(f"upload {up.id}: its staged bytes end at {pos}")
            pos += len(data)
            return data

        return Stream(offset=offset, size=up.length, version=f"gateway-upload:{up.id}:{self._boot}", read=read,
                      close=lambda: os.close(fd), mode=0o644, checked=True)

    def _wait(self, up: Upload, send: _Send, pos: int) -> int:
        """Block until bytes past `pos` may be read; the end of what may be read."""
        with self._cond:
            while True:
                acked = self._acked.get(up.id, -1)
                if acked < 0:
                    raise UploadGone(f"upload {up.id} ({up.filename!r}) was terminated, expired or failed "
                                     "verification")
                if send.released:
                    return up.length
                if self._stopped or send.ctx.stop.is_set():
                    raise TransientError("the gateway stops")
                if acked > pos:
                    return acked
                self._cond.wait()
