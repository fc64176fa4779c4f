"""Issue 2, local target: skynet against rclone (initial sync) and lsyncd (latency).

    bench/run local                 # the whole benchmark, writes bench/RESULTS.md
    bench/run local --help          # sizes, runs, what to skip, profiling

(a) Initial sync of N small files (default 10,000 x 4 KiB in 100 folders), local
    folder -> local folder. skynet: start the daemon on the pre-populated tree with
    an empty target and a fresh state_dir, time from exec until the target holds
    every file under its final name (os.listdir of the target folders every
    50 ms), then check every byte once and stop it with SIGTERM. rclone:
    `rclone copy SRC DST` with its default --transfers 4, and 8 and 16, timed from
    exec to exit, bytes checked the same way. Runs are interleaved (round r runs
    every tool once, in a rotated order); before each run the target is emptied
    and the page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) so every
    tool starts cold. Peak RSS and CPU seconds come from os.wait4 on the child.

(b) Latency: with the tool running (after it has synced the same tree and a probe
    file has gone through), the bench writes M files (default 500 x 4 KiB) at R
    per second (default 50) into the source folders, noting the monotonic time
    right after each close(). A watcher in the bench process has inotify watches
    on every target folder (IN_MOVED_TO | IN_CLOSE_WRITE): on an event for an
    expected final name it reads the file and counts it only if the bytes are
    complete and right; a temporary name (skynet's .skynet-tmp-*, rsync's
    .name.XXXXXX) never counts. A slow sweep (every 0.5 s) of files not yet seen
    is a safety net and its catches are reported. The same watcher serves every
    tool. lsyncd runs in the foreground (-nodaemon) with default.rsync (the
    layer of its docs' examples; default delay 15 s) and default.direct (the
    layer made for local -> local: cp/mv/rm per event, rsync only at start-up;
    default delay 1 s), each with its default delay and with delay = 0.
"""
from __future__ import annotations

import argparse
import collections
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    IN_CLOSE_WRITE,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    RCLONE,
    REPO,
    Inotify,
    Proc,
    TreeCounter,
    drop_caches,
    fresh_dir,
    leftovers,
    log,
    machine_info,
    make_tree,
    median,
    percentile,
    proc_hwm_mib,
    table,
    verify_tree,
    write_section,
)

PY = sys.executable
OUT = REPO / "bench" / "out"


# -- tools ------------------------------------------------------------------------
def skynet_config(path: Path, src: Path, dst: Path, state: Path, workers: int, log_level: str) -> Path:
    path.write_text(
        "[skynet]\n"
        "service = local\n"
        f"state_dir = {state}\n"
        f"log_level = {log_level}\n"
        f"workers = {workers}\n"
        "\n[mapping bench]\n"
        f"source = {src}\n"
        f"target = {dst}\n"
    )
    return path


def start_skynet(work: Path, src: Path, dst: Path, tag: str, args) -> Proc:
    state = work / f"state-{tag}"
    if state.exists():
        shutil.rmtree(state)
    cfg = skynet_config(work / f"skynet-{tag}.ini", src, dst, state, args.workers, args.log_level)
    return Proc([PY, str(REPO / "main.py"), "--run-with", "local", "--config-file", str(cfg)],
                work / f"skynet-{tag}.log", cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def lsyncd_config(path: Path, layer: str, src: Path, dst: Path, delay: float | None) -> Path:
    lines = [
        "settings {",
        "    nodaemon = true,",
        "}",
        "sync {",
        f"    {layer},",
        f'    source = "{src}",',
        f'    target = "{dst}",',
    ]
    if delay is not None:
        lines.append(f"    delay = {delay:g},")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")
    return path


def start_lsyncd(work: Path, src: Path, dst: Path, tag: str, layer: str, delay: float | None) -> Proc:
    cfg = lsyncd_config(work / f"lsyncd-{tag}.lua", layer, src, dst, delay)
    return Proc(["lsyncd", "-nodaemon", str(cfg)], work / f"lsyncd-{tag}.log")


# -- (a) initial sync ------------------------------------------------------------------
@dataclass
class InitRun:
    tool: str
    seconds: float
    files: int
    rss_mib: float
    cpu_s: float
    ok: bool
    note: str = ""

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0


def wait_complete(counter: TreeCounter, proc: Proc | None, timeout: float, interval: float = 0.05) -> float | None:
    """Poll until every file is in the target; the monotonic time it was seen, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if counter.count() >= counter.total:
            return time.monotonic()
        if proc is not None and not proc.alive():
            return None
        time.sleep(interval)
    return None


def initial_skynet(work: Path, src: Path, dst: Path, rels: list[str], args, tag: str,
                   profile: str | None = None) -> InitRun:
    counter = TreeCounter(dst, rels)
    t0 = time.monotonic()
    p = start_skynet(work, src, dst, tag, args)
    spy = start_pyspy(p.pid, profile, args) if profile else None
    t_end = wait_complete(counter, p, args.timeout)
    note = ""
    if t_end is None:
        note = "not complete" if p.alive() else f"daemon exited ({p.usage.returncode})"
        t_end = time.monotonic()
    seconds = t_end - t0
    if spy is not None:
        stop_pyspy(spy)
    u = p.stop(signal.SIGTERM, timeout=60)
    if u.returncode not in (0, -15):
        note += f" exit {u.returncode}"
    missing, wrong = verify_tree(src, dst, rels)
    left = leftovers(dst)
    ok = not note and missing == 0 and wrong == 0 and not left
    if missing or wrong or left:
        note += f" missing={missing} wrong={wrong} leftovers={len(left)}"
    if not ok:
        log(f"skynet run {tag}: {note.strip()}\n{p.log_tail()}")
    return InitRun("skynet", seconds, len(rels), u.maxrss_mib, u.cpu_s, ok, note.strip())


def initial_rclone(work: Path, src: Path, dst: Path, rels: list[str], args, transfers: int | None, tag: str) -> InitRun:
    argv = [RCLONE, "--config", "/dev/null", "copy", str(src), str(dst)]
    if transfers is not None:
        argv += ["--transfers", str(transfers)]
    t0 = time.monotonic()
    p = Proc(argv, work / f"rclone-{tag}.log")
    u = p.wait(args.timeout)
    seconds = time.monotonic() - t0
    missing, wrong = verify_tree(src, dst, rels)
    left = leftovers(dst)
    ok = u.returncode == 0 and missing == 0 and wrong == 0 and not left
    note = "" if ok else f"exit {u.returncode} missing={missing} wrong={wrong} leftovers={len(left)}"
    if not ok:
        log(f"rclone run {tag}: {note}\n{p.log_tail()}")
    name = "rclone copy" + (f" --transfers {transfers}" if transfers else " (default: --transfers 4)")
    return InitRun(name, seconds, len(rels), u.maxrss_mib, u.cpu_s, ok, note)


def phase_initial(work: Path, src: Path, rels: list[str], args) -> dict[str, list[InitRun]]:
    dst = work / "dst"
    tools: list[tuple[str, object]] = [("skynet", None)] + [("rclone", t) for t in (None, 8, 16)]
    results: dict[str, list[InitRun]] = collections.OrderedDict()
    for r in range(args.runs):
        order = tools[r % len(tools):] + tools[:r % len(tools)]  # rotate so no tool always goes first
        for kind, t in order:
            fresh_dir(dst)
            dropped = drop_caches() if not args.warm else False
            tag = f"init-{kind}{'' if t is None else t}-{r}"
            if kind == "skynet":
                run = initial_skynet(work, src, dst, rels, args, tag)
            else:
                run = initial_rclone(work, src, dst, rels, args, t, tag)
            results.setdefault(run.tool, []).append(run)
            log(f"(a) round {r + 1}/{args.runs} {run.tool}: {run.seconds:.2f} s, {run.files_per_s:,.0f} files/s, "
                f"RSS {run.rss_mib:.0f} MiB, CPU {run.cpu_s:.2f} s{'' if run.ok else ' FAILED ' + run.note}"
                f"{'' if dropped or args.warm else ' (page cache NOT dropped)'}")
    fresh_dir(dst)
    return results


# -- (b) latency -----------------------------------------------------------------------
@dataclass
class LatRun:
    tool: str
    lat_ms: list[float]
    missing: int
    cpu_s: float  # tool CPU (with reaped children) from the first write until 1 s after the last arrival
    rss_mib: float  # tool peak RSS over its whole run (VmHWM)
    sweep_hits: int = 0
    note: str = ""


class LatencyProbe:
    """Writes files into src at a fixed rate and times their arrival in dst."""

    def __init__(self, src: Path, dst: Path, dirs: list[str], size: int) -> None:
        self.src, self.dst, self.size = src, dst, size
        self.ino = Inotify()
        for d in dirs:  # the initial sync created them
            self.ino.add(str(dst / d), IN_MOVED_TO | IN_CLOSE_WRITE)
        self.expected: dict[tuple[bytes, bytes], int] = {}  # (dst folder, name) -> index
        self.content: dict[int, bytes] = {}
        self.rel: dict[int, str] = {}
        self.t_close: dict[int, float] = {}
        self.t_seen: dict[int, float] = {}
        self.sweep_hits = 0
        self.overflow = False
        self._lock = threading.Lock()

    def expect(self, i: int, rel: str, data: bytes) -> None:
        d, name = os.path.split(rel)
        with self._lock:
            self.expected[(os.fsencode(str(self.dst / d)), os.fsencode(name))] = i
            self.content[i] = data
            self.rel[i] = rel

    def _check(self, i: int, t: float) -> bool:
        try:
            with open(self.dst / self.rel[i], "rb") as f:
                got = f.read(self.size + 1)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            return False
        if got == self.content[i]:
            self.t_seen[i] = t
            return True
        return False

    def watch_once(self, timeout_ms: int) -> None:
        evs = self.ino.read(timeout_ms)
        t = time.monotonic()
        for folder, mask, name in evs:
            if mask & IN_Q_OVERFLOW:
                self.overflow = True
                continue
            with self._lock:
                i = self.expected.get((folder, name))
            if i is not None and i not in self.t_seen:
                self._check(i, t)

    def sweep(self) -> None:
        with self._lock:
            pending = [i for i in self.rel if i not in self.t_seen]
        for i in pending:
            t = time.monotonic()
            if self._check(i, t):
                self.sweep_hits += 1

    def close(self) -> None:
        self.ino.close()


def unique_data(i: int, size: int, tag: str) -> bytes:
    head = f"{tag}:{i}:".encode()
    return head + os.urandom(size - len(head))


def wait_probe(probe: LatencyProbe, src: Path, rel: str, i: int, timeout: float) -> bool:
    data = unique_data(i, probe.size, "probe")
    probe.expect(i, rel, data)
    with open(src / rel, "wb") as f:
        f.write(data)
    deadline = time.monotonic() + timeout
    last_sweep = time.monotonic()
    while i not in probe.t_seen and time.monotonic() < deadline:
        probe.watch_once(50)
        if time.monotonic() - last_sweep > 0.5:
            probe.sweep()
            last_sweep = time.monotonic()
    ok = i in probe.t_seen
    with probe._lock:  # the probe is not part of the sample
        probe.t_seen.pop(i, None)
        probe.rel.pop(i, None)
        probe.content.pop(i, None)
        probe.expected = {k: v for k, v in probe.expected.items() if v != i}
    probe.sweep_hits = 0
    return ok


def remove_latency_files(src: Path, dirs: list[str]) -> None:
    for d in dirs:
        for n in os.listdir(src / d):
            if n.startswith(("lat-", "probe-")):
                os.unlink(src / d / n)


def latency_run(name: str, start, work: Path, src: Path, rels: list[str], dirs: list[str], args,
                tag: str, delay_hint: float, after_probe=None, before_stop=None) -> LatRun:
    """start(dst) -> Proc. The tool syncs the tree, then the timed writes begin.
    after_probe(proc) is called once the tool is ready, before the writes (profiling)."""
    dst = fresh_dir(work / "dst")
    remove_latency_files(src, dirs)
    counter = TreeCounter(dst, rels)
    p: Proc = start(dst)
    t_end = wait_complete(counter, p, args.timeout)
    if t_end is None:
        u = p.stop()
        log(f"(b) {name}: initial sync did not finish (exit {u.returncode})\n{p.log_tail()}")
        return LatRun(name, [], args.lat_files, 0.0, u.maxrss_mib, note="initial sync did not finish")
    probe = LatencyProbe(src, dst, dirs, args.size)
    try:
        if not wait_probe(probe, src, f"{dirs[0]}/probe-{tag}.dat", -1, timeout=max(30.0, delay_hint + 20)):
            log(f"(b) {name}: the probe file never arrived\n{p.log_tail()}")
        time.sleep(args.quiet)  # let start-up work (index writes, checkpoints) finish
        if after_probe is not None:
            after_probe(p)
        n, rate = args.lat_files, args.rate
        cpu0 = p.cpu_now()
        t_start = time.monotonic() + 0.1

        def writer() -> None:
            for i in range(n):
                rel = f"{dirs[i % len(dirs)]}/lat-{tag}-{i:04d}.dat"
                data = unique_data(i, args.size, tag)
                probe.expect(i, rel, data)
                due = t_start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                with open(src / rel, "wb") as f:
                    f.write(data)
                probe.t_close[i] = time.monotonic()

        w = threading.Thread(target=writer, name="writer", daemon=True)
        w.start()
        deadline = t_start + n / rate + delay_hint + 30
        last_sweep = time.monotonic()
        while time.monotonic() < deadline:
            probe.watch_once(20)
            if not w.is_alive() and len(probe.t_seen) >= n:
                break
            if time.monotonic() - last_sweep > 0.5:
                probe.sweep()
                last_sweep = time.monotonic()
        w.join()
        time.sleep(1.0)  # children that finished the last copies get reaped (their CPU counts)
        cpu = p.cpu_now() - cpu0
        hwm = proc_hwm_mib(p.pid)
    finally:
        probe.close()
        if before_stop is not None:
            before_stop()
        u = p.stop()
        remove_latency_files(src, dirs)
    lat = [(probe.t_seen[i] - probe.t_close[i]) * 1000.0 for i in range(args.lat_files)
           if i in probe.t_seen and i in probe.t_close]
    missing = args.lat_files - len(lat)
    note = []
    if probe.overflow:
        note.append("inotify queue overflow in the watcher")
    if missing:
        note.append(f"{missing} file(s) never arrived")
    if u.returncode not in (0, -15, 143):
        note.append(f"exit {u.returncode}")
    run = LatRun(name, lat, missing, cpu, max(hwm, u.maxrss_mib) if hwm == hwm else u.maxrss_mib,
                 probe.sweep_hits, "; ".join(note))
    log(f"(b) {name}: p50 {percentile(lat, 50):.1f} ms, p99 {percentile(lat, 99):.1f} ms, max "
        f"{max(lat) if lat else float('nan'):.1f} ms, CPU {cpu:.2f} s, missing {missing}, sweep {probe.sweep_hits}"
        f"{' ' + run.note if run.note else ''}")
    return run


def phase_latency(work: Path, src: Path, rels: list[str], dirs: list[str], args) -> list[LatRun]:
    runs: list[LatRun] = []
    variants = [("skynet", "skynet", None, 0.0)]
    if not args.no_lsyncd:
        if shutil.which("lsyncd") is None:
            log("lsyncd not installed (apt-get install -y lsyncd): skipping it")
        else:
            variants += [
                ("lsyncd default.direct, delay 1 s (its default)", "default.direct", None, 1.0),
                ("lsyncd default.direct, delay = 0", "default.direct", 0, 0.0),
                ("lsyncd default.rsync, delay 15 s (its default)", "default.rsync", None, 15.0),
                ("lsyncd default.rsync, delay = 0", "default.rsync", 0, 0.0),
            ]
    for rep in range(args.lat_runs):
        for k, (name, layer, delay, hint) in enumerate(variants):
            tag = f"lat{k}-{rep}"
            if layer == "skynet":
                start = lambda dst, tag=tag: start_skynet(work, src, dst, tag, args)
            else:
                start = lambda dst, tag=tag, layer=layer, delay=delay: start_lsyncd(work, src, dst, tag, layer, delay)
            runs.append(latency_run(name, start, work, src, rels, dirs, args, tag, hint))
    return runs


def merge_lat(runs: list[LatRun]) -> list[LatRun]:
    """Pool repeated latency runs of one tool (samples pooled, CPU as a median)."""
    by: dict[str, list[LatRun]] = collections.OrderedDict()
    for r in runs:
        by.setdefault(r.tool, []).append(r)
    out = []
    for tool, rs in by.items():
        out.append(LatRun(tool, [x for r in rs for x in r.lat_ms], sum(r.missing for r in rs),
                          median([r.cpu_s for r in rs]), max(r.rss_mib for r in rs), sum(r.sweep_hits for r in rs),
                          "; ".join(r.note for r in rs if r.note)))
    return out


# -- profiling (optional) -------------------------------------------------------------------
def start_pyspy(pid: int, name: str, args) -> subprocess.Popen | None:
    spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if spy is None:
        log("py-spy not installed (.venv/bin/pip install py-spy): no profile")
        return None
    OUT.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "--pid", str(pid), "--rate", "200", "--threads", "--format", "raw",
            "--output", str(OUT / f"{name}.txt")]
    if args.native:
        argv.append("--native")
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(OUT / f"{name}.pyspy.log", "wb"))
    time.sleep(0.3)
    return p


def stop_pyspy(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGINT)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    if not path.exists():
        return f"(no profile at {path})"
    self_c: collections.Counter = collections.Counter()
    incl_c: collections.Counter = collections.Counter()
    thread_c: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        frames = stack.split(";")
        total += n
        thread_c[_thread_group(frames[0])] += n
        fns = [_short(f) for f in frames[1:]] or [frames[0]]
        self_c[fns[-1]] += n
        for fn in set(fns):
            incl_c[fn] += n
    if not total:
        return "(empty profile)"
    pct = lambda c: f"{100.0 * c / total:5.1f}%"
    lines = [f"{total} samples (200 Hz, active threads only)", "", "by thread:"]
    lines += [f"  {pct(c)}  {t}" for t, c in thread_c.most_common()]
    lines += ["", f"top {top} by self time:"]
    lines += [f"  {pct(c)}  {f}" for f, c in self_c.most_common(top)]
    lines += ["", f"top {top} by inclusive time:"]
    lines += [f"  {pct(c)}  {f}" for f, c in incl_c.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"; keep the file so same-named functions differ
    fn, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = Path(file).parts
    if "site-packages" in parts:
        file = "/".join(parts[parts.index("site-packages") + 1:])
    elif "skynet" in parts or "connections" in parts:
        i = max(i for i, p in enumerate(parts) if p in ("skynet", "connections"))
        file = "/".join(parts[i:])
    else:
        file = Path(file).name
    return f"{fn} ({file})"


def _thread_group(t: str) -> str:
    # py-spy's thread frame: 'process 123:"python main.py ..."' or 'thread (0x7f..)'; group workers together
    import re

    t = re.sub(r"0x[0-9a-fA-F]+", "", t)
    t = re.sub(r"worker-\d+", "worker-N", t)
    return t.strip()


def phase_profile(work: Path, src: Path, rels: list[str], dirs: list[str], args) -> dict[str, str]:
    """One extra skynet initial sync and one extra latency run under py-spy (not timed)."""
    out: dict[str, str] = {}
    dst = work / "dst"
    fresh_dir(dst)
    drop_caches() if not args.warm else None
    run = initial_skynet(work, src, dst, rels, args, "profile-init", profile="profile-initial")
    log(f"(profile) skynet initial sync under py-spy: {run.seconds:.2f} s")
    out["initial"] = summarize_profile(OUT / "profile-initial.txt")

    spy: list = []
    lr = latency_run("skynet (profiled)", lambda d: start_skynet(work, src, d, "profile-lat", args), work, src, rels,
                     dirs, args, "profile", 0.0,
                     after_probe=lambda p: spy.append(start_pyspy(p.pid, "profile-latency", args)),
                     before_stop=lambda: [stop_pyspy(sp) for sp in spy if sp is not None])
    log(f"(profile) latency under py-spy: p50 {percentile(lr.lat_ms, 50):.1f} ms p99 {percentile(lr.lat_ms, 99):.1f} ms")
    out["latency"] = summarize_profile(OUT / "profile-latency.txt")
    return out


# -- report ------------------------------------------------------------------------------------
def fmt(x: float, nd: int = 0) -> str:
    return "n/a" if x != x else f"{x:,.{nd}f}"


def report(args, info: dict, init: dict[str, list[InitRun]] | None, lat: list[LatRun] | None,
           prof: dict[str, str] | None, command: str) -> str:
    parts = []
    parts.append("Machine: " + ", ".join(f"{k} {v}" for k, v in info.items() if k != "date"))
    parts.append(f"Date: {info['date']}")
    parts.append("")
    parts.append("Reproduce (from the repository root, as root for the page-cache drop and `apt-get install lsyncd`):")
    parts.append("")
    parts.append(f"    {command}")
    parts.append("")
    verdicts = []
    if init:
        sk = init.get("skynet", [])
        sk_fps = median([r.files_per_s for r in sk])
        rcl = {k: v for k, v in init.items() if k.startswith("rclone")}
        best_name = max(rcl, key=lambda k: median([r.files_per_s for r in rcl[k]])) if rcl else None
        best_fps = median([r.files_per_s for r in rcl[best_name]]) if best_name else float("nan")
        default_fps = median([r.files_per_s for r in rcl.get("rclone copy (default: --transfers 4)", [])])
        parts.append(f"### (a) Initial sync: {args.files:,} files x {args.size // 1024} KiB in {args.dirs} folders, "
                     f"local -> local")
        parts.append("")
        parts.append(f"Median of {args.runs} interleaved runs; "
                     + ("page cache dropped before every run (cold)." if not args.warm else "warm page cache.")
                     + " skynet: exec -> all files in the target (final names, polled every 50 ms; bytes checked"
                     " after), workers "
                     f"{args.workers}, log_level {args.log_level}, fresh state_dir. rclone: exec -> exit. "
                     "RSS = peak (ru_maxrss), CPU = user + system (os.wait4 on the child; skynet's includes its "
                     "SIGTERM shutdown).")
        parts.append("")
        rows = []
        for tool, rs in init.items():
            fps = median([r.files_per_s for r in rs])
            rows.append([
                tool,
                fmt(median([r.seconds for r in rs]), 2),
                fmt(fps),
                " / ".join(fmt(r.files_per_s) for r in rs),
                fmt(median([r.rss_mib for r in rs])),
                fmt(median([r.cpu_s for r in rs]), 2),
                fmt(median([r.cpu_s for r in rs]) * 1e6 / args.files, 0),
                fmt(sk_fps / fps, 2) if tool != "skynet" else "-",
                "yes" if all(r.ok for r in rs) else "NO: " + "; ".join(r.note for r in rs if not r.ok),
            ])
        parts.append(table(["tool", "seconds", "files/s", "files/s per run", "peak RSS MiB", "CPU s",
                            "CPU us/file", "skynet / this", "all bytes right"], rows))
        parts.append("")
        ratio_best = sk_fps / best_fps
        verdicts.append(f"(a) skynet {fmt(sk_fps)} files/s vs best rclone ({best_name}) {fmt(best_fps)} files/s: "
                        f"ratio {ratio_best:.2f} (vs rclone default: {sk_fps / default_fps:.2f}); target >= 1.00: "
                        + ("MET" if ratio_best >= 1.0 else "MISSED"))
    if lat:
        parts.append(f"### (b) Latency: {args.lat_files} files x {args.size // 1024} KiB written at {args.rate:g}/s "
                     "while the tool runs")
        parts.append("")
        parts.append("Time from the writer's close() to the file's final name holding the complete, right bytes in "
                     "the target, seen by one inotify watcher (IN_MOVED_TO | IN_CLOSE_WRITE on every target folder, "
                     "then a read and compare) used for every tool. Each tool first synced the same tree "
                     f"({args.files:,} files) and passed a probe file; {args.lat_runs} run(s) per tool, samples pooled. "
                     "CPU = the tool's CPU (with the rsync/cp children it reaped) from the first write until 1 s after "
                     "the last arrival. RSS = the tool's peak (VmHWM, lsyncd's own, without its children).")
        parts.append("")
        sk = next((r for r in lat if r.tool == "skynet"), None)
        rows = []
        for r in lat:
            p50, p99 = percentile(r.lat_ms, 50), percentile(r.lat_ms, 99)
            rows.append([
                r.tool, fmt(p50, 1), fmt(percentile(r.lat_ms, 90), 1), fmt(p99, 1),
                fmt(max(r.lat_ms) if r.lat_ms else float("nan"), 1),
                str(r.missing), fmt(r.cpu_s, 2), fmt(r.rss_mib),
                (fmt(percentile(sk.lat_ms, 50) / p50, 2) + " / " + fmt(percentile(sk.lat_ms, 99) / p99, 2))
                if sk is not None and r is not sk and p50 > 0 and p99 > 0 else "-",
                r.note or "-",
            ])
        parts.append(table(["tool", "p50 ms", "p90 ms", "p99 ms", "max ms", "missing", "CPU s", "peak RSS MiB",
                            "skynet / this (p50 / p99)", "notes"], rows))
        parts.append("")
        if sk is not None and sk.lat_ms:
            p99 = percentile(sk.lat_ms, 99)
            verdicts.append(f"(b) skynet p50 {percentile(sk.lat_ms, 50):.1f} ms, p99 {p99:.1f} ms; "
                            "target p99 < 300 ms: " + ("MET" if p99 < 300 and sk.missing == 0 else "MISSED"))
    if verdicts:
        parts.append("### Targets (issue 2)")
        parts.append("")
        parts += [f"- {v}" for v in verdicts]
        parts.append("")
    if prof:
        parts.append("### Profile of skynet (py-spy)")
        parts.append("")
        for k, v in prof.items():
            parts.append(f"{k}:")
            parts.append("")
            parts.append("```")
            parts.append(v)
            parts.append("```")
            parts.append("")
    return "\n".join(parts)


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000, help="files in the tree (default 10000)")
    ap.add_argument("--dirs", type=int, default=100, help="folders they are spread over (default 100)")
    ap.add_argument("--size", type=int, default=4096, help="bytes per file (default 4096)")
    ap.add_argument("--runs", type=int, default=3, help="runs per tool for (a); the median is reported (default 3)")
    ap.add_argument("--workers", type=int, default=8, help="skynet workers (default 8)")
    ap.add_argument("--log-level", default="WARNING", help="skynet log_level (default WARNING)")
    ap.add_argument("--warm", action="store_true", help="do not drop the page cache before (a) runs")
    ap.add_argument("--lat-files", type=int, default=500, help="files written for (b) (default 500)")
    ap.add_argument("--rate", type=float, default=50.0, help="files per second written for (b) (default 50)")
    ap.add_argument("--lat-runs", type=int, default=1, help="latency runs per tool, samples pooled (default 1)")
    ap.add_argument("--quiet", type=float, default=1.0, help="seconds of quiet after the probe before (b) writes")
    ap.add_argument("--no-lsyncd", action="store_true", help="skip lsyncd in (b)")
    ap.add_argument("--skip-initial", action="store_true", help="skip (a)")
    ap.add_argument("--skip-latency", action="store_true", help="skip (b)")
    ap.add_argument("--profile", action="store_true", help="also profile skynet with py-spy (extra, untimed runs)")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up on one run after this many seconds")
    ap.add_argument("--workdir", help="where to put the trees (default: a new folder under $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="markdown file to update")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="skynet-bench-local-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    log(f"work folder {work}; " + ", ".join(f"{k}: {v}" for k, v in info.items()))
    src = work / "src"
    fresh_dir(src)
    t = time.monotonic()
    rels = make_tree(src, args.files, args.dirs, args.size)
    dirs = sorted({os.path.dirname(r) for r in rels})
    log(f"made {len(rels):,} files in {len(dirs)} folders in {time.monotonic() - t:.1f} s")
    init = lat = prof = None
    try:
        if not args.skip_initial:
            init = phase_initial(work, src, rels, args)
        if not args.skip_latency:
            lat = merge_lat(phase_latency(work, src, rels, dirs, args))
        if args.profile:
            prof = phase_profile(work, src, rels, dirs, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    cmd = "bench/run local" + ("" if not sys.argv[1:] else " " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    text = report(args, info, init, lat, prof, cmd)
    print(text)
    if not args.no_write:
        write_section(Path(args.results), "Issue 2: local target", text)
        log(f"wrote the 'Issue 2: local target' section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
