"""A real PostgreSQL 15 on 127.0.0.1 for the notifier and dashboard tests.

Registered as `servers.get("postgres")`; follows ../shared/TEST-SERVERS.md:
Debian's /usr/lib/postgresql/15/bin (installed with apt-get if missing),
initdb with --auth=trust, started with pg_ctl on a free port with its socket in
its own folder, stopped with `pg_ctl stop -m fast` and then checked by the PID
it started. initdb and postgres refuse to run as root, so when the tests run as
root they run as a dedicated system user (created once with useradd) in a
folder under /tmp that user owns (pytest's own temporary tree is root-only).

The server object can be stopped and started again on the same data folder and
port: the notifier's outage test needs exactly that.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.debian import PackageUnavailable, ensure_package
from tests.servers import free_port, machine_lock, register, start_on_free_port  # noqa: F401 (tests import free_port from here)

PG_BIN = "/usr/lib/postgresql/15/bin"
PG_USER = "skynet-pg"  # used only when the tests run as root


class PostgresUnavailable(PackageUnavailable):
    """PostgreSQL 15 is not installed and cannot be installed here."""


def ensure_postgres() -> None:
    """Install Debian's postgresql-15 if its binaries are missing (root only)."""
    try:
        ensure_package("postgresql-15", f"{PG_BIN}/postgres")
    except PackageUnavailable as exc:
        raise PostgresUnavailable(str(exc)) from None


def ensure_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    with machine_lock("useradd"):  # pytest-xdist workers: one useradd of this name
        try:
            return pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                           check=True, capture_output=True)
            return pwd.getpwnam(PG_USER)


@dataclass
class PGServer:
    """One PostgreSQL cluster: connection details plus stop()/start()."""

    dir: str  # cluster folder: data/, the socket, the log
    port: int
    account: pwd.struct_passwd
    host: str = "127.0.0.1"
    user: str = "postgres"
    pid: int | None = None

    @property
    def data(self) -> str:
        return os.path.join(self.dir, "data")

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "postgres.log")

    @property
    def dsn(self) -> str:
        """URL of the default database."""
        return self.url("postgres")

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def _as_user(self, cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        kw = {}
        if os.geteuid() == 0:
            kw = dict(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.dir}
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir, env=env, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stdout}{r.stderr}\n{self.log_tail()}")
        return r

    def log_tail(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def initdb(self) -> None:
        self._as_user([f"{PG_BIN}/initdb", "-D", self.data, "-U", self.user, "--auth=trust", "--no-sync",
                       "-E", "UTF8", "--locale=C.UTF-8"])

    def start(self) -> None:
        """Start (again) on the same data folder and port."""
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=400 "
                "-c shared_buffers=64MB")
        self._as_user([f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", opts, "start"])
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.pid = int(f.readline())

    def stop(self) -> None:
        """Fast shutdown (clients are disconnected), then make sure the PID we
        started is gone."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        self._as_user([f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop"], check=False)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    @property
    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def connect(self, dbname: str = "postgres"):
        import psycopg

        conn = psycopg.connect(self.url(dbname), connect_timeout=5, autocommit=True)
        return conn

    def fresh_db(self, prefix: str = "t") -> str:
        """Create an empty database; return its URL (isolates tests from each other)."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE DATABASE " + name)  # an identifier we made, not a value
        finally:
            conn.close()
        return self.url(name)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@contextlib.contextmanager
def run_postgres(logdir: Path | None = None) -> Iterator[PGServer]:
    """Init and start a cluster, yield it, stop it and delete its files."""
    ensure_postgres()
    account = ensure_user()
    d = tempfile.mkdtemp(prefix="skynet-pg-")
    if os.geteuid() == 0:
        os.chown(d, account.pw_uid, account.pw_gid)
    os.chmod(d, 0o755)
    srv = PGServer(dir=d, port=0, account=account)

    def start(port: int) -> PGServer:
        srv.port = port
        srv.start()  # pg_ctl -w: RuntimeError when postgres cannot bind the port
        return srv

    try:
        srv.initdb()
        start_on_free_port(start, "postgres")
        yield srv
    finally:
        srv.stop()
        if logdir is not None:
            with contextlib.suppress(OSError):
                logdir.mkdir(parents=True, exist_ok=True)
                shutil.copy(srv.log, logdir / "postgres.log")
        shutil.rmtree(d, ignore_errors=True)


@register("postgres")
def postgres_server(workdir: Path) -> Iterator[PGServer]:
    return run_postgres(workdir)


def pg_or_skip(servers) -> PGServer:
    """The session's PostgreSQL, or pytest.skip with the reason if it truly
    cannot be installed here (never a silent pass)."""
    import pytest

    try:
        return servers.get("postgres")
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL 15 unavailable: {exc}")
        raise  # not reached
