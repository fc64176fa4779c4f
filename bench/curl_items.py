"""Issue 21 spike: would a libcurl-driven item transfer (pycurl's CurlMulti, one Python
thread), or the same loop on plain non-blocking sockets, bring the client's CPU per URL
item to <= 0.31 ms? Not part of bench/run or the suite.

Servers as bench/jobs_urls.py starts them (nginx via tests/server_http.py, `rclone serve s3`
via tests/server_s3.py), N x 64 KiB objects; then, interleaved, ROUNDS rounds of:

  curl      the prototype: one thread, one CurlMulti, WORKERS items in flight, two easy
            handles per slot (GET, PUT) kept for the whole run (libcurl keeps the
            connections alive), GET body written into a preallocated BytesIO (no Python
            frame per chunk), MD5 + CRC32 of it, PUT with exactly the headers
            S3Con._stream_single sends for a job item (Content-MD5, x-amz-checksum-crc32,
            Content-Type, x-amz-meta-size/-mtime/-md5/-source-url/-source-etag/
            -source-last-modified), signed by connections/s3/rest.py's Signer; the ETag of
            every PUT reply is compared with the MD5
  loop      the same one-thread loop without libcurl: non-blocking sockets and one select()
            (as connections/s3/wholegets.py reads a restore's small files), a GET to the
            HTTP server and a PUT to S3 per item on each slot's two keep-alive connections,
            the same headers, signature and ETag check as `curl`
  transfer  skynet's own per-item path in this process: bench/item_transfer.py's run_skynet
            (make_transfer from WORKERS threads, on_existing=overwrite: no HEAD, like curl)
  job       `skynet job run` of the same list, as bench/jobs_urls.py runs it (its own process;
            the table thread, intake and start-up included)

Client CPU: this process's (time.process_time) for curl and transfer, the child's (wait4)
for job; servers' CPU from /proc/PID/stat around each run. Every run's prefix is verified
afterwards: the listing count, and 5 objects fetched and compared by MD5 with the source.

    /work/main/.venv/bin/python bench/curl_items.py [--items 10000] [--rounds 3] [--workers 16]
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import log, median  # noqa: E402
from bench.item_transfer import run_skynet  # noqa: E402
from bench.jobs_urls import proc_cpu_s, skynet as job_run, url_servers  # noqa: E402
from bench.s3_peers import S3Target, count_objects  # noqa: E402
from connections.s3.con import format_mtime, header_safe  # noqa: E402
from connections.s3.rest import UNSIGNED, Layout, Signer, StaticCredentials, key_path  # noqa: E402

KiB = 1 << 10


class Slot:
    """One item in flight: its GET and PUT easy handles (reused for every item, so
    libcurl reuses their connections) and the preallocated body buffer."""

    def __init__(self, pycurl, size: int) -> None:
        self.body = io.BytesIO(bytes(size))  # written in place from offset 0: no growth after the first item
        self.get = pycurl.Curl()
        self.put = pycurl.Curl()
        self.get_head: list[bytes] = []
        self.put_head: list[bytes] = []
        for c, head in ((self.get, self.get_head), (self.put, self.put_head)):
            c.setopt(pycurl.HEADERFUNCTION, head.append)  # a C method: no Python frame per line
            c.setopt(pycurl.NOSIGNAL, 1)
            c.setopt(pycurl.CONNECTTIMEOUT, 10)
            c.setopt(pycurl.TIMEOUT, 60)
            c.slot = self  # type: ignore[attr-defined]
        self.get.setopt(pycurl.WRITEFUNCTION, self.body.write)
        self.get.setopt(pycurl.BUFFERSIZE, 256 * KiB)
        self.put.setopt(pycurl.CUSTOMREQUEST, "PUT")
        self.put.setopt(pycurl.WRITEFUNCTION, len)  # the PUT reply's body (empty) is dropped
        self.item: tuple[str, str] = ("", "")
        self.retried = False
        self.md5 = ""

    def close(self) -> None:
        self.get.close()
        self.put.close()


def _headers(lines: list[bytes]) -> dict[str, str]:
    """The last reply's header fields (lower-case names) from HEADERFUNCTION's lines."""
    out: dict[str, str] = {}
    for raw in lines:
        name, sep, value = raw.decode("latin-1").partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


class CurlItems:
    """The prototype transfer loop: GET each URL, MD5 it, PUT it signed with its metadata."""

    def __init__(self, t: S3Target, prefix: str, workers: int, size: int) -> None:
        import pycurl

        self.pycurl = pycurl
        self.layout = Layout.from_endpoint(t.endpoint_url, t.bucket, "path", t.region)
        self.signer = Signer(t.region, StaticCredentials(t.access_key, t.secret_key))
        self.origin = f"{self.layout.scheme}://{self.layout.host}"
        self.prefix = prefix
        self.multi = pycurl.CurlMulti()
        self.slots = [Slot(pycurl, size) for _ in range(workers)]
        self._mtime: dict[str, str] = {}
        self.retries = 0
        self.waits = 0  # select() calls: how many completions each wakeup brings decides the per-item overhead

    def mtime(self, modified: str) -> str:
        """Last-Modified as skynet's mtime metadata, parsed once per distinct value."""
        got = self._mtime.get(modified)
        if got is None:
            ns = int(email.utils.parsedate_to_datetime(modified).timestamp()) * 1_000_000_000
            got = self._mtime[modified] = format_mtime(ns)
        return got

    def start_get(self, slot: Slot, item: tuple[str, str]) -> None:
        slot.item = item
        slot.body.seek(0)
        slot.get_head.clear()
        slot.get.setopt(self.pycurl.URL, item[0])
        self.multi.add_handle(slot.get)

    def start_put(self, slot: Slot) -> None:
        """The GET is done: check it, hash the body, sign and start the PUT."""
        c = slot.get
        status = c.getinfo(self.pycurl.RESPONSE_CODE)
        if status != 200:
            raise RuntimeError(f"GET {slot.item[0]}: HTTP {status}")
        n = slot.body.tell()
        h = _headers(slot.get_head)
        if int(h.get("content-length", n)) != n:
            raise RuntimeError(f"GET {slot.item[0]}: {n} bytes of {h['content-length']}")
        data = slot.body.getvalue()[:n]  # bytes[:len] is the same object: one copy, out of the buffer
        digest = hashlib.md5(data).digest()
        path = key_path(self.layout.base, f"{self.prefix}/{slot.item[1]}")
        headers = item_put_headers(self, slot.item[0], h, data, digest, path)
        p = slot.put
        p.setopt(self.pycurl.URL, self.origin + path)
        p.setopt(self.pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in headers.items()] + ["Expect:", "Accept:"])
        p.setopt(self.pycurl.POSTFIELDS, data)
        slot.put_head.clear()
        slot.retried = False
        slot.md5 = digest.hex()
        self.multi.add_handle(p)

    def finish_put(self, slot: Slot) -> bool:
        """Whether the item is done; a 5xx/429 is sent once more, as Rest._call does (it
        rides over rclone serve s3's race when two PUTs create one folder)."""
        status = slot.put.getinfo(self.pycurl.RESPONSE_CODE)
        if (status >= 500 or status == 429) and not slot.retried:
            slot.retried = True
            self.retries += 1
            slot.put_head.clear()
            self.multi.add_handle(slot.put)
            return False
        etag = _headers(slot.put_head).get("etag", "").strip('"')
        if status != 200 or etag != slot.md5:
            raise RuntimeError(f"PUT {slot.item[1]}: HTTP {status}, ETag {etag!r} for MD5 {slot.md5}")
        return True

    def run(self, items: list[tuple[str, str]]) -> None:
        pycurl, m = self.pycurl, self.multi
        todo = iter(items)
        free = list(self.slots)
        busy = 0
        for item in todo:
            if not free:
                todo = _chain(item, todo)
                break
            self.start_get(free.pop(), item)
            busy += 1
        while busy:
            while m.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            while True:
                left, ok, failed = m.info_read()
                for c, errno, msg in failed:
                    raise RuntimeError(f"{c.slot.item[0]}: curl error {errno}: {msg}")
                for c in ok:
                    m.remove_handle(c)
                    slot = c.slot
                    if c is slot.get:
                        self.start_put(slot)
                        continue
                    if not self.finish_put(slot):
                        continue
                    nxt = next(todo, None)
                    if nxt is None:
                        busy -= 1
                    else:
                        self.start_get(slot, nxt)
                if not left:
                    break
            if busy:
                self.waits += 1
                m.select(1.0)

    def close(self) -> None:
        for s in self.slots:
            s.close()
        self.multi.close()


def item_put_headers(loop: "CurlItems | LoopItems", url: str, h: dict[str, str], body: bytes, digest: bytes,
                     path: str) -> dict[str, str]:
    """The signed headers of a job item's PUT (what S3Con._stream_single sends): `h` is
    the GET reply's headers, `digest` the body's MD5, `path` the object's key path."""
    headers = {"content-md5": base64.b64encode(digest).decode(),
               "x-amz-checksum-crc32": base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode(),
               "content-type": "application/octet-stream",
               "x-amz-meta-size": str(len(body)), "x-amz-meta-md5": digest.hex(),
               "x-amz-meta-source-url": header_safe(url),
               "host": loop.layout.host, "content-length": str(len(body))}
    if "last-modified" in h:
        headers["x-amz-meta-mtime"] = loop.mtime(h["last-modified"])
        headers["x-amz-meta-source-last-modified"] = h["last-modified"]
    if "etag" in h:
        headers["x-amz-meta-source-etag"] = header_safe(h["etag"])
    loop.signer.sign("PUT", path, "", headers, UNSIGNED)
    return headers


def _chain(first, rest):
    yield first
    yield from rest


def run_curl(t: S3Target, items: list[tuple[str, str]], prefix: str, workers: int, size: int) -> tuple[float, float]:
    """(seconds, CPU seconds) of the prototype moving `items` under `prefix`."""
    loop = CurlItems(t, prefix, workers, size)
    cpu0, t0 = time.process_time(), time.perf_counter()
    loop.run(items)
    secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    loop.close()
    log(f"curl: {loop.waits / len(items):.2f} select() calls per item")
    if loop.retries:
        log(f"curl: {loop.retries} PUTs sent again after a 5xx")
    return secs, cpu


def verify(t: S3Target, s3, prefix: str, items: list[tuple[str, str]], root: Path, n_check: int = 5) -> str:
    """Every object listed under `prefix`, and a few fetched back equal to their source;
    the metadata names the first one carries (to compare the paths' PUTs)."""
    got = count_objects(t, prefix)
    if got != len(items):
        raise SystemExit(f"{prefix}: {got} of {len(items)} objects")
    client = s3.client()
    step = max(len(items) // n_check, 1)
    head = client.head_object(Bucket=t.bucket, Key=f"{prefix}/{items[0][1]}")
    names = ",".join(sorted(head.get("Metadata", {})))
    for _url, rel in items[::step][:n_check]:
        body = client.get_object(Bucket=t.bucket, Key=f"{prefix}/{rel}")["Body"].read()
        want = (root / "items" / rel).read_bytes()
        if hashlib.md5(body).digest() != hashlib.md5(want).digest():
            raise SystemExit(f"{prefix}/{rel}: MD5 differs from the source")
    return names


class LoopItems:
    """One thread, non-blocking sockets: GET from the HTTP server, MD5+CRC32, signed PUT.
    A spike: plain HTTP only, no redirects, retries or resume; any odd reply raises."""

    def __init__(self, t: S3Target, prefix: str, workers: int, size: int, http_host: str, http_port: int) -> None:
        import selectors
        self.layout = Layout.from_endpoint(t.endpoint_url, t.bucket, "path", t.region)
        self.signer = Signer(t.region, StaticCredentials(t.access_key, t.secret_key))
        self.prefix = prefix
        self.sel = selectors.DefaultSelector()
        self.workers = workers
        self.hp = (http_host, http_port)
        self.sp = (self.layout.hostname, self.layout.port)
        self._mtime = {}

    mtime = CurlItems.mtime

    def run(self, items: list[tuple[str, str]]) -> None:
        import selectors

        todo = iter(items)
        pairs = [_Pair(self.hp, self.sp) for _ in range(self.workers)]
        for pair in pairs:
            self.sel.register(pair.get, selectors.EVENT_READ, (pair, True))
            self.sel.register(pair.put, selectors.EVENT_READ, (pair, False))
        busy = sum(1 for pair in pairs if pair.start(next(todo, None), self.hp))
        while busy:
            for key, _events in self.sel.select(1.0):
                pair, is_get = key.data
                reply = pair.receive(is_get)
                if reply is None:
                    continue
                status, h, body = reply
                if is_get:
                    if status != 200:
                        raise RuntimeError(f"GET {pair.item[0]}: HTTP {status}")
                    pair.send_put(self._put_head(pair, h, body), body)
                    continue
                etag = h.get("etag", "").strip('"')
                if status != 200 or etag != pair.md5:
                    raise RuntimeError(f"PUT {pair.item[1]}: HTTP {status}, ETag {etag!r} for MD5 {pair.md5}")
                if not pair.start(next(todo, None), self.hp):
                    busy -= 1
        for pair in pairs:
            pair.close()

    def _put_head(self, pair: "_Pair", h: dict[str, str], body: bytes) -> bytes:
        """The PUT of a fetched body: exactly the headers CurlItems.start_put sends, signed."""
        digest = hashlib.md5(body).digest()
        pair.md5 = digest.hex()
        path = key_path(self.layout.base, f"{self.prefix}/{pair.item[1]}")
        headers = item_put_headers(self, pair.item[0], h, body, digest, path)
        return "".join([f"PUT {path} HTTP/1.1\r\n", *[f"{k}: {v}\r\n" for k, v in headers.items()],
                        "\r\n"]).encode("latin-1")

    def close(self) -> None:
        self.sel.close()


class _Pair:
    """One LoopItems slot: a keep-alive connection to the HTTP server and one to S3."""

    def __init__(self, http: tuple[str, int], s3: tuple[str, int]) -> None:
        import socket

        self.get = socket.create_connection(http)
        self.put = socket.create_connection(s3)
        for sock in (self.get, self.put):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.item: tuple[str, str] = ("", "")
        self.md5 = ""

    def start(self, item: tuple[str, str] | None, http: tuple[str, int]) -> bool:
        """GET the item's URL; False when there is no item."""
        if item is None:
            return False
        self.item, self.buf = item, bytearray()
        path = item[0].split("/", 3)[3]
        self.get.sendall(f"GET /{path} HTTP/1.1\r\nHost: {http[0]}:{http[1]}\r\n\r\n".encode())
        return True

    def send_put(self, head: bytes, body: bytes) -> None:
        self.buf = bytearray()
        self.put.sendall(head + body)

    def receive(self, from_get: bool) -> tuple[int, dict[str, str], bytes] | None:
        """(status, headers, body) once the reply on that connection is whole, else None."""
        from connections.s3.rest import parse_head

        data = (self.get if from_get else self.put).recv(1 << 17)
        if not data:
            raise RuntimeError("the server closed a connection")
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        status, _version, headers = parse_head(bytes(self.buf[:end]))
        if len(self.buf) < end + 4 + int(headers.get("content-length", "0")):
            return None
        return status, headers, bytes(self.buf[end + 4:])

    def close(self) -> None:
        self.get.close()
        self.put.close()


def run_loop(t: S3Target, items: list[tuple[str, str]], prefix: str, workers: int, size: int) -> tuple[float, float]:
    """(seconds, CPU seconds) of the socket loop moving `items` under `prefix`."""
    host, port = items[0][0].split("/")[2].split(":")
    loop = LoopItems(t, prefix, workers, size, host, int(port))
    cpu0, t0 = time.process_time(), time.perf_counter()
    loop.run(items)
    secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    loop.close()
    return secs, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64 * KiB)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--only", default="curl,loop,transfer,job")
    ap.add_argument("--hold", type=float, default=0.0, help="seconds to wait before each curl run (to attach py-spy)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="skynet-curl-items-"))
    try:
        with contextlib.ExitStack() as stack:
            http, srv, t = url_servers(stack, work, "curl")
            log(f"serving {args.items:,} objects of {args.size:,} bytes")
            block = os.urandom(args.size)
            items = []
            for i in range(args.items):  # the paths bench/item_transfer.py's run_skynet GETs
                rel = f"{i:06d}.bin"
                http.put(f"items/{rel}", block[:-8] + i.to_bytes(8, "big"))
                items.append((http.url(f"items/{rel}"), rel))
            runs: dict[str, Callable[[str], tuple[float, float]]] = {
                "curl": lambda p: run_curl(t, items, p, args.workers, args.size),
                "loop": lambda p: run_loop(t, items, p, args.workers, args.size),
                "transfer": lambda p: _transfer(http, srv, t.bucket, p, args.items, args.workers),
                "job": lambda p: _job(t, items, p, work, args.workers),
            }
            names = args.only.split(",")
            res: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in names}
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    prefix = f"r{r}-{name}"
                    if name == "curl" and args.hold:
                        log(f"pid {os.getpid()}: curl starts in {args.hold} s")
                        time.sleep(args.hold)
                    s0 = proc_cpu_s(http.pid) + proc_cpu_s(srv.pid)
                    secs, cpu = runs[name](prefix)
                    srv_cpu = proc_cpu_s(http.pid) + proc_cpu_s(srv.pid) - s0
                    load = os.getloadavg()[0]
                    meta = verify(t, srv, prefix, items, http.root)
                    row = (args.items / secs, cpu * 1000 / args.items, srv_cpu * 1000 / args.items, load)
                    res[name].append(row)
                    log(f"round {r + 1} {name:8s} {row[0]:7.0f} items/s  client {row[1]:.3f} ms/item  "
                        f"servers {row[2]:.3f} ms/item  load {load:.1f}  (verified; metadata {meta})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.items:,} x {args.size // KiB} KiB, {args.workers} in flight, medians of {args.rounds} rounds:")
    print("| path | items/s | client CPU per item | servers' CPU per item | client ms per round | load average |")
    print("|---|---|---|---|---|---|")
    for name, v in res.items():
        print(f"| {name} | {median([x[0] for x in v]):,.0f} | {median([x[1] for x in v]):.3f} ms | "
              f"{median([x[2] for x in v]):.3f} ms | {', '.join(f'{x[1]:.3f}' for x in v)} | "
              f"{', '.join(f'{x[3]:.1f}' for x in v)} |")


def _transfer(http, srv, bucket: str, prefix: str, n: int, workers: int) -> tuple[float, float]:
    rate, cpu_ms = run_skynet(http, srv, bucket, prefix, n, workers, "overwrite")
    return n / rate, cpu_ms * n / 1000


def _job(t: S3Target, items: list[tuple[str, str]], prefix: str, work: Path, workers: int) -> tuple[float, float]:
    secs, cpu, rc = job_run(t, items, prefix, work, workers)
    if rc != 0:
        raise SystemExit(f"job run exited {rc}; see {work / prefix}")
    return secs, cpu


if __name__ == "__main__":
    main()
