"""SFTPCon against a server unlike OpenSSH: asyncssh's own SFTP server.

Subclassed (public SFTPServer methods overridden) so that it has no
posix-rename (it answers OP_UNSUPPORTED: the rename fallback is used), keeps
SFTPv3's RENAME that never replaces, and refuses FSETSTAT on a handle (so
metadata goes by path). It records every rename and the largest WRITE it got.
The whole contract suite is not re-run here; these tests cover the code
paths OpenSSH never takes.

(Before issue 19 this was paramiko's server with a "check-file" extension;
asyncssh's client has no public way to ask for check-file, so a resumed
upload now reads back what the temp file holds and compares it byte for
byte, with any server.)
"""
from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import asyncssh
import pytest

from connections.contract.xcon import LocalFile, NullResumeStore, TransferContext, TransientError
from connections.sftp.con import SFTPCon, known_hosts_line

MiB = 1 << 20


class _SFTPServer(asyncssh.SFTPServer):
    """Paths are local paths (no chroot), as with the test sshd."""

    renames: list = []
    writes: list = []
    fsetstat_refused: list = []

    def posix_rename(self, oldpath, newpath):
        raise asyncssh.SFTPOpUnsupported("posix-rename not supported here")

    def rename(self, oldpath, newpath):
        if os.path.lexists(newpath):  # SFTPv3: never replaces
            raise asyncssh.SFTPFailure("target exists")
        self.renames.append((oldpath, newpath))
        os.rename(oldpath, newpath)

    def fsetstat(self, file_obj, attrs):
        self.fsetstat_refused.append(True)
        raise asyncssh.SFTPOpUnsupported("fsetstat not supported here")

    def write(self, file_obj, offset, data):
        self.writes.append(len(data))
        return super().write(file_obj, offset, data)


@pytest.fixture
def odd_server(tmp_path):
    """asyncssh's SFTP server with _SFTPServer's quirks, on 127.0.0.1."""
    hk = asyncssh.generate_private_key("ssh-ed25519")
    ck = asyncssh.generate_private_key("ssh-ed25519")
    ck_path = tmp_path / "client_key"
    ck.write_private_key(str(ck_path))
    os.chmod(ck_path, 0o600)
    authorized = asyncssh.import_authorized_keys(ck.export_public_key().decode())
    root = tmp_path / "remote"
    root.mkdir()
    _SFTPServer.renames, _SFTPServer.writes, _SFTPServer.fsetstat_refused = [], [], []
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        return await asyncssh.listen("127.0.0.1", 0, server_host_keys=[hk], authorized_client_keys=authorized,
                                     sftp_factory=_SFTPServer, allow_scp=False)

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    port = server.sockets[0].getsockname()[1]
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts_line("127.0.0.1", port, hk.convert_to_public()))
    yield {"port": port, "key": str(ck_path), "known_hosts": str(kh), "root": str(root)}

    async def stop():
        server.close()
        await server.wait_closed()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _con(ps, **kw) -> SFTPCon:
    return SFTPCon("127.0.0.1", ps["root"], port=ps["port"], key_file=ps["key"], known_hosts=ps["known_hosts"],
                   use_agent=False, timeout=10, **kw)


def _file(tmp_path: Path, rel: str, data: bytes, mtime_s: int = 1_500_000_000) -> LocalFile:
    p = tmp_path / ("src-" + rel.replace("/", "_"))
    p.write_bytes(data)
    os.chmod(p, 0o640)
    os.utime(p, (mtime_s, mtime_s))
    st = os.stat(p)
    return LocalFile(str(p), rel, st.st_size, st.st_mtime_ns, 0o640, st.st_ino)


def test_without_posix_rename_replace_still_works(odd_server, tmp_path):
    root = Path(odd_server["root"])
    with _con(odd_server, write_size=32768) as con:
        con.send(_file(tmp_path, "a/x", b"first"), TransferContext())
        con.send(_file(tmp_path, "a/x", b"second version", mtime_s=1_600_000_000), TransferContext())
        assert (root / "a" / "x").read_bytes() == b"second version"
        st = os.stat(root / "a" / "x")
        assert int(st.st_mtime) == 1_600_000_000 and st.st_mode & 0o777 == 0o640  # set by path
        assert _SFTPServer.fsetstat_refused  # ...because FSETSTAT was refused
        # The old file was moved aside, the new one renamed in, the old removed.
        assert any(b".skynet-old-" in os.fsencode(new) for _old, new in _SFTPServer.renames)
        con.send(_file(tmp_path, "b", b"other"), TransferContext())
        con.move("b", "a/x")
        assert (root / "a" / "x").read_bytes() == b"other"
        assert con.leftovers() == [] and {e.rel for e in con.list()} == {"a/x"}
        con.send(_file(tmp_path, "c", os.urandom(300_000)), TransferContext())
        assert max(_SFTPServer.writes) <= 32768  # WRITEs stay within the size asked for


def _stop_at(ctx: TransferContext, limit: int):
    ctx.progress = lambda done, total: ctx.stop.set() if done > limit else None
    return ctx


def test_large_upload_resumed_and_verified(odd_server, tmp_path):
    """Resume and the final check (size, last block) on a server without
    posix-rename that refuses FSETSTAT (before: verified by its check-file)."""
    data = os.urandom(10 * MiB)
    f = _file(tmp_path, "big", data)
    store = NullResumeStore()
    with _con(odd_server, resume_min=4 * MiB, write_size=32768) as con:  # (as the old server: 32 KiB)
        with pytest.raises(TransientError):
            con.send(f, _stop_at(TransferContext(resume=store), 3 * MiB))
        res = con.send(f, TransferContext(resume=store))
        assert 0 < res.bytes_sent < f.size
        assert (Path(odd_server["root"]) / "big").read_bytes() == data
        st = os.stat(Path(odd_server["root"]) / "big")
        assert int(st.st_mtime) == 1_500_000_000 and st.st_mode & 0o777 == 0o640
        assert con.leftovers() == []


@pytest.mark.parametrize("where", ["middle", "tail"])
def test_resume_reads_back_and_catches_damage(odd_server, tmp_path, where):
    """A resume reads back every byte the temp file already holds: damage in
    the middle (which a check of the last block cannot see) is caught as
    well as damage at the end. The send raises "start over", drops the
    resume state and the temp file; the next send sends the whole file."""
    data = os.urandom(10 * MiB)
    f = _file(tmp_path, "big", data)
    store = NullResumeStore()
    root = Path(odd_server["root"])
    with _con(odd_server, resume_min=4 * MiB, write_size=32768) as con:  # (as the old server: 32 KiB)
        with pytest.raises(TransientError):
            con.send(f, _stop_at(TransferContext(resume=store), 3 * MiB))
        tmp = next(p for p in root.iterdir() if p.name.startswith(".skynet-tmp-"))
        with open(tmp, "r+b") as fh:  # damage what is already there
            fh.seek(MiB if where == "middle" else os.path.getsize(tmp) - 100)
            fh.write(b"\0" * 16)
        with pytest.raises(TransientError, match="start over"):
            con.send(f, TransferContext(resume=store))
        assert store.load() is None and con.leftovers() == [] and con.stat("big") is None
        res = con.send(f, TransferContext(resume=store))
        assert res.bytes_sent == f.size  # not resumed: sent whole
        assert (root / "big").read_bytes() == data
        assert store.load() is None and con.leftovers() == []
