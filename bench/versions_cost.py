"""Issue 20: what keeping versions costs a mirror.

    bench/run versions_cost [--files 10000] [--size 4096] [--rounds 3] [--targets local,s3,sftp]

For each target (a local folder; S3 on `rclone serve s3` on 127.0.0.1, a bucket without
versioning, so versions go to the versions area by server-side copy; SFTP on OpenSSH's
sshd, where a version is kept by a hard link), in the same run,
rounds of: a daemon with `versions = yes` and one with `versions = no` (the order
alternating per round), each on a fresh state folder and a fresh target:

  1. the initial sync of --files files of --size bytes: daemon start -> its Index holds
     every file (files/s);
  2. then, on the running daemon, --changes overwrites of files already synced (one file
     each, --rate per second): close -> the new content lands under its name on the
     target (IN_MOVED_TO in the target folder, or in the S3 server's data folder, which
     `rclone serve s3` writes to a temporary name and renames), p50 and p99 in ms.
     Overwrites are what keeping costs: each one keeps the previous version first.

The table gives the medians over the rounds and their ratio on/off (the target is within
10%: files/s ratio >= 0.90, p99 ratio <= 1.10). The daemon runs as a user runs it
(`python main.py --run-with SERVICE`), at the same priority for both (nice 0, io_class
none). Writes the "Issue 20: the cost of keeping versions" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from common import (  # noqa: E402
    REPO, LoadMeter, Proc, daemon_env, git_state, log, machine_info, make_tree, median, percentile, table, write_section,
)
from scale_bench import ArrivalWatcher, Daemon, Trash, wait_indexed, write_config  # noqa: E402

SECTION = "Issue 20: the cost of keeping versions"


@dataclass
class Run:
    target: str
    versions: bool
    files_per_s: float
    lat_ms: list[float] = field(default_factory=list)
    missing: int = 0
    others: float = 0.0
    cpu_ms: float = float("nan")  # the daemon's CPU per overwrite (steadier than wall time on a shared machine)
    load: float = 0.0  # the 1-minute load average at the end of the run
    note: str = ""

    @property
    def p50(self) -> float:
        return percentile(self.lat_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.lat_ms, 99)


def settings(args) -> dict[str, str]:
    out = {"log_level": "WARNING", "nice": "0", "io_class": "none", "workers": str(args.workers)}
    if args.settle is not None:
        out["settle_seconds"] = str(args.settle)
    return out


def start(work: Path, tag: str, service: str, src: Path, target: str, versions: bool, args,
          opts: dict[str, str] | None = None) -> Daemon:
    """A daemon on a fresh state folder whose mapping keeps versions or not."""
    state = work / f"state-{tag}"
    shutil.rmtree(state, ignore_errors=True)
    cfg = write_config(work / f"skynet-{tag}.ini", service, state, src, target, settings(args), opts)
    if versions:  # off is the default
        with open(cfg, "a") as f:  # the mapping section is the file's last
            f.write("versions = yes\n")
    log_path = work / f"skynet-{tag}.log"
    log_path.unlink(missing_ok=True)
    proc = Proc([sys.executable, str(REPO / "main.py"), "--run-with", service, "--config-file", str(cfg)], log_path,
                cwd=REPO, env=daemon_env(PYTHONUNBUFFERED="1"))
    return Daemon(proc, cfg, state)


def one_run(args, work: Path, service: str, src: Path, rels: list[str], versions: bool, target: str,
            arrival_root: Path, opts: dict[str, str] | None) -> Run:
    tag = f"{service}-{'on' if versions else 'off'}"
    meter, t0 = LoadMeter(), time.monotonic()
    d = start(work, tag, service, src, target, versions, args, opts)
    try:
        t_end = wait_indexed(d, len(rels), args.timeout, every=0.05)
        if t_end is None:
            return Run(service, versions, float("nan"), note="initial sync incomplete: " + d.proc.log_tail(600))
        run = Run(service, versions, len(rels) / (t_end - t0))
        time.sleep(1.0)  # the initial sync's tail (Index batches, its last log lines) apart from the overwrites
        cpu0 = d.proc.cpu_now()
        run.lat_ms, run.missing = overwrites(args, src, rels, arrival_root)
        run.cpu_ms = (d.proc.cpu_now() - cpu0) * 1000 / max(1, len(run.lat_ms))
        run.others = meter.others_cores(d.proc.cpu_now())
        run.load = os.getloadavg()[0]
        return run
    finally:
        d.proc.stop()


def overwrites(args, src: Path, rels: list[str], arrival_root: Path) -> tuple[list[float], int]:
    """Overwrite --changes synced files at --rate/s; close -> on the target, in ms."""
    step = max(1, len(rels) // args.changes)
    chosen = rels[::step][: args.changes]
    folders = sorted({os.path.dirname(r) for r in chosen})
    watcher = ArrivalWatcher([arrival_root / f for f in folders])
    t_close: dict[tuple[str, str], float] = {}
    keys = [(str(arrival_root / os.path.dirname(r)), os.path.basename(r)) for r in chosen]

    def writer() -> None:
        t_start = time.monotonic() + 0.05
        for i, rel in enumerate(chosen):
            delay = t_start + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with open(src / rel, "wb") as f:
                f.write(os.urandom(args.size))
            t_close[keys[i]] = time.monotonic()

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    end = time.monotonic() + args.changes / args.rate + 60
    while time.monotonic() < end:
        watcher.poll(20)
        if not w.is_alive() and all(k in watcher.seen for k in keys):
            break
    w.join()
    watcher.close()
    lat = [(watcher.seen[k] - t_close[k]) * 1000 for k in keys if k in watcher.seen and k in t_close]
    return lat, len(keys) - len(lat)


def rounds(args, work: Path, service: str, src: Path, rels: list[str], trash: Trash,
           target_for, opts: dict[str, str] | None) -> list[Run]:
    runs = []
    for r in range(args.rounds):
        for versions in ((True, False) if r % 2 == 0 else (False, True)):
            target, arrival_root = target_for(f"r{r}-{'on' if versions else 'off'}")
            run = one_run(args, work, service, src, rels, versions, target, arrival_root, opts)
            log(f"{service} versions {'on ' if versions else 'off'} round {r + 1}: {run.files_per_s:,.0f} files/s, "
                f"p50 {run.p50:.0f} ms, p99 {run.p99:.0f} ms, worst {', '.join(f'{x:.0f}' for x in sorted(run.lat_ms)[-4:])} ms, "
                f"missing {run.missing}, CPU {run.cpu_ms:.2f} ms/overwrite, others {run.others:.2f} cores, "
                f"load {run.load:.1f}"
                + (f" ({run.note})" if run.note else ""))
            runs.append(run)
            trash.put(arrival_root)
    return runs


def bench_local(args, work: Path, src: Path, rels: list[str], trash: Trash) -> list[Run]:
    def target_for(tag: str) -> tuple[str, Path]:
        dst = work / f"dst-{tag}"
        trash.put(dst)
        dst.mkdir()
        return str(dst), dst

    return rounds(args, work, "local", src, rels, trash, target_for, None)


def bench_s3(args, work: Path, src: Path, rels: list[str], trash: Trash) -> list[Run]:
    from tests.server_s3 import run_rclone_s3

    trash.put(work / "s3")
    with run_rclone_s3(work / "s3") as srv:
        bucket = srv.new_bucket("vc")

        def target_for(tag: str) -> tuple[str, Path]:
            prefix = f"{tag}-{time.time_ns()}"
            return prefix, srv.data_dir / bucket / prefix

        return rounds(args, work, "s3", src, rels, trash, target_for, srv.service_config(bucket))


def bench_sftp(args, work: Path, src: Path, rels: list[str], trash: Trash) -> list[Run]:
    from tests.server_sshd import run_sshd

    with run_sshd(work / "sshd") as srv:
        def target_for(tag: str) -> tuple[str, Path]:
            folder = srv.fresh_folder(f"vc-{tag}")  # the server runs here: its remote path is a local one
            return folder, Path(folder)

        return rounds(args, work, "sftp", src, rels, trash, target_for, srv.service())


def paired(runs: list[Run], value) -> float:
    """The median over rounds of on/off, each round's two runs side by side in time:
    steadier than a ratio of medians on a machine whose load drifts."""
    on = [r for r in runs if r.versions]
    off = [r for r in runs if not r.versions]
    return median([value(a) / value(b) for a, b in zip(on, off)])


def report(args, runs: list[Run]) -> str:
    rows = []
    for target in dict.fromkeys(r.target for r in runs):
        mine = [r for r in runs if r.target == target]
        on, off = [r for r in mine if r.versions], [r for r in mine if not r.versions]
        fps_on, fps_off = median([r.files_per_s for r in on]), median([r.files_per_s for r in off])
        p99_on, p99_off = median([r.p99 for r in on]), median([r.p99 for r in off])
        p50_on, p50_off = median([r.p50 for r in on]), median([r.p50 for r in off])
        rows.append([target, f"{fps_off:,.0f}", f"{fps_on:,.0f}",
                     f"{fps_on / fps_off:.2f} / {paired(mine, lambda r: r.files_per_s):.2f}",
                     f"{p50_off:.1f} / {p99_off:.1f}", f"{p50_on:.1f} / {p99_on:.1f}",
                     f"{p99_on / p99_off:.2f} / {paired(mine, lambda r: r.p99):.2f}",
                     f"{median([r.cpu_ms for r in off]):.2f} / {median([r.cpu_ms for r in on]):.2f}",
                     str(sum(r.missing for r in mine)), f"{median([r.others for r in mine]):.2f}",
                     f"{median([r.load for r in mine]):.1f}"])
    per_run = [[r.target, "on" if r.versions else "off", f"{r.files_per_s:,.0f}", f"{r.p50:.1f}", f"{r.p99:.1f}",
                f"{max(r.lat_ms, default=float('nan')):.0f}", f"{r.cpu_ms:.2f}", f"{r.others:.2f}", f"{r.load:.1f}"]
               for r in runs]
    m = machine_info()
    return "\n".join([
        f"`bench/run versions_cost --files {args.files} --size {args.size} --rounds {args.rounds} --changes "
        f"{args.changes} --rate {args.rate:g} --targets {args.targets}` on {m['date']}, code {git_state()}; "
        f"{m['nproc']} cores ({m['cpu']}), {m['filesystem (/tmp)']}, Python {m['python']}.",
        "",
        f"Initial sync of {args.files:,} files of {args.size:,} B (daemon start -> every file in its Index), then "
        f"{args.changes} overwrites of synced files at {args.rate:g}/s (close -> the new content under its name on "
        f"the target), versions off and on in the same run, order alternating per round; medians of "
        f"{args.rounds} rounds. Ratios are on/off: of the medians, and the median of each round's own ratio. "
        "S3 is `rclone serve s3` (no bucket versioning: each overwrite first copies the old version into the "
        "versions area, server-side). Target: within 10% (files/s ratio >= 0.90, p99 ratio <= 1.10). "
        "'others' is the CPU other processes of this shared machine used meanwhile, in cores; 'load' the 1-minute "
        "load average at the end of each run; 'CPU ms/overwrite' the daemon's own CPU during the overwrites.",
        "",
        table(["target", "files/s off", "files/s on", "ratio", "p50 / p99 ms off", "p50 / p99 ms on", "p99 ratio",
               "CPU ms/overwrite off / on", "missing", "others", "load"], rows),
        "",
        "Each run, in order:",
        "",
        table(["target", "versions", "files/s", "p50 ms", "p99 ms", "max ms", "CPU ms/overwrite", "others", "load"],
              per_run),
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--per-dir", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--changes", type=int, default=200, help="overwrites for the latency figures")
    ap.add_argument("--rate", type=float, default=20.0, help="overwrites per second")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--settle", type=float, default=None,
                    help="[skynet] settle_seconds of the daemons (default: the daemon's; a file is sent at its "
                         "close anyway, settle only delays one modified without a close)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--targets", default="local,s3")
    ap.add_argument("--workdir", default="", help="where trees and targets go (default: a temporary folder)")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave bench/RESULTS.md alone")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="skynet-vcost-"))
    trash = Trash(work)
    src = work / "src"
    trash.put(src)
    rels = make_tree(src, args.files, max(1, args.files // args.per_dir), args.size)
    runs: list[Run] = []
    try:
        for target in args.targets.split(","):
            runs += {"local": bench_local, "s3": bench_s3, "sftp": bench_sftp}[target](args, work, src, rels, trash)
    finally:
        trash.put(src)
        trash.empty()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    body = report(args, runs)
    print(body)
    if not args.no_write:
        write_section(Path(__file__).resolve().parent / "RESULTS.md", SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
