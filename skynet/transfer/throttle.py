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
from collections.abc import Callable, Iterator
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


def parse_hhmm(text: str, *, end: bool = False) -> int:
    """'08:30' -> 510 minutes after midnight; with `end`, '24:00' (the end of a day) too."""
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if not m or int(m.group(2)) > 59 or int(m.group(1)) > 24 or (int(m.group(1)) == 24 and (not end or int(m.group(2)))):
        raise ValueError(f"bad time {text!r} (expected HH:MM)")
    return int(m.group(1)) * 60 + int(m.group(2))


def day_entries(text: str) -> Iterator[tuple[frozenset[int], str]]:
    """The entries of a timetable with the days each applies to: a token naming
    days ("Mon-Fri", "Sat,Sun") applies to the entries after it (every day before
    the first). The one tokenizer of bwlimit's schedule and a job's window."""
    days = frozenset(range(7))
    for tok in text.split():
        if tok[:1].isalpha():
            try:
                days = _parse_days(tok)
            except ValueError:
                raise ValueError(f"bad day range {tok!r} (examples: Mon-Fri, Sat,Sun)") from None
            continue
        yield days, tok


def week_minute(t: float) -> int:
    """Minutes since Monday 00:00, local time, at epoch time `t`."""
    lt = time.localtime(t)
    return lt.tm_wday * 1440 + lt.tm_hour * 60 + lt.tm_min


WEEK = 7 * 1440


class Window:
    """When a job may run: the bwlimit schedule's syntax, with ranges.

        window = Mon-Fri 20:00-06:00 Sat,Sun 00:00-24:00   # open in these ranges (a range
                                                           # past midnight ends the next day)
        window = 20:00,on 06:00,off                        # or bwlimit's form: HH:MM,on|off

    Empty: always open. Why not a Schedule of rates: a window is a set of
    intervals, and "Fri 20:00-06:00" must not be cut at Saturday's midnight."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self.open_minutes: list[tuple[int, int]] = []  # [start, end) in week minutes, end may pass WEEK
        self.schedule: Schedule | None = None
        entries = list(day_entries(self.text))
        if entries and all("," in tok for _, tok in entries):
            self.schedule = Schedule(self.text, value=_on_off)
            return
        for days, tok in entries:
            start, sep, stop = tok.partition("-")
            if not sep:
                raise ValueError(f"bad window entry {tok!r} (expected HH:MM-HH:MM, e.g. Mon-Fri 20:00-06:00)")
            a, b = parse_hhmm(start), parse_hhmm(stop, end=True)
            if b <= a:
                b += 1440  # past midnight: ends the next day
            self.open_minutes += [(d * 1440 + a, d * 1440 + b) for d in sorted(days)]

    @property
    def always(self) -> bool:
        return not self.open_minutes and self.schedule is None

    def is_open(self, t: float) -> bool:
        if self.schedule is not None:
            return self.schedule.rate_at(t) is not None
        return self.always or self._open_at(week_minute(t))

    def _open_at(self, m: int) -> bool:
        return any(a <= m < b or a <= m + WEEK < b for a, b in self.open_minutes)

    def next_change(self, t: float) -> float:
        """The epoch time, after `t`, when is_open() next changes (at most a week
        away): how long a closed job sleeps. Minute by minute: 10,080 steps at most."""
        if self.always:
            return t + WEEK * 60
        now = self.is_open(t)
        base = t - (t % 60)
        for i in range(1, WEEK + 2):
            if self.is_open(base + i * 60) != now:
                return base + i * 60
        return t + WEEK * 60


def _on_off(text: str) -> float | None:
    """A window's value in bwlimit's form: on (open) or off (closed)."""
    t = text.strip().lower()
    if t not in ("on", "off"):
        raise ValueError(f"bad window value {text!r} (expected on or off)")
    return 1.0 if t == "on" else None


def validate_window(text: str) -> str:
    Window(text)
    return text.strip()


class Schedule:
    """The rate in force at a given local time."""

    def __init__(self, text: str, value: Callable[[str], float | None] = None) -> None:  # type: ignore[assignment]
        value = value or parse_rate
        self.text = text.strip()
        self.slots: list[Slot] = []
        self.constant: float | None = None
        if not self.text:
            return
        if "," not in self.text:
            self.constant = value(self.text)
            return
        for days, tok in day_entries(self.text):
            if "," not in tok:
                raise ValueError(f"bad entry {tok!r} (expected HH:MM,RATE)")
            when, rate = tok.split(",", 1)
            self.slots.append(Slot(days, parse_hhmm(when), value(rate)))
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
