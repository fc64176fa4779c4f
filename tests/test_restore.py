"""skynet restore against an in-memory VersionStore (skynet/versions/restore.py), the
current-only store of a mapping without versions (current.py), and the CLI's bad input."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connections.contract.xcon import RemoteNotFound
from connections.local.con import LocalCon
from skynet.transfer.fetch import part_paths
from skynet.versions.current import CurrentStore
from skynet.versions.model import Version, VersionStore
from skynet.versions.restore import Options, Restore, RestoreRefused, parse_when, restore
from tests.harness import one_clear_line, run_main, unprivileged_prefix, write_config

S = 1_000_000_000
T0 = 1_700_000_000 * S  # the first version


class FakeStore(VersionStore):
    """Versions in memory; counts every range read; may set `stop` after some reads."""

    def __init__(self) -> None:
        self.versions: list[Version] = []
        self.data: dict[str, bytes] = {}
        self.reads: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()
        self.stop_after: int | None = None
        self.stop: threading.Event | None = None
        self.corrupt: set[str] = set()

    def put(self, rel: str, since: int, until: int | None, data: bytes, mode: int = 0o644,
            mtime: int | None = None, md5: bool = True) -> Version:
        ref = f"{rel}@{since}"
        v = Version(rel, since, until, len(data), mtime if mtime is not None else since - 5 * S, mode,
                    hashlib.md5(data).hexdigest() if md5 else None, ref=ref)
        self.versions.append(v)
        self.data[ref] = data
        return v

    def delete(self, rel: str, since: int, until: int | None) -> None:
        self.versions.append(Version(rel, since, until, 0, None, None, None, deleted=True))

    def history(self, prefix: str = "") -> Iterator[Version]:
        under = [v for v in self.versions if not prefix or v.rel == prefix or v.rel.startswith(prefix + "/")]
        return iter(sorted(under, key=lambda v: (v.rel, -v.since_ns)))

    def at(self, when_ns: int, prefix: str = "") -> Iterator[Version]:
        return (v for v in self.history(prefix) if v.covers(when_ns) and not v.deleted)

    def read_range(self, version: Version, offset: int, length: int) -> bytes:
        with self.lock:
            self.reads.append((version.rel, offset, length))
            if self.stop_after is not None and len(self.reads) >= self.stop_after and self.stop is not None:
                self.stop.set()
        data = self.data[version.ref][offset: offset + length]
        return b"x" * len(data) if version.rel in self.corrupt else data

    def remove(self, version: Version) -> None:
        raise NotImplementedError


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """{rel: (bytes, mode, mtime_ns)} of every regular file under root, part files included (they must not be)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (open(p, "rb").read(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


@pytest.fixture
def store() -> FakeStore:
    """a.txt: v1 from T0, v2 from T0+10 s; b.txt deleted at T0+20 s; c.txt from T0+30 s; d/e.txt throughout."""
    s = FakeStore()
    s.put("a.txt", T0, T0 + 10 * S, b"version one")
    s.put("a.txt", T0 + 10 * S, None, b"version two, longer", mode=0o600)
    s.put("b.txt", T0, T0 + 20 * S, b"bee", mode=0o4755)
    s.delete("b.txt", T0 + 20 * S, None)
    s.put("c.txt", T0 + 30 * S, None, b"sea")
    s.put("d/e.txt", T0, None, b"deep", mode=0o640)
    s.put("d.bak", T0, None, b"not under d/")
    return s


def test_each_time_restores_the_tree_it_had(store, tmp_path):
    def at(t: int, **kw) -> dict:
        dest = tmp_path / f"at{t}"
        summary = restore(store, Options(str(dest), T0 + t * S, **kw))
        assert summary.failed == 0 and summary.skipped == 0
        return {k: v[:2] for k, v in snapshot(dest).items()}

    assert at(5) == {"a.txt": (b"version one", 0o644), "b.txt": (b"bee", 0o755), "d/e.txt": (b"deep", 0o640),
                     "d.bak": (b"not under d/", 0o644)}
    assert at(15) == {"a.txt": (b"version two, longer", 0o600), "b.txt": (b"bee", 0o755),
                      "d/e.txt": (b"deep", 0o640), "d.bak": (b"not under d/", 0o644)}
    later = at(35)  # b.txt deleted by then, c.txt created
    assert set(later) == {"a.txt", "c.txt", "d/e.txt", "d.bak"} and later["c.txt"] == (b"sea", 0o644)


def test_mtimes_are_the_versions_own(store, tmp_path):
    restore(store, Options(str(tmp_path / "r"), T0 + 15 * S))
    got = snapshot(tmp_path / "r")
    assert got["a.txt"][2] == T0 + 5 * S and got["d/e.txt"][2] == T0 - 5 * S


def test_special_bits_only_with_keep_special_bits(store, tmp_path):
    restore(store, Options(str(tmp_path / "plain"), T0 + 5 * S))
    restore(store, Options(str(tmp_path / "kept"), T0 + 5 * S, keep_special_bits=True))
    assert snapshot(tmp_path / "plain")["b.txt"][1] == 0o755
    assert snapshot(tmp_path / "kept")["b.txt"][1] == 0o4755


def test_given_paths_only_and_a_folder_is_not_its_namesake(store, tmp_path):
    restore(store, Options(str(tmp_path / "r"), T0 + 35 * S, ["d", "c.txt"]))
    assert set(snapshot(tmp_path / "r")) == {"d/e.txt", "c.txt"}  # not d.bak


def test_a_finished_file_is_skipped_without_a_read(store, tmp_path):
    dest = tmp_path / "r"
    restore(store, Options(str(dest), T0 + 15 * S))
    store.reads.clear()
    summary = restore(store, Options(str(dest), T0 + 15 * S))
    assert store.reads == [] and summary.skipped == 4 and summary.files == 0
    os.utime(dest / "a.txt", ns=(T0, T0))  # not that version's any more: fetched again
    summary = restore(store, Options(str(dest), T0 + 15 * S))
    assert [r[0] for r in store.reads] == ["a.txt"] and summary.files == 1 and summary.skipped == 3
    assert snapshot(dest)["a.txt"][2] == T0 + 5 * S


def test_a_stopped_restore_resumes_without_fetching_a_finished_chunk_again(tmp_path):
    """Stopped half-way (as kill -9 would leave it: part file + state), the same restore
    fetches only the chunks the state does not list, and no finished small file."""
    s = FakeStore()
    big = os.urandom(40 * 8192 + 123)
    s.put("z.bin", T0, None, big)  # listed after the small files
    for i in range(20):
        s.put(f"small/{i:02d}", T0, None, os.urandom(1000))
    dest = tmp_path / "r"
    stop = threading.Event()
    s.stop, s.stop_after = stop, 30
    opts = dict(chunk_size=8192, concurrency=3, workers=4)
    first = Restore(s, Options(str(dest), T0 + S, **opts), stop=stop).run()
    assert first.failed == 0 and not (dest / "z.bin").exists()  # stopped, not failed
    part, state = part_paths(str(dest / "z.bin"))
    done = set(json.load(open(state))["done"])
    assert done  # some chunks were finished before the stop
    landed = {k for k in snapshot(dest) if k.startswith("small/")}
    s.reads.clear()
    s.stop_after = None
    second = restore(s, Options(str(dest), T0 + S, **opts))
    assert second.failed == 0 and snapshot(dest)["z.bin"][0] == big
    refetched = {o // 8192 for rel, o, _n in s.reads if rel == "z.bin"}
    assert not refetched & done  # no finished chunk fetched again
    assert not {rel for rel, _o, _n in s.reads} & landed  # no finished file fetched again
    assert second.skipped == len(landed)
    assert second.bytes == sum(len(s.data[f"{r}@{T0}"][o: o + n]) for r, o, n in s.reads)  # counted as read
    assert not os.path.exists(part) and not os.path.exists(state)


def test_bytes_that_fail_the_hash_never_land_and_count_as_failed(store, tmp_path):
    store.corrupt.add("d/e.txt")
    summary = restore(store, Options(str(tmp_path / "r"), T0 + 15 * S))
    assert summary.failed == 1 and "d/e.txt" in summary.errors[0] and "MD5" in summary.errors[0]
    assert set(snapshot(tmp_path / "r")) == {"a.txt", "b.txt", "d.bak"}  # no part file left either


def test_folder_modes_wait_until_no_file_failed(store, tmp_path):
    """Folders' modes go on last, and only once every file landed: a read-only folder
    given its mode while a file in it failed would refuse the run that fetches it again.
    A folder empty on the remote is made; `later` (files now, none as of TIME) is not."""
    from connections.contract.xcon import FolderEntry

    class WithFolders(FakeStore):
        def folders(self, prefix=""):
            return iter([FolderEntry("d", 0o555), FolderEntry("empty", 0o2750), FolderEntry("later", 0o700)])

        def holds_files(self, rel):
            return rel != "empty"

    s = WithFolders()
    s.versions, s.data = store.versions, store.data
    s.corrupt.add("d/e.txt")
    out = tmp_path / "r"
    assert restore(s, Options(str(out), T0 + 15 * S)).failed == 1
    assert stat.S_IMODE(os.stat(out / "d").st_mode) != 0o555 and (out / "empty").is_dir()
    s.corrupt.clear()  # the same command again: the failed file lands, then the modes
    summary = restore(s, Options(str(out), T0 + 15 * S))
    assert summary.failed == 0 and (out / "d/e.txt").read_bytes() == b"deep"
    assert stat.S_IMODE(os.stat(out / "d").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(out / "empty").st_mode) == 0o750  # no setgid without --keep-special-bits
    assert not (out / "later").exists()


def test_a_version_pruned_meanwhile_fails_alone(store, tmp_path):
    class Pruned(FakeStore):
        def read_range(self, version, offset, length):
            if version.rel == "c.txt":
                raise RemoteNotFound("c.txt: pruned")
            return super().read_range(version, offset, length)

    p = Pruned()
    p.versions, p.data = store.versions, store.data
    summary = restore(p, Options(str(tmp_path / "r"), T0 + 35 * S))
    assert summary.failed == 1 and summary.files == 3


@pytest.mark.parametrize("when, paths, needle", [
    (T0 - S, [""], "before its first version"),
    (T0 + 35 * S, ["nope"], "never synced"),
    (T0 + 35 * S, ["b.txt"], "deleted by then"),
    (T0 + 35 * S, ["a.txt", "nope"], "never synced"),  # one bad path: nothing written for the good one
])
def test_bad_input_is_refused_before_anything_is_written(store, tmp_path, when, paths, needle):
    dest = tmp_path / "r"
    with pytest.raises(RestoreRefused, match=needle):
        restore(store, Options(str(dest), when, paths))
    assert not dest.exists()


def test_a_dest_that_is_a_file_is_refused(store, tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(RestoreRefused, match="not a folder"):
        restore(store, Options(str(tmp_path / "f" / "r"), T0 + S))


def test_a_folder_that_leads_out_of_dest_is_not_written_through(store, tmp_path):
    dest = tmp_path / "r"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, dest / "d")
    summary = restore(store, Options(str(dest), T0 + S))
    assert summary.failed == 1 and "leads elsewhere" in summary.errors[0]
    assert list(outside.iterdir()) == []


NOW = 1_800_000_000 * S


@pytest.mark.parametrize("text, expect", [
    (None, NOW), ("now", NOW), ("2h ago", NOW - 7200 * S), ("90m ago", NOW - 5400 * S), ("3d ago", NOW - 3 * 86400 * S),
    ("2026-12-04T12:00:00+01:00", int(datetime(2026, 12, 4, 11, tzinfo=timezone.utc).timestamp()) * S),
    ("2026-12-04T11:00:00Z", int(datetime(2026, 12, 4, 11, tzinfo=timezone.utc).timestamp()) * S),
    ("2026-12-04T12:00", int(datetime(2026, 12, 4, 12).astimezone().timestamp()) * S),  # no zone: local time
])
def test_times(text, expect):
    assert parse_when(text, NOW) == expect


@pytest.mark.parametrize("text, needle", [("yesterday-ish", "not a time"), ("2h", "not a time"),
                                          ("2027-03-01T00:00Z", "in the future")])
def test_bad_times(text, needle):
    with pytest.raises(RestoreRefused, match=needle):
        parse_when(text, NOW)


def test_current_store_restores_now_and_refuses_older_times(tmp_path):
    remote = tmp_path / "remote"
    (remote / "x").mkdir(parents=True)
    (remote / "x" / "f").write_bytes(b"now")
    os.chmod(remote / "x" / "f", 0o640)
    os.utime(remote / "x" / "f", ns=(T0, T0))
    con = LocalCon(str(remote))
    con.connect()
    try:
        now = NOW
        summary = restore(CurrentStore(con, now, "main"), Options(str(tmp_path / "r"), now))
        assert summary.files == 1 and snapshot(tmp_path / "r") == {"x/f": (b"now", 0o640, T0)}
        with pytest.raises(RestoreRefused, match="keeps no versions"):
            restore(CurrentStore(con, now, "main"), Options(str(tmp_path / "older"), now - 3600 * S))
        assert not (tmp_path / "older").exists()
    finally:
        con.close()


# -- the command line ------------------------------------------------------------------------

@pytest.fixture
def cli(tmp_path):
    """A local mapping whose remote holds a small tree; returns (config, remote, source)."""
    src, remote = tmp_path / "src", tmp_path / "remote"
    src.mkdir()
    (remote / "docs").mkdir(parents=True)
    (remote / "docs" / "a.txt").write_bytes(b"alpha")
    (remote / "top.bin").write_bytes(os.urandom(3000))
    cfg = write_config(tmp_path / "c.ini", "local", {"main": {"source": str(src), "target": str(remote)}},
                       tmp_path / "state")
    return cfg, remote, src


def test_cli_restores_now_and_prints_the_summary(cli, tmp_path):
    cfg, remote, src = cli
    res = run_main("restore", "--config-file", str(cfg), "--to", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "restored 2 files" in res.stdout and "0 failed" in res.stdout
    assert (tmp_path / "out" / "docs" / "a.txt").read_bytes() == b"alpha"
    res = run_main("restore", "--config-file", str(cfg), "--to", str(tmp_path / "out"), str(src / "docs"))
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout


@pytest.mark.parametrize("args, needles", [
    (["--at", "2h ago"], ["keeps no versions"]),
    (["--at", "not-a-time"], ["not a time"]),
    (["--at", "2999-01-01"], ["in the future"]),
    (["never/synced"], ["never synced"]),
    (["/elsewhere/x"], ["not under the mapping's source folder"]),
    (["--mapping", "other"], ["no mapping 'other'"]),
])
def test_cli_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, needles):
    cfg, _remote, _src = cli
    out = tmp_path / "out"
    one_clear_line(run_main("restore", "--config-file", str(cfg), "--to", str(out), *args), *needles)
    assert not out.exists()


def test_cli_refuses_dest_inside_a_watched_source_unless_into_source(cli):
    cfg, _remote, src = cli
    one_clear_line(run_main("restore", "--config-file", str(cfg), "--to", str(src / "back")),
                   "inside the watched source folder", "--into-source")
    assert not (src / "back").exists()
    res = run_main("restore", "--config-file", str(cfg), "--to", str(src / "back"), "--into-source")
    assert res.returncode == 0 and (src / "back" / "docs" / "a.txt").read_bytes() == b"alpha"


def test_cli_refuses_a_dest_it_cannot_write():
    """Run as an unprivileged user when we are root: a folder of mode 555 is then not writable."""
    import shutil
    import subprocess
    import sys

    from tests.harness import REPO, world_writable_tmp

    base = world_writable_tmp("skynet-restore-")
    try:
        (base / "src").mkdir()
        (base / "remote").mkdir()
        (base / "remote" / "f").write_bytes(b"f")
        for p in (base / "src", base / "remote", base / "remote" / "f"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        cfg = write_config(base / "c.ini", "local", {"main": {"source": str(base / "src"),
                                                              "target": str(base / "remote")}}, base / "state")
        os.chmod(cfg, 0o644)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        os.chmod(locked, 0o555)
        res = subprocess.run([*unprivileged_prefix(), sys.executable, str(REPO / "main.py"), "restore",
                              "--config-file", str(cfg), "--to", str(locked / "out")],
                             capture_output=True, text=True, timeout=60, cwd=str(REPO))
        one_clear_line(res, "not writable")
        assert not (locked / "out").exists()
    finally:
        shutil.rmtree(base)


def test_cli_exits_1_when_a_file_failed(cli, tmp_path):
    cfg, _remote, _src = cli
    out = tmp_path / "out"
    (out / "top.bin").mkdir(parents=True)  # a folder where a file must land: that file fails
    res = run_main("restore", "--config-file", str(cfg), "--to", str(out))
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "1 failed" in res.stdout and "top.bin" in res.stderr
    assert (out / "docs" / "a.txt").read_bytes() == b"alpha"


def test_cli_shows_a_progress_bar_in_a_terminal(cli, tmp_path):
    """On a terminal the restore draws a bar while files are pending; the summary ends it.
    A bandwidth limit keeps a 2 MiB file pending for about two seconds."""
    import pty
    import subprocess
    import sys

    from tests.harness import REPO

    cfg, remote, _src = cli
    (remote / "slow.bin").write_bytes(os.urandom(2 << 20))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), "restore", "--config-file", str(cfg), "--to",
                             str(tmp_path / "out"), "--bwlimit", "1M"], stdin=slave, stdout=slave, stderr=slave,
                            cwd=str(REPO), close_fds=True)
    os.close(slave)
    seen = b""
    while True:
        try:
            piece = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not piece:
            break
        seen += piece
    os.close(master)
    assert proc.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert "░" in text and "files" in text and "restored 3 files" in text, text


def test_the_tree_is_synced_at_the_end_only_when_a_small_file_was_not_synced_itself(tmp_path, monkeypatch):
    """Small files land without an fsync each and the restore syncs the file system once at
    the end; a restore of large files only (each fsynced before it lands) does not wait
    for that syncfs, which also flushes every other program's dirty pages."""
    import skynet.versions.restore as restore_mod

    synced: list[str] = []
    monkeypatch.setattr(restore_mod, "_syncfs", synced.append)
    s = FakeStore()
    s.put("big.bin", T0, None, os.urandom(5 * 8192 + 7))
    first = restore(s, Options(str(tmp_path / "big"), T0 + S, chunk_size=8192))
    assert first.files == 1 and synced == []
    s.put("small.txt", T0, None, b"small")
    second = restore(s, Options(str(tmp_path / "both"), T0 + S, chunk_size=8192))
    assert second.files == 2 and synced == [os.path.realpath(tmp_path / "both")]


def test_the_folders_of_one_restored_path_are_read_without_listing_the_others():
    """A restore of one folder asks the remote for that folder and lists below it only,
    not every folder of the remote (a big tree, one folder wanted)."""
    from connections.contract.xcon import FolderEntry, Folders
    from skynet.versions.model import remote_folders

    class Spy(Folders):
        def __init__(self) -> None:
            self.listed: list[str] = []

        def make_folder(self, rel: str, mode: int) -> None:
            raise AssertionError("restore never makes remote folders")

        def list_folders(self, rel: str = ""):
            self.listed.append(rel)
            return iter([FolderEntry(f"{rel}/sub", 0o700)])

        def folder(self, rel: str):
            return FolderEntry(rel, 0o710) if rel == "d" else None

    spy = Spy()
    assert list(remote_folders(spy, "d/")) == [FolderEntry("d", 0o710), FolderEntry("d/sub", 0o700)]
    assert spy.listed == ["d"]
    assert list(remote_folders(spy, "gone")) == [] and spy.listed == ["d"]


def test_a_small_file_read_whole_with_its_metadata_waits_for_the_bandwidth_limit_first(tmp_path):
    """A small file whose metadata the listing lacks is read in one request with it
    (Completes.complete_read, S3's GET): the limit's budget for its bytes is taken
    before that request, and not again when it lands."""
    from skynet.versions.current import Completes

    events: list[tuple[str, str | int]] = []

    class Listing(_ReadsWhole, Completes):
        def complete_read(self, version: Version) -> tuple[Version, bytes]:
            events.append(("read", version.rel))
            return super().complete_read(version)

    s = Listing()
    for name, size in (("a", 3000), ("b", 7000)):
        _listed_bare(s, name, os.urandom(size))
    summary = restore(s, Options(str(tmp_path / "out"), T0 + S, workers=1, throttle=lambda n: events.append(("take", n))))
    assert summary.files == 2 and summary.bytes == 10_000
    assert events == [("take", 3000), ("read", "a"), ("take", 7000), ("read", "b")]
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "a").st_mode) == 0o640


class _ReadsWhole(FakeStore):
    """A store whose listing lacks mtime and mode (S3's): small files are read whole with them."""

    def complete(self, version: Version) -> Version:
        return version

    def complete_read(self, version: Version) -> tuple[Version, bytes]:
        data = self.data[version.ref]
        if version.rel in self.corrupt:
            data = b"x" * len(data)
        return Version(version.rel, version.since_ns, None, len(data), T0, 0o640, version.etag, ref=version.ref), data


def _listed_bare(s: FakeStore, rel: str, data: bytes) -> None:
    s.put(rel, T0, None, data)
    v = s.versions[-1]
    s.versions[-1] = Version(rel, T0, None, len(data), None, None, v.etag, ref=v.ref)


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed file", "no O_TMPFILE: part file"])
def test_small_files_read_whole_land_checked_or_not_at_all(tmp_path, monkeypatch, unnamed):
    """A small file read whole is checked in memory (MD5) before anything is written: a
    bad one fails alone and leaves nothing in DIR; the good ones land with the mode and
    mtime their GET carried. Also where the file system has no unnamed files."""
    from skynet.transfer import fetch as fetch_mod
    from skynet.versions.current import Completes

    class Store(_ReadsWhole, Completes):
        pass

    monkeypatch.setattr(fetch_mod._Unnamed, "usable", unnamed)
    s = Store()
    for i in range(5):
        _listed_bare(s, f"d/f{i}", os.urandom(100 + i))
    s.corrupt.add("d/f3")
    out = tmp_path / "out"
    summary = restore(s, Options(str(out), T0 + S, workers=2))
    assert (summary.files, summary.failed) == (4, 1) and "MD5" in summary.errors[0]
    assert sorted(os.listdir(out / "d")) == ["f0", "f1", "f2", "f4"]  # no part file, no f3
    for i in (0, 1, 2, 4):
        st = os.stat(out / "d" / f"f{i}")
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, T0)
        assert (out / "d" / f"f{i}").read_bytes() == s.data[f"d/f{i}@{T0}"]
