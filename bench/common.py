"""Shared helpers for skynet's benchmarks (bench/*_bench.py).

Nothing here imports skynet: a benchmark drives the daemon the way a user does,
as a subprocess (`python main.py --run-with SERVICE --config-file CFG`), so the
figures include start-up, imports and everything else a user pays for.

* Processes: started with subprocess.Popen, reaped with os.wait4 so each run
  reports the child's own CPU seconds (user + system, including children it
  reaped itself: rsync/cp under lsyncd). Peak RSS is the child's VmHWM, sampled
  while it runs (PeakRss), not wait4's ru_maxrss: Linux carries the spawning
  process's high-water mark over the exec, so ru_maxrss of any child of a
  100 MiB bench says at least 100 MiB (even /bin/true's).
* CPU over a window of a still-running process: /proc/PID/stat
  (utime + stime + cutime + cstime).
* File appearance: a tiny inotify binding (ctypes, no dependency) so a
  latency watcher sees the target's IN_MOVED_TO / IN_CLOSE_WRITE the moment the
  kernel reports them, whichever tool wrote the file.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import math
import os
import platform
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
RCLONE = str(VENV_BIN / "rclone") if (VENV_BIN / "rclone").exists() else (shutil.which("rclone") or "rclone")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment a benchmark runs skynet's daemon in: the caller's, minus
    PYTHONDONTWRITEBYTECODE. A user's daemon loads its modules compiled from
    __pycache__; without the cache every start compiles them again (about 0.1 s
    of CPU here), which no user pays."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


# -- the machine ----------------------------------------------------------------
def _cmd_version(cmd: list[str], pattern: str = r"(\d+\.\d+[\w.\-]*)") -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "?"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_info() -> dict[str, str]:
    mem_kib = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    fs = "?"
    try:
        out = subprocess.run(["df", "-T", "/tmp"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        if len(out) > 1:
            fs = out[1].split()[1]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": f"{mem_kib / 1048576:.1f} GiB",
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "filesystem (/tmp)": fs,
        "rclone": _cmd_version([RCLONE, "version"], r"rclone v?([\d.]+)"),
        "lsyncd": _cmd_version(["lsyncd", "--version"]),
        "rsync": _cmd_version(["rsync", "--version"], r"version\s+([\d.]+)"),
    }


def _os_release() -> str:
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def drop_caches() -> bool:
    """sync, then drop the page cache, dentries and inodes (root only)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


# -- data -------------------------------------------------------------------------
def make_tree(root: Path, n_files: int, n_dirs: int, size: int, prefix: str = "f") -> list[str]:
    """n_files files of `size` random bytes spread evenly over n_dirs folders.
    Returns the relative paths ('d000/f00000.dat')."""
    rels = []
    for d in range(n_dirs):
        (root / f"d{d:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        rel = f"d{i % n_dirs:03d}/{prefix}{i:05d}.dat"
        with open(root / rel, "wb") as f:
            f.write(os.urandom(size))
        rels.append(rel)
    return rels


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def verify_tree(src: Path, dst: Path, rels: list[str]) -> tuple[int, int]:
    """(missing, wrong-content) counts of rels in dst compared with src."""
    missing = wrong = 0
    for rel in rels:
        try:
            with open(dst / rel, "rb") as f:
                got = f.read()
        except FileNotFoundError:
            missing += 1
            continue
        with open(src / rel, "rb") as f:
            if f.read() != got:
                wrong += 1
    return missing, wrong


def leftovers(dst: Path) -> list[str]:
    """Hidden (temporary) files left anywhere in dst."""
    found = []
    for folder, _dirs, files in os.walk(dst):
        found += [os.path.join(folder, n) for n in files if n.startswith(".")]
    return found


class TreeCounter:
    """Cheap completeness poll: counts final (non-hidden) names per target folder
    with os.listdir, and stops looking at a folder once it is complete."""

    def __init__(self, dst: Path, rels: list[str]) -> None:
        self.want: dict[str, int] = {}
        for rel in rels:
            d = os.path.dirname(rel)
            self.want[d] = self.want.get(d, 0) + 1
        self.dst = dst
        self.done: set[str] = set()
        self.total = len(rels)
        self.count_done = 0

    def count(self) -> int:
        n = self.count_done
        for d, want in self.want.items():
            if d in self.done:
                continue
            try:
                names = os.listdir(self.dst / d)
            except FileNotFoundError:
                continue
            have = sum(1 for x in names if not x.startswith("."))
            if have >= want:
                self.done.add(d)
                self.count_done += want
                n += want
            else:
                n += have
        return n


# -- processes --------------------------------------------------------------------
@dataclass
class Usage:
    returncode: int
    maxrss_mib: float
    cpu_s: float
    utime: float
    stime: float


class Proc:
    """A child process reaped with os.wait4 (its own rusage, not the bench's)."""

    def __init__(self, argv: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> None:
        self.argv = argv
        self.log = log
        self._logf = open(log, "ab")
        self.p = subprocess.Popen(argv, cwd=str(cwd) if cwd else None, stdout=self._logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env)
        self.pid = self.p.pid
        self.usage: Usage | None = None
        self._rss = PeakRss(self.pid)

    def alive(self) -> bool:
        if self.usage is not None:
            return False
        pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._reaped(status, ru)
        return False

    def _reaped(self, status: int, ru) -> None:
        rc = os.waitstatus_to_exitcode(status)
        self.p.returncode = rc  # keep Popen from waiting again
        self._logf.close()
        self.usage = Usage(rc, self._rss.peak(ru.ru_maxrss / 1024.0), ru.ru_utime + ru.ru_stime, ru.ru_utime, ru.ru_stime)

    def wait(self, timeout: float | None = None) -> Usage:
        if self.usage is not None:
            return self.usage
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                _pid, status, ru = os.wait4(self.pid, 0)
                self._reaped(status, ru)
                return self.usage
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self._reaped(status, ru)
                return self.usage
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.argv[0]} (pid {self.pid}) still running after {timeout}s")
            time.sleep(0.01)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> Usage:
        if self.usage is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                return self.wait(timeout)
            except TimeoutError:
                os.kill(self.pid, signal.SIGKILL)
                return self.wait()
        return self.usage

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def cpu_now(self) -> float:
        """CPU seconds so far of this process and the children it has reaped."""
        return proc_cpu(self.pid)


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the ")": fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17 of proc(5)
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / CLK_TCK


def proc_rss_mib(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class PeakRss:
    """The peak RSS (VmHWM) of a running process, sampled every `every`
    seconds on a thread until it exits. VmHWM only grows, so the last sample
    holds the peak except for growth in the final interval; a process gone
    before the first sample reports NaN (peak() then falls back)."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid, self.every = pid, every
        self.mib = float("nan")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            v = proc_hwm_mib(self.pid)
            if v == v:
                self.mib = v if self.mib != self.mib else max(self.mib, v)
            self._stop.wait(self.every)

    def peak(self, fallback: float) -> float:
        """Stop sampling (call after the process was reaped) and return the
        peak, or `fallback` (ru_maxrss) if no sample was taken."""
        self._stop.set()
        self._thread.join()
        return self.mib if self.mib == self.mib else fallback


def proc_hwm_mib(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# -- inotify (ctypes) -------------------------------------------------------------
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


class Inotify:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.paths: dict[int, bytes] = {}
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)

    def add(self, path: str | bytes, mask: int) -> int:
        p = os.fsencode(path)
        wd = self._add(self.fd, p, mask)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
        self.paths[wd] = p
        return wd

    def read(self, timeout_ms: int) -> list[tuple[bytes, int, bytes]]:
        """[(folder, mask, name)] of the events ready within timeout_ms."""
        if not self._poll.poll(timeout_ms):
            return []
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        out = []
        i = 0
        while i < len(buf):
            wd, mask, _cookie, ln = _EVENT.unpack_from(buf, i)
            name = buf[i + 16:i + 16 + ln].rstrip(b"\0")
            out.append((self.paths.get(wd, b""), mask, name))
            i += 16 + ln
        return out

    def close(self) -> None:
        os.close(self.fd)


# -- statistics and tables -----------------------------------------------------------
def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(xs: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-markdown table (also readable as plain text)."""
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"
    out = [line(headers), "|" + "|".join("-" * (x + 2) for x in w) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the '## {title}' section of a markdown file."""
    head = f"## {title}"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by `bench/run`; each section by one benchmark.\n"
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == head), None)
    new = [head, ""] + body.rstrip().splitlines()
    if start is None:
        lines = lines + ([""] if lines and lines[-1].strip() else []) + new
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + new + ([""] if end < len(lines) else []) + lines[end:]
    path.write_text("\n".join(lines).rstrip() + "\n")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- background load (other users of this machine) -----------------------------------------
def cpu_busy_s() -> float:
    """Machine-wide busy CPU seconds so far (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class LoadMeter:
    """CPU used by *other* processes during a measurement: machine busy time
    minus the tool's CPU and the bench's own, divided by wall time (in cores)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = cpu_busy_s()
        self.self0 = self_cpu_s()

    def others_cores(self, tool_cpu_s: float) -> float:
        wall = time.monotonic() - self.t0
        if wall <= 0:
            return 0.0
        others = (cpu_busy_s() - self.busy0) - (self_cpu_s() - self.self0) - tool_cpu_s
        return max(0.0, others / wall)


def wait_quiet(max_wait: float, threshold: float = 0.3, window: float = 1.0) -> float:
    """Wait (up to max_wait s) until other processes use < threshold cores over
    `window` seconds; return the last measured background load in cores."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, s0, t0 = cpu_busy_s(), self_cpu_s(), time.monotonic()
        time.sleep(window)
        load = max(0.0, ((cpu_busy_s() - b0) - (self_cpu_s() - s0)) / (time.monotonic() - t0))
        if load < threshold or time.monotonic() >= deadline:
            return load


LOCAL_PATH_CODE = ("skynet", "connections/__init__.py", "connections/contract/xcon.py", "connections/local/con.py", "main.py")


def git_state(paths: tuple[str, ...] = LOCAL_PATH_CODE) -> str:
    """HEAD's short hash, plus a note and a digest of the working tree when any of `paths`
    differs from HEAD, so two calls differ exactly when that code changed in between."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        diff = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD", "--", *paths], capture_output=True,
                              timeout=30).stdout
        untracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "--others", "--exclude-standard", "--",
                                    *paths], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    if not diff and not untracked:
        return head
    import hashlib

    h = hashlib.sha1(diff)
    for f in sorted(untracked):
        try:
            h.update(f.encode() + (REPO / f).read_bytes())
        except OSError:
            pass
    return f"{head} + uncommitted changes (digest {h.hexdigest()[:8]})"
