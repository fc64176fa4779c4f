"""Ignore rules: the one-regex fast path must answer exactly like pathspec."""
from __future__ import annotations

import itertools

import pytest

from skynet.watch.ignore import IgnoreRules

NAMES = ["a", "b.swp", ".x.swo", "4913", "f~", ".#lock", "#a#", ".~lock.x#", "x.tmp", "y.part", ".DS_Store",
         "Thumbs.db", ".skynet-tmp-abc", ".skynet", "build", "node_modules", "x.log", "a b", "ü", "foo.TMP",
         "z.crdownload", ".rsync-partial", "abc", "a.txt"]
USER = ["*.log", "build/", "/top-only", "node_modules", "docs/**/*.bak", "a?c", "[ab].txt", "# a comment", ""]


@pytest.mark.parametrize("patterns", [[], USER], ids=["defaults", "defaults+user"])
def test_one_regex_agrees_with_pathspec(patterns: list[str]) -> None:
    rules = IgnoreRules(patterns)
    assert rules._any is not None  # no negation: the fast path is used
    for depth in (1, 2, 3):
        for names in itertools.product(NAMES, repeat=depth):
            rel = "/".join(names)
            for is_dir in (False, True):
                assert rules.ignored(rel, is_dir) == rules.spec.match_file(rel + "/" if is_dir else rel), (rel, is_dir)


def test_negation_keeps_pattern_order() -> None:
    rules = IgnoreRules(["*.log", "!keep.log"])
    assert rules._any is None  # order matters: pathspec decides
    assert rules.ignored("x.log") and not rules.ignored("keep.log") and not rules.ignored("sub/keep.log")


def test_nothing_to_match() -> None:
    rules = IgnoreRules([], use_defaults=False)
    assert not rules.ignored("anything.swp") and not rules.ignored("x", is_dir=True)
