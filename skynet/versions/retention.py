"""Which kept versions of one path pruning removes: the retention rules.

Per mapping, `versions_keep` says how many of a path's versions stay:

- `staggered` (the default), like Syncthing's staggered versioning: one version
  per 30 s for the first hour, one per hour for the first day, one per day up to
  `versions_max_age` (default 30 days), nothing older;
- a count (`10`): the newest N versions that hold content (the current file among
  them);
- an age (`90d`; also s, m, h, w): nothing that stopped being the path's content
  longer ago than that.

A version's age is how long ago it stopped being the path's content (`until_ns`),
not when it was written: a report left untouched for a year and overwritten a
minute ago is a minute old, and it is exactly the version someone wants back.

Two rules hold whatever the policy, so that the history stays true:

1. The newest record of a path is never removed, nor the current file
   (`until_ns` None): pruning must never change what the mirror holds, and a path
   deleted on the remote keeps the record that says so.
2. A deletion record is kept exactly when the kept record just older than it holds
   content: it is what ends that content's life. Without it the older content
   would seem to last across the time the path did not exist (on a versioned S3
   bucket, removing such a delete marker would even bring the file back). A
   deletion with no kept content before it says nothing ("did not exist" is what
   "no version" says already), so it goes, unless rule 1 keeps it.

The policy itself only looks at versions that hold content: deletions follow
them by rule 2. So `versions_keep = 1` on a file deleted yesterday still keeps its
last content and the deletion: "get it back" keeps working.

Everything here is pure (the clock is the `now_ns` argument), so the rules are
tested exhaustively without waiting an hour.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from skynet.versions.model import Version

NS = 1_000_000_000
MINUTE, HOUR, DAY, WEEK = 60 * NS, 3600 * NS, 86400 * NS, 7 * 86400 * NS

#: Syncthing's staggered steps: below this age, at most one version per this step;
#: from a day on, one per day (up to the maximum age)
STAGGER: tuple[tuple[int, int], ...] = ((HOUR, 30 * NS), (DAY, HOUR))

_AGE_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_NS = {"s": NS, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}

STAGGERED, COUNT, AGE = "staggered", "count", "age"
DEFAULT_MAX_AGE = "30d"


@dataclass(frozen=True)
class Policy:
    """One mapping's retention: `kind` is staggered, count or age; `count` the N of a
    count; `max_age_ns` the age beyond which nothing is kept (age, staggered)."""

    kind: str = STAGGERED
    count: int = 0
    max_age_ns: int = 0

    def describe(self) -> str:
        if self.kind == COUNT:
            return f"the newest {self.count}"
        if self.kind == AGE:
            return f"those younger than {format_age(self.max_age_ns)}"
        return f"staggered up to {format_age(self.max_age_ns)}"


def parse_age(text: str) -> int:
    """'90d', '12h', '30m', '45s', '2w' -> nanoseconds (more than 0). A unit is required:
    a bare number is a count for versions_keep, so it is never guessed to be seconds."""
    m = _AGE_RE.match(text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"expected an age such as 30d (a number with s, m, h, d or w), got {text!r}")
    return int(m.group(1)) * _UNIT_NS[m.group(2).lower()]


def format_age(ns: int) -> str:
    """Nanoseconds in the largest unit that divides them: 2592000e9 -> '30d'."""
    for unit in ("w", "d", "h", "m"):
        if ns % _UNIT_NS[unit] == 0 and ns:
            return f"{ns // _UNIT_NS[unit]}{unit}"
    return f"{ns // NS}s"


def parse_keep(text: str) -> Policy:
    """A `versions_keep` value: 'staggered', a count ('10') or an age ('90d').
    A staggered policy gets its maximum age from `versions_max_age` (with_max_age)."""
    t = text.strip().lower()
    if t == STAGGERED:
        return Policy(STAGGERED)
    if t.isdigit():
        if int(t) < 1:
            raise ValueError(f"expected staggered, a count of at least 1 or an age such as 90d, got {text!r}")
        return Policy(COUNT, count=int(t))
    try:
        return Policy(AGE, max_age_ns=parse_age(t))
    except ValueError:
        raise ValueError(f"expected staggered, a count such as 10 or an age such as 90d, got {text!r}") from None


def with_max_age(policy: Policy, max_age_ns: int) -> Policy:
    """The policy a mapping prunes by: staggered takes `versions_max_age`; the others
    ignore it (a count has no age, an age policy is its own maximum)."""
    if policy.kind == STAGGERED:
        return Policy(STAGGERED, max_age_ns=max_age_ns)
    return policy


def to_remove(versions: Sequence[Version], policy: Policy, now_ns: int) -> list[Version]:
    """The versions of ONE path (any order; the store lists them newest first) that
    `policy` lets go at `now_ns`, oldest first. See the module's two rules."""
    history = sorted(versions, key=lambda v: v.since_ns)  # oldest first; stable for equal times
    if not history:
        return []
    pinned = {id(history[-1])} | {id(v) for v in history if v.until_ns is None}
    content = [v for v in history if not v.deleted]
    kept = {id(v) for v in _policy_keeps(content, policy, now_ns)} | pinned
    remove: list[Version] = []
    previous_kept_holds_content = False
    for v in history:
        keep = id(v) in kept if not v.deleted else (id(v) in pinned or previous_kept_holds_content)
        if keep:
            previous_kept_holds_content = not v.deleted
        else:
            remove.append(v)
    return remove


def _age(v: Version, now_ns: int) -> int:
    """How long ago `v` stopped being the content (0 for the current one)."""
    return 0 if v.until_ns is None else now_ns - v.until_ns


def _policy_keeps(content: list[Version], policy: Policy, now_ns: int) -> list[Version]:
    """The content versions (oldest first) the policy alone keeps."""
    if policy.kind == COUNT:
        return content[-policy.count:]
    if policy.kind == AGE:
        return [v for v in content if _age(v, now_ns) <= policy.max_age_ns]
    return _staggered_keeps(content, policy.max_age_ns, now_ns)


def _step(age_ns: int) -> int:
    """The least distance between two kept versions, for a version this old."""
    for below, step in STAGGER:
        if age_ns < below:
            return step
    return DAY


def _staggered_keeps(content: list[Version], max_age_ns: int, now_ns: int) -> list[Version]:
    """Syncthing's walk, oldest to newest: what is older than the maximum age goes; the
    oldest left stays; each newer one stays only if it is at least its interval's step
    (30 s, 1 h or 1 d, by its own age) younger than the last one kept."""
    keeps: list[Version] = []
    last_age: int | None = None
    for v in content:
        age = _age(v, now_ns)
        if age > max_age_ns:
            continue
        if last_age is not None and last_age - age < _step(age):
            continue
        keeps.append(v)
        last_age = age
    return keeps
