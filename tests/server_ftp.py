"""A real FTP server for migration sources: pyftpdlib on 127.0.0.1.

Registered as `servers.get("ftp")`. Runs in a process of its own (this file's
__main__), stopped by the PID we started: anonymous read-only access to
`root`, one user with a password (same folder), passive ports on 127.0.0.1,
REST (resume), SIZE and MDTM on. Its log (`log`) names every RETR with the
REST offset before it, so a test can tell what was fetched again.
"""
from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.servers import put_file, register, start_on_free_port, stop_process, wait_answering

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0


@dataclass
class FtpServer:
    port: int
    root: Path
    user: str
    password: str
    log: Path
    pid: int = 0
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    def url(self, path: str, *, login: bool = False) -> str:
        who = f"{self.user}:{self.password}@" if login else ""
        return f"ftp://{who}127.0.0.1:{self.port}/{path.lstrip('/')}"

    def put(self, path: str, data: bytes) -> None:
        put_file(self.root, path, data)

    def commands(self) -> list[str]:
        """Every command the server logged (e.g. 'REST 1048576', 'RETR a.bin')."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if " <- " in line:
                out.append(line.split(" <- ", 1)[1].strip())
        return out

    def retrieved(self, path: str) -> list[int]:
        """Bytes the server sent for each RETR of `path` (logged when the transfer ended)."""
        want = f" RETR {self.root / path.lstrip('/')} "
        return [int(line.rsplit("bytes=", 1)[1].split()[0]) for line in self.log.read_text(errors="replace").splitlines()
                if want in line and "bytes=" in line]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self._proc, sig)


@register("ftp")
@contextlib.contextmanager
def ftp_server(workdir: Path) -> Iterator[FtpServer]:
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "root"
    root.mkdir(exist_ok=True)
    user, password = "mover", secrets.token_hex(8)
    log = workdir / "ftp.log"

    def start(port: int) -> FtpServer:
        low = 30000 + (port % 20000)
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "tests.server_ftp", str(root), str(port), user, password,
                                     f"{low}-{low + 40}"], cwd=str(REPO), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
        started = FtpServer(port=port, root=root, user=user, password=password, log=log, pid=proc.pid, _proc=proc)
        try:
            wait_answering(proc, port, "the ftp server", b"", b"220", START_TIMEOUT,
                           lambda: log.read_text(errors="replace")[-2000:])
        except RuntimeError:
            started.stop()
            raise
        return started

    srv = start_on_free_port(start, "the ftp server")
    try:
        yield srv
    finally:
        srv.stop()


def _serve(root: str, port: int, user: str, password: str, passive: str) -> None:
    import logging

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    logging.basicConfig(level=logging.DEBUG, format="%(message)s", stream=sys.stdout)
    auth = DummyAuthorizer()
    auth.add_user(user, password, root, perm="elr")
    auth.add_anonymous(root)
    handler = FTPHandler
    handler.authorizer = auth
    handler.masquerade_address = "127.0.0.1"
    lo, hi = passive.split("-")
    handler.passive_ports = range(int(lo), int(hi))
    handler.permit_foreign_addresses = False
    server = FTPServer(("127.0.0.1", port), handler)
    signal.signal(signal.SIGTERM, lambda *_: server.close_all())
    server.serve_forever()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
