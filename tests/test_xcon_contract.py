"""The one test suite every connection must pass (rclone's backend contract idea).

Only the XCon interface is used here, so a connection that passes behaves the
way the handler expects, whatever the storage behind it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from connections.contract.source import SourceChanged
from connections.contract.xcon import (
    BatchSend,
    EtagCheck,
    FolderEntry,
    Folders,
    FreeSpace,
    HardLink,
    InTheWay,
    LocalFile,
    PermanentError,
    PoolSized,
    PutBytes,
    RangeInto,
    RemoteChanged,
    RemoteNotFound,
    ServerSideCopy,
    ServerSideMove,
    Stream,
    StreamSend,
    TakeOver,
    TransferContext,
    UnsafePath,
    Versions,
    WholeRead,
    check_rel,
    read_range_into,
    send_each,
)
from tests.backends import BACKENDS, enabled_backends

MiB = 1 << 20


@pytest.fixture(params=enabled_backends())
def backend(request, tmp_path, servers):
    with BACKENDS[request.param](tmp_path, servers) as b:
        yield b


def make_file(tmp_path, rel: str, data: bytes, mode: int = 0o640, mtime_ns: int = 1_600_000_000_123_456_789):
    path = tmp_path / "src" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    st = os.stat(path)
    return LocalFile(str(path), rel, st.st_size, st.st_mtime_ns, mode, st.st_ino, st.st_uid, st.st_gid)


def send(backend, tmp_path, rel, data, **kw):
    f = make_file(tmp_path, rel, data, **kw)
    return backend.con.send(f, TransferContext())


def listing(backend, rel=""):
    return {e.rel: e for e in backend.con.list(rel)}


def test_send_then_stat_keeps_size_mtime_mode(backend, tmp_path):
    res = send(backend, tmp_path, "a/b/c.txt", b"hello", mode=0o640)
    assert res.size == 5
    e = backend.con.stat("a/b/c.txt")
    assert e is not None and e.size == 5
    prec = backend.con.abilities.mtime_precision_ns
    assert e.mtime_ns is not None and e.mtime_ns // prec == 1_600_000_000_123_456_789 // prec
    if backend.con.abilities.mode:
        assert e.mode == 0o640
    assert backend.leftovers() == []


def test_send_replaces_existing(backend, tmp_path):
    send(backend, tmp_path, "x", b"one")
    send(backend, tmp_path, "x", b"second version")
    assert backend.con.stat("x").size == len(b"second version")
    assert list(listing(backend)) == ["x"]


def test_send_empty_file(backend, tmp_path):
    send(backend, tmp_path, "empty", b"")
    assert backend.con.stat("empty").size == 0


def test_send_progress_reports_total(backend, tmp_path):
    seen = []
    f = make_file(tmp_path, "big.bin", os.urandom(3 << 20))
    backend.con.send(f, TransferContext(progress=lambda d, t: seen.append((d, t))))
    assert seen and seen[-1] == (3 << 20, 3 << 20)


def test_send_missing_local_file_raises_filenotfound(backend, tmp_path):
    f = make_file(tmp_path, "gone", b"x")
    os.unlink(f.path)
    with pytest.raises(FileNotFoundError):
        backend.con.send(f, TransferContext())
    assert backend.con.stat("gone") is None
    assert backend.leftovers() == []


def test_stat_missing_is_none(backend):
    assert backend.con.stat("nope/never") is None


def test_list_is_recursive_and_relative(backend, tmp_path):
    for rel in ("a", "d/b", "d/e/c"):
        send(backend, tmp_path, rel, rel.encode())
    assert set(listing(backend)) == {"a", "d/b", "d/e/c"}
    assert set(listing(backend, "d")) == {"d/b", "d/e/c"}


def test_delete_file_only_that_file(backend, tmp_path):
    for rel in ("foo", "foo.bak", "foo2/x", "foo/x"):
        send(backend, tmp_path, rel.replace("foo/x", "foo_dir/x"), b"1")
    backend.con.delete("foo")
    assert set(listing(backend)) == {"foo.bak", "foo2/x", "foo_dir/x"}
    backend.con.delete("foo")  # missing: not an error


def test_delete_folder_respects_prefix_boundary(backend, tmp_path):
    for rel in ("dir/a", "dir/sub/b", "dir2/c", "dir.bak", "dirx/d"):
        send(backend, tmp_path, rel, b"1")
    backend.con.delete("dir")
    assert set(listing(backend)) == {"dir2/c", "dir.bak", "dirx/d"}


def test_move_file_and_replace(backend, tmp_path):
    send(backend, tmp_path, "m/src.txt", b"moved")
    send(backend, tmp_path, "dest.txt", b"old")
    backend.con.move("m/src.txt", "n/dest.txt")
    backend.con.move("n/dest.txt", "dest.txt")
    assert set(listing(backend)) == {"dest.txt"}
    assert backend.con.stat("dest.txt").size == 5


def test_move_folder_moves_everything_under_it(backend, tmp_path):
    for i in range(5):
        send(backend, tmp_path, f"old/sub{i % 2}/f{i}", b"z" * i)
    send(backend, tmp_path, "old2/keep", b"k")
    backend.con.move("old", "new")
    got = listing(backend)
    assert set(got) == {f"new/sub{i % 2}/f{i}" for i in range(5)} | {"old2/keep"}


def test_move_missing_source_raises(backend):
    with pytest.raises(RemoteNotFound):
        backend.con.move("not-there", "x")


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a/../../b", "", "a//b", "./a"])
def test_paths_outside_root_refused(backend, tmp_path, bad):
    with pytest.raises(UnsafePath):
        check_rel(bad)
    if bad:
        with pytest.raises(UnsafePath):
            backend.con.delete(bad)
        with pytest.raises(UnsafePath):
            backend.con.move(bad, "x")


def test_odd_names_arrive_intact(backend, tmp_path):
    names = ["with space", "quote's \"double\"", "$(touch pwned)", "uni-çé日本", "semi;colon&amp"]
    for n in names:
        send(backend, tmp_path, f"odd/{n}", n.encode())
    assert set(listing(backend, "odd")) == {f"odd/{n}" for n in names}
    assert not os.path.exists("pwned")


def test_parallel_sends_from_threads(backend, tmp_path):
    files = [make_file(tmp_path, f"p/{i}", os.urandom(1000 + i)) for i in range(24)]
    errors = []

    def run(chunk):
        try:
            for f in chunk:
                backend.con.send(f, TransferContext())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(files[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = listing(backend, "p")
    assert {k: v.size for k, v in got.items()} == {f"p/{i}": 1000 + i for i in range(24)}


def test_send_many_sends_each_file_and_reports_each_failure_alone(backend, tmp_path):
    """send_many (batched by LocalCon, one send() after another elsewhere): every
    file arrives with its mtime and mode, names repeat across folders, and a file
    that vanished fails alone."""
    files = [make_file(tmp_path, f"m/{d}/same-{i}.txt", f"{d}-{i}".encode() * 30, mode=0o600 + d,
                       mtime_ns=1_600_000_000_000_000_000 + i) for d in range(3) for i in range(6)]
    odd = make_file(tmp_path, "m/-dash\nnew line $(x)", b"odd")
    gone = make_file(tmp_path, "m/gone.txt", b"soon gone")
    os.unlink(gone.path)
    batch = files + [odd, gone]
    con = backend.con  # a batching backend's own send_many; else what the engine does instead
    results = con.send_many(batch, threading.Event()) if isinstance(con, BatchSend) else send_each(con, batch, threading.Event())
    assert len(results) == len(batch)
    assert isinstance(results[-1], FileNotFoundError)
    assert all(not isinstance(r, Exception) and r.size == f.size for f, r in zip(batch[:-1], results[:-1]))
    got = listing(backend, "m")
    prec = backend.con.abilities.mtime_precision_ns
    for f in files + [odd]:
        e = backend.con.stat(f.rel)
        assert e is not None and e.size == f.size and e.mtime_ns // prec == f.mtime_ns // prec
        if backend.con.abilities.mode:
            assert e.mode == f.mode
    assert "m/gone.txt" not in got
    assert backend.leftovers() == []


# -- reading back ----------------------------------------------------------------------

#: the optional abilities each backend declares (by inheriting the typed mixins of
#: connections/contract/xcon.py); every one is exercised for that backend below
DECLARED = {
    "local": {BatchSend, ServerSideMove, ServerSideCopy, HardLink, FreeSpace, StreamSend, Folders, TakeOver, PutBytes},
    "s3": {ServerSideMove, ServerSideCopy, Versions, PoolSized, EtagCheck, WholeRead, StreamSend, RangeInto},
    "seaweedfs": {ServerSideMove, ServerSideCopy, Versions, PoolSized, EtagCheck, WholeRead, StreamSend, RangeInto},
    "sftp": {BatchSend, ServerSideMove, HardLink, FreeSpace, StreamSend, Folders},
}
ABILITIES = (BatchSend, ServerSideMove, ServerSideCopy, HardLink, FreeSpace, PoolSized, EtagCheck, Versions, WholeRead,
             StreamSend, Folders, RangeInto, TakeOver, PutBytes)


def with_ability(ability) -> list:
    """The enabled backends that declare `ability` (see DECLARED), as pytest params."""
    return [n for n in enabled_backends() if ability in DECLARED[n]]


@pytest.fixture
def able(request, tmp_path, servers):
    """A backend named by the test's indirect parameter (one that declares the ability tested)."""
    with BACKENDS[request.param](tmp_path, servers) as b:
        yield b


def check_metadata(backend, e, size: int, mtime_ns: int, mode: int, *, listed: bool = False) -> None:
    """A stat() or list() entry holds what was sent: size always; mtime to the backend's
    precision (an S3 listing: the time the server stored it, flagged as such); the mode
    where the backend keeps it (an S3 listing carries no metadata)."""
    assert e.size == size
    s3_listing = listed and backend.service == "s3"
    if s3_listing:
        assert e.mtime_is_stored and e.mtime_ns is not None and e.mode is None
    else:
        prec = backend.con.abilities.mtime_precision_ns
        assert not e.mtime_is_stored and e.mtime_ns is not None and e.mtime_ns // prec == mtime_ns // prec
        if backend.con.abilities.mode:
            assert e.mode == mode
    if backend.service == "s3":
        assert e.etag and len(e.etag) == 32
    else:
        assert e.etag is None


def test_send_then_read_back_every_byte_and_the_metadata(backend, tmp_path):
    data = os.urandom(1_500_007)
    mtime = 1_600_000_000_987_654_321
    send(backend, tmp_path, "r/blob.bin", data, mode=0o604, mtime_ns=mtime)
    assert backend.con.read_range("r/blob.bin", 0, len(data)) == data
    pieces, pos = [], 0
    for n in (1, 4095, 65_536, 262_145, 1_000_000, 10**9):  # odd sizes; the last one runs past the end
        pieces.append(backend.con.read_range("r/blob.bin", pos, n))
        pos += len(pieces[-1])
    assert b"".join(pieces) == data
    check_metadata(backend, backend.con.stat("r/blob.bin"), len(data), mtime, 0o604)
    [listed] = backend.con.list("r")
    assert listed.rel == "r/blob.bin"
    check_metadata(backend, listed, len(data), mtime, 0o604, listed=True)
    if backend.service == "s3":
        assert listed.etag == backend.con.stat("r/blob.bin").etag


def test_read_range_at_the_edges(backend, tmp_path):
    data = bytes(range(256)) * 40  # 10,240 bytes
    n = len(data)
    send(backend, tmp_path, "edge", data)
    send(backend, tmp_path, "empty", b"")
    read = backend.con.read_range
    assert read("edge", 0, 1) == data[:1]
    assert read("edge", n - 1, 1) == data[-1:]  # the last byte
    assert read("edge", n - 1, 100) == data[-1:]  # a range crossing the end: what there is
    assert read("edge", 5000, n) == data[5000:]
    assert read("edge", n, 1) == b""  # exactly at the end
    assert read("edge", n + 12345, 10) == b""  # past the end
    assert read("edge", 0, 0) == b"" and read("edge", 77, 0) == b""  # length 0
    assert read("empty", 0, 10) == b"" and read("empty", 0, 0) == b""
    with pytest.raises(ValueError):
        read("edge", -1, 5)
    with pytest.raises(ValueError):
        read("edge", 0, -5)
    for missing in ("nope", "edge/below-a-file", "no/such/folder"):
        with pytest.raises(RemoteNotFound):
            read(missing, 0, 10)
    with pytest.raises(UnsafePath):
        read("../escape", 0, 1)


def test_read_range_refuses_another_version_than_expected(backend, tmp_path):
    send(backend, tmp_path, "v.txt", b"first version")
    first = backend.con.stat("v.txt")
    [listed] = backend.con.list("")
    assert backend.con.read_range("v.txt", 0, 5, expect=first) == b"first"
    assert backend.con.read_range("v.txt", 6, 100, expect=listed) == b"version"
    send(backend, tmp_path, "v.txt", b"the second version, longer")
    for stale in (first, listed):
        for offset, length in ((0, 5), (3, 0), (100, 5)):  # a read, an empty one, one past the end
            with pytest.raises(RemoteChanged):
                backend.con.read_range("v.txt", offset, length, expect=stale)
    now = backend.con.stat("v.txt")
    assert backend.con.read_range("v.txt", 0, 100, expect=now) == b"the second version, longer"


def test_read_range_into_writes_each_range_at_its_offset(backend, tmp_path):
    """read_range_into (streamed where the backend is RangeInto, else one read_range): the
    pieces of a range arrive in order and, written at the range's offset, rebuild the file;
    the edges as read_range's; a stale `expect` refused before any byte reaches the sink."""
    data = os.urandom(3 * MiB + 12_345)  # several receive buffers' worth per range
    n = len(data)
    send(backend, tmp_path, "into.bin", data)
    entry = backend.con.stat("into.bin")
    out = os.open(tmp_path / "out.bin", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        def write_at(pos: int):
            at = [pos]

            def sink(piece: memoryview) -> None:
                os.pwrite(out, piece, at[0])
                at[0] += len(piece)
            return sink

        ranges = [(2 * MiB, 2 * MiB), (0, MiB), (MiB, MiB)]  # out of order, the last one crossing the end
        for offset, length in ranges:
            got = read_range_into(backend.con, "into.bin", offset, length, write_at(offset), expect=entry)
            assert got == min(length, n - offset)
        assert os.pread(out, n + 10, 0) == data
    finally:
        os.close(out)

    def collect(rel, offset, length, **kw):
        pieces: list[bytes] = []
        got = read_range_into(backend.con, rel, offset, length, lambda p: pieces.append(bytes(p)), **kw)
        assert got == sum(map(len, pieces))
        return b"".join(pieces)

    assert collect("into.bin", n - 1, 100) == data[-1:]
    assert collect("into.bin", n, 1) == b"" and collect("into.bin", n + 99, 5) == b""
    assert collect("into.bin", 77, 0) == b""
    with pytest.raises(ValueError):
        collect("into.bin", -1, 5)
    with pytest.raises(RemoteNotFound):
        collect("nope", 0, 10)
    send(backend, tmp_path, "into.bin", b"another version")
    reached: list[int] = []
    for offset, length in ((0, 5), (100, MiB), (3, 0)):
        with pytest.raises(RemoteChanged):
            read_range_into(backend.con, "into.bin", offset, length, lambda p: reached.append(len(p)), expect=entry)
    assert reached == []  # not one byte of the other version


def test_stat_and_list_fields(backend, tmp_path):
    send(backend, tmp_path, "f/one", b"1" * 10, mode=0o600, mtime_ns=1_500_000_000_000_000_000)
    send(backend, tmp_path, "f/sub/two", b"", mode=0o644, mtime_ns=1_700_000_000_500_000_000)
    got = listing(backend, "f")
    assert set(got) == {"f/one", "f/sub/two"}
    check_metadata(backend, got["f/one"], 10, 1_500_000_000_000_000_000, 0o600, listed=True)
    check_metadata(backend, got["f/sub/two"], 0, 1_700_000_000_500_000_000, 0o644, listed=True)
    check_metadata(backend, backend.con.stat("f/one"), 10, 1_500_000_000_000_000_000, 0o600)
    assert backend.con.stat("f") is None  # a folder is no file
    assert backend.con.stat("f/sub") is None


def test_listing_never_yields_siblings_of_the_prefix(backend, tmp_path):
    for rel in ("foo/a", "foo/b/c", "foo.bak", "foo2/x", "foo-x", "fo", "foobar/y"):
        send(backend, tmp_path, rel, b"1")
    assert set(listing(backend, "foo")) == {"foo/a", "foo/b/c"}
    assert set(listing(backend, "foo/b")) == {"foo/b/c"}
    assert set(listing(backend, "foo.bak")) == set()  # a file, not a folder: nothing under it
    assert set(listing(backend, "fo")) == set()


LISTED = 10_000


def test_listing_of_10000_keys_is_streamed_and_exact(backend, tmp_path):
    """10,000 files in 10 folders (seeded straight into the store), with siblings that
    share the prefix. The listing is streamed: once its first entry has arrived, a file
    is added to each folder; a listing built whole before it yields would show none of
    them, a streamed one (paged, or folder by folder) shows those it has not read yet."""
    files = {f"big/d{i % 10}/f{i:05d}": b"x" * (i % 7) for i in range(LISTED)}
    files.update({"big.bak": b"no", "big2/x": b"no", "bigger/y": b"no"})
    backend.seed(files)
    entries = iter(backend.con.list("big"))
    first = next(entries)
    for d in range(10):
        send(backend, tmp_path, f"big/d{d}/zz-late", b"late")
    got = {first.rel: first.size, **{e.rel: e.size for e in entries}}
    late = {rel for rel in got if rel.endswith("/zz-late")}
    assert late, "the listing was built whole before its first entry was handed out"
    seeded = {rel: size for rel, size in got.items() if rel not in late}
    assert seeded == {rel: len(data) for rel, data in files.items() if rel.startswith("big/")}


# -- optional abilities: each one a backend declares is exercised here ---------------------


def test_backends_declare_their_abilities_by_type(backend):
    declared = {a for a in ABILITIES if isinstance(backend.con, a)}
    assert declared == DECLARED[backend.con.service if backend.con.service != "s3" else backend.service]


@pytest.mark.parametrize("able", with_ability(ServerSideCopy), indirect=True)
def test_server_side_copy(able, tmp_path):
    data = os.urandom(70_001)
    send(able, tmp_path, "c/src.bin", data, mode=0o640, mtime_ns=1_600_000_000_000_000_000)
    send(able, tmp_path, "c2/dest.bin", b"old")
    able.con.copy("c/src.bin", "c2/dest.bin")  # replaces
    able.con.copy("c/src.bin", "c3/deep/new.bin")  # makes folders
    for rel in ("c/src.bin", "c2/dest.bin", "c3/deep/new.bin"):
        assert able.con.read_range(rel, 0, len(data) + 1) == data
        check_metadata(able, able.con.stat(rel), len(data), 1_600_000_000_000_000_000, 0o640)
    with pytest.raises(RemoteNotFound):
        able.con.copy("c/missing", "c/x")
    assert able.con.stat("c/x") is None
    assert able.leftovers() == []


@pytest.mark.parametrize("able", with_ability(WholeRead), indirect=True)
def test_whole_read_gives_bytes_and_metadata_of_the_version_listed(able, tmp_path):
    data = os.urandom(12_345)
    send(able, tmp_path, "w/a.bin", data, mode=0o640, mtime_ns=1_600_000_000_000_000_000)
    listed = next(e for e in able.con.list("w") if e.rel == "w/a.bin")
    entry, got = able.con.read_whole("w/a.bin", expect=listed)
    assert got == data
    check_metadata(able, entry, len(data), 1_600_000_000_000_000_000, 0o640)
    send(able, tmp_path, "w/a.bin", b"another version")
    with pytest.raises(RemoteChanged):
        able.con.read_whole("w/a.bin", expect=listed)


@pytest.mark.parametrize("able", with_ability(ServerSideMove), indirect=True)
def test_server_side_move_keeps_bytes_and_metadata(able, tmp_path):
    data = os.urandom(33_333)
    send(able, tmp_path, "mv/a.bin", data, mode=0o600, mtime_ns=1_650_000_000_000_000_000)
    able.con.move("mv/a.bin", "mv2/b.bin")
    assert able.con.stat("mv/a.bin") is None
    assert able.con.read_range("mv2/b.bin", 0, len(data)) == data
    check_metadata(able, able.con.stat("mv2/b.bin"), len(data), 1_650_000_000_000_000_000, 0o600)


@pytest.mark.parametrize("able", with_ability(HardLink), indirect=True)
def test_hard_link_keeps_the_old_bytes_when_the_file_is_replaced(able, tmp_path):
    """The versions area's cheap keep: a second name for a file, in folders made for
    it, that still holds the old bytes, mtime and mode after a send replaced the first."""
    data = os.urandom(40_000)
    send(able, tmp_path, "l/a.bin", data, mode=0o600, mtime_ns=1_650_000_000_000_000_000)
    able.con.link("l/a.bin", "kept/deep/a.bin@1")
    send(able, tmp_path, "l/a.bin", b"new bytes", mode=0o644)
    assert able.con.read_range("kept/deep/a.bin@1", 0, len(data) + 1) == data
    check_metadata(able, able.con.stat("kept/deep/a.bin@1"), len(data), 1_650_000_000_000_000_000, 0o600)
    assert able.con.read_range("l/a.bin", 0, 100) == b"new bytes"
    with pytest.raises(RemoteNotFound):
        able.con.link("l/missing", "kept/x")
    with pytest.raises(RemoteNotFound):
        able.con.link("l", "kept/folder")  # a folder is no file to link
    with pytest.raises(PermanentError):
        able.con.link("l/a.bin", "kept/deep/a.bin@1")  # the name is taken
    with pytest.raises(UnsafePath):
        able.con.link("l/a.bin", "../outside")
    assert able.con.stat("kept/x") is None and able.leftovers() == []


@pytest.mark.parametrize("able", with_ability(TakeOver), indirect=True)
def test_take_over_lands_the_very_file_without_a_copy(able, tmp_path):
    """The gateway's landing of a finished upload: the remote name becomes the same
    inode (nothing copied), with the file's mtime and mode, no temporary left; a
    file replaced or changed since it was looked at is refused, nothing lands."""
    data = os.urandom(70_000)
    f = make_file(tmp_path, "t/deep/a.bin", data, mode=0o640, mtime_ns=1_650_000_000_000_000_000)
    res = able.con.take_over(f)
    assert res.size == len(data) and res.bytes_sent == 0
    assert able.con.read_range("t/deep/a.bin", 0, len(data) + 1) == data
    check_metadata(able, able.con.stat("t/deep/a.bin"), len(data), 1_650_000_000_000_000_000, 0o640)
    assert os.stat(f.path).st_nlink == 2  # one inode, two names: no byte was copied
    g = make_file(tmp_path, "t/deep/b.bin", b"second", mode=0o600)
    able.con.take_over(dataclasses.replace(g, rel="t/deep/a.bin"))  # over the first: renamed over it
    able.con.take_over(dataclasses.replace(g, rel="t/deep/a.bin"))  # twice: one inode, no temporary left
    assert able.con.read_range("t/deep/a.bin", 0, 100) == b"second"
    os.unlink(g.path)
    with open(g.path, "wb") as out:  # another file at the path: not the one that was looked at
        out.write(b"planted")
    with pytest.raises(SourceChanged):
        able.con.take_over(dataclasses.replace(g, rel="t/deep/a.bin"))
    assert able.con.read_range("t/deep/a.bin", 0, 100) == b"second" and able.leftovers() == []


@pytest.mark.parametrize("able", with_ability(PutBytes), indirect=True)
def test_put_bytes_lands_new_and_replaced_files_whole(able):
    """The gateway's direct landing of a whole small upload: bytes from memory become
    the file (its folders made), with the mode asked for; over an existing file
    `replacing` is called once, before the file changes; no temporary is left; a
    folder in the way is refused and nothing lands."""
    data = os.urandom(70_000)
    seen = []
    res = able.con.put_bytes("p/deep/a.bin", memoryview(data), mode=0o640, replacing=lambda: seen.append("new"))
    assert res.size == len(data) and seen == []  # nothing was there: nothing to keep
    assert able.con.read_range("p/deep/a.bin", 0, len(data) + 1) == data
    assert able.con.stat("p/deep/a.bin").mode == 0o640
    able.con.put_bytes("p/deep/a.bin", b"second",
                       replacing=lambda: seen.append(able.con.read_range("p/deep/a.bin", 0, len(data))))
    assert seen == [data] and able.con.read_range("p/deep/a.bin", 0, 100) == b"second"
    assert able.con.stat("p/deep/a.bin").mode == 0o644
    able.con.put_bytes("p/deep/empty.bin", b"")
    assert able.con.stat("p/deep/empty.bin").size == 0

    def cut() -> None:  # a send that dies after writing, before the file is in place
        raise RuntimeError("cut short")

    with pytest.raises(RuntimeError):
        able.con.put_bytes("p/deep/a.bin", b"third", replacing=cut)
    assert able.con.read_range("p/deep/a.bin", 0, 100) == b"second" and able.leftovers() == []
    able.con.make_folder("p/dir", 0o755)
    with pytest.raises(PermanentError):
        able.con.put_bytes("p/dir", b"x")
    assert able.con.stat("p/dir") is None and able.leftovers() == []


def folder_listing(backend, rel=""):
    return {e.rel: e.mode for e in backend.con.list_folders(rel)}


@pytest.mark.parametrize("able", with_ability(Folders), indirect=True)
def test_folders_made_empty_with_their_modes_and_listed(able, tmp_path):
    con = able.con
    con.make_folder("empty", 0o750)
    con.make_folder("deep/er/est", 0o700)  # the folders above are made too
    con.make_folder("special", 0o4755 | 0o2000 | 0o1000)  # never setuid, setgid or sticky
    send(able, tmp_path, "full/f.txt", b"kept")
    con.make_folder("full", 0o711)  # a folder already there: its mode changes, its files stay
    got = folder_listing(able)
    assert got["empty"] == 0o750 and got["deep/er/est"] == 0o700 and got["special"] == 0o755
    assert got["full"] == 0o711 and con.stat("full/f.txt").size == 4
    assert set(got) == {"empty", "deep", "deep/er", "deep/er/est", "special", "full"}
    assert list(listing(able)) == ["full/f.txt"]  # list() lists files only
    assert folder_listing(able, "deep") == {"deep/er": got["deep/er"], "deep/er/est": 0o700}
    con.make_folder("empty", 0o755)  # made again: no error, the new mode
    assert folder_listing(able)["empty"] == 0o755
    con.delete("deep")  # delete() takes a folder with what is in it
    assert not any(rel.startswith("deep") for rel in folder_listing(able))
    assert able.leftovers() == []


@pytest.mark.parametrize("able", with_ability(Folders), indirect=True)
def test_one_folder_is_looked_at_by_its_name(able, tmp_path):
    con = able.con
    con.make_folder("a/b", 0o750)
    send(able, tmp_path, "a/file", b"f")
    assert con.folder("a/b") == FolderEntry("a/b", 0o750) and con.folder("a").rel == "a"
    for rel in ("a/file", "a/missing", "missing/b", "a/file/below"):  # a file, nothing, nothing above
        assert con.folder(rel) is None, rel


@pytest.mark.parametrize("able", with_ability(Folders), indirect=True)
def test_folder_listing_never_yields_siblings_of_the_prefix(able):
    for rel in ("dir/a", "dir.bak", "dir2", "dirx/d"):
        able.con.make_folder(rel, 0o755)
    assert set(folder_listing(able, "dir")) == {"dir/a"}
    assert folder_listing(able, "nothere") == {}


@pytest.mark.parametrize("able", with_ability(Folders), indirect=True)
def test_what_is_in_the_way_is_named_never_replaced(able, tmp_path):
    """A file where a folder must be, a folder where a file must go: InTheWay, naming
    the blocker (the engine decides whether it may go), and nothing changed."""
    con = able.con
    send(able, tmp_path, "file", b"a file")
    con.make_folder("folder", 0o755)
    send(able, tmp_path, "folder/inside", b"in")
    for call, blocker in ((lambda: con.make_folder("file", 0o755), "file"),
                          (lambda: con.make_folder("file/sub", 0o755), "file"),
                          (lambda: send(able, tmp_path / "b", "file/below.txt", b"x"), "file"),  # (another
                          (lambda: send(able, tmp_path / "c", "folder", b"x"), "folder"),  # local tree)
                          (lambda: con.move("file", "folder"), "folder"),
                          (lambda: con.move("folder", "file"), "file")):
        with pytest.raises(InTheWay) as info:
            call()
        assert info.value.blocker == blocker, (info.value, blocker)
        assert "in the way" in str(info.value)
    assert con.stat("file").size == 6 and con.stat("folder/inside").size == 2
    assert set(folder_listing(able)) == {"folder"}
    assert able.leftovers() == []


@pytest.mark.parametrize("able", with_ability(FreeSpace), indirect=True)
def test_free_space(able):
    free = able.con.free_space()
    assert isinstance(free, int) and free > 0


@pytest.mark.parametrize("able", with_ability(PoolSized), indirect=True)
def test_pool_sized_for_the_workers(able, tmp_path):
    able.con.size_pool(40)
    files = [make_file(tmp_path, f"pool/{i}", b"p" * i) for i in range(48)]
    with ThreadPoolExecutor(40) as pool:
        list(pool.map(lambda f: able.con.send(f, TransferContext()), files))
    assert {e.rel: e.size for e in able.con.list("pool")} == {f"pool/{i}": i for i in range(48)}


@pytest.mark.parametrize("able", with_ability(EtagCheck), indirect=True)
def test_etag_check_recomputes_the_remote_hash(able, tmp_path):
    f = make_file(tmp_path, "e/file", os.urandom(5000))
    able.con.send(f, TransferContext())
    [listed] = able.con.list("e")
    assert listed.etag in able.con.local_etags(f)
    other = make_file(tmp_path, "e/other", os.urandom(5000))
    assert listed.etag not in able.con.local_etags(other)


@pytest.mark.parametrize("able", [n for n in with_ability(Versions) if n == "seaweedfs"], indirect=True)
def test_versions_on_a_versioned_bucket(able, tmp_path):
    """Three versions and a delete marker of one key, on a bucket with versioning on; the
    versions of `h` never include `h.bak` or `h2/x`, and each version reads back whole."""
    able.enable_versioning()
    bodies = [b"one", b"version two", b"the third version"]
    for i, body in enumerate(bodies):
        send(able, tmp_path, "h", body, mtime_ns=1_600_000_000_000_000_000 + i)
    send(able, tmp_path, "h.bak", b"not h")
    send(able, tmp_path, "h2/x", b"not h")
    able.con.delete("h")
    versions = list(able.con.list_versions("h"))
    assert [v.deleted for v in versions] == [True, False, False, False]
    assert versions[0].latest and not any(v.latest for v in versions[1:])
    assert {v.rel for v in versions} == {"h"}
    assert len({v.version_id for v in versions}) == 4
    assert [v.size for v in versions[1:]] == [len(b) for b in reversed(bodies)]
    for v, body in zip(versions[1:], reversed(bodies)):
        assert able.con.read_version_range("h", v.version_id, 0, 1000) == body
        assert able.con.read_version_range("h", v.version_id, 4, 3) == body[4:7]
        assert able.con.read_version_range("h", v.version_id, len(body), 3) == b""
    with pytest.raises(RemoteNotFound):
        able.con.read_version_range("h", versions[0].version_id, 0, 10)  # the delete marker
    with pytest.raises(RemoteNotFound):
        able.con.read_range("h", 0, 10)  # deleted now
    assert [v.deleted for v in able.con.list_versions("h.bak")] == [False]
    # every key under a folder (or the file itself), grouped by key, newest first
    assert able.con.versioning_on()
    under = list(able.con.list_versions_under("h"))
    assert [(v.rel, v.deleted) for v in under] == [("h", True), ("h", False), ("h", False), ("h", False)]
    assert {v.rel for v in able.con.list_versions_under("")} == {"h", "h.bak", "h2/x"}
    assert [v.rel for v in able.con.list_versions_under("h2")] == ["h2/x"]
    one = able.con.stat_version("h", versions[2].version_id)
    check_metadata(able, one, len(bodies[1]), 1_600_000_000_000_000_001, 0o640)
    with pytest.raises(RemoteNotFound):
        able.con.stat_version("h", versions[0].version_id)  # the delete marker
    able.con.delete_version("h", versions[2].version_id)
    assert [v.version_id for v in able.con.list_versions("h")] == [versions[i].version_id for i in (0, 1, 3)]
    able.con.delete_version("h", versions[2].version_id)  # gone already: no error


@pytest.mark.parametrize("able", [n for n in with_ability(Versions) if n == "s3"], indirect=True)
def test_versioning_off_is_told(able):
    """A bucket without versioning (rclone serve s3 has none) says so: the versions
    area keeps versions there."""
    assert able.con.versioning_on() is False


@pytest.mark.parametrize("able", [n for n in enabled_backends() if n in ("local", "sftp")], indirect=True)
def test_read_range_follows_no_link(able, tmp_path):
    """On a file-system remote, a link at the name or on the way is no file of ours:
    read_range reads nothing through it (as writes and deletes never go through one)."""
    root = able.config["mapping"]["target"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not ours")
    os.chmod(outside, 0o755)
    os.chmod(outside / "secret", 0o644)
    os.symlink(outside / "secret", os.path.join(root, "file-link"))
    os.symlink(outside, os.path.join(root, "folder-link"))
    for rel in ("file-link", "folder-link/secret"):
        with pytest.raises(RemoteNotFound):
            able.con.read_range(rel, 0, 100)
        assert able.con.stat(rel) is None
    (outside / "sub").mkdir()
    for rel in ("folder-link", "folder-link/sub"):  # nor is a folder reached through one
        assert able.con.folder(rel) is None


def test_fetch_through_the_chunk_scheduler_reads_every_byte(backend, tmp_path):
    """skynet/transfer/fetch.py on the backend's read_range: ranged, parallel chunks pinned
    to the version listed; replaced on the remote before the fetch, it is refused."""
    from skynet.transfer.fetch import fetch

    data = os.urandom(300_003)
    send(backend, tmp_path, "dl/big.bin", data)
    entry = backend.con.stat("dl/big.bin")
    dest = tmp_path / "fetched.bin"
    with ThreadPoolExecutor(4) as pool:
        assert fetch(backend.con, entry, str(dest), TransferContext(), pool, chunk_size=65_536, concurrency=4) == len(data)
        assert dest.read_bytes() == data
        send(backend, tmp_path, "dl/big.bin", data + b"grown")
        with pytest.raises(RemoteChanged):
            fetch(backend.con, entry, str(tmp_path / "again.bin"), TransferContext(), pool, chunk_size=65_536)


class MemorySource:
    """A StreamOpener over bytes in memory: counts what each open read, and can set
    `stop` once `stop_at` bytes are read (a run window closing mid-file)."""

    def __init__(self, data: bytes, version: str = "v1", *, sized: bool = True, mtime_ns: int | None = None,
                 mode: int | None = None, checked: bool = False) -> None:
        self.data, self.version, self.sized, self.mtime_ns, self.mode = data, version, sized, mtime_ns, mode
        self.checked = checked
        self.opened: list[int] = []  # offsets asked for
        self.read_bytes: list[int] = []  # bytes read per open
        self.stop: threading.Event | None = None
        self.stop_at: int | None = None

    def __call__(self, offset: int) -> Stream:
        self.opened.append(offset)
        self.read_bytes.append(0)
        pos = [offset]
        k = len(self.read_bytes) - 1

        def read(n: int) -> bytes:
            chunk = self.data[pos[0]:pos[0] + min(n, 1 << 20)]
            pos[0] += len(chunk)
            self.read_bytes[k] += len(chunk)
            if self.stop is not None and self.stop_at is not None and pos[0] >= self.stop_at:
                self.stop.set()
            return chunk

        return Stream(offset, len(self.data) if self.sized else None, self.version, read, lambda: None,
                      {"source-url": "mem://x"}, self.mtime_ns, self.mode, checked=self.checked)


@pytest.mark.parametrize("able", with_ability(StreamSend), indirect=True)
def test_stream_send_resumes_mid_file_and_never_stitches(able, tmp_path):
    """StreamSend: stopped mid-file, the next attempt asks the source only for what the
    remote lacks and re-sends nothing it kept; another version starts over; a wrong MD5
    leaves nothing; mtime and mode travel with the stream."""
    from connections.contract.xcon import ChecksumMismatch, NullResumeStore
    from skynet.transfer.chunks import TransferStopped

    con = able.con
    data = os.urandom(40 * MiB + 3)  # S3: past the one-PUT limit (16 MiB), 8 MiB parts
    mtime = 1_650_000_000_000_000_000
    src = MemorySource(data, mtime_ns=mtime, mode=0o640)
    store = NullResumeStore()
    stop = threading.Event()
    src.stop, src.stop_at = stop, 25 * MiB
    with pytest.raises(TransferStopped):
        con.send_stream("s/big.bin", src, TransferContext(resume=store, stop=stop))
    assert con.stat("s/big.bin") is None and store.load()
    src.stop = None
    res = con.send_stream("s/big.bin", src, TransferContext(resume=store))
    assert con.read_range("s/big.bin", 0, len(data) + 1) == data
    resumed_at = src.opened[-1]
    assert resumed_at >= 24 * MiB and src.read_bytes[-1] == len(data) - resumed_at
    assert res.size == len(data) and res.bytes_sent <= len(data) - resumed_at
    e = con.stat("s/big.bin")  # (a multipart ETag is no MD5: check_metadata's etag rule is for sends)
    prec = con.abilities.mtime_precision_ns
    assert e.size == len(data) and e.mtime_ns // prec == mtime // prec and not e.mtime_is_stored
    assert e.mode == 0o640 or not con.abilities.mode
    assert store.load() is None

    # another version of the source after a stop: started over, never stitched
    new = os.urandom(len(data))
    stop.clear()
    src2 = MemorySource(data, "v1")
    src2.stop, src2.stop_at = stop, 25 * MiB
    with pytest.raises(TransferStopped):
        con.send_stream("s/v.bin", src2, TransferContext(resume=store, stop=stop))
    src3 = MemorySource(new, "v2")
    con.send_stream("s/v.bin", src3, TransferContext(resume=store))
    assert con.read_range("s/v.bin", 0, len(new) + 1) == new and src3.opened[-1] == 0

    # a wrong MD5: nothing made visible; the right one (and an unknown size) passes
    small = os.urandom(100_001)
    with pytest.raises(ChecksumMismatch):
        con.send_stream("s/m.bin", MemorySource(small), TransferContext(), md5="0" * 32)
    assert con.stat("s/m.bin") is None
    res = con.send_stream("s/m.bin", MemorySource(small, sized=False), TransferContext(),
                          md5=hashlib.md5(small).hexdigest())
    assert res.md5 == hashlib.md5(small).hexdigest() and con.read_range("s/m.bin", 0, 200_000) == small
    assert able.leftovers() == []


@pytest.mark.parametrize("able", with_ability(StreamSend), indirect=True)
def test_stream_send_of_a_checked_stream(able):
    """Stream.checked (the source verifies its bytes itself, the gateway's early delivery):
    the send does not hash the whole stream (SendResult.md5 None, no ChecksumMismatch from
    its own hash) but still lands it whole, its size checked."""
    con = able.con
    data = os.urandom(20 * MiB + 7)  # S3: past the one-PUT limit, a multipart upload
    res = con.send_stream("c/big.bin", MemorySource(data, checked=True), TransferContext())
    assert res.md5 is None and res.size == len(data)
    assert con.read_range("c/big.bin", 0, len(data) + 1) == data
    res = con.send_stream("c/plain.bin", MemorySource(data), TransferContext())
    assert res.md5 == hashlib.md5(data).hexdigest()
    assert able.leftovers() == []
