"""What the SFTP target may do to us, against the real test sshd (issue 18, items 1 and 5).

- Special permission bits: a 4755/2755/1755 source file never gets setuid,
  setgid or sticky bits on the server.
- Links planted in the remote tree: a folder replaced by a link to a folder
  outside the remote root, and a link planted at the temporary name, never
  lead a write, a delete or a move out of the root.

The server runs on this machine without chroot, so the remote folders are
local paths: the links are planted with os.symlink, as the server's user could.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import threading

import pytest

from connections.contract.xcon import RemoteNotFound, TransferContext, UnsafePath
from connections.local.con import temp_name
from connections.sftp.con import build
from tests.test_sftp_con import remote, srv, write_file  # noqa: F401  (fixtures: the same server and folders)


@pytest.fixture
def outside(srv):
    """A folder beside the remote root, writable by the server's user: what a link leads to."""
    return srv.fresh_folder("outside")


@pytest.fixture
def con(srv, remote):
    c = build(srv.service(), remote)
    c.connect()
    yield c
    c.close()


def as_server_user(srv, folder: str) -> None:
    """mkdir a remote folder as the server's user would own it (the tests may run as root)."""
    os.mkdir(folder)
    if os.geteuid() == 0:
        os.chown(folder, srv.uid, srv.gid)


def plant(srv, path: str, data: bytes) -> None:
    """A file the server's user may write: only our checks, not permissions, keep it intact."""
    with open(path, "wb") as fh:
        fh.write(data)
    if os.geteuid() == 0:
        os.chown(path, srv.uid, srv.gid)


def tree(folder: str) -> dict[str, bytes]:
    """Every file under `folder` (links listed as 'LINK->target')."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, folder)
            out[rel] = f"LINK->{os.readlink(p)}".encode() if os.path.islink(p) else open(p, "rb").read()
    return out


# -- item 1: special permission bits -----------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1755, 0o6775], ids=oct)
def test_special_bits_never_reach_the_server(con, remote, tmp_path, mode):
    f = write_file(tmp_path, "bin/prog", b"#!/bin/sh\necho hi\n", mode=mode)
    assert stat.S_IMODE(os.stat(f.path).st_mode) == mode  # the source really has them
    con.send(f, TransferContext())
    got = stat.S_IMODE(os.stat(os.path.join(remote, "bin/prog")).st_mode)
    assert got == mode & 0o777, oct(got)
    assert con.stat("bin/prog").mode == mode & 0o777


# -- item 5: a folder of the remote tree swapped for a link --------------------------------------------
def swap_for_link(remote: str, rel: str, outside: str) -> None:
    shutil.rmtree(os.path.join(remote, rel))
    os.symlink(outside, os.path.join(remote, rel))


def test_stale_link_on_the_target_is_never_written_through(srv, con, remote, outside, tmp_path):
    con.send(write_file(tmp_path, "a/b/x", b"x1"), TransferContext())
    swap_for_link(remote, "a/b", outside)
    for name in ("x", temp_name("y")):  # what the link now shows as a/b/x, and as y's temp file
        plant(srv, os.path.join(outside, name), b"precious")
    before = tree(outside)

    with pytest.raises(UnsafePath, match="symbolic link"):
        con.send(write_file(tmp_path, "a/b/y", b"y1"), TransferContext())
    with pytest.raises(UnsafePath):  # deeper: the missing folders below the link are not made there
        con.send(write_file(tmp_path, "a/b/c/d/z", b"z1"), TransferContext())
    assert con.stat("a/b/x") is None  # not part of the tree
    assert list(con.list("a/b")) == []
    con.delete("a/b/x")  # nothing of ours there: nothing removed
    with pytest.raises(RemoteNotFound):
        con.move("a/b/x", "moved/x")
    con.send(write_file(tmp_path, "c/w", b"w1"), TransferContext())
    with pytest.raises(UnsafePath):
        con.move("c/w", "a/b/w")
    con.discard("a/b/x", {"tmp": "a/b/" + temp_name("x")})
    plant(srv, os.path.join(outside, temp_name("x")), b"keep me")  # a name cleanup would remove
    before[temp_name("x")] = b"keep me"
    con.cleanup([])

    assert tree(outside) == before
    assert os.path.islink(os.path.join(remote, "a/b"))  # refused, left for the operator
    # Deleting the folder that holds the link removes the link, never what it points to.
    con.delete("a")
    assert not os.path.lexists(os.path.join(remote, "a")) and tree(outside) == before


def test_once_the_link_is_gone_the_folder_is_made_again(con, remote, outside, tmp_path):
    con.send(write_file(tmp_path, "a/b/x", b"x1"), TransferContext())
    swap_for_link(remote, "a/b", outside)
    with pytest.raises(UnsafePath):
        con.send(write_file(tmp_path, "a/b/y", b"y1"), TransferContext())
    os.unlink(os.path.join(remote, "a/b"))  # what the error message asks the operator to do
    con.send(write_file(tmp_path, "a/b/y", b"y1"), TransferContext())
    assert tree(os.path.join(remote, "a")) == {"b/y": b"y1"} and os.listdir(outside) == []


def test_a_file_in_the_way_of_a_folder_is_still_refused(con, remote, tmp_path):
    os.makedirs(os.path.join(remote, "a"))
    with open(os.path.join(remote, "a/b"), "wb") as fh:
        fh.write(b"file")
    with pytest.raises(Exception, match="a file is in the way of folder"):
        con.send(write_file(tmp_path, "a/b/y", b"y1"), TransferContext())


# -- item 5: a link planted at the temporary name ----------------------------------------------------
@pytest.mark.parametrize("path", ["plain", "batch", "resumable", "parallel"])
@pytest.mark.parametrize("dangling", [False, True], ids=["to_a_file", "dangling"])
def test_link_at_the_temp_name_is_never_written_through(srv, remote, outside, tmp_path, path, dangling):
    """Also for the sends that OPEN the temp file before looking at its name
    (plain and batch: one request fewer per file): the EXCL open fails, the
    link is removed, the OPEN is made again."""
    extra = {"plain": {}, "batch": {}, "resumable": {"resume_min": 1},
             "parallel": {"resume_min": 1, "parallel_min": 1, "streams": 2}}[path]
    c = build(srv.service(connections="2"), remote)
    for k, v in extra.items():
        setattr(c, k, v)
    data = os.urandom(300_000)
    victim = os.path.join(outside, "victim")
    if not dangling:
        plant(srv, victim, b"precious")
    as_server_user(srv, os.path.join(remote, "dir"))
    os.symlink(victim, os.path.join(remote, "dir", temp_name("y")))
    try:
        c.connect()
        if path == "batch":
            (result,) = c.send_many([write_file(tmp_path, "dir/y", data)], threading.Event())
            assert result.size == len(data), result
        else:
            c.send(write_file(tmp_path, "dir/y", data), TransferContext())
    finally:
        c.close()
    assert tree(outside) == ({} if dangling else {"victim": b"precious"})
    target = os.path.join(remote, "dir/y")
    assert not os.path.islink(target) and open(target, "rb").read() == data
    assert os.listdir(os.path.join(remote, "dir")) == ["y"]


# -- the same on a server unlike OpenSSH (asyncssh's SFTPServer: no posix-rename, SETSTAT by path) ----------------
from tests.test_sftp_fallback import _con as fallback_con, _file as fallback_file, odd_server  # noqa: E402,F401


def test_links_and_bits_on_a_server_unlike_openssh(odd_server, tmp_path):
    root = odd_server["root"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    c = fallback_con(odd_server)
    try:
        c.connect()
        os.makedirs(os.path.join(root, "dir"))
        os.symlink(outside / "victim", os.path.join(root, "dir", temp_name("y")))
        f = fallback_file(tmp_path, "dir/y", b"new bytes")
        os.chmod(f.path, 0o4755)
        c.send(dataclasses.replace(f, mode=0o4755), TransferContext())
        assert (outside / "victim").read_bytes() == b"precious"
        assert open(os.path.join(root, "dir/y"), "rb").read() == b"new bytes"
        assert stat.S_IMODE(os.lstat(os.path.join(root, "dir/y")).st_mode) == 0o755
        os.symlink(outside, os.path.join(root, "linked"))
        with pytest.raises(UnsafePath):
            c.send(fallback_file(tmp_path, "linked/z", b"z"), TransferContext())
        assert sorted(os.listdir(outside)) == ["victim"]
    finally:
        c.close()
