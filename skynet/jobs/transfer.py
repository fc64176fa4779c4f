"""The transfer of ONE item of a job: its source read as a stream, written into
the target through StreamSend, resumed mid-file, verified, classified.

The job runner (skynet/jobs/runner.py) owns the item table, retries and
windows; it calls the TransferItem make_transfer() returns once per attempt:

    transfer = make_transfer("urls:list.txt", target_con)
    result = transfer(item, ctx)      # ItemResult, or raises ItemFailed / TransferStopped

`ctx.resume` is the item's own store: a killed attempt continues mid-file
(HTTP Range + If-Range, FTP REST, ranged remote reads, feeding the target's
resumable upload). `ctx.stop` ends it at a chunk boundary (TransferStopped,
resume state kept). Every error leaves here as ItemFailed with one of the
classes of skynet/jobs/item.py.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import stat
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from connections.contract.xcon import (
    ChecksumMismatch,
    PermanentError,
    RemoteNotFound,
    SendResult,
    Stream,
    StreamOpener,
    StreamSend,
    TransferContext,
    TransientError,
    UnsafePath,
    XCon,
    XConError,
    check_rel,
)
from connections.contract.source import local_file
from skynet.jobs.ftp_source import public_url
from skynet.jobs.item import (
    CHECKSUM,
    FORBIDDEN,
    NOT_FOUND,
    OTHER,
    REFUSED,
    TIMEOUT,
    TOO_LARGE,
    Item,
    ItemFailed,
    ItemResult,
    TransferItem,
    scheme_host,
)
from skynet.transfer.chunks import TransferStopped

if TYPE_CHECKING:
    from skynet.jobs.http_source import HttpSource

log = logging.getLogger("skynet.jobs")
ON_EXISTING = ("skip", "overwrite")
_MD5 = re.compile(r"[0-9a-f]{32}")
READ_BACK = 8 << 20
LISTED_MAX = 200_000  # names of the target kept to skip the per-item stat of a (nearly) empty target


@dataclass(frozen=True)
class Options:
    """How every item of one job is moved."""

    verify: bool = True  # size and MD5 where the list or the source gives them
    on_existing: str = "skip"  # "skip": an identical item already at the target is not moved again
    max_size: int | None = None  # larger items fail as too_large
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    workers: int = 16


class Transfer:
    """make_transfer()'s TransferItem: one per job, shared by its workers (the
    HTTP pool, FTP sessions and the target connection are reused, item after item)."""

    def __init__(self, source_spec: str, target: XCon, opts: Options, *, source_con: XCon | None = None,
                 http: "HttpSource | None" = None) -> None:
        if not isinstance(target, StreamSend):
            raise PermanentError(f"{target.describe()} cannot take streamed items")
        if opts.on_existing not in ON_EXISTING:
            raise ValueError(f"on_existing must be one of {', '.join(ON_EXISTING)}, not {opts.on_existing!r}")
        self.spec, self.target, self.opts = source_spec, target, opts
        self.source_con = source_con
        # local:DIR: the daemon's own send path (sendfile, S3 multipart from the file, resume by
        # size+mtime+inode, mode and mtime kept), not a stream
        self.local_root = source_spec[len("local:"):] if source_spec.startswith("local:") else None
        self._http = http  # made on the first http(s):// item: urllib3 is the `jobs` extra
        self._ftp = None  # made on the first ftp:// item (skynet/jobs/ftp_source.py)
        self._present = _Present(target, LISTED_MAX)
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self.source_con is not None:
            self.source_con.close()
        if self._ftp is not None:
            self._ftp.close()

    # -- one item ----------------------------------------------------------------------
    def __call__(self, item: Item, ctx: TransferContext) -> ItemResult:
        try:
            check_rel(item.dest)
        except UnsafePath as exc:
            raise ItemFailed(OTHER, str(exc), permanent=True) from None
        try:
            if self.opts.on_existing == "skip" and not (ctx.resume.load() or {}):
                same = self._already_there(item)
                if same is not None:
                    return same
            for attempt in (1, 2):
                try:
                    result = self._once(item, ctx)
                    self._present.add(item.dest)
                    return result
                except ChecksumMismatch as exc:  # start that item over, once
                    ctx.resume.clear()
                    if attempt == 2:
                        raise ItemFailed(CHECKSUM, f"{item.source}: {exc}", permanent=True) from None
                    log.info("job: %s: %s; starting it over", item.source, exc)
            raise AssertionError("unreachable")
        except (ItemFailed, TransferStopped) as exc:
            if isinstance(exc, ItemFailed) and exc.permanent:
                self._discard(item, ctx)
            raise
        except Exception as exc:
            failed = classify(exc, public_url(item.source) if "://" in item.source else item.source)
            if failed.permanent:
                self._discard(item, ctx)
            raise failed from exc

    def _once(self, item: Item, ctx: TransferContext) -> ItemResult:
        if self.local_root is not None:
            return self._send_local(item, ctx)
        seen: dict[str, Stream] = {}
        opener = self._checked(item, self._opener(item, ctx), seen)
        want_md5 = item.md5.lower() if self.opts.verify and item.md5 else None
        res = self.target.send_stream(item.dest, opener, ctx, md5=want_md5)
        if want_md5 and res.md5 is None:  # resumed past bytes this attempt did not see
            self._read_back(item, res, want_md5)
        stream = seen.get("stream")
        meta = dict(stream.meta) if stream is not None else {}
        if res.md5:
            meta["md5"] = res.md5
        return ItemResult(size=res.size, etag=res.etag, bytes_sent=res.bytes_sent, meta=meta)

    def _send_local(self, item: Item, ctx: TransferContext) -> ItemResult:
        """One file of a local tree, through target.send(): its size, mtime and mode travel."""
        assert self.local_root is not None
        check_rel(item.source)
        path = os.path.join(self.local_root, item.source)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise ItemFailed(NOT_FOUND, f"{item.source}: not in {self.local_root}", permanent=True) from None
        if not stat.S_ISREG(st.st_mode):
            raise ItemFailed(NOT_FOUND, f"{item.source}: not a regular file any more", permanent=True)
        f = local_file(path, item.dest, st, root=self.local_root)
        if self.opts.max_size is not None and f.size > self.opts.max_size:
            raise ItemFailed(TOO_LARGE, f"{item.source}: {f.size} bytes is over the limit of {self.opts.max_size}",
                             permanent=True)
        try:
            res = self.target.send(f, ctx)
        except TransientError:
            if ctx.stop.is_set():  # send() says "stopped" its own way: a pause, not a failed attempt
                raise TransferStopped(0, 1) from None
            raise
        meta = {"source-url": f"file://{os.path.abspath(path)}", "mtime": str(f.mtime_ns), "mode": f"{f.mode:04o}"}
        return ItemResult(size=res.size, etag=res.etag, bytes_sent=res.bytes_sent, meta=meta)

    def _opener(self, item: Item, ctx: TransferContext) -> StreamOpener:
        """The source of `item` as open_at(offset)."""
        scheme = scheme_host(item.source)[0]
        if scheme in ("http", "https"):
            saved = (ctx.resume.load() or {}).get("version") or None
            return lambda offset: self._http_source().open_at(item.source, offset, saved if offset else None)
        if scheme == "ftp":
            return self._ftp_source().opener(item.source)
        if scheme:
            raise ItemFailed(OTHER, f"{item.source}: unsupported scheme {scheme!r}", permanent=True)
        if self.source_con is None:
            raise ItemFailed(OTHER, f"{item.source}: not a URL, and the job has no source store", permanent=True)
        from skynet.jobs.sources import remote_opener
        return remote_opener(self.source_con, item)

    def _http_source(self) -> "HttpSource":
        with self._lock:
            if self._http is None:
                from skynet.extras import require

                require("jobs", "a job of HTTP URLs")
                from skynet.jobs.http_source import HttpSource
                self._http = HttpSource(connect_timeout=self.opts.connect_timeout, read_timeout=self.opts.read_timeout,
                                        workers=self.opts.workers)
            return self._http

    def _ftp_source(self):  # noqa: ANN202 (made on first use: most jobs have no FTP)
        with self._lock:
            if self._ftp is None:
                from skynet.jobs.ftp_source import FtpSource
                self._ftp = FtpSource(timeout=self.opts.read_timeout)
            return self._ftp

    def _checked(self, item: Item, opener: StreamOpener, seen: dict[str, Stream]) -> StreamOpener:
        """open_at() with the job's limits: the size the list gave (checksum class),
        max_size (too_large) also while reading a stream of unknown size."""
        limit = self.opts.max_size

        def open_at(offset: int) -> Stream:
            stream = opener(offset)
            seen["stream"] = stream
            if limit is not None and stream.size is not None and stream.size > limit:
                stream.close()
                raise ItemFailed(TOO_LARGE, f"{item.source}: {stream.size} bytes is over the limit of {limit}",
                                 permanent=True)
            if self.opts.verify and item.size is not None and stream.size is not None and stream.size != item.size:
                stream.close()
                raise ChecksumMismatch(f"the source has {stream.size} bytes, the list says {item.size}")
            if item.mtime_ns is not None and stream.mtime_ns is None:
                stream.mtime_ns = item.mtime_ns
            if item.mode is not None and stream.mode is None:
                stream.mode = item.mode
            if limit is None or stream.size is not None:
                return stream
            return _capped(stream, limit, item.source)

        return open_at

    def _read_back(self, item: Item, res: SendResult, want: str) -> None:
        """The MD5 of what the target now holds, read back (a resumed item whose
        first bytes this attempt never saw); a mismatch removes it."""
        h = hashlib.md5()
        pos = 0
        while pos < res.size:
            data = self.target.read_range(item.dest, pos, min(READ_BACK, res.size - pos))
            if not data:
                break
            h.update(data)
            pos += len(data)
        if h.hexdigest() != want:
            self.target.delete(item.dest)
            raise ChecksumMismatch(f"MD5 {h.hexdigest()} of the object is not the expected {want}")

    def _already_there(self, item: Item) -> ItemResult | None:
        """ItemResult(skipped=True) when the target holds this item already: the same
        size and the same MD5 (an MD5 ETag) or the same mtime."""
        if not self._present.maybe(item.dest):
            return None
        entry = self.target.stat(item.dest)
        if entry is None:
            return None
        size, md5, mtime = item.size, item.md5, item.mtime_ns
        etag = (entry.etag or "").strip('"').lower()
        by_md5 = md5 is not None and _MD5.fullmatch(etag) is not None
        if size is None or (not by_md5 and mtime is None):  # ask the source (an HTTP HEAD, FTP SIZE/MDTM)
            size2, mtime2 = self._source_stat(item)
            size = size if size is not None else size2
            mtime = mtime if mtime is not None else mtime2
        if size is None or entry.size != size:
            return None
        if by_md5:
            same = etag == (md5 or "").lower()
        else:
            same = (mtime is not None and entry.mtime_ns is not None and not entry.mtime_is_stored
                    and abs(entry.mtime_ns - mtime) < 1_000_000_000)
        if not same:
            return None
        return ItemResult(size=entry.size, etag=entry.etag, bytes_sent=0, skipped=True)

    def _source_stat(self, item: Item) -> tuple[int | None, int | None]:
        """(size, mtime_ns) the source tells without sending the object."""
        scheme = scheme_host(item.source)[0]
        if scheme in ("http", "https"):
            return self._http_source().head(item.source)
        if scheme == "ftp":
            return self._ftp_source().stat(item.source)
        if self.source_con is not None and not scheme:
            entry = self.source_con.stat(item.source)
            if entry is None:
                raise ItemFailed(NOT_FOUND, f"{item.source}: not on the source", permanent=True)
            return entry.size, None if entry.mtime_is_stored else entry.mtime_ns
        return None, None

    def _discard(self, item: Item, ctx: TransferContext) -> None:
        """A permanent failure: what an unfinished upload left on the target goes."""
        state = ctx.resume.load()
        if not state:
            return
        try:
            self.target.discard(item.dest, state)
        except XConError as exc:
            log.warning("job: cannot remove the partial upload of %r: %s", item.dest, exc)
        ctx.resume.clear()


class _Present:
    """Which names the target held when the job's first item ran, from one streamed
    listing: an item whose destination was not there needs no stat (a HEAD per item
    on S3: a quarter of a small item's cost). A target with more than `cap` files is
    not kept (memory): every item is then stat()ed. Names that were there are still
    stat()ed for the comparison (a listing has no mtime of ours on S3)."""

    def __init__(self, target: XCon, cap: int) -> None:
        self.target, self.cap = target, cap
        self._names: set[str] | None = None
        self._loaded = False
        self._lock = threading.Lock()

    def maybe(self, rel: str) -> bool:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._names = self._load()
                    self._loaded = True
        return self._names is None or rel in self._names

    def add(self, rel: str) -> None:
        """`rel` is at the target now (this job put it there). Kept while the set is
        under its cap only (memory stays bounded in a job of millions of items; a job
        never sends one destination twice in a run, so a name not kept costs at most
        a needless send, never a wrong skip)."""
        if self._names is not None and len(self._names) < self.cap:
            with self._lock:
                self._names.add(rel)

    def _load(self) -> set[str] | None:
        names: set[str] = set()
        try:
            for entry in self.target.list(""):
                names.add(entry.rel)
                if len(names) > self.cap:
                    return None
        except XConError as exc:
            log.info("job: cannot list the target (%s); every item is looked up on its own", exc)
            return None
        return names


def _capped(stream: Stream, limit: int, source: str) -> Stream:
    """`stream` (of unknown size) failing as too_large once it passes `limit` bytes."""
    pos = [stream.offset]
    inner = stream.read

    def read(n: int) -> bytes:
        data = inner(n)
        pos[0] += len(data)
        if pos[0] > limit:
            raise ItemFailed(TOO_LARGE, f"{source}: more than the limit of {limit} bytes", permanent=True)
        return data

    return replace(stream, read=read)


def classify(exc: BaseException, source: str) -> ItemFailed:
    """Any error of an attempt as an ItemFailed of the classes in item.py."""
    text = f"{source}: {exc}"
    if isinstance(exc, ItemFailed):
        return exc
    if isinstance(exc, RemoteNotFound):
        return ItemFailed(NOT_FOUND, text, permanent=True)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ItemFailed(TIMEOUT, text, permanent=False)
    if isinstance(exc, ConnectionRefusedError):
        return ItemFailed(REFUSED, text, permanent=False)
    if isinstance(exc, PermissionError):
        return ItemFailed(FORBIDDEN, text, permanent=True)
    if isinstance(exc, PermanentError):
        return ItemFailed(OTHER, text, permanent=True)
    if isinstance(exc, (TransientError, OSError, EOFError)):
        return ItemFailed(OTHER, text, permanent=False)
    return ItemFailed(OTHER, text, permanent=False)


def make_transfer(source_spec: str, target_con: XCon, *, verify: bool = True, on_existing: str = "skip",
                  max_size: int | None = None, connect_timeout: float = 10.0, read_timeout: float = 30.0,
                  workers: int = 16, source_con: XCon | None = None) -> TransferItem:
    """The TransferItem of one job: transfer(item, ctx) -> ItemResult (raises
    ItemFailed or TransferStopped). `source_spec` is the job's `source`
    (`urls:PATH`, `local:DIR`, a remote); `source_con` the connection a remote
    or local source is read through (items' sources are then paths under it).
    Call .close() on the result when the job ends."""
    opts = Options(verify=verify, on_existing=on_existing, max_size=max_size, connect_timeout=connect_timeout,
                   read_timeout=read_timeout, workers=workers)
    if source_spec.startswith("urls:"):
        from skynet.extras import require

        require("jobs", "a job of URLs")  # said once, before any item: not as every item's error
    if source_con is None and not source_spec.startswith("urls:"):
        from skynet.jobs.sources import source_con as make_source_con
        source_con = make_source_con(source_spec)
    return Transfer(source_spec, target_con, opts, source_con=source_con)


def transfer(item: Item, ctx: TransferContext, *, target_con: XCon, source_spec: str = "urls:",
             **kw: object) -> ItemResult:
    """One item without a job (tests, one-off use): make_transfer() for it alone."""
    t = make_transfer(source_spec, target_con, **kw)  # type: ignore[arg-type]
    try:
        return t(item, ctx)
    finally:
        t.close()  # type: ignore[attr-defined]


__all__ = ["make_transfer", "transfer", "Transfer", "Options", "classify"]
