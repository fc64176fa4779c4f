"""Host keys: known_hosts lookups, fingerprints, and the trust flow of the setup wizard.

A server's key is checked against known_hosts before anything else is sent: an
unknown key is refused with its fingerprint and the command that trusts it; a
changed key (or a key of another type than the one trusted) is refused as changed.
The wizard fetches the key (fetch_host_key), shows its fingerprint, and writes it
only when the user says so (trust_host_key, an atomic 0600 write).
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import hmac
import logging
import os
from typing import Any, Awaitable, TypeVar

import asyncssh

from connections.contract.xcon import PermanentError, TransientError
from skynet.state.atomicfile import write_atomic

log = logging.getLogger("skynet.sftp")
T = TypeVar("T")


def fingerprint(key: asyncssh.SSHKey) -> str:
    """OpenSSH's fingerprint of a public key: "SHA256:" + unpadded base64."""
    return key.get_fingerprint("sha256")


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts names a server: "host" on port 22, else "[host]:port"."""
    return host if port == 22 else f"[{host}]:{port}"


def key_type(key: asyncssh.SSHKey) -> str:
    """The key's type as known_hosts writes it ("ssh-ed25519", "ssh-rsa"...)."""
    return key.get_algorithm()


def known_hosts_line(host: str, port: int, key: asyncssh.SSHKey) -> str:
    b64 = base64.b64encode(key.public_data).decode()
    return f"{known_hosts_name(host, port)} {key_type(key)} {b64}\n"


#: known_hosts names an RSA key "ssh-rsa"; the handshake offers it under these
#: signature algorithms (SHA-2 first: OpenSSH >= 8.8 refuses "ssh-rsa" signatures)
_KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def trusted_keys(known_hosts_path: str, host: str, port: int) -> dict[str, asyncssh.SSHKey]:
    """The keys known_hosts trusts for host:port, by key type ({} if none, or no file).

    Read fresh each time (asyncssh's public known_hosts parser: plain and hashed names)."""
    path = os.path.expanduser(known_hosts_path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return {}
    text = data.decode("utf-8", "surrogateescape")
    known = asyncssh.import_known_hosts(text)
    keys = known.match(host, "", port if port != 22 else None)[0]
    found: dict[str, Any] = {key_type(k): k for k in keys}
    for k in _unreadable_keys(text, known_hosts_name(host, port)):
        found.setdefault(k.get_algorithm(), k)
    return found


class _UnreadableKey:
    """A known_hosts key that asyncssh cannot load (it skips such lines):
    still a trusted key of its type for the host, so that any key the server
    offers is "changed", never "unknown" (a man in the middle must not get
    a yes because the line was damaged)."""

    def __init__(self, algorithm: str, blob: bytes) -> None:
        self.algorithm, self.public_data = algorithm, blob

    def get_algorithm(self) -> str:
        return self.algorithm

    def get_fingerprint(self, hash_name: str = "sha256") -> str:
        digest = hashlib.sha256(self.public_data).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _names_match(field: str, name: str) -> bool:
    """A known_hosts host field names `name`: listed plainly, or hashed (|1|salt|hash)."""
    for entry in field.split(","):
        if entry.startswith("|1|"):
            with contextlib.suppress(ValueError, IndexError):
                salt, digest = (base64.b64decode(x) for x in entry[3:].split("|", 1))
                if hmac.new(salt, name.encode(), "sha1").digest() == digest:
                    return True
        elif entry == name:
            return True
    return False


def _unreadable_keys(text: str, name: str) -> list[_UnreadableKey]:
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith(("#", "@")) or not _names_match(fields[0], name):
            continue
        try:
            asyncssh.import_public_key(f"{fields[1]} {fields[2]}")
        except (asyncssh.KeyImportError, ValueError):
            with contextlib.suppress(ValueError):
                out.append(_UnreadableKey(fields[1], base64.b64decode(fields[2])))
    return out


def key_status(key: asyncssh.SSHKey, trusted: dict[str, asyncssh.SSHKey]) -> str:
    """"known", "unknown" or "changed" for the key a server offers.

    Why "changed" for a key of ANOTHER TYPE than the trusted ones: the server
    we trust can still prove itself with the type we know (the handshake asks
    for it first, see fetch_host_key); one that offers only another type is,
    as far as we can tell, another server. Calling that "unknown" invites a
    yes to exactly the key a man in the middle would present.
    """
    if not trusted:
        return "unknown"
    known = trusted.get(key_type(key))
    return "known" if known is not None and known.public_data == key.public_data else "changed"


#: host key algorithms asked for after the preferred ones (OpenSSH's default order)
_HOST_KEY_ALGS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                  "rsa-sha2-512", "rsa-sha2-256")


def prefer_algs(types: list[str] | tuple[str, ...]) -> list[str]:
    """server_host_key_algs asking for these key types first (as ssh does for
    the types known_hosts holds), then the usual ones: a server we trust can
    prove itself with the type we know, and one that has only another type
    still shows its key (to be called "changed", see key_status)."""
    first = [a for name in types for a in _KEY_ALGORITHMS.get(name, (name,)) if a.isascii() and "," not in a]
    return list(dict.fromkeys([a for a in first if a in _HOST_KEY_ALGS] + list(_HOST_KEY_ALGS)))


def fetch_host_key(host: str, port: int = 22, timeout: float = 15.0,
                   prefer: list[str] | tuple[str, ...] = ()) -> asyncssh.SSHKey:
    """Connect only far enough to read the server's host key (no login).

    For the wizard, which shows fingerprint(key) and asks before trusting it.
    `prefer`: key types to ask for first (those known_hosts holds for the host),
    so the wizard sees the key the daemon's own connection would see.
    """
    async def get() -> asyncssh.SSHKey | None:
        return await asyncio.wait_for(
            asyncssh.get_server_host_key(host, port, server_host_key_algs=prefer_algs(prefer), config=[]),
            timeout)

    try:
        key = _run_alone(get())
    except (OSError, asyncssh.Error, asyncio.TimeoutError, EOFError, ValueError) as exc:
        raise TransientError(f"no SSH server answered at {host}:{port}: {type(exc).__name__}: {exc}") from exc
    if key is None:
        raise TransientError(f"the SSH server at {host}:{port} showed no host key")
    return key


def _run_alone(coro: Awaitable[T]) -> T:
    """Run a coroutine on a loop of its own, in a thread of its own (the
    caller may be inside an event loop already)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sftp-hostkey") as ex:
        return ex.submit(asyncio.run, coro).result()


def trust_host_key(known_hosts_path: str, host: str, port: int, key: asyncssh.SSHKey) -> str:
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
                if len(fields) >= 2 and name in fields[0].split(",") and fields[1] == key_type(key):
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


def unknown_key_error(host: str, port: int, known_hosts: str, key: asyncssh.SSHKey) -> UnknownHostKey:
    return UnknownHostKey(
        f"host key of {known_hosts_name(host, port)} is not trusted yet: {key_type(key)} {fingerprint(key)}. "
        f"Check that fingerprint with the server's administrator, then trust it by adding this "
        f"line to {known_hosts}:\n{known_hosts_line(host, port, key)}"
        f"(or: ssh-keyscan -p {port} {host} >> {known_hosts} and compare "
        f"`ssh-keygen -lf {known_hosts}`), or re-run the setup wizard."
    )


def changed_key_error(host: str, port: int, known_hosts: str, got, expected) -> HostKeyChanged:
    name = known_hosts_name(host, port)
    return HostKeyChanged(
        f"HOST KEY CHANGED for {name}! The server offered {key_type(got)} {fingerprint(got)} but "
        f"{known_hosts} trusts {key_type(expected)} {fingerprint(expected)}. Someone may be "
        f"intercepting the connection (possible man-in-the-middle attack), or the server was "
        f"reinstalled. Not connecting. If the change is expected, remove the old key "
        f"(ssh-keygen -R '{name}' -f {known_hosts}) and trust the new one (setup wizard)."
    )


class HostKeySeen(asyncssh.SSHClient):
    """asyncssh calls validate_host_public_key for a key that the known_hosts
    we pass does not hold: we note it (for the message) and refuse it."""

    def __init__(self) -> None:
        self.refused: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.refused = key
        return False
