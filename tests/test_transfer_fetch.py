"""fetch(): one remote file to a local path, ranged, atomic, verified, resumable (skynet/transfer/fetch.py)."""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from connections.contract.xcon import RangeInto, RemoteEntry, TransferContext
from skynet.transfer.chunks import ShortChunk, TransferStopped
from skynet.transfer.fetch import VerifyFailed, fetch, part_paths


class RangedRemote:
    """A remote holding one file; counts the ranges asked for; may stop the transfer after some."""

    def __init__(self, data: bytes, stop_after: int | None = None, ctx: TransferContext | None = None) -> None:
        self.data, self.stop_after, self.ctx = data, stop_after, ctx
        self.asked: list[int] = []
        self.lock = threading.Lock()

    def read_range(self, rel: str, offset: int, length: int, *, expect: RemoteEntry | None = None) -> bytes:
        assert expect is not None  # every range pinned to the version listed
        with self.lock:
            self.asked.append(offset)
            if self.stop_after is not None and len(self.asked) >= self.stop_after and self.ctx is not None:
                self.ctx.stop.set()
        return self.data[offset: offset + length]


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as p:
        yield p


def _entry(data: bytes, etag: str | None = None) -> RemoteEntry:
    return RemoteEntry(rel="a/big.bin", size=len(data), mtime_ns=1_700_000_000_000_000_000, etag=etag)


def test_fetch_lands_the_whole_file_atomically_and_checks_its_md5(tmp_path, pool):
    data = os.urandom(100_000)
    dest = str(tmp_path / "big.bin")
    got = fetch(RangedRemote(data), _entry(data, hashlib.md5(data).hexdigest()), dest, TransferContext(), pool,
                chunk_size=8192, concurrency=3)
    assert got == len(data) and open(dest, "rb").read() == data
    assert not any(os.path.exists(p) for p in part_paths(dest))


def test_a_killed_fetch_resumes_without_fetching_a_finished_chunk_again(tmp_path, pool):
    data = os.urandom(100_000)
    dest = str(tmp_path / "big.bin")
    ctx = TransferContext()
    first = RangedRemote(data, stop_after=5, ctx=ctx)
    with pytest.raises(TransferStopped):
        fetch(first, _entry(data), dest, ctx, pool, chunk_size=8192, concurrency=2)
    assert not os.path.exists(dest)  # nothing half-written where the file belongs
    again = RangedRemote(data)
    got = fetch(again, _entry(data), dest, TransferContext(), pool, chunk_size=8192, concurrency=2)
    assert open(dest, "rb").read() == data
    assert not set(again.asked) & set(first.asked)  # no finished chunk fetched twice
    assert got == len(data) - 8192 * len(first.asked)  # the last, short chunk was never among the first ones


def test_another_version_on_the_remote_starts_over(tmp_path, pool):
    data = os.urandom(50_000)
    dest = str(tmp_path / "f")
    ctx = TransferContext()
    with pytest.raises(TransferStopped):
        fetch(RangedRemote(data, stop_after=2, ctx=ctx), _entry(data), dest, ctx, pool, chunk_size=8192, concurrency=1)
    newer = os.urandom(50_000)
    entry = RemoteEntry(rel="a/big.bin", size=len(newer), mtime_ns=1_800_000_000_000_000_000)
    remote = RangedRemote(newer)
    fetch(remote, entry, dest, TransferContext(), pool, chunk_size=8192, concurrency=2)
    assert open(dest, "rb").read() == newer and len(remote.asked) == 7


def test_bytes_that_fail_the_hash_never_land(tmp_path, pool):
    data = os.urandom(20_000)
    dest = str(tmp_path / "f")
    with pytest.raises(VerifyFailed):
        fetch(RangedRemote(data), _entry(data, "0" * 32), dest, TransferContext(), pool, chunk_size=8192)
    assert not os.path.exists(dest) and not os.path.exists(part_paths(dest)[1])


def test_a_link_at_the_part_name_is_not_followed(tmp_path, pool):
    data = os.urandom(1000)
    dest = str(tmp_path / "f")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, part_paths(dest)[0])
    with pytest.raises(OSError):
        fetch(RangedRemote(data), _entry(data), dest, TransferContext(), pool)
    assert victim.read_bytes() == b"keep"


def test_the_md5_taken_while_chunks_arrive_covers_the_chunks_kept_from_before(tmp_path, pool):
    """The MD5 is taken in order as chunks land (no second pass): a resumed fetch hashes
    the kept chunks too, so a kept chunk whose bytes went bad on disk fails the check."""
    data = os.urandom(100_000)
    md5 = hashlib.md5(data).hexdigest()
    for spoil in (False, True):
        dest = str(tmp_path / f"f{spoil}")
        ctx = TransferContext()
        with pytest.raises(TransferStopped):
            fetch(RangedRemote(data, stop_after=4, ctx=ctx), _entry(data, md5), dest, ctx, pool, chunk_size=8192,
                  concurrency=1)
        if spoil:
            with open(part_paths(dest)[0], "r+b") as fh:
                fh.write(b"\0" * 10)  # chunk 0, kept as finished
        if spoil:
            with pytest.raises(VerifyFailed):
                fetch(RangedRemote(data), _entry(data, md5), dest, TransferContext(), pool, chunk_size=8192)
            assert not os.path.exists(dest)
        else:
            fetch(RangedRemote(data), _entry(data, md5), dest, TransferContext(), pool, chunk_size=8192)
            assert open(dest, "rb").read() == data


class StreamedRemote(RangedRemote, RangeInto):
    """A remote whose ranged reads come in pieces of `piece` bytes (RangeInto), as an S3 GET's body arrives."""

    def __init__(self, data: bytes, piece: int, short_at: int | None = None) -> None:
        super().__init__(data)
        self.piece, self.short_at = piece, short_at
        self.pieces = 0

    def read_range_into(self, rel, offset, length, out, *, expect=None) -> int:
        data = self.read_range(rel, offset, length, expect=expect)
        if self.short_at is not None and offset == self.short_at:
            data = data[: len(data) // 2]  # the remote got shorter under this range
        view = memoryview(data)
        for i in range(0, len(view), self.piece):
            out(view[i: i + self.piece])
            self.pieces += 1
        return len(data)


def test_a_streamed_range_is_written_piece_by_piece_at_its_offset(tmp_path, pool):
    data = os.urandom(100_000)
    dest = str(tmp_path / "big.bin")
    remote = StreamedRemote(data, piece=1000)
    got = fetch(remote, _entry(data, hashlib.md5(data).hexdigest()), dest, TransferContext(), pool,
                chunk_size=8192, concurrency=3)
    assert got == len(data) and open(dest, "rb").read() == data
    assert remote.pieces >= len(data) // 1000  # it did come in pieces
    short = StreamedRemote(data, piece=1000, short_at=8192 * 2)
    with pytest.raises(ShortChunk):
        fetch(short, _entry(data), str(tmp_path / "short.bin"), TransferContext(), pool, chunk_size=8192, concurrency=3)
    assert not os.path.exists(tmp_path / "short.bin")
