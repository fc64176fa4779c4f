"""A remote's listing is not trusted (issue 18, item 6).

A server that ignores the prefix of a listing (or one that makes names up) must not
make skynet delete or move what it was not asked to touch: `delete("foo")` and
`move("foo", "bar")` leave `foo.bak`, `foo2/x` and another team's keys alone, the
listing says so in one warning line, and every backend goes through the same filter
(connections.contract.xcon.within_listing).

S3 runs against the real `rclone serve s3`; the fault (the prefix dropped from
ListObjectsV2 / ListMultipartUploads, so the real server answers with the whole
bucket) is injected on the client side, before signing: through botocore's public
event hooks on the boto3 path, and by wrapping s3rest.Rest.request on the fast path.
SFTP runs against the real sshd with the listing of one folder (Session.scandir in connections/sftp/session.py) adding
names the server could make up.
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat as statmod
from pathlib import Path

import asyncssh
import botocore.exceptions as bce
import pytest

import connections.s3.rest as s3rest
import connections.sftp.con as sftpmod
import tests.server_s3  # noqa: F401  (registers the "s3" server)
from connections.contract.xcon import LocalFile, TransferContext, within_listing
from connections.s3.con import S3Con

FOREIGN = ["root/foo.bak", "root/foo2/x", "other-team/foo/y"]
OURS = ["root/foo/a", "root/foo/b/c"]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "skynet.listing" and r.levelno == logging.WARNING]


# -- the filter itself --------------------------------------------------------------


def test_filter_keeps_the_key_and_what_is_under_it_and_logs_the_rest_once(caplog):
    listed = ["foo", "foo/a", "foo/b/c", "foo.bak", "foo2/x", "fo", "other/foo/x"]
    with caplog.at_level(logging.WARNING, logger="skynet.listing"):
        kept = list(within_listing(listed, "foo", str, "test"))
    assert kept == ["foo", "foo/a", "foo/b/c"]
    (line,) = warnings_of(caplog)
    assert "4 entries" in line and "'foo.bak'" in line


def test_filter_folder_prefix_and_everything():
    assert list(within_listing(["root/x", "root", "root2/x"], "root/", str, "t")) == ["root/x"]
    assert list(within_listing(["a", "b/c"], "", str, "t")) == ["a", "b/c"]


def test_filter_path_semantics_drop_names_a_listing_callback_makes_up(caplog):
    """sftp/local semantics: a callback listing folder "d" returns foreign names; only
    clean paths under d/ survive ("d/../x" is under "d/" as a string, not as a path)."""
    def listing():  # what a hostile server's READDIR could answer for /srv/r/d
        yield from ["/srv/r/d/ok", "/srv/r/d/../victim", "/srv/r/d/a/../../x", "/etc/passwd",
                    "/srv/r/d/.", "/srv/r/dx", "/srv/r/d/sub/ok2"]

    with caplog.at_level(logging.WARNING, logger="skynet.listing"):
        kept = list(within_listing(listing(), "/srv/r/d", str, "sftp: list", paths=True))
    assert kept == ["/srv/r/d/ok", "/srv/r/d/sub/ok2"]
    (line,) = warnings_of(caplog)
    assert "5 entries" in line
    # relative names (local's list, SFTP's root ".") follow the same rule
    assert list(within_listing(["a/b", "../x", "a/./b", "c"], "", str, "t", paths=True)) == ["a/b", "c"]


def test_filter_logs_when_a_listing_is_abandoned(caplog):
    with caplog.at_level(logging.WARNING, logger="skynet.listing"):
        it = within_listing(["x.bak", "x/1", "x/2"], "x", str, "t")
        assert next(it) == "x/1"
        it.close()
    assert len(warnings_of(caplog)) == 1


# -- S3: a server that ignores the prefix ------------------------------------------


@pytest.fixture
def s3srv(servers):
    return servers.get("s3")


def _ignore_prefix_rest(monkeypatch) -> list[str]:
    """S3Con's listings go out without their prefix (the server then lists the
    whole bucket, as one that ignored it would); returns the operations it changed."""
    changed: list[str] = []
    real = s3rest.Rest.request

    def request(self, method, path, params=None, *args, **kwargs):
        if params and "prefix" in params and ("list-type" in params or "uploads" in params):
            params = {k: v for k, v in params.items() if k != "prefix"}
            changed.append("uploads" if "uploads" in params else "list")
        return real(self, method, path, params, *args, **kwargs)

    monkeypatch.setattr(s3rest.Rest, "request", request)
    return changed


@pytest.fixture
def prefix_blind(s3srv, monkeypatch, tmp_path):
    """(connection under prefix "root" whose server ignores listing prefixes, bucket,
    list of listings the fault changed). The bucket holds OURS and FOREIGN."""
    bucket = s3srv.new_bucket()
    client = s3srv.client()
    for key in OURS + FOREIGN:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    con = S3Con(prefix="root", **s3srv.con_kwargs(bucket))
    con.connect()
    changed = _ignore_prefix_rest(monkeypatch)  # s3rest makes every listing (one path)
    yield con, bucket, changed
    con.close()


def keys(s3srv, bucket: str) -> set[str]:
    pages = s3srv.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for p in pages for o in p.get("Contents", []) or []}


def test_s3_delete_leaves_keys_outside_the_folder(prefix_blind, s3srv, caplog):
    con, bucket, changed = prefix_blind
    with caplog.at_level(logging.WARNING, logger="skynet.listing"):
        con.delete("foo")
    assert changed, "the fault was not injected: the test proves nothing"
    assert keys(s3srv, bucket) == set(FOREIGN)
    (line,) = warnings_of(caplog)
    assert "3 entries outside 'root/foo/' (e.g. 'other-team/foo/y')" in line


def test_s3_move_leaves_keys_outside_the_folder(prefix_blind, s3srv, caplog):
    con, bucket, changed = prefix_blind
    with caplog.at_level(logging.WARNING, logger="skynet.listing"):
        con.move("foo", "bar")
    assert changed
    assert keys(s3srv, bucket) == set(FOREIGN) | {"root/bar/a", "root/bar/b/c"}
    assert len(warnings_of(caplog)) == 1


def test_s3_list_of_a_folder_is_only_that_folder(prefix_blind, caplog):
    con, _bucket, changed = prefix_blind
    with caplog.at_level(logging.WARNING, logger="skynet.listing"):
        assert sorted(e.rel for e in con.list("foo")) == ["foo/a", "foo/b/c"]
        assert sorted(e.rel for e in con.list("")) == ["foo.bak", "foo/a", "foo/b/c", "foo2/x"]
    assert changed
    assert len(warnings_of(caplog)) == 2  # one line per listing, not one per key


def test_s3_cleanup_leaves_another_teams_uploads(prefix_blind, s3srv):
    con, bucket, changed = prefix_blind
    client = s3srv.client()
    theirs = client.create_multipart_upload(Bucket=bucket, Key="other-team/big")["UploadId"]
    try:
        con.cleanup([])
        assert changed
        open_ids = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) or []}
        assert theirs in open_ids
    finally:  # gone already when the test failed: keep its own failure the one reported
        with contextlib.suppress(bce.ClientError):
            client.abort_multipart_upload(Bucket=bucket, Key="other-team/big", UploadId=theirs)


# -- SFTP: a listing callback that makes names up ------------------------------------


def _send(con, tmp_path: Path, rel: str, data: bytes) -> None:
    src = tmp_path / "src" / rel
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    st = src.stat()
    con.send(LocalFile(str(src), rel, st.st_size, st.st_mtime_ns, 0o644, st.st_ino), TransferContext())


@pytest.fixture
def sftp_setup(servers, tmp_path, monkeypatch):
    """(SFTPCon on a fresh remote folder holding foo/a and foo/b/c, the remote folder,
    files outside foo that a made-up name points at, all the login user's to remove).
    The listing of any folder named "foo" also returns "../victim" and the absolute
    path of a file outside the root."""
    srv = servers.get("sftp")
    remote = Path(srv.fresh_folder())
    con = sftpmod.build(srv.service(), str(remote))
    con.connect()
    for rel in ("foo/a", "foo/b/c", "victim"):
        _send(con, tmp_path, rel, b"theirs" if rel == "victim" else rel.encode())
    elsewhere = sftpmod.build(srv.service(), srv.fresh_folder())
    elsewhere.connect()
    _send(elsewhere, tmp_path, "outside", b"not ours")
    outside = Path(elsewhere.root) / "outside"
    elsewhere.close()
    real = sftpmod.Session.scandir

    async def scandir(self, path: bytes):
        found = await real(self, path)
        if path.rstrip(b"/").endswith(b"/foo"):
            attr = asyncssh.SFTPAttrs(permissions=statmod.S_IFREG | 0o644, size=5)
            found += [asyncssh.SFTPName(b"../victim", attrs=attr), asyncssh.SFTPName(os.fsencode(outside), attrs=attr)]
        return found

    monkeypatch.setattr(sftpmod.Session, "scandir", scandir)
    yield con, remote, [remote / "victim", outside]
    con.close()


def test_sftp_delete_ignores_made_up_names(sftp_setup, caplog):
    con, remote, foreign = sftp_setup
    with caplog.at_level(logging.WARNING, logger="skynet.listing"):
        con.delete("foo")
    assert not (remote / "foo").exists()
    assert [p.read_bytes() for p in foreign] == [b"theirs", b"not ours"]
    assert warnings_of(caplog) and all("2 entries" in w for w in warnings_of(caplog))


def test_sftp_list_ignores_made_up_names(sftp_setup, caplog):
    con, _remote, _foreign = sftp_setup
    with caplog.at_level(logging.WARNING, logger="skynet.listing"):
        assert sorted(e.rel for e in con.list("foo")) == ["foo/a", "foo/b/c"]
    assert len(warnings_of(caplog)) == 1


def test_sftp_move_over_a_folder_ignores_made_up_names(sftp_setup, tmp_path):
    """move over an existing folder removes it first (_rmtree): that listing too."""
    con, remote, foreign = sftp_setup
    _send(con, tmp_path, "bar/n", b"n")
    con.move("bar", "foo")
    assert (remote / "foo" / "n").read_bytes() == b"n" and not (remote / "foo" / "a").exists()
    assert [p.read_bytes() for p in foreign] == [b"theirs", b"not ours"]


# -- local: the same rule on LocalCon.list ---------------------------------------------


def test_local_list_goes_through_the_filter(tmp_path, monkeypatch, caplog):
    """readdir never names "../x", but LocalCon.list (and list_folders) is held to the
    same rule: a walk that yields a foreign path (here injected) is filtered and logged
    like the others."""
    from connections.local.con import LocalCon

    (tmp_path / "t").mkdir()
    (tmp_path / "a-file").write_bytes(b"1")
    con = LocalCon(str(tmp_path / "t"))
    con.connect()
    for listing, st in ((con.list, os.stat(tmp_path / "a-file")), (con.list_folders, os.stat(tmp_path / "t"))):
        made_up = [("d/ok", st), ("d/../x", st), ("dx/y", st), ("d", st)]
        monkeypatch.setattr(LocalCon, "_walk_tree", lambda self, rel, made_up=made_up: iter(made_up))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="skynet.listing"):
            assert [e.rel for e in listing("d")] == ["d/ok", "d"], listing
        (line,) = warnings_of(caplog)
        assert "2 entries outside 'd'" in line
    con.close()
