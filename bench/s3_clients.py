"""Issue 19, item 5: which S3 client carries which operation, measured the same run.

Clients, each against the same server process (rclone serve s3, or SeaweedFS with
--server seaweedfs, started by the test helpers tests/server_s3.py / server_seaweedfs.py):
  own      connections/s3/rest.py: PUT with Content-MD5 (the MD5 computed here)
  s3con    S3Con.send() of a local file (the daemon's whole per-file path: open, read,
           MD5, metadata headers, PUT, ETag check); 1 GiB: its multipart upload
  obstore  obstore.put (Rust object_store); no Content-MD5: the returned ETag is checked
           against an MD5 computed here, as S3Con would have to
  boto3    put_object with ContentMD5 (boto3's payload signing off, as S3Con had it);
           1 GiB: upload_file (s3transfer, 8 MiB parts, 10 threads)

Workloads: N x 4 KiB objects from 16 threads (files/s, client CPU per object), and one
1 GiB object (MB/s, client CPU). Client CPU is this process's user+system CPU
(time.process_time) over the workload; the server is another process. Rounds are
interleaved (every client once per round, order rotated) and medians reported, with the
ratio of each client's median to own's.

    /work/main/.venv/bin/python bench/s3_clients.py                       # rclone serve s3
    /work/main/.venv/bin/python bench/s3_clients.py --server seaweedfs --rounds 3
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KiB, MiB = 1 << 10, 1 << 20
THREADS = 16


def _md5_b64(data: bytes) -> tuple[str, str]:
    d = hashlib.md5(data).digest()
    return d.hex(), base64.b64encode(d).decode()


class Clients:
    """The clients under test, all set up (imports paid) before anything is timed."""

    def __init__(self, srv: Any, bucket: str, tmp: Path) -> None:
        import boto3
        import obstore
        from botocore.config import Config
        from obstore.store import S3Store

        from connections.s3 import rest as s3rest
        from connections.s3.con import S3Con

        self.srv, self.bucket, self.tmp = srv, bucket, tmp
        self.obstore = obstore
        layout = s3rest.Layout.from_endpoint(srv.endpoint_url, bucket, "path", srv.region)
        self.rest = s3rest.Rest(layout, s3rest.StaticCredentials(srv.access_key, srv.secret_key),
                                connect_timeout=10, timeout=60, scrub=lambda s: s)
        self.boto = boto3.Session(aws_access_key_id=srv.access_key, aws_secret_access_key=srv.secret_key,
                                  region_name=srv.region).client(
            "s3", endpoint_url=srv.endpoint_url,
            config=Config(s3={"addressing_style": "path", "payload_signing_enabled": False},
                          max_pool_connections=THREADS + 4, request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))
        self.store = S3Store(bucket, endpoint=srv.endpoint_url, access_key_id=srv.access_key,
                             secret_access_key=srv.secret_key, region=srv.region,
                             client_options={"allow_http": True}, virtual_hosted_style_request=False)
        self.con = S3Con(**srv.con_kwargs(bucket), workers=THREADS)
        self.con.connect()

    # -- one small object ---------------------------------------------------------------
    def put_own(self, key: str, data: bytes) -> None:
        hexd, b64 = _md5_b64(data)
        etag = self.rest.put(key, data, {"content-md5": b64}, None)
        assert etag and etag.strip('"') == hexd, etag

    def put_obstore(self, key: str, data: bytes) -> None:
        hexd = hashlib.md5(data).hexdigest()
        etag = self.obstore.put(self.store, key, data)["e_tag"]
        assert etag and etag.strip('"') == hexd, etag

    def put_boto3(self, key: str, data: bytes) -> None:
        hexd, b64 = _md5_b64(data)
        etag = self.boto.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=b64)["ETag"]
        assert etag.strip('"') == hexd, etag

    # -- one big object -----------------------------------------------------------------
    def big_own(self, key: str, path: Path) -> None:
        self._send(key, path)

    def big_s3con(self, key: str, path: Path) -> None:
        self._send(key, path)

    def _send(self, key: str, path: Path) -> None:
        from connections.contract.xcon import LocalFile, NullResumeStore, TransferContext

        st = path.stat()
        f = LocalFile(str(path), key, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_ino)
        self.con.send(f, TransferContext(resume=NullResumeStore()))

    def big_obstore(self, key: str, path: Path) -> None:
        self.obstore.put(self.store, key, path, chunk_size=8 * MiB, max_concurrency=8)

    def big_boto3(self, key: str, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        self.boto.upload_file(str(path), self.bucket, key,
                              Config=TransferConfig(multipart_chunksize=8 * MiB, max_concurrency=8))


def small_round(clients: Clients, name: str, files: list[Path], tag: str) -> tuple[float, float]:
    """Send every file with client `name` from THREADS threads; (files/s, client ms CPU per object)."""
    from connections.contract.xcon import LocalFile, NullResumeStore, TransferContext

    if name == "s3con":
        def one(i: int) -> None:
            p = files[i]
            st = p.stat()
            f = LocalFile(str(p), f"{tag}/{i}", st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_ino)
            clients.con.send(f, TransferContext(resume=NullResumeStore()))
    else:
        put: Callable[[str, bytes], None] = getattr(clients, f"put_{name}")

        def one(i: int) -> None:
            put(f"{tag}/{i}", files[i].read_bytes())

    cpu0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        for _ in pool.map(one, range(len(files))):
            pass
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return len(files) / wall, cpu / len(files) * 1000


def big_round(clients: Clients, name: str, path: Path, tag: str) -> tuple[float, float]:
    """One big object; (MB/s, client CPU seconds)."""
    size = path.stat().st_size
    cpu0, t0 = time.process_time(), time.perf_counter()
    getattr(clients, f"big_{name}")(f"{tag}/big", path)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    clients.boto.delete_object(Bucket=clients.bucket, Key=f"{clients.con.prefix + '/' if clients.con.prefix else ''}{tag}/big")
    return size / wall / 1e6, cpu


def make_files(root: Path, n: int, size: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"f{i:05d}"
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out


def make_big(path: Path, mib: int) -> Path:
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(MiB))
    return path


def report(title: str, unit: str, rows: dict[str, list[tuple[float, float]]], cpu_unit: str, base: str) -> str:
    lines = [f"{title}", f"{'client':8s} {unit:>12s} {cpu_unit:>16s}   ratio to {base} ({unit}, CPU)   runs"]
    med = {k: (statistics.median(v[0] for v in r), statistics.median(v[1] for v in r)) for k, r in rows.items() if r}
    for k, (speed, cpu) in med.items():
        b = med.get(base, (speed, cpu))
        runs = ", ".join(f"{s:.0f}/{c:.3f}" for s, c in rows[k])
        lines.append(f"{k:8s} {speed:12.1f} {cpu:16.3f}   {speed / b[0]:5.2f}x  {cpu / b[1]:5.2f}x   [{runs}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=("s3", "seaweedfs"), default="s3", help="s3 = rclone serve s3")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=4 * KiB)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="own,s3con,obstore,boto3")
    ap.add_argument("--big-clients", default="s3con,obstore,boto3")
    args = ap.parse_args(argv)

    if args.server == "s3":
        from tests.server_s3 import run_rclone_s3 as run
    else:
        from tests.server_seaweedfs import run_seaweedfs as run
    names = args.clients.split(",")
    big_names = [n for n in args.big_clients.split(",") if n] if args.big_mib else []
    with tempfile.TemporaryDirectory(prefix="s3clients-") as tmps:
        tmp = Path(tmps)
        with run(tmp / "server") as srv:
            bucket = srv.new_bucket("bench")
            clients = Clients(srv, bucket, tmp)
            files = make_files(tmp / "small", args.files, args.size)
            big = make_big(tmp / "big.bin", args.big_mib) if big_names else None
            small: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
            large: dict[str, list[tuple[float, float]]] = {n: [] for n in big_names}
            for r in range(args.rounds):
                order = names[r % len(names):] + names[: r % len(names)]
                for n in order:
                    small[n].append(small_round(clients, n, files, f"r{r}-{n}"))
                    print(f"round {r} {n:8s} {small[n][-1][0]:8.0f} files/s {small[n][-1][1]:.3f} ms CPU/object",
                          flush=True)
                border = big_names[r % max(1, len(big_names)):] + big_names[: r % max(1, len(big_names))]
                for n in border:
                    assert big is not None
                    large[n].append(big_round(clients, n, big, f"r{r}-{n}"))
                    print(f"round {r} {n:8s} {large[n][-1][0]:8.1f} MB/s {large[n][-1][1]:.2f} s CPU", flush=True)
            print()
            print(f"server: {args.server}; {args.files} x {args.size} B from {THREADS} threads; "
                  f"{args.big_mib} MiB object; {args.rounds} interleaved rounds, medians")
            print(report(f"{args.files} x {args.size // KiB} KiB", "files/s", small, "ms CPU/object", names[0]))
            if big_names:
                print(report(f"one {args.big_mib} MiB object", "MB/s", large, "s CPU", big_names[0]))
            clients.con.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
