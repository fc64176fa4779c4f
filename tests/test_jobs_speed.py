"""Issue 21's speed target: what the job runner does so that a job of many small
items spends little of its CPU outside the transfers (bench/jobs_urls.py measures
it; bench/RESULTS.md, "Issue 21"). The transfer is the fake of tests/jobs_fake.py."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from skynet.config.settings import JobConfig
from skynet.jobs.attempt import HOST_BACKOFF, HostGate
from skynet.jobs.intake import Intake
from skynet.jobs.item import Item, scheme_host
from skynet.jobs.runner import EXIT_DONE, Runner
from skynet.jobs.table import DONE, ItemTable, Outcome
from tests.jobs_fake import FakeTransfer


class CountingTable(ItemTable):
    """An item table that counts its commits of outcomes."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.commits: list[int] = []

    def record(self, outcomes: list[Outcome]) -> None:
        self.commits.append(len(outcomes))
        super().record(outcomes)


def test_outcomes_of_items_finishing_together_share_one_commit(tmp_path: Path) -> None:
    """Eight workers finishing an item each millisecond: their outcomes go into the
    table a handful per transaction (group commit waits a moment for them), not one
    commit per item or two as when the table thread woke for every outcome (measured
    here: 80-140 commits for 300 items before, 19-24 with group commit)."""
    n = 300
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"http://h.example/{i}\n" for i in range(n)))
    job = JobConfig("j", f"urls:{lst}", str(tmp_path / "target"), workers=8, max_attempts=3, retry_after=[30.0])
    table = CountingTable(str(tmp_path / "state" / "j.sqlite"))
    intake = Intake(job, table)
    intake.prepare()
    runner = Runner(job, table, FakeTransfer(delay=0.001), intake=intake)
    assert runner.run() == EXIT_DONE
    assert sum(table.commits) == n
    assert table.counts() == {(DONE, None): n}
    assert len(table.commits) <= n // 6, len(table.commits)


@pytest.mark.parametrize("source", [
    "http://127.0.0.1:8080/a/b.bin", "HTTP://Example.COM/x?y#z", "https://h", "https://h?q", "ftp://u:p@h/x",
    "http://[::1]:80/x", "http://h:abc/x", "a+b.c-d://host/p", "http:///x", "http://h\t/x", " http://h/x",
    "1http://h/x", "http://h#frag", "foo:bar://x/y", "http://h/p@x", "http://us%40er@h/x", "ftp://h",
    "http://H.example.com:8443", "s3:bucket/key", "d/f.bin", "",
])
def test_scheme_and_host_of_a_source_are_urlsplits(source: str) -> None:
    """scheme_host (one regular-expression match for a plain URL, asked for every item:
    its source's scheme, its host's back-off) answers as urlsplit does."""
    parts = urlsplit(source)
    want = (parts.scheme.lower(), parts.netloc.lower()) if "://" in source else ("", "")
    assert scheme_host(source) == want


def test_only_a_host_that_failed_backs_off() -> None:
    """HostGate: nothing to wait for while no host failed (the shortcut every item takes),
    then the failed host's deadline for its items only, until a success clears it."""
    gate = HostGate(HOST_BACKOFF)
    a, b = Item("http://A.example:81/x", "x"), Item("http://b.example/y", "y")
    assert gate.until(a) == 0.0 and gate.until(b) == 0.0
    until = gate.failed(Item("http://a.example:81/other", "o"), 1000.0)
    assert until > 1000.0 and gate.until(a) == until and gate.until(b) == 0.0
    gate.ok(a)
    assert gate.until(a) == 0.0
