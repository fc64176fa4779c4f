"""The XCon contract: the small interface every remote connection implements.

The engine (skynet/engine/handler.py) only ever talks to a remote through this class, the
way rclone's sync code only talks to a backend through its `Fs` interface. Every
connection passes the same contract suite in tests/test_xcon_contract.py.

Paths given to a connection are *relative* POSIX paths ("a/b/c.txt"), already
checked by the Mapper (no "..", no absolute paths, no empty parts). The connection
joins them to its own remote root with `remote_join`, which checks again, so that a
bug elsewhere can never make a connection touch anything outside its root.

A connection raises; it never retries on its own (the handler decides):
  * TransientError: the remote is unreachable or busy; retry later / reconnect.
  * PermanentError: this action will not succeed as it is (permission denied,
    name refused, disk full on the remote...); record it as failed and move on.
  * RemoteNotFound: the thing to move, stat or read is not on the remote.
  * RemoteChanged (a TransientError): a ranged read found another version of
    the file than the one it was asked to read; read it again from the start.

Optional abilities (server-side copy, versions, free space, batch sends...) are
typed mixins below: a backend declares one by inheriting it, and the engine asks
`isinstance(con, ServerSideMove)`, never `getattr`/`hasattr` (a misspelt probe
silently answers "no"; a mixin's abstract methods make a declared ability a
promise the class must keep). What is data, not an ability (mtime precision,
byte names, modes) stays in `Abilities`.
"""
from __future__ import annotations

import logging
import posixpath
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

log = logging.getLogger("skynet.listing")
T = TypeVar("T")


class XConError(Exception):
    """Base of every error a connection raises on purpose."""


class TransientError(XConError):
    """The remote is unreachable, slow or busy: the same call may work later."""


class PermanentError(XConError):
    """The call will not succeed by retrying: report it and move on."""


class RemoteNotFound(XConError):
    """The remote path does not exist."""


class RemoteChanged(TransientError):
    """The remote file is not the version a ranged read was asked for (`expect`):
    it was replaced meanwhile. Reading on would stitch two versions together, so
    the reader starts again from a fresh stat or listing."""


class Unsupported(PermanentError):
    """The remote does not offer an operation after all (an SFTP server without
    the hardlink extension, a file system without hard links): the caller takes
    another way."""


class UnsafePath(PermanentError):
    """A path would escape the remote root, or is not a clean relative path."""


class InTheWay(PermanentError):
    """On a remote with folders (Folders), something of the other kind holds a
    name the call needs: a file where a folder is to be (made, or walked through
    to write below it), or a folder where a file is to be written. `blocker` is
    its relative path: the name itself or a folder above it. Permanent as it
    stands; the engine, when deletes are propagated (complete_sync), removes the
    blocker through its one delete path and tries again, so a mirror whose source
    swapped a file for a folder (or back) converges."""

    def __init__(self, message: str, blocker: str) -> None:
        super().__init__(message)
        self.blocker = blocker

    def __reduce__(self):  # (pickled with its blocker, like any other error)
        return type(self), (str(self), self.blocker)


def check_rel(rel: str) -> str:
    """Return `rel` if it is a clean relative POSIX path, else raise UnsafePath.

    Clean means: not empty, not absolute, no "." or ".." or empty components.
    Names may contain anything else (spaces, quotes, newlines, surrogate-escaped
    bytes): they are data, never shell words.
    """
    if not rel or rel.startswith("/") or "\x00" in rel:
        raise UnsafePath(f"unsafe remote path {rel!r}")
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePath(f"unsafe remote path {rel!r}")
    return rel


def remote_join(root: str, rel: str) -> str:
    """Join a checked relative path to a remote root ('' for the root itself)."""
    if rel == "":
        return root
    check_rel(rel)
    if not root:
        return rel
    return posixpath.join(root, rel) if not root.endswith("/") else root + rel


def within_listing(
    listed: Iterable[T], asked: str, name: Callable[[T], str], what: str, *, paths: bool = False,
) -> Iterator[T]:
    """The entries of a remote listing that are what was asked: `asked` itself or under `asked/`.

    A remote's listing is not trusted: an S3 server (or a proxy in front of it) that
    ignores the prefix returns `foo.bak`, `foo2/...` or another team's keys for "foo/",
    and an SFTP server may name an entry "../x" or "/etc/x". Whatever a caller deletes
    or moves after listing would then reach outside what it meant to touch. Every
    backend's listing goes through here, so the rule is the same for all of them.

    `asked` is a key or path; one ending in "/" is a folder prefix (only what is under
    it, not the key itself); "" asks for everything. `name(entry)` is the entry's full
    key or path, in the same form as `asked`. With `paths` (file-system names: local,
    SFTP), what follows the asked folder must also be a clean relative path, since
    "foo/../x" is under "foo/" as a string but not as a path.

    Dropped entries are logged once per listing (a count and one example), when the
    listing ends or is abandoned: a misbehaving server may return thousands of them.
    The check per entry is a string compare.
    """
    folder = asked if not asked or asked.endswith("/") else asked + "/"
    exact = None if not asked or asked.endswith("/") else asked
    dropped = 0
    example = ""
    try:
        for entry in listed:
            key = name(entry)
            if key == exact:
                yield entry
                continue
            if key.startswith(folder) and (not paths or _clean_rest(key[len(folder):])):
                yield entry
                continue
            dropped += 1
            if dropped == 1:
                example = key
    finally:
        if dropped:
            log.warning("%s: the listing returned %d entr%s outside %r (e.g. %r); ignored %s",
                        what, dropped, "y" if dropped == 1 else "ies", asked, example,
                        "it" if dropped == 1 else "them")


def _clean_rest(rest: str) -> bool:
    try:
        check_rel(rest)
    except UnsafePath:
        return False
    return True


@dataclass(frozen=True)
class LocalFile:
    """The version of a local file being sent: what resume state is tied to."""

    path: str  # absolute local path (str, surrogate-escaped for odd bytes)
    rel: str  # relative POSIX path under the mapping root
    size: int
    mtime_ns: int
    mode: int  # permission bits only (st_mode & 0o7777)
    ino: int
    uid: int = 0
    gid: int = 0
    # What connections/contract/source.py checks before reading: the file is opened
    # beneath `root` (the mapping's source folder; "" for a file outside any
    # mapping) without following links, unless `follow` (follow_symlinks = yes),
    # and must still be this device and inode (dev None: the inode only).
    dev: int | None = None
    root: str = ""
    follow: bool = False


@dataclass(frozen=True)
class RemoteEntry:
    """One remote file as a listing or stat sees it."""

    rel: str
    size: int
    mtime_ns: int | None = None  # None when the remote cannot tell
    mode: int | None = None
    etag: str | None = None  # content hash / ETag where the remote offers one
    # True when mtime_ns is the time the remote stored the object (S3's
    # LastModified, where no mtime of ours travels with it), not the file's mtime:
    # good for "newer than", never for "the same file as the local one".
    mtime_is_stored: bool = False


@dataclass(frozen=True)
class FolderEntry:
    """One remote folder as Folders.list_folders sees it."""

    rel: str
    mode: int | None = None  # its permission bits as the remote has them; None when the remote cannot tell


@dataclass(frozen=True)
class VersionEntry:
    """One version of a remote file (Versions.list_versions), newest first."""

    rel: str
    version_id: str
    size: int  # 0 for a delete marker
    mtime_ns: int | None  # our mtime where the remote keeps it, else when it was stored
    etag: str | None = None
    latest: bool = False  # the current version of `rel`
    deleted: bool = False  # a delete marker: `rel` was deleted at this point


@dataclass(frozen=True)
class SendResult:
    """What the remote holds after a successful send; recorded in the Index."""

    size: int
    etag: str | None = None
    bytes_sent: int = 0  # bytes that crossed the wire this time (resume shows here)
    md5: str | None = None  # hex MD5 of the whole content, where the send saw every byte (send_stream)


class ResumeStore(Protocol):
    """Key/value state for one resumable upload, kept in the state database.

    The engine gives each send a store bound to its relative path; a connection
    that can resume saves what it needs (upload id, parts...) and must check that
    the saved identity (size, mtime, inode) matches the file it is sending now.
    """

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...

    def clear(self) -> None: ...


class NullResumeStore:
    """A ResumeStore that keeps nothing (tests, connections without resume)."""

    def __init__(self) -> None:
        self._state: dict | None = None

    def load(self) -> dict | None:
        return self._state

    def save(self, state: dict) -> None:
        self._state = dict(state)

    def clear(self) -> None:
        self._state = None


ProgressFn = Callable[[int, int], None]  # (bytes done, total)
FIRST_PIECE = 1 << 20  # the budget taken before a transfer's first piece (a piece's size: PROGRESS_STEP, local CHUNK)


@dataclass
class TransferContext:
    """Everything a send may use besides the file: progress, resume, stop,
    and the bandwidth limit.

    A connection calls report(done, total) as bytes go out (at least per
    chunk or part; `done` is cumulative). That single call feeds progress
    reporting *and* the daemon's bandwidth limit, which may sleep in it: so
    every connection is throttled without implementing throttling itself.

    The limit is taken BEFORE the bytes go, not charged after: the caller of
    a transfer takes its first piece with begin() (the chunk scheduler takes
    each chunk's first piece with ahead()), and each report() takes the next
    piece (as large as the one just reported, never more than is left) before
    the connection sends it. Charged after, the first piece of every transfer
    in flight went out free, and a limit of 2M measured 2.5 MiB/s over the
    first seconds. Bytes a report finds unpaid (a piece larger than taken)
    are charged then.

    report() may be called from several threads at once (the part threads of
    one upload): each caller is charged to the throttle for the bytes its
    call adds (so every thread that sends is the one that sleeps), and the
    progress callback is called one thread at a time and never sees `done`
    go back (a caller that lost the race to a larger value is not shown).
    Progress is passed on before the throttle sleeps: the bytes are done.
    """

    progress: ProgressFn | None = None
    resume: ResumeStore = field(default_factory=NullResumeStore)
    stop: threading.Event = field(default_factory=threading.Event)
    throttle: Callable[[int], None] | None = None  # takes the budget for a byte count (may sleep)
    _reported: int = 0
    _shown: int = -1
    _total: int | None = None  # the transfer's size, once known
    _paid: int = 0  # bytes taken from the throttle ahead of being reported
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _progress_lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, total: int) -> None:
        """A transfer of `total` bytes is about to start: take its first piece."""
        with self._lock:
            self._total = total
        self.ahead(FIRST_PIECE)

    def ahead(self, nbytes: int) -> None:
        """Take the limit's budget for the next `nbytes` (at most what is left of the
        transfer unpaid) before they are sent."""
        if self.throttle is None:
            return
        with self._lock:
            take = min(nbytes, self._unpaid())
            self._paid += max(take, 0)
        if take > 0:
            self.throttle(take)

    def _unpaid(self) -> int:
        """Bytes of the transfer neither reported nor taken ahead (under the lock)."""
        if self._total is None:
            return FIRST_PIECE
        return self._total - self._reported - self._paid

    def start_at(self, done: int, total: int) -> None:
        """`done` bytes were on the remote before this attempt (a resumed
        upload): shown as progress, but not charged to the bandwidth limit."""
        with self._lock:
            self._reported = max(self._reported, done)
            self._total = max(total, self._reported)
        self.report(done, total)

    def report(self, done: int, total: int) -> None:
        charge = 0
        with self._lock:
            delta = done - self._reported
            if delta > 0:
                self._reported = done
                self._total = max(total, done)
                covered = min(self._paid, delta)
                self._paid -= covered
                following = min(delta, self._unpaid()) if self.throttle is not None else 0
                self._paid += max(following, 0)
                charge = delta - covered + max(following, 0)
        if self.progress is not None:
            with self._progress_lock:
                if done >= self._shown:
                    self._shown = done
                    self.progress(done, total)
        if charge > 0 and self.throttle is not None:
            self.throttle(charge)


@dataclass(frozen=True)
class Abilities:
    """What a connection's remote keeps, as data (the abilities that change what
    the engine does are the typed mixins below)."""

    resumable: bool = False  # send() continues an interrupted upload (informative)
    byte_names: bool = False  # names that are not valid UTF-8 can be stored
    mode: bool = True  # permission bits are kept
    mtime_precision_ns: int = 1  # granularity of the stored mtime


class XCon(ABC):
    """A connection to one remote root (one mapping's target).

    Implementations: connections.local.con.LocalCon, connections.s3.con.S3Con,
    connections.sftp.con.SFTPCon. All methods may be called from several worker
    threads at once; a connection keeps whatever per-thread sessions it needs.
    """

    #: short service name used in configs and logs: "local", "s3", "sftp"
    service: str = ""
    abilities: Abilities = Abilities()

    @abstractmethod
    def connect(self) -> None:
        """Open (or re-open) the connection; raise TransientError if unreachable
        and PermanentError if the configuration itself is wrong (bad bucket,
        rejected credentials or host key)."""

    @abstractmethod
    def check(self) -> None:
        """A cheap liveness probe used by the reconnection loop."""

    @abstractmethod
    def close(self) -> None:
        """Release every thread, socket and file the connection holds."""

    @abstractmethod
    def send(self, f: LocalFile, ctx: TransferContext) -> SendResult:
        """Make the remote file `f.rel` hold the bytes of `f.path`, atomically:
        readers of the remote never see a half-written file. mtime and mode
        travel with it. The file is read only through connections/contract/source.py
        (never reopened by its path). Raises FileNotFoundError if the local
        file vanished, source.SourceChanged if it is not the file `f` describes
        any more (a link, a FIFO, another file now)."""

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Delete the remote file `rel`, or the folder `rel` with everything
        under it. A missing path is not an error."""

    @abstractmethod
    def move(self, src: str, dest: str) -> None:
        """Rename a remote file or folder. Raises RemoteNotFound if `src` is not
        there. An existing file at `dest` is replaced."""

    @abstractmethod
    def stat(self, rel: str) -> RemoteEntry | None:
        """The remote file `rel`, or None."""

    @abstractmethod
    def read_range(self, rel: str, offset: int, length: int, *, expect: RemoteEntry | None = None) -> bytes:
        """The bytes [offset, offset+length) of the remote file `rel`: fewer only
        where the file ends, b"" at or past its end. RemoteNotFound when it is not
        there, ValueError for a negative offset or length. With `expect` (from an
        earlier stat() or list()), RemoteChanged when the file is not that version
        any more: restore and migrations read a big file in many ranges and must
        never stitch two versions together."""

    @abstractmethod
    def list(self, rel: str = "") -> Iterator[RemoteEntry]:
        """Every remote file under folder `rel` (recursively), streamed: an
        implementation must page, never build the whole listing in memory.
        What the remote lists is passed through within_listing(): nothing
        outside `rel` is ever yielded, whatever the server answers."""

    def cleanup(self, keep: list[dict]) -> None:
        """Remove partial uploads of ours that no resume state in `keep` still
        needs (abandoned multipart uploads, stray temporary files). Called by
        the handler at start-up and after a run; the default has nothing to do."""

    def discard(self, rel: str, state: dict | None) -> None:
        """`rel` will not be sent (deleted, moved away, no longer a file): remove
        what an unfinished upload of it left on the remote, i.e. the upload its
        resume `state` names and any temporary file a failed attempt of this
        connection could not remove. Without it such a leftover stays until the
        next start-up cleanup, or for ever while a resume state still names it.
        A missing leftover is not an error; the default has nothing to do."""

    def describe(self) -> str:
        """A one-line description for logs, with no secrets in it."""
        return self.service

    def __enter__(self) -> "XCon":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_range(offset: int, length: int) -> None:
    """read_range's arguments: ValueError for a negative offset or length."""
    if offset < 0 or length < 0:
        raise ValueError(f"read_range: offset {offset} and length {length} must not be negative")


def send_each(con: XCon, files: list[LocalFile], stop: threading.Event) -> list[SendResult | Exception]:
    """BatchSend.send_many done as one send() after another: one result per file,
    in order (its SendResult, or the exception its send raised). A batching
    backend's fallback for the files its fast path does not take."""
    out: list[SendResult | Exception] = []
    for f in files:
        try:
            out.append(con.send(f, TransferContext(stop=stop)))
        except Exception as exc:  # handed back per file; the caller classifies it
            out.append(exc)
    return out


# -- optional abilities: declared by inheriting, checked with isinstance ---------------


class BatchSend(ABC):
    """send_many() does better than one send() after another (one cp for many
    files, many in flight on one connection): the handler gives such a
    connection batches of small files."""

    @abstractmethod
    def send_many(self, files: list[LocalFile], stop: threading.Event) -> list[SendResult | Exception]:
        """send() for several small files at once; one result per file, in
        order: its SendResult, or the exception its send raised (one file's
        failure is not the others')."""


class ServerSideMove(ABC):
    """move() happens on the remote (a rename, or a copy and delete there): no
    byte goes through us. Without it the engine sends the file again under its
    new name and deletes the old one."""

    @abstractmethod
    def move(self, src: str, dest: str) -> None:
        """As XCon.move."""


class ServerSideCopy(ABC):
    """copy() makes a second remote file from the first on the remote (S3
    CopyObject, a local copy beneath the root): no byte goes through us."""

    @abstractmethod
    def copy(self, src: str, dest: str, *, size: int | None = None) -> None:
        """Make the remote file `dest` a copy of the remote file `src` (its
        bytes, mtime and mode), atomically; an existing `dest` is replaced.
        RemoteNotFound when `src` is not a file on the remote. `size`: what the
        caller believes src's size is (the Index), so that a backend which must
        look src up first to choose how to copy (S3: one CopyObject up to 5 GiB,
        multipart above) may skip that request; a wrong belief costs the lookup."""


class WholeRead(ABC):
    """A small file's bytes and its metadata (our mtime and mode) come back in one
    request (S3: one GET carries the object's user metadata; a listing does not, so
    without this a restore asks a HEAD and a GET per file)."""

    @abstractmethod
    def read_whole(self, rel: str, *, expect: RemoteEntry) -> tuple[RemoteEntry, bytes]:
        """The whole file `rel`, held to the version `expect` names (RemoteChanged
        otherwise), with its entry as stat() would give it. For small files: the
        bytes are held in memory."""


class WholeReadMany(ABC):
    """Many small files read whole, with their metadata, by one thread keeping several
    requests in flight (S3: one GET each over several keep-alive connections, replies
    taken as they arrive). A restore of many small files through threads spent most of
    its CPU handing the interpreter lock from thread to thread; one thread waiting on
    many sockets does not (10,000 x 4 KiB: 4.7 CPU-s with 16 threads, 1.3 with one)."""

    @abstractmethod
    def read_whole_many(self, take: "Callable[[bool], tuple[Any, RemoteEntry] | None | EndOfWork]",
                        width: int, stop: threading.Event) -> Iterator[tuple[Any, RemoteEntry | None, bytes]]:
        """Read files read_whole() would, `width` at once. `take(block)` hands over the
        next (tag, expected entry), None when none is ready yet (asked with block=False
        while requests are in flight), or END when there are no more. Yields (tag, entry,
        bytes) for each file read, held to the version expected, or (tag, None, b"") for a
        file to read the usual way (read_whole), which then tells what went wrong: an error
        reply, another version, a dropped connection. Stops taking work once `stop` is set."""


class EndOfWork:
    """What WholeReadMany's `take` returns when there is no more work."""


END = EndOfWork()


#: Called with each consecutive piece of a ranged read; the view is valid only during the call
#: (the reader reuses its buffer), so a sink writes or hashes it and keeps nothing.
Sink = Callable[[memoryview], None]


class RangeInto(ABC):
    """A ranged read can hand its bytes over piece by piece as they arrive instead of
    returning them whole (S3: the GET's body is received into one reused buffer). A
    restore of a large file writes each piece at its offset: every byte crosses
    memory once, where a 16 MiB bytes object is received, joined and copied again."""

    @abstractmethod
    def read_range_into(self, rel: str, offset: int, length: int, out: Sink, *,
                        expect: RemoteEntry | None = None) -> int:
        """read_range()'s bytes, in order, to `out`; return how many (fewer than
        `length` only where the file ends). Same errors as read_range(); on an
        error `out` may have had some of the bytes (the caller discards them)."""


def read_range_into(con: XCon, rel: str, offset: int, length: int, out: Sink, *,
                    expect: RemoteEntry | None = None) -> int:
    """RangeInto.read_range_into on any connection: streamed where the backend can,
    else one read_range() handed to `out` in one piece. Returns the byte count."""
    if isinstance(con, RangeInto):
        return con.read_range_into(rel, offset, length, out, expect=expect)
    data = con.read_range(rel, offset, length, expect=expect)
    if data:
        out(memoryview(data))
    return len(data)


class Counting:
    """A Sink that counts what passes through it on its way to `out`."""

    __slots__ = ("out", "n")

    def __init__(self, out: Sink) -> None:
        self.out, self.n = out, 0

    def __call__(self, piece: memoryview) -> None:
        self.out(piece)
        self.n += len(piece)


class HardLink(ABC):
    """link() gives a remote file a second name (a hard link): no byte is copied,
    and the second name keeps the bytes, mtime and mode the file had, because a
    send never writes into an existing file: it renames a new one over it. The
    versions area keeps an overwritten file's version this way, for free."""

    @abstractmethod
    def link(self, src: str, dest: str) -> None:
        """Make `dest` another name of the remote file `src`; the folders above
        `dest` are made. RemoteNotFound when `src` is not a file; PermanentError
        when `dest` exists; Unsupported when the remote cannot link."""


class TakeOver(ABC):
    """take_over() makes a finished file of this machine the remote's `rel` by a
    hard link instead of a copy: no byte is read or written again. Only for a
    file its owner hands over and never writes again (the gateway's finished
    staging file): the remote's copy *is* that inode, so its mtime and mode are
    set on it. Never for a mirrored source, which its user may edit in place."""

    @abstractmethod
    def take_over(self, f: LocalFile) -> SendResult:
        """Link `f` (checked as open_source_fd checks it) under a temporary name
        beside `rel`, give it f's mtime and mode, sync it if this remote syncs
        sends, and rename it over `rel`. Unsupported when the file cannot be
        linked there (another file system, hard links refused): send it then."""


class PutBytes(ABC):
    """put_bytes() makes the remote's `rel` hold bytes already in memory (the gateway's
    whole small uploads, received and verified in one request): written and put in
    place as atomically as send(), without a local file to read them from."""

    @abstractmethod
    def put_bytes(self, rel: str, data: bytes | memoryview, *, mode: int = 0o644,
                  replacing: Callable[[], None] | None = None) -> SendResult:
        """Make `rel` hold `data` (permission bits `mode`), synced if this remote syncs
        sends; `replacing()` is called when a file is at `rel` already, before it is
        replaced (the versions keeper keeps it). Nothing is visible at `rel` unless
        every byte is there."""


class FreeSpace(ABC):
    """The remote can tell how much room it has left."""

    @abstractmethod
    def free_space(self) -> int | None:
        """Bytes free for us on the remote, or None when it cannot tell now
        (an SFTP server without the statvfs extension)."""


class PoolSized(ABC):
    """The connection keeps a pool of sessions sized for the engine's workers;
    the daemon tells it how many workers use it before the first call."""

    @abstractmethod
    def size_pool(self, workers: int) -> None:
        """At least `workers` threads will call the connection at once."""


class EtagCheck(ABC):
    """The remote's hashes (ETags) can be recomputed from a local file, so a
    first sync can tell an identical remote file without downloading it."""

    @abstractmethod
    def local_etags(self, f: LocalFile) -> set[str]:
        """The hashes a remote copy of `f` may show in its listing."""


class Versions(ABC):
    """The remote keeps earlier versions of a file (S3 bucket versioning)."""

    @abstractmethod
    def list_versions(self, rel: str) -> Iterator[VersionEntry]:
        """Every version of the file `rel` (delete markers included), newest
        first, streamed; nothing of another name (`rel.bak`, `rel2/x`)."""

    @abstractmethod
    def read_version_range(self, rel: str, version_id: str, offset: int, length: int) -> bytes:
        """read_range() of one version (a version never changes: no `expect`).
        RemoteNotFound for an unknown version or a delete marker."""

    @abstractmethod
    def versioning_on(self) -> bool:
        """The remote keeps versions now (an S3 bucket's versioning is Enabled, not
        Suspended nor never set): only then does a delete or overwrite keep one."""

    @abstractmethod
    def list_versions_under(self, rel: str = "") -> Iterator[VersionEntry]:
        """list_versions() of the file `rel` and of every file under the folder
        `rel` ("" for the whole root): grouped by path, each path's versions
        newest first, streamed; nothing outside `rel`."""

    @abstractmethod
    def stat_version(self, rel: str, version_id: str) -> RemoteEntry:
        """stat() of one version: size, our mtime and mode where they travelled
        with it. RemoteNotFound for an unknown version or a delete marker."""

    @abstractmethod
    def delete_version(self, rel: str, version_id: str) -> None:
        """Remove one version (or delete marker) for good. A missing one is not
        an error."""

# -- streamed sends (migrations: a source that is not a local file) ---------------------


class ChecksumMismatch(PermanentError):
    """The bytes a streamed send received are not the ones the caller expected
    (size or MD5): nothing was made visible at the target."""


@dataclass
class Stream:
    """The bytes of one source object from `offset` on, as they arrive (an HTTP
    body, an FTP data connection, ranged reads of a remote).

    `version` ties resume state to this version of the object (an ETag, a
    Last-Modified, an FTP MDTM plus size); "" means it cannot be told apart from
    the next version, so a send must not continue an earlier attempt with it.
    `size` is the whole object's size (None: unknown until the end, chunked HTTP).
    """

    offset: int
    size: int | None
    version: str
    read: Callable[[int], bytes]  # up to n bytes; b"" at the end
    close: Callable[[], None]
    meta: dict[str, str] = field(default_factory=dict)  # kept as the object's metadata
    mtime_ns: int | None = None
    mode: int | None = None
    # the source checks these bytes itself before it lets the stream end (the gateway's
    # verified upload, skynet/gateway/early.py): a send does not hash the whole stream
    # again (SendResult.md5 is then None; the size is still checked)
    checked: bool = False


StreamOpener = Callable[[int], Stream]  # open_at(offset): the source from `offset` on (or from 0)


def read_full(stream: Stream, n: int) -> bytes:
    """Up to `n` bytes of `stream`, fewer only at its end (a socket read may return less)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class StreamSend(ABC):
    """send_stream() makes a remote file from a stream, without staging it on
    local disk (a bounded buffer at most), resuming an earlier attempt where the
    source can start mid-file (migrations, skynet/jobs/transfer.py)."""

    @abstractmethod
    def send_stream(self, rel: str, open_at: StreamOpener, ctx: TransferContext, *,
                    md5: str | None = None) -> SendResult:
        """Make the remote file `rel` hold the stream's bytes, atomically.

        The send keeps what it needs in ctx.resume (tied to the stream's
        `version`), asks `open_at(offset)` for the bytes it lacks, and starts
        over from 0 when the source answers from another offset (it ignored the
        range or the object changed) or is another version: two versions are
        never stitched together. The stream's size (when known) and `md5` (when
        given) are checked before the file becomes visible (ChecksumMismatch);
        SendResult.md5 is the content's MD5 when this attempt saw every byte
        (None after a resume that skipped bytes it kept). ctx.stop ends it at
        a chunk boundary with chunks.TransferStopped, resume state kept.
        Stream metadata, mtime and mode travel with the file where the remote
        keeps them."""

    def parts_from(self) -> int | None:
        """The size from which send_stream sends a stream in parts that go up while
        it is read (S3: multipart_threshold), so a producer slower than the remote
        overlaps with it (the gateway's early delivery); None: it is sent whole."""
        return None

class Folders(ABC):
    """The remote has real folders (a local folder, SFTP), not names with "/" in
    them (S3): an empty folder exists there, and a folder has permission bits.
    The engine then mirrors folders too (created empty, their modes kept, removed
    with complete_sync); without it a folder is implicit in the files under it.

    A file where a folder is needed, or a folder where a file is to go, raises
    InTheWay (send, move and make_folder alike): never replaced by the backend
    itself, since whether it may go is the engine's decision (complete_sync)."""

    @abstractmethod
    def make_folder(self, rel: str, mode: int) -> None:
        """Make the folder `rel` (and the folders above it that are missing) and
        give it the permission bits `mode` (never setuid, setgid or sticky); a
        folder already there keeps its content and gets the mode. InTheWay when
        a file is at `rel` or above it."""

    @abstractmethod
    def list_folders(self, rel: str = "") -> Iterator[FolderEntry]:
        """Every folder below folder `rel` (not `rel` itself), recursively,
        streamed and held to the listing rule (within_listing) as list() is;
        our own temporary folders are not listed, nor links."""

    def folder(self, rel: str) -> FolderEntry | None:
        """The folder `rel` itself, with its mode; None when no folder is there (nothing,
        a file, a link). Restoring one folder of a tree asks for it instead of listing
        every folder. This default looks for it in its parent's listing; a backend that
        can look at one name answers with one request."""
        parent = rel.rpartition("/")[0]
        return next((f for f in self.list_folders(parent) if f.rel == rel), None)
