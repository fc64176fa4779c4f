"""How the versions area names what it keeps: by path and UTC time.

The area is the folder AREA at the remote root. A kept thing of the path
`a/b.txt` replaced, deleted or moved at the time S is the file

    .skynet-versions/a/b.txt@20261205T115550.123456789Z.<kind>

where every part of the path is escaped ("%" -> "%25", "@" -> "%40"), so the
one "@" in an area name is always ours, whatever the user's names hold. Kinds:

  v        the version `a/b.txt` had until S, when a send or a move replaced it
  d        the version `a/b.txt` had until S, when it was deleted
  moved    a marker: `a/b.txt` (a file or a folder) was moved away at S
  arrived  a marker: something arrived at `a/b.txt` by that move at S

A move's two markers share the stamp S, which is unique per keeper (its clock
never gives the same nanosecond twice), and that is how they pair up.

Names are built with check_rel/remote_join only (no path leaves the root), and
the mirror never sees the area: the first-sync listing skips it (is_area), and
a source entry at the root with the area's name is never synced (the daemon
ignores it as it ignores its own state folder).
"""
from __future__ import annotations

import calendar
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from connections.contract.xcon import check_rel

AREA = ".skynet-versions"
KEPT, DELETED, MOVED, ARRIVED = "v", "d", "moved", "arrived"
KINDS = (KEPT, DELETED, MOVED, ARRIVED)

_STAMP = re.compile(r"(\d{8}T\d{6})\.(\d{9})Z\.(v|d|moved|arrived)")
_ESC = re.compile(r"%(25|40)")


def is_area(rel: str) -> bool:
    """`rel` (a path under the remote root) is the versions area or inside it."""
    return rel == AREA or rel.startswith(AREA + "/")


def stamp(ns: int) -> str:
    """UTC nanoseconds -> "20261205T115550.123456789Z" (sorts as the time does)."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs)) + f".{frac:09d}Z"


def escape(part: str) -> str:
    return part.replace("%", "%25").replace("@", "%40")


def unescape(part: str) -> str:
    return _ESC.sub(lambda m: chr(int(m.group(1), 16)), part)


def area_name(rel: str, when_ns: int, kind: str) -> str:
    """The area path (under the remote root) of `rel`'s kept thing of `kind` at `when_ns`."""
    assert kind in KINDS
    parts = [escape(p) for p in check_rel(rel).split("/")]
    return check_rel(f"{AREA}/{'/'.join(parts)}@{stamp(when_ns)}.{kind}")


@dataclass(frozen=True)
class AreaName:
    """A parsed area name."""

    rel: str  # the user path it is about
    when_ns: int
    kind: str


def parse_area_name(area_rel: str) -> AreaName | None:
    """The inverse of area_name (a path under the remote root); None for anything
    else found in the area (a temporary file, a name someone else put there)."""
    if not area_rel.startswith(AREA + "/"):
        return None
    parts = area_rel[len(AREA) + 1:].split("/")
    name, at, tail = parts[-1].rpartition("@")
    m = _STAMP.fullmatch(tail)
    if not at or not name or m is None or any("@" in p for p in parts[:-1]):
        return None
    secs = calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%S"))
    rel = "/".join(unescape(p) for p in parts[:-1] + [name])
    return AreaName(rel, secs * 1_000_000_000 + int(m.group(2)), m.group(3))


class Clock:
    """Stamps for the area: UTC nanoseconds, strictly increasing within a process
    (two keeps never share a name; a move's markers pair by their stamp)."""

    def __init__(self, now: Callable[[], int] = time.time_ns) -> None:
        self._now = now
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(self._now(), self._last + 1)
            return self._last
