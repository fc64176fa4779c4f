"""SFTPCon against a server unlike OpenSSH: paramiko's own SFTP server.

It advertises no posix-rename (so the rename fallback is used), no limits
(so writes stay at 32 KiB), offers the "check-file" hash extension (so large
uploads are verified by the server's hash) and refuses FSETSTAT on a handle
(so metadata goes by path). The whole contract suite is not re-run here;
these tests cover the code paths OpenSSH never takes.
"""
from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path

import paramiko
import pytest
from paramiko.message import Message
from paramiko.sftp import CMD_EXTENDED_REPLY, SFTP_FAILURE, SFTP_OK
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_server import SFTPServer

from connections.base import LocalFile, NullResumeStore, TransferContext, TransientError
from connections.sftp import SFTPCon, known_hosts_line

MiB = 1 << 20


class _Auth(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL if key == self.client_key else paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class _Handle(paramiko.SFTPHandle):
    # chattr() is left to the base class: it answers OP_UNSUPPORTED.
    def stat(self):
        return SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))


def _errno(fn):
    try:
        fn()
    except OSError as exc:
        return SFTPServer.convert_errno(exc.errno)
    return SFTP_OK


class _SFTPServer(SFTPServer):
    """paramiko's server, with a working "check-file" for whole files (its
    own loses its place after 64 KiB and never answers)."""

    def _check_file(self, request_number, msg):
        handle = msg.get_binary()
        algs = msg.get_list()
        start, length = msg.get_int64(), msg.get_int64()
        msg.get_int()  # block size: whole file only
        f = self.file_table.get(handle)
        alg = next((a for a in algs if a in ("sha1", "md5")), None)
        if f is None or alg is None or start or length:
            self._send_status(request_number, SFTP_FAILURE, "unsupported check-file request")
            return
        h = hashlib.new(alg)
        fh = f.readfile
        fh.seek(0)
        for block in iter(lambda: fh.read(1 << 16), b""):
            h.update(block)
        reply = Message()
        reply.add_int(request_number)
        reply.add_string("check-file")
        reply.add_string(alg)
        reply.add_bytes(h.digest())
        self._send_packet(CMD_EXTENDED_REPLY, reply)
        self.checked.append(alg)

    checked: list = []


class _FS(paramiko.SFTPServerInterface):
    """Paths are local paths (no chroot), as with the test sshd."""

    def open(self, path, flags, attr):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            return SFTPServer.convert_errno(exc.errno)
        h = _Handle(flags)
        h.filename = path
        h.readfile = h.writefile = os.fdopen(fd, "r+b" if flags & os.O_RDWR else ("wb" if flags & os.O_WRONLY else "rb"))
        return h

    def list_folder(self, path):
        try:
            names = os.listdir(path)
        except OSError as exc:
            return SFTPServer.convert_errno(exc.errno)
        out = []
        for n in names:
            a = SFTPAttributes.from_stat(os.lstat(os.path.join(path, n)))
            a.filename = n
            out.append(a)
        return out

    def stat(self, path):
        try:
            return SFTPAttributes.from_stat(os.stat(path))
        except OSError as exc:
            return SFTPServer.convert_errno(exc.errno)

    def lstat(self, path):
        try:
            return SFTPAttributes.from_stat(os.lstat(path))
        except OSError as exc:
            return SFTPServer.convert_errno(exc.errno)

    def remove(self, path):
        return _errno(lambda: os.remove(path))

    def rename(self, oldpath, newpath):
        if os.path.lexists(newpath):  # SFTPv3: never replaces
            return SFTP_FAILURE
        self.renames.append((oldpath, newpath))
        return _errno(lambda: os.rename(oldpath, newpath))

    def mkdir(self, path, attr):
        return _errno(lambda: os.mkdir(path))

    def rmdir(self, path):
        return _errno(lambda: os.rmdir(path))

    def chattr(self, path, attr):
        return _errno(lambda: SFTPServer.set_file_attr(path, attr))

    renames: list = []


@pytest.fixture
def paramiko_server(tmp_path):
    hk = paramiko.RSAKey.generate(2048)
    ck = paramiko.RSAKey.generate(2048)
    ck_path = tmp_path / "client_key"
    ck.write_private_key_file(str(ck_path))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts_line("127.0.0.1", port, hk))
    transports: list[paramiko.Transport] = []
    _FS.renames = []

    def serve():
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            t = paramiko.Transport(sock)
            t.add_server_key(hk)
            t.set_subsystem_handler("sftp", _SFTPServer, _FS)
            t.start_server(server=_Auth(ck))
            transports.append(t)

    threading.Thread(target=serve, daemon=True).start()
    root = tmp_path / "remote"
    root.mkdir()
    yield {"port": port, "key": str(ck_path), "known_hosts": str(kh), "root": str(root)}
    listener.close()
    for t in transports:
        t.close()


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


def test_without_posix_rename_replace_still_works(paramiko_server, tmp_path):
    root = Path(paramiko_server["root"])
    with _con(paramiko_server) as con:
        s = con._pool.acquire()
        assert not s.posix_rename and s.check_file and 32000 < s.write_size <= 32768
        con._pool.release(s, False)
        con.send(_file(tmp_path, "a/x", b"first"), TransferContext())
        con.send(_file(tmp_path, "a/x", b"second version", mtime_s=1_600_000_000), TransferContext())
        assert (root / "a" / "x").read_bytes() == b"second version"
        st = os.stat(root / "a" / "x")
        assert int(st.st_mtime) == 1_600_000_000 and st.st_mode & 0o777 == 0o640  # set by path
        # The old file was moved aside, the new one renamed in, the old removed.
        assert any(b".skynet-old-" in os.fsencode(new) for _old, new in _FS.renames)
        con.send(_file(tmp_path, "b", b"other"), TransferContext())
        con.move("b", "a/x")
        assert (root / "a" / "x").read_bytes() == b"other"
        assert con.leftovers() == [] and {e.rel for e in con.list()} == {"a/x"}


def _stop_at(ctx: TransferContext, limit: int):
    ctx.progress = lambda done, total: ctx.stop.set() if done > limit else None
    return ctx


def test_large_upload_resumed_and_verified_by_check_file(paramiko_server, tmp_path):
    data = os.urandom(10 * MiB)
    f = _file(tmp_path, "big", data)
    store = NullResumeStore()
    _SFTPServer.checked = []
    with _con(paramiko_server, resume_min=4 * MiB) as con:
        with pytest.raises(TransientError):
            con.send(f, _stop_at(TransferContext(resume=store), 3 * MiB))
        res = con.send(f, TransferContext(resume=store))
        assert 0 < res.bytes_sent < f.size
        assert (Path(paramiko_server["root"]) / "big").read_bytes() == data
        assert _SFTPServer.checked == ["sha1"]
        assert con.leftovers() == []


def test_check_file_catches_damage_the_tail_check_cannot(paramiko_server, tmp_path):
    data = os.urandom(10 * MiB)
    f = _file(tmp_path, "big", data)
    store = NullResumeStore()
    _SFTPServer.checked = []
    root = Path(paramiko_server["root"])
    with _con(paramiko_server, resume_min=4 * MiB) as con:
        with pytest.raises(TransientError):
            con.send(f, _stop_at(TransferContext(resume=store), 3 * MiB))
        tmp = next(p for p in root.iterdir() if p.name.startswith(".skynet-tmp-"))
        with open(tmp, "r+b") as fh:  # damage the middle of what is already there
            fh.seek(MiB)
            fh.write(b"\0" * 16)
        with pytest.raises(TransientError, match="start over"):
            con.send(f, TransferContext(resume=store))
        assert store.load() is None and con.leftovers() == [] and con.stat("big") is None
        res = con.send(f, TransferContext(resume=store))
        assert res.bytes_sent == f.size
        assert (root / "big").read_bytes() == data
        assert len(_SFTPServer.checked) == 2
