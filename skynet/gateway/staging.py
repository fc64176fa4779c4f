"""Unfinished and undelivered uploads on the gateway's disk: durable offsets.

An upload is up to three files in `<staging>/uploads/`:

    <id>.part   the bytes received so far (exactly `offset` of them count)
    <id>.json   its record: length, offset, file name, checksums of its chunks,
                times, and once finished the destinations it has still to land in
                (kept, without the bytes, for expire_after once it is everywhere:
                HEAD then says every byte is in)
    <id>.ack    the chunks acknowledged since (acklog.py)

A chunk is written into the .part file (the page cache), a line naming it is
appended to the .ack log, and then the answer goes out: a `kill -9` of the server
loses nothing it acknowledged (after a restart in the same boot the log is read
back; bytes past its last line, the chunk in flight, are cut off before the next
chunk is written), and the client sending chunk after chunk never waits for the
disk. The fsyncs happen beside it, in one syncer thread for all uploads: it
fdatasyncs an upload's .part and only then replaces the record atomically
(write_atomic: fsync of the file and of the folder) with the offset it synced.
So after a power cut the record never names bytes that are not on disk, and it
lags the acknowledged offset by at most SYNC_LAG (a PATCH waits for the syncer
beyond that): the client resends at most that much, from the offset HEAD gives.

A whole file in its creation request (creation-with-upload, the usual way for
small files) is "volatile" until it has to outlive the request: nothing of it is
fsynced and no record is written while it is received, verified and landed,
because until the 201 goes out the client holds no Location and would send it
all again after any crash (the .part an orphan, removed at start). Five fsyncs
per small file saved (the chunk, the finished record and the landed record with
their folder). A finished upload of several chunks is volatile the same way
from its last chunk on (that chunk gets no .ack line: after a crash before the
answer the client sends it again). Either is made durable (persist(): fdatasync
of its bytes, then its finished record) only when a destination is still pending
after the first attempt, before the answer says it will land there later; once it
landed everywhere its bytes are dropped, so they never needed to reach the disk.

A finished upload is verified here (its size, its chunks' checksums read back
from disk, and the MD5 the client gave as metadata) before it is handed to the
destinations; only what passed is ever sent anywhere.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, Callable, Iterator

from skynet.gateway import acklog
from skynet.state.atomicfile import write_atomic

log = logging.getLogger(__name__)

READ_PIECE = 1 << 20
# acknowledged bytes of an upload not yet fdatasynced by the syncer, at most: what a
# power cut can make a client send again; a PATCH past it waits for the disk
SYNC_LAG = 256 << 20
ALGORITHMS = {"md5": hashlib.md5, "sha1": hashlib.sha1}
_ID = re.compile(r"[0-9a-f]{32}")


class UploadError(Exception):
    """A request the upload cannot take; `status` is the HTTP answer (tus 1.0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """One upload's record (what <id>.json holds)."""

    id: str
    length: int
    filename: str
    offset: int = 0
    metadata: str = ""  # the Upload-Metadata header as the client sent it (HEAD echoes it)
    md5: str | None = None  # hex MD5 of the whole file, when the client gave one
    created: float = 0.0
    touched: float = 0.0  # last accepted chunk: the upload expires expire_after later
    checksums: list[list] = field(default_factory=list)  # [offset, length, algorithm, digest b64] per chunk
    finished: bool = False
    finished_seq: int = 0  # order of finishing: deliveries of one name land in this order
    etag: str = ""  # MD5 hex of the finished file
    pending: list[str] = field(default_factory=list)  # destinations it has still to land in
    kept: list[str] = field(default_factory=list)  # destinations where the file it replaces was kept already
    errors: dict[str, str] = field(default_factory=dict)  # destination -> last error (no secrets: XCon messages)


def parse_checksum(header: str) -> tuple[str, bytes]:
    """`Upload-Checksum: md5 <base64>` -> ("md5", digest); 400 for anything else."""
    algo, _, b64 = header.strip().partition(" ")
    algo = algo.lower()
    if algo not in ALGORITHMS:
        raise UploadError(400, f"Upload-Checksum: unsupported algorithm {algo!r} (md5 or sha1)")
    try:
        digest = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(400, "Upload-Checksum: the digest is not base64") from None
    if len(digest) != ALGORITHMS[algo]().digest_size:
        raise UploadError(400, f"Upload-Checksum: a {algo} digest has {ALGORITHMS[algo]().digest_size} bytes")
    return algo, digest


def parse_md5(value: str) -> str:
    """The whole file's MD5 given as metadata: 32 hex digits, or base64 of the 16 bytes."""
    v = value.strip()
    if re.fullmatch(r"[0-9a-fA-F]{32}", v):
        return v.lower()
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise UploadError(400, "Upload-Metadata md5: expected 32 hex digits or the base64 of 16 bytes")
    return raw.hex()


class Staging:
    """The uploads under one staging folder; every method is thread-safe per upload."""

    def __init__(self, root: str, syncer: bool = True) -> None:
        """`syncer`: run the thread that makes offsets durable (tests of what a power cut
        leaves call sync() themselves instead)."""
        self.folder = os.path.join(root, "uploads")
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        os.chmod(self.folder, 0o700)  # ours alone (staging_dir itself may be a shared folder: left as it is)
        self._uploads: dict[str, Upload] = {}
        # those not yet delivered everywhere: what the workers, the syncer and the limit look
        # at (delivered ones stay in _uploads for HEAD until expire_after: thousands of them)
        self._active: dict[str, Upload] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._seq = 0
        # Uploads whose every byte arrived in this process, each chunk checked then: the
        # finished file is verified without reading it again (after a restart it is read).
        # The value is the MD5 of the bytes so far when the client gave the whole file's
        # MD5 to check it against, else None: an MD5 nobody compares costs ~1.5 CPU s/GiB.
        self._running: dict[str, Any] = {}  # upload id -> hashlib.md5 object or None
        # uploads whose record is not written until persist() (see above) -> whether a record
        # is written once it landed everywhere (False for a whole upload: nobody can ask HEAD)
        self._volatile: dict[str, bool] = {}
        self._boot = acklog.boot_id()
        self._durable: dict[str, int] = {}  # upload id -> offset its record names (bytes fdatasynced)
        self._sync = threading.Condition()  # guards offsets, checksums, finished, _durable
        # called with an upload id when its acknowledged offset grew or it was removed
        # (early.py: a delivery reading the upload as it arrives waits for these)
        self._watchers: list[Callable[[str], None]] = []
        self._load()
        if syncer:
            threading.Thread(target=self._sync_loop, name="gateway-sync", daemon=True).start()

    def watch(self, fn: Callable[[str], None]) -> None:
        """Call `fn(upload id)` after a chunk was acknowledged (its .ack line written: a
        kill -9 keeps it) and after an upload was removed (terminated, expired, failed
        verification)."""
        self._watchers.append(fn)

    def _changed(self, uid: str) -> None:
        for fn in self._watchers:
            fn(uid)

    # -- files --------------------------------------------------------------
    def part(self, uid: str) -> str:
        return os.path.join(self.folder, uid + ".part")

    def record(self, uid: str) -> str:
        return os.path.join(self.folder, uid + ".json")

    def resume_file(self, uid: str, target: str) -> str:
        return os.path.join(self.folder, f"{uid}.{target}.resume")

    def ack(self, uid: str) -> str:
        return os.path.join(self.folder, uid + ".ack")

    def _save(self, up: Upload) -> None:
        """Write the record (durably) as far as it is true on disk: an unfinished upload's
        offset is the one the syncer reached."""
        if up.id in self._volatile:  # lives in memory until persist()
            return
        with self._sync:
            state = self._state(up, up.length if up.finished else self._durable.get(up.id, 0))
        write_atomic(self.record(up.id), state, 0o600)

    @staticmethod
    def _state(up: Upload, offset: int) -> str:
        """The record's JSON with `offset` (and the checksums of the chunks before it)."""
        d = asdict(up)
        d["offset"] = offset
        d["checksums"] = [c for c in up.checksums if c[0] + c[1] <= offset]
        return json.dumps(d)

    # -- durability ---------------------------------------------------------
    def sync(self, up: Upload) -> bool:
        """fdatasync what `up` acknowledged, then write its record with that offset.
        False when there was nothing to do (volatile, finished, at its last byte, gone)."""
        with self._sync:
            target = up.offset
            if (up.finished or up.id in self._volatile or up.id not in self._durable
                    or target <= self._durable[up.id] or target >= up.length):
                return False  # (the last chunk is finish()'s: made durable by persist())
        try:
            fd = os.open(self.part(up.id), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        with self._sync:  # held while writing: remove() and finish() cannot come in between
            if up.finished or up.id not in self._durable or target <= self._durable[up.id]:
                return False
            write_atomic(self.record(up.id), self._state(up, target), 0o600)
            self._durable[up.id] = target
            self._sync.notify_all()
        return True

    def _lagging(self) -> list[Upload]:
        with self._lock:
            ups = list(self._active.values())
        with self._sync:
            return [u for u in ups if u.id in self._durable and not u.finished and u.id not in self._volatile
                    and self._durable[u.id] < u.offset < u.length]

    def _sync_loop(self) -> None:
        """One thread for every upload's fsyncs: they run while the next chunks arrive."""
        while True:
            todo = self._lagging()
            if not todo:
                with self._sync:
                    self._sync.wait(1.0)
                continue
            synced = False
            for up in todo:
                try:
                    synced = self.sync(up) or synced
                except OSError as exc:
                    log.error("gateway: cannot make upload %s durable (%s); tried again", up.id, exc)
            if not synced:  # nothing could be done (a .part gone, a disk failing): no busy loop
                with self._sync:
                    self._sync.wait(1.0)

    def _acknowledge(self, up: Upload, start: int, entry: list | None) -> None:
        """The chunk [start, up.offset) is in: logged for a restart after kill -9, then the
        syncer is woken; waits while the upload is more than SYNC_LAG ahead of the disk."""
        acklog.append(self.ack(up.id), self._boot, start, up.offset, entry, up.touched)
        with self._sync:
            self._sync.notify_all()
            while up.id in self._durable and up.offset - self._durable[up.id] > SYNC_LAG:
                self._sync.wait(1.0)

    def persist(self, up: Upload) -> None:
        """Make a volatile upload durable (its bytes, then its record): it must outlive
        this request, e.g. a destination still waits for it. A no-op for the others."""
        with self.locked(up.id):
            if up.id not in self._volatile or not up.pending:
                return
            try:
                fd = os.open(self.part(up.id), os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                fd = -1  # landed everywhere meanwhile: only the record is left
            if fd >= 0:
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            self._volatile.pop(up.id, None)
            self._save(up)

    def _load(self) -> None:
        """Read the records a previous run left (a restart, a kill -9)."""
        for name in sorted(os.listdir(self.folder)):
            if name.startswith(".") and name.endswith(".tmp"):  # a record write cut short
                _unlink(os.path.join(self.folder, name))
                continue
            if not name.endswith(".json") or not _ID.fullmatch(name[:-5]):
                continue
            try:
                with open(os.path.join(self.folder, name), encoding="utf-8") as f:
                    up = Upload(**json.load(f))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("gateway: unreadable upload record %s (%s); removed", name, exc)
                self._drop_files(name[:-5])
                continue
            if not up.finished:
                self._replay(up)
            self._uploads[up.id] = up
            if not self.delivered(up):
                self._active[up.id] = up
            self._locks[up.id] = threading.Lock()
            self._seq = max(self._seq, up.finished_seq)
        for name in os.listdir(self.folder):  # bytes of uploads whose record never got written
            uid = name.split(".", 1)[0]
            if _ID.fullmatch(uid) and uid not in self._uploads:
                _unlink(os.path.join(self.folder, name))

    def _replay(self, up: Upload) -> None:
        """An unfinished upload read back: on from its record's (durable) offset through the
        chunks acknowledged in this boot whose bytes are there (acklog.py)."""
        self._durable[up.id] = up.offset
        try:
            size = os.stat(self.part(up.id)).st_size
        except OSError:
            return
        for end, entry, touched in acklog.replay(self.ack(up.id), self._boot, up.offset):
            if size < end:
                break
            if entry:
                up.checksums.append(entry)
            up.offset, up.touched = end, touched

    # -- lookups ------------------------------------------------------------
    def get(self, uid: str) -> Upload:
        with self._lock:
            up = self._uploads.get(uid) if _ID.fullmatch(uid) else None
        if up is None:
            raise UploadError(404, "no such upload (terminated, expired, delivered more than expire_after ago, "
                                   "or never made)")
        return up

    def partial(self) -> list[Upload]:
        with self._lock:
            return [u for u in self._active.values() if not u.finished]

    def delivered(self, up: Upload) -> bool:
        return up.finished and not up.pending

    def undelivered(self) -> list[Upload]:
        """Finished uploads some destination still waits for, oldest first."""
        with self._lock:
            found = [u for u in self._active.values() if u.finished and u.pending]
        return sorted(found, key=lambda u: u.finished_seq)

    def locked(self, uid: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(uid, threading.Lock())

    # -- changes ------------------------------------------------------------
    def create(self, length: int, filename: str, metadata: str, md5: str | None, limit: int,
               whole: bool = False, staged: bool = True) -> Upload:
        """A new, empty upload; 429 when `limit` unfinished ones exist already.

        `whole`: its creation request carries every byte (creation-with-upload of a whole
        file): the upload is volatile (module docstring) until persist(): a crash before
        the answer leaves nothing the client was told about (it got no Location), and an
        orphan .part is removed at start. `staged=False` (with `whole`): no .part file
        yet; the bytes go straight to the destinations (app.py, direct()), and stage()
        makes the file only when one of them could not take them."""
        now = time.time()
        up = Upload(id=secrets.token_hex(16), length=length, filename=filename, metadata=metadata, md5=md5,
                    created=now, touched=now)
        with self._lock:
            busy = sum(1 for u in self._active.values() if not u.finished)
            if busy >= limit:
                raise UploadError(429, f"too many uploads in flight ({busy} of max_uploads_in_flight {limit}): "
                                       "finish, terminate or let one expire, then try again")
            self._uploads[up.id] = up
            self._active[up.id] = up
            self._locks[up.id] = threading.Lock()
        self._running[up.id] = hashlib.md5() if md5 else None
        if whole:
            self._volatile[up.id] = False
        else:
            with self._sync:
                self._durable[up.id] = 0
        try:
            if staged or not whole:
                self.stage(up)
            self._save(up)
        except BaseException:
            self.remove(up.id)
            raise
        return up

    def stage(self, up: Upload) -> None:
        """The upload's empty .part file (made once, by create() or for a direct one)."""
        fd = os.open(self.part(up.id), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)

    def delivered_whole(self, up: Upload, etag: str) -> None:
        """A whole upload (create(whole=True, staged=False)) landed in every destination
        straight from the request: finished and done, with no file ever staged. Its
        record lives in memory only (like every whole upload once landed): HEAD on its
        Location says every byte is in until expire_after."""
        with self._lock:
            self._seq += 1
            up.finished_seq = self._seq
            self._active.pop(up.id, None)
            self._running.pop(up.id, None)
            self._volatile.pop(up.id, None)
        with self._sync:
            up.offset = up.length
            up.etag = etag
            up.finished = True
            up.pending = []
            up.touched = time.time()

    def write(self, up: Upload, offset: int, body: BinaryIO, size: int | None,
              checksum: tuple[str, bytes] | None) -> int:
        """Append one chunk at `offset` (the caller holds the upload's lock); the new offset.

        409 when `offset` is not the upload's; 413 when the chunk goes past its length;
        460 (nothing kept) when its checksum does not match. Without a checksum, a body
        cut short keeps what arrived, as tus asks."""
        if up.finished or offset != up.offset:
            raise UploadError(409, f"Upload-Offset {offset} is not this upload's offset {up.offset}")
        room = up.length - offset
        if size is not None and size > room:
            raise UploadError(413, f"the chunk ({size} bytes) goes past Upload-Length ({room} bytes left)")
        h = ALGORITHMS[checksum[0]]() if checksum else None
        tracked = up.id in self._running  # every byte so far arrived in this process
        known = self._running.pop(up.id, None)
        whole = known.copy() if known is not None else None
        got = 0
        fd = os.open(self.part(up.id), os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, offset)  # what a chunk cut off by a crash left past the offset
            try:
                got = _copy_in(body, fd, offset, room, [x for x in (h, whole) if x is not None])
            finally:
                if h is not None and h.digest() != checksum[1]:  # type: ignore[index]
                    os.ftruncate(fd, offset)
                    got = -1
        finally:
            os.close(fd)
        if tracked:
            self._running[up.id] = known if got < 0 else whole
        if got < 0:
            raise UploadError(460, f"Upload-Checksum: the chunk's {checksum[0]} does not match; "  # type: ignore[index]
                                   "nothing of it was kept, send it again")
        if got:
            entry = [offset, got, checksum[0], base64.b64encode(checksum[1]).decode()] if checksum else None
            with self._sync:
                if entry:
                    up.checksums.append(entry)
                up.offset = offset + got
                up.touched = time.time()
            if up.offset < up.length and up.id not in self._volatile:  # the last chunk is finish()'s
                self._acknowledge(up, offset, entry)
                self._changed(up.id)
        return up.offset

    def finish(self, up: Upload, targets: list[str]) -> None:
        """The last byte is in: verify the file, then mark it finished (durably) for
        delivery to `targets`. 460 (upload dropped) when what is on disk is not what
        the client sent."""
        problem = self._verify(up)
        if problem:
            log.error("gateway: upload %s (%r) failed verification: %s; dropped", up.id, up.filename, problem)
            self.remove(up.id)
            raise UploadError(460, f"the finished upload failed verification ({problem}); it was dropped, "
                                   "upload it again")
        os.chmod(self.part(up.id), 0o644)  # the mode its copies get on the destinations
        with self._lock:
            self._seq += 1
            up.finished_seq = self._seq
        with self._sync:
            up.finished = True
            up.pending = list(targets)
            self._volatile.setdefault(up.id, True)  # durable by persist(), or not needed once landed
            self._durable.pop(up.id, None)

    def _verify(self, up: Upload) -> str | None:
        """Why the .part file is not the upload the client sent (None: it is). One read."""
        try:
            size = os.stat(self.part(up.id)).st_size
        except OSError as exc:
            return f"its bytes are gone ({exc.strerror})"
        if size != up.length:
            return f"{size} bytes on disk, Upload-Length {up.length}"
        if up.id in self._running:  # every byte arrived here, each chunk checked then
            known = self._running.pop(up.id)
            return self._matches(up, known.hexdigest() if known is not None else None)
        whole = hashlib.md5()
        with open(self.part(up.id), "rb") as f:
            pos = 0
            for off, length, algo, b64 in sorted(up.checksums):
                pos = _hash_range(f, pos, off, [whole])
                h = ALGORITHMS[algo]()
                pos = _hash_range(f, pos, off + length, [whole, h])
                if base64.b64encode(h.digest()).decode() != b64:
                    return f"the chunk at {off} no longer has its {algo}"
            _hash_range(f, pos, up.length, [whole])
        return self._matches(up, whole.hexdigest())

    @staticmethod
    def _matches(up: Upload, md5: str | None) -> str | None:
        """md5 None: not computed (the client gave none to compare with)."""
        if up.md5 and md5 != up.md5:
            return f"MD5 {md5}, the client said {up.md5}"
        up.etag = md5 or ""
        return None

    def landed(self, up: Upload, target: str) -> bool:
        """`up` is on `target` now; True when it is on all of them. Its bytes are then
        removed, but its record stays (done) until expire_after: a client whose answer to
        the last chunk was lost asks HEAD and learns that every byte is in."""
        with self.locked(up.id):
            if target in up.pending:
                up.pending.remove(target)
            up.errors.pop(target, None)
            _unlink(self.resume_file(up.id, target))
            if not up.pending:
                up.touched = time.time()
                with self._lock:
                    self._active.pop(up.id, None)
                _unlink(self.part(up.id))
                _unlink(self.ack(up.id))
                if not self._volatile.pop(up.id, True):
                    return True  # a whole upload: its record lives in memory only
            self._save(up)
        return not up.pending

    def note(self, up: Upload, target: str, *, kept: bool = False, error: str | None = None) -> None:
        """Record that the replaced file was kept on `target`, or its last error."""
        with self.locked(up.id):
            if kept and target not in up.kept:
                up.kept.append(target)
            if error is not None:
                up.errors[target] = error
            self._save(up)

    def remove(self, uid: str) -> None:
        with self._lock:
            self._uploads.pop(uid, None)
            self._active.pop(uid, None)
            self._locks.pop(uid, None)
            self._running.pop(uid, None)
            self._volatile.pop(uid, None)
        with self._sync:
            self._durable.pop(uid, None)
            self._sync.notify_all()
        self._drop_files(uid)
        self._changed(uid)

    def _drop_files(self, uid: str) -> None:
        _unlink(self.record(uid))  # the record first: a half-removed upload is then simply gone
        for name in os.listdir(self.folder):
            if name.startswith(uid + "."):
                _unlink(os.path.join(self.folder, name))

    def expired(self, expire_after: float, now: float | None = None) -> Iterator[Upload]:
        """Unfinished uploads idle for `expire_after`, and records of delivered ones that old."""
        now = time.time() if now is None else now
        with self._lock:
            found = [u for u in self._uploads.values() if not u.finished or not u.pending]
        for up in found:
            if up.touched + expire_after <= now:
                yield up

    def sweep(self, expire_after: float, busy: Callable[[str], bool]) -> int:
        """Remove unfinished uploads idle for `expire_after` (those being written are left),
        and the records of delivered ones after as long."""
        n = 0
        for up in list(self.expired(expire_after)):
            lock = self.locked(up.id)
            if busy(up.id) or not lock.acquire(blocking=False):
                continue
            try:
                if up.touched + expire_after <= time.time() and not up.finished:
                    log.info("gateway: upload %s (%r) expired at offset %d of %d; removed", up.id, up.filename,
                             up.offset, up.length)
                    self.remove(up.id)
                    n += 1
                elif up.finished and not up.pending:
                    self.remove(up.id)  # delivered long ago: its record is no longer asked for
            finally:
                lock.release()
        return n


def _copy_in(body: BinaryIO, fd: int, offset: int, room: int, hashes: list) -> int:
    """Write the body at `offset`, at most `room` bytes (413 past it); the count written.

    Read with readinto() into one buffer reused for the whole chunk: read() would
    make a bytearray and then a bytes copy of it for every piece (two allocations
    and one copy per MiB saved)."""
    got = 0
    buf = memoryview(bytearray(min(READ_PIECE, room + 1)))
    while True:
        want = min(len(buf), room - got + 1)
        n = body.readinto(buf[:want]) if hasattr(body, "readinto") else _read_into(body, buf[:want])
        if not n:
            return got
        if got + n > room:
            raise UploadError(413, f"the chunk goes past Upload-Length ({room} bytes left)")
        piece = buf[:n]
        view = piece
        while view:
            k = os.pwrite(fd, view, offset + got)
            view = view[k:]
            got += k
        for h in hashes:
            h.update(piece)


def _read_into(body: BinaryIO, buf: memoryview) -> int:
    piece = body.read(len(buf))
    buf[:len(piece)] = piece
    return len(piece)


def _hash_range(f: BinaryIO, pos: int, end: int, hashes: list) -> int:
    f.seek(pos)
    while pos < end:
        piece = f.read(min(READ_PIECE * 4, end - pos))
        if not piece:
            break
        for h in hashes:
            h.update(piece)
        pos += len(piece)
    return pos


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
