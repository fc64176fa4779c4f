"""Retention rules (skynet/versions/retention.py) with an injected clock: which kept
versions of one path pruning removes, for staggered, count and age policies, and the
two rules every policy obeys (never the newest record or the current file; a
deletion stays exactly when it ends a kept content version)."""
from __future__ import annotations

import random

import pytest

from skynet.config.settings import ConfigError, load
from skynet.versions.model import Version
from skynet.versions.retention import (
    AGE, COUNT, DAY, HOUR, MINUTE, NS, STAGGERED, Policy, format_age, parse_age, parse_keep, to_remove, with_max_age,
)

NOW = 1_800_000_000 * NS
S = NS


def timeline(*steps: tuple[str, int]) -> list[Version]:
    """A path's history, newest first, from (kind, seconds before NOW when it began),
    oldest step first; kind 'c' is content, 'd' a deletion. Each version ends where the
    next begins; the last one is current (until None)."""
    out = []
    for i, (kind, ago) in enumerate(steps):
        since = NOW - ago * S
        until = NOW - steps[i + 1][1] * S if i + 1 < len(steps) else None
        out.append(Version("f", since, until, 0 if kind == "d" else 10, None, None, None, deleted=kind == "d",
                           ref=f"{kind}{ago}"))
    return out[::-1]


def removed(versions: list[Version], policy: Policy, now: int = NOW) -> list[str]:
    return [v.ref for v in to_remove(versions, policy, now)]


def content_ending(ages_s: list[int]) -> list[Version]:
    """Old content versions that stopped being the content `age` seconds ago (one per
    age), plus the current file, newest first."""
    ends = sorted(ages_s, reverse=True)  # oldest first
    steps = [("c", ends[0] + 1)] + [("c", a) for a in ends]
    vs = timeline(*steps)
    return vs


def refs_by_end(versions: list[Version], ages_s: list[int]) -> dict[int, str]:
    """age in seconds of its end -> ref, for the old (non-current) versions."""
    return {(NOW - v.until_ns) // S: v.ref for v in versions if v.until_ns is not None}


STAG = with_max_age(Policy(STAGGERED), 30 * DAY)

# (ages in seconds at which old versions stopped being the content, the ages kept)
STAGGERED_CASES = [
    # first hour: one per 30 s; the oldest of a 30 s window is the one kept (Syncthing's walk)
    ([10, 20, 25], [25]),
    ([10, 40], [10, 40]),
    ([10, 39], [39]),  # 29 s apart: the younger goes
    ([10, 40, 70], [10, 40, 70]),  # exactly 30 s apart: both stay (boundary)
    ([11, 40, 70], [40, 70]),
    # first day: one per hour (the step is chosen by the younger version's age)
    ([3600, 7199], [7199]),
    ([3600, 7200], [3600, 7200]),
    ([3599, 3629], [3599, 3629]),  # the younger is in the first hour: 30 s is enough
    ([3600, 3630], [3630]),  # the younger is in the first day: an hour is needed
    # from a day on: one per day
    ([DAY // S, DAY // S + 86399], [DAY // S + 86399]),
    ([DAY // S, 2 * DAY // S], [DAY // S, 2 * DAY // S]),
    # the maximum age: exactly 30 d stays, a second more goes
    ([30 * DAY // S], [30 * DAY // S]),
    ([30 * DAY // S + 1], []),
    ([29 * DAY // S, 30 * DAY // S + 1], [29 * DAY // S]),
    # a burst of saves every 5 s for 10 minutes, 2 h ago: one per hour there
    ([7200 + 5 * i for i in range(120)], [7200 + 5 * 119]),
    # a burst of saves every 5 s in the last 10 minutes: one per 30 s
    ([5 * i for i in range(1, 121)], [600, 570, 540, 510, 480, 450, 420, 390, 360, 330, 300, 270, 240, 210, 180,
                                      150, 120, 90, 60, 30]),
]


@pytest.mark.parametrize("ages, kept", STAGGERED_CASES)
def test_staggered_keeps_exactly_the_expected_versions(ages: list[int], kept: list[int]) -> None:
    vs = content_ending(ages)
    by_age = refs_by_end(vs, ages)
    gone = set(removed(vs, STAG))
    assert sorted(a for a, ref in by_age.items() if ref not in gone) == sorted(kept)
    assert vs[0].ref not in gone  # the current file


def test_staggered_over_a_month_of_hourly_saves() -> None:
    """720 hourly versions: the first day keeps every one (an hour apart), then one
    per day up to 30 days (the oldest of each day-long run), nothing beyond."""
    ages = [3600 * h for h in range(1, 24 * 31)]
    vs = content_ending(ages)
    by_age = refs_by_end(vs, ages)
    gone = set(removed(vs, STAG))
    kept = sorted(a for a, ref in by_age.items() if ref not in gone)
    assert [a for a in kept if a < DAY // S] == [3600 * h for h in range(1, 24)]
    older = [a for a in kept if a >= DAY // S]
    assert max(older) <= 30 * DAY // S
    assert all(b - a >= DAY // S for a, b in zip(older, older[1:]))
    assert len(older) == 30  # one for each day from 1 d to 30 d


def test_staggered_max_age_comes_from_versions_max_age() -> None:
    vs = content_ending([2 * DAY // S, 5 * DAY // S])
    assert len(removed(vs, with_max_age(Policy(STAGGERED), 3 * DAY))) == 1
    assert removed(vs, with_max_age(Policy(STAGGERED), 6 * DAY)) == []


def test_age_is_measured_from_the_end_not_the_start() -> None:
    """A version written a year ago and overwritten a minute ago is a minute old."""
    vs = timeline(("c", 365 * DAY // S), ("c", 60))
    assert removed(vs, STAG) == []
    assert removed(vs, Policy(AGE, max_age_ns=DAY)) == []


@pytest.mark.parametrize("policy", [STAG, Policy(AGE, max_age_ns=S)])
def test_never_the_newest_version_nor_the_current_file(policy: Policy) -> None:
    vs = timeline(("c", 400 * DAY // S))  # one very old current file
    assert removed(vs, policy) == []
    lone_deletion = timeline(("c", 400 * DAY // S), ("d", 399 * DAY // S))
    assert removed(lone_deletion, policy) == ["c34560000"]  # the content is too old; the record of deletion stays
    deleted_twice = timeline(("c", 400 * DAY // S), ("d", 399 * DAY // S), ("c", 398 * DAY // S), ("d", 397 * DAY // S))
    assert removed(deleted_twice, policy) == ["c34560000", "d34473600", "c34387200"]


def test_the_current_file_stays_even_if_it_is_not_listed_first() -> None:
    vs = timeline(("c", 100), ("c", 50))
    odd = [vs[1], vs[0]]  # a store listing out of order: the current file is still pinned
    assert removed(odd, Policy(COUNT, count=1)) == ["c100"]


def test_count_keeps_the_newest_n_content_versions() -> None:
    vs = timeline(*[("c", 1000 - i) for i in range(6)])  # 5 old + current
    assert removed(vs, Policy(COUNT, count=3)) == ["c1000", "c999", "c998"]
    assert removed(vs, Policy(COUNT, count=6)) == []
    assert removed(vs, Policy(COUNT, count=100)) == []
    assert removed(vs, Policy(COUNT, count=1)) == ["c1000", "c999", "c998", "c997", "c996"]


def test_count_on_a_deleted_path_keeps_its_last_content_and_the_deletion() -> None:
    """versions_keep = 1 on a file deleted yesterday still gets it back."""
    vs = timeline(("c", 3 * DAY // S), ("c", 2 * DAY // S), ("d", DAY // S))
    assert removed(vs, Policy(COUNT, count=1)) == [f"c{3 * DAY // S}"]


def test_age_drops_what_ended_longer_ago() -> None:
    vs = timeline(("c", 100 * DAY // S), ("c", 91 * DAY // S), ("c", 89 * DAY // S), ("c", 10))
    # c100d ended 91 d ago (goes), c91d ended 89 d ago (stays), c89d ended 10 s ago, current stays
    assert removed(vs, Policy(AGE, max_age_ns=90 * DAY)) == [f"c{100 * DAY // S}"]
    exactly = timeline(("c", 100 * DAY // S), ("c", 90 * DAY // S))
    assert removed(exactly, Policy(AGE, max_age_ns=90 * DAY)) == []  # exactly the age: kept


def test_a_deletion_ending_kept_content_stays() -> None:
    """Written, deleted, written again: the deletion says the old content ended
    there; without it the old content would seem to last through the gap."""
    vs = timeline(("c", 600), ("d", 500), ("c", 100))
    assert removed(vs, STAG) == []
    assert removed(vs, Policy(COUNT, count=2)) == []


def test_a_deletion_with_nothing_kept_before_it_goes() -> None:
    vs = timeline(("c", 40 * DAY // S), ("d", 35 * DAY // S), ("c", 10))
    assert removed(vs, STAG) == [f"c{40 * DAY // S}", f"d{35 * DAY // S}"]
    assert removed(vs, Policy(COUNT, count=1)) == [f"c{40 * DAY // S}", f"d{35 * DAY // S}"]


def test_a_deletion_after_another_deletion_says_nothing_new() -> None:
    vs = timeline(("c", 600), ("d", 500), ("d", 400), ("c", 100))
    assert removed(vs, STAG) == ["d400"]


def test_newest_deletion_is_kept_even_when_the_content_before_it_goes() -> None:
    vs = timeline(("c", 100), ("c", 90), ("d", 80))
    # c90 ended 80 s ago, c100 ended 90 s ago: 10 s apart in the first hour -> c90 goes
    assert removed(vs, STAG) == ["c90"]
    assert removed(vs, Policy(COUNT, count=1)) == ["c100"]


def test_input_order_does_not_matter_and_empty_is_nothing() -> None:
    vs = timeline(*[("c", 5000 - 7 * i) for i in range(50)], ("d", 1000), ("c", 500))
    shuffled = vs[:]
    random.Random(4).shuffle(shuffled)
    assert removed(shuffled, STAG) == removed(vs, STAG)
    assert to_remove([], STAG, NOW) == []


@pytest.mark.parametrize("seed", range(30))
def test_invariants_on_random_histories(seed: int) -> None:
    """Whatever the history and policy: the newest record and the current file stay;
    every kept deletion (but the newest record) follows kept content."""
    rng = random.Random(seed)
    ago = rng.randint(10, 60 * DAY // S)
    steps = []
    kind = "c"
    for _ in range(rng.randint(1, 60)):
        steps.append((kind, ago))
        ago = max(0, ago - rng.choice([1, 10, 29, 30, 31, 600, 3600, 7200, DAY // S, 3 * DAY // S]))
        kind = "d" if kind == "c" and rng.random() < 0.2 else "c"
    steps = sorted({a: k for k, a in steps}.items(), reverse=True)
    vs = timeline(*[(k, a) for a, k in steps])
    policy = rng.choice([STAG, Policy(COUNT, count=rng.randint(1, 5)), Policy(AGE, max_age_ns=rng.randint(1, 40) * DAY)])
    gone = to_remove(vs, policy, NOW)
    gone_ids = {id(v) for v in gone}
    kept = [v for v in sorted(vs, key=lambda v: v.since_ns) if id(v) not in gone_ids]
    assert vs[0] in kept and all(v in kept for v in vs if v.until_ns is None)
    for older, newer in zip(kept, kept[1:]):
        if newer.deleted and newer is not vs[0]:
            assert not older.deleted
    if kept and kept[0].deleted:
        assert kept[0] is vs[0]


def test_parse_keep_and_age() -> None:
    assert parse_keep("staggered") == Policy(STAGGERED)
    assert parse_keep(" 10 ") == Policy(COUNT, count=10)
    assert parse_keep("90d") == Policy(AGE, max_age_ns=90 * DAY)
    assert parse_age("2w") == 14 * DAY and parse_age("12h") == 12 * HOUR and parse_age("30m") == 30 * MINUTE
    assert parse_age("45s") == 45 * S and parse_age("3D") == 3 * DAY
    for bad in ("0", "-1", "forever", "10x", "1.5d", ""):
        with pytest.raises(ValueError):
            parse_keep(bad)
    for bad in ("30", "0d", "d", "1y"):
        with pytest.raises(ValueError):
            parse_age(bad)
    assert format_age(30 * DAY) == "30d" and format_age(2 * WEEK_NS) == "2w" and format_age(90 * S) == "90s"


WEEK_NS = 7 * DAY


def _cfg(tmp_path, extra: str):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    p = tmp_path / "c.ini"
    p.write_text(f"[skynet]\nservice = local\nstate_dir = {tmp_path / 'st'}\n\n[mapping m]\nsource = {src}\n"
                 f"target = {tmp_path / 'dst'}\n{extra}")
    return p


def test_config_keys_and_their_defaults(tmp_path) -> None:
    m = load(str(_cfg(tmp_path, ""))).mappings[0]
    assert m.versions_keep == Policy(STAGGERED) and m.versions_max_age == 30 * DAY
    m = load(str(_cfg(tmp_path, "versions_keep = 10\nversions_max_age = 2w\n"))).mappings[0]
    assert m.versions_keep == Policy(COUNT, count=10) and m.versions_max_age == 2 * WEEK_NS


@pytest.mark.parametrize("line, key", [("versions_keep = lots", "versions_keep"),
                                       ("versions_keep = 0", "versions_keep"),
                                       ("versions_max_age = 30", "versions_max_age")])
def test_a_bad_value_names_file_section_and_key(tmp_path, line: str, key: str) -> None:
    p = _cfg(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as err:
        load(str(p))
    assert str(err.value).startswith(f"{p}: [mapping m] {key}: expected")
