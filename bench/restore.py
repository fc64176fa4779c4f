"""Restore benchmark (issue 20): `skynet restore` beside `rclone copy` from the same remote to
an empty folder, for 10,000 x 4 KiB files and for one 1 GiB file, from S3 (`rclone serve s3`)
and from SFTP (OpenSSH sshd), both started here on 127.0.0.1.

    .venv/bin/python bench/restore.py                         # the issue's sizes, 3 rounds
    .venv/bin/python bench/restore.py --small 2000 --big-mib 256 --rounds 1   # a quick look

Same run, interleaved: after one untimed warm-up pass, every round runs each (data set, backend) pair with both tools, the
order of the tools alternating from round to round; the figures are medians over the rounds
and the ratios are skynet / rclone of those medians. Each tool is a child process (skynet as a
user runs it: `python main.py restore --config-file F --mapping M --to DIR`), timed wall to
wall, start-up included; its CPU is the child's own (rusage). Both restore into a fresh,
empty folder, which is checked afterwards (file count and bytes) and removed.

The remote's data is written straight into the servers' folders (rclone serve s3 keeps objects
as plain files; the sshd test server's folder is a local one), hard-linked from one copy.
skynet reads it as a mirror without versions (the current-only store). Both tools keep the
files' mtimes from the object's metadata in their GET (an S3 listing carries none): one request
per small file each (skynet HEADs first only a file that may already be finished in DIR).

Targets (issue 20): at least rclone's files/s, at least 90% of its MB/s.
`--results` appends the figures as a section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
RCLONE = str(BIN / "rclone") if (BIN / "rclone").exists() else (shutil.which("rclone") or "rclone")
TRANSFERS = 16  # rclone --transfers and skynet --workers: the same width for both


@dataclass
class Run:
    tool: str
    backend: str
    data: str
    seconds: float
    files: int
    bytes: int
    cpu_s: float
    rc: int
    load: float = 0.0  # the 1-minute load average when the run ended (other sessions share the 2 cores)

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6


def make_data(root: Path, small: int, big_mib: int) -> dict[str, Path]:
    """One copy of each data set: small/dNN/fNNNNN (100 per folder) and big/big.bin."""
    sets = {}
    if small:
        folder = root / "small"
        for i in range(small):
            d = folder / f"d{i // 100:03d}"
            if i % 100 == 0:
                d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:05d}").write_bytes(os.urandom(4096))
        sets["small"] = folder
    if big_mib:
        folder = root / "big"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "big.bin", "wb") as fh:
            for _ in range(big_mib):
                fh.write(os.urandom(1 << 20))
        sets["big"] = folder
    return sets


def link_tree(src: Path, dest: Path, uid: int | None = None, gid: int | None = None) -> None:
    """Hard-link every file of `src` under `dest` (folders made, owned by uid/gid when given)."""
    for dirpath, _dirs, names in os.walk(src):
        target = dest / os.path.relpath(dirpath, src)
        target.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            os.chown(target, uid, gid if gid is not None else -1)
        for n in names:
            os.link(os.path.join(dirpath, n), target / n)


def tree_size(folder: Path) -> tuple[int, int]:
    files = total = 0
    for dirpath, _dirs, names in os.walk(folder):
        for n in names:
            files += 1
            total += os.lstat(os.path.join(dirpath, n)).st_size
    return files, total


def timed(argv: list[str], env: dict[str, str], out: Path, log: Path) -> tuple[float, float, int]:
    """Run a child to its end: (wall seconds, its CPU seconds, return code)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        rc = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=str(REPO)).returncode
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, rc


class Remote:
    """One backend: the skynet config restoring from it, and rclone's remote spec and environment."""

    def __init__(self, name: str, config: Path, rclone_env: dict[str, str], rclone_path: dict[str, str]) -> None:
        self.name, self.config, self.rclone_env, self.rclone_path = name, config, rclone_env, rclone_path

    def skynet(self, data: str, out: Path) -> list[str]:
        return [sys.executable, str(REPO / "main.py"), "restore", "--config-file", str(self.config),
                "--mapping", data, "--to", str(out), "--workers", str(TRANSFERS)]

    def rclone(self, data: str, out: Path) -> list[str]:
        return [RCLONE, "copy", self.rclone_path[data], str(out), "--transfers", str(TRANSFERS), "--config", os.devnull]


def write_config(path: Path, service: str, options: dict[str, str], targets: dict[str, str], work: Path) -> Path:
    lines = ["[skynet]", f"service = {service}", f"state_dir = {work / 'state'}", "", f"[{service}]"]
    lines += [f"{k} = {v}" for k, v in options.items()]
    (work / "src").mkdir(exist_ok=True)
    for name, target in targets.items():
        lines += ["", f"[mapping {name}]", f"source = {work / 'src'}", f"target = {target}"]
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "RCLONE_")) and k != "PYTHONDONTWRITEBYTECODE"}


def s3_remote(srv, sets: dict[str, Path], work: Path) -> Remote:  # type: ignore[no-untyped-def]
    bucket = srv.new_bucket("restore")
    for name, folder in sets.items():
        link_tree(folder, srv.data_dir / bucket / name)
    env = base_env()
    env.update(RCLONE_CONFIG_B_TYPE="s3", RCLONE_CONFIG_B_PROVIDER="Other", RCLONE_CONFIG_B_ACCESS_KEY_ID=srv.access_key,
               RCLONE_CONFIG_B_SECRET_ACCESS_KEY=srv.secret_key, RCLONE_CONFIG_B_ENDPOINT=srv.endpoint_url,
               RCLONE_CONFIG_B_REGION=srv.region, RCLONE_CONFIG_B_FORCE_PATH_STYLE="true")
    cfg = write_config(work / "s3.ini", "s3", srv.service_config(bucket), {n: n for n in sets}, work)
    return Remote("s3", cfg, env, {n: f"B:{bucket}/{n}" for n in sets})


def sftp_remote(srv, sets: dict[str, Path], work: Path) -> Remote:  # type: ignore[no-untyped-def]
    root = Path(srv.fresh_folder("restore"))
    for name, folder in sets.items():
        link_tree(folder, root / name, srv.uid, srv.gid)
    env = base_env()
    env.update(RCLONE_CONFIG_X_TYPE="sftp", RCLONE_CONFIG_X_HOST=srv.host, RCLONE_CONFIG_X_PORT=str(srv.port),
               RCLONE_CONFIG_X_USER=srv.user, RCLONE_CONFIG_X_KEY_FILE=srv.key_file,
               RCLONE_CONFIG_X_KNOWN_HOSTS_FILE=srv.known_hosts)
    cfg = write_config(work / "sftp.ini", "sftp", srv.service(), {n: str(root / n) for n in sets}, work)
    return Remote("sftp", cfg, env, {n: f"X:{root / n}" for n in sets})


def measure(remote: Remote, data: str, tool: str, work: Path, expect: tuple[int, int]) -> Run:
    """One restore into a new folder. The small files' folders are kept until the bench ends:
    removed between runs, they left ext4 (no journal here) skipping tens of thousands of
    recently deleted inodes at every file creation of the next run (`recently_deleted` and
    `find_inode_bit` in a perf profile), which made both tools' times drift 2x within a run."""
    out = work / "out" / f"{tool}-{remote.name}-{data}-{time.monotonic_ns()}"
    out.parent.mkdir(exist_ok=True)
    if tool == "rclone":
        out.mkdir()  # "to an empty folder"
    argv = remote.skynet(data, out) if tool == "skynet" else remote.rclone(data, out)
    env = base_env() if tool == "skynet" else remote.rclone_env
    seconds, cpu, rc = timed(argv, env, out, work / f"{tool}-{remote.name}-{data}.log")
    files, total = tree_size(out)
    if data != "small":
        shutil.rmtree(out, ignore_errors=True)  # one file: nothing for the allocator to skip, 1 GiB of disk back
    if (files, total) != expect:
        print(f"   !! {tool} {remote.name} {data}: {files} files / {total} bytes, expected {expect}", flush=True)
        rc = rc or 99
    return Run(tool, remote.name, data, seconds, files, total, cpu, rc, os.getloadavg()[0])


def median_of(runs: list[Run], tool: str, backend: str, data: str) -> tuple[float, float, float, float]:
    """Median files/s, MB/s, seconds and CPU seconds of the runs of one (tool, backend, data set)."""
    mine = [r for r in runs if (r.tool, r.backend, r.data) == (tool, backend, data) and r.rc == 0]
    if not mine:
        return (0.0, 0.0, 0.0, 0.0)
    return (statistics.median(r.files_per_s for r in mine), statistics.median(r.mb_per_s for r in mine),
            statistics.median(r.seconds for r in mine), statistics.median(r.cpu_s for r in mine))


def table(runs: list[Run], backends: list[str], datas: list[str], label: dict[str, str]) -> str:
    rows = ["| data | from | skynet files/s | rclone files/s | ratio | skynet MB/s | rclone MB/s | ratio | "
            "skynet s (CPU s) | rclone s (CPU s) | load | target |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for data in datas:
        for b in backends:
            s = median_of(runs, "skynet", b, data)
            r = median_of(runs, "rclone", b, data)
            fr = s[0] / r[0] if r[0] else 0.0
            mr = s[1] / r[1] if r[1] else 0.0
            met = "met" if (fr >= 1.0 if data == "small" else mr >= 0.9) else "MISSED"
            loads = [x.load for x in runs if (x.backend, x.data) == (b, data)]
            load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"
            rows.append(f"| {label[data]} | {b} | {s[0]:,.0f} | {r[0]:,.0f} | {fr:.2f} | {s[1]:,.1f} | {r[1]:,.1f} | "
                        f"{mr:.2f} | {s[2]:.2f} ({s[3]:.1f}) | {r[2]:.2f} ({r[3]:.1f}) | {load} | {met} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=10_000, help="number of 4 KiB files (0: none)")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the large file in MiB (0: none)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backends", default="s3,sftp")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "skynet-bench-restore"))
    ap.add_argument("--results", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args(argv)
    from tests.server_s3 import run_rclone_s3
    from tests.server_sshd import run_sshd

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    backends = [b for b in args.backends.split(",") if b]
    print(f"-- making the data ({args.small} x 4 KiB, {args.big_mib} MiB) in {work}", flush=True)
    sets = make_data(work / "data", args.small, args.big_mib)
    expect = {n: tree_size(f) for n, f in sets.items()}
    label = {"small": f"{args.small:,} x 4 KiB", "big": f"1 x {args.big_mib} MiB"}
    runs: list[Run] = []
    try:
        with run_rclone_s3(work / "s3") as s3srv, run_sshd(work / "sshd") as sshsrv:
            remotes = {"s3": lambda: s3_remote(s3srv, sets, work), "sftp": lambda: sftp_remote(sshsrv, sets, work)}
            made = [remotes[b]() for b in backends]
            # An untimed pass first: whoever went first would pay the servers' first reads (the
            # data into the page cache; rclone serve s3 hashing each object for its ETag).
            for data in sets:
                for remote in made:
                    warm = measure(remote, data, "rclone", work, expect[data])
                    print(f"warm-up {data:5s} {remote.name:4s} rclone {warm.seconds:7.2f} s (not counted)", flush=True)
            for rnd in range(args.rounds):
                tools = ["skynet", "rclone"] if rnd % 2 == 0 else ["rclone", "skynet"]
                for data in sets:
                    for remote in made:
                        for tool in tools:
                            run = measure(remote, data, tool, work, expect[data])
                            runs.append(run)
                            print(f"round {rnd + 1}  {data:5s} {remote.name:4s} {tool:6s} {run.seconds:7.2f} s "
                                  f"{run.files_per_s:8.0f} files/s {run.mb_per_s:8.1f} MB/s  CPU {run.cpu_s:5.1f} s  "
                                  f"load {run.load:4.1f}  rc={run.rc}", flush=True)
    finally:
        shutil.rmtree(work / "data", ignore_errors=True)
        shutil.rmtree(work / "out", ignore_errors=True)
    out = table(runs, backends, list(sets), label)
    print()
    print(out)
    if args.results:
        when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(REPO), capture_output=True,
                                text=True).stdout.strip()
        with open(REPO / "bench" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Issue 20: restore (`bench/restore.py`, {when}, commit {commit})\n\n"
                     f"`{' '.join(['bench/restore.py'] + (argv if argv is not None else sys.argv[1:]))}`: "
                     f"medians of {args.rounds} interleaved rounds, `--transfers {TRANSFERS}` / "
                     f"`--workers {TRANSFERS}`, servers on 127.0.0.1, 2 shared cores.\n\n{out}\n")
    return 0 if all(r.rc == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
