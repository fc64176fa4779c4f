"""Run main.py as a user would (a subprocess on temporary folders) and compare trees."""
from __future__ import annotations

import collections
import contextlib
import errno
import functools
import http.client
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import tenacity

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("tests.harness")
T = TypeVar("T")

#: how long a harness read of the remote keeps retrying transient errors: longer than
#: a test server takes to come back after a restart, short enough to fail a test soon
READ_BUDGET = 30.0
#: S3 error codes that mean "busy or restarting, ask again" (status 5xx/408/429 too)
_S3_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}

# Names the daemon must never carry over (see skynet.watch.ignore.DEFAULT_PATTERNS).
def _default_ignored(rel: str) -> bool:
    from skynet.watch.ignore import IgnoreRules

    return IgnoreRules().ignored(rel)


def _default_ignored_folder(rel: str) -> bool:
    from skynet.watch.ignore import IgnoreRules

    return IgnoreRules().ignored(rel, is_dir=True)


#: skynet's own temporary names on a target (connections.local.con.TMP_PREFIX): a
#: send_many's staging folder is no folder of the mirror
OWN_TMP = b".skynet-tmp-"


def folders(root: Path | str, skip: Callable[[str], bool] | None = None) -> dict[bytes, int]:
    """{relative path bytes: permission bits (rwx only)} of every folder under root (root itself
    not, links not followed), as `diff -r` and `ls -l` see a tree's folders. What
    `skip` names is left out with everything below it, and so are skynet's own
    temporary folders."""
    root_b = os.fsencode(str(root))
    out: dict[bytes, int] = {}
    for folder, dirs, _files in os.walk(root_b):
        keep = []
        for name in dirs:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root_b)
            if name.startswith(OWN_TMP) or (skip and skip(os.fsdecode(rel))):
                continue
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue  # removed by the daemon meanwhile
            if stat.S_ISDIR(st.st_mode):
                out[rel] = st.st_mode & 0o777  # (setuid, setgid, sticky: never mirrored)
                keep.append(name)
        dirs[:] = keep
    return out


def tree(root: Path | str, skip: Callable[[str], bool] | None = None) -> dict[bytes, bytes]:
    """{relative path bytes: content} of every regular file under root."""
    root_b = os.fsencode(str(root))
    out: dict[bytes, bytes] = {}
    for folder, dirs, files in os.walk(root_b):
        for name in files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root_b)
            if skip and skip(os.fsdecode(rel)):
                continue
            data = _read_regular(full)
            if data is not None:
                out[rel] = data
    return out


def _read_regular(path: bytes) -> bytes | None:
    """The content of a regular file, or None when `path` is a link, no longer a
    regular file, or gone: a daemon may rename, replace or delete it (a file swapped
    for a folder, too) between os.walk listing it and this read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link (O_NOFOLLOW)
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, a FIFO...
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def is_transient(exc: BaseException) -> bool:
    """True for an error that a read of a test server may give while the server is
    restarting or busy, and that asking again fixes: connections refused, reset or
    closed without an answer, timeouts, an SSH session that ended, an S3 5xx, and the
    connections' own TransientError (their mapping of the same errors).

    A library's exception classes are looked up only if it is loaded: an exception of
    a class that was never imported cannot reach here, and the local backend's tests
    need not import botocore or asyncssh for this check."""
    from connections.contract.xcon import TransientError

    if isinstance(exc, (TransientError, ConnectionError, TimeoutError, EOFError, http.client.HTTPException)):
        return True
    bce = sys.modules.get("botocore.exceptions")
    if bce is not None:
        if isinstance(exc, (bce.HTTPClientError, bce.ConnectionError, bce.IncompleteReadError)):
            return True
        if isinstance(exc, bce.ClientError):
            err, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 0)
            return err.get("Code") in _S3_TRANSIENT_CODES or status >= 500 or status in (408, 429)
    u3 = sys.modules.get("urllib3.exceptions")
    if u3 is not None and isinstance(exc, (u3.ProtocolError, u3.TimeoutError)):
        return True
    ssh = sys.modules.get("asyncssh")
    if ssh is not None:
        if isinstance(exc, (ssh.ConnectionLost, ssh.SFTPConnectionLost, ssh.SFTPNoConnection)):
            return True
        if isinstance(exc, ssh.DisconnectError):  # a refused key or host key stays refused
            return not isinstance(exc, (ssh.PermissionDenied, ssh.HostKeyNotVerifiable))
    return False


def retrying_read(read: Callable[..., T], what: str, diagnose: Callable[[], str] | None = None,
                  budget: float | None = None, on_retry: Callable[[BaseException], None] | None = None
                  ) -> Callable[..., T]:
    """`read` (a harness read of the remote: a listing, a fetch of its files) made to
    retry transient errors (is_transient) with a growing pause (0.05 s doubling to 2 s)
    for at most `budget` seconds (READ_BUDGET when None, read at each call).

    WHY: the tests stop and restart the servers on purpose, and a server may drop a
    connection now and then; the test's own look at the remote must not turn that into
    a failure of the daemon under test. A read that still fails after the budget, or
    fails with anything else, raises its own exception (never a RetryError), with a
    note saying how long it was retried and, from `diagnose`, the server's state and
    log tail: the real cause, in the test's report."""

    @functools.wraps(read)
    def wrapped(*args, **kwargs) -> T:
        limit = READ_BUDGET if budget is None else budget
        started = time.monotonic()
        seen: collections.Counter[str] = collections.Counter()  # the errors retried, by kind

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s: %s: %s (attempt %d, retrying)", what, type(exc).__name__, exc, state.attempt_number)
            seen[type(exc).__name__] += 1
            if on_retry is not None and exc is not None:
                on_retry(exc)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_before_delay(limit),
            wait=tenacity.wait_exponential(multiplier=0.05, max=2.0),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(read, *args, **kwargs)
        except Exception as exc:
            kind = "transient, retried" if is_transient(exc) else "not transient, not retried"
            note = (f"harness read {what!r} failed ({kind}) after {retrying.statistics.get('attempt_number', 1)} "
                    f"attempt(s) over {time.monotonic() - started:.1f} s (budget {limit:g} s)"
                    + (f"; retried: {', '.join(f'{k} x{n}' for k, n in seen.items())}" if seen else ""))
            exc.add_note(note + _diagnosis(diagnose))
            raise

    return wrapped


def _diagnosis(diagnose: Callable[[], str] | None) -> str:
    """`diagnose()` on a new line; a failure to diagnose must not hide the error it explains."""
    if diagnose is None:
        return ""
    try:
        return "\n" + diagnose()
    except Exception as exc:  # noqa: BLE001 - a report, not a check
        return f"\n(no diagnosis: {type(exc).__name__}: {exc})"


def server_diagnosis(name: str, running: bool, pid: int | None, log: str | Path | None, tail: int = 2000) -> str:
    """One line of a test server's state and the tail of its log, for a failure report."""
    text = ""
    if log:
        with contextlib.suppress(OSError):
            text = Path(log).read_text(errors="replace")[-tail:]
    state = f"running, pid {pid}" if running else "NOT running"
    return f"{name} server: {state}; log {log or '-'}:\n{text}"


def diff(src: dict[bytes, bytes], dst: dict[bytes, bytes], exact: bool) -> str:
    missing = sorted(k for k in src if k not in dst)
    wrong = sorted(k for k in src if k in dst and dst[k] != src[k])
    extra = sorted(k for k in dst if k not in src) if exact else []
    if not (missing or wrong or extra):
        return ""
    return f"missing={missing[:10]} ({len(missing)}) wrong={wrong[:10]} ({len(wrong)}) extra={extra[:10]} ({len(extra)})"


def write_config(path: Path, service: str, mappings: dict[str, dict[str, str]], state_dir: Path,
                 service_options: dict[str, str] | None = None, extra: dict[str, str] | None = None) -> Path:
    top = {"service": service, "state_dir": str(state_dir), "log_level": "DEBUG", "settle_seconds": "0.3"}
    top.update(extra or {})
    lines = ["[skynet]"] + [f"{k} = {v}" for k, v in top.items()]
    if service_options:
        lines += ["", f"[{service}]"] + [f"{k} = {v}" for k, v in service_options.items()]
    for name, m in mappings.items():
        lines += ["", f"[mapping {name}]"] + [f"{k} = {v}" for k, v in m.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """One `python main.py --run-with SERVICE --config-file CFG` process."""

    def __init__(self, config: Path, service: str = "local", log: Path | None = None,
                 prefix: list[str] | None = None, args: list[str] | None = None) -> None:
        self.config = config
        self.service = service
        self.prefix = prefix or []
        self.args = args or []
        self.log = log or config.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Daemon":
        """Launch the daemon; with `wait`, return once it logs that it is watching
        (AssertionError, and no process left behind, if it does not within 30 s)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The log may hold an earlier process's lines (a restart appends to it): wait
        # for one more "watching" than it holds now, that is, for this process's.
        seen = self.log_text().count("watching")
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            self.prefix + [sys.executable, str(REPO / "main.py"), "--run-with", self.service, "--config-file", str(self.config), *self.args],
            cwd=str(REPO), stdout=self._logf, stderr=subprocess.STDOUT, env=env,
        )
        if not wait:
            return self
        try:
            self.wait_log("watching", timeout=30, count=seen + 1)
        except BaseException:
            # A daemon that did not come up is not left running behind the failure (the
            # caller never gets this object, so nobody else would stop it).
            if self.proc.poll() is None:
                self.kill9()
            else:
                self._logf.close()
            raise
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle: str, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(needle) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {needle!r}:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} in the log after {timeout}s:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._logf.close()
        return rc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._logf.close()

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def run_main(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python main.py ARGS` to completion (for commands that exit)."""
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=str(REPO), capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def unprivileged_prefix() -> list[str]:
    """Command prefix that runs a process as 'nobody' when we are root, so that
    file permissions (an unreadable file) mean something. Empty if not root."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def world_writable_tmp(prefix: str) -> Path:
    """A temporary folder that a daemon running as 'nobody' can use."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o777)
    return base


#: what the daemon logs for each mapping on SIGUSR2 (skynet/engine/daemon.py), after the stacks
STATE_DUMP = "handler state:"


def converged(src: Path, fetch: Callable[[], dict[bytes, bytes]], exact: bool,
              skip: Callable[[str], bool] | None = _default_ignored,
              fetch_folders: Callable[[], dict[bytes, int]] | None = None,
              folder_skip: Callable[[str], bool] | None = _default_ignored_folder) -> str:
    """"" when the remote equals the source, else what differs: the files (bytes), and
    with `fetch_folders` (a target with folders) the folders and their permission bits
    too, as `diff -r` sees a tree (exact: nothing more on the remote; else a superset)."""
    last = diff(tree(src, skip), fetch(), exact)
    if last or fetch_folders is None:
        return last
    last = diff(folders(src, folder_skip), fetch_folders(), exact)
    return f"folders (path: mode) {last}" if last else ""


def wait_converged(src: Path, fetch: Callable[[], dict[bytes, bytes]], exact: bool, timeout: float = 30,
                   skip: Callable[[str], bool] | None = _default_ignored, daemon: Daemon | None = None,
                   fetch_folders: Callable[[], dict[bytes, int]] | None = None) -> None:
    """Poll until the remote equals the source (the test's clock, not the daemon's):
    files, and with `fetch_folders` folders and their modes too (see converged)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        last = converged(src, fetch, exact, skip, fetch_folders)
        if not last:
            return
        time.sleep(0.1)
    if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
        dumped = daemon.log_text().count(STATE_DUMP)
        daemon.proc.send_signal(signal.SIGUSR2)  # the daemon logs its threads' stacks and its handlers' state
        with contextlib.suppress(AssertionError):  # a report: take what is there after 5 s
            daemon.wait_log(STATE_DUMP, timeout=5, count=dumped + 1)
    tail = daemon.log_text()[-12000:] if daemon else ""
    raise AssertionError(f"not converged after {timeout}s: {last}\n--- daemon log tail ---\n{tail}")


def one_clear_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    """A command refused its input as the contract says: exit 2, one line on
    stderr naming each of `needles`, no traceback. Returns the line."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr, res.stderr
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


INOTIFY_SYSCTL = Path("/proc/sys/fs/inotify")


@contextlib.contextmanager
def inotify_sysctl(name: str, value: int):
    """Set /proc/sys/fs/inotify/NAME for the block (root only), then put the old value back."""
    path = INOTIFY_SYSCTL / name
    old = path.read_text().strip()
    path.write_text(str(value))
    try:
        yield
    finally:
        path.write_text(old)
