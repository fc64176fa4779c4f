"""Parsers for config values: each returns the typed value or raises
ValueError with a short explanation that the config loader prefixes with the
file, section and key."""
from __future__ import annotations

import os
from typing import Callable

from skynet.ignore import validate_pattern

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_bool(v: str) -> bool:
    t = v.strip().lower()
    if t in ("1", "yes", "true", "on"):
        return True
    if t in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"expected yes or no, got {v!r}")


def parse_int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            n = int(v.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {v!r}") from None
        if not lo <= n <= hi:
            raise ValueError(f"expected a number from {lo} to {hi}, got {n}")
        return n

    return parse


def parse_seconds(v: str) -> float:
    try:
        n = float(v.strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {v!r}") from None
    if n < 0:
        raise ValueError(f"expected a positive number of seconds, got {v!r}")
    return n


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
