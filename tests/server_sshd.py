"""A real OpenSSH sshd on 127.0.0.1 for the SFTP tests and benchmarks.

Registered as `servers.get("sftp")`. It follows ../shared/TEST-SERVERS.md:
key-only auth, `internal-sftp`, its own config, host key and client key on a
free high port, started in the foreground and stopped by the PID we started.

When the tests run as root, sshd runs as a dedicated unprivileged user
(created once with useradd): only then do permission bits mean something on
the remote (root ignores a folder's 0500), as they do on a real server. Its
files live in a fresh folder under /tmp owned by that user, because pytest's
own temporary tree is private to root.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.debian import ensure_package
from tests.servers import machine_lock, register, start_on_free_port

SSHD = "/usr/sbin/sshd"
TEST_USER = "skynet-sftp"  # used only when the tests run as root


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def ensure_sshd() -> None:
    """Install Debian's openssh-server if sshd is missing (we are root on CI)."""
    ensure_package("openssh-server", SSHD)


def ensure_user() -> pwd.struct_passwd:
    """The account sshd runs as: ourselves, or a dedicated one when we are root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    with machine_lock("useradd"):  # pytest-xdist workers: one useradd of this name
        try:
            return pwd.getpwnam(TEST_USER)
        except KeyError:
            # '*' (not '!'): no password login, but not a locked account either.
            # A real shell, so that rclone's remote md5sum (its default hash
            # check, measured by bench/sftp_peers.py) works as on a real server.
            _run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh",
                  "--password", "*", TEST_USER])
            return pwd.getpwnam(TEST_USER)


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    """Wait until sshd answers on `port` with its SSH banner, not merely until the port
    accepts: the kernel accepts a connection before sshd serves it (a listener still
    loading, or one that died after binding), and then a test's first session after a
    restart would be the one to find out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        if _banner(port).startswith(b"SSH-"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not answer on {port}:\n{log.read_text(errors='replace')}")


def _banner(port: int) -> bytes:
    """The first bytes the server on `port` sends (b"" if none within 2 s or no connection).
    A socket that connected to itself (Linux lets a client's ephemeral port equal a port
    nothing listens on) reads nothing back, as it sent nothing: not taken for sshd."""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.settimeout(2.0)
            return s.recv(64)
    except OSError:
        return b""


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (the per-connection sshd processes it forked)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as fh:
                kids = [int(k) for k in fh.read().split()]
        except OSError:
            kids = []
        found += kids
        todo += kids
    return found


@dataclass
class SSHServer:
    """What a test needs to reach the server (and to look behind its back), and
    stop()/start() to take it away and bring it back (same port, host key and files)."""

    host: str
    port: int
    user: str
    key_file: str  # the client's private key (no passphrase)
    known_hosts: str  # trusts this server's host key for host:port
    root: str  # remote folder under which tests make their own folders
    dir: str  # the server's own folder (config, keys, log)
    pid: int
    host_key_file: str
    uid: int = -1
    gid: int = -1
    log: str = ""
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Take the whole server away: the listener we started and every session it
        forked get `sig` (SIGTERM: a clean stop; SIGKILL: a crash), so clients lose
        their connections and new ones are refused until start()."""
        if self._proc is not None:
            stop_sshd(self._proc, sig)

    def start(self) -> None:
        """Start a new sshd on the same config (port, host key, keys) and files, as
        after a server reboot; the files under root are untouched. Retried for a
        while: a client's socket may hold our port for a moment while we were down."""
        assert not self.running, "already running"
        deadline = time.monotonic() + 15
        while True:
            proc = _launch_sshd(Path(self.dir), Path(self.log), self.uid, self.gid)
            try:
                wait_port(self.port, proc, Path(self.log))
            except RuntimeError:
                stop_sshd(proc)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            self._proc, self.pid = proc, proc.pid
            return

    def fresh_folder(self, prefix: str = "t") -> str:
        """A new, empty remote folder owned by the login user; returns its path.

        The server runs on this machine without chroot, so the remote path is
        also the local path (tests may inspect files directly).
        """
        path = os.path.join(self.root, f"{prefix}-{uuid.uuid4().hex[:10]}")
        os.mkdir(path, 0o755)
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)
        return path

    def service(self, **extra: str) -> dict[str, str]:
        """The [sftp] service keys (see connections.sftp.con.KEYS) for this server."""
        cfg = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "key_file": self.key_file,
            "known_hosts": self.known_hosts,
            "use_agent": "no",
        }
        cfg.update(extra)
        return cfg

    def known_hosts_line(self, port: int | None = None) -> str:
        """The known_hosts line trusting this server's key at `port` (a proxy's)."""
        key = Path(self.host_key_file + ".pub").read_text().split()
        return f"[{self.host}]:{port or self.port} {key[0]} {key[1]}\n"

    def sessions(self) -> list[int]:
        """PIDs of the per-connection sshd processes alive now."""
        return _children(self.pid)


def _sshd_config(d: Path, port: int) -> str:
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {d}/host_ed25519",
        f"PidFile {d}/sshd.pid",
        f"AuthorizedKeysFile {d}/authorized_keys",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        # The pool and the benchmarks open many connections at once.
        "MaxStartups 200:30:400",
        "MaxSessions 64",
        "LogLevel INFO",
        "Subsystem sftp internal-sftp",
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def run_sshd(logdir: Path) -> Iterator[SSHServer]:
    """Start sshd, yield an SSHServer, then stop it (and its sessions) by PID."""
    ensure_sshd()
    account = ensure_user()
    is_root = os.geteuid() == 0
    logdir.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="skynet-sshd-"))
    proc = None
    srv: SSHServer | None = None
    try:
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "skynet-test-host", "-f", str(d / "host_ed25519")])
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "skynet-test-client", "-f", str(d / "client_ed25519")])
        shutil.copy(d / "client_ed25519.pub", d / "authorized_keys")
        root = d / "remote"
        root.mkdir()
        if is_root:
            # sshd refuses a host key its own user cannot read; the client
            # key stays root's (the tests read it).
            for p in (d, root, d / "host_ed25519", d / "authorized_keys"):
                os.chown(p, account.pw_uid, account.pw_gid)
            os.chmod(d, 0o755)
        log = logdir / "sshd.log"

        def start(port: int) -> tuple[int, subprocess.Popen]:
            (d / "sshd_config").write_text(_sshd_config(d, port))
            if is_root:
                os.chown(d / "sshd_config", account.pw_uid, account.pw_gid)
            started = _launch_sshd(d, log, account.pw_uid, account.pw_gid)
            try:
                wait_port(port, started, log)
            except RuntimeError:
                stop_sshd(started)
                raise
            return port, started

        port, proc = start_on_free_port(start, "sshd")
        pub = (d / "host_ed25519.pub").read_text().split()
        known = d / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        os.chmod(known, 0o600)
        srv = SSHServer(
            host="127.0.0.1",
            port=port,
            user=account.pw_name,
            key_file=str(d / "client_ed25519"),
            known_hosts=str(known),
            root=str(root),
            dir=str(d),
            pid=proc.pid,
            host_key_file=str(d / "host_ed25519"),
            uid=account.pw_uid,
            gid=account.pw_gid,
            log=str(log),
            _proc=proc,
        )
        yield srv
    finally:
        if srv is not None:
            proc = srv._proc  # a test may have restarted it
        if proc is not None:
            stop_sshd(proc)
        shutil.rmtree(d, ignore_errors=True)


def _launch_sshd(d: Path, log: Path, uid: int, gid: int) -> subprocess.Popen:
    """sshd in the foreground on d/sshd_config; as `uid` when we are root (see the module doc)."""
    kw = {}
    if os.geteuid() == 0:
        kw = dict(user=uid, group=gid, extra_groups=[])
    with open(log, "ab") as logfh:
        return subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
            stdin=subprocess.DEVNULL, stdout=logfh, stderr=logfh, cwd=str(d), **kw,
        )


def stop_sshd(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop the listener we started, then the session processes it forked."""
    kids = _children(proc.pid)
    for pid in [proc.pid] + kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a test may have frozen one
            os.kill(pid, sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    for pid in kids:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)


@register("sftp")
def sftp_server(workdir: Path) -> Iterator[SSHServer]:
    return run_sshd(workdir)
