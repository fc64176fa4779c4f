"""Keeping versions (issue 20 item 1): the keeper, the versions area and the
bucket's own versions, read back through the VersionStore interface.

The store tests drive the keeper and the connection directly with a clock the
test sets, so every rule of skynet/versions/area.py is checked to the
nanosecond on every backend; the end-to-end tests run the daemon."""
from __future__ import annotations

import os

import pytest

from connections.contract.xcon import TransferContext
from skynet.versions.area import AreaStore
from skynet.versions.keeper import AreaKeeper
from skynet.versions.model import Version
from skynet.versions.names import AREA, Clock, area_name, is_area, parse_area_name
from tests.backends import BACKENDS, enabled_backends
from tests.test_xcon_contract import make_file

S = 1_000_000_000  # one second in ns
AREA_BACKENDS = [n for n in enabled_backends() if n in ("local", "sftp", "s3")]


@pytest.fixture
def able(request, tmp_path, servers):
    with BACKENDS[request.param](tmp_path, servers) as b:
        yield b


class FakeClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def put(backend, tmp_path, rel: str, data: bytes, mtime_s: int, mode: int = 0o640) -> None:
    f = make_file(tmp_path, rel, data, mode=mode, mtime_ns=mtime_s * S)
    backend.con.send(f, TransferContext())


def snapshot(store, when_ns: int, prefix: str = "") -> dict[str, tuple[bytes, int | None, int | None]]:
    """{rel: (bytes, mtime, mode)} of the tree at `when_ns`, bytes read through the store."""
    out = {}
    for v in store.at(when_ns, prefix):
        data = store.read_range(v, 0, v.size + 10)
        assert len(data) == v.size, v
        out[v.rel] = (data, v.mtime_ns, v.mode)
    return out


def test_area_names_round_trip():
    for rel in ("a", "a/b.txt", "we@ird/50%/x@y%40z", "x/.skynet-versions/y"):
        name = area_name(rel, 1_733_400_000_123_456_789, "v")
        assert is_area(name) and name.startswith(AREA + "/")
        assert "@" not in name.rpartition("@")[0]  # the user's "@"s are escaped
        parsed = parse_area_name(name)
        assert (parsed.rel, parsed.when_ns, parsed.kind) == (rel, 1_733_400_000_123_456_789, "v")
    assert "20241205T" in area_name("a", 1_733_400_000_000_000_000, "d")
    for junk in (AREA + "/a", AREA + "/a@2024.v", AREA + "/a@20241205T120000.000000000Z.x", "a@x", AREA):
        assert parse_area_name(junk) is None
    assert not is_area(".skynet-versions2/x") and not is_area("a/.skynet-versions/x")


def test_clock_never_repeats():
    c = Clock(lambda: 5)
    assert [c(), c(), c()] == [5, 6, 7]


@pytest.mark.parametrize("able", AREA_BACKENDS, indirect=True)
def test_area_store_follows_overwrite_delete_recreate_and_folder_move(able, tmp_path):
    """v1, overwritten by v2, deleted, recreated as v3, its folder renamed, then
    overwritten by v4 under the new name: at(T) gives each tree as it was, bytes
    read from wherever they are now; history() tiles each path's time."""
    clock = FakeClock()
    keeper = AreaKeeper(able.con, clock=clock)
    store = AreaStore(able.con)
    put(able, tmp_path, "a/f.txt", b"one", 90, mode=0o600)
    put(able, tmp_path, "a/g@x%.txt", b"sibling", 95)
    clock.now = 200 * S
    keeper.replacing("a/f.txt")
    put(able, tmp_path, "a/f.txt", b"version two", 150, mode=0o644)
    clock.now = 300 * S
    keeper.delete("a/f.txt")
    assert able.con.stat("a/f.txt") is None
    put(able, tmp_path, "a/f.txt", b"third", 350)  # recreated (the Index had forgotten it: no keep)
    clock.now = 500 * S
    keeper.move("a", "b")
    clock.now = 600 * S
    keeper.replacing("b/f.txt")
    put(able, tmp_path, "b/f.txt", b"four!", 550)

    g = (b"sibling", 95 * S, 0o640)
    assert snapshot(store, 80 * S) == {}
    assert snapshot(store, 92 * S) == {"a/f.txt": (b"one", 90 * S, 0o600)}
    assert snapshot(store, 250 * S) == {"a/f.txt": (b"version two", 150 * S, 0o644), "a/g@x%.txt": g}
    assert snapshot(store, 320 * S) == {"a/g@x%.txt": g}
    assert snapshot(store, 450 * S) == {"a/f.txt": (b"third", 350 * S, 0o640), "a/g@x%.txt": g}
    assert snapshot(store, 550 * S) == {"b/f.txt": (b"third", 350 * S, 0o640), "b/g@x%.txt": g}
    assert snapshot(store, 700 * S) == {"b/f.txt": (b"four!", 550 * S, 0o640), "b/g@x%.txt": g}
    assert snapshot(store, 450 * S, "a/f.txt") == {"a/f.txt": (b"third", 350 * S, 0o640)}
    assert snapshot(store, 450 * S, "b") == {}

    spans = [(v.since_ns // S, None if v.until_ns is None else v.until_ns // S, v.deleted, v.size)
             for v in store.history("a/f.txt")]
    assert spans == [(500, None, True, 0), (350, 500, False, 5), (300, 350, True, 0), (200, 300, False, 11),
                     (90, 200, False, 3)]
    assert [(v.since_ns // S, v.until_ns and v.until_ns // S) for v in store.history("b/f.txt")] == [
        (600, None), (500, 600)]
    assert [v.rel for v in store.history("")] == sorted(v.rel for v in store.history(""))
    # the mirror's view: only the current files, the area apart
    assert {e.rel for e in able.con.list("") if not is_area(e.rel)} == {"b/f.txt", "b/g@x%.txt"}


def next_second() -> int:
    """The time now, once the clock has passed into the next whole second: SeaweedFS
    gives LastModified in whole seconds, so the next step of a test of its versions
    must not fall into the second of the time recorded (a condition on the clock,
    not a fixed sleep)."""
    import time

    now = time.time_ns()
    while time.time_ns() // S == now // S:
        time.sleep(0.01)
    return now


@pytest.mark.parametrize("able", [n for n in enabled_backends() if n == "seaweedfs"], indirect=True)
def test_native_store_reads_the_buckets_versions(able, tmp_path):
    from skynet.versions.native import NativeStore

    able.enable_versioning()
    assert able.con.versioning_on()
    store = NativeStore(able.con)
    marks = []
    put(able, tmp_path, "d/f.txt", b"one", 90, mode=0o600)
    put(able, tmp_path, "d/g.txt", b"sibling", 95)
    marks.append(next_second())
    put(able, tmp_path, "d/f.txt", b"version two", 150, mode=0o644)
    marks.append(next_second())
    able.con.delete("d/f.txt")
    marks.append(next_second())
    put(able, tmp_path, "d/f.txt", b"third", 350)
    marks.append(next_second())
    able.con.move("d", "e")
    marks.append(next_second())
    g = (b"sibling", 95 * S, 0o640)
    assert snapshot(store, marks[0]) == {"d/f.txt": (b"one", 90 * S, 0o600), "d/g.txt": g}
    assert snapshot(store, marks[1]) == {"d/f.txt": (b"version two", 150 * S, 0o644), "d/g.txt": g}
    assert snapshot(store, marks[2]) == {"d/g.txt": g}
    assert snapshot(store, marks[3]) == {"d/f.txt": (b"third", 350 * S, 0o640), "d/g.txt": g}
    assert snapshot(store, marks[4]) == {"e/f.txt": (b"third", 350 * S, 0o640), "e/g.txt": g}
    assert snapshot(store, marks[3], "d/f.txt") == {"d/f.txt": (b"third", 350 * S, 0o640)}
    hist = list(store.history("d/f.txt"))
    assert [(v.deleted, v.size) for v in hist] == [(True, 0), (False, 5), (True, 0), (False, 11), (False, 3)]
    assert hist[0].until_ns is None and all(a.since_ns == b.until_ns for a, b in zip(hist, hist[1:]))
    # pruning one version: it is gone from the history and from the bucket
    store.remove(hist[3])
    assert [(v.deleted, v.size) for v in store.history("d/f.txt")] == [(True, 0), (False, 5), (True, 0), (False, 3)]
