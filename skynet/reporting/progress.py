"""Progress of the start-up scan and of a backlog: a live bar in a terminal,
periodic summary lines under systemd or when stderr is redirected.

The reporter sleeps until the handler pokes it (an action started or
finished), so a quiet daemon spends nothing here. While work is pending it
redraws twice a second (terminal) or logs a summary every `every` seconds.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable, TextIO

log = logging.getLogger("skynet.reporting.progress")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float) -> str:
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Snapshot:
    """Counters summed over every mapping at one moment."""

    def __init__(self, done: int, bytes_sent: int, pending: int) -> None:
        self.done, self.bytes_sent, self.pending = done, bytes_sent, pending


class ProgressReporter:
    def __init__(self, snapshot: Callable[[], Snapshot], stream: TextIO | None = None, every: float = 30.0,
                 on_tick: Callable[[], None] | None = None) -> None:
        self.snapshot = snapshot
        self.on_tick = on_tick or (lambda: None)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() and "JOURNAL_STREAM" not in os.environ
        self.every = every
        self._poke = threading.Event()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._base: Snapshot | None = None  # where the last backlog ended: the next one counts from there

    def start(self) -> None:
        self._base = self.snapshot()
        self._thread.start()

    def poke(self) -> None:
        if not self._poke.is_set():  # called per action: skip the Event's lock when already set
            self._poke.set()

    def stop(self) -> None:
        """Stop drawing; a reporter never started (its command failed first) has nothing to stop."""
        self._halt.set()
        self._poke.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._halt.is_set():
            self._poke.wait()  # idle: sleep until there is work
            self._poke.clear()
            if self._halt.is_set():
                return
            self._follow_backlog()

    def _follow_backlog(self) -> None:
        """Report until the backlog is gone, then go back to sleep. Counted from where
        the last one ended, not from when this thread woke: the files done between the
        poke and the wake-up (282 of 300 were counted on a loaded machine) are this
        backlog's too."""
        start = self._base if self._base is not None else self.snapshot()
        t0 = time.monotonic()
        last_log = t0
        shown = False
        while not self._halt.is_set():
            self.on_tick()
            snap = self.snapshot()
            elapsed = max(1e-6, time.monotonic() - t0)
            files = snap.done - start.done
            sent = snap.bytes_sent - start.bytes_sent
            rate = files / elapsed
            eta = snap.pending / rate if rate > 0 else None
            if snap.pending == 0:
                break
            total = files + snap.pending
            if self.tty:
                width = 24
                filled = int(width * files / total) if total else width
                bar = "█" * filled + "░" * (width - filled)
                line = (f"\r{bar} {files:,}/{total:,} files  {human_bytes(sent)}  {rate:,.0f} files/s  "
                        f"{human_bytes(sent / elapsed)}/s  ETA {human_seconds(eta) if eta is not None else '?'}")
                self.stream.write(line.ljust(100)[:120])
                self.stream.flush()
                shown = True
            elif time.monotonic() - last_log >= self.every:
                last_log = time.monotonic()
                log.info("progress: %s files done, %s queued, %s sent, %.0f files/s, %s/s, ETA %s", f"{files:,}",
                         f"{snap.pending:,}", human_bytes(sent), rate, human_bytes(sent / elapsed),
                         human_seconds(eta) if eta is not None else "?")
            self._halt.wait(0.5 if self.tty else min(self.every, 1.0))  # ticks only while work is pending
        self.on_tick()
        snap = self.snapshot()
        self._base = snap
        files = snap.done - start.done
        elapsed = time.monotonic() - t0
        if shown:
            self.stream.write("\r" + " " * 120 + "\r")
            self.stream.flush()
        if files >= 100 or elapsed >= self.every:
            log.info("backlog done: %s files, %s in %s", f"{files:,}", human_bytes(snap.bytes_sent - start.bytes_sent),
                     human_seconds(elapsed))
