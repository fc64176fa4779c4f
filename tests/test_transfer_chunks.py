"""The one chunk scheduler (skynet/transfer/chunks.py), driven by in-memory backends.

What it owes every backend: each chunk moved once with the right bytes and
offset, never more than `concurrency` in flight, resume that skips (or checks)
kept chunks, progress that never goes back and charges the bandwidth limit only
for bytes moved now, a clean stop, the first error re-raised after every chunk
thread has ended, and a local file that changes size caught.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from connections.contract.xcon import TransferContext
from skynet.transfer.chunks import (
    Plan, ShortChunk, SourceChanged, StaleChunk, TransferStopped, download, upload,
)


class MemWriter:
    """A remote that keeps each chunk it is given, and counts how many run at once."""

    def __init__(self, fail_at: int | None = None, gate: threading.Event | None = None) -> None:
        self.chunks: dict[int, tuple[int, bytes]] = {}
        self.fail_at, self.gate = fail_at, gate
        self.running = self.most = 0
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def write_chunk(self, n: int, offset: int, data: memoryview, sent) -> str:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            if self.gate is not None:
                self.gate.wait(10)
            if n == self.fail_at:
                raise ConnectionError(f"chunk {n} refused")
            blob = bytes(data)
            for i in range(0, len(blob), 1000):
                sent(min(1000, len(blob) - i))
            self.chunks[n] = (offset, blob)
            return hashlib.md5(blob).hexdigest()
        finally:
            with self.lock:
                self.running -= 1


def _file(tmp_path, size: int) -> tuple[int, bytes]:
    data = os.urandom(size)
    p = tmp_path / "src"
    p.write_bytes(data)
    return os.open(p, os.O_RDONLY), data


def _joined(chunks: dict[int, tuple[int, bytes]]) -> bytes:
    return b"".join(blob for _n, (_off, blob) in sorted(chunks.items()))


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as p:
        yield p


def test_every_chunk_is_sent_once_with_its_offset(tmp_path, pool):
    fd, data = _file(tmp_path, 10_500)
    w = MemWriter()
    seen: list[int] = []
    caller = threading.current_thread().name
    calls: set[str] = set()

    def on_chunk(n: int, token: str) -> None:
        calls.add(threading.current_thread().name)
        seen.append(n)

    tokens = upload(fd, Plan(10_500, 1000, 3), w, TransferContext(), pool, on_chunk=on_chunk)
    assert sorted(w.chunks) == list(range(11))
    assert all(off == n * 1000 for n, (off, _b) in w.chunks.items())
    assert _joined(w.chunks) == data
    assert tokens == {n: hashlib.md5(b).hexdigest() for n, (_o, b) in w.chunks.items()}
    assert sorted(seen) == list(range(11)) and calls == {caller}  # resume saves stay in the caller's thread
    assert w.most <= 3


def test_never_more_chunks_in_flight_than_planned(tmp_path, pool):
    fd, _data = _file(tmp_path, 8_000)
    gate = threading.Event()
    w = MemWriter(gate=gate)
    t = threading.Thread(target=upload, args=(fd, Plan(8_000, 1000, 2), w, TransferContext(), pool))
    t.start()
    deadline = time.monotonic() + 10
    while w.running < 2 and time.monotonic() < deadline:  # both places taken, both writers held
        time.sleep(0.01)
    assert w.running == 2
    gate.set()
    t.join(10)
    assert w.most == 2 and len(w.chunks) == 8


def test_resume_skips_kept_chunks_and_charges_only_new_bytes(tmp_path, pool):
    fd, data = _file(tmp_path, 5_000)
    charged: list[int] = []
    shown: list[int] = []
    ctx = TransferContext(progress=lambda d, t: shown.append(d), throttle=charged.append)
    w = MemWriter()
    kept = {0: "a", 1: "b", 3: "d"}
    tokens = upload(fd, Plan(5_000, 1000, 2), w, ctx, pool, done=kept)
    assert sorted(w.chunks) == [2, 4]
    assert tokens[0] == "a" and tokens[3] == "d" and set(tokens) == set(range(5))
    assert sum(charged) == 2_000  # the resumed 3,000 bytes are shown, not charged to the bandwidth limit
    assert shown[0] == 3_000 and shown[-1] == 5_000 and shown == sorted(shown)


def test_kept_chunks_are_checked_when_asked(tmp_path, pool):
    fd, data = _file(tmp_path, 3_000)
    checked: dict[int, bytes] = {}

    def check(n: int, view: memoryview, token: str) -> bool:
        checked[n] = bytes(view)
        return token == hashlib.md5(view).hexdigest()

    good = {0: hashlib.md5(data[:1000]).hexdigest()}
    upload(fd, Plan(3_000, 1000, 2), MemWriter(), TransferContext(), pool, done=good, check_done=check)
    assert checked == {0: data[:1000]}
    with pytest.raises(StaleChunk):
        upload(fd, Plan(3_000, 1000, 2), MemWriter(), TransferContext(), pool, done={1: "0" * 32}, check_done=check)


def test_the_first_error_comes_back_after_every_chunk_ended(tmp_path, pool):
    fd, _data = _file(tmp_path, 20_000)
    w = MemWriter(fail_at=3)
    saved: list[int] = []
    with pytest.raises(ConnectionError, match="chunk 3 refused"):
        upload(fd, Plan(20_000, 1000, 3), w, TransferContext(), pool, on_chunk=lambda n, t: saved.append(n))
    assert w.running == 0  # nothing still writing behind the caller's back
    assert 3 not in w.chunks and len(w.chunks) < 20
    assert sorted(saved) == sorted(w.chunks)  # every finished chunk was handed over for resume


def test_stop_finishes_chunks_in_flight_and_starts_no_more(tmp_path, pool):
    fd, _data = _file(tmp_path, 20_000)
    ctx = TransferContext()
    saved: list[int] = []

    class Stopping(MemWriter):
        def write_chunk(self, n, offset, data, sent):
            if n == 4:
                ctx.stop.set()
            return super().write_chunk(n, offset, data, sent)

    w = Stopping()
    with pytest.raises(TransferStopped) as info:
        upload(fd, Plan(20_000, 1000, 2), w, ctx, pool, on_chunk=lambda n, t: saved.append(n))
    assert 4 in w.chunks and max(w.chunks) <= 6
    assert info.value.finished == len(w.chunks) == len(saved) and info.value.count == 20


def test_a_file_that_shrinks_or_grows_is_caught(tmp_path, pool):
    fd, _data = _file(tmp_path, 3_000)
    with pytest.raises(SourceChanged, match="shorter"):
        upload(fd, Plan(4_000, 1000, 2), MemWriter(), TransferContext(), pool)
    with pytest.raises(SourceChanged, match="grew"):
        upload(fd, Plan(2_500, 1000, 2), MemWriter(), TransferContext(), pool)


def test_connection_wide_slots_bound_chunks_across_transfers(tmp_path, pool):
    fd, _data = _file(tmp_path, 6_000)
    slots = threading.BoundedSemaphore(1)
    w = MemWriter()
    upload(fd, Plan(6_000, 1000, 4), w, TransferContext(), pool, slots=slots)
    assert w.most == 1 and len(w.chunks) == 6
    assert slots.acquire(blocking=False)  # every slot given back


def test_an_empty_file_is_one_empty_chunk(tmp_path, pool):
    fd, _data = _file(tmp_path, 0)
    w = MemWriter()
    assert set(upload(fd, Plan(0, 1000, 2), w, TransferContext(), pool)) == {0}
    assert w.chunks == {0: (0, b"")}


class MemReader:
    def __init__(self, data: bytes, short_at: int | None = None) -> None:
        self.data, self.short_at = data, short_at
        self.asked: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def read_chunk(self, n: int, offset: int, length: int, got) -> bytes:
        with self.lock:
            self.asked.append((offset, length))
        blob = self.data[offset: offset + length]
        if n == self.short_at:
            blob = blob[:-1]
        got(len(blob))
        return blob


def test_download_writes_every_range_in_place(tmp_path, pool):
    data = os.urandom(10_001)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    r = MemReader(data)
    shown: list[int] = []
    download(r, Plan(len(data), 1000, 3), out, TransferContext(progress=lambda d, t: shown.append(d)), pool)
    assert (tmp_path / "out").read_bytes() == data
    assert sorted(r.asked) == [(i * 1000, min(1000, len(data) - i * 1000)) for i in range(11)]
    assert shown[-1] == len(data)


def test_download_resume_fetches_no_finished_chunk_again(tmp_path, pool):
    data = os.urandom(5_000)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(out, data[:2000], 0)
    r = MemReader(data)
    saved: list[int] = []
    download(r, Plan(5_000, 1000, 2), out, TransferContext(), pool, done={0, 1}, on_chunk=saved.append)
    assert sorted(r.asked) == [(2000, 1000), (3000, 1000), (4000, 1000)]
    assert sorted(saved) == [2, 3, 4]
    assert (tmp_path / "out").read_bytes() == data


def test_download_of_a_remote_that_shrank_fails(tmp_path, pool):
    data = os.urandom(3_000)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    with pytest.raises(ShortChunk):
        download(MemReader(data, short_at=1), Plan(3_000, 1000, 2), out, TransferContext(), pool)


def test_a_stop_while_waiting_for_a_slot_gives_back_only_what_it_took(tmp_path, pool):
    """Another transfer holds the connection's one slot; this one waits for it, and is
    stopped meanwhile: it must not give back a slot it never took (an S3 multipart send
    raised "Semaphore released too many times" instead of its own error, under load)."""
    fd, _data = _file(tmp_path, 6_000)
    slots = threading.BoundedSemaphore(1)
    assert slots.acquire(blocking=False)  # held by another transfer
    ctx = TransferContext()
    w = MemWriter()
    caught: list[BaseException] = []

    def run() -> None:
        try:
            upload(fd, Plan(6_000, 1000, 3), w, ctx, pool, slots=slots)
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(0.5)  # waiting for the slot (no chunk can start)
    assert t.is_alive() and not w.chunks
    ctx.stop.set()
    t.join(10)
    assert [type(e) for e in caught] == [TransferStopped]
    slots.release()  # the other transfer gives its slot back: exactly one was taken, so no ValueError
    assert slots.acquire(blocking=False) and not slots.acquire(blocking=False)


class PieceMeter:
    """A throttle and a remote's pieces, side by side: each piece checks, as it is about
    to go, that the bandwidth limit was already charged for it (take before, not after)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.charged = self.moved = 0
        self.short: list[tuple[int, int]] = []  # (moved with this piece, charged) where charged fell short

    def throttle(self, n: int) -> None:
        with self.lock:
            self.charged += n

    def piece(self, n: int) -> None:
        with self.lock:
            self.moved += n
            if self.moved > self.charged:
                self.short.append((self.moved, self.charged))


def test_the_bandwidth_limit_is_taken_before_each_piece_of_an_upload_and_a_download(tmp_path, pool):
    # Old code: the throttle was charged only after each piece had gone, so the first piece
    # of every chunk in flight went out free (short == [(1000, 0), ...]).
    fd, data = _file(tmp_path, 8_000)
    m = PieceMeter()

    class Writer(MemWriter):
        def write_chunk(self, n, offset, view, sent):
            for i in range(0, len(view), 250):
                m.piece(min(250, len(view) - i))
                sent(min(250, len(view) - i))
            return ""

    upload(fd, Plan(8_000, 1000, 4), Writer(), TransferContext(throttle=m.throttle), pool)
    assert m.short == [] and m.charged == m.moved == 8_000

    m = PieceMeter()

    class Reader(MemReader):
        def read_chunk(self, n, offset, length, got):
            for i in range(0, length, 250):
                m.piece(min(250, length - i))
                got(min(250, length - i))
            return self.data[offset: offset + length]

    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    download(Reader(data), Plan(len(data), 1000, 4), out, TransferContext(throttle=m.throttle), pool)
    assert m.short == [] and m.charged == m.moved == 8_000


def test_a_single_stream_send_takes_its_first_piece_before_it_goes():
    # A connection that reports after each piece (S3's PUT, a local copy): begin() took the
    # first piece, each report the next. Old code: TransferContext had no begin(), and
    # report() charged only what had gone.
    m = PieceMeter()
    ctx = TransferContext(throttle=m.throttle)
    size, piece = 5 * (1 << 20) + 123, 1 << 19
    ctx.begin(size)
    done = 0
    while done < size:
        n = min(piece, size - done)
        m.piece(n)
        done += n
        ctx.report(done, size)
    assert m.short == [] and m.charged == m.moved == size  # nothing taken that was not sent
