"""Issue 21: items/s and CPU of one pool of workers moving small HTTP items into S3,
beside `rclone copyurl --urls`, in the same run.

Servers (started here through the test helpers, stopped by PID): nginx serving N
files of SIZE bytes (tests/server_http.py) and `rclone serve s3` (tests/server_s3.py).
Each round runs every contender once on a fresh prefix, order rotated:

  skynet     skynet.jobs.transfer.make_transfer from WORKERS threads, every item through
             transfer(item, ctx) (HTTP GET on the shared urllib3 pool, one PUT with
             Content-MD5 and the source's metadata); on_existing=skip (a HEAD on the
             target first) as a job does by default
  skynet-ow  the same with on_existing=overwrite (no HEAD)
  rclone     rclone copyurl --urls CSV --transfers WORKERS (one process)

CPU is this process's (time.process_time over the run) for skynet, the child's own
(wait4) for rclone; the servers are other processes in both. Medians over rounds.

    /work/main/.venv/bin/python bench/item_transfer.py                 # 10,000 x 64 KiB, 3 rounds
    /work/main/.venv/bin/python bench/item_transfer.py --items 2000 --rounds 1
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KiB = 1 << 10


def run_skynet(http, s3, bucket: str, prefix: str, n: int, workers: int, on_existing: str) -> tuple[float, float]:
    from connections.contract.xcon import TransferContext
    from connections.s3.con import S3Con
    from skynet.jobs.item import Item
    from skynet.jobs.transfer import make_transfer

    con = S3Con(prefix=prefix, workers=workers, **s3.con_kwargs(bucket))
    con.connect()
    t = make_transfer("urls:bench", con, workers=workers, on_existing=on_existing)
    items = [Item(http.url(f"items/{i:06d}.bin"), f"{i:06d}.bin") for i in range(n)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda it: t(it, TransferContext()), items))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    t.close()  # type: ignore[attr-defined]
    con.close()
    assert len(results) == n and all(not r.skipped for r in results)
    return n / wall, cpu / n * 1000


def run_rclone(http, s3, bucket: str, prefix: str, n: int, workers: int, tmp: Path) -> tuple[float, float]:
    from tests.server_s3 import rclone_binary

    csv = tmp / f"{prefix}.csv"
    csv.write_text("".join(f"{http.url(f'items/{i:06d}.bin')},{i:06d}.bin\n" for i in range(n)))
    remote = (f":s3,provider=Other,endpoint='{s3.endpoint_url}',access_key_id={s3.access_key},"
              f"secret_access_key={s3.secret_key},force_path_style=true:{bucket}/{prefix}")
    t0 = time.perf_counter()
    proc = subprocess.Popen([rclone_binary(), "copyurl", "--urls", str(csv), remote, "--transfers", str(workers),
                             "--config", os.devnull, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if status != 0:
        raise RuntimeError(f"rclone copyurl failed ({status}): {err[-500:]}")
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    landed = sum(len(p.get("Contents", [])) for p in pages)
    if landed != n:
        raise RuntimeError(f"rclone copyurl left {landed} of {n} objects: {err[-500:]}")
    return n / wall, (usage.ru_utime + usage.ru_stime) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64 * KiB)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="skynet,skynet-ow,rclone")
    args = ap.parse_args()

    import tests.server_http  # noqa: F401  (registers "http")
    import tests.server_s3  # noqa: F401  (registers "s3")
    from tests.servers import Servers

    with tempfile.TemporaryDirectory(prefix="item-bench-") as d:
        tmp = Path(d)
        servers = Servers(tmp / "servers")
        try:
            http, s3 = servers.get("http"), servers.get("s3")
            data = os.urandom(args.size)
            (http.root / "items").mkdir(parents=True, exist_ok=True)
            for i in range(args.items):
                (http.root / "items" / f"{i:06d}.bin").write_bytes(data[:-8] + i.to_bytes(8, "big"))
            bucket = s3.new_bucket("bench")
            names = args.only.split(",")
            got: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    prefix = f"r{r}-{name}"
                    if name == "rclone":
                        res = run_rclone(http, s3, bucket, prefix, args.items, args.workers, tmp)
                    else:
                        res = run_skynet(http, s3, bucket, prefix, args.items, args.workers,
                                         "overwrite" if name == "skynet-ow" else "skip")
                    got[name].append(res)
                    print(f"round {r + 1} {name:10s} {res[0]:8.1f} items/s  {res[1]:6.2f} ms CPU/item", flush=True)
            print(f"\n{args.items} x {args.size // KiB} KiB, {args.workers} workers, medians of {args.rounds}:")
            base = statistics.median(x[0] for x in got["rclone"]) if "rclone" in got else None
            for name in names:
                rate = statistics.median(x[0] for x in got[name])
                cpu = statistics.median(x[1] for x in got[name])
                ratio = f"  x{rate / base:.2f} rclone copyurl" if base else ""
                print(f"  {name:10s} {rate:8.1f} items/s  {cpu:6.2f} ms CPU/item{ratio}")
        finally:
            servers.close()


if __name__ == "__main__":
    main()
