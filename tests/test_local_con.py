"""LocalCon beyond the shared contract: a target share unmounted in the middle
of a send, and the temp file such a send leaves behind."""
from __future__ import annotations

import os

import pytest

from connections.contract.xcon import BatchSend, LocalFile, TransferContext, TransientError
from connections.local.con import LocalCon, temp_name


def test_send_cut_by_an_unmounted_target_is_transient_and_its_temp_file_goes(tmp_path):
    """The share goes away while a file is written: the send is transient (it
    used to be "not found", recorded as a failed action) and the file is not
    renamed into place on what is no longer the target. The temp file is
    removed through the folder's descriptor even so; one a kill -9 left is
    removed by discard() once the share is back."""
    root, away = tmp_path / "target", tmp_path / "target.unmounted"
    (root / "d").mkdir(parents=True)
    con = LocalCon(str(root))
    src = tmp_path / "q"
    src.write_bytes(os.urandom(3 << 20))
    st = os.stat(src)
    f = LocalFile(str(src), "d/q", st.st_size, st.st_mtime_ns, 0o644, st.st_ino)
    unmount = TransferContext(throttle=lambda n: root.exists() and os.rename(root, away))
    with pytest.raises(TransientError):
        con.send(f, unmount)
    os.rename(away, root)
    assert os.listdir(root / "d") == []
    (root / "d" / temp_name("q")).write_bytes(b"half")  # what a kill -9 mid-write leaves
    con.discard("d/q", None)
    assert os.listdir(root / "d") == []
    con.discard("d/q", None)  # nothing left: no error
    os.rename(root, away)
    with pytest.raises(TransientError):  # the share is away: ask again later
        con.discard("d/q", None)


def test_a_link_inside_the_target_never_leads_writes_out(tmp_path):
    """A link where a folder should be is not skynet's (it never makes links):
    it is removed itself, never what it points to, and a real folder made."""
    root, outside = tmp_path / "target", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "keep").write_bytes(b"theirs")
    (root / "evil").symlink_to(outside)
    con = LocalCon(str(root))
    src = tmp_path / "q"
    src.write_bytes(b"data")
    st = os.stat(src)

    def send(rel: str) -> None:
        con.send(LocalFile(str(src), rel, st.st_size, st.st_mtime_ns, 0o644, st.st_ino), TransferContext())

    for i in range(10):
        send(f"d{i}/sub/q")
    send("evil/deeper/q")
    assert os.listdir(outside) == ["keep"] and (outside / "keep").read_bytes() == b"theirs"
    assert not (root / "evil").is_symlink() and (root / "evil" / "deeper" / "q").read_bytes() == b"data"


def _file(tmp_path, rel: str, data: bytes, mode: int = 0o644) -> LocalFile:
    p = tmp_path / "src" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, mode)
    st = os.stat(p)
    return LocalFile(str(p), rel, st.st_size, st.st_mtime_ns, mode, st.st_ino)


def test_send_many_copies_a_batch_with_one_cp(tmp_path, monkeypatch):
    import subprocess
    import threading

    import connections.local.con as local

    local.gnu_cp()  # its `cp --version` (once per process) is not the batch's cp: run alone, this test saw it
    runs = []
    real_run = subprocess.run
    monkeypatch.setattr(local.subprocess, "run", lambda argv, **kw: runs.append(argv) or real_run(argv, **kw))
    con = LocalCon(str(tmp_path / "dst"))
    os.makedirs(con.root)
    assert isinstance(con, BatchSend)
    files = [_file(tmp_path, f"a/b/{i}.txt", b"x" * i) for i in range(10)]
    files += [_file(tmp_path, f"c/{i}.txt", b"y" * i) for i in range(10)]  # the same names again
    files += [_file(tmp_path, f"-n/\n{i}", b"z" * i) for i in range(3)]  # names cp could take for options
    files += [_file(tmp_path, f"ro/{i}", b"r" * i) for i in range(3)]
    files += [_file(tmp_path, f"modes/{m:o}", b"m", mode=m) for m in (0o600, 0o666, 0o777, 0o400)]  # umask or not
    os.chmod(tmp_path / "src" / "ro", 0o555)  # staged with this mode: the renames out must still work
    suid = _file(tmp_path, "a/b/tool", b"#!", mode=0o4755)
    try:
        results = con.send_many(files + [suid], threading.Event())
    finally:
        os.chmod(tmp_path / "src" / "ro", 0o755)
    assert all(r.size == f.size for f, r in zip(files + [suid], results))
    assert len([a for a in runs if a[0].endswith("cp")]) == 1  # one cp, across folders and repeated names
    cp_args = [a for a in runs if a[0].endswith("cp")][0]
    assert sum(x.startswith("/proc/self/fd/") for x in cp_args) == len(files) + 1  # cp drops special bits too
    assert os.stat(f"{con.root}/a/b/tool").st_mode & 0o7777 == 0o755
    for f in files:
        st = os.stat(f"{con.root}/{f.rel}")
        assert (st.st_size, st.st_mtime_ns, st.st_mode & 0o777) == (f.size, f.mtime_ns, f.mode)
    assert con.leftovers() == []


def test_send_many_without_gnu_cp_or_with_a_folder_in_the_way(tmp_path, monkeypatch):
    import threading

    import connections.local.con as local
    from connections.contract.xcon import PermanentError

    con = LocalCon(str(tmp_path / "dst"))
    os.makedirs(con.root + "/d/in-the-way")
    files = [_file(tmp_path, f"d/{n}", n.encode()) for n in ("in-the-way", "f1", "f2", "f3", "f4")]
    results = con.send_many(files, threading.Event())
    assert isinstance(results[0], PermanentError) and "folder is in the way" in str(results[0])
    assert [open(f"{con.root}/d/f{i}").read() for i in range(1, 5)] == ["f1", "f2", "f3", "f4"]
    assert con.leftovers() == []
    monkeypatch.setattr(local, "gnu_cp", lambda: None)
    again = [_file(tmp_path, f"e/{i}", b"z") for i in range(6)]
    assert all(r.size == 1 for r in con.send_many(again, threading.Event()))


def test_a_staging_folder_left_by_a_kill_is_removed_at_cleanup(tmp_path):
    con = LocalCon(str(tmp_path / "dst"))
    stale = f"{con.root}/.skynet-tmp-stage-999-0"
    os.makedirs(stale)
    open(f"{stale}/half.txt", "w").close()
    assert con.leftovers() == [stale]
    con.cleanup([])
    assert not os.path.exists(stale) and con.leftovers() == []


def test_a_staging_folder_its_orphaned_cp_still_writes_into_is_removed_once_it_stops(tmp_path):
    """kill -9 does not stop the cp the dead run started: it can refill the
    staging folder while cleanup() empties it (seen in the kill -9 e2e test)."""
    import threading
    import time

    con = LocalCon(str(tmp_path / "dst"))
    stale = f"{con.root}/.skynet-tmp-stage-999-1"
    os.makedirs(f"{stale}/k/0")
    until = time.monotonic() + 0.5
    wrote = []

    def orphan_cp() -> None:  # copies on into the folders it has, as cp does, until its batch is done
        i = 0
        while time.monotonic() < until:
            try:
                with open(f"{stale}/k/0/{i}.txt", "w") as f:
                    f.write("x")
            except FileNotFoundError:
                return  # its folder is gone: cp fails from here on
            wrote.append(i)
            i += 1

    writer = threading.Thread(target=orphan_cp)
    writer.start()
    while not wrote:
        time.sleep(0.001)
    con.cleanup([])
    writer.join()
    assert not os.path.lexists(stale) and con.leftovers() == []


@pytest.mark.parametrize("tmpfile", [True, False])
def test_put_bytes_with_and_without_o_tmpfile(tmp_path, monkeypatch, tmpfile):
    """put_bytes() writes an anonymous file (O_TMPFILE) where the file system has them, a
    named temp file where it has not (EOPNOTSUPP): either way a new file and a replaced
    one land whole, and a send cut before the rename leaves no temporary behind."""
    if not tmpfile:
        real_open = os.open

        def no_tmpfile(path, flags, *args, **kw):
            if flags & os.O_TMPFILE == os.O_TMPFILE:
                raise OSError(95, "Operation not supported")
            return real_open(path, flags, *args, **kw)

        monkeypatch.setattr(os, "open", no_tmpfile)
    con = LocalCon(str(tmp_path / "t"))
    os.mkdir(tmp_path / "t")
    con.put_bytes("d/a.bin", b"one")
    kept = []
    con.put_bytes("d/a.bin", memoryview(b"two!"), mode=0o600, replacing=lambda: kept.append(1))
    assert (tmp_path / "t" / "d" / "a.bin").read_bytes() == b"two!" and kept == [1]
    assert (tmp_path / "t" / "d" / "a.bin").stat().st_mode & 0o777 == 0o600

    def cut() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        con.put_bytes("d/a.bin", b"three", replacing=cut)
    assert sorted(os.listdir(tmp_path / "t" / "d")) == ["a.bin"]
    assert (tmp_path / "t" / "d" / "a.bin").read_bytes() == b"two!"
    assert not (tmp_path / "t" / "d" / temp_name("a.bin")).exists()
