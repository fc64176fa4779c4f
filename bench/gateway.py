"""Issue 23, item 2: upload throughput through `skynet serve` beside `rclone copy` to the same destination.

Workloads: one 1 GiB file, and 1,000 files of 1 MiB. Destinations: a local folder, and S3
(`rclone serve s3`, started by tests/server_s3.py). In each round every tool runs once per
workload and destination, the order rotated (the machine drifts; interleaving keeps a ratio
inside one run honest); medians over the rounds, and the gateway's MB/s as a ratio of rclone's.

  * gateway: `python main.py serve` (a subprocess, started once per destination: a service
    runs all the time). The client is this process, with requests: the 1 GiB file as tus
    PATCHes of --chunk-mib MiB on one connection; the small files by creation-with-upload
    (one POST with the body each), --threads at once. The clock stops at the last answer,
    which the gateway gives once the file has landed (Skynet-Landed), so the figure covers
    receiving, fsyncing the staged bytes, verifying, and the send to the destination.
  * rclone: `rclone copy SRC DST --transfers THREADS` of the same files (its defaults otherwise).

Between two runs the output is removed and the disk synced (`os.sync()`): rclone never fsyncs, so
without it the run after rclone's pays for rclone's writeback (the gateway's durability fsyncs waited
behind it: the 1 GiB local case measured 470 MB/s after rclone and 930 MB/s before it, 19:30 UTC).

Besides MB/s, every run reports CPU seconds per GiB (less sensitive than wall time to the
other sessions on a shared machine): the gateway process's (/proc/PID/stat), the client's
(this process, which does nothing else meanwhile) and rclone's (os.wait4), with the load
average at the end of the run. `--verify` makes the client send what a careful tus client
sends: an md5 Upload-Checksum with every PATCH and the whole file's md5 as metadata (the
gateway then hashes every byte, as rclone does to check its copies).

    /work/main/.venv/bin/python bench/gateway.py                    # both destinations, 5 rounds
    /work/main/.venv/bin/python bench/gateway.py --dest local --rounds 1 --big-mib 64 --files 100
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from bench.common import machine_info, proc_cpu, self_cpu_s  # noqa: E402
from tests.gateway_helpers import OCTETS, TUS, Gateway, b64, write_config  # noqa: E402
from tests.server_s3 import rclone_binary  # noqa: E402

MiB = 1 << 20


def make_files(root: Path, big_mib: int, files: int, kib: int) -> tuple[Path, Path]:
    big, small = root / "big", root / "small"
    big.mkdir(parents=True)
    small.mkdir(parents=True)
    with open(big / "big.bin", "wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(MiB))
    for i in range(files):
        (small / f"f{i:05d}.bin").write_bytes(os.urandom(kib * 1024))
    return big, small


def _check_landed(resp: requests.Response) -> None:
    if resp.status_code not in (201, 204) or resp.headers.get("Skynet-Pending"):
        raise RuntimeError(f"gateway: {resp.status_code} {resp.headers.get('Skynet-Pending')!r} {resp.text[:200]}")


def _metadata(name: str, md5: str | None) -> str:
    return f"filename {b64(name.encode())}" + (f",md5 {b64(md5.encode())}" if md5 else "")


def gateway_big(gw: Gateway, path: Path, name: str, chunk: int, md5: str | None = None) -> None:
    """One tus upload in PATCHes of `chunk`; with `md5` (--verify) also each chunk's md5."""
    size = path.stat().st_size
    with requests.Session() as s:
        r = s.post(f"{gw.url}/uploads", headers={**gw.auth, "Upload-Length": str(size),
                                                "Upload-Metadata": _metadata(name, md5)})
        url = gw.url + r.headers["Location"]
        with open(path, "rb") as f:
            off = 0
            while off < size:
                piece = f.read(chunk)
                check = {"Upload-Checksum": f"md5 {b64(hashlib.md5(piece).digest())}"} if md5 else {}
                r = s.patch(url, data=piece, headers={**gw.auth, **check, "Upload-Offset": str(off),
                                                      "Content-Type": OCTETS})
                if r.status_code != 204:
                    raise RuntimeError(f"PATCH at {off}: {r.status_code} {r.text[:200]}")
                off += len(piece)
        _check_landed(r)


def gateway_small(gw: Gateway, folder: Path, prefix: str, threads: int, verify: bool = False) -> None:
    names = sorted(os.listdir(folder))
    sessions: dict[int, requests.Session] = {}

    def one(name: str) -> None:
        import threading

        s = sessions.setdefault(threading.get_ident(), requests.Session())
        data = (folder / name).read_bytes()
        r = s.post(f"{gw.url}/uploads", data=data, headers={
            **gw.auth, **TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS,
            "Upload-Metadata": _metadata(f"{prefix}/{name}", hashlib.md5(data).hexdigest() if verify else None)})
        _check_landed(r)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, names))
    for s in sessions.values():
        s.close()


def rclone(src: Path, dest: str, threads: int, env: dict[str, str]) -> float:
    """`rclone copy`; its CPU seconds (user + system, from os.wait4)."""
    proc = subprocess.Popen([rclone_binary(), "copy", str(src), dest, "--transfers", str(threads),
                             "--config", os.devnull], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        err = proc.stderr.read() if proc.stderr else b""
        _pid, status, ru = os.wait4(proc.pid, 0)
    except BaseException:  # interrupted: no rclone left behind
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"rclone copy: exit {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    return ru.ru_utime + ru.ru_stime


def _rclone_env(srv=None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    if srv is not None:
        env.update(RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                   RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=srv.access_key,
                   RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=srv.secret_key,
                   RCLONE_CONFIG_BENCH_ENDPOINT=srv.endpoint_url, RCLONE_CONFIG_BENCH_REGION=srv.region,
                   RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true")
    return env


def run_dest(dest: str, work: Path, big: Path, small: Path, args, results: dict) -> None:
    """Every round for one destination; results[(dest, workload, tool)] = [(MB/s, CPU s/GiB, server
    CPU s/GiB, load), ...]."""
    import contextlib

    from tests.servers import Servers

    servers = Servers(work / "servers")
    with contextlib.ExitStack() as stack:
        stack.callback(servers.close)
        if dest == "s3":
            import tests.server_s3  # noqa: F401

            srv = servers.get("s3")
            bucket = srv.new_bucket("gwbench")
            target = {"service": "s3", "root": "gw", **srv.service_config(bucket)}
            rc_dest = f"bench:{bucket}/rc"
            env = _rclone_env(srv)
            clear_gw = lambda: shutil.rmtree(srv.data_dir / bucket / "gw", ignore_errors=True)  # noqa: E731
            clear_rc = lambda: shutil.rmtree(srv.data_dir / bucket / "rc", ignore_errors=True)  # noqa: E731
        else:
            gw_root, rc_root = work / "dest-gw", work / "dest-rc"
            gw_root.mkdir()
            target = {"service": "local", "root": str(gw_root)}
            rc_dest = str(rc_root)
            env = _rclone_env()
            clear_gw = lambda: shutil.rmtree(gw_root / "r", ignore_errors=True)  # noqa: E731
            clear_rc = lambda: shutil.rmtree(rc_root, ignore_errors=True)  # noqa: E731
        cfg = work / f"gw-{dest}.ini"
        extra = {"staging_dir": args.staging} if args.staging else {}
        token = write_config(cfg, {dest: target}, max_upload_size="4GiB", max_uploads_in_flight="1000",
                             threads=str(max(16, args.threads * 2)), log_level="INFO", **extra)
        gw = stack.enter_context(Gateway(cfg, token))
        big_bytes = big.stat().st_size if big.is_file() else sum(p.stat().st_size for p in big.iterdir())
        small_bytes = sum(p.stat().st_size for p in small.iterdir())
        big_md5 = _file_md5(big / "big.bin") if args.verify and big_bytes else None
        for r in range(args.rounds):
            tools = ["gateway", "rclone"] if r % 2 == 0 else ["rclone", "gateway"]
            for workload, nbytes in (("1 GiB file" if args.big_mib == 1024 else f"{args.big_mib} MiB file", big_bytes),
                                     (f"{args.files} x {args.file_kib} KiB", small_bytes)):
                if not nbytes:
                    continue
                for tool in tools:
                    gib = nbytes / (1 << 30)
                    server0, client0, t0 = proc_cpu(gw.proc.pid), self_cpu_s(), time.perf_counter()
                    if tool == "gateway":
                        if workload.endswith("file"):
                            gateway_big(gw, big / "big.bin", f"r/{r}/big.bin", args.chunk_mib * MiB, big_md5)
                        else:
                            gateway_small(gw, small, f"r/{r}/small", args.threads, args.verify)
                        server = (proc_cpu(gw.proc.pid) - server0) / gib
                        cpu = server + (self_cpu_s() - client0) / gib
                    else:
                        cpu = rclone(big if workload.endswith("file") else small,
                                     f"{rc_dest}/{r}/{workload[:3]}", args.threads, env) / gib
                        server = 0.0
                    mbps = nbytes / (time.perf_counter() - t0) / 1e6
                    load = os.getloadavg()[0]
                    results.setdefault((dest, workload, tool), []).append((mbps, cpu, server, load))
                    extra = f" (gateway process {server:.2f})" if tool == "gateway" else ""
                    print(f"round {r + 1} {dest:5} {workload:18} {tool:8} {mbps:8.1f} MB/s  CPU {cpu:5.2f} s/GiB{extra}"
                          f"  load {load:.1f}", flush=True)
                    (clear_gw if tool == "gateway" else clear_rc)()
                    os.sync()  # the next run starts on a settled disk, not behind this one's writeback


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while piece := f.read(8 * MiB):
            h.update(piece)
    return h.hexdigest()


def _median(runs: list[tuple], i: int) -> float:
    return statistics.median(x[i] for x in runs)


def summary(results: dict) -> list[str]:
    """The table: medians over the rounds, ratios of the medians and the median per-round ratio."""
    out = ["| destination | workload | gateway MB/s | rclone MB/s | ratio (median of rounds) | gateway CPU s/GiB "
           "(its process) | rclone CPU s/GiB | load | target 0.80 |", "| --- " * 9 + "|"]
    for (dest, workload, tool), runs in results.items():
        if tool != "gateway":
            continue
        rc = results[(dest, workload, "rclone")]
        g, r = _median(runs, 0), _median(rc, 0)
        per_round = statistics.median(a[0] / b[0] for a, b in zip(runs, rc))
        loads = [x[3] for x in runs + rc]
        out.append(f"| {dest} | {workload} | {g:.1f} | {r:.1f} | {g / r:.2f} ({per_round:.2f}) | "
                   f"{_median(runs, 1):.2f} ({_median(runs, 2):.2f}) | {_median(rc, 1):.2f} | "
                   f"{min(loads):.1f}-{max(loads):.1f} | {'met' if g / r >= 0.8 else 'MISSED'} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", choices=("local", "s3", "both"), default="both")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--file-kib", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=8, help="small files in flight (gateway client and rclone --transfers)")
    ap.add_argument("--chunk-mib", type=int, default=8, help="tus PATCH size for the big file")
    ap.add_argument("--staging", default="", help="[gateway] staging_dir (e.g. a tmpfs, to see the cost of the "
                                                 "fsyncs that make offsets durable apart)")
    ap.add_argument("--verify", action="store_true", help="the client sends an md5 per PATCH and the whole "
                                                           "file's md5 (checked by the gateway)")
    args = ap.parse_args(argv)
    info = machine_info()
    print(f"# {info['date']}, {info['nproc']} cores ({info['cpu']}), {info['filesystem (/tmp)']} /tmp, "
          f"{subprocess.run([rclone_binary(), 'version'], capture_output=True, text=True).stdout.split(chr(10))[0]}; "
          f"staging on {args.staging or 'the state folder (same disk)'}; chunks of {args.chunk_mib} MiB, {args.threads} at once"
          f"{'; client sends md5s (--verify)' if args.verify else ''}", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        work = Path(tmp)
        big, small = make_files(work / "src", args.big_mib, args.files, args.file_kib)
        for dest in (("local", "s3") if args.dest == "both" else (args.dest,)):
            run_dest(dest, work, big, small, args, results)
    print()
    print("\n".join(summary(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
