"""Reading a source Stream into a target: what every StreamSend backend shares.

Why here: local, S3 and SFTP each write a stream their own way (a temp file at
an offset, multipart parts, a remote temp file), but all of them must read the
stream in order, hash what they saw, check its end against its size and an
expected MD5, and decide whether an earlier attempt may be continued. Written
once, a backend cannot forget one of these checks.
"""
from __future__ import annotations

import hashlib

from connections.contract.xcon import ChecksumMismatch, Stream, StreamOpener, TransientError


class Feed:
    """A Stream read in order: counts the position, hashes what it reads when
    the stream starts at 0, and checks its end (`finish`). `head` is bytes
    already read from the stream (they come first)."""

    def __init__(self, stream: Stream, head: bytes = b"") -> None:
        self.stream = stream
        self.pos = stream.offset
        self._head = memoryview(head)
        self._md5 = hashlib.md5() if stream.offset == 0 and not stream.checked else None
        self.seen: str | None = None  # the MD5 finish() found (None: began mid-file, or `checked`)

    def fill(self, view: memoryview) -> int:
        """Fill `view` with the next bytes; fewer only at the stream's end."""
        n = 0
        while n < len(view):
            if self._head:
                take = min(len(self._head), len(view) - n)
                view[n:n + take] = self._head[:take]
                self._head = self._head[take:]
                n += take
                continue
            data = self.stream.read(len(view) - n)
            if not data:
                break
            view[n:n + len(data)] = data
            n += len(data)
        if self._md5 is not None:
            self._md5.update(view[:n])
        self.pos += n
        return n

    def finish(self, md5: str | None) -> str | None:
        """At the end: the stream held exactly its size and, when `md5` is given
        and this feed saw every byte, those bytes; the MD5 seen (None when the
        stream started mid-file)."""
        check_end(self.stream, self.pos)
        seen = self._md5.hexdigest() if self._md5 is not None else None
        check_md5(seen, md5)
        self.seen = seen
        return seen


def check_end(stream: Stream, pos: int) -> None:
    """`pos` bytes were read: the stream must end there, exactly at its size."""
    size = stream.size
    if size is not None:
        if pos < size:
            raise TransientError(f"the source ended at byte {pos} of {size}")
        if pos > size or stream.read(1):
            raise TransientError(f"the source sent more than its {size} bytes (it changed)")


def check_md5(seen: str | None, want: str | None) -> None:
    """ChecksumMismatch when both are known and differ."""
    if seen and want and seen.lower() != want.lower():
        raise ChecksumMismatch(f"MD5 {seen} of the bytes received is not the expected {want.lower()}")


def reopen(open_at: StreamOpener, offset: int, saved: dict | None) -> tuple[Stream, bool]:
    """The source from `offset` (where an earlier attempt, `saved`, got to), or
    from 0: (stream, resumed). Not resumed when there is nothing to continue,
    when the source answered from another offset (it ignored the range, or the
    object changed: HTTP If-Range), or when it is not the version `saved`
    recorded (or cannot name its version): two versions are never stitched."""
    stream = open_at(offset)
    if offset <= 0 or saved is None:
        return stream, False
    same = (stream.offset == offset and bool(stream.version) and stream.version == saved.get("version")
            and stream.size == saved.get("size"))
    if same:
        return stream, True
    if stream.offset != 0:
        stream.close()
        stream = open_at(0)
    return stream, False
