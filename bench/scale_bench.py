"""Issue 8, scale: a million files, flat memory, no idle CPU, full bandwidth.

    bench/run scale rss --counts 100000,1000000   (1) peak RSS of the start-up scan + initial sync, skynet vs rclone
    bench/run scale idle --minutes 10             (2) CPU and wake-ups of a daemon watching a quiet 100,000-file tree
    bench/run scale watches --folders 100000      (3) time to watch 100,000 folders; behaviour at a low watch limit
    bench/run scale latency --big-mib 1024        (4) S3: close -> on the server for small files during a 1 GiB upload
    bench/run scale throughput --files 100000     (5) files/s of an initial sync of 1-64 KiB files to S3 and SFTP
    bench/run scale all [--quick]                 every part above, in that order
    bench/run scale PART --help                   each part's options

skynet always runs as the user runs it: `python main.py --run-with SERVICE` in a child process with its
own config and a fresh state_dir, at the same CPU and I/O priority as the peers (nice 0, io_class none).
Peak RSS and CPU come from os.wait4 on the child (ru_maxrss, user + system); CPU over a window of a
running daemon from /proc/PID/stat; 'others' is the CPU other processes of this shared machine used
during the measurement, in cores (/proc/stat minus the tool, the test server and the bench itself).
A daemon's initial sync is over when its Index (the state database's `entries` table, read by the
bench) holds every file: that is when the last file is on the remote *and* recorded.

Trees are made once under --workdir (kept between runs: creating a million files is slow) and reused by
every tool; targets are emptied at the end of the command. Each part writes its own subsection of the
"Issue 8: scale" section of bench/RESULTS.md and leaves the other parts' subsections alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
from skynet.state.sqlitelib import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    IN_CLOSE_WRITE,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    REPO,
    Inotify,
    LoadMeter,
    Proc,
    git_state,
    log,
    machine_info,
    percentile,
    proc_cpu,
    proc_rss_mib,
    table,
    write_section,
)
from s3_peers import tool  # noqa: E402  (a tool beside this interpreter, else on PATH)

PY = sys.executable
SECTION = "Issue 8: scale"
BUSY = 0.3  # cores used by other processes above which a figure is flagged
MIB = 1 << 20


# -- trees ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TreeSpec:
    """`files` files spread evenly over `dirs` leaf folders, nested 100 to a level
    (5,000 leaves: d00/d00 .. d49/d99); sizes uniform in [min_size, max_size]."""

    files: int
    dirs: int
    min_size: int = 0
    max_size: int = 0

    @property
    def name(self) -> str:
        sizes = f"-{self.min_size}-{self.max_size}" if self.max_size else ""
        return f"tree-{self.files}f-{self.dirs}d{sizes}"

    def describe(self) -> str:
        size = "empty" if not self.max_size else f"{self.min_size >> 10}-{self.max_size >> 10} KiB"
        return f"{self.files:,} {size} files in {self.dirs:,} leaf folders"


def leaf_rel(i: int, n_leaves: int) -> str:
    """The i-th leaf folder: base-100 digits, one folder level per digit."""
    levels = max(1, math.ceil(math.log(max(n_leaves, 2), 100)))
    parts = []
    for _ in range(levels):
        parts.append(f"d{i % 100:02d}")
        i //= 100
    return "/".join(reversed(parts))


def ensure_tree(base: Path, spec: TreeSpec) -> Path:
    """The tree for `spec` under `base`, made now unless a finished one is there.
    A `.done` file beside the tree (not in it) marks it finished."""
    root, done = base / spec.name, base / f"{spec.name}.done"
    if done.exists() and json.loads(done.read_text()) == asdict(spec):
        log(f"reusing {root} ({spec.describe()})")
        return root
    if root.exists():
        log(f"removing the unfinished {root}")
        shutil.rmtree(root)
    t0 = time.monotonic()
    make_tree_fast(root, spec)
    os.sync()
    done.write_text(json.dumps(asdict(spec)))
    log(f"made {spec.describe()} in {time.monotonic() - t0:.0f} s")
    return root


def make_tree_fast(root: Path, spec: TreeSpec) -> None:
    """One os.open/os.write/os.close per file, relative to its folder's descriptor
    (no path lookups), folders made in order: about as fast as the disk allows."""
    rng = random.Random(8)
    blob = os.urandom(2 * spec.max_size) if spec.max_size else b""
    per = math.ceil(spec.files / spec.dirs) if spec.dirs else 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    last = time.monotonic()
    made = 0
    for leaf in range(spec.dirs):
        path = root / leaf_rel(leaf, spec.dirs)
        os.makedirs(path, exist_ok=True)
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for j in range(leaf * per, min(spec.files, (leaf + 1) * per)):
                fd = os.open(f"f{j:07d}", flags, 0o644, dir_fd=dfd)
                if spec.max_size:
                    size, at = rng.randint(spec.min_size, spec.max_size), rng.randrange(spec.max_size)
                    os.write(fd, blob[at:at + size])
                os.close(fd)
                made += 1
        finally:
            os.close(dfd)
        if time.monotonic() - last > 10:
            last = time.monotonic()
            log(f"  making {root.name}: {made:,}/{spec.files:,} files, {leaf + 1:,}/{spec.dirs:,} folders")


def count_files(root: Path) -> int:
    """Regular files under root (os.scandir; hidden temporary files included, so a leftover shows)."""
    n, todo = 0, [str(root)]
    while todo:
        try:
            with os.scandir(todo.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        todo.append(e.path)
                    else:
                        n += 1
        except FileNotFoundError:
            pass
    return n


class Trash:
    """Targets are renamed into a trash folder (instant) and deleted at the end of the
    command: on this disk, creating files just after mass deletes is slow, which would
    hurt the next tool's run."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "trash"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n = 0

    def put(self, path: Path) -> None:
        if path.exists():
            self.n += 1
            os.rename(path, self.dir / f"{time.time_ns()}-{self.n}-{path.name}")

    def empty(self) -> None:
        if any(self.dir.iterdir()):
            t0 = time.monotonic()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True, exist_ok=True)
            log(f"emptied the trash in {time.monotonic() - t0:.0f} s")


# -- the daemon -----------------------------------------------------------------------------
@dataclass
class Daemon:
    """A skynet daemon started by the bench: its process, config and state."""

    proc: Proc
    config: Path
    state: Path
    mapping: str = "bench"

    @property
    def db(self) -> Path:
        return self.state / f"{self.mapping}.db"

    def count(self, table_name: str) -> int:
        """Rows in the daemon's state database (entries = the Index, queue); -1 before it exists.
        A short read transaction of our own: WAL readers never block the daemon's writer."""
        if not self.db.exists():
            return -1
        try:
            c = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            try:
                return c.execute(f"SELECT count(*) FROM {table_name}").fetchone()[0]  # noqa: S608 - fixed names
            finally:
                c.close()
        except sqlite3.Error:
            return -1

    def log_text(self) -> str:
        return self.proc.log.read_text(errors="replace") if self.proc.log.exists() else ""


def write_config(path: Path, service: str, state: Path, source: Path, target: str, settings: dict[str, str],
                 service_opts: dict[str, str] | None = None) -> Path:
    """A daemon config: [skynet], [SERVICE] and one mapping named 'bench'."""
    lines = ["[skynet]", f"service = {service}", f"state_dir = {state}"]
    lines += [f"{k} = {v}" for k, v in settings.items()]
    if service_opts:
        lines += ["", f"[{service}]"] + [f"{k} = {v}" for k, v in service_opts.items()]
    lines += ["", "[mapping bench]", f"source = {source}", f"target = {target}", ""]
    path.write_text("\n".join(lines))
    return path


def daemon_settings(args, **extra: str) -> dict[str, str]:
    """Same priority as the peers (the daemon lowers itself to nice 10 / idle I/O by default)."""
    s = {"log_level": args.log_level, "nice": "0", "io_class": "none", "workers": str(args.workers)}
    s.update(extra)
    for kv in args.skynet_option or []:
        k, _, v = kv.partition("=")
        s[k.strip()] = v.strip()
    return s


PRELUDE = ""  # --prelude FILE
PRELUDE_RUNNER = r"""
import os, runpy, sys
prelude, sys.argv = sys.argv[1], sys.argv[2:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
exec(compile(open(prelude).read(), prelude, "exec"), {"__name__": "prelude"})
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def service_options(args, opts: dict[str, str]) -> dict[str, str]:
    """The test server's [service] keys plus --service-option overrides."""
    opts = dict(opts)
    for kv in getattr(args, "service_option", None) or []:
        k, _, v = kv.partition("=")
        opts[k.strip()] = v.strip()
    return opts


def start_daemon(work: Path, tag: str, service: str, source: Path, target: str, settings: dict[str, str],
                 service_opts: dict[str, str] | None = None, state: Path | None = None,
                 wrapper: list[str] | None = None, env: dict[str, str] | None = None) -> Daemon:
    """Start `main.py --run-with SERVICE` (optionally under a wrapper: tracemalloc, another user).
    A fresh state_dir unless `state` is given (a restart on the state of an earlier run)."""
    if PRELUDE and wrapper is None:  # --prelude: the daemon runs this file first (experiments)
        wrapper = [PY, "-c", PRELUDE_RUNNER, PRELUDE]
    if state is None:
        state = work / f"state-{tag}"
        if state.exists():
            shutil.rmtree(state)
    cfg = write_config(work / f"skynet-{tag}.ini", service, state, source, target, settings, service_opts)
    argv = (wrapper or [PY]) + [str(REPO / "main.py"), "--run-with", service, "--config-file", str(cfg)]
    (work / f"skynet-{tag}.log").unlink(missing_ok=True)  # the waits read this log: no lines from an earlier run
    proc = Proc(argv, work / f"skynet-{tag}.log", cwd=REPO, env=dict(env or os.environ, PYTHONUNBUFFERED="1"))
    return Daemon(proc, cfg, state)


class RssSampler:
    """Samples a process's RSS (and, less often, its queue and Index) in a thread, for a
    timeline of where memory grows: during the scan, or while the backlog drains."""

    def __init__(self, d: Daemon, every: float = 0.25, db_every: float = 2.0) -> None:
        self.d, self.every, self.db_every = d, every, db_every
        self.t0 = time.monotonic()
        self.rss: list[tuple[float, float]] = []
        self.db: list[tuple[float, float, int, int]] = []  # (t, rss, queued, indexed)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self) -> None:
        last_db = 0.0
        while not self._halt.wait(self.every):
            t = time.monotonic() - self.t0
            rss = proc_rss_mib(self.d.proc.pid)
            if rss != rss:
                return
            self.rss.append((t, rss))
            if t - last_db >= self.db_every:
                last_db = t
                self.db.append((t, rss, self.d.count("queue"), self.d.count("entries")))

    def stop(self) -> None:
        self._halt.set()
        self._thread.join()

    def timeline(self, points: int = 12) -> str:
        """A few (time, RSS, queued, indexed) points, evenly spaced."""
        if not self.db:
            return "(no samples)"
        step = max(1, len(self.db) // points)
        picked = self.db[::step] + ([self.db[-1]] if (len(self.db) - 1) % step else [])
        return ", ".join(f"{t:.0f}s {rss:.0f}MiB q={q:,} idx={i:,}" for t, rss, q, i in picked)


def wait_indexed(d: Daemon, want: int, timeout: float, every: float = 1.0) -> float | None:
    """Poll the Index until it holds `want` entries: the monotonic time seen, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not d.proc.alive():
            return None
        if d.count("entries") >= want:
            return time.monotonic()
        time.sleep(every)
    return None


def wait_log(d: Daemon, pattern: str, timeout: float, every: float = 0.2) -> float | None:
    """Poll the daemon's log for a regular expression: the monotonic time it appeared."""
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        if rx.search(d.log_text()):
            return time.monotonic()
        if not d.proc.alive():
            return None
        time.sleep(every)
    return None


# -- (1) peak RSS ---------------------------------------------------------------------------
@dataclass
class RssRun:
    tool: str
    files: int
    seconds: float
    peak_rss_mib: float
    cpu_s: float
    others: float
    ok: bool
    note: str = ""
    timeline: str = ""
    memstats: str = ""  # the last memory report (--memstats)

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0


MEMSTATS_WRAPPER = r"""
# Runs main.py and, every SCALE_TM_EVERY s, writes where the daemon's memory is to SCALE_TM_OUT:
# RSS, glibc's heap (in use / free), SQLite's own allocations, and (SCALE_TM_FRAMES > 0) the
# Python lines holding the most memory and the growth since the first snapshot (tracemalloc).
import ctypes, os, runpy, sys, threading, time, tracemalloc
frames = int(os.environ.get("SCALE_TM_FRAMES", "0"))
if frames:
    tracemalloc.start(frames)
out, every = os.environ["SCALE_TM_OUT"], float(os.environ.get("SCALE_TM_EVERY", "30"))
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
try:
    lib = ctypes.CDLL("libsqlite3.so.0")
    lib.sqlite3_memory_used.restype = lib.sqlite3_memory_highwater.restype = ctypes.c_int64
except OSError:
    lib = None
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def dump():
    first, t0 = None, time.monotonic()
    while True:
        time.sleep(every)
        mi = libc.mallinfo2()
        sq = (lib.sqlite3_memory_used() / 1048576, lib.sqlite3_memory_highwater(0) / 1048576) if lib else (-1, -1)
        line = (f"t={time.monotonic() - t0:.0f}s RSS {rss():.1f} MiB; malloc heap {(mi.arena + mi.hblkhd) / 1048576:.1f} "
                f"MiB (in use {(mi.uordblks + mi.hblkhd) / 1048576:.1f}, free {mi.fordblks / 1048576:.1f}); SQLite "
                f"{sq[0]:.1f} MiB (peak {sq[1]:.1f}); threads {threading.active_count()}")
        with open(out, "a") as f:
            if not frames:
                f.write(line + "\n")
                continue
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            first = first or snap
            cur, peak = tracemalloc.get_traced_memory()
            f.write(f"=== {line}; Python objects (tracemalloc) {cur / 1048576:.1f} MiB (peak {peak / 1048576:.1f})\n")
            for st in snap.statistics("lineno")[:12]:
                f.write(f"  {st.size / 1048576:8.2f} MiB {st.count:9d} blocks  {st.traceback[0]}\n")
            f.write("  growth since the first snapshot:\n")
            for st in snap.compare_to(first, "lineno")[:8]:
                f.write(f"  {st.size_diff / 1048576:+8.2f} MiB {st.count_diff:+9d} blocks  {st.traceback[0]}\n")
threading.Thread(target=dump, daemon=True, name="memstats").start()
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def rss_skynet(work: Path, src: Path, n: int, args, tag: str, trash: Trash) -> RssRun:
    """Initial sync of the tree by the daemon (local target, fresh state): peak RSS from wait4."""
    dst = work / f"dst-{tag}"
    dst.mkdir()
    wrapper, env = None, None
    out = work / f"memstats-{tag}.txt"
    if args.tracemalloc or args.memstats:
        wrapper = [PY, "-c", MEMSTATS_WRAPPER]
        env = dict(os.environ, SCALE_TM_OUT=str(out), SCALE_TM_FRAMES="6" if args.tracemalloc else "0",
                   SCALE_TM_EVERY=str(args.memstats_every))
        log(f"memory accounting every {args.memstats_every:g} s goes to {out}")
    meter = LoadMeter()
    t0 = time.monotonic()
    d = start_daemon(work, tag, "local", src, str(dst), daemon_settings(args), wrapper=wrapper, env=env)
    sampler = RssSampler(d, db_every=2.0 if n > 200_000 else 1.0)
    t_end = wait_indexed(d, n, args.timeout, every=2.0 if n > 200_000 else 0.5)
    sampler.stop()
    note = "" if t_end is not None else ("not complete" if d.proc.alive() else "daemon exited")
    seconds = (t_end or time.monotonic()) - t0
    cpu = d.proc.cpu_now() if d.proc.alive() else 0.0
    others = meter.others_cores(cpu)
    u = d.proc.stop(signal.SIGTERM, timeout=120)
    got = count_files(dst)
    if got != n:
        note += f" target holds {got:,} of {n:,} files"
    if note:
        log(f"skynet {tag}: {note}\n{d.proc.log_tail()}")
    trash.put(dst)
    trash.put(d.state)
    mem = [ln.strip("= ") for ln in out.read_text().splitlines() if ln.startswith(("t=", "==="))] if out.exists() else []
    return RssRun("skynet", n, seconds, u.maxrss_mib, u.cpu_s, others, not note, note.strip(), sampler.timeline(),
                  mem[-1] if mem else "")


def rss_rclone(work: Path, src: Path, n: int, args, tag: str, trash: Trash) -> RssRun:
    """`rclone copy SRC DST` (its defaults) on the same tree."""
    dst = work / f"dst-{tag}"
    dst.mkdir()
    meter = LoadMeter()
    t0 = time.monotonic()
    p = Proc([tool("rclone"), "--config", os.devnull, "copy", str(src), str(dst)], work / f"rclone-{tag}.log")
    u = p.wait(args.timeout)
    seconds = time.monotonic() - t0
    others = meter.others_cores(u.cpu_s)
    got = count_files(dst)
    note = "" if u.returncode == 0 and got == n else f"exit {u.returncode}, target holds {got:,} of {n:,}"
    trash.put(dst)
    return RssRun("rclone copy", n, seconds, u.maxrss_mib, u.cpu_s, others, not note, note)


def part_rss(args, work: Path, trash: Trash) -> str:
    counts = [int(x) for x in args.counts.split(",") if x]
    runs: list[RssRun] = []
    for n in counts:
        spec = TreeSpec(n, args.dirs or max(1, n // args.per_dir))
        src = ensure_tree(work / "trees", spec)
        for name in args.tools.split(","):
            tag = f"rss-{name}-{n}-{int(time.time())}"
            log(f"(1) {name} on {spec.describe()} ...")
            run = (rss_skynet if name == "skynet" else rss_rclone)(work, src, n, args, tag, trash)
            runs.append(run)
            log(f"(1) {run.tool} {n:,}: peak RSS {run.peak_rss_mib:.1f} MiB, {run.seconds:.0f} s "
                f"({run.files_per_s:,.0f} files/s), CPU {run.cpu_s:.1f} s, others {run.others:.2f} cores"
                + (f"; RSS timeline: {run.timeline}" if run.timeline else "") + (f" FAILED {run.note}" if not run.ok else ""))
    return report_rss(args, runs)


def report_rss(args, runs: list[RssRun]) -> str:
    rows = [[r.tool, f"{r.files:,}", f"{r.peak_rss_mib:.1f}", f"{r.seconds:.0f}", f"{r.files_per_s:,.0f}",
             f"{r.cpu_s:.1f}", f"{r.cpu_s / r.files * 1e6:.0f}", f"{r.others:.2f}", "yes" if r.ok else "NO: " + r.note]
            for r in runs]
    layout = f"in {args.dirs:,} leaf folders whatever their number" if args.dirs else f"{args.per_dir} per leaf folder"
    out = [f"Initial sync of empty files, {layout} (nested 100 to a level), local folder -> "
           "new local folder; skynet: fresh state_dir, workers " + str(args.workers) + ", until its Index holds every "
           "file; rclone: `rclone copy SRC DST` (defaults), exec -> exit. Peak RSS = ru_maxrss from os.wait4.", "",
           table(["tool", "files", "peak RSS MiB", "seconds", "files/s", "CPU s", "CPU us/file", "others (cores)",
                  "complete"], rows), ""]
    sk = {r.files: r for r in runs if r.tool == "skynet" and r.ok}
    if sk:
        top = sk[max(sk)]
        verdict = f"skynet's peak RSS at {top.files:,} files: {top.peak_rss_mib:.1f} MiB (target < 150 MiB: " + (
            "MET" if top.peak_rss_mib < 150 else "MISSED") + ")"
        if len(sk) > 1:
            low = sk[min(sk)]
            growth = top.peak_rss_mib / low.peak_rss_mib - 1
            verdict += (f"; growth from {low.files:,} to {top.files:,} files: {growth * 100:+.0f}% (target < 20%: "
                        + ("MET" if growth < 0.2 else "MISSED") + ")")
        out += [verdict + ".", ""]
    for r in runs:
        if r.timeline:
            out.append(f"skynet RSS over time at {r.files:,} files (seconds from exec, RSS, queue rows, Index rows): "
                       f"{r.timeline}.")
            out.append("")
        if r.memstats:
            out += [f"skynet's memory at {r.files:,} files, last report (--memstats): {r.memstats}.", ""]
    return "\n".join(out)


# -- (2) idle ---------------------------------------------------------------------------------
def thread_stats(pid: int) -> dict[int, tuple[int, float]]:
    """TID -> (context switches, CPU seconds). A thread blocked without a timeout
    switches 0 times; one woken by a timer once per firing. CPU from schedstat
    (nanoseconds on the CPU), finer than /proc/PID/stat's 10 ms ticks."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            sw = 0
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        sw += int(line.split()[1])
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = (sw, int(f.read().split()[0]) / 1e9)
        except OSError:
            continue
    return out


def precise_cpu(pid: int) -> float:
    """CPU seconds of every live thread of a process, from schedstat (ns resolution)."""
    return sum(cpu for _sw, cpu in thread_stats(pid).values())


def thread_names(pid: int) -> dict[int, str]:
    """TID -> 'Python thread name: innermost frame' from py-spy dump (pauses the process a moment)."""
    try:
        out = subprocess.run([tool("py-spy"), "dump", "--json", "--pid", str(pid)], capture_output=True,
                             text=True, timeout=60).stdout
        threads = json.loads(out)
    except (OSError, ValueError, subprocess.TimeoutExpired, FileNotFoundError):
        return {}
    names = {}
    for t in threads:
        frames = t.get("frames") or []
        where = f"{frames[0]['name']} ({Path(frames[0]['filename']).name}:{frames[0]['line']})" if frames else "?"
        names[int(t.get("os_thread_id") or 0)] = f"{t.get('thread_name') or '?'}: {where}"
    return names


@dataclass
class IdleResult:
    files: int
    dirs: int
    window_s: float
    startup_cpu_s: float
    idle_cpu_s: float
    rss_start: float
    rss_end: float
    others: float
    per_minute: list[float]
    threads: list[tuple[str, int, float]]  # (name, wake-ups, CPU s) over the window
    note: str = ""


def part_idle(args, work: Path, trash: Trash) -> str:
    spec = TreeSpec(args.files, args.dirs)
    src = ensure_tree(work / "trees", spec)
    dst = work / "dst-idle"
    trash.put(dst)
    dst.mkdir()
    state = work / "state-idle"
    if state.exists():
        shutil.rmtree(state)
    log(f"(2) initial sync of {spec.describe()} (not measured) ...")
    d = start_daemon(work, "idle-first", "local", src, str(dst), daemon_settings(args), state=state)
    if wait_indexed(d, spec.files, args.timeout) is None:
        raise RuntimeError(f"the initial sync did not finish:\n{d.proc.log_tail()}")
    d.proc.stop()
    log("(2) restarting on the synced tree; waiting for its start-up scan ...")
    d = start_daemon(work, "idle", "local", src, str(dst), daemon_settings(args, log_level="INFO"), state=state)
    try:
        res = measure_idle(d, spec, args)
    finally:
        d.proc.stop()
    trash.put(dst)
    return report_idle(args, res)


def measure_idle(d: Daemon, spec: TreeSpec, args) -> IdleResult:
    if wait_log(d, r"ready: start-up scans queued", args.timeout) is None:
        raise RuntimeError(f"the daemon never became ready:\n{d.proc.log_tail()}")
    time.sleep(args.settle)
    pid = d.proc.pid
    startup = proc_cpu(pid)
    cpu0, rss0, th0 = precise_cpu(pid), proc_rss_mib(pid), thread_stats(pid)
    meter, t0 = LoadMeter(), time.monotonic()
    strace = start_strace(pid, d.proc.log.with_suffix(".strace")) if args.strace else None
    window = args.minutes * 60
    per_minute, last = [], cpu0
    log(f"(2) measuring {args.minutes:g} min of idle (startup used {cpu0:.2f} CPU s, RSS {rss0:.1f} MiB)")
    while time.monotonic() - t0 < window:
        time.sleep(min(60.0, window - (time.monotonic() - t0)))
        now = precise_cpu(pid)
        per_minute.append(now - last)
        last = now
    cpu1, rss1, th1 = precise_cpu(pid), proc_rss_mib(pid), thread_stats(pid)
    if strace is not None:
        strace.send_signal(signal.SIGINT)
        strace.wait(30)
    others = meter.others_cores(cpu1 - cpu0)
    names = thread_names(pid) if args.pyspy else {}
    threads = []
    for tid, (sw, cpu) in th1.items():
        sw0, c0 = th0.get(tid, (0, 0.0))
        threads.append((names.get(tid, f"tid {tid}"), sw - sw0, cpu - c0))
    threads.sort(key=lambda t: -t[1])
    return IdleResult(spec.files, spec.dirs, time.monotonic() - t0, startup, cpu1 - cpu0, rss0, rss1, others,
                      per_minute, threads)


def start_strace(pid: int, out: Path) -> subprocess.Popen | None:
    """strace -f -c on the daemon: system calls by type over the idle window (what wakes it)."""
    exe = shutil.which("strace")
    if exe is None:
        log("strace not installed (apt-get install strace): no system call counts")
        return None
    p = subprocess.Popen([exe, "-f", "-c", "-p", str(pid), "-o", str(out)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p


def report_idle(args, r: IdleResult) -> str:
    minutes = r.window_s / 60
    verdict = "MET" if r.idle_cpu_s < 1.0 * minutes / 10 else "MISSED"
    woken = [t for t in r.threads if t[1] > max(2, minutes * 1.5)]
    rows = [[name, f"{sw:,}", f"{sw / minutes:.1f}", f"{cpu * 1000:.1f}"] for name, sw, cpu in r.threads]
    out = [f"The daemon (local target, workers {args.workers}) synced {r.files:,} empty files in {r.dirs:,} leaf "
           f"folders, was stopped and started again on the synced tree; {args.settle:g} s after its start-up scan "
           f"said 'ready', CPU (time on the CPU of every thread, from /proc/PID/task/TID/schedstat, in ns) and RSS were read, then again {minutes:.1f} "
           "minutes later with nothing changing on disk. Wake-ups = context switches per thread "
           "(/proc/PID/task/TID/status), names from py-spy dump.", "",
           table(["figure", "value"], [
               ["start-up CPU s (imports, restart scan of the synced tree)", f"{r.startup_cpu_s:.2f}"],
               [f"idle CPU s over {minutes:.1f} min", f"{r.idle_cpu_s:.4f}"],
               ["idle CPU ms per minute", " / ".join(f"{x * 1000:.1f}" for x in r.per_minute)],
               ["RSS at start / end of the idle window, MiB", f"{r.rss_start:.1f} / {r.rss_end:.1f}"],
               ["others (cores)", f"{r.others:.2f}"]]), "",
           f"Target: under 1 CPU-second in 10 minutes: {verdict} ({r.idle_cpu_s:.4f} s in {minutes:.1f} min).", "",
           "Threads over the idle window:", "", table(["thread", "wake-ups", "per minute", "CPU ms"], rows), ""]
    if woken:
        out.append("Woken more than about once a minute: " + "; ".join(f"{n} ({sw / minutes:.1f}/min)"
                                                                       for n, sw, _ in woken) + ".")
    else:
        out.append("No thread woke more than about once a minute.")
    out.append("")
    return "\n".join(out)


# -- (3) watching 100,000 folders ------------------------------------------------------------------
WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


def inotify_watches(pid: int) -> tuple[int, set[int]]:
    """(watches, watched inode numbers) of a process, from /proc/PID/fdinfo of its inotify descriptors."""
    n, inos = 0, set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("inotify wd:"):
                        n += 1
                        inos.add(int(line.split("ino:")[1].split()[0], 16))
        except (OSError, IndexError, ValueError):
            continue
    return n, inos


def watches_by_uid() -> dict[int, int]:
    """inotify watches in use per user id (the limit is per user)."""
    used: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
            n, _ = inotify_watches(int(pid))
        except OSError:
            continue
        if n:
            used[uid] = used.get(uid, 0) + n
    return used


class WatchLimit:
    """Sets fs.inotify.max_user_watches for a while and always puts the original back
    (on exceptions, and on SIGTERM/SIGINT through the handlers main() installs)."""

    def __init__(self) -> None:
        self.original = int(WATCHES.read_text())

    def set(self, value: int) -> None:
        WATCHES.write_text(f"{value}\n")
        log(f"fs.inotify.max_user_watches = {value} (was {self.original})")

    def restore(self) -> None:
        if int(WATCHES.read_text()) != self.original:
            WATCHES.write_text(f"{self.original}\n")
            log(f"fs.inotify.max_user_watches restored to {self.original}")

    def __enter__(self) -> "WatchLimit":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def folders_of(root: Path) -> list[str]:
    """Every folder under root, root included, in walk order."""
    return [d for d, _subs, _files in os.walk(root)]


def bench_inotify_baseline(folders: list[str]) -> tuple[float, float]:
    """The floor: this process adds one watch per folder with the raw inotify call (wall s, CPU s)."""
    ino = Inotify()
    t0, c0 = time.monotonic(), time.thread_time()
    try:
        for d in folders:
            ino.add(d, IN_CLOSE_WRITE | IN_MOVED_TO)
        return time.monotonic() - t0, time.thread_time() - c0
    finally:
        ino.close()


@dataclass
class WatchRun:
    folders: int
    baseline_s: float
    baseline_cpu: float
    first_watch_s: float
    watch_s: float
    ready_s: float
    cpu_at_ready: float
    rss_at_ready: float
    others: float
    note: str = ""


def part_watches(args, work: Path, trash: Trash) -> str:
    spec = TreeSpec(0, args.folders)
    src = ensure_tree(work / "trees", spec)
    folders = folders_of(src)
    limits = WatchLimit()
    used = watches_by_uid()
    log(f"(3) {len(folders):,} folders; watches in use per uid: {used}; limit {limits.original:,}")
    with limits:
        if limits.original - sum(used.values()) < len(folders) + 20_000:
            limits.set(sum(used.values()) + len(folders) + 50_000)  # raising never hurts anybody else
        run = watch_skynet(args, work, src, folders, trash)
    out = report_watches(args, run, limits.original)
    if args.low_limit:
        out += "\n" + low_limit_test(args, work, src, folders, trash)
    return out


def watch_skynet(args, work: Path, src: Path, folders: list[str], trash: Trash) -> WatchRun:
    base_s, base_cpu = bench_inotify_baseline(folders)
    log(f"(3) baseline: raw inotify_add_watch on {len(folders):,} folders: {base_s:.2f} s, {base_cpu:.2f} CPU s")
    dst = work / "dst-watch"
    trash.put(dst)
    dst.mkdir()
    meter, t0 = LoadMeter(), time.monotonic()
    d = start_daemon(work, "watch", "local", src, str(dst), daemon_settings(args, log_level="INFO"))
    t_first = t_full = None
    note = ""
    try:
        while time.monotonic() - t0 < args.timeout and d.proc.alive():
            n, _ = inotify_watches(d.proc.pid)
            if n and t_first is None:
                t_first = time.monotonic()
            if n >= len(folders):
                t_full = time.monotonic()
                break
            time.sleep(0.1)
        t_ready = wait_log(d, r"ready: start-up scans queued", args.timeout)
        cpu, rss = (d.proc.cpu_now(), proc_rss_mib(d.proc.pid)) if d.proc.alive() else (float("nan"), float("nan"))
        others = meter.others_cores(cpu if cpu == cpu else 0.0)
    finally:
        d.proc.stop()
        trash.put(dst)
    if t_full is None or t_ready is None:
        note = f"watches complete: {t_full is not None}, ready: {t_ready is not None}"
        log(f"(3) {note}\n{d.proc.log_tail()}")
    run = WatchRun(len(folders), base_s, base_cpu, (t_first or t0) - t0, (t_full or time.monotonic()) - (t_first or t0),
                   (t_ready or time.monotonic()) - t0, cpu, rss, others, note)
    log(f"(3) skynet: first watch {run.first_watch_s:.1f} s after exec, all {run.folders:,} watched "
        f"{run.watch_s:.1f} s later, ready at {run.ready_s:.1f} s, CPU {cpu:.1f} s, RSS {rss:.1f} MiB, "
        f"others {others:.2f} cores")
    return run


def report_watches(args, r: WatchRun, original_limit: int) -> str:
    return "\n".join([
        f"A tree of {r.folders:,} folders (empty; {args.folders:,} leaves nested 100 to a level), fresh state, local "
        "target. Watch counts read from /proc/PID/fdinfo of the daemon's inotify descriptor every 0.1 s. "
        f"fs.inotify.max_user_watches here: {original_limit:,} (raised for this run if the free watches were short).",
        "",
        table(["figure", "value"], [
            ["raw inotify_add_watch from this bench, every folder (the floor): wall / CPU s",
             f"{r.baseline_s:.2f} / {r.baseline_cpu:.2f}"],
            ["skynet: exec -> first watch (imports, state, connection), s", f"{r.first_watch_s:.1f}"],
            [f"skynet: first watch -> all {r.folders:,} watched, s", f"{r.watch_s:.1f}"],
            ["skynet: exec -> 'ready' (start-up scan done), s", f"{r.ready_s:.1f}"],
            ["skynet CPU s at ready / RSS MiB at ready", f"{r.cpu_at_ready:.1f} / {r.rss_at_ready:.1f}"],
            ["others (cores)", f"{r.others:.2f}"]]),
        "", f"{'Note: ' + r.note if r.note else ''}"])


def low_limit_test(args, work: Path, src: Path, folders: list[str], trash: Trash) -> str:
    """The daemon runs as an unprivileged user, whose watch count starts at 0, with the limit
    below the folder count; the limit stays far above what other users (root: the rest of
    this machine's work) have in use, and goes back once the fallback has been measured."""
    sys.path.insert(0, str(REPO))
    from tests.server_sshd import ensure_user

    user = ensure_user()
    used = watches_by_uid()
    limit = max(args.low_limit, 2 * max(used.values(), default=0) + 20_000)
    if limit >= len(folders):
        return f"Low-limit test skipped: a limit of {limit:,} (kept above other users' needs) is not below {len(folders):,}."
    dst, state = work / "dst-lowlimit", work / "state-lowlimit"
    trash.put(dst)
    shutil.rmtree(state, ignore_errors=True)
    for p in (dst, state):
        p.mkdir()
        os.chown(p, user.pw_uid, user.pw_gid)
    settings = daemon_settings(args, log_level="INFO", poll_interval=f"{args.poll_interval:g}")
    wrapper = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", PY]
    limits = WatchLimit()
    with limits:
        limits.set(limit)
        t0 = time.monotonic()
        d = start_daemon(work, "lowlimit", "local", src, str(dst), settings, state=state, wrapper=wrapper,
                         env=dict(os.environ, HOME=str(state)))
        try:
            t_err = wait_log(d, r"cannot watch", 300)
            t_sum = wait_log(d, r"folder\(s\) of .* are not watched", 300)  # every folder has been tried
            wait_log(d, r"ready: start-up scans queued", 300)
            watched, inos = inotify_watches(d.proc.pid)
            rows = probe_fallback(args, d, src, dst, folders, inos)
            limits.restore()
            rows += probe_recovery(args, d, src, dst, folders, inos)
        finally:
            d.proc.stop()
            trash.put(dst)
    lines = [ln for ln in d.log_text().splitlines() if "not watched" in ln or "cannot watch" in ln
             or "watched again" in ln][:4]
    return "\n".join([
        f"**Watch limit too low.** The daemon ran as the unprivileged user {user.pw_name!r} (its own per-user count "
        f"starts at 0) with fs.inotify.max_user_watches = {limit:,} for {len(folders):,} folders, poll_interval = "
        f"{args.poll_interval:g} s; after the fallback was measured the original limit was put back.", "",
        table(["figure", "value"], [
            ["folders watched / not watched", f"{watched:,} / {len(folders) - watched:,}"],
            ["exec -> first error / -> summary (every folder tried), s",
             " / ".join("never" if t is None else f"{t - t0:.1f}" for t in (t_err, t_sum))],
            *rows]), "",
        "What the log said:", "", "```", *lines, "```", ""])


def probe_fallback(args, d: Daemon, src: Path, dst: Path, folders: list[str], inos: set[int]) -> list[list[str]]:
    """At the low limit: a new file in a watched and in an unwatched folder, how long until each
    is in the target; then the CPU the polling fallback costs while nothing changes."""
    # watchdog adds watches in os.walk order, so the first folders are watched and the last ones not
    watched = next((f for f in folders[1:] if os.stat(f).st_ino in inos), None)
    unwatched = next((f for f in reversed(folders) if os.stat(f).st_ino not in inos), None)
    rows = [arrival_row(args, src, dst, folder, label) for label, folder in (("a watched", watched),
                                                                             ("an unwatched", unwatched))]
    polls = 3
    c0 = proc_cpu(d.proc.pid)
    time.sleep(polls * args.poll_interval)
    rows.append([f"daemon CPU s per {args.poll_interval:g} s poll while nothing changes (average of {polls})",
                 f"{(proc_cpu(d.proc.pid) - c0) / polls:.2f}"])
    return rows


def probe_recovery(args, d: Daemon, src: Path, dst: Path, folders: list[str], inos: set[int]) -> list[list[str]]:
    """The limit is raised again: how soon the daemon watches every folder, and whether a
    change in a formerly unwatched folder then arrives at once."""
    t0 = time.monotonic()
    t_back = wait_log(d, r"every folder is watched again", 3 * args.poll_interval + 60)
    n, _ = inotify_watches(d.proc.pid)
    unwatched = next((f for f in reversed(folders) if os.stat(f).st_ino not in inos), None)
    return [["limit raised -> 'every folder is watched again', s", "never" if t_back is None else f"{t_back - t0:.1f}"],
            ["folders watched then", f"{n:,} of {len(folders):,}"],
            arrival_row(args, src, dst, unwatched, "a formerly unwatched", "recovered")]


def arrival_row(args, src: Path, dst: Path, folder: str | None, label: str, tag: str = "") -> list[str]:
    """Write a file into `folder` of the source; the seconds until it is in the target."""
    if folder is None:
        return [f"new file in {label} folder", "no such folder"]
    rel = os.path.relpath(os.path.join(folder, f"probe-{label.split()[-1]}{tag}.txt"), src)
    with open(src / rel, "w") as f:
        f.write(label)
    t0 = time.monotonic()
    while not (dst / rel).exists() and time.monotonic() - t0 < 3 * args.poll_interval + 30:
        time.sleep(0.05)
    seen = (dst / rel).exists()
    os.unlink(src / rel)
    return [f"new file in {label} folder: close -> in the target, s", f"{time.monotonic() - t0:.2f}" if seen else "never"]


# -- (4) latency during a large upload (S3) ----------------------------------------------------
class ArrivalWatcher:
    """Watches the S3 server's data folders: `rclone serve s3` writes each object to a
    temporary name and renames it to its key (IN_MOVED_TO), so the rename is the moment
    the object exists on the server. A multipart upload in progress shows as a
    `.rclone_temp_multipart_*` file beside where the object will be."""

    def __init__(self, folders: list[Path]) -> None:
        self.ino = Inotify()
        for f in folders:
            self.ino.add(str(f), IN_MOVED_TO | 0x100)  # IN_CREATE: the multipart temp file
        self.seen: dict[tuple[str, str], float] = {}
        self.multipart_started: float | None = None
        self.overflow = False

    def poll(self, timeout_ms: int) -> None:
        for folder, mask, name in self.ino.read(timeout_ms):
            t = time.monotonic()
            if mask & IN_Q_OVERFLOW:
                self.overflow = True
            elif mask & IN_MOVED_TO:
                self.seen.setdefault((os.fsdecode(folder), os.fsdecode(name)), t)
            elif name.startswith(b".rclone_temp_multipart") and self.multipart_started is None:
                self.multipart_started = t

    def close(self) -> None:
        self.ino.close()


def write_big(path: Path, mib: int) -> float:
    """A file of `mib` MiB of incompressible data; returns the time of its close()."""
    block = os.urandom(8 * MIB)
    with open(path, "wb") as f:
        for i in range(0, mib, 8):
            f.write(block[: min(8, mib - i) * MIB])
    return time.monotonic()


@dataclass
class LatencyResult:
    lat_ms: list[float]
    missing: int
    in_upload: int
    big_mib: int
    big_seconds: float
    big_started_after: float
    daemon_cpu: float
    server_cpu: float
    others: float
    note: str = ""


def part_latency(args, work: Path, trash: Trash) -> str:
    sys.path.insert(0, str(REPO))
    from tests.server_s3 import run_rclone_s3

    src = work / "lat-src"
    trash.put(src)
    dirs = [f"d{i:02d}" for i in range(args.dirs)] + ["big"]
    for d in dirs:
        (src / d).mkdir(parents=True)
        (src / d / "seed").write_text(d)  # so every remote folder exists before the timing starts
    server_dir = Path(args.server_dir) / "s3-lat" if args.server_dir else work / "s3-lat"
    shutil.rmtree(server_dir, ignore_errors=True)
    with run_rclone_s3(server_dir) as srv:
        bucket = srv.new_bucket("lat")
        d = start_daemon(work, "lat", "s3", src, "lat", daemon_settings(args),
                         service_opts=service_options(args, srv.service_config(bucket)))
        try:
            if wait_indexed(d, len(dirs), 120, every=0.2) is None:
                raise RuntimeError(f"the seed files never arrived:\n{d.proc.log_tail()}")
            res = latency_run(args, d, srv, src, srv.data_dir / bucket / "lat", dirs)
        finally:
            d.proc.stop()
    trash.put(src)
    shutil.rmtree(server_dir, ignore_errors=True)
    return report_latency(args, res)


def latency_run(args, d: Daemon, srv, src: Path, remote: Path, dirs: list[str]) -> LatencyResult:
    watcher = ArrivalWatcher([remote / x for x in dirs])
    small = dirs[:-1]
    meter = LoadMeter()
    cpu0, srv0 = d.proc.cpu_now(), proc_cpu(srv.pid)
    t_big_closed = write_big(src / "big" / "big.bin", args.big_mib)
    deadline = time.monotonic() + 60
    while watcher.multipart_started is None and time.monotonic() < deadline:
        watcher.poll(50)
    started_after = (watcher.multipart_started or time.monotonic()) - t_big_closed
    log(f"(4) the {args.big_mib} MiB upload started {started_after:.2f} s after its close; writing "
        f"{args.files} small files at {args.rate:g}/s")
    t_close: dict[tuple[str, str], float] = {}
    names = [(str(remote / small[i % len(small)]), f"s{i:05d}.dat") for i in range(args.files)]

    def writer() -> None:
        t_start = time.monotonic() + 0.05
        for i, (folder, name) in enumerate(names):
            delay = t_start + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with open(src / Path(folder).name / name, "wb") as f:
                f.write(f"{i}:".encode() + os.urandom(args.size - 8))
            t_close[(folder, name)] = time.monotonic()

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    big_key = (str(remote / "big"), "big.bin")
    end = time.monotonic() + args.files / args.rate + 120
    while time.monotonic() < end:
        watcher.poll(20)
        if not w.is_alive() and all(k in watcher.seen for k in names) and big_key in watcher.seen:
            break
    w.join()
    cpu, server_cpu = d.proc.cpu_now() - cpu0, proc_cpu(srv.pid) - srv0
    others = meter.others_cores(cpu + server_cpu)
    watcher.close()
    t_big_done = watcher.seen.get(big_key)
    lat = [(watcher.seen[k] - t_close[k]) * 1000 for k in names if k in watcher.seen and k in t_close]
    in_upload = sum(1 for k in names if k in watcher.seen and t_big_done and watcher.seen[k] < t_big_done)
    note = "; ".join(x for x in ("inotify overflow in the bench's watcher" if watcher.overflow else "",
                                 "the large file never arrived" if t_big_done is None else "") if x)
    big_s = (t_big_done - t_big_closed) if t_big_done else float("nan")
    res = LatencyResult(lat, len(names) - len(lat), in_upload, args.big_mib, big_s, started_after, cpu, server_cpu,
                        others, note)
    log(f"(4) p50 {percentile(lat, 50):.0f} ms, p99 {percentile(lat, 99):.0f} ms, max {max(lat, default=0):.0f} ms, "
        f"missing {res.missing}, {in_upload} arrived while the large upload ran ({big_s:.1f} s close -> on the "
        f"server), others {others:.2f} cores")
    return res


def report_latency(args, r: LatencyResult) -> str:
    p99 = percentile(r.lat_ms, 99)
    rows = [["p50 / p90 / p99 / max, ms", " / ".join(f"{percentile(r.lat_ms, p):.0f}" for p in (50, 90, 99))
             + f" / {max(r.lat_ms, default=float('nan')):.0f}"],
            ["small files missing", str(r.missing)],
            ["small files that arrived while the large upload was still running", f"{r.in_upload} of {args.files}"],
            [f"large file: close -> multipart upload started / -> on the server, s",
             f"{r.big_started_after:.2f} / {r.big_seconds:.1f} ({r.big_mib / r.big_seconds:.0f} MiB/s)"],
            ["CPU s: daemon / S3 server, over the run", f"{r.daemon_cpu:.1f} / {r.server_cpu:.1f}"],
            ["others (cores)", f"{r.others:.2f}"]]
    return "\n".join([
        f"The daemon (S3 to `rclone serve s3` on 127.0.0.1, workers {args.workers}, default [s3] settings) is "
        f"synced and idle; a {args.big_mib} MiB file is written into the source; once its multipart upload has "
        f"started (a temporary multipart file appears in the server's data folder), {args.files:,} files of "
        f"{args.size} bytes are written at {args.rate:g}/s over {args.dirs} folders. Latency = the writer's close() "
        "-> the object's final name appearing in the server's data folder (rclone serve s3 writes a temporary file "
        "and renames it when the PUT completes), seen by inotify in the bench.", "",
        table(["figure", "value"], rows), "",
        f"Target p99 < 1 s: {'MET' if p99 < 1000 and not r.missing else 'MISSED'} (p99 {p99:.0f} ms)."
        + (f" Note: {r.note}." if r.note else ""), ""])


# -- (5) throughput of an initial sync of small files ---------------------------------------------
@dataclass
class TpRun:
    tool: str
    target: str
    files: int
    bytes: int
    seconds: float
    cpu_s: float
    rss_mib: float
    server_cpu: float
    others: float
    ok: bool
    note: str = ""

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0


def tp_skynet(args, work: Path, service: str, src: Path, target: str, opts: dict[str, str], n: int,
              server_cpu: Callable[[], float]) -> TpRun:
    """The daemon's initial sync: exec -> its Index holds every file."""
    meter, s0, t0 = LoadMeter(), server_cpu(), time.monotonic()
    d = start_daemon(work, f"tp-{service}", service, src, target, daemon_settings(args), service_opts=opts)
    t_end = wait_indexed(d, n, args.timeout, every=0.5)
    seconds = (t_end or time.monotonic()) - t0
    cpu = d.proc.cpu_now() if d.proc.alive() else float("nan")
    srv = server_cpu() - s0
    others = meter.others_cores((cpu if cpu == cpu else 0.0) + srv)
    u = d.proc.stop()
    note = "" if t_end else "not complete: " + d.proc.log_tail(600)
    return TpRun("skynet", service, n, 0, seconds, u.cpu_s, u.maxrss_mib, srv, others, t_end is not None, note)


def part_throughput(args, work: Path, trash: Trash) -> str:
    spec = TreeSpec(args.files, max(1, args.files // args.per_dir), args.min_kib << 10, args.max_kib << 10)
    src = ensure_tree(work / "trees", spec)
    size = sum(e.stat().st_size for d, _s, fs in os.walk(src) for e in os.scandir(d) if e.is_file())
    runs: list[TpRun] = []
    targets = args.targets.split(",")
    if "s3" in targets:
        runs += tp_s3(args, work, src, spec.files, trash)
    if "sftp" in targets:
        runs += tp_sftp(args, work, src, spec.files, trash)
    for r in runs:
        r.bytes = size
    return report_throughput(args, spec, runs)


def tp_s3(args, work: Path, src: Path, n: int, trash: Trash) -> list[TpRun]:
    sys.path.insert(0, str(REPO))
    from tests.server_s3 import run_rclone_s3
    import s3_peers

    runs = []
    trash.put(work / "s3-tp")
    with run_rclone_s3(work / "s3-tp") as srv:
        bucket = srv.new_bucket("tp")
        t = s3_peers.S3Target(srv.endpoint_url, srv.access_key, srv.secret_key, bucket, srv.region)
        server_cpu = lambda: proc_cpu(srv.pid)  # noqa: E731
        for name in args.tools.split(","):
            prefix = f"{name}-{int(time.time())}"
            log(f"(5) {name} -> S3 ...")
            if name == "skynet":
                r = tp_skynet(args, work, "s3", src, prefix, service_options(args, srv.service_config(bucket)), n,
                              server_cpu)
            elif name in ("rclone", "s5cmd"):
                meter, s0 = LoadMeter(), server_cpu()
                pr = (s3_peers.rclone_copy(t, src, prefix, work / "rclone-s3.log", transfers=16) if name == "rclone"
                      else s3_peers.s5cmd_cp(t, src, prefix, work / "s5cmd-s3.log"))
                srv_cpu = server_cpu() - s0
                r = TpRun(f"rclone --transfers 16" if name == "rclone" else "s5cmd (defaults)", "s3", n, 0,
                          pr.seconds, pr.cpu_s, pr.peak_rss_mib, srv_cpu, meter.others_cores(pr.cpu_s + srv_cpu),
                          pr.returncode == 0, "" if pr.returncode == 0 else f"exit {pr.returncode}")
            else:
                continue
            got = count_files(srv.data_dir / bucket / prefix)
            if got != n:
                r.ok, r.note = False, (r.note + f" {got:,} of {n:,} objects on the server").strip()
            log(f"(5) {r.tool} -> S3: {r.files_per_s:,.0f} files/s, CPU {r.cpu_s:.1f} s, server CPU "
                f"{r.server_cpu:.1f} s, RSS {r.rss_mib:.0f} MiB, others {r.others:.2f}{'' if r.ok else ' ' + r.note}")
            runs.append(r)
            trash.put(srv.data_dir / bucket / prefix)
    return runs


def tp_sftp(args, work: Path, src: Path, n: int, trash: Trash) -> list[TpRun]:
    sys.path.insert(0, str(REPO))
    from tests.server_sshd import run_sshd
    import sftp_peers

    runs = []
    with run_sshd(work / "sshd-tp") as srv:
        server = sftp_peers.Server(srv.host, srv.port, srv.user, srv.key_file, srv.known_hosts, srv.root,
                                   sshd_pid=srv.pid)
        for name in args.tools.split(","):
            if name == "s5cmd":
                continue
            dest = srv.fresh_folder("tp")
            log(f"(5) {name} -> SFTP ...")
            if name == "skynet":
                with sftp_peers.SessionCPU(srv.pid) as sessions:
                    r = tp_skynet(args, work, "sftp", src, dest, service_options(args, srv.service()), n,
                                  lambda: (sessions.sample(), sessions.total or 0.0)[1])
            elif name == "rclone":
                meter = LoadMeter()
                res = sftp_peers.rclone_copy(server, src, dest, hashcheck=not args.sftp_nohash, transfers=16)
                r = TpRun(res.name, "sftp", n, 0, res.seconds, res.cpu_s, res.peak_rss_mib, res.server_cpu_s or 0.0,
                          meter.others_cores(res.cpu_s + (res.server_cpu_s or 0.0)), res.ok, res.note)
            else:
                continue
            got = count_files(Path(dest))
            if got != n:
                r.ok, r.note = False, (r.note + f" {got:,} of {n:,} files on the server").strip()
            log(f"(5) {r.tool} -> SFTP: {r.files_per_s:,.0f} files/s, CPU {r.cpu_s:.1f} s, sshd CPU "
                f"{r.server_cpu:.1f} s, RSS {r.rss_mib:.0f} MiB, others {r.others:.2f}{'' if r.ok else ' ' + r.note}")
            runs.append(r)
            trash.put(Path(dest))
    return runs


def report_throughput(args, spec: TreeSpec, runs: list[TpRun]) -> str:
    rows = [[r.target, r.tool, f"{r.files_per_s:,.0f}", f"{r.bytes / r.seconds / 1e6:.1f}", f"{r.seconds:.0f}",
             f"{r.cpu_s:.1f}", f"{r.cpu_s / r.files * 1e6:.0f}", f"{r.server_cpu:.1f}", f"{r.rss_mib:.0f}",
             f"{r.others:.2f}", "yes" if r.ok else "NO: " + r.note] for r in runs]
    out = [f"Initial sync of {spec.describe()} ({spec.files // max(1, spec.dirs)} per folder, "
           f"{runs[0].bytes / 1e9 if runs else 0:.2f} GB) into an empty bucket prefix / remote folder. skynet: the "
           f"daemon (workers {args.workers}, default service settings), exec -> its Index holds every file; the "
           "others: exec -> exit. Server CPU: `rclone serve s3`, or sshd's session processes.", "",
           table(["target", "tool", "files/s", "MB/s", "seconds", "CPU s", "CPU us/file", "server CPU s",
                  "peak RSS MiB", "others (cores)", "complete"], rows), ""]
    for target in ("s3", "sftp"):
        sk = next((r for r in runs if r.target == target and r.tool == "skynet"), None)
        rc = next((r for r in runs if r.target == target and r.tool.startswith("rclone")), None)
        if sk and rc:
            ratio = sk.files_per_s / rc.files_per_s
            out.append(f"- {target}: skynet {sk.files_per_s:,.0f} files/s vs {rc.tool} {rc.files_per_s:,.0f}: ratio "
                       f"{ratio:.2f}; target >= 1.00: {'MET' if ratio >= 1 else 'MISSED'}.")
    out.append("")
    return "\n".join(out)


# -- report plumbing --------------------------------------------------------------------------
def machine_line() -> str:
    info = machine_info()
    keep = ("nproc", "cpu", "memory", "kernel", "os", "python", "filesystem (/tmp)", "rclone")
    return "Machine: " + ", ".join(f"{k} {info[k]}" for k in keep) + f". Date: {info['date']}."


CODE_PATHS = ("skynet", "connections", "main.py")


def code_state() -> str:
    """The last commit that changed the engine (not HEAD: a bench-only commit changes nothing
    measured), plus a digest of uncommitted engine changes, as common.git_state gives it."""
    state = git_state(CODE_PATHS)
    try:
        last = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h", "--", *CODE_PATHS],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return state
    return last + state[state.index(" "):] if " " in state else (last or state)


def update_part(path: Path, part_title: str, body: str) -> None:
    """Replace one '### ' subsection of the '## Issue 8: scale' section, keeping the others."""
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines()
    head = f"## {SECTION}"
    start = next((i for i, ln in enumerate(lines) if ln.strip() == head), None)
    old = []
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        old = lines[start + 1:end]
    intro, parts = _split_parts(old)
    while intro and not intro[0].strip():
        intro.pop(0)
    while intro and not intro[-1].strip():
        intro.pop()
    intro += [""] if intro else []
    parts[part_title] = body.rstrip().splitlines()
    if not intro:
        intro = ["Written by `bench/run scale PART` (bench/scale_bench.py); each part below says when and how it ran, "
                 "on which code, and how busy the machine was (2 cores shared with other work: 'others' = cores "
                 "busy with other processes during the measurement).", ""]
    ordered = sorted(parts, key=lambda t: t.split(")")[0])
    new = intro + [ln for t in ordered for ln in [f"### {t}", ""] + parts[t] + [""]]
    write_section(path, SECTION, "\n".join(new))


def _split_parts(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    intro, parts, cur = [], {}, None
    for ln in lines:
        if ln.startswith("### "):
            cur = ln[4:].strip()
            parts[cur] = []
        elif cur is None:
            intro.append(ln)
        else:
            parts[cur].append(ln)
    for k in parts:
        while parts[k] and not parts[k][0].strip():
            parts[k].pop(0)
    return intro, parts


PART_TITLES = {
    "rss": "(1) Peak RSS of the start-up scan and initial sync",
    "idle": "(2) Idle: a daemon watching a quiet tree",
    "watches": "(3) Watching a tree of many folders",
    "latency": "(4) Latency of small files during a large upload (S3)",
    "throughput": "(5) Initial sync of small files: files/s to S3 and SFTP",
}


def part_title(args) -> str:
    title = PART_TITLES[args.part]
    if args.part == "rss" and args.dirs:
        title = title.replace("(1)", "(1b)") + f", {args.dirs:,} folders for every tree size"
    if args.part == "throughput" and args.targets in ("s3", "sftp"):
        title = title.replace("(5)", "(5)" if args.targets == "s3" else "(5b)").replace("S3 and SFTP", args.targets.upper())
    if args.part == "latency" and (args.server_dir or args.prelude):
        title = title.replace("(4)", "(4b)" if args.server_dir else "(4c)") + (
            f", S3 server's data in {args.server_dir}" if args.server_dir else f", with {Path(args.prelude).name}")
    elif args.part == "latency" and args.big_mib != 1024:
        # a file big enough that every small file is written while it uploads
        title = title.replace("(4)", "(4d)") + f", {args.big_mib:,} MiB large file"
    return title


def finish_part(args, part: str, body: str, code_at_start: str) -> None:
    code_now = code_state()
    code = code_now if code_now == code_at_start else f"{code_at_start} at the start, {code_now} at the end (rerun)"
    cmd = "bench/run scale " + " ".join(shlex.quote(a) for a in args.argv)
    text = f"{machine_line()} skynet: git {code}.\n\nReproduce: `{cmd}`\n\n{body}"
    title = part_title(args)
    print(f"\n### {title}\n\n{text}")
    if not args.no_write:
        update_part(Path(args.results), title, text)
        log(f"wrote '{title}' in {args.results}")


# -- main ---------------------------------------------------------------------------------------
def common_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--workdir", default="/var/tmp/skynet-scale-bench",
                    help="trees (kept for the next run), targets, states and logs (default /var/tmp/skynet-scale-bench)")
    ap.add_argument("--workers", type=int, default=8, help="skynet workers (default 8)")
    ap.add_argument("--log-level", default="WARNING", help="skynet log_level (default WARNING)")
    ap.add_argument("--skynet-option", action="append", metavar="KEY=VALUE", help="extra [skynet] setting (repeatable)")
    ap.add_argument("--service-option", action="append", metavar="KEY=VALUE",
                    help="extra [s3] / [sftp] setting for the daemon (repeatable)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="give up on one run after this many seconds")
    ap.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="markdown file to update")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--prelude", metavar="FILE",
                    help="for experiments: the daemon runs this Python file before main.py (e.g. to try a change "
                         "to the engine without editing it); the reproduce line names it")
    ap.add_argument("--nice", type=int, default=-5,
                    help="run the bench and every tool at this nice value (root only; default -5; 0 leaves it)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench/run scale", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="part", required=True)
    p = sub.add_parser("rss", help="(1) peak RSS of the initial sync, skynet vs rclone")
    common_options(p)
    p.add_argument("--counts", default="100000,1000000", help="tree sizes, comma-separated (default 100000,1000000)")
    p.add_argument("--per-dir", type=int, default=100, help="files per leaf folder (default 100)")
    p.add_argument("--dirs", type=int, default=0,
                   help="instead: this many leaf folders whatever the file count (memory per file, not per folder); "
                        "reported in a subsection of its own")
    p.add_argument("--tools", default="skynet,rclone", help="skynet,rclone (default both)")
    p.add_argument("--memstats", action="store_true",
                   help="log where skynet's memory is (RSS, malloc heap in use / free, SQLite's allocations) into "
                        "WORKDIR/memstats-*.txt (cheap)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="--memstats plus tracemalloc: the Python lines holding the most memory and their growth "
                        "(slower, more memory: not for the figures)")
    p.add_argument("--memstats-every", type=float, default=30.0, help="seconds between memory reports (default 30)")
    p = sub.add_parser("idle", help="(2) CPU and wake-ups of a daemon watching a quiet tree")
    common_options(p)
    p.add_argument("--files", type=int, default=100_000, help="files in the tree (default 100000)")
    p.add_argument("--dirs", type=int, default=5_000, help="leaf folders they are spread over (default 5000)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the idle window (default 10)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after 'ready' before the window opens")
    p.add_argument("--no-pyspy", dest="pyspy", action="store_false", help="do not name threads with py-spy dump")
    p.add_argument("--strace", action="store_true", help="also count system calls with strace -f -c (in the log folder)")
    p = sub.add_parser("watches", help="(3) time to watch 100,000 folders; a watch limit that is too low")
    common_options(p)
    p.add_argument("--folders", type=int, default=100_000, help="leaf folders (default 100000)")
    p.add_argument("--low-limit", type=int, default=40_000,
                   help="fs.inotify.max_user_watches for the too-low test (raised to keep other users' headroom; "
                        "0 skips the test; default 40000); the original value is always put back")
    p.add_argument("--poll-interval", type=float, default=10.0, help="the daemon's poll_interval in that test")
    p = sub.add_parser("latency", help="(4) S3: latency of small files while a large file uploads")
    common_options(p)
    p.add_argument("--big-mib", type=int, default=1024, help="size of the large file (default 1024 MiB)")
    p.add_argument("--files", type=int, default=1000, help="small files written (default 1000)")
    p.add_argument("--rate", type=float, default=100.0, help="small files per second (default 100)")
    p.add_argument("--size", type=int, default=4096, help="bytes per small file (default 4096)")
    p.add_argument("--dirs", type=int, default=10, help="folders the small files go to (default 10)")
    p.add_argument("--server-dir", help="where the S3 server keeps its data (default: in --workdir; e.g. /dev/shm "
                                        "to take its disk writes out of the picture)")
    p = sub.add_parser("throughput", help="(5) files/s of an initial sync to S3 and SFTP, skynet vs rclone, s5cmd")
    common_options(p)
    p.add_argument("--files", type=int, default=100_000, help="files (default 100000)")
    p.add_argument("--per-dir", type=int, default=100, help="files per leaf folder (default 100)")
    p.add_argument("--min-kib", type=int, default=1, help="smallest file, KiB (default 1)")
    p.add_argument("--max-kib", type=int, default=64, help="largest file, KiB (default 64)")
    p.add_argument("--targets", default="s3,sftp", help="s3,sftp (default both)")
    p.add_argument("--tools", default="skynet,rclone,s5cmd", help="skynet,rclone,s5cmd (s5cmd: S3 only)")
    p.add_argument("--sftp-nohash", action="store_true", help="rclone to SFTP with --sftp-disable-hashcheck")
    p = sub.add_parser("all", help="every part, in order, with its defaults (--quick: small sizes)")
    common_options(p)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the whole benchmark")
    return ap


PARTS: dict[str, Callable] = {"rss": part_rss, "idle": part_idle, "watches": part_watches, "latency": part_latency,
                              "throughput": part_throughput}
QUICK = {"rss": ["--counts", "2000,20000"], "idle": ["--files", "5000", "--dirs", "250", "--minutes", "0.5"],
         "watches": ["--folders", "5000", "--low-limit", "0"], "latency": ["--big-mib", "128", "--files", "200"],
         "throughput": ["--files", "1000", "--sftp-nohash"]}


def run_all(args) -> int:
    """Each part in turn, as its own command (its own subsection and reproduce line)."""
    passthrough = [a for a in args.argv[1:] if a != "--quick"]
    rc = 0
    for part in PARTS:
        rc |= main([part, *passthrough, *(QUICK[part] if args.quick else [])])
    return rc


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.part == "all":
        return run_all(args)
    global PRELUDE
    PRELUDE = str(Path(args.prelude).resolve()) if args.prelude else ""
    if args.nice and os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every tool and server started below
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    trash = Trash(work)
    code = code_state()
    signal.signal(signal.SIGTERM, _exit_on_signal)  # so `finally` blocks run: the watch limit is put back
    try:
        body = PARTS[args.part](args, work, trash)
    finally:
        trash.empty()
    finish_part(args, args.part, body, code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
