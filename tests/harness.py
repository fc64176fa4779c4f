"""Run main.py as a user would (a subprocess on temporary folders) and compare trees."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent

# Names the daemon must never carry over (see skynet.ignore.DEFAULT_PATTERNS).
def _default_ignored(rel: str) -> bool:
    from skynet.ignore import IgnoreRules

    return IgnoreRules().ignored(rel)


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
            if os.path.islink(full):
                continue
            try:
                with open(full, "rb") as f:
                    out[rel] = f.read()
            except FileNotFoundError:
                continue
    return out


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

    def start(self) -> "Daemon":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            self.prefix + [sys.executable, str(REPO / "main.py"), "--run-with", self.service, "--config-file", str(self.config), *self.args],
            cwd=str(REPO), stdout=self._logf, stderr=subprocess.STDOUT, env=env,
        )
        self.wait_log("watching", timeout=30)
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


def wait_converged(src: Path, fetch: Callable[[], dict[bytes, bytes]], exact: bool, timeout: float = 30,
                   skip: Callable[[str], bool] | None = _default_ignored, daemon: Daemon | None = None) -> None:
    """Poll until the remote equals the source (the test's clock, not the daemon's)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        last = diff(tree(src, skip), fetch(), exact)
        if not last:
            return
        time.sleep(0.1)
    if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGUSR2)  # the daemon logs its threads' stacks and its handlers' state
        time.sleep(1.0)
    tail = daemon.log_text()[-12000:] if daemon else ""
    raise AssertionError(f"not converged after {timeout}s: {last}\n--- daemon log tail ---\n{tail}")
