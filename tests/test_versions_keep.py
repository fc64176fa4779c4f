"""Keeping versions (issue 20 item 1): the keeper, the versions area and the
bucket's own versions, read back through the VersionStore interface.

The store tests drive the keeper and the connection directly with a clock the
test sets, so every rule of skynet/versions/area.py is checked to the
nanosecond on every backend; the end-to-end tests run the daemon."""
from __future__ import annotations


import pytest

from connections.contract.xcon import TransferContext
from skynet.versions.area import AreaStore
from skynet.versions.keeper import AreaKeeper
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


@pytest.mark.parametrize("able", AREA_BACKENDS, indirect=True)
def test_move_onto_a_file_and_onto_a_folder_keeps_what_was_there(able, tmp_path):
    """A move that replaces a file keeps it (as `.v`, with the move's stamp); one that
    replaces a folder keeps the folder's files; before the move both sides show as
    they were, after it the destination holds what came."""
    clock = FakeClock()
    keeper = AreaKeeper(able.con, clock=clock)
    store = AreaStore(able.con)
    put(able, tmp_path, "a.txt", b"aaa", 10)
    put(able, tmp_path, "b.txt", b"bbbb", 20)
    put(able, tmp_path, "x/1", b"x-one", 30)
    put(able, tmp_path, "y/1", b"y-one", 31)
    put(able, tmp_path, "y/2", b"y-two", 32)
    clock.now = 100 * S
    keeper.move("a.txt", "b.txt")
    clock.now = 200 * S
    keeper.move("x", "y")
    before = {"a.txt": b"aaa", "b.txt": b"bbbb", "x/1": b"x-one", "y/1": b"y-one", "y/2": b"y-two"}
    assert {r: d for r, (d, _, _) in snapshot(store, 50 * S).items()} == before
    assert {r: d for r, (d, _, _) in snapshot(store, 150 * S).items()} == {
        "b.txt": b"aaa", "x/1": b"x-one", "y/1": b"y-one", "y/2": b"y-two"}
    assert {r: d for r, (d, _, _) in snapshot(store, 250 * S).items()} == {"b.txt": b"aaa", "y/1": b"x-one"}
    assert [(v.since_ns // S, v.until_ns and v.until_ns // S, v.deleted) for v in store.history("y/2")] == [
        (200, None, True), (32, 200, False)]


@pytest.mark.parametrize("able", [n for n in AREA_BACKENDS if n == "local"], indirect=True)
def test_a_folder_delete_cut_short_anywhere_loses_nothing(able, tmp_path, monkeypatch):
    """A delete moves the files into the area one by one: cut after any number of
    them (a kill -9 there leaves the same state), every file is in place or kept,
    and the delete done again finishes the job; the tree before it reads back whole."""
    files = {f"big/{i}/f{i}": f"content {i}".encode() for i in range(6)}
    for rel, data in files.items():
        put(able, tmp_path, rel, data, 10)
    clock = FakeClock()
    keeper = AreaKeeper(able.con, clock=clock)
    store = AreaStore(able.con)
    real_move = type(able.con).move
    moves: list[str] = []

    def one_move_then_killed(con, src, dest):
        if moves:
            raise OSError("killed")
        moves.append(src)
        real_move(con, src, dest)

    monkeypatch.setattr(type(able.con), "move", one_move_then_killed)
    for cut in range(len(files) - 1):  # each attempt moves one more file in, then dies
        moves.clear()
        clock.now = (100 + cut) * S
        with pytest.raises(OSError):
            keeper.delete("big")
        assert len([e for e in able.con.list("big")]) == len(files) - cut - 1
        assert {v.rel: store.read_range(v, 0, 100) for v in store.at(50 * S)} == files
    monkeypatch.setattr(type(able.con), "move", real_move)
    clock.now = 200 * S
    keeper.delete("big")
    assert [e.rel for e in able.con.list("") if not is_area(e.rel)] == []
    assert {v.rel: store.read_range(v, 0, 100) for v in store.at(50 * S)} == files
    assert list(store.at(300 * S)) == []


@pytest.mark.parametrize("able", [n for n in AREA_BACKENDS if n == "local"], indirect=True)
def test_a_remote_without_hard_links_keeps_by_copy(able, tmp_path, monkeypatch):
    """A target whose file system refuses links (Unsupported): the keeper says so
    once and keeps versions by server-side copy from then on."""
    from connections.contract.xcon import Unsupported

    calls = []

    def no_link(con, src, dest):
        calls.append(src)
        raise Unsupported("no hard links here")

    monkeypatch.setattr(type(able.con), "link", no_link)
    clock = FakeClock()
    keeper = AreaKeeper(able.con, clock=clock)
    store = AreaStore(able.con)
    for i, body in enumerate([b"one", b"two", b"three"]):
        clock.now = (100 + i) * S
        if i:
            keeper.replacing("f")
        put(able, tmp_path, "f", body, 50 + i)
    assert calls == ["f"]  # asked once, then copies
    assert [store.read_range(v, 0, 10) for v in store.history("f")] == [b"three", b"two", b"one"]


@pytest.mark.parametrize("able", [n for n in enabled_backends() if n == "seaweedfs"], indirect=True)
def test_keeper_and_store_agree_on_who_keeps_versions(able, tmp_path, monkeypatch):
    """With bucket versioning on, nothing is written into an area and the store is
    the bucket's; a bucket that will not say (GetBucketVersioning denied) is taken
    as keeping none: the area keeps them, and the store reads the area."""
    from connections.contract.xcon import PermanentError
    from skynet.config.settings import MappingConfig
    from skynet.versions.keeper import keeper_for
    from skynet.versions.native import NativeStore
    from skynet.versions.stores import VersionsOff, store_for

    m = MappingConfig("t", str(tmp_path), "", versions=True)
    with pytest.raises(VersionsOff):
        store_for(able.con, MappingConfig("t", str(tmp_path), ""))
    able.enable_versioning()
    put(able, tmp_path, "f", b"one", 10)
    keeper_for(able.con, True).replacing("f")
    assert [e.rel for e in able.con.list("")] == ["f"]
    assert isinstance(store_for(able.con, m), NativeStore)

    def denied(con):
        raise PermanentError("AccessDenied")

    monkeypatch.setattr(type(able.con), "versioning_on", denied)
    keeper_for(able.con, True).replacing("f")
    assert [is_area(e.rel) for e in able.con.list("")] == [True, False]
    assert isinstance(store_for(able.con, m), AreaStore)


@pytest.mark.parametrize("able", AREA_BACKENDS, indirect=True)
def test_a_current_version_replaced_after_it_was_listed_still_reads_back(able, tmp_path):
    """A restore lists the tree, then reads: a current file replaced (or deleted) in
    between is read from the area, where the keeper put it, never stitched with the
    new bytes."""
    clock = FakeClock()
    keeper = AreaKeeper(able.con, clock=clock)
    store = AreaStore(able.con)
    put(able, tmp_path, "r/f", b"listed version", 10)
    put(able, tmp_path, "r/g", b"deleted later", 11)
    listed = {v.rel: v for v in store.at(50 * S)}
    clock.now = 100 * S
    keeper.replacing("r/f")
    put(able, tmp_path, "r/f", b"a newer version", 60)
    clock.now = 200 * S
    keeper.delete("r/g")
    assert store.read_range(listed["r/f"], 0, 100) == b"listed version"
    assert store.read_range(listed["r/g"], 8, 100) == b"later"


@pytest.mark.parametrize("able", [n for n in AREA_BACKENDS if n == "local"], indirect=True)
def test_a_move_cut_before_its_markers_names_no_wrong_path(able, tmp_path, monkeypatch):
    """The markers are written once the rename is done: a move that fails writes none,
    and one cut between the rename and its markers (a kill -9; here the marker write
    fails) shows its files under the new name only, never under a name they did not
    have; what it replaced is kept. A lone marker (the second one lost) is ignored."""
    clock = FakeClock()
    keeper = AreaKeeper(able.con, clock=clock)
    store = AreaStore(able.con)
    put(able, tmp_path, "s", b"source", 10)
    put(able, tmp_path, "d", b"replaced", 20)
    real_move = type(able.con).move

    def refused(con, src, dest):
        raise OSError("refused")

    monkeypatch.setattr(type(able.con), "move", refused)
    clock.now = 100 * S
    with pytest.raises(OSError):
        keeper.move("s", "d")
    monkeypatch.setattr(type(able.con), "move", real_move)
    assert not [e for e in able.con.list(AREA) if e.rel.endswith((".moved", ".arrived"))]

    def cut(self, name, text):
        raise OSError("killed")

    monkeypatch.setattr(AreaKeeper, "_write_marker", cut)
    clock.now = 200 * S
    keeper.move("s", "d")
    assert {v.rel: store.read_range(v, 0, 100) for v in store.at(150 * S)} == {"d": b"replaced"}
    assert {v.rel: store.read_range(v, 0, 100) for v in store.at(250 * S)} == {"d": b"source"}
    monkeypatch.undo()
    put(able, tmp_path, "s2", b"again", 300)
    clock.now = 400 * S
    keeper.move("s2", "t")
    [arrived] = [e.rel for e in able.con.list(AREA) if e.rel.endswith(".arrived")]
    able.con.delete(arrived)
    # unrecorded now: "again" shows under its new name from its mtime (300), never under s2
    assert {v.rel: store.read_range(v, 0, 100) for v in store.at(350 * S)} == {"d": b"source", "t": b"again"}
    assert {v.rel: store.read_range(v, 0, 100) for v in store.at(450 * S)} == {"d": b"source", "t": b"again"}


@pytest.mark.parametrize("able", AREA_BACKENDS, indirect=True)
def test_a_keep_told_the_size_keeps_the_old_bytes_and_a_lost_file_is_nothing_to_keep(able, tmp_path):
    """replacing(rel, size) -- the engine passes the Index's size, so that S3 keeps the
    version with one CopyObject and no HEAD first -- keeps exactly what replacing(rel)
    kept; a file the remote lost is nothing to keep (no error, nothing in the area)."""
    clock = FakeClock()
    keeper = AreaKeeper(able.con, clock=clock)
    store = AreaStore(able.con)
    put(able, tmp_path, "k/f.txt", b"old bytes", 90)
    clock.now = 200 * S
    keeper.replacing("k/f.txt", 9)
    put(able, tmp_path, "k/f.txt", b"new", 150)
    clock.now = 300 * S
    keeper.replacing("k/gone.txt", 5)
    assert snapshot(store, 100 * S) == {"k/f.txt": (b"old bytes", 90 * S, 0o640)}
    assert snapshot(store, 250 * S) == {"k/f.txt": (b"new", 150 * S, 0o640)}
    assert [(v.rel, v.size) for v in store.history("k")] == [("k/f.txt", 3), ("k/f.txt", 9)]


@pytest.mark.parametrize("able", [n for n in AREA_BACKENDS if n in ("local", "sftp")], indirect=True)
def test_overwrites_go_in_a_batch_each_kept_first(able, tmp_path, monkeypatch):
    """With versions on, small overwrites still take the batch path (send_many) that
    sends with versions off take: each remote version is kept first (all the keeps
    before the batch), so a mirror keeping versions does not fall back to one send
    per file. Old code: every overwrite went through send() one by one."""
    import threading

    from connections.contract.xcon import BatchSend
    from skynet.engine.mapper import Mapper
    from skynet.engine.reconcile import Reconciler
    from skynet.state.db import ResumeTable, StateDB
    from skynet.state.index import Index
    from skynet.state.uniqueq import SEND, UniqueQ
    from skynet.watch.ignore import IgnoreRules

    assert isinstance(able.con, BatchSend)
    src = tmp_path / "src"
    rels = [f"d/f{i}.txt" for i in range(6)]
    for i, rel in enumerate(rels):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"first %d" % i)
    db = StateDB(str(tmp_path / "state.db"))
    queue, index = UniqueQ(db), Index(db)
    clock = FakeClock()
    rec = Reconciler(Mapper(str(src)), able.con, index, queue, ResumeTable(db), IgnoreRules(),
                     keeper=AreaKeeper(able.con, clock=clock))
    try:
        def batch() -> None:
            queue.put_many((SEND, r, "") for r in rels)
            queue.flush()
            actions = queue.claim(len(rels))
            results = rec.run_many(actions, threading.Event())
            assert all(not isinstance(r, Exception) for r in results), results
            queue.finish_many([(a.id, r.index_rows, a.paths()) for a, r in zip(actions, results)])

        import time

        batch()  # the first sync: nothing to keep
        for i, rel in enumerate(rels):
            (src / rel).write_bytes(b"second, longer %d" % i)
        clock.now = kept_at = time.time_ns() + 10 * S
        monkeypatch.setattr(able.con, "send", lambda *a, **k: pytest.fail("an overwrite left the batch"))
        batch()
        store = AreaStore(able.con)

        def tree_at(when: int) -> dict[str, bytes]:
            return {rel: data for rel, (data, _mtime, _mode) in snapshot(store, when).items()}
        assert tree_at(kept_at - 1) == {rel: b"first %d" % i for i, rel in enumerate(rels)}
        assert tree_at(kept_at + 1) == {rel: b"second, longer %d" % i for i, rel in enumerate(rels)}
    finally:
        queue.close()
