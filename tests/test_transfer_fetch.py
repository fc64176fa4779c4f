"""fetch(): one remote file to a local path, ranged, atomic, verified, resumable (skynet/transfer/fetch.py)."""
from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from connections.contract.xcon import RangeInto, RemoteEntry, TransferContext
from skynet.transfer.chunks import ShortChunk, TransferStopped
from skynet.transfer.fetch import PartBusy, VerifyFailed, fetch, part_paths


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


@pytest.mark.parametrize("size,there", [(50_000, False), (1000, True)], ids=["chunked", "one read over a file"])
def test_a_link_at_the_part_name_is_not_followed(tmp_path, pool, size, there):
    data = os.urandom(size)
    dest = str(tmp_path / "f")
    if there:
        open(dest, "wb").write(b"old")  # a one-read file needs the part name only to replace a file
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, part_paths(dest)[0])
    with pytest.raises(OSError):
        fetch(RangedRemote(data), _entry(data), dest, TransferContext(), pool, chunk_size=8192)
    assert victim.read_bytes() == b"keep"


def test_a_one_read_file_into_a_free_name_never_uses_the_part_name(tmp_path, pool):
    """A file of one read lands as an unnamed file linked in place: a link (or another
    fetch's file) at its part name is neither followed nor touched."""
    data = os.urandom(1000)
    dest = str(tmp_path / "f")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, part_paths(dest)[0])
    fetch(RangedRemote(data), _entry(data, hashlib.md5(data).hexdigest()), dest, TransferContext(), pool)
    assert open(dest, "rb").read() == data and victim.read_bytes() == b"keep"
    assert os.path.islink(part_paths(dest)[0])


def test_a_one_read_file_replaces_what_is_there_in_one_step(tmp_path, pool):
    data = os.urandom(1000)
    dest = tmp_path / "f"
    dest.write_bytes(b"older and longer than one line")
    other = tmp_path / "other"
    os.link(dest, other)  # replaced by a rename: the old inode (and this name of it) is left as it was
    fetch(RangedRemote(data), _entry(data), str(dest), TransferContext(), pool)
    assert dest.read_bytes() == data and other.read_bytes() == b"older and longer than one line"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "other"]


@pytest.mark.parametrize("size,there", [(1000, True), (50_000, False)], ids=["one read over a file", "chunked"])
def test_a_part_file_another_fetch_holds_is_left_alone(tmp_path, pool, size, there):
    """Two restores into one folder: the second finds the part file locked and fails that
    file with PartBusy, without truncating or writing the first one's bytes (whose MD5
    may be reading them through a mapping). A file of one read takes the part name only
    to replace a file that is there (it is read before it finds the name busy)."""
    data = os.urandom(size)
    dest = str(tmp_path / "f")
    if there:
        open(dest, "wb").write(b"old")
    part = part_paths(dest)[0]
    with open(part, "wb") as held:
        held.write(b"first fetch's bytes")
        held.flush()
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        remote = RangedRemote(data)
        with pytest.raises(PartBusy, match="another process"):
            fetch(remote, _entry(data), dest, TransferContext(), pool, chunk_size=8192)
        assert (remote.asked == []) is not there and open(part, "rb").read() == b"first fetch's bytes"
    assert open(dest, "rb").read() == b"old" if there else not os.path.exists(dest)
    fetch(RangedRemote(data), _entry(data), dest, TransferContext(), pool, chunk_size=8192)  # once it is free
    assert open(dest, "rb").read() == data


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


class _CountingMD5:
    """hashlib.md5 that tells, through `fed`, how many bytes it has been given so far."""

    def __init__(self, fed: list[int], seen: threading.Event, threshold: int) -> None:
        self.h, self.fed, self.seen, self.threshold = hashlib.md5(), fed, seen, threshold

    def update(self, data) -> None:
        self.h.update(data)
        self.fed[0] += len(data)
        if self.fed[0] >= self.threshold:
            self.seen.set()

    def hexdigest(self) -> str:
        return self.h.hexdigest()


class _PausingRemote(StreamedRemote):
    """Streams chunk 0 in 64 KiB pieces and, half-way through it, waits (at most `patience` s)
    for `seen`: whether the MD5 had started on chunk 0 before its last byte arrived."""

    def __init__(self, data: bytes, seen: threading.Event, patience: float) -> None:
        super().__init__(data, piece=64 << 10)
        self.seen, self.patience = seen, patience
        self.hashed_mid_chunk: bool | None = None

    def read_range_into(self, rel, offset, length, out, *, expect=None) -> int:
        if offset != 0:
            return super().read_range_into(rel, offset, length, out, expect=expect)
        view = memoryview(self.read_range(rel, offset, length, expect=expect))
        half = len(view) // 2
        for i in range(0, half, self.piece):
            out(view[i: min(i + self.piece, half)])
        self.hashed_mid_chunk = self.seen.wait(self.patience)
        for i in range(half, len(view), self.piece):
            out(view[i: i + self.piece])
        return len(view)


def test_the_md5_follows_the_bytes_written_while_a_chunk_still_arrives(tmp_path, pool, monkeypatch):
    """The MD5 is taken on a thread of its own right behind the written bytes, not when a
    chunk is finished and recorded (it used to wait behind the saver's fsync and trail
    the download by seconds): half of chunk 0 on the file is hashed before the rest comes."""
    import types

    from skynet.transfer import fetch as fetch_mod

    fed, seen = [0], threading.Event()
    chunk = 4 << 20  # the sinks report their front every MiB (REPORT_STEP)
    monkeypatch.setattr(fetch_mod, "hashlib", types.SimpleNamespace(md5=lambda: _CountingMD5(fed, seen, 1 << 20)))
    data = os.urandom(2 * chunk + 1000)
    remote = _PausingRemote(data, seen, patience=20.0)
    dest = str(tmp_path / "big.bin")
    fetch(remote, _entry(data, hashlib.md5(data).hexdigest()), dest, TransferContext(), pool,
          chunk_size=chunk, concurrency=1)
    assert remote.hashed_mid_chunk is True
    assert open(dest, "rb").read() == data and fed[0] == len(data)


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "read-back"])
def test_the_md5_is_of_the_bytes_on_disk_not_of_the_bytes_received(tmp_path, pool, monkeypatch, mapped):
    """The MD5 reads the part file (through a mapping, or with pread where the file cannot
    be mapped): a byte that reached the file other than it arrived (here pwrite flips one)
    fails the check, and nothing lands; the right bytes pass either way."""
    import errno
    import mmap

    if not mapped:
        def no_mmap(*_a, **_k):
            raise OSError(errno.ENODEV, "no mmap on this file system")
        monkeypatch.setattr(mmap, "mmap", no_mmap)
    data = os.urandom(100_000)
    good = str(tmp_path / "good")
    fetch(StreamedRemote(data, piece=1000), _entry(data, hashlib.md5(data).hexdigest()), good, TransferContext(),
          pool, chunk_size=8192, concurrency=3)
    assert open(good, "rb").read() == data
    real_pwrite = os.pwrite

    def flipping(fd: int, piece, pos: int) -> int:
        if pos <= 3 * 8192 < pos + len(piece):
            spoilt = bytearray(piece)
            spoilt[3 * 8192 - pos] ^= 0xFF
            return real_pwrite(fd, spoilt, pos)
        return real_pwrite(fd, piece, pos)

    monkeypatch.setattr(os, "pwrite", flipping)
    dest = str(tmp_path / "f")
    with pytest.raises(VerifyFailed):
        fetch(StreamedRemote(data, piece=1000), _entry(data, hashlib.md5(data).hexdigest()), dest, TransferContext(),
              pool, chunk_size=8192, concurrency=3)
    assert not os.path.exists(dest) and not os.path.exists(part_paths(dest)[0])


class _FailingRemote(RangedRemote):
    """Fails the ranged read at `fail_at` (a network error) once the read at `after` is served."""

    def __init__(self, data: bytes, fail_at: int, after: int) -> None:
        super().__init__(data)
        self.fail_at, self.after = fail_at, after
        self.served = threading.Event()

    def read_range(self, rel, offset, length, *, expect=None) -> bytes:
        if offset == self.fail_at:
            assert self.served.wait(20.0)
            raise ConnectionResetError("the connection broke")
        got = super().read_range(rel, offset, length, expect=expect)
        if offset == self.after:
            self.served.set()
        return got


def test_a_resumed_fetch_hashes_kept_chunks_after_a_gap_from_disk(tmp_path, pool):
    """Chunks kept from an attempt that failed on chunk 1 (0, 2, 3... finished) are hashed
    from the file around the one fetched again; a kept chunk after the gap that went bad
    on disk fails the check. And a failed fetch leaves no MD5 thread behind."""
    data = os.urandom(100_000)
    md5 = hashlib.md5(data).hexdigest()
    for spoil in (False, True):
        dest = str(tmp_path / f"f{spoil}")
        with pytest.raises(ConnectionResetError):
            fetch(_FailingRemote(data, fail_at=8192, after=2 * 8192), _entry(data, md5), dest, TransferContext(), pool,
                  chunk_size=8192, concurrency=3)
        assert not any(t.name == "fetch-md5" for t in threading.enumerate())
        if spoil:
            with open(part_paths(dest)[0], "r+b") as fh:
                fh.seek(2 * 8192)
                fh.write(b"\0" * 10)  # chunk 2, kept as finished
        again = RangedRemote(data)
        if spoil:
            with pytest.raises(VerifyFailed):
                fetch(again, _entry(data, md5), dest, TransferContext(), pool, chunk_size=8192, concurrency=3)
            assert not os.path.exists(dest)
        else:
            fetch(again, _entry(data, md5), dest, TransferContext(), pool, chunk_size=8192, concurrency=3)
            assert open(dest, "rb").read() == data
        assert 8192 in again.asked and 2 * 8192 not in again.asked  # chunk 1 fetched again, chunk 2 kept
