"""Source files are read safely (issue 18, item 4): a worker lstats a file, and
between that look and the read the file may become a link to an outside secret,
a FIFO, or another file. Every connection reads through connections/contract/source.py,
which opens beneath the mapping's root without following links, never blocks,
and checks the inode; what cannot be sent is recorded as failed with a reason.

The races are injected deterministically: the reconciler's lstat is wrapped so
that the swap happens right after the worker looked at the file, before any
connection opens it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import stat as statmod
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from connections.contract.xcon import BatchSend, LocalFile, PermanentError, TransferContext
from connections.local.con import LocalCon
from skynet.watch.ignore import IgnoreRules
from skynet.engine.mapper import Mapper
from skynet.engine.reconcile import Reconciler
from skynet.state.db import ResumeTable, StateDB
from skynet.state.index import Index
from skynet.state.uniqueq import SEND, UniqueQ
from tests.backends import BACKENDS, enabled_backends
from tests.harness import Daemon, _default_ignored, run_main, tree, wait_converged, write_config

SECRET = b"the daemon's own private key: never to leave this machine\n"
SMALL = len(SECRET)  # the swapped file has the secret's size: a size check alone cannot save the day
HANG_GUARD = 60  # seconds: only reached when a worker is blocked on a FIFO (the bug)


@pytest.fixture(params=enabled_backends())
def backend(request, tmp_path, servers):
    with BACKENDS[request.param](tmp_path, servers) as b:
        yield b


class Rig:
    """A source folder, an outside secret, a connection, and the reconciler."""

    def __init__(self, tmp_path: Path, con) -> None:
        self.src = tmp_path / "src"
        self.src.mkdir()
        self.outside = tmp_path / "outside"  # what the tree's owner must not get at
        (self.outside / "d").mkdir(parents=True)
        self.plant_secret(SMALL)
        self.db = StateDB(str(tmp_path / "state.db"))
        self.queue = UniqueQ(self.db)
        self.index = Index(self.db)
        self.con = con
        self.rec = Reconciler(Mapper(str(self.src)), con, self.index, self.queue, ResumeTable(self.db), IgnoreRules())

    def plant_secret(self, size: int) -> None:
        """The outside files the swaps point at: the secret, repeated to `size` bytes."""
        data = (SECRET * (size // len(SECRET) + 1))[:size]
        (self.outside / "secret").write_bytes(data)
        (self.outside / "d" / "f.txt").write_bytes(data)

    def write(self, rel: str, data: bytes) -> Path:
        p = self.src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    def claim(self, rels: list[str]):
        self.queue.put_many((SEND, r, "") for r in rels)
        self.queue.flush()
        return self.queue.claim(len(rels))

    def after_lstat(self, rel: str, swap: Callable[[], None]) -> None:
        """Run `swap` once, right after the worker's first lstat of `rel`."""
        real = self.rec._lstat
        done: list[bool] = []

        def hooked(r: str, path: str | None = None):
            st = real(r, path)
            if r == rel and not done:
                done.append(True)
                swap()
            return st

        self.rec._lstat = hooked  # type: ignore[method-assign]

    def close(self) -> None:
        self.queue.close()


@pytest.fixture
def rig(tmp_path, backend):
    r = Rig(tmp_path, backend.con)
    yield r
    r.close()


@pytest.fixture
def local_rig(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    con = LocalCon(str(remote))
    con.connect()
    assert isinstance(con, BatchSend), "GNU cp is needed for the batch path"
    r = Rig(tmp_path, con)
    r.fetch = lambda: tree(remote)  # type: ignore[attr-defined]
    yield r
    r.close()


# -- the swaps ------------------------------------------------------------------
def to_link(rig: Rig, rel: str) -> Callable[[], None]:
    """The file becomes a link to the outside secret (atomically, as an attacker would)."""
    def swap() -> None:
        tmp = rig.src / (rel + ".new")
        os.symlink(rig.outside / "secret", tmp)
        os.replace(tmp, rig.src / rel)
    return swap


def folder_to_link(rig: Rig, rel: str) -> Callable[[], None]:
    """The file's folder `d` becomes a link to an outside folder holding the same name."""
    def swap() -> None:
        os.rename(rig.src / "d", rig.src / "d.moved")
        os.symlink(rig.outside / "d", rig.src / "d")
    return swap


def to_fifo(rig: Rig, rel: str) -> Callable[[], None]:
    def swap() -> None:
        os.unlink(rig.src / rel)
        os.mkfifo(rig.src / rel)
    return swap


def run_guarded(rig: Rig, fn: Callable[[], object], fifo: Path | None = None) -> object:
    """fn() on a worker thread; a worker still blocked after HANG_GUARD seconds
    (on old code: open() of the FIFO waits for a writer) fails the test, after
    the FIFO is given a writer so that the thread ends."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(HANG_GUARD)
    if t.is_alive():
        if fifo is not None:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        pytest.fail(f"the worker blocked for {HANG_GUARD}s opening a FIFO")
    if "error" in box:
        return box["error"]
    return box.get("result")


def remote_bytes(fetch: Callable[[], dict[bytes, bytes]]) -> list[bytes]:
    return list(fetch().values())


def leaked(fetch: Callable[[], dict[bytes, bytes]]) -> bool:
    """Did any byte of the outside secret reach the remote?"""
    return any(SECRET[:32] in v for v in fetch().values())


# -- (b) a file swapped for a link between the lstat and the open ----------------------
@pytest.mark.parametrize("size", ["small", "large"])
def test_file_swapped_for_link_sends_no_outside_bytes(rig, backend, size):
    if size == "large" and hasattr(rig.con, "multipart_threshold"):
        rig.con.multipart_threshold = 5 << 20  # S3: the multipart path (and its resume state)
    n = (6 << 20) if size == "large" else SMALL
    rig.plant_secret(n)
    rig.write("d/f.txt", os.urandom(n))
    rig.after_lstat("d/f.txt", to_link(rig, "d/f.txt"))
    [a] = rig.claim(["d/f.txt"])
    result = run_guarded(rig, lambda: rig.rec.run(a))
    assert not leaked(backend.fetch), "the outside file behind the link was sent"
    assert not isinstance(result, BaseException), result
    assert remote_bytes(backend.fetch) == [], "a link is not sent (follow_symlinks is off)"
    assert backend.leftovers() == []


def test_folder_swapped_for_link_sends_no_outside_bytes(rig, backend):
    rig.write("d/f.txt", os.urandom(SMALL))
    rig.after_lstat("d/f.txt", folder_to_link(rig, "d/f.txt"))
    [a] = rig.claim(["d/f.txt"])
    result = run_guarded(rig, lambda: rig.rec.run(a))
    assert not leaked(backend.fetch), "the outside file behind the folder link was sent"
    assert isinstance(result, PermanentError) and "symbolic link" in str(result), result
    assert backend.leftovers() == []


@pytest.mark.parametrize("swap", [to_link, folder_to_link])
def test_batch_swap_for_link_sends_no_outside_bytes(local_rig, swap):
    rig = local_rig
    rels = [f"d/f{i}.txt" for i in range(8)]
    for r in rels:
        rig.write(r, f"file {r}\n".encode())
    victim = "d/f3.txt"
    (rig.outside / "d" / "f3.txt").write_bytes(SECRET)
    rig.after_lstat(victim, swap(rig, victim))
    actions = rig.claim(rels)
    results = run_guarded(rig, lambda: rig.rec.run_many(actions, threading.Event()))
    assert isinstance(results, list), results
    assert not leaked(rig.fetch), "the batch copied the outside file behind the link"
    got = rig.fetch()
    others = {r.encode(): f"file {r}\n".encode() for r in rels if r != victim}
    if swap is to_link:
        assert got == others
        assert all(not isinstance(r, BaseException) for r in results), results
    else:  # the whole folder is a link now: nothing below it is read; the one name
        # the link leads to is refused with the reason, the others are simply gone
        assert got == {}
        by_rel = dict(zip(rels, results))
        assert isinstance(by_rel[victim], PermanentError) and "symbolic link" in str(by_rel[victim]), by_rel[victim]
        assert all(not isinstance(r, BaseException) for k, r in by_rel.items() if k != victim), by_rel
    assert rig.con.leftovers() == []


# -- a FIFO in place of the file: never blocks, recorded with the reason ----------------
def test_file_swapped_for_fifo_does_not_block(rig, backend):
    rig.write("d/f.txt", os.urandom(SMALL))
    rig.after_lstat("d/f.txt", to_fifo(rig, "d/f.txt"))
    [a] = rig.claim(["d/f.txt"])
    result = run_guarded(rig, lambda: rig.rec.run(a), fifo=rig.src / "d" / "f.txt")
    assert isinstance(result, PermanentError) and "FIFO" in str(result), result
    assert remote_bytes(backend.fetch) == []
    assert backend.leftovers() == []


def test_batch_fifo_does_not_block(local_rig):
    rig = local_rig
    rels = [f"d/f{i}.txt" for i in range(8)]
    for r in rels:
        rig.write(r, f"file {r}\n".encode())
    victim = "d/f5.txt"
    rig.after_lstat(victim, to_fifo(rig, victim))
    actions = rig.claim(rels)
    results = run_guarded(rig, lambda: rig.rec.run_many(actions, threading.Event()), fifo=rig.src / victim)
    assert isinstance(results, list), results
    by_rel = dict(zip(rels, results))
    assert isinstance(by_rel[victim], PermanentError) and "FIFO" in str(by_rel[victim]), by_rel[victim]
    assert rig.fetch() == {r.encode(): f"file {r}\n".encode() for r in rels if r != victim}


# -- (c) replaced by another regular file: the old version's identity is never sent ----
def test_file_replaced_between_lstat_and_open_is_resent_not_mixed(rig, backend):
    """The lstat saw version 1; version 2 (another inode, another size) is in place
    when the connection opens it. Each successful send must carry the bytes of the
    inode it was given (else the remote holds version 2's bytes under version 1's
    size, mtime and inode, and the Index believes it); the end state is version 2."""
    old, new = b"version 1\n", b"version 2, which is longer\n"
    path = rig.write("d/f.txt", old)
    contents = {os.lstat(path).st_ino: old}

    def replace() -> None:
        tmp = rig.src / "d" / "f.txt.new"
        tmp.write_bytes(new)
        contents[os.lstat(tmp).st_ino] = new
        os.replace(tmp, path)

    sent: list[tuple[int, bytes]] = []
    real_send = rig.con.send

    def spy(f: LocalFile, ctx: TransferContext):
        res = real_send(f, ctx)
        sent.append((f.ino, backend.fetch()[f.rel.encode()]))
        return res

    rig.con.send = spy  # type: ignore[method-assign]
    rig.after_lstat("d/f.txt", replace)
    [a] = rig.claim(["d/f.txt"])
    out = run_guarded(rig, lambda: rig.rec.run(a))
    assert not isinstance(out, BaseException), out
    assert sent, "nothing was sent"
    for ino, got in sent:
        assert got == contents[ino], f"a send of inode {ino} ({contents[ino]!r}) put {got!r} on the remote"
    assert backend.fetch() == {b"d/f.txt": new}
    rig.queue.finish(a.id, out.index_rows, a.paths())
    assert rig.index.get("d/f.txt").ino == os.lstat(path).st_ino


def test_batch_file_replaced_is_resent(local_rig):
    rig = local_rig
    rels = [f"d/f{i}.txt" for i in range(6)]
    for r in rels:
        rig.write(r, b"version 1\n")
    victim = rels[2]

    def replace() -> None:
        tmp = rig.src / (victim + ".new")
        tmp.write_bytes(b"version 2, which is longer\n")
        os.replace(tmp, rig.src / victim)

    rig.after_lstat(victim, replace)
    actions = rig.claim(rels)
    results = run_guarded(rig, lambda: rig.rec.run_many(actions, threading.Event()))
    assert all(not isinstance(r, BaseException) for r in results), results
    assert rig.fetch()[victim.encode()] == b"version 2, which is longer\n"
    row = [o for o in results[2].index_rows if o[0] == victim]
    assert row and row[0][4] == os.lstat(rig.src / victim).st_ino


# -- the opener itself ----------------------------------------------------------
@pytest.fixture(params=["openat2", "walk"])
def opener(request, monkeypatch):
    """connections.contract.source, with openat2 (Linux 5.6+) or with the portable per-folder walk."""
    from connections.contract import source
    if request.param == "walk":
        monkeypatch.setattr(source, "_openat2_works", False)
    yield source
    assert (source._openat2_works is not False) is (request.param == "openat2"), "the other way was used"


def _lf(opener, root: Path, rel: str, st: os.stat_result | None = None) -> LocalFile:
    st = st or os.lstat(root / rel)
    return opener.local_file(str(root / rel), rel, st, str(root))


def test_opener_reads_a_plain_file(opener, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").write_bytes(b"hello")
    with opener.open_source(_lf(opener, tmp_path, "a/b/c")) as fh:
        assert fh.read() == b"hello"
        assert os.get_blocking(fh.fileno())  # O_NONBLOCK cleared again for the reads


@pytest.mark.parametrize("what", ["fifo", "socket", "link", "folder link", "replaced"])
def test_opener_refuses_what_is_not_the_file_seen(opener, tmp_path, what):
    (tmp_path / "a").mkdir()
    p = tmp_path / "a" / "f"
    p.write_bytes(b"seen")
    f = _lf(opener, tmp_path, "a/f")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_bytes(SECRET)
    os.link(p, tmp_path / "kept")  # the old inode stays in use: its number is not given to the new file
    p.unlink()
    if what == "fifo":
        os.mkfifo(p)
    elif what == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    elif what == "link":
        os.symlink(tmp_path / "out" / "f", p)
    elif what == "folder link":
        os.rmdir(tmp_path / "a")
        os.symlink(tmp_path / "out", tmp_path / "a")
    else:
        p.write_bytes(b"another file")
    want = opener.SourceRefused if what == "folder link" else opener.SourceChanged
    with pytest.raises(want) as info:
        os.close(opener.open_source_fd(f))  # (never blocks: a FIFO is opened O_NONBLOCK)
    assert f.rel in str(info.value)


def test_opener_root_reached_through_a_link(opener, tmp_path):
    """The mapping's root may be a link (the user's choice); below it none is followed."""
    (tmp_path / "real" / "a").mkdir(parents=True)
    (tmp_path / "real" / "a" / "f").write_bytes(b"through the root link")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_bytes(SECRET)
    os.symlink(tmp_path / "real", tmp_path / "root")
    root = tmp_path / "root"
    with opener.open_source(_lf(opener, root, "a/f")) as fh:
        assert fh.read() == b"through the root link"
    os.symlink(tmp_path / "out", root / "b")
    st = os.stat(root / "b" / "f")
    with pytest.raises(opener.SourceRefused, match="symbolic link"):
        opener.open_source_fd(opener.local_file(str(root / "b" / "f"), "b/f", st, str(root)))


def test_opener_follows_links_only_when_asked(opener, tmp_path):
    """follow_symlinks = yes: a link is read through, but a FIFO still never blocks."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_bytes(b"linked on purpose")
    os.symlink(tmp_path / "out" / "f", tmp_path / "link")
    f = opener.local_file(str(tmp_path / "link"), "link", os.stat(tmp_path / "link"), str(tmp_path), follow=True)
    with opener.open_source(f) as fh:
        assert fh.read() == b"linked on purpose"
    os.link(tmp_path / "out" / "f", tmp_path / "kept")
    os.unlink(tmp_path / "out" / "f")
    os.mkfifo(tmp_path / "out" / "f")
    with pytest.raises(opener.SourceChanged, match="FIFO"):
        opener.open_source_fd(f)


def test_opener_path_over_the_limit_is_refused_with_a_reason(opener, tmp_path):
    name = "n" * 255
    fd = os.open(tmp_path, os.O_PATH)
    try:
        rel = "/".join([name] * 17)  # 4 352 bytes: over PATH_MAX even relative to the root
        for part in rel.split("/")[:-1]:
            os.mkdir(part, dir_fd=fd)
            nfd = os.open(part, os.O_PATH, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        st = os.stat(name, dir_fd=fd)
    finally:
        os.close(fd)
    f = opener.local_file(f"{tmp_path}/{rel}", rel, st, str(tmp_path))
    if opener._openat2_works is False:  # the walk opens one name at a time: a long path is no obstacle
        os.close(opener.open_source_fd(f))
        return
    with pytest.raises(opener.SourceRefused, match="longer than the system allows"):
        opener.open_source_fd(f)


# -- (a) and (d): the daemon records what it cannot send, and converges on the rest ------
def _failed(cfg: Path, want: int, timeout: float = 30) -> list[dict]:
    """`--failed --json`, asked until it lists `want` rows (the daemon logs a
    failure just before it records it)."""
    deadline = time.monotonic() + timeout
    while True:
        res = run_main("--failed", "--json", "--config-file", str(cfg))
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout)
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def _daemon_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}},
                       tmp_path / "state")
    return src, dst, cfg


def _not_special(rel: str) -> bool:
    """tree() opens every name it lists: the FIFOs must be left out of it."""
    return _default_ignored(rel) or rel.rsplit("/", 1)[-1].startswith("special-")


def test_daemon_records_fifos_and_sockets_and_converges(tmp_path):
    src, dst, cfg = _daemon_setup(tmp_path)
    (src / "a").mkdir()
    for i in range(20):
        (src / "a" / f"{i}.txt").write_text(f"file {i}")
    os.mkfifo(src / "a" / "special-before")  # found by the start-up scan
    with Daemon(cfg) as d:
        wait_converged(src, lambda: tree(dst), exact=True, skip=_not_special, daemon=d)
        os.mkfifo(src / "special-while")  # found by the watcher
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(src / "a" / "special-sock"))
        try:
            (src / "after.txt").write_text("written after the FIFO")
            d.wait_log("is a named pipe (FIFO)", count=2, timeout=20)
            d.wait_log("is a socket", timeout=20)
            wait_converged(src, lambda: tree(dst), exact=True, skip=_not_special, daemon=d)
            rows = {r["path"]: r["error"] for r in _failed(cfg, 3)}
            assert set(rows) == {"a/special-before", "special-while", "a/special-sock"}, rows
            assert "named pipe (FIFO)" in rows["special-while"] and "socket" in rows["a/special-sock"]
            status = json.loads(run_main("--status", "--json", "--config-file", str(cfg)).stdout)
            assert status["mappings"][0]["failed"] == 3
        finally:
            sock.close()
    assert not any(statmod.S_ISFIFO(os.lstat(p).st_mode) for p in dst.rglob("*"))


def _deep_folder(top: Path, depth: int, name: str = "n" * 250) -> str:
    """Folders nested `depth` deep under `top` (made through descriptors: the
    full path is over PATH_MAX), a file in the deepest; its relative path."""
    fd = os.open(top, os.O_PATH)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_PATH, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return "/".join([name] * depth + ["deep.txt"])


def test_daemon_records_a_path_over_path_max(tmp_path):
    src, dst, cfg = _daemon_setup(tmp_path)
    (src / "ok.txt").write_text("a normal file")
    rel = _deep_folder(src, 17)
    assert len(os.fsencode(f"{src}/{rel}")) > os.pathconf("/", "PC_PATH_MAX")
    with Daemon(cfg) as d:
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)  # (tree() cannot list the deep part either)
        rows = _failed(cfg, 1)
    assert len(rows) == 1 and rel.startswith(rows[0]["path"] + "/"), [r["path"][:80] for r in rows]
    assert "File name too long" in rows[0]["error"], rows[0]["error"]
