"""skynet/watch/inotify.py, our own inotify layer, on its own: the records, the calls, the faults."""
from __future__ import annotations

import errno
import os
import struct
import threading

import pytest

from skynet.watch import inotify
from skynet.watch.inotify import Inotify, RawEvent, parse_events
from tests.harness import INOTIFY_SYSCTL, inotify_sysctl

MASK = inotify.IN_CREATE | inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO | inotify.IN_DELETE


def _record(wd: int, mask: int, cookie: int, name: bytes, pad: int) -> bytes:
    field = name + b"\0" * pad if name or pad else b""
    return struct.pack("iIII", wd, mask, cookie, len(field)) + field


def test_parse_events_reads_whole_records_and_strips_the_padding():
    buf = (_record(1, inotify.IN_CREATE, 0, b"a.txt", 11)
           + _record(-1, inotify.IN_Q_OVERFLOW, 0, b"", 0)
           + _record(7, inotify.IN_MOVED_FROM | inotify.IN_ISDIR, 42, "é".encode() + b"\xff", 2))
    assert parse_events(buf) == [
        RawEvent(1, inotify.IN_CREATE, 0, b"a.txt"),
        RawEvent(-1, inotify.IN_Q_OVERFLOW, 0, b""),
        RawEvent(7, inotify.IN_MOVED_FROM | inotify.IN_ISDIR, 42, "é".encode() + b"\xff"),
    ]
    assert parse_events(b"") == []


@pytest.fixture
def ino():
    i = Inotify()
    yield i
    i.close()


def _read_until(ino: Inotify, want: int, timeout: float = 10.0) -> list[RawEvent]:
    got: list[RawEvent] = []
    while len(got) < want:
        batch = ino.read(timeout)
        assert batch, f"only {got} within {timeout}s"
        got += batch
    return got


def test_events_of_a_watched_folder(ino, tmp_path):
    wd = ino.add_watch(os.fsencode(tmp_path), MASK)
    assert ino.add_watch(os.fsencode(tmp_path), MASK) == wd  # the same folder: the same watch
    (tmp_path / "f").write_bytes(b"x")
    os.rename(tmp_path / "f", tmp_path / "g")
    (tmp_path / "g").unlink()
    evs = _read_until(ino, 5)
    assert [(e.wd, e.mask, e.name) for e in evs] == [
        (wd, inotify.IN_CREATE, b"f"), (wd, inotify.IN_CLOSE_WRITE, b"f"), (wd, inotify.IN_MOVED_FROM, b"f"),
        (wd, inotify.IN_MOVED_TO, b"g"), (wd, inotify.IN_DELETE, b"g")]
    assert evs[2].cookie == evs[3].cookie != 0  # a move's two halves share a cookie
    ino.rm_watch(wd)
    assert [(e.wd, e.mask) for e in _read_until(ino, 1)] == [(wd, inotify.IN_IGNORED)]
    ino.rm_watch(wd)  # gone already: no error


def test_folder_events_carry_isdir(ino, tmp_path):
    ino.add_watch(os.fsencode(tmp_path), MASK)
    (tmp_path / "d").mkdir()
    (ev,) = _read_until(ino, 1)
    assert ev.mask == inotify.IN_CREATE | inotify.IN_ISDIR and ev.name == b"d"


def test_add_watch_errors_name_the_path(ino, tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        ino.add_watch(os.fsencode(tmp_path / "nope"), MASK)
    assert exc.value.filename == str(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        ino.add_watch(os.fsencode(tmp_path / "file"), MASK | inotify.IN_ONLYDIR)


def test_read_times_out_and_is_interrupted(ino, tmp_path):
    ino.add_watch(os.fsencode(tmp_path), MASK)
    assert ino.read(0) == []
    result: list = []
    reader = threading.Thread(target=lambda: result.append(ino.read(None)))
    reader.start()
    ino.interrupt()
    reader.join(10)
    assert not reader.is_alive() and result == [[]]


def test_close_is_idempotent_and_interrupt_after_close_is_harmless():
    i = Inotify()
    i.close()
    i.close()
    i.interrupt()




@pytest.mark.serial  # sets a machine-wide inotify sysctl: no other daemon may start meanwhile (tests/conftest.py)
@pytest.mark.skipif(os.geteuid() != 0 or not INOTIFY_SYSCTL.exists(), reason="changing inotify limits needs root")
def test_queue_overflow_is_reported(tmp_path):
    with inotify_sysctl("max_queued_events", 8):  # fixed when the instance is made
        i = Inotify()
    try:
        i.add_watch(os.fsencode(tmp_path), MASK)
        for n in range(40):
            (tmp_path / f"f{n}").write_bytes(b"")
        evs = _read_until(i, 9)
        assert len(evs) == 9 and evs[-1] == RawEvent(-1, inotify.IN_Q_OVERFLOW, 0, b"")
    finally:
        i.close()


def test_too_many_instances_is_an_oserror(monkeypatch):
    """inotify_init1 failing (EMFILE: fs.inotify.max_user_instances) raises, with its errno."""
    import ctypes

    real = Inotify()
    real.close()
    libc = inotify._LIBC

    class Failing:
        def __getattr__(self, name):
            return getattr(libc, name)

        @staticmethod
        def inotify_init1(flags):
            ctypes.set_errno(errno.EMFILE)
            return -1

    monkeypatch.setattr(inotify, "_LIBC", Failing())
    with pytest.raises(OSError) as exc:
        Inotify()
    assert exc.value.errno == errno.EMFILE
