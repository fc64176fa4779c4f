"""Resource limits: the bandwidth limit (and its schedule) and the daemon's own priorities."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from skynet.transfer.throttle import Schedule, Throttle, parse_rate
from tests.harness import Daemon, tree, wait_converged, write_config


def at(y, mo, d, h, mi):
    return time.mktime((y, mo, d, h, mi, 0, 0, 0, -1))


def test_rates_and_schedules():
    assert parse_rate("512k") == 512 * 1024 and parse_rate("2M") == 2 * 1024**2 and parse_rate("off") is None
    s = Schedule("08:00,2M 18:00,off")
    assert s.rate_at(at(2026, 11, 23, 9, 0)) == 2 * 1024**2
    assert s.rate_at(at(2026, 11, 23, 19, 0)) is None
    assert s.rate_at(at(2026, 11, 23, 3, 0)) is None  # wraps from yesterday's 18:00
    w = Schedule("Mon-Fri 08:00,512k 18:00,off Sat,Sun 00:00,off")
    assert w.rate_at(at(2026, 11, 23, 10, 0)) == 512 * 1024  # a Monday
    assert w.rate_at(at(2026, 11, 28, 10, 0)) is None  # a Saturday
    for bad in ("fast", "25:00,1M", "08:00,lots", "Funday 08:00,1M"):
        with pytest.raises(ValueError):
            Schedule(bad)


@pytest.mark.serial  # wall-clock timing: not beside the parallel workers (see tests/conftest.py)
def test_token_bucket_rate():
    t = Throttle(Schedule("4M"))
    start = time.monotonic()
    for _ in range(40):
        t.consume(256 * 1024)  # 10 MiB at 4 MiB/s: about 2.5 s
    elapsed = time.monotonic() - start
    assert 2.2 < elapsed < 2.8, elapsed


@pytest.mark.serial  # wall-clock timing: not beside the parallel workers (see tests/conftest.py)
def test_bandwidth_limit_holds_within_10_percent_over_20s(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    rate = 2 * 1024**2
    for i in range(8):  # 40 MiB in 8 files sent by parallel workers: 20 s at 2 MiB/s
        (src / f"f{i}.bin").write_bytes(os.urandom(5 * 1024**2))
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, tmp_path / "state",
                       extra={"bwlimit": "2M", "workers": "8"})
    d = Daemon(cfg).start()
    t0 = time.monotonic()
    try:
        wait_converged(src, lambda: tree(dst), exact=True, timeout=60, daemon=d)
        elapsed = time.monotonic() - t0
    finally:
        d.stop()
    measured = 40 * 1024**2 / elapsed
    print(f"40 MiB in {elapsed:.1f}s: {measured / 1024**2:.2f} MiB/s against a 2 MiB/s limit")
    assert abs(measured - rate) / rate <= 0.10, f"{measured / 1024**2:.2f} MiB/s"


def _landing(folder, size: int, stop) -> tuple[float | None, float | None]:
    """When the first byte and when the last of `size` bytes landed under `folder` (temp
    files count): polled every few ms, so the window measured can only be shorter (the
    rate higher) than true. The end is the last byte, not the mirror's convergence: a
    throttle charged after the bytes sleeps once more after the last one."""
    first = None
    while not stop.is_set():
        landed = 0
        for root, _dirs, files in os.walk(folder):
            for name in files:
                try:
                    landed += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    pass
        now = time.monotonic()
        if landed and first is None:
            first = now
        if landed >= size:
            return first, now
        time.sleep(0.005)
    return first, None


# Old code (charged after each piece): 2.33 MiB/s against 2 MiB/s from the first byte to the
# last (every worker's first piece went out free: 8 MiB at once).
@pytest.mark.serial  # wall-clock timing: not beside the parallel workers (see tests/conftest.py)
# A schedule in force all day in the default suite; the constant form (the same bucket, and the
# 20 s test above) with -m slow.
@pytest.mark.parametrize("bwlimit", [pytest.param("2M", marks=pytest.mark.slow), "00:00,2M"])
def test_bandwidth_limit_holds_from_the_first_byte(tmp_path, bwlimit):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    rate, size = 2 * 1024**2, 20 * 1024**2
    for i in range(8):  # 20 MiB in 8 files, each worker's first piece at the same moment: 10 s at 2 MiB/s
        (src / f"f{i}.bin").write_bytes(os.urandom(size // 8))
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, tmp_path / "state",
                       extra={"bwlimit": bwlimit, "workers": "8", "nice": "0", "io_class": "none"})
    # (nice 0 and no idle I/O class: a busy machine starves an idle-class daemon below any limit,
    # 0.50 MiB/s measured once; the limit is what is tested here, not the priorities)
    stop = threading.Event()
    with ThreadPoolExecutor(1) as watcher:
        landing = watcher.submit(_landing, dst, size, stop)
        d = Daemon(cfg).start()
        try:
            wait_converged(src, lambda: tree(dst), exact=True, timeout=60, daemon=d)
        finally:
            stop.set()
            d.stop()
        first, last = landing.result()
    # Taken before it goes, the first piece (1 MiB) and the bucket's burst (0.25 s: 0.5 MiB) may
    # land at the first instant; the rest must follow at the rate.
    measured = (size - 1.5 * 1024**2) / (last - first)
    print(f"20 MiB in {last - first:.1f}s from the first byte to the last: {measured / 1024**2:.2f} MiB/s "
          f"against {bwlimit}")
    assert abs(measured - rate) / rate <= 0.10, f"{measured / 1024**2:.2f} MiB/s"


@pytest.mark.skipif(shutil.which("ionice") is None, reason="ionice not installed")
def test_daemon_lowers_its_own_priority(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, tmp_path / "state")
    with Daemon(cfg) as d:
        pids = [d.proc.pid] + [int(t) for t in os.listdir(f"/proc/{d.proc.pid}/task")]
        for pid in pids:  # every thread, workers included
            nice = int(open(f"/proc/{d.proc.pid}/task/{pid}/stat").read().rsplit(")", 1)[1].split()[16])
            assert nice == 10, (pid, nice)
        io = subprocess.run(["ionice", "-p", str(d.proc.pid)], capture_output=True, text=True).stdout
        assert "idle" in io, io


# The count starts when the reporter's thread wakes (skynet/reporting/progress.py), which a
# loaded machine delays while files are already sent: under the parallel workers 282 of 300.
@pytest.mark.serial  # thread wake-up timing: not beside the parallel workers (see tests/conftest.py)
def test_progress_summary_lines_when_not_a_terminal(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(300):
        (src / f"{i}.bin").write_bytes(os.urandom(64 * 1024))
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, tmp_path / "state",
                       extra={"bwlimit": "4M", "log_level": "INFO", "progress_interval": "1"})
    with Daemon(cfg) as d:  # stderr is a file here: summary lines, no bar
        wait_converged(src, lambda: tree(dst), exact=True, timeout=60, daemon=d)
        d.wait_log("backlog done: ", timeout=10)
        text = d.log_text()
    import re

    assert int(re.search(r"backlog done: (\d+) files", text).group(1)) >= 290
    assert "progress: " in text and "files/s" in text and "ETA" in text
    assert "█" not in text


def test_backlog_done_counts_the_files_done_before_the_reporter_woke(caplog):
    """The files finished between the first poke and the reporter's wake-up belong to the
    backlog. Old code: counted from the wake-up, 30 of 150 (and then no line at all: below 100)."""
    import logging

    from skynet.reporting.progress import ProgressReporter, Snapshot

    state = {"done": 0, "pending": 0, "looked": 0}

    def snap() -> Snapshot:
        state["looked"] += 1
        return Snapshot(state["done"], state["done"] * 10, state["pending"])

    r = ProgressReporter(snap)
    caplog.set_level(logging.INFO, logger="skynet.reporting.progress")
    r.start()
    try:
        state.update(done=120, pending=30)  # done before the reporter looks: it sleeps until poked
        looked = state["looked"]
        r.poke()
        deadline = time.monotonic() + 10
        while state["looked"] == looked:  # the reporter woke and looked (the old code's starting point)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        state.update(done=150, pending=0)
        while not [m for m in caplog.messages if m.startswith("backlog done")]:
            assert time.monotonic() < deadline, caplog.messages
            time.sleep(0.01)
    finally:
        r.stop()
    assert [m for m in caplog.messages if m.startswith("backlog done")][0].startswith("backlog done: 150 files")


def test_progress_bar_in_a_terminal(tmp_path):
    import io

    from skynet.reporting.progress import ProgressReporter, Snapshot

    class Tty(io.StringIO):
        def isatty(self):
            return True

    state = {"done": 0}

    def snap():
        state["done"] = min(100, state["done"] + 10)
        return Snapshot(state["done"], state["done"] * 1000, 100 - state["done"])

    out = Tty()
    r = ProgressReporter(snap, stream=out)
    r.tty = True
    r.start()
    r.poke()
    time.sleep(3)
    r.stop()
    assert "files/s" in out.getvalue() and "ETA" in out.getvalue() and "█" in out.getvalue()
