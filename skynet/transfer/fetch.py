"""Fetch one remote file to a local path: ranged, parallel, atomic, verified, resumable.

Restore and migrations between stores read large files back. Each goes
through here, so each gets the same guarantees:

* ranged and parallel: chunks.download() runs `concurrency` ranged reads of
  `chunk_size` bytes at once (a backend only reads one range);
* one version: every range is read with `expect=entry`, so an object replaced
  on the remote mid-download raises RemoteChanged instead of stitching two
  versions into one file;
* atomic: bytes go to a hidden part file beside the destination, which is
  fsynced and renamed over it only when complete and checked;
* verified: the size always, the MD5 where the remote's hash is a plain MD5
  (an S3 single-PUT ETag);
* resumable: finished chunks are listed in a small state file beside the part
  file (written atomically after each chunk); after kill -9 the same call
  fetches only the chunks it lacks, and only if the remote is still the same
  version (size, mtime, hash) -- else it starts over.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from concurrent.futures import Executor

from connections.contract.xcon import RemoteEntry, TransferContext, XCon
from skynet.state.atomicfile import write_atomic
from skynet.transfer.chunks import Meter, Plan, download

CHUNK = 16 << 20
CONCURRENCY = 4
PART_SUFFIX = ".skynet-part"
_MD5 = re.compile(r"[0-9a-f]{32}")


class VerifyFailed(Exception):
    """The fetched bytes are not the remote file's (size or hash differ)."""


class _Ranged:
    """ChunkReader over a connection's read_range, pinned to one version."""

    def __init__(self, con: XCon, entry: RemoteEntry) -> None:
        self.con, self.entry = con, entry

    def read_chunk(self, n: int, offset: int, length: int, got: Meter) -> bytes:
        data = self.con.read_range(self.entry.rel, offset, length, expect=self.entry)
        got(len(data))
        return data


def part_paths(dest: str) -> tuple[str, str]:
    """The hidden part file and its resume state, beside `dest`."""
    folder, name = os.path.split(dest)
    part = os.path.join(folder, "." + name + PART_SUFFIX)
    return part, part + ".json"


def _identity(entry: RemoteEntry, chunk_size: int) -> dict:
    return {"rel": entry.rel, "size": entry.size, "mtime_ns": entry.mtime_ns, "etag": entry.etag,
            "chunk": chunk_size}


def _load_done(state_path: str, ident: dict, count: int) -> set[int]:
    """Chunks an earlier attempt finished for this very version; else none."""
    try:
        with open(state_path, "rb") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return set()
    if not isinstance(state, dict) or state.get("ident") != ident:
        return set()
    return {n for n in state.get("done", []) if isinstance(n, int) and 0 <= n < count}


def fetch(con: XCon, entry: RemoteEntry, dest: str, ctx: TransferContext, pool: Executor, *,
          chunk_size: int = CHUNK, concurrency: int = CONCURRENCY) -> int:
    """Make local `dest` hold the remote file `entry` describes; return the bytes fetched now.

    `dest`'s folder must exist and be the caller's to write in (restore checks
    where it writes). Raises what the connection raises (RemoteChanged when the
    remote file is replaced meanwhile: the caller stats again and calls again),
    TransferStopped on ctx.stop (the next call resumes), VerifyFailed.
    """
    plan = Plan(entry.size, chunk_size, concurrency)
    part, state_path = part_paths(dest)
    ident = _identity(entry, chunk_size)
    done = _load_done(state_path, ident, plan.count)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(part, flags, 0o600)
    try:
        if not done:
            os.ftruncate(fd, 0)

        def saved(n: int) -> None:
            done.add(n)
            os.fsync(fd)  # the chunk is on disk before the state says so
            write_atomic(state_path, json.dumps({"ident": ident, "done": sorted(done)}), sync=False)

        before = plan.bytes_in(done)
        download(_Ranged(con, entry), plan, fd, ctx, pool, done=set(done), on_chunk=saved)
        os.ftruncate(fd, entry.size)  # a resumed part file may hold more (never the case, cheap to make sure)
        try:
            _verify(fd, entry)
        except VerifyFailed:
            discard(dest)  # never resume from bytes that failed the check
            raise
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, dest)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path)
    return entry.size - before


def _verify(fd: int, entry: RemoteEntry) -> None:
    """Size always; the MD5 when the remote's hash is one."""
    size = os.fstat(fd).st_size
    if size != entry.size:
        raise VerifyFailed(f"{entry.rel}: fetched {size} bytes, the remote has {entry.size}")
    if entry.etag and _MD5.fullmatch(entry.etag):
        h = hashlib.md5()
        pos = 0
        while chunk := os.pread(fd, CHUNK, pos):
            h.update(chunk)
            pos += len(chunk)
        if h.hexdigest() != entry.etag:
            raise VerifyFailed(f"{entry.rel}: MD5 {h.hexdigest()} of the fetched bytes is not the remote's {entry.etag}")


def discard(dest: str) -> None:
    """Forget an unfinished fetch of `dest` (its part file and state)."""
    for path in part_paths(dest):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
