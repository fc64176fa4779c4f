"""Bandwidth limit: one token bucket shared by every transfer of the daemon,
with an optional time-of-day schedule (rclone's --bwlimit timetable idea).

    bwlimit = 2M                              # always 2 MB/s
    bwlimit = 08:00,2M 18:00,off              # 2 MB/s in office hours, full speed at night
    bwlimit = Mon-Fri 08:00,512k 18:00,off    # (days are optional, per entry)

Units: plain bytes/s, or k/K, M, G suffixes (powers of 1024), "off" for no limit.
Transfers account their bytes through `TransferContext.report` (every
connection reports progress per chunk), so the limit holds for every backend
without each one implementing it. A transfer that gets ahead of the budget
sleeps; the average rate over any few seconds stays at the limit.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def parse_rate(text: str) -> float | None:
    """'2M' -> 2097152.0 bytes/s; 'off' or '0' -> None (unlimited)."""
    t = text.strip().lower()
    if t in ("off", "0", "", "none", "unlimited"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?(?:/s)?", t)
    if not m:
        raise ValueError(f"bad rate {text!r} (examples: 512k, 2M, 1.5G, off)")
    value = float(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)]
    if value <= 0:
        return None
    return value


@dataclass(frozen=True)
class Slot:
    days: frozenset[int]  # 0 = Monday
    minute: int  # minutes after midnight when this rate starts
    rate: float | None


def _parse_days(spec: str) -> frozenset[int]:
    out: set[int] = set()
    for part in spec.lower().split(","):
        if "-" in part:
            a, b = (DAYS.index(x[:3]) for x in part.split("-"))
            i = a
            while True:
                out.add(i)
                if i == b:
                    break
                i = (i + 1) % 7
        else:
            out.add(DAYS.index(part[:3]))
    return frozenset(out)


class Schedule:
    """The rate in force at a given local time."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self.slots: list[Slot] = []
        self.constant: float | None = None
        if not self.text:
            return
        if "," not in self.text:
            self.constant = parse_rate(self.text)
            return
        tokens = self.text.split()
        days = frozenset(range(7))
        for tok in tokens:
            if tok[:1].isalpha():  # "Mon-Fri", "Sat,Sun": the days of the entries that follow
                try:
                    days = _parse_days(tok)
                except ValueError:
                    raise ValueError(f"bad day range {tok!r} (examples: Mon-Fri, Sat,Sun)") from None
                continue
            when, rate = tok.split(",", 1)
            m = re.fullmatch(r"(\d{1,2}):(\d{2})", when)
            if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
                raise ValueError(f"bad time {when!r} (expected HH:MM)")
            self.slots.append(Slot(days, int(m.group(1)) * 60 + int(m.group(2)), parse_rate(rate)))
        if not self.slots:
            raise ValueError(f"no HH:MM,RATE entry in {self.text!r}")

    def rate_at(self, t: float | None = None) -> float | None:
        if not self.slots:
            return self.constant
        lt = time.localtime(time.time() if t is None else t)
        now = lt.tm_wday * 1440 + lt.tm_hour * 60 + lt.tm_min
        # The latest slot start at or before now (wrapping around the week).
        best, best_age = None, None
        for s in self.slots:
            for d in s.days:
                start = d * 1440 + s.minute
                age = (now - start) % (7 * 1440)
                if best_age is None or age < best_age:
                    best, best_age = s, age
        return best.rate if best else None


def validate_bwlimit(text: str) -> str:
    Schedule(text)
    return text.strip()


class Throttle:
    """A thread-safe token bucket whose rate follows a Schedule."""

    def __init__(self, schedule: Schedule, burst_seconds: float = 0.25) -> None:
        self.schedule = schedule
        self.burst_seconds = burst_seconds
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = time.monotonic()
        self._rate_checked = 0.0
        self._rate: float | None = schedule.rate_at()

    @property
    def active(self) -> bool:
        return bool(self.schedule.slots) or self.schedule.constant is not None

    def _current_rate(self, now: float) -> float | None:
        if now - self._rate_checked > 30:  # the schedule changes by the minute at most
            self._rate_checked = now
            self._rate = self.schedule.rate_at()
        return self._rate

    def consume(self, nbytes: int, stop: threading.Event | None = None) -> None:
        """Account for `nbytes` sent; sleep if that is ahead of the budget."""
        if nbytes <= 0 or not self.active:
            return
        with self._lock:
            now = time.monotonic()
            rate = self._current_rate(now)
            if rate is None:
                self._tokens = 0.0
                self._last = now
                return
            self._tokens = min(rate * self.burst_seconds, self._tokens + (now - self._last) * rate)
            self._last = now
            self._tokens -= nbytes
            wait = -self._tokens / rate if self._tokens < 0 else 0.0
        if wait > 0:
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)
