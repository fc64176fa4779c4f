"""The state folder's layout, its lock and the identity of the daemon that holds it.

Only this module knows the names of the files in a state folder; every other
part (the daemon, `--status`, `--failed`, the dashboard's local mode, the
notifier's spool) asks it. So the layout can change in one place, and a tool
that reads the folder while a daemon runs finds exactly what the daemon wrote.

    <state_dir>/<mapping>.db            the mapping's state database (skynet.state.db)
    <state_dir>/<mapping>.db-wal, -shm  its SQLite WAL and shared memory
    <state_dir>/<mapping>.db.corrupt-*  a damaged database, moved aside
    <state_dir>/<mapping>.lock          flock()ed by the daemon; holds its PID
    <state_dir>/<mapping>.seen          "a state database was made here once"
    <state_dir>/<mapping>.placement.sqlite  which destination holds each file of a
                                        mapping with `placement = most-free` (skynet.state.placement)
    <state_dir>/status.json             the running daemon's live status
    <state_dir>/notifier-spool.sqlite   notifications waiting for PostgreSQL
    <state_dir>/notifier.seq            the notifier's sequence high-water mark
    <state_dir>/gateway/                `skynet serve`'s staging folder (unless [gateway] staging_dir):
        uploads/<id>.part, <id>.json    an upload's bytes so far and its durable record (offset...)
        uploads/<id>.<target>.resume    resume state of its delivery to one destination
    <state_dir>/jobs/<job>.sqlite       a job's item table (skynet.jobs.table), one file per job
    <state_dir>/jobs/<job>.lock         flock()ed by its `skynet job run`; holds its PID
    <state_dir>/jobs/<job>.notifier/    that run's notifier spool and sequence (as above)

SQL on these databases lives in skynet.state.db, skynet.state.index, skynet.state.queue_store
and skynet.state.spool (tests/test_state_owner.py guards it).
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import time

DB_SUFFIX = ".db"
PLACEMENT_SUFFIX = ".placement.sqlite"
STATUS_FILE = "status.json"
SPOOL_FILE = "notifier-spool.sqlite"
SEQ_FILE = "notifier.seq"
GATEWAY_DIR = "gateway"
JOBS_DIR = "jobs"
JOB_SUFFIX = ".sqlite"


class StateLocked(Exception):
    """Another daemon holds this mapping's state."""


class StateFolder:
    """One state folder: where each of its files is."""

    def __init__(self, root: str) -> None:
        self.root = root

    def make(self) -> None:
        """Create the folder, private to its user (it holds paths and resume state)."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    def db(self, mapping: str) -> str:
        return os.path.join(self.root, mapping + DB_SUFFIX)

    def lock(self, mapping: str) -> str:
        return os.path.join(self.root, f"{mapping}.lock")

    def seen(self, mapping: str) -> str:
        return os.path.join(self.root, f"{mapping}.seen")

    def placement(self, mapping: str) -> str:
        """The placement table of a mapping with several destinations (not `*.db`:
        `mappings()` must not take it for a mapping)."""
        return os.path.join(self.root, f"{mapping}{PLACEMENT_SUFFIX}")

    def status(self) -> str:
        return os.path.join(self.root, STATUS_FILE)

    def spool(self) -> str:
        return os.path.join(self.root, SPOOL_FILE)

    def seq(self) -> str:
        return os.path.join(self.root, SEQ_FILE)

    def gateway(self) -> str:
        """`skynet serve`'s default staging folder (skynet.gateway.staging names what is inside)."""
        return os.path.join(self.root, GATEWAY_DIR)

    def job_db(self, job: str) -> str:
        """A job's item table: apart from the mappings' databases, so no mapping
        name can collide with a job's and `mappings()` never lists a job."""
        return os.path.join(self.root, JOBS_DIR, job + JOB_SUFFIX)

    def job_lock(self, job: str) -> str:
        return os.path.join(self.root, JOBS_DIR, f"{job}.lock")

    def job_notifier(self, job: str) -> str:
        """The folder of a `job run`'s notifier spool and sequence: its own, since
        the daemon on the same state folder has one too."""
        return os.path.join(self.root, JOBS_DIR, f"{job}.notifier")

    def jobs(self) -> list[str]:
        """Names of the jobs that have an item table here, sorted."""
        found = glob.glob(os.path.join(glob.escape(os.path.join(self.root, JOBS_DIR)), "*" + JOB_SUFFIX))
        return sorted(os.path.basename(p)[: -len(JOB_SUFFIX)] for p in found)

    def mappings(self) -> list[str]:
        """Names of the mappings that have a state database here, sorted."""
        found = glob.glob(os.path.join(glob.escape(self.root), "*" + DB_SUFFIX))
        return sorted(os.path.basename(p)[: -len(DB_SUFFIX)] for p in found)

    def last_write(self, mapping: str) -> float:
        """When the mapping's database (or its WAL) was last written; 0.0 if never."""
        newest = 0.0
        for p in (self.db(mapping), self.db(mapping) + "-wal"):
            try:
                newest = max(newest, os.stat(p).st_mtime)
            except OSError:
                pass
        return newest

    def holder(self, mapping: str) -> int | None:
        """PID of the live daemon holding this mapping's lock, from its lock file.
        Only read: taking the lock, even briefly, could make a starting daemon fail."""
        return lock_holder(self.lock(mapping))

    def job_holder(self, job: str) -> int | None:
        """PID of the live `skynet job run` holding this job's lock."""
        return lock_holder(self.job_lock(job))

    def daemon_id(self, host: str, service: str) -> str:
        """A daemon id that is stable across restarts and unique per state folder
        (two daemons on one host for the same service have different state)."""
        digest = hashlib.sha256(os.path.abspath(self.root).encode("utf-8", "surrogateescape")).hexdigest()[:8]
        return f"{host}/{service}/{digest}"


def lock_holder(path: str) -> int | None:
    """PID written in a lock file, if that process is alive."""
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and _alive(pid) else None


def set_aside(db_path: str) -> None:
    """Move a damaged database (and its WAL and shared memory) out of the way,
    under a dated name, so a new one can start and the old one can be examined."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.replace(db_path + suffix, f"{db_path}.corrupt-{stamp}{suffix}")


def _alive(pid: int) -> bool:
    """Is there a process `pid` (ours or another user's)?"""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # it exists, run by someone else
    except OSError:
        return False
    return True


def mapping_identity(service: str, source: str, target: str) -> str:
    """What a mapping's state database describes: if any part changes, what its
    Index says about the remote is void (the daemon checks it at start)."""
    return f"{service}|{source}|{target}"


def parse_identity(text: str | None) -> tuple[str, str, str] | None:
    """(service, source, target) of a mapping_identity() string; None if malformed."""
    parts = (text or "").split("|", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


class StateLock:
    """An exclusive lock on a mapping's state, so two daemons never share it.
    The lock file holds the holder's PID for `--status` and `--retry-failed`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateLocked(f"another skynet is already running on this state ({self.path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
