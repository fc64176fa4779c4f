"""SFTPCon: the remote is a folder on an SSH server, reached over SFTP.

Only SFTP requests are used (no exec_command, no shell): a file name is data,
never a shell word. paramiko provides SSH (transport, host keys, auth,
channels); on top of its SFTPClient we keep a few protocol details it hides:
the server's extension list (posix-rename, limits, statvfs, check-file), the
raw status codes (to tell "permission denied" from "no such file" from a
generic "Failure"), byte-exact names, and pipelined requests whose errors are
never dropped.

How a file is sent (atomic for readers of the remote):
  LSTAT each folder + temp (pipelined)  |  OPEN temp (CREATE|EXCL)  |
  WRITE... + FSETSTAT(mode & 0o777, mtime) + CLOSE (pipelined)  |  RENAME
The temporary name is derived from the target name (connections.local.temp_name),
so a retry replaces what a failed attempt left. The rename is OpenSSH's
posix-rename (atomic replace) when the server offers it; otherwise see _replace().

Links on the server are never followed (_inspect): every request by path
follows a link met on the way, so each folder between the root and the file
is LSTATed before every send, delete and move, fresh each time (no cache to
go stale); a link there is refused, missing folders are made level by level
(MKDIR never follows), and the temp file is created with EXCL, so a link at
its name fails the OPEN instead of being written through. The mode sent never
carries setuid, setgid or sticky bits (MODE_MASK).

For a small file that is four round trips and four SSH packets out: the
LSTATs leave together, and so do the last WRITE, FSETSTAT and CLOSE
(send_batch). Every WRITE is acknowledged by the server before the rename, so
a file is published only when all its bytes were accepted.

Large files (>= RESUME_MIN bytes) are resumable: the file's identity (size,
mtime, inode) is saved in ctx.resume when the upload starts; a later send of the
same unchanged file reopens the temp file and continues from its size (OpenSSH
applies the pipelined writes of one handle in order, so the temp file's size is
exactly what arrived), after checking that the temp file's last 64 KiB match
the local bytes. A finished large upload is verified before the rename: size
(FSTAT), then the server's "check-file" hash when offered, else the last
64 KiB re-read (both pipelined before CLOSE). Files >= PARALLEL_MIN go as
PART_SIZE parts over PARALLEL_STREAMS connections (_send_parallel), each part
thread reporting its own progress (and so being throttled) as it goes.

The bulk of a large file travels through _Wire, not paramiko's Channel.send:
with AES-GCM it encrypts a whole WRITE's SSH packets into one buffer and
writes them with one syscall (see _Wire for why and what it relies on).

Threads: a pool of up to `connections` SSH connections, each with one SFTP
channel, each used by one thread at a time. A connection that fails (socket
error, timeout, EOF) is dropped from the pool with the idle ones (they most
likely share its fate); the next call opens a new one. Every blocking call has
a timeout: the channel's (`timeout`), paramiko's banner/auth/channel timeouts,
and a watchdog for the one wait paramiko leaves unbounded.

paramiko internals used (stable since paramiko 1.x, checked with 5.1):
SFTPClient._send_version/_convert_status/_write_all/_read_all (overridden),
_request/_async_request/_read_response/_send_packet/_read_packet/_lock/
request_number/_expecting, SFTPAttributes._from_msg/_pack; for _Wire (checked
by _Wire.available(), else paramiko's own path): Packetizer's private cipher
state, Transport.clear_to_send(_lock), Channel._wait_for_send_window.
"""
from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import logging
import os
import posixpath
import socket
import stat as statmod
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

import paramiko
from paramiko.message import Message
from paramiko.packet import NeedRekeyException, Packetizer
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSETSTAT,
    CMD_FSTAT,
    CMD_HANDLE,
    CMD_INIT,
    CMD_LSTAT,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_SETSTAT,
    CMD_DATA,
    CMD_VERSION,
    CMD_WRITE,
    SFTP_BAD_MESSAGE,
    SFTP_CONNECTION_LOST,
    SFTP_EOF,
    SFTP_FAILURE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    SFTP_NO_CONNECTION,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
    SFTPError,
)
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_client import SFTPClient, int64

from connections.base import (
    Abilities,
    LocalFile,
    PermanentError,
    RemoteEntry,
    RemoteNotFound,
    SendResult,
    TransferContext,
    TransientError,
    UnsafePath,
    XCon,
    XConError,
    check_rel,
    remote_join,
    within_listing,
)
from connections.local import TMP_PREFIX, temp_name
from connections.source import open_source
from skynet.atomicfile import write_atomic
from skynet.values import parse_bool

log = logging.getLogger("skynet.sftp")

#: config keys of an [sftp] service: key -> (default, one-line doc)
KEYS: dict[str, tuple[str, str]] = {
    "host": ("", "SSH server name or address (required)"),
    "port": ("22", "SSH port"),
    "user": ("", "login name (default: the local user name)"),
    "key_file": ("", "private key file; empty: keys from ssh-agent and ~/.ssh"),
    "key_passphrase": ("", "passphrase of key_file, if it is encrypted (never logged)"),
    "password": ("", "password login; discouraged, prefer a key (never logged)"),
    "use_agent": ("yes", "also offer the keys held by ssh-agent"),
    "known_hosts": ("~/.ssh/known_hosts", "trusted host keys; an unknown or changed key is refused"),
    "connections": ("4", "SSH connections kept open for parallel transfers"),
    "keepalive": ("5", "seconds between SSH keepalive messages (0: off)"),
    "timeout": ("15", "seconds a silent server may take before it counts as unreachable"),
}

#: keys a service section may carry that are not ours to check
_GENERIC_KEYS = {"type", "service", "name"}

#: files at least this big are resumable (their identity goes to ctx.resume)
RESUME_MIN = 8 << 20
#: bytes per SFTP WRITE (at most; see _write_size; OpenSSH takes 255 KiB).
#: Measured here (256 MiB, OpenSSH, AES-GCM through _Wire): 7 full SSH packets
#: (223 KiB) used ~10% less client CPU than 4 (128 KiB), 2 (64 KiB) ~25% more:
#: every WRITE costs a reply for the client to read and a pwrite for sshd.
WRITE_SIZE = 256 << 10
#: ...and through paramiko's own channel path (another cipher than AES-GCM),
#: where 128 KiB used the least CPU (64 KiB and 192-256 KiB more)
PARAMIKO_WRITE_SIZE = 128 << 10
#: bytes of an SFTP WRITE request around its data (OpenSSH's 4-byte handle)
_WRITE_OVERHEAD = 4 + 1 + 4 + (4 + 4) + 8 + 4
#: the size every SFTP server must accept (draft-ietf-secsh-filexfer-02)
SAFE_WRITE_SIZE = 32768
#: files at least this big are sent over several connections at once, in
#: PART_SIZE parts (one SSH channel's window, 2 MiB with OpenSSH, caps a single
#: stream at window/RTT on a distant server)
PARALLEL_MIN = 64 << 20
PART_SIZE = 16 << 20
#: connections one large file uses at most. Measured here (2 cores, sshd on the
#: same machine, 256 MiB): 2 streams ~160-180 MB/s, 1 ~135, 4 ~105-140 (the
#: client's Python is CPU-bound and shares the GIL; more streams only add
#: contention). Over a distant link each extra stream adds a window in flight.
PARALLEL_STREAMS = 2
#: unacknowledged WRITE requests allowed in flight on one channel
MAX_INFLIGHT = 32
#: bytes of replies read from the channel at once (_SFTP._read_all)
READ_AHEAD = 64 << 10
#: a part thread passes its acknowledged bytes to the progress report (and
#: the bandwidth limit) at least this often, in bytes or seconds (_Meter)
REPORT_BYTES = 1 << 20
REPORT_EVERY = 0.1
#: bytes re-read from the end of a large upload to check it arrived intact
VERIFY_TAIL = 64 << 10
#: slowest hashing speed (bytes/s) we wait for when the server hashes a file
HASH_RATE = 20 << 20
#: name prefix of the old file moved aside by the no-posix-rename fallback
ASIDE_PREFIX = ".skynet-old-"
#: ciphers tried first: AES-GCM needs no separate MAC, cheapest for us and sshd
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
#: name prefixes of our own temporary files (never listed, removed by cleanup)
_OURS = (TMP_PREFIX.encode(), ASIDE_PREFIX.encode())
_MAX_U32 = 2**32 - 1


# --------------------------------------------------------------------------
# host keys: helpers for the connection and for the setup wizard
# --------------------------------------------------------------------------
def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's fingerprint of a public key: "SHA256:" + unpadded base64."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts names a server: "host" on port 22, else "[host]:port"."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_line(host: str, port: int, key: paramiko.PKey) -> str:
    return f"{known_hosts_name(host, port)} {key.get_name()} {key.get_base64()}\n"


#: known_hosts names an RSA key "ssh-rsa"; the handshake offers it under these
#: signature algorithms (SHA-2 first: OpenSSH >= 8.8 refuses "ssh-rsa" signatures)
_KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def trusted_keys(known_hosts_path: str, host: str, port: int) -> dict[str, paramiko.PKey]:
    """The keys known_hosts trusts for host:port, by key type ({} if none, or no file).

    Read fresh each time (paramiko's public HostKeys: plain and hashed names)."""
    keys = paramiko.HostKeys()
    with contextlib.suppress(FileNotFoundError):
        keys.load(os.path.expanduser(known_hosts_path))
    entry = keys.lookup(known_hosts_name(host, port))
    return {name: entry[name] for name in entry.keys()} if entry else {}


def key_status(key: paramiko.PKey, trusted: dict[str, paramiko.PKey]) -> str:
    """"known", "unknown" or "changed" for the key a server offers.

    Why "changed" for a key of ANOTHER TYPE than the trusted ones: the server
    we trust can still prove itself with the type we know (the handshake asks
    for it first, see fetch_host_key); one that offers only another type is,
    as far as we can tell, another server. Calling that "unknown" invites a
    yes to exactly the key a man in the middle would present.
    """
    if not trusted:
        return "unknown"
    return "known" if trusted.get(key.get_name()) == key else "changed"


def _prefer_key_types(t: paramiko.Transport, types: list[str]) -> None:
    """Ask the server for a host key of these types first (as ssh and
    paramiko's SSHClient do for the types known_hosts holds)."""
    opts = t.get_security_options()
    first = [a for name in types for a in _KEY_ALGORITHMS.get(name, (name,)) if a in opts.key_types]
    first = list(dict.fromkeys(first))
    opts.key_types = tuple(first + [a for a in opts.key_types if a not in first])


def fetch_host_key(host: str, port: int = 22, timeout: float = 15.0, prefer: list[str] | tuple[str, ...] = ()) -> paramiko.PKey:
    """Connect only far enough to read the server's host key (no login).

    For the wizard, which shows fingerprint(key) and asks before trusting it.
    `prefer`: key types to ask for first (those known_hosts holds for the host),
    so the wizard sees the key the daemon's own connection would see.
    """
    try:
        sock = socket.create_connection((host, port), timeout)
    except OSError as exc:
        raise TransientError(f"cannot reach {host}:{port}: {exc}") from exc
    t = paramiko.Transport(sock)
    t.banner_timeout = t.handshake_timeout = timeout
    _prefer_key_types(t, list(prefer))
    try:
        t.start_client(timeout=timeout)
        return t.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise TransientError(f"no SSH server answered at {host}:{port}: {exc}") from exc
    finally:
        t.close()


def trust_host_key(known_hosts_path: str, host: str, port: int, key: paramiko.PKey) -> str:
    """Write `key` as the trusted key of host:port; returns the line written.

    An older line for the same name and key type is replaced (it would
    otherwise still be matched first). The file is written whole and renamed
    into place, mode 0600, through a fresh temporary name (write_atomic: a
    link planted at a fixed ".tmp" name is never followed).
    """
    path = os.path.expanduser(known_hosts_path)
    name = known_hosts_name(host, port)
    line = known_hosts_line(host, port, key)
    kept: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            for old in fh:
                fields = old.split()
                if len(fields) >= 2 and name in fields[0].split(",") and fields[1] == key.get_name():
                    continue
                kept.append(old if old.endswith("\n") else old + "\n")
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    write_atomic(path, "".join(kept + [line]), 0o600)
    return line


class UnknownHostKey(PermanentError):
    """The server's host key is not in known_hosts."""


class HostKeyChanged(PermanentError):
    """The server's host key differs from the trusted one."""


class _RejectUnknownHost(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, with a message that tells how to trust the key.

    paramiko calls it only when known_hosts holds no key at all for the host:
    a key of another type than the trusted ones is a BadHostKeyException
    (SSHClient.connect, checked with paramiko 5.1), which _open_session reports as a
    changed key, as key_status does for the wizard."""

    def __init__(self, known_hosts: str, host: str, port: int) -> None:
        self.known_hosts, self.host, self.port = known_hosts, host, port

    def missing_host_key(self, client, hostname, key) -> None:
        raise UnknownHostKey(
            f"host key of {hostname} is not trusted yet: {key.get_name()} {fingerprint(key)}. "
            f"Check that fingerprint with the server's administrator, then trust it by adding this "
            f"line to {self.known_hosts}:\n{known_hosts_line(self.host, self.port, key)}"
            f"(or: ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts} and compare "
            f"`ssh-keygen -lf {self.known_hosts}`), or re-run the setup wizard."
        )


def _changed_key_error(host: str, port: int, known_hosts: str, got, expected) -> HostKeyChanged:
    name = known_hosts_name(host, port)
    return HostKeyChanged(
        f"HOST KEY CHANGED for {name}! The server offered {got.get_name()} {fingerprint(got)} but "
        f"{known_hosts} trusts {expected.get_name()} {fingerprint(expected)}. Someone may be "
        f"intercepting the connection (possible man-in-the-middle attack), or the server was "
        f"reinstalled. Not connecting. If the change is expected, remove the old key "
        f"(ssh-keygen -R '{name}' -f {known_hosts}) and trust the new one (setup wizard)."
    )


# --------------------------------------------------------------------------
# the SFTP layer: paramiko's client plus what it hides
# --------------------------------------------------------------------------
class SFTPStatus(IOError):
    """An SFTP status reply other than OK/EOF, with its code kept."""

    def __init__(self, code: int, text: str) -> None:
        err = {SFTP_NO_SUCH_FILE: errno.ENOENT, SFTP_PERMISSION_DENIED: errno.EACCES}.get(code)
        super().__init__(err, text) if err else super().__init__(text)
        self.code, self.text = code, text


class _SFTP(SFTPClient):
    """SFTPClient that keeps the server's extensions and raw status codes."""

    extensions: dict[str, bytes]
    #: the bulk data path for WRITEs (None: paramiko's own, see _Wire)
    wire: "_Wire | None" = None

    def __init__(self, chan: paramiko.Channel) -> None:
        self._rbuf = bytearray()  # replies read ahead (_read_all)
        super().__init__(chan)
        # paramiko keeps request -> file object in a WeakValueDictionary (a
        # weak reference made and dropped per request); every request of ours
        # is answered or the session is dropped, so a dict holds nothing long.
        self._expecting = {}

    def _read_all(self, n: int) -> bytes:
        """n bytes of the reply stream. paramiko's reads each reply in two
        channel reads (its length, then the rest), each taking the channel's
        locks; here one read takes whatever has arrived (a WRITE's status is
        28 bytes: many replies per read when they queue up)."""
        buf = self._rbuf
        while len(buf) < n:
            x = self.sock.recv(max(n - len(buf), READ_AHEAD))
            if not x:
                raise EOFError()
            buf += x
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def reply_ready(self) -> bool:
        """A reply can be read without waiting."""
        return bool(self._rbuf) or self.sock.recv_ready()

    def _send_version(self) -> int:
        # Same exchange as paramiko's, but the extension pairs are kept.
        m = Message()
        m.add_int(3)
        self._send_packet(CMD_INIT, m)
        t, data = self._read_packet()
        if t != CMD_VERSION:
            raise SFTPError("Incompatible sftp protocol")
        msg = Message(data)
        version = msg.get_int()
        self.extensions = {}
        while msg.get_remainder():
            name = msg.get_string().decode("utf-8", "replace")
            self.extensions[name] = msg.get_string()
        return version

    def _convert_status(self, msg: Message) -> None:
        code = msg.get_int()
        text = msg.get_string().decode("utf-8", "replace")
        if code == SFTP_OK:
            return
        if code == SFTP_EOF:
            raise EOFError(text)
        raise SFTPStatus(code, text)

    def _write_all(self, out: bytes) -> None:
        # paramiko's version re-slices the rest of the message after each
        # channel packet (~32 KiB): quadratic copying for 256 KiB writes.
        view = memoryview(out)
        while view:
            n = self.sock.send(view)
            if n <= 0:
                raise EOFError()
            view = view[n:]

    # -- requests paramiko has no method for ---------------------------------
    def extended(self, name: str, *args) -> Message | None:
        t, msg = self._request(CMD_EXTENDED, name, *args)
        return msg if t == CMD_EXTENDED_REPLY else None

    def limits(self) -> dict[str, int]:
        """limits@openssh.com: the server's largest read/write, open handles."""
        if "limits@openssh.com" not in self.extensions:
            return {}
        msg = self.extended("limits@openssh.com")
        if msg is None:
            return {}
        keys = ("max_packet", "max_read", "max_write", "max_handles")
        return {k: msg.get_int64() for k in keys}

    def free_bytes(self, path: bytes) -> int | None:
        """Bytes available to us on the file system of `path` (statvfs@openssh.com)."""
        if "statvfs@openssh.com" not in self.extensions:
            return None
        msg = self.extended("statvfs@openssh.com", path)
        if msg is None:
            return None
        _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
        return frsize * bavail

    def open_handle(self, path: bytes, flags: int) -> bytes:
        t, msg = self._request(CMD_OPEN, path, flags, SFTPAttributes())
        if t != CMD_HANDLE:
            raise SFTPError("Expected handle")
        return msg.get_binary()

    def send_batch(self, requests: list[tuple[int, tuple]]) -> list[int]:
        """Queue several requests in one channel write (so, for small ones, one
        SSH packet and one syscall); returns their numbers, for wait()."""
        out: list[bytes] = []
        nums: list[int] = []
        with self._lock:
            for cmd, args in requests:
                msg = Message()
                msg.add_int(self.request_number)
                for item in args:
                    if isinstance(item, int64):
                        msg.add_int64(item)
                    elif isinstance(item, int):
                        msg.add_int(item)
                    elif isinstance(item, SFTPAttributes):
                        item._pack(msg)
                    else:
                        msg.add_string(item)
                payload = msg.asbytes()
                out += [struct.pack(">IB", len(payload) + 1, cmd), payload]
                nums.append(self.request_number)
                self._expecting[self.request_number] = type(None)
                self.request_number += 1
        self._write_all(b"".join(out))
        return nums

    def _write_head(self, handle: bytes, offset: int, n: int) -> tuple[int, bytes]:
        """A new request number and the bytes of a WRITE before its data."""
        with self._lock:
            num = self.request_number
            self._expecting[num] = type(None)
            self.request_number += 1
        head = struct.pack(">IBII", 1 + 4 + 4 + len(handle) + 8 + 4 + n, CMD_WRITE, num, len(handle)) + handle
        return num, head + struct.pack(">QI", offset, n)

    def send_write(self, handle: bytes, offset: int, data) -> int:
        """Queue one WRITE without waiting (collect it with wait(num)). Its
        header is packed here, not through a Message, and the data is never
        joined to it: _Wire copies both straight into its packets."""
        num, head = self._write_head(handle, offset, len(data))
        wire = self.wire
        if wire is not None:
            wire.send(head, data)
        else:
            self._write_all(head + data)
        return num

    def send_write_from(self, handle: bytes, offset: int, fd: int, n: int) -> int:
        """Queue one WRITE of `n` bytes of file `fd` at `offset` (the same
        offset remotely). With _Wire the bytes are read straight into its
        packets. Raises _LocalError if the file cannot be read, _FileShrank
        if it holds fewer bytes."""
        wire = self.wire
        try:
            if wire is None:
                data = os.pread(fd, n, offset)
                got = len(data)
            else:
                got = wire.load_file(fd, offset, n, 4 + 1 + 4 + 4 + len(handle) + 8 + 4)
        except OSError as exc:
            raise _LocalError(exc) from exc
        if got < n:
            raise _FileShrank(f"{got} of {n} bytes at {offset}")
        if wire is None:
            return self.send_write(handle, offset, data)
        num, head = self._write_head(handle, offset, n)
        wire.put_head(head)
        wire.flush()
        return num

    def send_async(self, cmd: int, *args) -> int:
        """Queue one request without waiting; collect it with wait(num)."""
        return self._async_request(type(None), cmd, *args)

    def wait(self, num: int) -> tuple[int, Message]:
        """The reply to request `num` (replies arrive in request order)."""
        t, msg = self._read_response(num)
        if t is None:
            raise SFTPError(f"no reply to request {num}")
        return t, msg

    def lstat_many(self, paths: list[bytes]) -> list[SFTPAttributes | SFTPStatus]:
        """LSTAT of every path in one round trip (the requests pipelined, in
        one packet when small): each result is the attributes, or the status
        the server answered. Every reply is read, so the channel stays in step."""
        out: list[SFTPAttributes | SFTPStatus] = []
        for num in self.send_batch([(CMD_LSTAT, (p,)) for p in paths]):
            try:
                t, msg = self.wait(num)
            except SFTPStatus as exc:
                out.append(exc)
                continue
            if t != CMD_ATTRS:
                raise SFTPError("Expected attributes")
            out.append(SFTPAttributes._from_msg(msg))
        return out

    def scandir(self, path: bytes) -> list[tuple[bytes, SFTPAttributes]]:
        """Entries of one folder, names as raw bytes (any encoding survives)."""
        t, msg = self._request(CMD_OPENDIR, path)
        if t != CMD_HANDLE:
            raise SFTPError("Expected handle")
        handle = msg.get_binary()
        found: list[tuple[bytes, SFTPAttributes]] = []
        try:
            while True:
                try:
                    t, msg = self._request(CMD_READDIR, handle)
                except EOFError:
                    break
                if t != CMD_NAME:
                    raise SFTPError("Expected name response")
                for _ in range(msg.get_int()):
                    name = msg.get_string()
                    msg.get_string()  # "longname", an ls -l line
                    attr = SFTPAttributes._from_msg(msg)
                    if name not in (b".", b".."):
                        found.append((name, attr))
        finally:
            self._request(CMD_CLOSE, handle)
        return found


# --------------------------------------------------------------------------
# the bulk data path: SFTP WRITEs onto the SSH channel, few copies, one syscall
# --------------------------------------------------------------------------
#: Packetizer state the fast path reads and updates (name-mangled privates)
_PK = "_Packetizer__"
_PK_FIELDS = ("write_lock", "aead_out", "block_engine_out", "iv_out", "block_size_out",
              "compress_engine_out", "dump_packets", "sequence_number_out", "sent_bytes",
              "sent_packets", "need_rekey", "received_bytes_overflow", "received_packets_overflow")
_MSG_CHANNEL_DATA = 94
#: bytes before a channel data packet's data: padding length, type, channel, data length
_HEAD = 1 + 1 + 4 + 4
#: bytes the transport reads from its socket at once (_Packetizer.read_all)
_SSH_READ_AHEAD = 64 << 10
#: the largest SSH padding (4 + a 16-byte cipher block - 1)
_MAX_PAD = 19
_GCM_TAG = 16


class _Packetizer(Packetizer):
    """paramiko's Packetizer with two costs of its read side removed.

    Why: during an upload the server sends small packets (a WRITE's status,
    a window adjust every 96 KiB) and paramiko reads each packet in two
    socket reads (first block, then the rest), each a poll and a recv; here
    one recv takes whatever has arrived (_SSH_READ_AHEAD) and the next
    packets are cut from it. And paramiko cancels its handshake timer again
    for every packet it reads (a Timer.cancel: an Event set, a lock);
    here the timer is dropped once the handshake is over.

    Installed on our transports only (SFTPCon._transport_factory), when the
    private state it uses is there (available()).
    """

    @staticmethod
    def available(pk: Packetizer) -> bool:
        names = ("remainder", "socket", "closed", "need_rekey", "timer")
        return type(pk) is Packetizer and all(hasattr(pk, _PK + n) for n in names)

    def complete_handshake(self) -> None:
        if getattr(self, _PK + "timer"):
            super().complete_handshake()
            setattr(self, _PK + "timer", None)

    def read_all(self, n: int, check_rekey: bool = False) -> bytes:
        """Packetizer.read_all (same timeouts, keepalives and rekey check),
        reading ahead into the remainder it already keeps for the banner."""
        rem = getattr(self, _PK + "remainder")
        if len(rem) >= n:
            setattr(self, _PK + "remainder", rem[n:])
            return rem[:n]
        out, n = rem, n - len(rem)
        setattr(self, _PK + "remainder", b"")
        sock = getattr(self, _PK + "socket")
        while n > 0:
            if self.handshake_timed_out():
                raise EOFError()
            try:
                x = sock.recv(max(n, _SSH_READ_AHEAD))
            except socket.timeout:
                x = None
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    x = None
                elif getattr(self, _PK + "closed"):
                    raise EOFError() from e
                else:
                    raise
            if x is None:
                if getattr(self, _PK + "closed"):
                    raise EOFError()
                if check_rekey and not out and getattr(self, _PK + "need_rekey"):
                    raise NeedRekeyException()
                self._check_keepalive()
                continue
            if not x:
                raise EOFError()
            if len(x) > n:
                setattr(self, _PK + "remainder", x[n:])
                x = x[:n]
            out += x
            n -= len(x)
        return out


class _Wire:
    """Sends SFTP requests as SSH channel data with the least Python work
    and copying per byte (AES-GCM: encrypted here).

    Why: paramiko sends channel data 32 KiB at a time (the server's packet
    size), and each of those packets goes through Channel._send, a Message,
    Transport._send_user_message and Packetizer.send_message: about eight
    copies of every byte, a Python call chain and one syscall per 32 KiB.
    Profiled here (256 MiB, 2 streams) that chain was most of the client's
    CPU. Here a request is staged in a reused plaintext buffer laid out as
    SSH packets (room for each packet's header before its data and for its
    padding after): a large file's bytes are read by one preadv straight
    into those slots. Then the channel window is reserved for as many
    packets as it allows, each is encrypted in place with
    AESGCM.encrypt_into into one output buffer, and the lot is written with
    one sendall. Each byte is read from the file into the buffer, encrypted,
    and handed to the kernel: nothing else.

    It follows paramiko's own rules (Channel._wait_for_send_window for the
    window and max packet: a short window makes a short packet, as there;
    Transport._send_user_message's wait during key re-exchange;
    Packetizer.send_message's padding, IV counter, sequence numbers and
    rekey trigger), using their private state. available() checks that
    state is there (paramiko 3.x-5.x have it); for another cipher, with
    compression, or when packet dumps are on, each packet goes through
    Packetizer.send_message instead.
    """

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.transport = chan.get_transport()
        self.pk = self.transport.packetizer
        self.chanid = chan.remote_chanid
        self.packet_data = chan.out_max_packet_size - 64  # paramiko's limit per packet
        self._stride = _HEAD + self.packet_data + _MAX_PAD
        self._plain = bytearray(0)
        self._out = bytearray(0)
        self._regions: list[int] = []  # data bytes staged in each packet slot

    @staticmethod
    def available(chan: paramiko.Channel) -> bool:
        """True when the paramiko internals used here are all present."""
        t = chan.get_transport()
        pk = getattr(t, "packetizer", None)
        return (
            pk is not None
            and all(hasattr(pk, _PK + name) for name in _PK_FIELDS)
            and all(hasattr(pk, a) for a in ("write_all", "_trigger_rekey", "REKEY_BYTES", "REKEY_PACKETS"))
            and all(hasattr(t, a) for a in ("clear_to_send", "clear_to_send_lock", "clear_to_send_timeout", "active"))
            and all(hasattr(chan, a) for a in ("lock", "_wait_for_send_window", "out_window_size", "remote_chanid",
                                               "out_max_packet_size", "closed"))
        )

    def fast(self) -> bool:
        """The negotiated cipher is AES-GCM and nothing else touches packets."""
        pk = self.pk
        return bool(
            getattr(pk, _PK + "aead_out")
            and getattr(pk, _PK + "compress_engine_out") is None
            and not getattr(pk, _PK + "dump_packets")
            and hasattr(getattr(pk, _PK + "block_engine_out"), "encrypt_into")
        )

    # -- staging: the request's bytes in packet slots -------------------------
    def _stage(self, total: int) -> list[memoryview]:
        """Slots for `total` channel bytes, full packets first; returns a view
        of each slot's data area."""
        count = max(1, -(-total // self.packet_data))
        need = count * self._stride
        if len(self._plain) < need:
            self._plain = bytearray(need)
        self._regions = [min(self.packet_data, total - i * self.packet_data) for i in range(count)]
        view = memoryview(self._plain)
        return [view[i * self._stride + _HEAD:i * self._stride + _HEAD + n] for i, n in enumerate(self._regions)]

    def load_file(self, fd: int, offset: int, n: int, head_len: int) -> int:
        """Stage a request of `head_len` header bytes (put_head) followed by
        `n` bytes of the file at `offset`, read straight into the slots.
        Returns the bytes read (fewer: the file is shorter). OSError: the
        local file could not be read."""
        slots = self._stage(head_len + n)
        slots[0] = slots[0][head_len:]
        return os.preadv(fd, [v for v in slots if len(v)], offset)

    def put_head(self, head: bytes) -> None:
        """The request header in front of what load_file staged."""
        self._plain[_HEAD:_HEAD + len(head)] = head

    def send(self, head: bytes, data) -> None:
        """Send one request: `head` then `data` (bytes-like), as channel data."""
        data = memoryview(data)
        h = len(head)
        slots = self._stage(h + len(data))
        pos = -h
        for v in slots:  # copy into the slots: the only copy this path makes
            k = len(v)
            if pos < 0:
                v[:h] = head
                v[h:] = data[:k - h]
            else:
                v[:] = data[pos:pos + k]
            pos += k
        self.flush()

    # -- sending what is staged ----------------------------------------------
    def flush(self) -> None:
        """Send every staged byte, as many packets at a time as the window allows."""
        spot = (0, 0)  # (slot, bytes of it already sent)
        while spot[0] < len(self._regions):
            pieces, spot = self._reserve(spot)
            self._gate()
            try:
                with getattr(self.pk, _PK + "write_lock"):
                    if self.fast():
                        self._seal_and_write(pieces)
                    else:
                        self._send_each(pieces)
            finally:
                self.transport.clear_to_send_lock.release()

    def _reserve(self, spot: tuple[int, int]) -> tuple[list[tuple[int, int, int]], tuple[int, int]]:
        """Channel window for the next packets: (slot, start, end) pieces of
        staged data, and where the next reservation starts. Waits (paramiko's
        timeout) for the first piece only; a short window gives a short piece."""
        chan = self.chan
        slot, done = spot
        pieces: list[tuple[int, int, int]] = []
        with chan.lock:
            while slot < len(self._regions) and (not pieces or chan.out_window_size > 0):
                if chan.closed:
                    raise EOFError("SSH channel closed")
                got = chan._wait_for_send_window(self._regions[slot] - done)
                if got <= 0:
                    raise EOFError("SSH channel closed")
                pieces.append((slot, done, done + got))
                done += got
                if done == self._regions[slot]:
                    slot, done = slot + 1, 0
        return pieces, (slot, done)

    def _gate(self) -> None:
        """Transport._send_user_message's wait: no user data during key
        re-exchange. Returns holding transport.clear_to_send_lock."""
        t = self.transport
        start = time.monotonic()
        while True:
            t.clear_to_send.wait(0.1)
            if not t.active:
                raise EOFError("SSH connection closed")
            t.clear_to_send_lock.acquire()
            if t.clear_to_send.is_set():
                return
            t.clear_to_send_lock.release()
            if time.monotonic() > start + t.clear_to_send_timeout:
                raise paramiko.SSHException("Key-exchange timed out waiting for key negotiation")

    def _send_each(self, pieces: list[tuple[int, int, int]]) -> None:
        """Another cipher: each packet through paramiko's Packetizer."""
        view = memoryview(self._plain)
        for slot, start, end in pieces:
            at = slot * self._stride + _HEAD
            payload = struct.pack(">BII", _MSG_CHANNEL_DATA, self.chanid, end - start)
            self.pk.send_message(Message(payload + bytes(view[at + start:at + end])))

    def _seal_and_write(self, pieces: list[tuple[int, int, int]]) -> None:
        """Packetizer.send_message for AES-GCM, for several packets at once.

        A piece's plaintext is built around its data where it lies: its
        10-byte header goes just before it (over header room, or over bytes
        of the same slot already sealed), its padding just after it (over
        padding room, or over bytes still to send, saved and put back)."""
        pk, pre = self.pk, _PK
        encrypt = getattr(pk, pre + "block_engine_out").encrypt_into
        bsize = getattr(pk, pre + "block_size_out")
        iv = getattr(pk, pre + "iv_out")
        fixed, counter = iv[:4], int.from_bytes(iv[4:], "big")
        need = sum(end - start for _slot, start, end in pieces) + len(pieces) * (4 + _HEAD + _MAX_PAD + _GCM_TAG)
        if len(self._out) < need:
            self._out = bytearray(need)
        out, plain, chanid = self._out, self._plain, self.chanid
        ov, pv = memoryview(out), memoryview(plain)
        noise = os.urandom(_MAX_PAD)
        pack_into = struct.pack_into
        o = 0
        for slot, start, end in pieces:
            n = end - start
            padding = 3 + bsize - ((n + _HEAD + 3) % bsize)
            length = _HEAD + n + padding  # the packet length field
            first = slot * self._stride + start  # where this packet's plaintext begins
            tail = first + _HEAD + n
            kept = bytes(pv[tail:tail + padding]) if end < self._regions[slot] else None
            pack_into(">BBII", plain, first, padding, _MSG_CHANNEL_DATA, chanid, n)
            pv[tail:tail + padding] = noise[:padding]
            pack_into(">I", out, o, length)
            encrypt(fixed + counter.to_bytes(8, "big"), pv[first:first + length], ov[o:o + 4],
                    ov[o + 4:o + 4 + length + _GCM_TAG])
            if kept is not None:
                pv[tail:tail + padding] = kept
            counter += 1
            o += 4 + length + _GCM_TAG
        k = len(pieces)
        seq = getattr(pk, pre + "sequence_number_out")
        if seq + k > 0xFFFFFFFF and not pk._initial_kex_done:
            raise paramiko.SSHException("Sequence number rolled over during initial kex!")
        setattr(pk, pre + "iv_out", fixed + counter.to_bytes(8, "big"))
        setattr(pk, pre + "sequence_number_out", (seq + k) & 0xFFFFFFFF)
        pk.write_all(ov[:o])
        sent_bytes = getattr(pk, pre + "sent_bytes") + o
        sent_packets = getattr(pk, pre + "sent_packets") + k
        setattr(pk, pre + "sent_bytes", sent_bytes)
        setattr(pk, pre + "sent_packets", sent_packets)
        if (sent_packets >= pk.REKEY_PACKETS or sent_bytes >= pk.REKEY_BYTES) and not getattr(pk, pre + "need_rekey"):
            setattr(pk, pre + "received_bytes_overflow", 0)
            setattr(pk, pre + "received_packets_overflow", 0)
            pk._trigger_rekey()


#: the permission bits a target file may get: never setuid, setgid or sticky.
#: A 4755 program in the source must not become a setuid program of the
#: server's account (or of root, when the daemon or the server runs as root).
MODE_MASK = 0o777


def _attrs(mode: int | None = None, mtime_ns: int | None = None) -> SFTPAttributes:
    """The attributes every SETSTAT/FSETSTAT of ours carries (the only
    requests that send a file's mode: OPEN and MKDIR send none of the source's)."""
    a = SFTPAttributes()
    if mode is not None:
        a.st_mode = mode & MODE_MASK
    if mtime_ns is not None:
        # SFTPv3 stores whole seconds in an unsigned 32-bit field.
        secs = min(max(mtime_ns // 1_000_000_000, 0), _MAX_U32)
        a.st_atime = a.st_mtime = secs
    return a


@dataclass
class _PathState:
    """What LSTAT found along a remote path, level by level below the root
    (SFTPCon._inspect). Nothing was followed: a link is seen as a link."""

    levels: list[str]  # the folders below the root down to the path's folder, top first
    missing: int  # index of the first missing level (len(levels): all there)
    blocker: str | None  # the first level that is not a real folder: a link or a file
    link: bool  # ...and it is a symbolic link
    leaves: list[SFTPAttributes | None]  # lstat of each path asked for (None: missing, or a level is not a folder)


@dataclass
class _Session:
    """One SSH connection with one SFTP channel, used by one thread at a time."""

    client: paramiko.SSHClient
    sftp: _SFTP
    write_size: int
    posix_rename: bool
    check_file: bool

    def alive(self) -> bool:
        t = self.client.get_transport()
        return t is not None and t.is_active() and not self.sftp.sock.closed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()
        with contextlib.suppress(Exception):
            self.client.close()


class _Pool:
    """At most `size` sessions; a thread borrows one, returns it or drops it."""

    def __init__(self, factory: Callable[[], _Session], size: int) -> None:
        self._factory = factory
        self._size = size
        self._idle: list[_Session] = []
        self._count = 0
        self._cond = threading.Condition()
        self._closed = False

    def acquire(self) -> _Session:
        while True:
            stale: _Session | None = None
            with self._cond:
                while not self._idle and self._count >= self._size and not self._closed:
                    self._cond.wait()
                if self._closed:
                    raise TransientError("connection closed")
                if self._idle:
                    s = self._idle.pop()  # the most recently used: warmest
                    if s.alive():
                        return s
                    self._count -= 1
                    stale = s
                else:
                    self._count += 1
                    break
            if stale is not None:
                stale.close()
        try:
            return self._factory()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def try_acquire(self) -> _Session | None:
        """A session without waiting (an idle one, or a new one if there is
        room), else None: for helpers that must never hold up other workers."""
        stale: list[_Session] = []
        found: _Session | None = None
        create = False
        with self._cond:
            while self._idle and not self._closed:
                s = self._idle.pop()
                if s.alive():
                    found = s
                    break
                self._count -= 1
                stale.append(s)
            if found is None and not self._closed and self._count < self._size:
                self._count += 1
                create = True
        for s in stale:
            s.close()
        if found is not None or not create:
            return found
        try:
            return self._factory()
        except Exception:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            return None

    def release(self, s: _Session, broken: bool) -> None:
        """Return a session; a broken one is closed, and so are the idle ones:
        they most likely share its fate (same network path), and finding that
        out one timeout at a time would delay the reconnection."""
        drop: list[_Session] = []
        with self._cond:
            if not broken and not self._closed:
                self._idle.append(s)
            else:
                drop.append(s)
                if broken:
                    drop += self._idle
                    self._idle = []
                self._count -= len(drop)
            self._cond.notify_all()
        for d in drop:
            d.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for s in idle:
            s.close()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False


class _FileShrank(Exception):
    """The local file holds fewer bytes than its size said."""


class _LocalError(Exception):
    """Carries an error of the local file through the remote error mapping."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.exc = exc


def _read_local(fh, n: int) -> bytes:
    try:
        return fh.read(n)
    except OSError as exc:
        raise _LocalError(exc) from exc


_TRANSIENT_STATUS = {SFTP_NO_CONNECTION, SFTP_CONNECTION_LOST}


def _status_error(exc: SFTPStatus, what: str) -> XConError:
    """Turn an SFTP status into the contract's error kinds, with a plain message."""
    text = f" ({exc.text})" if exc.text else ""
    if exc.code == SFTP_NO_SUCH_FILE:
        return RemoteNotFound(f"{what}: no such file or folder on the server{text}")
    if exc.code == SFTP_PERMISSION_DENIED:
        return PermanentError(f"{what}: permission denied by the server{text}")
    if exc.code == SFTP_BAD_MESSAGE:
        return PermanentError(f"{what}: the server refused the request or the name (too long or invalid?){text}")
    if exc.code == SFTP_OP_UNSUPPORTED:
        return PermanentError(f"{what}: the server does not support this operation{text}")
    if exc.code in _TRANSIENT_STATUS:
        return TransientError(f"{what}: the server lost its connection{text}")
    # SSH_FX_FAILURE: OpenSSH says only "Failure" for ENOSPC, EISDIR, EEXIST,
    # ENOTEMPTY, EDQUOT... Callers add what they can find out (_diagnose).
    return PermanentError(f"{what}: the server reported a failure{text}")


def _map_error(exc: BaseException, what: str) -> BaseException:
    """Any exception out of a remote call -> the contract's error kinds."""
    if isinstance(exc, (XConError, _LocalError)):
        return exc.exc if isinstance(exc, _LocalError) else exc
    if isinstance(exc, SFTPStatus):
        return _status_error(exc, what)
    if isinstance(exc, paramiko.AuthenticationException):
        return PermanentError(f"{what}: login refused by the server ({exc})")
    if isinstance(exc, (paramiko.SSHException, EOFError, SFTPError, OSError, struct.error)):
        kind = type(exc).__name__
        return TransientError(f"{what}: connection lost or timed out ({kind}: {exc})")
    return exc


class _StartOver(TransientError):
    """A finished upload failed its check: drop the temp file and resume state."""


def _session_ok(exc: BaseException) -> bool:
    """True when the server answered (or we stopped on purpose): the session
    is still in step and can go back to the pool. Anything else (socket error,
    timeout, EOF, protocol confusion) drops it."""
    return isinstance(exc, (SFTPStatus, XConError, _LocalError))


# --------------------------------------------------------------------------
# the connection
# --------------------------------------------------------------------------
@dataclass
class _Upload:
    """Where one send stands (for resume, progress and cleanup)."""

    rel: str
    target: bytes
    tmp: bytes
    tmp_rel: str
    size: int
    resumable: bool
    offset: int = 0  # bytes already in the temp file when this attempt began
    sent: int = 0  # bytes written by this attempt
    handle: bytes | None = None
    opened: bool = False  # the temp file was opened (made) by this attempt: ours to remove


class _Parts:
    """The shared bookkeeping of one parallel upload (all methods thread-safe).

    Every writer thread passes its acknowledged bytes to ctx.report itself
    (through a _Meter, in batches): progress follows every part as it
    travels, and the bandwidth limit, fed by the same call, makes the thread
    that sent the bytes sleep (the helpers too, not only the caller).
    ctx.resume is touched only by the thread that called send() (tick): the
    engine's state database (SQLite connections are bound to their thread)
    need not be thread-safe.
    """

    def __init__(self, f: LocalFile, ctx: TransferContext, part: int) -> None:
        self.rel, self.size, self.ctx, self.part = f.rel, f.size, ctx, part
        self.count = max(1, -(-f.size // part))
        self.done: set[int] = set()
        self.state: dict = {}
        self.acked = 0  # bytes the server confirmed (progress)
        self.sent = 0  # bytes written by this attempt
        self.abort = threading.Event()
        self.owner = threading.current_thread()
        self._next = 0
        self._lock = threading.Lock()
        self._dirty = False

    def bounds(self, idx: int) -> tuple[int, int]:
        return idx * self.part, min((idx + 1) * self.part, self.size)

    def claim(self) -> int | None:
        with self._lock:
            while self._next < self.count and self._next in self.done:
                self._next += 1
            if self._next >= self.count or self.should_stop():
                return None
            self._next += 1
            return self._next - 1

    def should_stop(self) -> bool:
        return self.abort.is_set() or self.ctx.stop.is_set()

    def add(self, acked: int, sent: int) -> None:
        """From any writer thread: count its bytes, report the new total (the
        caller may sleep in the bandwidth limit here)."""
        with self._lock:
            self.acked += acked
            self.sent += sent
            total = self.acked
        if acked:
            self.ctx.report(total, self.size)

    def finish(self, idx: int) -> None:
        with self._lock:
            self.done.add(idx)
            self._dirty = True

    def tick(self) -> None:
        """In the calling thread: save the finished parts in ctx.resume."""
        if threading.current_thread() is not self.owner:
            return
        with self._lock:
            dirty, self._dirty = self._dirty, False
            done = sorted(self.done)
        if dirty:
            self.ctx.resume.save({**self.state, "done": done})

    def save(self) -> None:
        with self._lock:
            self._dirty = True
        self.tick()


class _Meter:
    """One writer thread's bytes on their way to _Parts.add, in batches of
    REPORT_BYTES or REPORT_EVERY seconds, whichever comes first: progress and
    the throttle stay prompt (a slow, throttled link reports every chunk),
    while a fast one takes the shared locks a few hundred times a second at
    most, not once per chunk."""

    def __init__(self, job: _Parts) -> None:
        self.job = job
        self.acked = self.sent = 0
        self.last = time.monotonic()

    def wrote(self, n: int) -> None:
        self.sent += n

    def acked_bytes(self, n: int) -> None:
        self.acked += n
        if self.acked >= REPORT_BYTES or time.monotonic() - self.last >= REPORT_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.acked or self.sent:
            acked, sent, self.acked, self.sent = self.acked, self.sent, 0, 0
            self.job.add(acked, sent)
        self.last = time.monotonic()


class SFTPCon(XCon):
    service = "sftp"
    # SFTPv3 carries mtime in whole seconds.
    abilities = Abilities(
        server_side_move=True, resumable=True, byte_names=True, mode=True, mtime_precision_ns=1_000_000_000
    )

    def __init__(
        self,
        host: str,
        root: str,
        *,
        port: int = 22,
        user: str = "",
        key_file: str = "",
        key_passphrase: str = "",
        password: str = "",
        use_agent: bool = True,
        known_hosts: str = "~/.ssh/known_hosts",
        connections: int = 4,
        keepalive: float = 5.0,
        timeout: float = 15.0,
        write_size: int = WRITE_SIZE,
        resume_min: int = RESUME_MIN,
        parallel_min: int = PARALLEL_MIN,
        streams: int = PARALLEL_STREAMS,
        ciphers: tuple[str, ...] = PREFERRED_CIPHERS,
        fast_wire: bool = True,
    ) -> None:
        self.host, self.port = host, port
        self.user = user or _local_user()
        self.root = _clean_root(root)
        self._prefix = "" if self.root == "." else (self.root if self.root.endswith("/") else self.root + "/")
        self.key_file = os.path.expanduser(key_file) if key_file else ""
        self._passphrase = key_passphrase  # secrets: never in messages or logs
        self._password = password
        self.use_agent = use_agent
        self.known_hosts = os.path.expanduser(known_hosts)
        self.connections = max(1, connections)
        self.keepalive = keepalive
        self.timeout = timeout
        self.write_size = write_size
        self.resume_min = resume_min
        self.parallel_min = parallel_min
        self.streams = max(1, streams)
        self.ciphers = ciphers
        self.fast_wire = fast_wire
        self._pool = _Pool(self._open_session, self.connections)
        self._pkey: paramiko.PKey | None = None
        # rel -> temp file (rel) a failed send may have left behind with no resume
        # state naming it (the connection broke mid-way); see discard()
        self._strays: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<SFTPCon {self.describe()}>"

    def describe(self) -> str:
        return f"sftp:{self.user}@{known_hosts_name(self.host, self.port)}:{self.root}"

    # -- paths -------------------------------------------------------------
    def _abs(self, rel: str) -> str:
        """The remote path of `rel`, guaranteed to stay under the root."""
        if rel == "":
            return self.root
        full = remote_join(self.root, check_rel(rel))
        norm = posixpath.normpath(full)
        if self._prefix:
            ok = norm.startswith(self._prefix) and len(norm) > len(self._prefix)
        else:  # root "." (the login folder): stay relative and below it
            ok = not norm.startswith("/") and norm != ".." and not norm.startswith("../")
            full = norm
        if not ok:
            raise UnsafePath(f"{rel!r} escapes the remote root {self.root!r}")
        return full

    def _rel_of(self, path: str) -> str:
        return path[len(self._prefix):] if self._prefix else path

    @staticmethod
    def _b(path: str) -> bytes:
        return os.fsencode(path)

    # -- sessions ----------------------------------------------------------
    def _load_key(self) -> paramiko.PKey | None:
        if not self.key_file:
            return None
        if self._pkey is None:
            try:
                self._pkey = paramiko.PKey.from_path(self.key_file, password=self._passphrase.encode() or None)
            except FileNotFoundError:
                raise PermanentError(f"key_file {self.key_file!r}: no such file") from None
            except paramiko.PasswordRequiredException:
                raise PermanentError(
                    f"key_file {self.key_file!r} is encrypted: set key_passphrase (or load it into ssh-agent)"
                ) from None
            except (paramiko.SSHException, ValueError, OSError) as exc:
                hint = " (wrong key_passphrase?)" if self._passphrase else ""
                raise PermanentError(f"key_file {self.key_file!r}: cannot load the key{hint}: {type(exc).__name__}") from None
        return self._pkey

    def _transport_factory(self, sock, **kw) -> paramiko.Transport:
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Without it, Nagle's algorithm holds a request written right
            # behind another until the server ACKs that one, which a delayed
            # ACK puts off by up to 40 ms: small files went at 217/s instead of
            # 554/s over loopback (paramiko leaves the option off; OpenSSH and
            # rclone set it).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = paramiko.Transport(sock, **kw)
        if self.fast_wire and _Packetizer.available(t.packetizer):
            t.packetizer.__class__ = _Packetizer
        opts = t.get_security_options()
        first = [c for c in self.ciphers if c in opts.ciphers]
        opts.ciphers = tuple(first + [c for c in opts.ciphers if c not in first])
        return t

    def _open_session(self) -> _Session:
        """Connect, verify the host key, log in, open the SFTP channel."""
        where = f"connect to {self.describe()}"
        pkey = self._load_key()
        client = paramiko.SSHClient()
        try:
            with contextlib.suppress(FileNotFoundError):
                client.load_system_host_keys(self.known_hosts)
        except (OSError, paramiko.SSHException) as exc:
            raise PermanentError(f"known_hosts {self.known_hosts!r}: cannot read it: {exc}") from None
        client.set_missing_host_key_policy(_RejectUnknownHost(self.known_hosts, self.host, self.port))
        # Every step below has its own timeout but one (paramiko waits for the
        # subsystem reply without a limit): a watchdog closes the connection
        # if the whole set-up takes far too long.
        watchdog = threading.Timer(4 * self.timeout + 5, client.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            client.connect(
                self.host,
                self.port,
                username=self.user,
                password=self._password or None,
                pkey=pkey,
                allow_agent=self.use_agent,
                look_for_keys=not (self.key_file or self._password),
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
                channel_timeout=self.timeout,
                transport_factory=self._transport_factory,
            )
            transport = client.get_transport()
            if self.keepalive > 0:
                transport.set_keepalive(max(1, int(self.keepalive)))
            chan = transport.open_session(timeout=self.timeout)
            chan.settimeout(self.timeout)
            chan.invoke_subsystem("sftp")
            sftp = _SFTP(chan)
            if self.fast_wire and _Wire.available(chan):
                sftp.wire = _Wire(chan)
            limits = sftp.limits()
        except BaseException as exc:
            watchdog.cancel()
            client.close()
            if isinstance(exc, paramiko.BadHostKeyException):
                raise _changed_key_error(self.host, self.port, self.known_hosts, exc.key, exc.expected_key) from None
            if isinstance(exc, paramiko.AuthenticationException):
                raise PermanentError(f"{where}: login refused for user {self.user!r} ({exc})") from None
            if isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc):
                raise PermanentError(
                    f"{where}: no key or password to log in with (set key_file, load a key into "
                    f"ssh-agent with use_agent = yes, or set password)"
                ) from None
            if isinstance(exc, socket.gaierror):
                raise TransientError(f"{where}: cannot resolve {self.host!r} ({exc})") from None
            if isinstance(exc, XConError):
                raise
            mapped = _map_error(exc, where)
            if mapped is exc:
                raise
            raise mapped from None
        watchdog.cancel()
        return _Session(
            client=client,
            sftp=sftp,
            write_size=self._write_size(chan, limits.get("max_write") or SAFE_WRITE_SIZE,
                                        sftp.wire is not None and sftp.wire.fast()),
            posix_rename="posix-rename@openssh.com" in sftp.extensions,
            check_file="check-file" in sftp.extensions,
        )

    def _write_size(self, chan: paramiko.Channel, server_max: int, fast: bool) -> int:
        """Data per WRITE: at most what we and the server allow, trimmed so the
        request fills whole SSH channel packets (paramiko sends at most
        max-packet - 64 bytes per packet): 128 KiB would need 4 full packets
        and a 30-byte fifth one; 130,787 bytes need exactly 4."""
        ours = self.write_size if fast else min(self.write_size, PARAMIKO_WRITE_SIZE)
        limit = max(1024, min(ours, server_max))
        per_packet = chan.out_max_packet_size - 64
        whole = (limit + _WRITE_OVERHEAD) // per_packet
        aligned = whole * per_packet - _WRITE_OVERHEAD
        return aligned if whole and aligned >= limit // 2 else limit

    @contextlib.contextmanager
    def _session(self, what: str) -> Iterator[_Session]:
        """Borrow a session; map errors; drop the session if it broke."""
        s = self._pool.acquire()
        broken = False
        try:
            yield s
        except BaseException as exc:
            broken = not _session_ok(exc)
            mapped = _map_error(exc, what)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            self._pool.release(s, broken)

    # -- lifecycle ---------------------------------------------------------
    def connect(self) -> None:
        """Open the first connection now (so a bad key or host key shows at
        once) and make sure the remote root folder exists."""
        self._pool.reopen()
        with self._session(f"connect to {self.describe()}") as s:
            self._make_root(s, f"create remote root {self.root!r}")

    def check(self) -> None:
        with self._session(f"check {self.describe()}") as s:
            try:
                s.sftp.stat(self._b(self.root))
            except SFTPStatus as exc:
                if exc.code != SFTP_NO_SUCH_FILE:  # missing: sends will re-create it
                    raise

    def close(self) -> None:
        self._pool.close()

    # -- folders -----------------------------------------------------------
    def _make_root(self, s: _Session, what: str) -> None:
        """mkdir -p of the root: create each missing level, stopping at the
        first that exists. The root and the folders above it are the
        operator's choice (a link there is theirs and is followed); below the
        root nothing is (_inspect)."""
        missing: list[str] = []
        cur = self.root
        while cur not in ("", "/", "."):
            try:
                st = s.sftp.stat(self._b(cur))
            except SFTPStatus as exc:
                if exc.code != SFTP_NO_SUCH_FILE:
                    raise
                missing.append(cur)
                cur = posixpath.dirname(cur.rstrip("/"))
                continue
            if not statmod.S_ISDIR(st.st_mode or 0):
                raise PermanentError(f"{what}: a file is in the way of folder {cur!r}")
            break
        for d in reversed(missing):
            self._mkdir(s, d, what)

    def _mkdir(self, s: _Session, d: str, what: str) -> None:
        """MKDIR one level (it never follows a link at its own name: EEXIST)."""
        try:
            s.sftp.mkdir(self._b(d), 0o755)
        except SFTPStatus as exc:
            # Another thread may have made it meanwhile (OpenSSH: "Failure").
            st = self._lstat(s, d)
            if st is None:
                raise exc from None
            if statmod.S_ISLNK(st.st_mode or 0):
                raise self._link_error(d, what) from None
            if not statmod.S_ISDIR(st.st_mode or 0):
                raise PermanentError(f"{what}: a file is in the way of folder {d!r}") from None

    # -- links: each level checked with LSTAT, fresh every time, none followed --
    def _levels(self, folder: str) -> list[str]:
        """The folders from just below the root down to `folder`, top first."""
        if folder in (self.root, "", "."):
            return []
        parts = self._rel_of(folder).split("/")
        return [self._prefix + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]

    def _inspect(self, s: _Session, path: str, *siblings: str) -> _PathState:
        """LSTAT every folder between the root and `path`, and `path` itself
        (and `siblings`, names in the same folder), in one round trip.

        Why each level, each time: SFTP resolves a path on the server, and
        every request by path follows a link met on the way. A folder of the
        remote tree replaced by a link (to /etc, to another user's files)
        would lead writes and deletes out of the root; a lexical check cannot
        see it, and a cache of folders found safe goes stale the moment one
        is swapped. A lost race in the instant between this check and the
        request is still possible: SFTPv3 has no openat() and no O_NOFOLLOW
        for parent folders.
        """
        levels = self._levels(posixpath.dirname(path))
        names = [path, *siblings]
        replies = s.sftp.lstat_many([self._b(p) for p in levels + names])
        for i, (level, r) in enumerate(zip(levels, replies)):
            if isinstance(r, SFTPStatus):
                if r.code != SFTP_NO_SUCH_FILE:
                    raise r
                return _PathState(levels, i, None, False, [None] * len(names))
            if not statmod.S_ISDIR(r.st_mode or 0):
                return _PathState(levels, i, level, statmod.S_ISLNK(r.st_mode or 0), [None] * len(names))
        leaves: list[SFTPAttributes | None] = []
        for r in replies[len(levels):]:
            if isinstance(r, SFTPStatus):
                if r.code != SFTP_NO_SUCH_FILE:
                    raise r
                r = None
            leaves.append(r)
        return _PathState(levels, len(levels), None, False, leaves)

    def _link_error(self, level: str, what: str) -> UnsafePath:
        return UnsafePath(
            f"{what}: remote folder {self._rel_of(level)!r} is a symbolic link; skynet never writes or "
            f"deletes through a link on the server. Remove the link there (its target is left alone); "
            f"then the next send, or --retry-failed, makes a real folder in its place"
        )

    def _folder_ready(self, s: _Session, path: str, what: str) -> _PathState:
        """Make sure every folder above `path` (below the root) is a real
        folder, creating the missing ones; returns what _inspect found.

        A link on the way is refused (UnsafePath), not replaced: it may be the
        server administrator's, and deleting it is their decision; a file in
        the way is refused as before."""
        st = self._inspect(s, path)
        if st.blocker is not None:
            if st.link:
                raise self._link_error(st.blocker, what)
            raise PermanentError(f"{what}: a file is in the way of folder {st.blocker!r}")
        for d in st.levels[st.missing:]:
            self._mkdir(s, d, what)
        return st

    def _remove_file(self, s: _Session, path: str, what: str) -> bool:
        """REMOVE `path` (a file or a link, never what a link points to) if
        every folder above it is a real one; False if there was nothing to remove."""
        st = self._inspect(s, path)
        leaf = st.leaves[0]
        if st.link:
            log.warning("sftp: %s: not removing %r: folder %r is a symbolic link", what, self._rel_of(path),
                        self._rel_of(st.blocker or ""))
        if leaf is None or statmod.S_ISDIR(leaf.st_mode or 0):
            return False
        try:
            s.sftp.remove(self._b(path))
        except SFTPStatus as exc:
            if exc.code != SFTP_NO_SUCH_FILE:
                raise
            return False
        return True

    def _lstat(self, s: _Session, path: str) -> SFTPAttributes | None:
        try:
            return s.sftp.lstat(self._b(path))
        except SFTPStatus as exc:
            if exc.code == SFTP_NO_SUCH_FILE:
                return None
            raise

    def _diagnose(self, s: _Session, exc: SFTPStatus, what: str, path: str, need: int = 0) -> BaseException:
        """Explain a bare "Failure" (OpenSSH hides ENOSPC, EISDIR... behind it)."""
        if exc.code != SFTP_FAILURE:
            return _status_error(exc, what)
        with contextlib.suppress(Exception):
            st = self._lstat(s, path)
            if st is not None and statmod.S_ISDIR(st.st_mode or 0):
                return PermanentError(f"{what}: a folder is in the way of the file")
        with contextlib.suppress(Exception):
            free = s.sftp.free_bytes(self._b(posixpath.dirname(path) or "."))
            if free is not None and free < max(need, 1 << 20):
                return PermanentError(f"{what}: no space left on the server ({free} bytes free, {need} needed)")
        return _status_error(exc, what)

    # -- send --------------------------------------------------------------
    def send(self, f: LocalFile, ctx: TransferContext) -> SendResult:
        target = self._abs(f.rel)
        folder, name = posixpath.split(target)
        tmp = posixpath.join(folder, temp_name(name))
        what = f"send {f.rel!r}"
        # Unbuffered: reads go straight to the kernel, sized to what is left.
        src = open_source(f, buffering=0)  # FileNotFoundError, SourceChanged...: the caller's (local side)
        with src:
            up = _Upload(
                rel=f.rel,
                target=self._b(target),
                tmp=self._b(tmp),
                tmp_rel=self._rel_of(tmp),
                size=f.size,
                resumable=f.size >= self.resume_min,
            )
            with self._session(what) as s:
                try:
                    if up.resumable and f.size >= self.parallel_min and min(self.connections, self.streams) > 1:
                        result = self._send_parallel(s, f, ctx, src, up, what)
                    else:
                        result = self._send(s, f, ctx, src, up, what)
                except BaseException as exc:
                    self._after_failure(s, exc, up, ctx)
                    if isinstance(exc, SFTPStatus):
                        raise self._diagnose(s, exc, what, target, f.size - up.offset) from exc
                    raise
        self._strays.pop(f.rel, None)  # the temp file became the target
        return result

    def _after_failure(self, s: _Session, exc: BaseException, up: _Upload, ctx: TransferContext) -> None:
        """Leave no temp file behind, unless the upload can resume from it."""
        in_step = _session_ok(exc)
        if up.resumable and isinstance(exc, TransientError) and not isinstance(exc, _StartOver):
            return  # stopped: keep the temp file and ctx.resume for the next attempt
        if up.resumable and not in_step:
            return  # connection lost: the same, and the next attempt continues
        if up.resumable:
            ctx.resume.clear()
        if not up.opened:
            # Refused before the OPEN (a link or a file on the way...): nothing
            # of this attempt's to remove, and a REMOVE by path could follow that link.
            return
        if in_step and s.alive():
            with contextlib.suppress(Exception):
                if up.handle is not None:
                    s.sftp._request(CMD_CLOSE, up.handle)
                s.sftp.remove(up.tmp)
                return
        # The temp file may be left, and nothing names it: remember it for discard()
        # (a retry of the send overwrites it; a daemon restart's cleanup removes it).
        self._strays[up.rel] = up.tmp_rel

    def _open_tmp(self, s: _Session, up: _Upload, flags: int, old: SFTPAttributes | None, what: str) -> bytes:
        """OPEN the temp file; a handle.

        A fresh one (CREATE) is opened with EXCL, after removing what `old`
        (its lstat) says is there: a file a failed attempt left, or a link
        someone planted at the name. OPEN follows a link; with EXCL
        (O_CREAT|O_EXCL on the server) an existing name, a link above all,
        fails instead, so no byte is ever written through one."""
        if flags & SFTP_FLAG_CREATE and old is not None:
            if statmod.S_ISDIR(old.st_mode or 0):
                raise PermanentError(f"{what}: a folder is in the way of the temporary file {up.tmp_rel!r}")
            try:
                s.sftp.remove(up.tmp)  # a link goes, never what it points to
            except SFTPStatus as exc:
                if exc.code != SFTP_NO_SUCH_FILE:
                    raise
        try:
            handle = s.sftp.open_handle(up.tmp, flags)
            up.opened = True
            return handle
        except SFTPStatus as exc:
            if not flags & SFTP_FLAG_EXCL or exc.code != SFTP_FAILURE or self._lstat(s, os.fsdecode(up.tmp)) is None:
                raise
        # Something took the name since the check: not ours to write into.
        raise TransientError(f"{what}: {up.tmp_rel!r} appeared on the server while sending (not followed); "
                             f"it will be tried again")

    def _send(self, s: _Session, f: LocalFile, ctx: TransferContext, src, up: _Upload, what: str) -> SendResult:
        sftp = s.sftp
        tmp_st = self._folder_ready(s, os.fsdecode(up.tmp), what).leaves[0]
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
        if up.resumable:
            flags |= SFTP_FLAG_READ  # to re-read the tail when verifying
            up.offset = self._resume_offset(s, f, ctx, src, up, tmp_st)
            if up.offset:
                flags = SFTP_FLAG_WRITE | SFTP_FLAG_READ  # no CREATE: never write after a hole
            else:
                ctx.resume.save(self._identity(f, up))
        up.handle = self._open_tmp(s, up, flags, None if up.offset else tmp_st, what)

        pending: deque[tuple[int, int]] = deque()  # (request, end offset) not yet acknowledged
        pos = up.offset
        src.seek(pos)
        ctx.start_at(pos, f.size)
        stopped = False
        held: tuple[int, bytes] | None = None  # the last chunk read: it travels with the trailer
        while True:
            if ctx.stop.is_set():
                stopped = True
                break
            # Ask for what is left (+1 to see the end) rather than a full write
            # size: a 256 KiB buffer per 4 KiB file costs an mmap and page faults.
            chunk = _read_local(src, min(s.write_size, max(f.size - pos, 0) + 1))
            if not chunk:
                break
            if held is not None:
                hpos, data = held
                pending.append((sftp.send_write(up.handle, hpos, data), hpos + len(data)))
            held = (pos, chunk)
            pos += len(chunk)
            up.sent += len(chunk)
            # Collect acknowledgements as they come: early errors, true progress.
            while pending and (len(pending) > MAX_INFLIGHT or sftp.reply_ready()):
                num, end = pending.popleft()
                sftp.wait(num)
                ctx.report(end, f.size)

        # The last write, metadata, the checks and CLOSE leave together, in one
        # SSH packet for a small file: three requests for the cost of one.
        trailer: dict[str, tuple[int, tuple]] = {}
        if held is not None:
            trailer["write"] = (CMD_WRITE, (up.handle, int64(held[0]), held[1]))
        if not stopped:
            trailer["setstat"] = (CMD_FSETSTAT, (up.handle, _attrs(f.mode, f.mtime_ns)))
            if up.resumable:
                trailer["fstat"] = (CMD_FSTAT, (up.handle,))
                if pos:
                    n = min(VERIFY_TAIL, pos)
                    trailer["tail"] = (CMD_READ, (up.handle, int64(pos - n), n))
        trailer["close"] = (CMD_CLOSE, (up.handle,))
        ids = dict(zip(trailer, sftp.send_batch(list(trailer.values()))))
        if "write" in ids:
            pending.append((ids["write"], pos))
        setstat, stat_req, tail_req, close = (ids.get(k) for k in ("setstat", "fstat", "tail", "close"))
        # Read every reply in order, even after an error, so the channel stays in step.
        waiting = [num for num, _end in pending] + [r for r in (setstat, stat_req, tail_req, close) if r]
        replies: dict[int, tuple[int, Message] | BaseException] = {}
        for num in waiting:
            try:
                replies[num] = sftp.wait(num)
            except (SFTPStatus, EOFError) as exc:
                replies[num] = exc
        up.handle = None
        for num in [num for num, _end in pending] + [close]:  # lost bytes: fatal
            if isinstance(replies[num], BaseException):
                raise replies[num]
        if stopped:
            raise TransientError(f"{what}: stopped at {pos} of {f.size} bytes" + (" (resumable)" if up.resumable else ""))
        ctx.report(pos, f.size)
        if isinstance(replies[setstat], SFTPStatus):
            # Some servers refuse FSETSTAT on a handle; SETSTAT on the path then.
            sftp._request(CMD_SETSTAT, up.tmp, _attrs(f.mode, f.mtime_ns))

        if up.resumable:
            got = [replies.get(stat_req), replies.get(tail_req)]
            got = [None if isinstance(r, BaseException) else r for r in got]
            self._verify(s, f, src, up, pos, got[0], got[1], what)
        self._replace(s, up.tmp, up.target, what)
        if up.resumable:
            ctx.resume.clear()
        return SendResult(size=pos, etag=None, bytes_sent=up.sent)

    def _send_parallel(self, s: _Session, f: LocalFile, ctx: TransferContext, src, up: _Upload, what: str) -> SendResult:
        """A large file over several connections: each writes whole PART_SIZE
        parts of the same temp file through its own handle. Parts are claimed
        one at a time, so a connection that is faster does more; helpers take
        only sessions that are free now (never waiting on other workers).
        Finished parts are saved in ctx.resume; a later attempt sends the rest."""
        sftp = s.sftp
        tmp_st = self._folder_ready(s, os.fsdecode(up.tmp), what).leaves[0]
        job = _Parts(f, ctx, PART_SIZE)
        ident = {**self._identity(f, up), "kind": "sftp-parts", "part": PART_SIZE}
        job.done = self._resume_parts(s, ctx, src, up, ident, job, tmp_st)
        job.acked = sum(end - start for start, end in map(job.bounds, job.done))
        fresh = not job.done
        job.state = ident
        job.save()
        ctx.start_at(job.acked, f.size)
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_READ | (SFTP_FLAG_CREATE | SFTP_FLAG_EXCL if fresh else 0)
        up.handle = self._open_tmp(s, up, flags, tmp_st if fresh else None, what)
        up.offset = job.acked

        results: dict[int, BaseException | None] = {}

        def helper(key: int) -> None:
            hs = self._pool.try_acquire()  # only a session free now: never wait for one
            if hs is None:
                return
            try:
                handle = hs.sftp.open_handle(up.tmp, SFTP_FLAG_WRITE)
                try:
                    self._write_parts(hs, handle, src, job)
                finally:
                    hs.sftp._request(CMD_CLOSE, handle)
                results[key] = None
            except BaseException as exc:  # reported by the calling thread
                results[key] = exc
                job.abort.set()
            finally:
                exc = results.get(key)
                self._pool.release(hs, broken=exc is not None and not _session_ok(exc))

        helpers = [threading.Thread(target=helper, args=(key,), name=f"sftp-part-{key}", daemon=True)
                   for key in range(min(self.connections, self.streams, job.count) - 1)]
        try:
            for t in helpers:
                t.start()
            try:
                self._write_parts(s, up.handle, src, job)
                while any(t.is_alive() for t in helpers):  # keep saving their finished parts
                    for t in helpers:
                        t.join(0.1)
                    job.tick()
            except BaseException:
                job.abort.set()  # helpers stop at their next write
                raise
            finally:
                for t in helpers:
                    if t.ident is not None:
                        t.join()
        except BaseException as exc:
            if _session_ok(exc) and s.alive():
                with contextlib.suppress(Exception):
                    sftp._request(CMD_CLOSE, up.handle)
                up.handle = None
            raise
        job.abort.clear()
        up.sent = job.sent
        errors = [e for e in results.values() if e is not None]
        if errors or ctx.stop.is_set() or len(job.done) < job.count:
            with contextlib.suppress(Exception):
                sftp._request(CMD_CLOSE, up.handle)
            up.handle = None
            job.save()
            status = [e for e in errors if isinstance(e, (SFTPStatus, XConError, _LocalError))]
            if status:
                raise status[0]
            if errors:
                raise TransientError(f"{what}: a parallel connection failed ({type(errors[0]).__name__}: "
                                     f"{errors[0]}); {len(job.done)} of {job.count} parts kept")
            raise TransientError(f"{what}: stopped with {len(job.done)} of {job.count} parts sent (resumable)")

        size = f.size
        n = min(VERIFY_TAIL, size)
        trailer = [
            (CMD_FSETSTAT, (up.handle, _attrs(f.mode, f.mtime_ns))),
            (CMD_FSTAT, (up.handle,)),
            (CMD_READ, (up.handle, int64(size - n), n)),
            (CMD_CLOSE, (up.handle,)),
        ]
        ids = sftp.send_batch(trailer)
        replies: list[tuple[int, Message] | BaseException] = []
        for num in ids:
            try:
                replies.append(sftp.wait(num))
            except (SFTPStatus, EOFError) as exc:
                replies.append(exc)
        up.handle = None
        if isinstance(replies[3], BaseException):
            raise replies[3]
        if isinstance(replies[0], SFTPStatus):
            sftp._request(CMD_SETSTAT, up.tmp, _attrs(f.mode, f.mtime_ns))
        got = [None if isinstance(r, BaseException) else r for r in replies[1:3]]
        self._verify(s, f, src, up, size, got[0], got[1], what)
        ctx.report(size, size)
        self._replace(s, up.tmp, up.target, what)
        ctx.resume.clear()
        return SendResult(size=size, etag=None, bytes_sent=job.sent)

    def _write_parts(self, s: _Session, handle: bytes, src, job: "_Parts") -> None:
        """Claim parts and write them, pipelined, until none is left."""
        meter = _Meter(job)
        try:
            while True:
                idx = job.claim()
                if idx is None or not self._write_part(s, handle, src, job, idx, meter):
                    return
                job.finish(idx)
                job.tick()
        finally:
            meter.flush()

    def _write_part(self, s: _Session, handle: bytes, src, job: "_Parts", idx: int, meter: _Meter) -> bool:
        """Write part `idx` and wait for every acknowledgement; False when
        stopped first (the part stays unfinished: sent again next time)."""
        sftp = s.sftp
        fd = src.fileno()
        start, end = job.bounds(idx)
        pos = start
        pending: deque[tuple[int, int]] = deque()
        while pos < end:
            if job.should_stop():
                return False
            n = min(s.write_size, end - pos)
            try:
                pending.append((sftp.send_write_from(handle, pos, fd, n), n))
            except _FileShrank:
                raise TransientError(f"send {job.rel!r}: the local file shrank during the upload") from None
            pos += n
            meter.wrote(n)
            while pending and (len(pending) > MAX_INFLIGHT or sftp.reply_ready()):
                num, n = pending.popleft()
                sftp.wait(num)
                meter.acked_bytes(n)
            job.tick()
        while pending:
            num, n = pending.popleft()
            sftp.wait(num)
            meter.acked_bytes(n)
        meter.flush()  # the part is whole on the server: show it before it is saved
        return True

    def _resume_parts(self, s: _Session, ctx: TransferContext, src, up: _Upload, ident: dict, job: "_Parts",
                      st: SFTPAttributes | None) -> set[int]:
        """Parts a previous attempt finished, if its state matches this file
        and its temp file (`st`, its lstat) looks right; else an empty set (start over)."""
        state = ctx.resume.load() or {}
        done = state.get("done")
        if not isinstance(done, list) or {k: v for k, v in state.items() if k != "done"} != ident:
            return set()
        done_set = {i for i in done if isinstance(i, int) and 0 <= i < job.count}
        if not done_set or st is None or not statmod.S_ISREG(st.st_mode or 0):
            return set()
        _start, end = job.bounds(max(done_set))
        if (st.st_size or 0) < end:
            return set()
        n = min(VERIFY_TAIL, end)
        with contextlib.suppress(SFTPStatus, EOFError):
            with s.sftp.open(up.tmp, "rb") as fh:
                fh.seek(end - n)
                if fh.read(n) == os.pread(src.fileno(), n, end - n):
                    log.info("resuming %s with %d of %d parts", job.rel, len(done_set), job.count)
                    return done_set
        return set()

    @staticmethod
    def _identity(f: LocalFile, up: _Upload) -> dict:
        return {"kind": "sftp-temp", "tmp": up.tmp_rel, "size": f.size, "mtime_ns": f.mtime_ns, "ino": f.ino}

    def _resume_offset(self, s: _Session, f: LocalFile, ctx: TransferContext, src, up: _Upload,
                       st: SFTPAttributes | None) -> int:
        """Bytes of a previous attempt to keep, or 0 to start over. `st`: the
        temp file's lstat (a link there is never resumed: not S_ISREG)."""
        state = ctx.resume.load()
        if not state or state != self._identity(f, up):
            return 0
        if st is None or not statmod.S_ISREG(st.st_mode or 0) or not st.st_size or st.st_size > f.size:
            return 0
        have = st.st_size
        # The temp file's last bytes must be the local file's: else start over.
        n = min(VERIFY_TAIL, have)
        with contextlib.suppress(SFTPStatus, EOFError):
            with s.sftp.open(up.tmp, "rb") as fh:
                fh.seek(have - n)
                remote = fh.read(n)
            if remote == os.pread(src.fileno(), n, have - n):
                log.info("resuming %s at %d of %d bytes", f.rel, have, f.size)
                return have
        return 0

    def _verify(self, s: _Session, f: LocalFile, src, up: _Upload, size: int, stat_reply, tail_reply, what: str) -> None:
        """Check a large upload before it replaces the target: size, then the
        server's own hash when it offers one, else the last block re-read.
        The replies come from requests pipelined before CLOSE; if the server
        refused them, the same is asked by path."""
        if stat_reply is not None and stat_reply[0] == CMD_ATTRS:
            got = SFTPAttributes._from_msg(stat_reply[1]).st_size
        else:
            got = s.sftp.stat(up.tmp).st_size
        n = min(VERIFY_TAIL, size)
        problem = f"size {got} != {size}" if got != size else ""
        if not problem and s.check_file and size:
            problem = self._check_file_hash(s, src, up, size)
        elif not problem and n:
            if tail_reply is not None and tail_reply[0] == CMD_DATA:
                tail = tail_reply[1].get_binary()
            else:
                with s.sftp.open(up.tmp, "rb") as fh:
                    fh.seek(size - n)
                    tail = fh.read(n)
            if tail != os.pread(src.fileno(), n, size - n):
                problem = "last block differs"
        if problem:
            raise _StartOver(f"{what}: upload check failed ({problem}); it will start over")

    def _check_file_hash(self, s: _Session, src, up: _Upload, size: int) -> str:
        """The "check-file" extension: the server hashes the file itself."""
        chan = s.sftp.sock
        try:
            handle = s.sftp.open_handle(up.tmp, SFTP_FLAG_READ)
            # The server reads the whole file before it answers: allow for that.
            chan.settimeout(self.timeout + size / HASH_RATE)
            try:
                msg = s.sftp.extended("check-file", handle, "sha256,sha1,md5", int64(0), int64(0), 0)
            finally:
                chan.settimeout(self.timeout)
                s.sftp._request(CMD_CLOSE, handle)
        except SFTPStatus:
            return ""  # advertised but refused: fall back to the size check only
        if msg is None:
            return ""
        msg.get_string()  # "check-file"
        algo = msg.get_text()
        digest = msg.get_remainder()
        if algo not in ("sha256", "sha1", "md5"):
            return ""
        h = hashlib.new(algo)
        done = 0
        while done < size:
            block = os.pread(src.fileno(), min(1 << 20, size - done), done)
            if not block:
                break
            h.update(block)
            done += len(block)
        return "" if h.digest() == digest else f"{algo} differs"

    def _replace(self, s: _Session, tmp: bytes, target: bytes, what: str) -> None:
        """Rename `tmp` over `target`.

        With posix-rename@openssh.com (OpenSSH) this is one atomic rename(2).
        Without it, SFTPv3's RENAME refuses an existing target, so: try RENAME;
        if the target exists, move it aside to a derived name, RENAME tmp into
        place, then remove the aside copy (and put it back if the second rename
        fails). Readers may then find no file for a moment, never a partial one.
        """
        if s.posix_rename:
            s.sftp.posix_rename(tmp, target)
            return
        try:
            s.sftp.rename(tmp, target)
            return
        except SFTPStatus as exc:
            st = self._lstat(s, os.fsdecode(target))
            if st is None:
                raise
            if statmod.S_ISDIR(st.st_mode or 0):
                raise PermanentError(f"{what}: a folder is in the way") from exc
        folder, name = posixpath.split(os.fsdecode(target))
        aside = self._b(posixpath.join(folder, ASIDE_PREFIX + temp_name(name)[len(TMP_PREFIX):]))
        with contextlib.suppress(SFTPStatus):
            s.sftp.remove(aside)
        s.sftp.rename(target, aside)
        try:
            s.sftp.rename(tmp, target)
        except BaseException:
            with contextlib.suppress(Exception):
                s.sftp.rename(aside, target)
            raise
        with contextlib.suppress(SFTPStatus):
            s.sftp.remove(aside)

    # -- delete / move -----------------------------------------------------
    def _scandir(self, s: _Session, folder: str) -> list[tuple[bytes, SFTPAttributes]]:
        """The entries of remote folder `folder` (an absolute path) that are in it: a
        name the server makes up ("../x", "/etc/x", "a/../../x") is dropped and logged,
        never removed or walked into (within_listing)."""
        entries = s.sftp.scandir(self._b(folder))
        return list(within_listing(entries, folder, lambda e: posixpath.join(folder, os.fsdecode(e[0])),
                                   self.describe(), paths=True))

    def _rmtree(self, s: _Session, top: str) -> None:
        """Remove a folder and everything in it, with SFTP requests only.

        `top` was just found a real folder (LSTAT) by the caller; every folder
        below it is LSTATed again right before it is read: a listing's
        attributes may follow links on some servers, and a folder may have
        been swapped for a link since. A link is removed as an entry (REMOVE
        unlinks the link), never entered."""
        stack = [(top, False)]
        while stack:
            folder, emptied = stack.pop()
            if emptied:
                s.sftp.rmdir(self._b(folder))
                continue
            if folder != top:
                st = self._lstat(s, folder)
                if st is None:
                    continue
                if not statmod.S_ISDIR(st.st_mode or 0):
                    with contextlib.suppress(SFTPStatus):
                        s.sftp.remove(self._b(folder))
                    continue
            stack.append((folder, True))
            try:
                entries = self._scandir(s, folder)
            except SFTPStatus as exc:
                if exc.code == SFTP_NO_SUCH_FILE:
                    stack.pop()
                    continue
                raise
            for name, attr in entries:
                path = posixpath.join(folder, os.fsdecode(name))
                if statmod.S_ISDIR(attr.st_mode or 0):
                    stack.append((path, False))
                else:
                    try:
                        s.sftp.remove(self._b(path))
                    except SFTPStatus as exc:
                        if exc.code != SFTP_NO_SUCH_FILE:
                            raise

    def delete(self, rel: str) -> None:
        target = self._abs(check_rel(rel))
        folder, name = posixpath.split(target)
        what = f"delete {rel!r}"
        tmp = posixpath.join(folder, temp_name(name))
        with self._session(what) as s:
            found = self._inspect(s, target, tmp)
            if found.link:  # nothing of our tree is there: never delete through the link
                log.warning("sftp: %s: nothing removed: remote folder %r is a symbolic link", what,
                            self._rel_of(found.blocker or ""))
            st, tmp_st = found.leaves
            if tmp_st is not None:  # an upload of this file cut short left its temp file
                with contextlib.suppress(SFTPStatus):
                    s.sftp.remove(self._b(tmp))
            if st is None:
                return
            try:
                if statmod.S_ISDIR(st.st_mode or 0):
                    self._rmtree(s, target)
                else:
                    s.sftp.remove(self._b(target))
            except SFTPStatus as exc:
                if exc.code != SFTP_NO_SUCH_FILE:
                    raise

    def move(self, src: str, dest: str) -> None:
        a, b = self._abs(check_rel(src)), self._abs(check_rel(dest))
        what = f"move {src!r} -> {dest!r}"
        with self._session(what) as s:
            st = self._inspect(s, a).leaves[0]  # None too if a folder above it is a link
            if st is None:
                raise RemoteNotFound(f"{what}: source not on the server")
            if a == b:
                return
            dst = self._folder_ready(s, b, what).leaves[0]
            src_dir = statmod.S_ISDIR(st.st_mode or 0)
            dst_dir = dst is not None and statmod.S_ISDIR(dst.st_mode or 0)
            if src_dir and dst_dir:
                # rename(2) refuses a non-empty folder: the moved folder replaces
                # it, as it did on the local side.
                self._rmtree(s, b)
            elif src_dir and dst is not None:
                # OpenSSH would report ENOTDIR as "no such file": say what it is.
                raise PermanentError(f"{what}: a file is in the way of the folder")
            try:
                self._replace(s, self._b(a), self._b(b), what)
            except SFTPStatus as exc:
                raise self._diagnose(s, exc, what, b) from exc

    # -- stat / list / cleanup ---------------------------------------------
    def stat(self, rel: str) -> RemoteEntry | None:
        path = self._abs(check_rel(rel))
        with self._session(f"stat {rel!r}") as s:
            st = self._inspect(s, path).leaves[0]  # one round trip, as one LSTAT
        if st is None or not statmod.S_ISREG(st.st_mode or 0):
            return None
        return _entry(rel, st)

    def _walk(self, rel: str, what: str) -> Iterator[tuple[str, bytes, SFTPAttributes]]:
        """(folder rel, name, attrs) of everything under `rel`, one folder at a
        time: a session is held only while one folder is read."""
        if rel:  # a link on the way (or at rel itself) is not part of the tree: nothing to list
            with self._session(what) as s:
                top = self._inspect(s, self._abs(rel)).leaves[0]
            if top is None or not statmod.S_ISDIR(top.st_mode or 0):
                return
        stack = [rel]
        while stack:
            prefix = stack.pop()
            with self._session(what) as s:
                try:
                    entries = self._scandir(s, self._abs(prefix))
                except SFTPStatus as exc:
                    if exc.code != SFTP_NO_SUCH_FILE:  # missing, or a file (ENOTDIR)
                        raise
                    entries = []
            for name, attr in entries:
                if statmod.S_ISDIR(attr.st_mode or 0):
                    stack.append(_join_rel(prefix, os.fsdecode(name)))
                yield prefix, name, attr

    def list(self, rel: str = "") -> Iterator[RemoteEntry]:
        if rel:
            check_rel(rel)
        for prefix, name, attr in self._walk(rel, f"list {rel!r}"):
            if statmod.S_ISREG(attr.st_mode or 0) and not name.startswith(_OURS):
                yield _entry(_join_rel(prefix, os.fsdecode(name)), attr)

    def cleanup(self, keep: list[dict]) -> None:
        """Remove our temporary files that no resume state still needs.

        This walks the whole remote tree (one listing request per folder).
        """
        wanted = {k.get("tmp") for k in keep if isinstance(k, dict)}
        for prefix, name, attr in self._walk("", "cleanup"):
            if name.startswith(_OURS) and not statmod.S_ISDIR(attr.st_mode or 0):
                rel = _join_rel(prefix, os.fsdecode(name))
                if rel in wanted:
                    continue
                with self._session(f"cleanup {rel!r}") as s:
                    with contextlib.suppress(SFTPStatus):
                        self._remove_file(s, self._abs(rel), "cleanup")

    def discard(self, rel: str, state: dict | None) -> None:
        """Remove the temp file `state` names, and the one a failed send of `rel`
        could not remove (nothing at all in the usual case: no request is made)."""
        tmps = {self._strays.get(rel), state.get("tmp") if state else None}
        for tmp in sorted(t for t in tmps if isinstance(t, str)):
            with self._session(f"discard {tmp!r}") as s:
                try:
                    self._remove_file(s, self._abs(tmp), f"discard {tmp!r}")
                except SFTPStatus as exc:  # gone already, or not ours to remove: not this action's failure
                    if exc.code != SFTP_NO_SUCH_FILE:
                        log.warning("sftp: cannot remove temporary file %r: %s", tmp, exc)
        self._strays.pop(rel, None)

    def leftovers(self) -> list[str]:
        """Temporary files left on the remote (tests check there are none)."""
        found = []
        for prefix, name, attr in self._walk("", "leftovers"):
            if name.startswith(_OURS):
                found.append(_join_rel(prefix, os.fsdecode(name)))
        return found


def _join_rel(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _entry(rel: str, st: SFTPAttributes) -> RemoteEntry:
    mtime = None if st.st_mtime is None else int(st.st_mtime) * 1_000_000_000
    mode = None if st.st_mode is None else statmod.S_IMODE(st.st_mode)
    return RemoteEntry(rel, st.st_size or 0, mtime, mode)


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def _clean_root(root: str) -> str:
    root = (root or "").strip()
    if not root:
        raise ValueError("target: the remote folder is empty")
    if "\x00" in root:
        raise ValueError("target: contains a NUL byte")
    norm = posixpath.normpath(root)
    if ".." in root.split("/"):
        raise ValueError(f"target: {root!r} must not contain '..'")
    return norm


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------
def _bool(key: str, value: str) -> bool:
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _number(key: str, value: str, kind: type, low: float, high: float):
    try:
        n = kind(value.strip())
    except ValueError:
        raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if not low <= n <= high:
        raise ValueError(f"{key}: must be between {low} and {high}, got {n}")
    return n


def build(service: dict[str, str], target: str) -> SFTPCon:
    """An SFTPCon from an [sftp] service section and a mapping's target folder.

    Raises ValueError("key: problem") for anything that cannot work.
    """
    unknown = sorted(set(service) - set(KEYS) - _GENERIC_KEYS)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key for an sftp service (known: {', '.join(KEYS)})")
    cfg = {k: (service.get(k) if service.get(k) is not None else d) for k, (d, _doc) in KEYS.items()}
    host = cfg["host"].strip()
    if not host:
        raise ValueError("host: required")
    if any(c.isspace() for c in host) or host.startswith("-"):
        raise ValueError(f"host: not a host name: {host!r}")
    key_file = cfg["key_file"].strip()
    if key_file and not os.path.isfile(os.path.expanduser(key_file)):
        raise ValueError(f"key_file: no such file: {key_file!r}")
    if cfg["key_passphrase"] and not key_file:
        raise ValueError("key_passphrase: set only with key_file")
    known = cfg["known_hosts"].strip()
    if not known:
        raise ValueError("known_hosts: required (host keys are always verified)")
    return SFTPCon(
        host,
        target,
        port=_number("port", cfg["port"], int, 1, 65535),
        user=cfg["user"].strip(),
        key_file=key_file,
        key_passphrase=cfg["key_passphrase"],
        password=cfg["password"],
        use_agent=_bool("use_agent", cfg["use_agent"]),
        known_hosts=known,
        connections=_number("connections", cfg["connections"], int, 1, 64),
        keepalive=_number("keepalive", cfg["keepalive"], float, 0, 3600),
        timeout=_number("timeout", cfg["timeout"], float, 0.5, 3600),
    )
