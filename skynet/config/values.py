"""The one place config values are parsed: yes/no, sizes, numbers with bounds, durations.

Every parser takes the raw text and returns the typed value, or raises ValueError
with one message style, "expected <what>, got '<the text>'", so that every bad value
reads the same wherever it was written. The key is added by whoever knows it:
`keyed()` for a connection's options (ValueError("key: expected ..., got '...'"), the
connections' contract), the config loader's ConfigError for [skynet] and [mapping]
keys (file: [section] key: expected ..., got '...'). The config tables, the wizard,
connections/local/con.py, s3.py and sftp.py all parse through here.
"""
from __future__ import annotations

import os
import re
from typing import Callable, TypeVar

from skynet.watch.ignore import validate_pattern

T = TypeVar("T")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}


def keyed(key: str, value: str, parse: Callable[[str], T]) -> T:
    """parse(value), with the key in front of its error: ValueError("key: expected ..., got '...'")."""
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def parse_bool(v: str) -> bool:
    t = v.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"expected yes or no, got {v!r}")


def format_size(n: int) -> str:
    """Bytes in the largest binary unit that divides them: 5242880 -> '5MiB'."""
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def parse_size(v: str) -> int:
    """'8MiB', '8M', '8 MiB', '8388608' -> bytes. Units are binary; '8MB' is refused
    rather than guessed (decimal or binary?)."""
    m = _SIZE_RE.match(v)
    if not m:
        raise ValueError(f"expected a size such as 8MiB, got {v!r}")
    unit = (m.group(2) or "").lower()
    if len(unit) == 2 and unit[1] == "b" and unit != "b":
        raise ValueError(f"expected a size in binary units such as {m.group(1)}{unit[0].upper()}iB, got {v!r}")
    return int(m.group(1)) * _UNIT[unit[:1]]


def parse_size_range(lo: int, hi: int) -> Callable[[str], int]:
    """A size parser that also checks lo <= size <= hi."""

    def parse(v: str) -> int:
        n = parse_size(v)
        if not lo <= n <= hi:
            raise ValueError(f"expected a size from {format_size(lo)} to {format_size(hi)}, got {v.strip()!r}")
        return n

    return parse


def parse_number(kind: type[int] | type[float], lo: float, hi: float | None = None,
                 what: str = "") -> Callable[[str], float]:
    """A parser of one int or float with lo <= n (<= hi when given); `what` names the
    unit in messages ("seconds")."""
    noun = what or ("whole number" if kind is int else "number")
    article = "an" if noun[0] in "aeiou" else "a"

    def parse(v: str) -> float:
        try:
            n = kind(v.strip())
        except ValueError:
            raise ValueError(f"expected {article} {noun}, got {v!r}") from None
        if n != n or n < lo or (hi is not None and n > hi):  # n != n: 'nan'
            bounds = f"from {_num(lo)} to {_num(hi)}" if hi is not None else f"of at least {_num(lo)}"
            raise ValueError(f"expected {article} {noun} {bounds}, got {v.strip()!r}")
        return n

    return parse


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def parse_int_range(lo: int, hi: int) -> Callable[[str], int]:
    """A whole number from lo to hi."""
    return parse_number(int, lo, hi)  # type: ignore[return-value]


def parse_seconds_range(lo: float = 0.0, hi: float | None = None) -> Callable[[str], float]:
    """A duration in seconds (fractions allowed) from lo (to hi)."""
    return parse_number(float, lo, hi, "number of seconds")


parse_seconds = parse_seconds_range(0.0)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_DURATION_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(v: str) -> float:
    """'30s', '5m', '1.5h', '2d', '90' (seconds) -> seconds."""
    m = _DURATION_RE.match(v)
    if not m:
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {v!r}")
    return float(m.group(1)) * _DURATION_UNIT[m.group(2).lower()]


def parse_durations(v: str) -> list[float]:
    """'30s,5m,10m' -> [30.0, 300.0, 600.0]: a schedule of waits, one per retry
    (the last one repeats)."""
    parts = [p for p in v.replace(",", " ").split() if p]
    if not parts:
        raise ValueError(f"expected durations such as 30s,5m,10m, got {v!r}")
    try:
        return [parse_duration(p) for p in parts]
    except ValueError:
        raise ValueError(f"expected durations such as 30s,5m,10m, got {v!r}") from None


def parse_level(v: str) -> str:
    t = v.strip().upper()
    if t not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {v!r}")
    return t


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        t = v.strip().lower()
        if t not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
        return t

    return parse


def parse_path(v: str) -> str:
    v = v.strip()
    return os.path.abspath(os.path.expanduser(v)) if v else ""


def parse_patterns(v: str) -> list[str]:
    """One pattern per line (commas also separate, as in a one-line value)."""
    out = []
    for line in v.replace(",", "\n").splitlines():
        line = line.strip()
        if line:
            out.append(validate_pattern(line))
    return out


def _str(v: str) -> str:
    return v.strip()


#: keys an engine may keep in a [service] section that are not the service's own
GENERIC_SERVICE_KEYS = frozenset({"type", "service", "name"})


def service_values(section: dict[str, str], keys: dict[str, tuple[str, str]], service: str) -> dict[str, str]:
    """A [service] section's settings, every key of `keys` present (its default where
    the section has none); ValueError naming the first key the service does not know.
    Each connection module parses the values it gets with the parsers above."""
    unknown = sorted(set(section) - set(keys) - GENERIC_SERVICE_KEYS)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key for an {service} service (known: {', '.join(keys)})")
    return {k: str(section[k]) if section.get(k) is not None else d for k, (d, _doc) in keys.items()}
