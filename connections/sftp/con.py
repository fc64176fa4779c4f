"""SFTPCon: the remote is a folder on an SSH server, reached over SFTP.

Only SFTP requests are used (no exec, no shell): a file name is data, never a
shell word. asyncssh provides SSH and SFTP through its public API only; it
runs in ONE event loop thread owned by the connection (Loop). The engine's
worker threads call the XCon methods as before: each call is a coroutine
submitted to that loop, and the calling thread waits for it (and, during a
send, reports progress and pays the bandwidth limit: _Flow). asyncssh
pipelines requests, so many sends share a few SSH connections.

How a file is sent (atomic for readers of the remote):
  LSTAT each folder + temp (concurrent)  |  OPEN temp (CREATE|EXCL)  |
  WRITE... (many in flight) + FSETSTAT(mode & 0o777, mtime) + CLOSE  |  RENAME
The temporary name is derived from the target name (connections.local.con.temp_name),
so a retry replaces what a failed attempt left. The rename is OpenSSH's
posix-rename (atomic replace) when the server offers it; otherwise see _replace().

Links on the server are never followed (_inspect): every request by path
follows a link met on the way, so each folder between the root and the file
is LSTATed before every send, delete and move, fresh each time (no cache to
go stale); a link there is refused, missing folders are made level by level
(MKDIR never follows), and the temp file is created with EXCL, so a link at
its name fails the OPEN instead of being written through. The mode sent never
carries setuid, setgid or sticky bits (MODE_MASK).

Every WRITE is acknowledged by the server before the rename, so a file is
published only when all its bytes were accepted.

Large files (>= RESUME_MIN bytes) are resumable: the file's identity (size,
mtime, inode) is saved in ctx.resume when the upload starts; a later send of
the same unchanged file reopens the temp file and continues from its size
(written in order: an OpenSSH server applies one handle's writes in order,
and a failed write ends the attempt), after reading back every byte the temp
file already holds and comparing it with the local file (_read_back: no SFTP
server we can rely on offers a hash of a file, so a damaged middle is found
only by reading it; resume is rare, the read costs one pass). Any difference:
the temp file and the resume state go, and the send fails with "start over".
A finished large upload is verified before the rename: its size (FSTAT) and
its last 64 KiB re-read. Files >= PARALLEL_MIN go as PART_SIZE parts over up
to `streams` connections when the server is far (PARALLEL_RTT), scheduled by skynet.transfer.chunks (the one chunk
scheduler; SFTP writes or reads back one part: _Parts); finished parts are
saved in ctx.resume, and read back the same way when resumed.

Writes to the socket are batched (BatchedTransport): the packets asyncssh
writes during one pass of the loop leave in one send().

Liveness: asyncssh's keepalives find a silent server while idle, and a
watchdog per connection (Session.watch) aborts a connection whose requests
got no reply for `timeout` seconds; every request then fails at once, as
TransientError, and the broken connection (with the idle ones) is dropped.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import posixpath
import stat as statmod
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import asyncssh

from connections.contract.xcon import (
    Abilities,
    BatchSend,
    ChecksumMismatch,
    FolderEntry,
    Folders,
    FreeSpace,
    HardLink,
    InTheWay,
    LocalFile,
    PermanentError,
    RemoteChanged,
    RemoteEntry,
    RemoteNotFound,
    SendResult,
    ServerSideMove,
    Stream,
    StreamOpener,
    StreamSend,
    TransferContext,
    TransientError,
    UnsafePath,
    Unsupported,
    XCon,
    XConError,
    check_range,
    check_rel,
    remote_join,
    within_listing,
)
from connections.local.con import TMP_PREFIX, temp_name
# The host-key helpers are part of this service module's face: the wizard reaches them
# through service_module("sftp") (fetch_host_key, key_status, trust_host_key...).
from connections.sftp.hostkeys import (  # noqa: F401
    HostKeyChanged, HostKeySeen, UnknownHostKey, changed_key_error, fetch_host_key, fingerprint, key_status,
    key_type, known_hosts_line, known_hosts_name, prefer_algs, trust_host_key, trusted_keys, unknown_key_error,
)
from connections.sftp.session import BatchedTCP, Loop, Pool, Session, is_missing
from connections.contract.source import SourceChanged, open_source
from skynet.transfer import chunks, streams
from skynet.config.values import keyed, parse_bool, parse_int_range, parse_seconds_range, service_values

log = logging.getLogger("skynet.sftp")
T = TypeVar("T")

#: config keys of an [sftp] service: key -> (default, one-line doc)
KEYS: dict[str, tuple[str, str]] = {
    "host": ("", "SSH server name or address (required)"),
    "port": ("22", "SSH port"),
    "user": ("", "login name (default: the local user name)"),
    "key_file": ("", "private key file; empty: keys from ssh-agent and ~/.ssh"),
    "key_passphrase": ("", "passphrase of key_file, if it is encrypted (never logged)"),
    "password": ("", "password login; discouraged, prefer a key (never logged)"),
    "use_agent": ("yes", "also offer the keys held by ssh-agent"),
    "known_hosts": ("~/.ssh/known_hosts", "trusted host keys; an unknown or changed key is refused"),
    "connections": ("4", "SSH connections kept open for parallel transfers"),
    "keepalive": ("5", "seconds between SSH keepalive messages (0: off)"),
    "timeout": ("15", "seconds a silent server may take before it counts as unreachable"),
}


#: files at least this big are resumable (their identity goes to ctx.resume)
RESUME_MIN = 8 << 20
#: bytes per SFTP WRITE (at most: the server's limit wins; OpenSSH takes 255 KiB)
WRITE_SIZE = 256 << 10
#: the size every SFTP server must accept (draft-ietf-secsh-filexfer-02)
SAFE_WRITE_SIZE = 32768
READ_IN_FLIGHT = 64  # READ requests of one read_range in flight at once
#: files at least this big are sent over several connections at once, in
#: PART_SIZE parts (one SSH channel's window caps a single stream at
#: window/RTT on a distant server)
PARALLEL_MIN = 64 << 20
PART_SIZE = 16 << 20
#: connections one large file uses at most, on a far server (PARALLEL_RTT)
PARALLEL_STREAMS = 2
#: a round trip from which large files go in parallel parts (see SFTPCon._parts_in_flight)
PARALLEL_RTT = 0.002
#: unacknowledged WRITE requests allowed in flight per stream
MAX_INFLIGHT = 32
#: acknowledged bytes are passed to the progress report (and the bandwidth
#: limit) at least this often, in bytes or seconds (_Flow)
REPORT_BYTES = 1 << 20
REPORT_EVERY = 0.1
#: small files of one send_many() batch in flight at once (over all connections)
BATCH_INFLIGHT = 64
#: bytes re-read from the end of a large upload to check it arrived intact
VERIFY_TAIL = 64 << 10
STREAM_CHUNK = 4 << 20  # send_stream: bytes read from the source per step (one buffer per send)
#: READ requests in flight when a resume reads back the temp file (each at
#: most the session's write size: at most this many buffers in memory)
READ_BACK_INFLIGHT = 16
#: name prefix of the old file moved aside by the no-posix-rename fallback
ASIDE_PREFIX = ".skynet-old-"
#: ciphers tried first: AES-GCM needs no separate MAC, cheapest for us and sshd
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
#: name prefixes of our own temporary files (never listed, removed by cleanup)
_OURS = (TMP_PREFIX.encode(), ASIDE_PREFIX.encode())
_MAX_U32 = 2**32 - 1
#: the permission bits a target file may get: never setuid, setgid or sticky.
#: A 4755 program in the source must not become a setuid program of the
#: server's account (or of root, when the daemon or the server runs as root).
MODE_MASK = 0o777
#: the private key files ssh (and asyncssh) look for when no key_file is set
_DEFAULT_KEYS = ("id_ed25519_sk", "id_ecdsa_sk", "id_ed448", "id_ed25519", "id_ecdsa", "id_rsa", "id_dsa")

_FX_TRANSIENT = {asyncssh.FX_NO_CONNECTION, asyncssh.FX_CONNECTION_LOST}
#: "the temp file's name was not looked at" (see SFTPCon._open_tmp)
_UNSEEN: Any = object()


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
class _LocalError(Exception):
    """Carries an error of the local file through the remote error mapping."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.exc = exc


class _PartLost(TransientError):
    """A part of a parallel upload was cut short (connection lost, timed
    out): the parts finished are kept for the next attempt."""


class _StartOver(TransientError):
    """An upload failed its check (finished, or resumed from a temp file
    whose bytes differ): drop the temp file and resume state."""


def _status_error(exc: asyncssh.SFTPError, what: str) -> XConError:
    """Turn an SFTP status into the contract's error kinds, with a plain message."""
    text = f" ({exc.reason})" if exc.reason else ""
    code = exc.code
    if code == asyncssh.FX_NO_SUCH_FILE:
        return RemoteNotFound(f"{what}: no such file or folder on the server{text}")
    if code == asyncssh.FX_PERMISSION_DENIED:
        return PermanentError(f"{what}: permission denied by the server{text}")
    if code == asyncssh.FX_BAD_MESSAGE:
        return PermanentError(f"{what}: the server refused the request or the name (too long or invalid?){text}")
    if code == asyncssh.FX_OP_UNSUPPORTED:
        return PermanentError(f"{what}: the server does not support this operation{text}")
    if code in _FX_TRANSIENT:
        return TransientError(f"{what}: the server lost its connection{text}")
    # SSH_FX_FAILURE: OpenSSH says only "Failure" for ENOSPC, EISDIR, EEXIST,
    # ENOTEMPTY, EDQUOT... Callers add what they can find out (_diagnose).
    return PermanentError(f"{what}: the server reported a failure{text}")


def _map_error(exc: BaseException, what: str) -> BaseException:
    """Any exception out of a remote call -> the contract's error kinds."""
    if isinstance(exc, _LocalError):
        return exc.exc
    if isinstance(exc, XConError):
        return exc
    if isinstance(exc, asyncssh.SFTPError):
        return _status_error(exc, what)
    if isinstance(exc, asyncssh.PermissionDenied):
        return PermanentError(f"{what}: login refused by the server ({exc.reason})")
    if isinstance(exc, (asyncssh.Error, asyncssh.ChannelOpenError, OSError, EOFError, asyncio.TimeoutError,
                        asyncio.IncompleteReadError, concurrent.futures.CancelledError)):
        kind = type(exc).__name__
        return TransientError(f"{what}: connection lost or timed out ({kind}: {exc})")
    return exc


def _session_ok(exc: BaseException) -> bool:
    """True when the server answered (or we stopped on purpose): the
    connection is still in step and stays in the pool. Anything else (socket
    error, timeout, connection lost) drops it."""
    if isinstance(exc, asyncssh.SFTPError):
        return exc.code not in _FX_TRANSIENT
    return isinstance(exc, (XConError, _LocalError))


def _mode(a: asyncssh.SFTPAttrs | None) -> int:
    return (a.permissions or 0) if a is not None else 0


def _is_dir(a: asyncssh.SFTPAttrs | None) -> bool:
    return a is not None and statmod.S_ISDIR(_mode(a))


def _attrs(mode: int, mtime_ns: int) -> asyncssh.SFTPAttrs:
    """The attributes every SETSTAT/FSETSTAT of ours carries (the only
    requests that send a file's mode: OPEN and MKDIR send none of the source's)."""
    # SFTPv3 stores whole seconds in an unsigned 32-bit field.
    secs = min(max(mtime_ns // 1_000_000_000, 0), _MAX_U32)
    return asyncssh.SFTPAttrs(permissions=mode & MODE_MASK, atime=secs, mtime=secs)


# --------------------------------------------------------------------------
# one upload's flow: the loop writes, the calling thread reports and pays
# --------------------------------------------------------------------------
class _Flow:
    """Acknowledged bytes go from the loop to the calling thread, which
    passes them to ctx.report (progress, and the bandwidth limit, which may
    sleep: in the calling thread, never in the loop); the writers may run at
    most `window` bytes ahead of what the calling thread has paid for.
    `watched` False: no thread waits on it (send_many's small files, where
    a lock and an event per file were a measurable share of the loop's CPU).
    `meter`: where the bytes go instead of ctx.start_at/ctx.report (one part
    of a parallel upload: the chunk scheduler's `sent`, given each new count)."""

    def __init__(self, ctx: TransferContext, total: int, window: int, watched: bool = True,
                 meter: Callable[[int], None] | None = None) -> None:
        self.ctx, self.total, self.window, self.meter = ctx, total, window, meter
        self.acked = 0  # bytes the server confirmed (loop side)
        self.sent = 0  # bytes written by this attempt (loop side)
        self.paid = 0  # bytes reported by the calling thread
        self.base = 0  # bytes on the remote before this attempt
        self._metered = 0  # bytes last passed to `meter`
        self._told = 0  # `acked` when the waiting thread was last woken
        self.waiting = False  # a writer waits in room()
        self._cond = threading.Condition() if watched else None
        self._grant: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- loop side --
    def start(self, acked: int) -> None:
        """In the loop: what the remote held before this attempt."""
        self._loop = asyncio.get_running_loop()
        if self._cond is not None:
            self._grant = asyncio.Event()
        self.acked = self.paid = self.base = self._told = acked
        self.notify()

    def ack(self, n: int) -> None:
        """`n` more bytes acknowledged. The waiting thread is woken once per
        REPORT_BYTES (it reports in such steps anyway), or at once when a
        writer waits for room: a wake-up per WRITE cost the loop a lock and
        the GIL handed to and fro, ~9% of its time on a large file."""
        self.acked += n
        if self.waiting or self.acked - self._told >= REPORT_BYTES:
            self._told = self.acked
            self.notify()

    def notify(self) -> None:
        if self._cond is None:
            return
        with self._cond:
            self._cond.notify()

    async def room(self, n: int, stop: Callable[[], bool]) -> None:
        """Wait until `n` more bytes on the wire stay within the window of
        what was paid for, or until `stop()` (then the caller stops)."""
        while self.base + self.sent + n - self.paid > self.window and not stop():
            assert self._grant is not None, "an unwatched flow has no window"
            self._grant.clear()
            self.waiting = True
            self._told = self.acked
            self.notify()  # what was acknowledged and not yet told: the room may be there
            try:
                await self._grant.wait()
            finally:
                self.waiting = False

    def kick(self) -> None:
        """Wake every writer waiting in room() (a write failed: stop)."""
        if self._grant is not None:
            self._grant.set()

    def _paid(self, n: int) -> None:
        self.paid = max(self.paid, n)
        if self._grant is not None:
            self._grant.set()

    # -- calling thread --
    def _pay(self, n: int) -> None:
        """Tell the loop that `n` bytes are reported (paid for): writers waiting in room() may go on."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: the future says why
            self._loop.call_soon_threadsafe(self._paid, n)

    def _report(self, done: int, first: bool) -> None:
        if self.meter is None:
            (self.ctx.start_at if first else self.ctx.report)(done, self.total)
        elif not first:
            self.meter(done - self._metered)
        self._metered = done

    def drive(self, fut: concurrent.futures.Future) -> Any:
        """Wait for `fut`, reporting acknowledged bytes as they come."""
        assert self._cond is not None, "drive() needs a watched flow"
        shown = -1
        fut.add_done_callback(lambda _f: self.notify())
        started = False
        while True:
            with self._cond:
                self._cond.wait_for(lambda: fut.done() or (self._loop is not None and self.acked != shown),
                                    timeout=REPORT_EVERY)
                acked = self.acked
                finished = fut.done()  # then `acked` is final: report it before returning
            if self._loop is not None and acked != shown:
                if not started:
                    self._report(acked, first=True)
                    started = True
                    self._pay(acked)
                else:
                    # In steps of REPORT_BYTES: the bandwidth limit then sleeps a
                    # little per step, and progress and the writers' window move
                    # with each step, instead of one long sleep for all the bytes
                    # acknowledged meanwhile (which made both advance in jumps).
                    step = shown if shown < acked else acked - 1
                    while step < acked:
                        step = min(acked, step + REPORT_BYTES)
                        self._report(step, first=False)
                        self._pay(step)
                shown = acked
            if finished:
                return fut.result()


class _Parts:
    """SFTP's half of the chunk scheduler (skynet.transfer.chunks.upload):
    write one part of the temp file, or read one back. Each call runs on a
    pool thread: the part's requests run on the connection's loop, through
    a session of the pool (an idle one, a new one while there is room, else
    the least busy), and the calling pool thread waits, reporting the
    acknowledged bytes as they come (progress, and the bandwidth limit,
    which sleeps there: never in the loop). A WRITE in flight is at most
    MAX_INFLIGHT x the write size ahead of what was reported (_Flow)."""

    def __init__(self, up: _Upload, ctx: TransferContext, what: str, window: int,
                 submit: Callable[[Callable[[Session], Awaitable[Any]]], concurrent.futures.Future],
                 write_range: Callable[..., Awaitable[int]], differs: Callable[..., Awaitable[str | None]]) -> None:
        self.up, self.ctx, self.what, self.window = up, ctx, what, window
        self.submit, self.write_range, self.differs = submit, write_range, differs
        self.sent = 0  # bytes this attempt wrote (all parts)
        self._lock = threading.Lock()

    def write_chunk(self, n: int, offset: int, data: memoryview, sent: Callable[[int], None]) -> str:
        end = offset + len(data)
        flow = _Flow(self.ctx, end, self.window, meter=sent)
        up = self.up

        async def run(s: Session) -> int:
            fh = await s.req(s.sftp.open(up.tmp, asyncssh.FXF_WRITE, encoding=None, block_size=0))
            try:
                flow.start(0)
                return await self.write_range(s, fh, _view_reader(data, offset), offset, end, flow)
            finally:
                if s.alive():
                    with contextlib.suppress(asyncssh.SFTPError):
                        await s.req(fh.close())

        reached = self._wait(self.submit(run), flow.drive)
        with self._lock:
            self.sent += reached - offset
        if reached < end:  # stopped (ctx.stop): this part is sent again next time
            raise TransientError(f"{self.what}: stopped in part {n + 1} (resumable)")
        return ""

    def _wait(self, fut: concurrent.futures.Future, wait: Callable[[concurrent.futures.Future], Any] | None = None
              ) -> Any:
        """The part's result. A refusal by the server is raised as it is (the
        upload explains it, then removes the temp file); anything else that
        cut the part short, as _PartLost (the parts done are kept)."""
        try:
            return wait(fut) if wait is not None else fut.result()
        except asyncssh.SFTPError as exc:
            if _session_ok(exc):
                raise
            raise _PartLost(str(_map_error(exc, self.what))) from exc
        except XConError:
            raise
        except BaseException as exc:
            mapped = _map_error(exc, self.what)
            if mapped is exc:
                raise
            raise _PartLost(str(mapped)) from exc

    def check(self, n: int, data: memoryview, _token: str) -> bool:
        """Part `n` kept from an earlier attempt holds `data` (every byte
        read back: no SFTP server we can rely on offers a hash)."""
        offset = n * PART_SIZE
        ranges = [(offset, offset + len(data))]

        async def run(s: Session) -> str | None:
            return await self.differs(s, _view_reader(data, offset), self.up.tmp, ranges)

        problem = self._wait(self.submit(run))
        if problem is not None:
            log.warning("%s: part %d of the temporary file differs from the local file (%s)", self.what, n + 1,
                        problem)
        return problem is None


def _kept_parts(state: dict, ident: dict, plan: chunks.Plan, st: asyncssh.SFTPAttrs | None) -> set[int]:
    """Parts an earlier attempt finished, if its state matches this file and
    its temp file (`st`, its lstat: a link is never resumed) is long enough;
    else an empty set (start afresh). Their bytes are read back by _Parts.check."""
    done = state.get("done")
    if not isinstance(done, list) or {k: v for k, v in state.items() if k != "done"} != ident:
        return set()
    kept = {i for i in done if isinstance(i, int) and 0 <= i < plan.count}
    if not kept or st is None or not statmod.S_ISREG(_mode(st)):
        return set()
    if (st.size or 0) < plan.bounds(max(kept))[1]:
        return set()
    return kept


@dataclass
class _Upload:
    """Where one send stands (for resume, progress and cleanup)."""

    rel: str
    target: bytes
    tmp: bytes
    tmp_rel: str
    size: int
    resumable: bool
    offset: int = 0  # bytes already in the temp file when this attempt began
    handle: Any = None  # the open temp file (asyncssh SFTPClientFile)
    opened: bool = False  # the temp file was opened (made) by this attempt: ours to remove


@dataclass
class _PathState:
    """What LSTAT found along a remote path, level by level below the root
    (SFTPCon._inspect). Nothing was followed: a link is seen as a link."""

    levels: list[str]  # the folders below the root down to the path's folder, top first
    missing: int  # index of the first missing level (len(levels): all there)
    blocker: str | None  # the first level that is not a real folder: a link or a file
    link: bool  # ...and it is a symbolic link
    leaves: list[asyncssh.SFTPAttrs | None] = field(default_factory=list)


def _pieces(ranges: list[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of at most `size` bytes, covering each [start, end) range."""
    for start, end in ranges:
        for pos in range(start, end, size):
            yield pos, min(size, end - pos)


#: read(n, pos): at most n local bytes at pos (fewer only at the end of the file)
_Reader = Callable[[int, int], bytes]


def _file_reader(fd: int) -> _Reader:
    return lambda n, pos: _pread(fd, n, pos)


def _view_reader(view: memoryview, offset: int) -> _Reader:
    """Slices of a buffer holding the file's bytes from `offset` on (a chunk
    of the scheduler). Handed to asyncssh's write as they are: it only
    measures and concatenates them, and a bytes() copy of every byte cost
    ~7% of a large upload's MB/s (bench/sftp_peers.py; test_bulk_path_* send
    every byte through this and compare)."""
    return lambda n, pos: view[pos - offset:pos - offset + n]  # type: ignore[return-value]


def _pread(fd: int, n: int, offset: int) -> bytes:
    try:
        return os.pread(fd, n, offset)
    except OSError as exc:
        raise _LocalError(exc) from exc


# --------------------------------------------------------------------------
# the connection
# --------------------------------------------------------------------------
class SFTPCon(XCon, ServerSideMove, BatchSend, HardLink, FreeSpace, StreamSend, Folders):
    """SFTP on asyncssh. move() is posix-rename on the server; send_many pipelines
    many small files on the shared connections; free_space() asks statvfs@openssh.com
    (None where the server lacks it). No ServerSideCopy: SFTPv3 has no copy without a
    shell or the non-standard copy-data extension."""

    service = "sftp"
    # SFTPv3 carries mtime in whole seconds.
    abilities = Abilities(resumable=True, byte_names=True, mode=True, mtime_precision_ns=1_000_000_000)

    def __init__(
        self,
        host: str,
        root: str,
        *,
        port: int = 22,
        user: str = "",
        key_file: str = "",
        key_passphrase: str = "",
        password: str = "",
        use_agent: bool = True,
        known_hosts: str = "~/.ssh/known_hosts",
        connections: int = 4,
        keepalive: float = 5.0,
        timeout: float = 15.0,
        write_size: int = WRITE_SIZE,
        resume_min: int = RESUME_MIN,
        parallel_min: int = PARALLEL_MIN,
        streams: int | None = None,
        ciphers: tuple[str, ...] = PREFERRED_CIPHERS,
        ssh_options: dict | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.user = user or _local_user()
        self.root = _clean_root(root)
        self._prefix = "" if self.root == "." else (self.root if self.root.endswith("/") else self.root + "/")
        self.key_file = os.path.expanduser(key_file) if key_file else ""
        self._passphrase = key_passphrase  # secrets: never in messages or logs
        self._password = password
        self.use_agent = use_agent
        self.known_hosts = os.path.expanduser(known_hosts)
        self.connections = max(1, connections)
        self.keepalive = keepalive
        self.timeout = timeout
        self.write_size = write_size
        self.resume_min = resume_min
        self.parallel_min = parallel_min
        self.streams = streams  # None: chosen by the measured round trip (_parts_in_flight)
        self.rtt: float | None = None  # seconds, measured by connect()
        self.ciphers = ciphers
        #: more asyncssh.connect() options (tests, benchmarks: rekey_bytes, window...)
        self.ssh_options = dict(ssh_options or {})
        self._loop = Loop(f"sftp-{host}")
        self._pool = Pool(self._open_session, self.connections)
        self._key: asyncssh.SSHKey | None = None
        # rel -> temp file (rel) a failed send may have left behind with no resume
        # state naming it (the connection broke mid-way); see discard()
        self._strays: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<SFTPCon {self.describe()}>"

    def describe(self) -> str:
        return f"sftp:{self.user}@{known_hosts_name(self.host, self.port)}:{self.root}"

    # -- paths -------------------------------------------------------------
    def _abs(self, rel: str) -> str:
        """The remote path of `rel`, guaranteed to stay under the root."""
        if rel == "":
            return self.root
        full = remote_join(self.root, check_rel(rel))
        norm = posixpath.normpath(full)
        if self._prefix:
            ok = norm.startswith(self._prefix) and len(norm) > len(self._prefix)
        else:  # root "." (the login folder): stay relative and below it
            ok = not norm.startswith("/") and norm != ".." and not norm.startswith("../")
            full = norm
        if not ok:
            raise UnsafePath(f"{rel!r} escapes the remote root {self.root!r}")
        return full

    def _rel_of(self, path: str) -> str:
        return path[len(self._prefix):] if self._prefix else path

    @staticmethod
    def _b(path: str) -> bytes:
        return os.fsencode(path)

    # -- sessions ----------------------------------------------------------
    def _load_key(self) -> asyncssh.SSHKey | None:
        if not self.key_file:
            return None
        if self._key is None:
            try:
                self._key = asyncssh.read_private_key(self.key_file, self._passphrase or None)
            except FileNotFoundError:
                raise PermanentError(f"key_file {self.key_file!r}: no such file") from None
            except asyncssh.KeyEncryptionError as exc:  # its text names the cause, never the passphrase
                raise PermanentError(
                    f"key_file {self.key_file!r}: cannot decrypt the key ({exc}; wrong key_passphrase?)") from None
            except (asyncssh.KeyImportError, ValueError, OSError) as exc:
                if not self._passphrase and "assphrase" in str(exc):
                    raise PermanentError(f"key_file {self.key_file!r} is encrypted: set key_passphrase "
                                         f"(or load it into ssh-agent)") from None
                hint = " (wrong key_passphrase?)" if self._passphrase else ""
                raise PermanentError(f"key_file {self.key_file!r}: cannot load the key{hint}: "
                                     f"{type(exc).__name__}") from None
        return self._key

    def _login_options(self) -> dict:
        """How to log in: the key file, else the default keys; the agent when
        asked for; the password when set."""
        agent: Any = () if self.use_agent else None
        if self.key_file:
            keys: Any = [self._load_key()]
        elif self._password:
            keys = () if self.use_agent else None
        else:
            keys = ()
            home_keys = [os.path.expanduser(f"~/.ssh/{n}") for n in _DEFAULT_KEYS]
            has_agent = self.use_agent and os.environ.get("SSH_AUTH_SOCK")
            if not has_agent and not any(os.path.exists(p) for p in home_keys):
                raise PermanentError(
                    f"connect to {self.describe()}: no key or password to log in with (set key_file, load a "
                    f"key into ssh-agent with use_agent = yes, or set password)")
        opts: dict = {"client_keys": keys, "agent_path": agent}
        if self._password:
            opts["password"] = self._password
        return opts

    async def _open_session(self) -> Session:
        """Connect, verify the host key, log in, open the SFTP channel."""
        where = f"connect to {self.describe()}"
        try:
            trusted = trusted_keys(self.known_hosts, self.host, self.port)
        except (OSError, ValueError, asyncssh.Error) as exc:
            raise PermanentError(f"known_hosts {self.known_hosts!r}: cannot read it: {exc}") from None
        seen = HostKeySeen()
        keepalive = self.keepalive if self.keepalive > 0 else 0
        conn = None
        try:
            conn = await asyncssh.connect(
                self.host, self.port,
                username=self.user,
                known_hosts=([k for k in trusted.values() if isinstance(k, asyncssh.SSHKey)], [], []),
                server_host_key_algs=prefer_algs(list(trusted)),
                client_factory=lambda: seen,
                config=[],
                connect_timeout=self.timeout,
                login_timeout=self.timeout,
                keepalive_interval=keepalive,
                keepalive_count_max=max(1, math.ceil(self.timeout / keepalive)) if keepalive else 3,
                encryption_algs="^" + ",".join(self.ciphers) if self.ciphers else (),
                compression_algs=None,
                **{"tunnel": BatchedTCP(), **self._login_options(), **self.ssh_options},
            )
            sftp = await asyncio.wait_for(conn.start_sftp_client(), self.timeout)
        except BaseException as exc:
            if conn is not None:
                conn.abort()
            if isinstance(exc, asyncssh.HostKeyNotVerifiable) and seen.refused is not None:
                got = seen.refused
                if not trusted:
                    raise unknown_key_error(self.host, self.port, self.known_hosts, got) from None
                expected = trusted.get(key_type(got)) or next(iter(trusted.values()))
                raise changed_key_error(self.host, self.port, self.known_hosts, got, expected) from None
            if isinstance(exc, asyncssh.PermissionDenied):
                raise PermanentError(f"{where}: login refused for user {self.user!r} ({exc.reason})") from None
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError) and exc.errno is None \
                    and "resolve" in str(exc).lower():
                raise TransientError(f"{where}: cannot resolve {self.host!r} ({exc})") from None
            mapped = _map_error(exc, where)
            if mapped is exc:
                raise
            raise mapped from None
        limit = sftp.limits.max_write_len or SAFE_WRITE_SIZE
        s = Session(conn, sftp, write_size=max(1024, min(self.write_size, limit)), timeout=self.timeout)
        s.watcher = asyncio.get_running_loop().create_task(s.watch())
        return s

    async def _in_session(self, fn: Callable[[Session], Awaitable[T]]) -> T:
        s = await self._pool.acquire()
        broken = False
        try:
            return await fn(s)
        except BaseException as exc:
            broken = not _session_ok(exc)
            raise
        finally:
            self._pool.release(s, broken)

    def _submit(self, fn: Callable[[Session], Awaitable[T]]) -> concurrent.futures.Future:
        return self._loop.submit(self._in_session(fn))


    def _call(self, what: str, fn: Callable[[Session], Awaitable[T]]) -> T:
        """Run fn(session) on the loop and wait; errors in the contract's kinds."""
        return self._wait(what, self._submit(fn))

    @staticmethod
    def _wait(what: str, fut: concurrent.futures.Future, wait: Callable[[concurrent.futures.Future], Any] | None = None):
        try:
            return wait(fut) if wait is not None else fut.result()
        except BaseException as exc:
            mapped = _map_error(exc, what)
            if mapped is exc:
                raise
            raise mapped from exc

    # -- lifecycle ---------------------------------------------------------
    def connect(self) -> None:
        """Open the first connection now (so a bad key or host key shows at
        once) and make sure the remote root folder exists."""
        self._call(f"connect to {self.describe()}", self._make_root)
        probes = []
        for _ in range(3):  # the least of three: one slow answer (a GC pause) is not the link
            started = time.monotonic()
            self.check()
            probes.append(time.monotonic() - started)
        self.rtt = min(probes)

    def _in_parts(self, ctx: TransferContext) -> bool:
        """Whether a large file goes in parts. An upload already begun keeps its way (parts
        kept by an earlier attempt are resumed in parts, a temp file written in one stream
        is continued in one), whatever the round trip measures now: a daemon killed and
        started again on a busier machine must not send finished bytes again."""
        kind = (ctx.resume.load() or {}).get("kind")
        if kind == "sftp-parts":
            return True
        if kind == "sftp-temp":
            return False
        return self._parts_in_flight() > 1

    def _parts_in_flight(self) -> int:
        """Parts in flight for one large file. Parts exist for far servers: one SSH
        channel's window (2 MiB on OpenSSH) caps a stream at window/RTT, 40 MB/s at
        50 ms. On a near server (a round trip under PARALLEL_RTT) one stream is faster:
        it is bound by this process's CPU per packet, and parts add an open, a close
        and a thread hand-over each (1 GiB on loopback: 322 MB/s in one stream, 263 in
        two, bench/RESULTS.md). An explicit `streams` (config, tests) wins."""
        wanted = self.streams
        if wanted is None:
            wanted = PARALLEL_STREAMS if self.rtt is not None and self.rtt >= PARALLEL_RTT else 1
        return max(1, min(self.connections, wanted))

    def check(self) -> None:
        async def probe(s: Session) -> None:
            try:
                await s.req(s.sftp.stat(self._b(self.root)))
            except asyncssh.SFTPError as exc:
                if not is_missing(exc):  # missing: sends will re-create it
                    raise

        self._call(f"check {self.describe()}", probe)

    def close(self) -> None:
        self._loop.stop(self._pool.close)

    # -- folders -----------------------------------------------------------
    async def _make_root(self, s: Session) -> None:
        """mkdir -p of the root: create each missing level, stopping at the
        first that exists. The root and the folders above it are the
        operator's choice (a link there is theirs and is followed); below the
        root nothing is (_inspect)."""
        what = f"create remote root {self.root!r}"
        missing: list[str] = []
        cur = self.root
        while cur not in ("", "/", "."):
            try:
                st = await s.req(s.sftp.stat(self._b(cur)))
            except asyncssh.SFTPError as exc:
                if not is_missing(exc):
                    raise
                missing.append(cur)
                cur = posixpath.dirname(cur.rstrip("/"))
                continue
            if not _is_dir(st):
                raise PermanentError(f"{what}: a file is in the way of folder {cur!r}")
            break
        for d in reversed(missing):
            await self._mkdir(s, d, what)

    async def _mkdir(self, s: Session, d: str, what: str) -> None:
        """MKDIR one level (it never follows a link at its own name: EEXIST)."""
        try:
            await s.req(s.sftp.mkdir(self._b(d), asyncssh.SFTPAttrs(permissions=0o755)))
        except asyncssh.SFTPError:
            # Another call may have made it meanwhile (OpenSSH: "Failure").
            st = await s.lstat(self._b(d))
            if st is None:
                raise
            if statmod.S_ISLNK(_mode(st)):
                raise self._link_error(d, what) from None
            if not _is_dir(st):
                raise InTheWay(f"{what}: a file is in the way of folder {self._rel_of(d)!r}", self._rel_of(d)) from None

    # -- links: each level checked with LSTAT, fresh every time, none followed --
    def _levels(self, folder: str) -> list[str]:
        """The folders from just below the root down to `folder`, top first."""
        if folder in (self.root, "", "."):
            return []
        parts = self._rel_of(folder).split("/")
        return [self._prefix + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]

    async def _inspect(self, s: Session, path: str, *siblings: str, leaf: bool = True) -> _PathState:
        """LSTAT every folder between the root and `path`, and `path` itself
        (unless not `leaf`) and `siblings` (names in the same folder), in one
        round trip.

        Why each level, each time: SFTP resolves a path on the server, and
        every request by path follows a link met on the way. A folder of the
        remote tree replaced by a link (to /etc, to another user's files)
        would lead writes and deletes out of the root; a lexical check cannot
        see it, and a cache of folders found safe goes stale the moment one
        is swapped. A lost race in the instant between this check and the
        request is still possible: SFTPv3 has no openat() and no O_NOFOLLOW
        for parent folders.
        """
        levels = self._levels(posixpath.dirname(path))
        names = [path, *siblings] if leaf else list(siblings)
        replies = await s.lstat_many([self._b(p) for p in levels + names])
        for i, (level, r) in enumerate(zip(levels, replies)):
            if isinstance(r, asyncssh.SFTPError):
                raise r
            if r is None:
                return _PathState(levels, i, None, False, [None] * len(names))
            if not _is_dir(r):
                return _PathState(levels, i, level, statmod.S_ISLNK(_mode(r)), [None] * len(names))
        leaves = replies[len(levels):]
        for r in leaves:
            if isinstance(r, asyncssh.SFTPError):
                raise r
        return _PathState(levels, len(levels), None, False, leaves)  # type: ignore[arg-type]

    def _link_error(self, level: str, what: str) -> UnsafePath:
        return UnsafePath(
            f"{what}: remote folder {self._rel_of(level)!r} is a symbolic link; skynet never writes or "
            f"deletes through a link on the server. Remove the link there (its target is left alone); "
            f"then the next send, or --retry-failed, makes a real folder in its place"
        )

    async def _folder_ready(self, s: Session, path: str, what: str, leaf: bool = True) -> _PathState:
        """Make sure every folder above `path` (below the root) is a real
        folder, creating the missing ones; returns what _inspect found
        (`leaf`: LSTAT `path` too).

        A link on the way is refused (UnsafePath), not replaced: it may be the
        server administrator's, and deleting it is their decision; a file in
        the way is refused as before."""
        st = await self._inspect(s, path, leaf=leaf)
        if st.blocker is not None:
            if st.link:
                raise self._link_error(st.blocker, what)
            rel = self._rel_of(st.blocker)
            raise InTheWay(f"{what}: a file is in the way of folder {rel!r}", rel)
        for d in st.levels[st.missing:]:
            await self._mkdir(s, d, what)
        return st

    async def _remove_file(self, s: Session, path: str, what: str) -> bool:
        """REMOVE `path` (a file or a link, never what a link points to) if
        every folder above it is a real one; False if there was nothing to remove."""
        st = await self._inspect(s, path)
        leaf = st.leaves[0]
        if st.link:
            log.warning("sftp: %s: not removing %r: folder %r is a symbolic link", what, self._rel_of(path),
                        self._rel_of(st.blocker or ""))
        if leaf is None or _is_dir(leaf):
            return False
        return await s.remove(self._b(path))

    async def _diagnose(self, s: Session, exc: asyncssh.SFTPError, what: str, path: str, need: int = 0) -> XConError:
        """Explain a bare "Failure" (OpenSSH hides ENOSPC, EISDIR... behind it)."""
        if exc.code != asyncssh.FX_FAILURE or not s.alive():
            return _status_error(exc, what)
        with contextlib.suppress(Exception):
            if _is_dir(await s.lstat(self._b(path))):
                return InTheWay(f"{what}: a folder is in the way of the file", self._rel_of(path))
        with contextlib.suppress(Exception):
            vfs = await s.req(s.sftp.statvfs(self._b(posixpath.dirname(path) or ".")))
            free = vfs.frsize * vfs.bavail
            if free < max(need, 1 << 20):
                return PermanentError(f"{what}: no space left on the server ({free} bytes free, {need} needed)")
        return _status_error(exc, what)

    # -- send --------------------------------------------------------------
    def _upload_of(self, f: LocalFile) -> _Upload:
        target = self._abs(f.rel)
        folder, name = posixpath.split(target)
        tmp = posixpath.join(folder, temp_name(name))
        return _Upload(rel=f.rel, target=self._b(target), tmp=self._b(tmp), tmp_rel=self._rel_of(tmp),
                       size=f.size, resumable=f.size >= self.resume_min)

    def send(self, f: LocalFile, ctx: TransferContext) -> SendResult:
        what = f"send {f.rel!r}"
        up = self._upload_of(f)
        # Unbuffered: reads go straight to the kernel, sized to what is left.
        src = open_source(f, buffering=0)  # FileNotFoundError, SourceChanged...: the caller's (local side)
        with src:
            fd = src.fileno()
            parallel = up.resumable and f.size >= self.parallel_min and self._in_parts(ctx)
            try:
                if parallel:
                    result = self._send_parallel(f, ctx, fd, up, what)
                else:
                    result = self._send_stream(f, ctx, fd, up, what)
            except BaseException as exc:
                if up.resumable and not _keep_for_resume(exc):
                    ctx.resume.clear()
                raise
            if up.resumable:
                ctx.resume.clear()  # the temp file became the target
        self._strays.pop(f.rel, None)  # the temp file became the target
        return result

    def send_many(self, files: list[LocalFile], stop: threading.Event) -> list[SendResult | Exception]:
        """Many small files in one call: all their sends run on the loop at
        once (BATCH_INFLIGHT in flight, over every connection), with no
        hand-over between threads per file. Each file is opened here, through
        open_source, as send() does; a resumable (large) file takes send()."""
        out: list[SendResult | Exception | None] = [None] * len(files)
        jobs: list[tuple[int, LocalFile, _Upload, int]] = []
        with contextlib.ExitStack() as opened:
            for i, f in enumerate(files):
                try:
                    up = self._upload_of(f)
                    if up.resumable:
                        continue
                    jobs.append((i, f, up, opened.enter_context(open_source(f, buffering=0)).fileno()))
                except Exception as exc:  # this file's own failure (gone, changed, unsafe name)
                    out[i] = exc
            ctx = TransferContext(stop=stop)

            async def each() -> list[Any]:
                # BATCH_INFLIGHT workers take the files in turn: no task and
                # no semaphore per file (they were ~8% of the loop's CPU).
                results: list[Any] = [None] * len(jobs)
                todo = iter(range(len(jobs)))

                async def worker() -> None:
                    for k in todo:
                        _i, f, up, fd = jobs[k]
                        try:
                            results[k] = await self._in_session(
                                lambda s: self._send_small(s, f, fd, up, ctx))  # noqa: B023 (awaited here)
                        except asyncio.CancelledError:
                            raise
                        except BaseException as exc:  # this file's failure, handed back in its place
                            results[k] = exc

                await asyncio.gather(*(worker() for _ in range(min(BATCH_INFLIGHT, len(jobs)))))
                return results

            results = self._loop.submit(each()).result() if jobs else []
        for (i, f, _up, _fd), r in zip(jobs, results):
            if isinstance(r, BaseException):
                mapped = _map_error(r, f"send {f.rel!r}")
                out[i] = mapped if isinstance(mapped, Exception) else TransientError(f"send {f.rel!r}: {r!r}")
            else:
                self._strays.pop(f.rel, None)
                out[i] = r
        for i, f in enumerate(files):
            if out[i] is None:
                try:
                    out[i] = self.send(f, TransferContext(stop=stop))
                except Exception as exc:
                    out[i] = exc
        return out  # type: ignore[return-value]  (every slot is filled)

    async def _send_small(self, s: Session, f: LocalFile, fd: int, up: _Upload, ctx: TransferContext) -> SendResult:
        """One file of send_many: send()'s steps, with no thread to report to."""
        what = f"send {f.rel!r}"
        flow = _Flow(ctx, f.size, window=1 << 62, watched=False)
        try:
            await self._folder_ready(s, os.fsdecode(up.tmp), what, leaf=False)
            return await self._put(s, f, fd, up, flow, _UNSEEN, what)
        except BaseException as exc:
            raise await self._after_failure(s, exc, up, f, what) from None

    def _send_stream(self, f: LocalFile, ctx: TransferContext, fd: int, up: _Upload, what: str) -> SendResult:
        """One stream of WRITEs; a resumable file in two calls, so that its
        identity is saved (by this thread) before its first byte goes out."""
        state = ctx.resume.load() if up.resumable else None
        flow = _Flow(ctx, f.size, MAX_INFLIGHT * self.write_size)

        async def prepare(s: Session) -> tuple[int, Any]:
            if not up.resumable:  # no resume to look for: the temp file is looked at only if OPEN finds one
                await self._folder_ready(s, os.fsdecode(up.tmp), what, leaf=False)
                return 0, _UNSEEN
            tmp_st = (await self._folder_ready(s, os.fsdecode(up.tmp), what)).leaves[0]
            return await self._resume_offset(s, f, fd, up, state, tmp_st), tmp_st

        async def run(s: Session, prep: tuple[int, Any] | None = None) -> SendResult:
            try:
                up.offset, tmp_st = prep if prep is not None else await prepare(s)
                return await self._put(s, f, fd, up, flow, tmp_st, what)
            except BaseException as exc:
                raise await self._after_failure(s, exc, up, f, what) from None

        prep = None
        if up.resumable:
            prep = self._call(what, prepare)
            if not prep[0]:
                ctx.resume.save(self._identity(f, up))
        return self._wait(what, self._submit(lambda s: run(s, prep)), flow.drive)

    async def _after_failure(self, s: Session, exc: BaseException, up: _Upload, f: LocalFile,
                             what: str) -> BaseException:
        """Leave no temp file behind, unless the upload can resume from it;
        returns the error to raise (a bare "Failure" explained)."""
        in_step = _session_ok(exc) and s.alive()
        keep = up.resumable and _keep_for_resume(exc)
        if in_step and up.handle is not None:
            with contextlib.suppress(Exception):
                await s.req(up.handle.close())
        if not keep and up.opened:
            if in_step:
                with contextlib.suppress(Exception):
                    await s.remove(up.tmp)
            else:
                # The temp file may be left, and nothing names it: remember it for discard()
                # (a retry of the send overwrites it; a daemon restart's cleanup removes it).
                self._strays[up.rel] = up.tmp_rel
        up.handle = None
        if isinstance(exc, asyncssh.SFTPError):
            return await self._diagnose(s, exc, what, os.fsdecode(up.target), f.size - up.offset)
        return exc

    async def _open_tmp(self, s: Session, up: _Upload, flags: int, old: Any, what: str) -> Any:
        """OPEN the temp file; an asyncssh file.

        A fresh one (CREATE) is opened with EXCL, after removing what `old`
        (its lstat) says is there: a file a failed attempt left, or a link
        someone planted at the name. OPEN follows a link; with EXCL
        (O_CREAT|O_EXCL on the server) an existing name, a link above all,
        fails instead, so no byte is ever written through one.

        `old` is _UNSEEN when the name was not looked at (files sent in one
        stream from 0: one request fewer per small file): the OPEN goes first,
        and only when it fails is the name looked at, cleared, and the OPEN
        tried once more."""
        if old is _UNSEEN:
            if not flags & asyncssh.FXF_EXCL:
                raise ValueError("an unseen temp file is opened only with EXCL")
            try:
                return await self._open_new(s, up, flags)
            except asyncssh.SFTPError as exc:
                if exc.code != asyncssh.FX_FAILURE:
                    raise
                old = await s.lstat(up.tmp)
                if old is None:
                    raise
        if flags & asyncssh.FXF_CREAT and old is not None:
            if _is_dir(old):
                raise PermanentError(f"{what}: a folder is in the way of the temporary file {up.tmp_rel!r}")
            await s.remove(up.tmp)  # a link goes, never what it points to
        try:
            return await self._open_new(s, up, flags)
        except asyncssh.SFTPError as exc:
            if not flags & asyncssh.FXF_EXCL or exc.code != asyncssh.FX_FAILURE or await s.lstat(up.tmp) is None:
                raise
        # Something took the name since the check: not ours to write into.
        raise TransientError(f"{what}: {up.tmp_rel!r} appeared on the server while sending (not followed); "
                             f"it will be tried again")

    @staticmethod
    async def _open_new(s: Session, up: _Upload, flags: int) -> Any:
        fh = await s.req(s.sftp.open(up.tmp, flags, encoding=None, block_size=0))
        up.opened = True
        return fh

    async def _put(self, s: Session, f: LocalFile, fd: int, up: _Upload, flow: _Flow, tmp_st: Any,
                   what: str) -> SendResult:
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL
        if up.resumable:
            flags |= asyncssh.FXF_READ  # to re-read the tail when verifying
            if up.offset:
                flags = asyncssh.FXF_WRITE | asyncssh.FXF_READ  # no CREATE: never write after a hole
        up.handle = await self._open_tmp(s, up, flags, None if up.offset else tmp_st, what)
        flow.start(up.offset)
        if not up.resumable and f.size < s.write_size and not flow.ctx.stop.is_set():
            # A small file: read whole (+1 byte to see it end), its WRITE goes
            # out with FSETSTAT and CLOSE: one round trip for the three.
            data = _pread(fd, f.size + 1, 0)
            if len(data) <= f.size:
                flow.sent = len(data)
                await self._finish(s, f, fd, up, len(data), what, data)
                flow.ack(len(data))
                return SendResult(size=len(data), etag=None, bytes_sent=len(data))
        end = await self._write_range(s, up.handle, _file_reader(fd), up.offset, None, flow)
        if flow.ctx.stop.is_set():
            raise TransientError(f"{what}: stopped at {end} of {f.size} bytes" + (" (resumable)" if up.resumable else ""))
        await self._finish(s, f, fd, up, end, what)
        return SendResult(size=end, etag=None, bytes_sent=flow.sent)

    async def _write_range(self, s: Session, fh: Any, read: _Reader, start: int, end: int | None,
                           flow: _Flow) -> int:
        """WRITE the local bytes (read(n, pos)) from `start` to `end` (None:
        to the end of the file, however long it is now), up to MAX_INFLIGHT
        requests in flight; returns where it stopped (ctx.stop). Every WRITE
        sent is waited for, and the first refusal is raised."""
        halt = flow.ctx.stop.is_set
        errors: list[BaseException] = []

        def done() -> bool:
            return bool(errors) or halt()

        slots = asyncio.Semaphore(MAX_INFLIGHT)
        tasks: set[asyncio.Task] = set()

        async def one(pos: int, data: bytes) -> None:
            try:
                await s.req(fh.write(data, pos))
                flow.ack(len(data))
            except BaseException as exc:
                errors.append(exc)
                flow.kick()
            finally:
                slots.release()

        pos = start
        try:
            while not done():
                left = (end - pos) if end is not None else max(flow.total - pos, 0) + 1
                if left <= 0:
                    break
                # Ask for what is left (+1 to see the end) rather than a full
                # write size: a 256 KiB buffer per 4 KiB file costs page faults.
                n = min(s.write_size, left)
                await flow.room(n, done)
                if done():
                    break
                await slots.acquire()
                data = read(n, pos)
                if not data:
                    slots.release()
                    if end is not None:
                        raise TransientError("the local file shrank during the upload")
                    break
                t = asyncio.get_running_loop().create_task(one(pos, data))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                pos += len(data)
                flow.sent += len(data)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        if errors:
            raise errors[0]
        return pos

    async def _finish(self, s: Session, f: LocalFile, fd: int, up: _Upload, size: int, what: str,
                      data: bytes | None = None) -> None:
        """The last WRITE (`data`, a whole small file), metadata, the checks
        and CLOSE in flight together; then the rename."""
        fh = up.handle
        attrs = _attrs(f.mode, f.mtime_ns)
        asks: list[Awaitable] = [s.req(fh.write(data, 0))] if data is not None else []
        asks.append(s.req(fh.setstat(attrs)))
        if up.resumable:
            n = min(VERIFY_TAIL, size)
            asks += [s.req(fh.stat()), s.req(fh.read(n, size - n))]
        asks.append(s.req(fh.close()))
        replies = await asyncio.gather(*asks, return_exceptions=True)
        up.handle = None
        if data is not None:
            wrote, replies = replies[0], replies[1:]
            if isinstance(wrote, BaseException):  # lost bytes: fatal
                raise wrote
        for r in replies:  # a broken connection, or a refused CLOSE: the bytes are not safe
            if isinstance(r, BaseException) and not (isinstance(r, asyncssh.SFTPError) and _session_ok(r)):
                raise r
        if isinstance(replies[-1], BaseException):
            raise replies[-1]
        if isinstance(replies[0], asyncssh.SFTPError):
            # Some servers refuse FSETSTAT on a handle; SETSTAT on the path then.
            await s.req(s.sftp.setstat(up.tmp, attrs))
        if up.resumable:
            await self._verify(s, f, fd, up, size, replies[1], replies[2], what)
        await self._replace(s, up.tmp, up.target, what)

    async def _verify(self, s: Session, f: LocalFile, fd: int, up: _Upload, size: int, st: Any, tail: Any,
                      what: str) -> None:
        """Check a large upload before it replaces the target: its size and
        its last block. The replies come from requests sent before CLOSE; if
        the server refused them, the same is asked by path."""
        if not isinstance(st, asyncssh.SFTPAttrs):
            st = await s.req(s.sftp.stat(up.tmp))
        n = min(VERIFY_TAIL, size)
        problem = f"size {st.size} != {size}" if st.size != size else ""
        if not problem and n:
            if not isinstance(tail, bytes):
                tail = await self._read_tail(s, up.tmp, size, n)
            if tail != _pread(fd, n, size - n):
                problem = "last block differs"
        if problem:
            raise _StartOver(f"{what}: upload check failed ({problem}); it will start over")

    async def _read_tail(self, s: Session, path: bytes, end: int, n: int) -> bytes | None:
        """The n bytes of remote file `path` before `end` (None if unreadable)."""
        try:
            fh = await s.req(s.sftp.open(path, asyncssh.FXF_READ, encoding=None, block_size=0))
        except asyncssh.SFTPError:
            return None
        try:
            out = b""
            while len(out) < n:
                got = await s.req(fh.read(n - len(out), end - n + len(out)))
                if not got:
                    break
                out += got
            return out
        except asyncssh.SFTPError:
            return None
        finally:
            with contextlib.suppress(asyncssh.SFTPError):
                await s.req(fh.close())

    @staticmethod
    def _identity(f: LocalFile, up: _Upload) -> dict:
        return {"kind": "sftp-temp", "tmp": up.tmp_rel, "size": f.size, "mtime_ns": f.mtime_ns, "ino": f.ino}

    async def _resume_offset(self, s: Session, f: LocalFile, fd: int, up: _Upload, state: dict | None,
                             st: asyncssh.SFTPAttrs | None) -> int:
        """Bytes of a previous attempt to keep, or 0 to start over. `st`: the
        temp file's lstat (a link there is never resumed: not S_ISREG)."""
        if not state or state != self._identity(f, up):
            return 0
        if st is None or not statmod.S_ISREG(_mode(st)) or not st.size or st.size > f.size:
            return 0
        have = st.size
        await self._read_back(s, fd, up, [(0, have)], f"send {f.rel!r}")
        log.info("resuming %s at %d of %d bytes", f.rel, have, f.size)
        return have

    async def _read_back(self, s: Session, fd: int, up: _Upload, ranges: list[tuple[int, int]],
                         what: str) -> None:
        """Before resuming: the temp file's bytes in `ranges` must be the
        local file's (read through `fd`, the open source: never by path).
        If not, remove the temp file and raise _StartOver (the caller's
        send() then drops the resume state), so the next send starts from 0.
        A lost connection is raised as it is: the resume stays for later.
        Not reported as progress nor to the bandwidth limit: nothing is sent."""
        problem = await self._first_difference(s, _file_reader(fd), up.tmp, ranges)
        if problem is None:
            return
        log.warning("%s: the temporary file differs from the local file (%s): starting over", what, problem)
        with contextlib.suppress(asyncssh.SFTPError):
            await s.remove(up.tmp)
        raise _StartOver(f"{what}: the temporary file on the server differs from the local file ({problem}); "
                         f"it will start over")

    async def _first_difference(self, s: Session, local: _Reader, path: bytes,
                                ranges: list[tuple[int, int]]) -> str | None:
        """Where remote `path` differs from the local bytes (local(n, pos)) within `ranges` (None:
        nowhere). READs of at most the write size, READ_BACK_INFLIGHT in
        flight (bounded memory); after the first difference no more are sent.
        A refused OPEN or READ counts as a difference (it cannot be trusted)."""
        try:
            fh = await s.req(s.sftp.open(path, asyncssh.FXF_READ, encoding=None, block_size=0))
        except asyncssh.SFTPError as exc:
            if not _session_ok(exc):
                raise
            return f"unreadable: {exc.reason}"
        found: list[str] = []
        errors: list[BaseException] = []  # a lost connection, an unreadable local file
        slots = asyncio.Semaphore(READ_BACK_INFLIGHT)
        tasks: set[asyncio.Task] = set()

        async def one(pos: int, n: int) -> None:
            try:
                got = await self._read_exactly(s, fh, pos, n)
                if got != local(n, pos):
                    found.append(f"bytes {pos}-{pos + n} differ" if len(got) == n else f"shorter than {pos + n}")
            except asyncssh.SFTPError as exc:
                if _session_ok(exc):
                    found.append(f"unreadable at {pos}: {exc.reason}")
                else:
                    errors.append(exc)
            except BaseException as exc:
                errors.append(exc)
            finally:
                slots.release()

        try:
            for pos, n in _pieces(ranges, s.write_size):
                await slots.acquire()
                if found or errors:
                    slots.release()
                    break
                t = asyncio.get_running_loop().create_task(one(pos, n))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if s.alive():
                with contextlib.suppress(asyncssh.SFTPError):
                    await s.req(fh.close())
        if errors:
            raise errors[0]
        return found[0] if found else None

    @staticmethod
    async def _read_exactly(s: Session, fh: Any, pos: int, n: int) -> bytes:
        """n bytes at pos (fewer only at the end of the file): a server may
        answer a READ with fewer bytes than asked."""
        out = b""
        while len(out) < n:
            got = await s.req(fh.read(n - len(out), pos + len(out)))
            if not got:
                break
            out += got
        return out

    # -- parallel parts: on the shared chunk scheduler ----------------------------
    def _send_parallel(self, f: LocalFile, ctx: TransferContext, fd: int, up: _Upload, what: str) -> SendResult:
        """A large file as PART_SIZE parts of one temp file, up to `streams`
        at once, each through a session of the pool (so over several
        connections: one SSH channel's window caps a stream at window/RTT).
        Cutting, reading, buffers, progress, the bandwidth limit and stopping
        are skynet.transfer.chunks.upload's; SFTP writes one part (_Parts).
        Finished parts are saved in ctx.resume as they finish; a later attempt
        reads the kept parts back (_Parts.check) and sends only the rest."""
        plan = chunks.Plan(f.size, PART_SIZE, self._parts_in_flight())
        ident = {**self._identity(f, up), "kind": "sftp-parts", "part": PART_SIZE}
        state = ctx.resume.load() or {}

        async def prepare(s: Session) -> set[int]:
            tmp_st = (await self._folder_ready(s, os.fsdecode(up.tmp), what)).leaves[0]
            kept = _kept_parts(state, ident, plan, tmp_st)
            if not kept:  # afresh: the temp file is made now (EXCL), the parts open it
                fh = await self._open_tmp(s, up, asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL,
                                          tmp_st, what)
                await s.req(fh.close())
            return kept

        kept = self._call(what, prepare)
        up.offset = plan.bytes_in(kept)
        if kept:
            log.info("resuming %s with %d of %d parts", f.rel, len(kept), plan.count)

        def save(n: int | None = None, _token: str = "") -> None:
            if n is not None:
                kept.add(n)
            ctx.resume.save({**ident, "done": sorted(kept)})

        save()
        parts = _Parts(up, ctx, what, MAX_INFLIGHT * self.write_size, self._submit, self._write_range,
                       self._first_difference)
        try:
            with concurrent.futures.ThreadPoolExecutor(plan.concurrency, thread_name_prefix="sftp-part") as pool:
                chunks.upload(fd, plan, parts, ctx, pool, done=dict.fromkeys(kept, ""), check_done=parts.check,
                              on_chunk=save)
        except BaseException as exc:
            raise self._parts_failed(exc, f, ctx, up, plan, kept, what) from None

        async def finish(s: Session) -> None:
            try:
                up.handle = await s.req(s.sftp.open(up.tmp, asyncssh.FXF_WRITE | asyncssh.FXF_READ, encoding=None,
                                                    block_size=0))
                await self._finish(s, f, fd, up, f.size, what)
            except BaseException as exc:
                raise await self._after_failure(s, exc, up, f, what) from None

        self._call(what, finish)
        return SendResult(size=f.size, etag=None, bytes_sent=parts.sent)

    def _parts_failed(self, exc: BaseException, f: LocalFile, ctx: TransferContext, up: _Upload,
                      plan: chunks.Plan, kept: set[int], what: str) -> BaseException:
        """The error a failed parallel upload raises (send() then keeps or
        drops the resume state, _keep_for_resume). A kept part that reads
        back differently, or a refusal by the server, removes the temp file."""
        if isinstance(exc, chunks.StaleChunk):
            self._drop_tmp(up, what)
            return _StartOver(f"{what}: the temporary file on the server differs from the local file ({exc}); "
                              f"it will start over")
        if isinstance(exc, chunks.SourceChanged):
            return SourceChanged(f"{what}: {exc}")
        if ctx.stop.is_set() or isinstance(exc, chunks.TransferStopped):
            return TransientError(f"{what}: stopped with {len(kept)} of {plan.count} parts sent (resumable)")
        if isinstance(exc, asyncssh.SFTPError):  # the server refused a request (_Parts lets only those through)
            return self._call(what, lambda s: self._after_failure(s, exc, up, f, what))
        if isinstance(exc, _PartLost):
            return TransientError(f"{exc}; {len(kept)} of {plan.count} parts kept")
        return exc  # reading the local file failed (chunks.upload reads it): the local side's error

    def _drop_tmp(self, up: _Upload, what: str) -> None:
        async def drop(s: Session) -> None:
            with contextlib.suppress(asyncssh.SFTPError):
                await s.remove(up.tmp)

        with contextlib.suppress(XConError):
            self._call(what, drop)

    # -- rename ----------------------------------------------------------------
    async def _replace(self, s: Session, tmp: bytes, target: bytes, what: str) -> None:
        """Rename `tmp` over `target`.

        With posix-rename@openssh.com (OpenSSH) this is one atomic rename(2).
        Without it, SFTPv3's RENAME refuses an existing target, so: try RENAME;
        if the target exists, move it aside to a derived name, RENAME tmp into
        place, then remove the aside copy (and put it back if the second rename
        fails). Readers may then find no file for a moment, never a partial one.
        """
        if s.posix_rename:
            try:
                await s.req(s.sftp.posix_rename(tmp, target))
                return
            except asyncssh.SFTPOpUnsupported:
                s.posix_rename = False
        try:
            await s.req(s.sftp.rename(tmp, target))
            return
        except asyncssh.SFTPError as exc:
            if not _session_ok(exc):
                raise
            st = await s.lstat(target)
            if st is None:
                raise
            if _is_dir(st):
                rel = self._rel_of(os.fsdecode(target))
                raise InTheWay(f"{what}: a folder is in the way of the file", rel) from exc
        folder, name = posixpath.split(os.fsdecode(target))
        aside = self._b(posixpath.join(folder, ASIDE_PREFIX + temp_name(name)[len(TMP_PREFIX):]))
        with contextlib.suppress(asyncssh.SFTPError):
            await s.remove(aside)
        await s.req(s.sftp.rename(target, aside))
        try:
            await s.req(s.sftp.rename(tmp, target))
        except BaseException:
            with contextlib.suppress(Exception):
                await s.req(s.sftp.rename(aside, target))
            raise
        with contextlib.suppress(asyncssh.SFTPError):
            await s.remove(aside)

    # -- streamed sends (migrations) -----------------------------------------
    def send_stream(self, rel: str, open_at: StreamOpener, ctx: TransferContext, *,
                    md5: str | None = None) -> SendResult:
        """StreamSend: the stream goes into send()'s temp file, STREAM_CHUNK bytes at a
        time (read by a worker thread, written by up to MAX_INFLIGHT WRITEs); a resumed
        attempt continues from the temp file's size. Then mode, mtime, rename."""
        what = f"send {rel!r}"
        target = self._abs(rel)
        folder, name = posixpath.split(target)
        tmp = posixpath.join(folder, temp_name(name))
        up = _Upload(rel=rel, target=self._b(target), tmp=self._b(tmp), tmp_rel=self._rel_of(tmp), size=0,
                     resumable=True)
        saved = ctx.resume.load()
        if not saved or saved.get("kind") != "sftp-stream" or saved.get("tmp") != up.tmp_rel:
            saved = None

        async def look(s: Session) -> Any:
            return (await self._folder_ready(s, tmp, what)).leaves[0]

        old = self._call(what, look)
        have = old.size if saved and old is not None and statmod.S_ISREG(_mode(old)) else 0
        stream, resumed = streams.reopen(open_at, have or 0, saved)
        try:
            if not resumed:
                up.offset = 0
                ctx.resume.save({"kind": "sftp-stream", "tmp": up.tmp_rel, "version": stream.version,
                                 "size": stream.size})
            else:
                up.offset, old = have, None
            feed = streams.Feed(stream)
            flow = _Flow(ctx, stream.size or 0, MAX_INFLIGHT * self.write_size)
            end = self._wait(what, self._submit(lambda s: self._pour(s, up, old, feed, stream, flow, md5, what)),
                             flow.drive)
        except BaseException as exc:
            if isinstance(exc, ChecksumMismatch):
                ctx.resume.clear()
                with contextlib.suppress(XConError):
                    self._remove_ours(up.tmp_rel, what)
            raise
        finally:
            stream.close()
        ctx.resume.clear()
        return SendResult(size=end, etag=None, bytes_sent=end - up.offset, md5=feed.seen)

    async def _pour(self, s: Session, up: _Upload, old: Any, feed: streams.Feed, stream: Stream, flow: _Flow,
                    md5: str | None, what: str) -> int:
        """On the loop: open the temp file (fresh, or to go on at up.offset), write the
        stream into it, check its end, give it mode and mtime, rename it into place."""
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_READ
        if not up.offset:
            flags |= asyncssh.FXF_CREAT | asyncssh.FXF_EXCL
        up.handle = await self._open_tmp(s, up, flags, old if not up.offset else None, what)
        try:
            flow.start(up.offset)
            view = memoryview(bytearray(STREAM_CHUNK))
            pos = up.offset
            while True:
                if flow.ctx.stop.is_set():  # (through _LocalError: the session stays in step)
                    raise _LocalError(chunks.TransferStopped(pos, stream.size or 0))  # type: ignore[arg-type]
                n = await _from_source(feed.fill, view)
                await self._write_range(s, up.handle, _view_reader(view, pos), pos, pos + n, flow)
                pos += n
                if n < len(view):
                    break
            await _from_source(feed.finish, md5)
            attrs = asyncssh.SFTPAttrs(permissions=(stream.mode if stream.mode is not None else 0o644) & 0o7777)
            if stream.mtime_ns is not None:
                attrs = _attrs(attrs.permissions, stream.mtime_ns)
            await s.req(up.handle.setstat(attrs))
            await s.req(up.handle.close())
            up.handle = None
        finally:
            if up.handle is not None:
                with contextlib.suppress(Exception):
                    await s.req(up.handle.close())
                up.handle = None
        await self._replace(s, up.tmp, up.target, what)
        return pos

    # -- delete / move -----------------------------------------------------
    async def _scandir(self, s: Session, folder: str) -> list[asyncssh.SFTPName]:
        """The entries of remote folder `folder` (an absolute path) that are in it: a
        name the server makes up ("../x", "/etc/x", "a/../../x") is dropped and logged,
        never removed or walked into (within_listing)."""
        entries = await s.scandir(self._b(folder))
        return list(within_listing(entries, folder, lambda e: posixpath.join(folder, os.fsdecode(e.filename)),
                                   self.describe(), paths=True))

    async def _rmtree(self, s: Session, top: str) -> None:
        """Remove a folder and everything in it, with SFTP requests only.

        `top` was just found a real folder (LSTAT) by the caller; every folder
        below it is LSTATed again right before it is read: a listing's
        attributes may follow links on some servers, and a folder may have
        been swapped for a link since. A link is removed as an entry (REMOVE
        unlinks the link), never entered."""
        stack = [(top, False)]
        while stack:
            folder, emptied = stack.pop()
            if emptied:
                await s.req(s.sftp.rmdir(self._b(folder)))
                continue
            if folder != top:
                st = await s.lstat(self._b(folder))
                if st is None:
                    continue
                if not _is_dir(st):
                    with contextlib.suppress(asyncssh.SFTPError):
                        await s.remove(self._b(folder))
                    continue
            stack.append((folder, True))
            try:
                entries = await self._scandir(s, folder)
            except asyncssh.SFTPError as exc:
                if is_missing(exc):
                    stack.pop()
                    continue
                raise
            files = []
            for e in entries:
                path = posixpath.join(folder, os.fsdecode(e.filename))
                if _is_dir(e.attrs):
                    stack.append((path, False))
                else:
                    files.append(self._b(path))
            await asyncio.gather(*(s.remove(p) for p in files))

    def delete(self, rel: str) -> None:
        target = self._abs(check_rel(rel))
        folder, name = posixpath.split(target)
        what = f"delete {rel!r}"
        tmp = posixpath.join(folder, temp_name(name))

        async def run(s: Session) -> None:
            found = await self._inspect(s, target, tmp)
            if found.link:  # nothing of our tree is there: never delete through the link
                log.warning("sftp: %s: nothing removed: remote folder %r is a symbolic link", what,
                            self._rel_of(found.blocker or ""))
            st, tmp_st = found.leaves
            if tmp_st is not None:  # an upload of this file cut short left its temp file
                with contextlib.suppress(asyncssh.SFTPError):
                    await s.remove(self._b(tmp))
            if st is None:
                return
            if _is_dir(st):
                try:
                    await self._rmtree(s, target)
                except asyncssh.SFTPError as exc:
                    if not is_missing(exc):
                        raise
            else:
                await s.remove(self._b(target))

        self._call(what, run)

    def move(self, src: str, dest: str) -> None:
        a, b = self._abs(check_rel(src)), self._abs(check_rel(dest))
        what = f"move {src!r} -> {dest!r}"

        async def run(s: Session) -> None:
            st = (await self._inspect(s, a)).leaves[0]  # None too if a folder above it is a link
            if st is None:
                raise RemoteNotFound(f"{what}: source not on the server")
            if a == b:
                return
            dst = (await self._folder_ready(s, b, what)).leaves[0]
            src_dir, dst_dir = _is_dir(st), _is_dir(dst)
            if src_dir and dst_dir:
                # rename(2) refuses a non-empty folder: the moved folder replaces
                # it, as it did on the local side.
                await self._rmtree(s, b)
            elif src_dir and dst is not None:
                # OpenSSH would report ENOTDIR as "no such file": say what it is.
                raise InTheWay(f"{what}: a file is in the way of the folder", dest)
            elif dst_dir:
                raise InTheWay(f"{what}: a folder is in the way of the file", dest)
            try:
                await self._replace(s, self._b(a), self._b(b), what)
            except asyncssh.SFTPError as exc:
                raise await self._diagnose(s, exc, what, b) from exc

        self._call(what, run)

    def link(self, src: str, dest: str) -> None:
        """OpenSSH's hardlink@openssh.com (asyncssh's SFTPClient.link): `src` must be a
        regular file reached through no link, `dest`'s folders are made as a send makes them."""
        a, b = self._abs(check_rel(src)), self._abs(check_rel(dest))
        what = f"link {src!r} -> {dest!r}"

        async def run(s: Session) -> None:
            # Both paths are looked at in the same round trip (a keep of a version waits for this before an
            # overwrite): `src` a regular file reached through no link, `dest`'s folders made.
            found, ready = await asyncio.gather(self._inspect(s, a), self._folder_ready(s, b, what),
                                                return_exceptions=True)
            if isinstance(found, BaseException):
                raise found
            st = found.leaves[0]
            if st is None or not statmod.S_ISREG(_mode(st)):
                raise RemoteNotFound(f"{what}: no such file on the server")
            if isinstance(ready, BaseException):
                raise ready
            if ready.leaves[0] is not None:
                raise PermanentError(f"{what}: the name is taken")
            try:
                await s.req(s.sftp.link(self._b(a), self._b(b)))
            except asyncssh.SFTPOpUnsupported:
                raise Unsupported(f"{what}: the server offers no hard links (hardlink@openssh.com)") from None
            except asyncssh.SFTPError as exc:
                raise await self._diagnose(s, exc, what, b) from exc

        self._call(what, run)

    # -- stat / list / cleanup ---------------------------------------------
    def stat(self, rel: str) -> RemoteEntry | None:
        path = self._abs(check_rel(rel))

        async def run(s: Session) -> asyncssh.SFTPAttrs | None:
            return (await self._inspect(s, path)).leaves[0]  # one round trip, as one LSTAT

        st = self._call(f"stat {rel!r}", run)
        if st is None or not statmod.S_ISREG(_mode(st)):
            return None
        return _entry(rel, st)

    def read_range(self, rel: str, offset: int, length: int, *, expect: RemoteEntry | None = None) -> bytes:
        """Open the file read-only (after checking, as stat() does, that no level on the
        way and not the file itself is a link), hold the opened handle's size and mtime
        to what the LSTAT saw and to `expect`, then READ the range in pipelined pieces."""
        check_range(offset, length)
        path = self._abs(check_rel(rel))
        what = f"read {rel!r}"

        async def run(s: Session) -> bytes:
            st = (await self._inspect(s, path)).leaves[0]
            if st is None or not statmod.S_ISREG(_mode(st)):
                raise RemoteNotFound(f"{what}: no such file on the server")
            fh = await s.req(s.sftp.open(self._b(path), "rb"))
            try:
                now = await s.req(fh.stat())
                if _version(now) != _version(st):
                    raise RemoteChanged(f"{what}: the file changed while it was opened")
                if expect is not None and _version(now) != (expect.size, expect.mtime_ns):
                    raise RemoteChanged(f"{what}: the file changed since it was listed")
                end = min(offset + length, now.size or 0)
                return await self._read_pieces(s, fh, offset, end)
            finally:
                if s.alive():
                    with contextlib.suppress(asyncssh.SFTPError):
                        await s.req(fh.close())

        return self._call(what, run)

    async def _read_pieces(self, s: Session, fh: Any, start: int, end: int) -> bytes:
        """Bytes [start, end) of an open file, READ in pieces of the server's read
        size, READ_IN_FLIGHT of them in flight at once (one round trip per window,
        not per piece). A file that shrank meanwhile ends the read early."""
        if end <= start:
            return b""
        step = s.sftp.limits.max_read_len or SAFE_WRITE_SIZE
        room = asyncio.Semaphore(READ_IN_FLIGHT)

        async def piece(pos: int) -> bytes:
            async with room:
                return await self._read_exactly(s, fh, pos, min(step, end - pos))

        pieces = await asyncio.gather(*(piece(pos) for pos in range(start, end, step)))
        out = bytearray()
        for p in pieces:
            out += p
            if len(p) < step:
                break  # the end of the file came early
        return bytes(out)

    def make_folder(self, rel: str, mode: int) -> None:
        """Folders.make_folder with SFTP requests only: the levels above checked
        (and made) as a send makes them, MKDIR of `rel` unless it is a folder
        already, then SETSTAT of its permission bits."""
        path = self._abs(check_rel(rel))
        what = f"make folder {rel!r}"

        async def run(s: Session) -> None:
            st = (await self._folder_ready(s, path, what)).leaves[0]
            if st is None:
                await self._mkdir(s, path, what)
            elif statmod.S_ISLNK(_mode(st)):
                raise self._link_error(path, what)
            elif not _is_dir(st):
                raise InTheWay(f"{what}: a file is in the way of folder {rel!r}", rel)
            await s.req(s.sftp.setstat(self._b(path), asyncssh.SFTPAttrs(permissions=mode & MODE_MASK)))

        self._call(what, run)

    def folder(self, rel: str) -> FolderEntry | None:
        """Folders.folder: one LSTAT, after checking that no level on the way is a link (as stat() does)."""
        path = self._abs(check_rel(rel))

        async def run(s: Session) -> asyncssh.SFTPAttrs | None:
            return (await self._inspect(s, path)).leaves[0]

        st = self._call(f"stat {rel!r}", run)
        if st is None or not _is_dir(st) or rel.rpartition("/")[2].encode().startswith(_OURS):
            return None
        return FolderEntry(rel, statmod.S_IMODE(_mode(st)))

    def list_folders(self, rel: str = "") -> Iterator[FolderEntry]:
        """The folders under `rel`, held to the listing rule (within_listing) like list()."""
        if rel:
            check_rel(rel)
        folders = (FolderEntry(_join_rel(prefix, os.fsdecode(name)), statmod.S_IMODE(_mode(attr)))
                   for prefix, name, attr in self._walk(rel, f"list folders {rel!r}")
                   if _is_dir(attr) and b"/" not in name and not name.startswith(_OURS))
        return within_listing(folders, rel, _folder_rel, f"sftp: {self.describe()}", paths=True)

    def free_space(self) -> int | None:
        """statvfs@openssh.com of the root: bytes free for us; None without the extension."""
        async def run(s: Session) -> int | None:
            try:
                st = await s.req(s.sftp.statvfs(self._b(self.root)))
            except asyncssh.SFTPOpUnsupported:
                return None
            return st.bavail * st.frsize

        return self._call(f"free space of {self.describe()}", run)

    def _walk(self, rel: str, what: str) -> Iterator[tuple[str, bytes, asyncssh.SFTPAttrs]]:
        """(folder rel, name, attrs) of everything under `rel`, one folder at a
        time: a session is used only while one folder is read."""
        if rel:  # a link on the way (or at rel itself) is not part of the tree: nothing to list
            path = self._abs(rel)

            async def top(s: Session) -> asyncssh.SFTPAttrs | None:
                return (await self._inspect(s, path)).leaves[0]

            if not _is_dir(self._call(what, top)):
                return
        stack = [rel]
        while stack:
            prefix = stack.pop()
            folder = self._abs(prefix)

            async def read(s: Session, folder: str = folder) -> list[asyncssh.SFTPName]:
                try:
                    return await self._scandir(s, folder)
                except asyncssh.SFTPError as exc:
                    if not is_missing(exc):  # missing, or a file (ENOTDIR)
                        raise
                    return []

            for e in self._call(what, read):
                if _is_dir(e.attrs) and b"/" not in e.filename:  # a "name" with a slash is no folder of ours
                    stack.append(_join_rel(prefix, os.fsdecode(e.filename)))
                yield prefix, e.filename, e.attrs

    def list(self, rel: str = "") -> Iterator[RemoteEntry]:
        """The files under `rel`, held to the listing rule (within_listing): a server
        that names an entry "../x" or "a/b" does not lead the caller outside `rel`."""
        if rel:
            check_rel(rel)
        return within_listing(self._files(rel), rel, _entry_rel, f"sftp: {self.describe()}", paths=True)

    def _files(self, rel: str) -> Iterator[RemoteEntry]:
        for prefix, name, attr in self._walk(rel, f"list {rel!r}"):
            if statmod.S_ISREG(_mode(attr)) and not name.startswith(_OURS):
                yield _entry(_join_rel(prefix, os.fsdecode(name)), attr)

    def _remove_ours(self, rel: str, what: str) -> None:
        path = self._abs(rel)
        self._call(what, lambda s: self._remove_file(s, path, what))

    def cleanup(self, keep: list[dict]) -> None:
        """Remove our temporary files that no resume state still needs.

        This walks the whole remote tree (one listing request per folder).
        """
        wanted = {k.get("tmp") for k in keep if isinstance(k, dict)}
        for prefix, name, attr in self._walk("", "cleanup"):
            if name.startswith(_OURS) and not _is_dir(attr):
                rel = _join_rel(prefix, os.fsdecode(name))
                if rel not in wanted:
                    with contextlib.suppress(RemoteNotFound, PermanentError):
                        self._remove_ours(rel, f"cleanup {rel!r}")

    def discard(self, rel: str, state: dict | None) -> None:
        """Remove the temp file `state` names, and the one a failed send of `rel`
        could not remove (nothing at all in the usual case: no request is made)."""
        tmps = {self._strays.get(rel), state.get("tmp") if state else None}
        for tmp in sorted(t for t in tmps if isinstance(t, str)):
            try:
                self._remove_ours(tmp, f"discard {tmp!r}")
            except (RemoteNotFound, PermanentError) as exc:  # gone, or not ours to remove: not this action's failure
                if not isinstance(exc, RemoteNotFound):
                    log.warning("sftp: cannot remove temporary file %r: %s", tmp, exc)
        self._strays.pop(rel, None)

    def leftovers(self) -> list[str]:
        """Temporary files left on the remote (tests check there are none)."""
        found = []
        for prefix, name, attr in self._walk("", "leftovers"):
            if name.startswith(_OURS):
                found.append(_join_rel(prefix, os.fsdecode(name)))
        return found

    # -- for tests and diagnostics -------------------------------------------
    def sessions(self) -> int:
        """How many SSH connections are open now."""
        async def count() -> int:
            return len([s for s in self._pool.sessions if s.alive()])

        return self._loop.submit(count()).result(self.timeout)

    def extra_info(self, name: str) -> list:
        """asyncssh's get_extra_info(name) of every open connection (tests:
        the socket's options, the cipher in use)."""
        async def get() -> list:
            return [s.conn.get_extra_info(name) for s in self._pool.sessions if s.alive()]

        return self._loop.submit(get()).result(self.timeout)


async def _from_source(fn: Callable[..., T], *args: Any) -> T:
    """A blocking read of a stream's source (a socket), in a worker thread so the loop
    goes on; its errors are the source's (carried through _LocalError, never taken
    for a broken SFTP session)."""
    try:
        return await asyncio.to_thread(fn, *args)
    except Exception as exc:
        raise _LocalError(exc) from exc  # type: ignore[arg-type]


def _keep_for_resume(exc: BaseException) -> bool:
    """A resumable upload keeps its temp file and state after this error:
    stopped or cut off (the next attempt continues), not refused or failed
    its check (that starts over)."""
    if isinstance(exc, _StartOver):
        return False
    return isinstance(exc, TransientError) or not _session_ok(exc)


def _join_rel(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _entry_rel(e: RemoteEntry) -> str:
    return e.rel


def _folder_rel(e: FolderEntry) -> str:
    return e.rel


def _version(st: asyncssh.SFTPAttrs) -> tuple[int, int | None]:
    """(size, mtime in ns) of a file, as _entry() records them: what tells one
    version of a remote file from the next."""
    return st.size or 0, None if st.mtime is None else int(st.mtime) * 1_000_000_000


def _entry(rel: str, st: asyncssh.SFTPAttrs) -> RemoteEntry:
    mtime = None if st.mtime is None else int(st.mtime) * 1_000_000_000
    mode = None if st.permissions is None else statmod.S_IMODE(st.permissions)
    return RemoteEntry(rel, st.size or 0, mtime, mode)


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def _clean_root(root: str) -> str:
    root = (root or "").strip()
    if not root:
        raise ValueError("target: the remote folder is empty")
    if "\x00" in root:
        raise ValueError("target: contains a NUL byte")
    norm = posixpath.normpath(root)
    if ".." in root.split("/"):
        raise ValueError(f"target: {root!r} must not contain '..'")
    return norm


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------
def build(service: dict[str, str], target: str) -> SFTPCon:
    """An SFTPCon from an [sftp] service section and a mapping's target folder.

    Raises ValueError("key: problem") for anything that cannot work.
    """
    cfg = service_values(service, KEYS, "sftp")
    host = cfg["host"].strip()
    if not host:
        raise ValueError("host: required")
    if any(c.isspace() for c in host) or host.startswith("-"):
        raise ValueError(f"host: not a host name: {host!r}")
    key_file = cfg["key_file"].strip()
    if key_file and not os.path.isfile(os.path.expanduser(key_file)):
        raise ValueError(f"key_file: no such file: {key_file!r}")
    if cfg["key_passphrase"] and not key_file:
        raise ValueError("key_passphrase: set only with key_file")
    known = cfg["known_hosts"].strip()
    if not known:
        raise ValueError("known_hosts: required (host keys are always verified)")
    return SFTPCon(
        host,
        target,
        port=keyed("port", cfg["port"], parse_int_range(1, 65535)),
        user=cfg["user"].strip(),
        key_file=key_file,
        key_passphrase=cfg["key_passphrase"],
        password=cfg["password"],
        use_agent=keyed("use_agent", cfg["use_agent"], parse_bool),
        known_hosts=known,
        connections=keyed("connections", cfg["connections"], parse_int_range(1, 64)),
        keepalive=keyed("keepalive", cfg["keepalive"], parse_seconds_range(0, 3600)),
        timeout=keyed("timeout", cfg["timeout"], parse_seconds_range(0.5, 3600)),
    )
