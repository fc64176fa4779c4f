"""Issue 21: what one PUT's shape costs `rclone serve s3` (and nginx one GET), in server CPU per request.

Not part of the default suite or of `bench/run`: a measuring tool for the job-of-URLs bench
(bench/jobs_urls.py), where the two cores are shared by skynet, nginx and `rclone serve s3` and the
server's CPU per PUT is the largest single cost per item.

The same 64 KiB body is PUT N times over keep-alive connections through skynet's own S3 client
(connections/s3/rest.py, `Rest.request`), THREADS threads at once, each variant onto fresh keys;
the server's CPU (user + system, /proc/PID/stat) is read before and after each variant. Variants
are interleaved, the order rotated every round, medians reported.

    /work/main/.venv/bin/python bench/s3_put_shape.py [--puts 3000] [--rounds 3] [--threads 16]
        [--variants full,bare,...] [--gets]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.jobs_urls import proc_cpu_s  # noqa: E402

BODY = (bytes(range(256)) * 256)[:65536]
MD5 = hashlib.md5(BODY)
MTIME = "1796493355.123456789"
URL = "http://127.0.0.1:8080/bench/d42/f00042.bin"


def headers_full() -> dict[str, str]:
    """What skynet's job sends for one 64 KiB item from nginx today (S3Con._stream_single)."""
    return {"content-md5": base64.b64encode(MD5.digest()).decode(),
            "x-amz-checksum-crc32": base64.b64encode(zlib.crc32(BODY).to_bytes(4, "big")).decode(),
            "content-type": "application/octet-stream",
            "x-amz-meta-size": "65536", "x-amz-meta-mtime": MTIME, "x-amz-meta-md5": MD5.hexdigest(),
            "x-amz-meta-source-url": URL, "x-amz-meta-source-etag": '"6b14502b-10000"',
            "x-amz-meta-source-last-modified": "Sat, 05 Dec 2026 17:55:55 GMT"}


def without(*names: str) -> Callable[[], dict[str, str]]:
    return lambda: {k: v for k, v in headers_full().items() if k not in names}


VARIANTS: dict[str, Callable[[], dict[str, str]]] = {
    "full": headers_full,
    "no-content-md5": without("content-md5"),
    "no-crc32": without("x-amz-checksum-crc32"),
    "no-mtime": without("x-amz-meta-mtime"),
    "mtime-int": lambda: {**headers_full(), "x-amz-meta-mtime": MTIME.split(".")[0]},
    "no-content-type": without("content-type"),
    "no-source-meta": without("x-amz-meta-source-url", "x-amz-meta-source-etag", "x-amz-meta-source-last-modified"),
    "no-size-md5-meta": without("x-amz-meta-size", "x-amz-meta-md5"),
    "bare": lambda: {},
    "rclone-like": lambda: {"content-type": "application/octet-stream", "x-amz-meta-mtime": MTIME.split(".")[0]},
    "expect-100": lambda: {**headers_full(), "expect": "100-continue"},
}


def put_many(rest, base: str, prefix: str, n: int, threads: int, headers: dict[str, str], flat: bool) -> None:
    from connections.s3.rest import key_path

    def worker(t: int) -> None:
        for i in range(t, n, threads):
            key = f"{prefix}/f{i:06d}.bin" if flat else f"{prefix}/d{i % 100:02d}/f{i:06d}.bin"
            reply = rest.request("PUT", key_path(base, key), None, headers, BODY)
            if reply.status != 200:
                raise SystemExit(f"PUT {key}: {reply.status} {reply.body[:200]!r}")

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--puts", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--flat", action="store_true", help="also the full variant with every key in one folder")
    ap.add_argument("--conns", default="", help="also the full variant with these thread counts, e.g. 4,64")
    args = ap.parse_args()
    from connections.s3.rest import Layout, Rest, StaticCredentials
    from tests.server_s3 import run_rclone_s3

    work = Path(tempfile.mkdtemp(prefix="skynet-put-shape-"))
    runs: dict[str, tuple[Callable[[], dict[str, str]], bool, int]] = {
        v: (VARIANTS[v], False, args.threads) for v in args.variants.split(",") if v}
    if args.flat:
        runs["full, one folder"] = (headers_full, True, args.threads)
    for c in [int(x) for x in args.conns.split(",") if x]:
        runs[f"full, {c} connections"] = (headers_full, False, c)
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    try:
        with run_rclone_s3(work / "s3") as srv:
            bucket = srv.new_bucket("shape")
            layout = Layout.from_endpoint(srv.endpoint_url, bucket, "path", srv.region)
            rest = Rest(layout, StaticCredentials(srv.access_key, srv.secret_key), connect_timeout=10, timeout=60,
                        scrub=str)
            put_many(rest, layout.base, "warm", 200, args.threads, headers_full(), False)
            names = list(runs)
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    make, flat, threads = runs[name]
                    rest.close()
                    s0, c0, t0 = proc_cpu_s(srv.pid), time.process_time(), time.perf_counter()
                    put_many(rest, layout.base, f"r{r}-{abs(hash(name)) % 10**8}", args.puts, threads, make(), flat)
                    s1, c1, t1 = proc_cpu_s(srv.pid), time.process_time(), time.perf_counter()
                    got[name].append(((s1 - s0) * 1000 / args.puts, (c1 - c0) * 1000 / args.puts))
                    print(f"round {r + 1} {name:24s} server {got[name][-1][0]:.3f} ms/PUT, client "
                          f"{got[name][-1][1]:.3f} ms/PUT, {args.puts / (t1 - t0):,.0f} PUT/s, load {os.getloadavg()[0]:.1f}",
                          flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # every PUT's object: gigabytes
    print("\n| variant | server CPU per PUT (median) | rounds | client CPU per PUT |\n|---|---|---|---|")
    base = statistics.median(x for x, _ in got[names[0]])
    for name in names:
        s = [x for x, _ in got[name]]
        print(f"| {name} | {statistics.median(s):.3f} ms ({statistics.median(s) - base:+.3f}) | "
              f"{', '.join(f'{x:.3f}' for x in s)} | {statistics.median(c for _, c in got[name]):.3f} ms |")


if __name__ == "__main__":
    main()
