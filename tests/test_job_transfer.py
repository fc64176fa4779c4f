"""Issue 21: the transfer of one item (skynet/jobs/transfer.py) against real servers:
nginx (tests/server_http.py) and pyftpdlib (tests/server_ftp.py) as sources, a local
folder, `rclone serve s3` and OpenSSH as targets. What was fetched is counted from the
servers' own logs."""
from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Iterator

import pytest

from connections.contract.xcon import NullResumeStore, TransferContext
from connections.local.con import LocalCon
from connections.s3.con import S3Con
from skynet.jobs.item import CHECKSUM, FORBIDDEN, NOT_FOUND, OTHER, REFUSED, TIMEOUT, TOO_LARGE, Item, ItemFailed
from skynet.jobs.transfer import make_transfer
from skynet.transfer.chunks import TransferStopped

MiB = 1 << 20


def blob(n: int, seed: int = 1) -> bytes:
    """`n` bytes that differ from part to part (a stitched file cannot pass for the whole)."""
    out = bytearray()
    block = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}-{block}".encode()).digest() * 2048
        block += 1
    return bytes(out[:n])


class Target:
    """A target connection and a way to read back what it holds."""

    def __init__(self, kind: str, con: Any, read: Any, meta: Any) -> None:
        self.kind, self.con, self.read, self.meta = kind, con, read, meta


@pytest.fixture
def http(servers):
    return servers.get("http")


def _local_target(tmp_path) -> Target:
    root = tmp_path / "target"
    root.mkdir()
    con = LocalCon(str(root))
    return Target("local", con, lambda rel: (root / rel).read_bytes(), lambda rel: {})


def _s3_target(servers, **options: Any) -> Iterator[Target]:
    srv = servers.get("s3")
    bucket = srv.new_bucket()
    opts = {"part_size": 5 * MiB, "multipart_threshold": 8 * MiB, "concurrency": 2, **options}
    con = S3Con(prefix="root", **srv.con_kwargs(bucket), **opts)
    con.connect()

    def read(rel: str) -> bytes:
        return srv.client().get_object(Bucket=bucket, Key=f"root/{rel}")["Body"].read()

    def meta(rel: str) -> dict[str, str]:
        head = srv.client().head_object(Bucket=bucket, Key=f"root/{rel}")
        return {k.lower(): v for k, v in head["Metadata"].items()}

    try:
        yield Target("s3", con, read, meta)
    finally:
        con.close()


@pytest.fixture(params=["local", "s3"])
def target(request, tmp_path, servers) -> Iterator[Target]:
    if request.param == "local":
        yield _local_target(tmp_path)
    else:
        yield from _s3_target(servers)


def run(t: Any, item: Item, store: NullResumeStore | None = None, stop_after: int | None = None) -> Any:
    """One attempt; with `stop_after`, ctx.stop is set once that many bytes are reported."""
    stop = threading.Event()

    def progress(done: int, _total: int) -> None:
        if stop_after is not None and done >= stop_after:
            stop.set()

    ctx = TransferContext(progress=progress, resume=store or NullResumeStore(), stop=stop)
    return t(item, ctx)


# -- HTTP: plain fetches and status codes ---------------------------------------------------


def test_http_item_lands_with_its_metadata(http, target):
    data = blob(300_000)
    url = http.put("plain/a.bin", data)
    t = make_transfer("urls:x", target.con)
    res = run(t, Item(url, "dir/a.bin"))
    assert target.read("dir/a.bin") == data
    assert res.size == len(data) and not res.skipped
    assert res.meta["source-url"] == url and res.meta["md5"] == hashlib.md5(data).hexdigest()
    assert res.meta["source-etag"].startswith('"') and res.meta["source-last-modified"]
    if target.kind == "s3":
        meta = target.meta("dir/a.bin")
        assert meta["source-url"] == url and meta["md5"] == hashlib.md5(data).hexdigest()
        assert meta["source-etag"] == res.meta["source-etag"] and meta["size"] == str(len(data))
        assert "mtime" in meta
    entry = target.con.stat("dir/a.bin")
    assert entry.mtime_ns // 10**9 == int(os.stat(http.root / "plain/a.bin").st_mtime)


@pytest.mark.parametrize("path, cls, permanent, status", [
    ("missing/none.bin", NOT_FOUND, True, 404),
    ("gone/x.bin", NOT_FOUND, True, 410),
    ("forbidden/x.bin", FORBIDDEN, True, 403),
    ("e500/x.bin", OTHER, False, 500),
    ("e503/x.bin", REFUSED, False, 503),
])
def test_http_status_is_classified(http, tmp_path, path, cls, permanent, status):
    t = make_transfer("urls:x", _local_target(tmp_path).con)
    with pytest.raises(ItemFailed) as exc:
        run(t, Item(http.url(path), "x.bin"))
    assert (exc.value.error_class, exc.value.permanent, exc.value.status) == (cls, permanent, status)


def test_http_redirect_is_followed(http, tmp_path):
    data = blob(5000, seed=2)
    http.put("plain/r.bin", data)
    target = _local_target(tmp_path)
    run(make_transfer("urls:x", target.con), Item(http.url("redirect/plain/r.bin"), "r.bin"))
    assert target.read("r.bin") == data
    assert [f.status for f in http.fetches("redirect/plain/r.bin")] == [302]


def test_http_stall_is_a_timeout(http, tmp_path):
    http.put("stall/s.bin", blob(100_000))
    t = make_transfer("urls:x", _local_target(tmp_path).con, read_timeout=0.5)
    with pytest.raises(ItemFailed) as exc:
        run(t, Item(http.url("stall/s.bin"), "s.bin"))
    assert exc.value.error_class == TIMEOUT and not exc.value.permanent


def test_refused_connection_is_refused_class(tmp_path):
    from tests.servers import free_port
    t = make_transfer("urls:x", _local_target(tmp_path).con)
    with pytest.raises(ItemFailed) as exc:
        run(t, Item(f"http://127.0.0.1:{free_port()}/x", "x"))
    assert exc.value.error_class == REFUSED and not exc.value.permanent


def test_unsupported_scheme_and_hostile_dest(http, tmp_path):
    target = _local_target(tmp_path)
    t = make_transfer("urls:x", target.con)
    with pytest.raises(ItemFailed) as exc:
        run(t, Item("gopher://127.0.0.1/x", "x"))
    assert exc.value.permanent and "scheme" in exc.value.text
    url = http.put("plain/h.bin", b"hostile")
    for dest in ("../escape", "/etc/escape", "a/../../escape", "a//b", ""):
        with pytest.raises(ItemFailed) as exc:
            run(t, Item(url, dest))
        assert exc.value.permanent
    assert not (tmp_path / "escape").exists() and os.listdir(tmp_path / "target") == []


# -- resume ----------------------------------------------------------------------------------


def test_http_resume_fetches_only_the_rest(http, target):
    """Stopped mid-file, the next attempt asks nginx for the bytes after what the
    target kept (Range + If-Range) and sends no finished part again."""
    size = 23 * MiB + 1234
    data = blob(size, seed=3)
    url = http.put(f"resume/big-{target.kind}.bin", data)
    t = make_transfer("urls:x", target.con)
    store = NullResumeStore()
    with pytest.raises(TransferStopped):
        run(t, Item(url, "big.bin"), store, stop_after=6 * MiB)
    assert store.load()
    res = run(t, Item(url, "big.bin"), store)
    assert target.read("big.bin") == data
    gets = [f for f in http.fetches(f"resume/big-{target.kind}.bin") if f.method == "GET"]
    assert len(gets) == 2 and gets[0].range == "-" and gets[1].status == 206
    start = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert start >= 5 * MiB and gets[1].if_range == res.meta["source-etag"]
    assert gets[1].sent == size - start  # nothing before `start` fetched again
    assert res.bytes_sent <= size - start  # nothing the target kept sent again
    assert store.load() is None


def test_http_object_changed_between_attempts_starts_over(http, target):
    size = 12 * MiB
    url = http.put(f"changed/c-{target.kind}.bin", blob(size, seed=4))
    t = make_transfer("urls:x", target.con)
    store = NullResumeStore()
    with pytest.raises(TransferStopped):
        run(t, Item(url, "c.bin"), store, stop_after=5 * MiB)
    new = blob(size, seed=5)
    http.put(f"changed/c-{target.kind}.bin", new)
    os.utime(http.root / f"changed/c-{target.kind}.bin", (1_700_000_000, 1_700_000_000))  # another ETag for sure
    res = run(t, Item(url, "c.bin"), store)
    assert target.read("c.bin") == new  # never stitched
    gets = [f for f in http.fetches(f"changed/c-{target.kind}.bin") if f.method == "GET"]
    assert gets[-1].status == 200 and gets[-1].if_range not in ("", "-") and gets[-1].sent == size
    assert res.size == size


def test_server_ignoring_range_starts_over(http, target):
    size = 12 * MiB
    data = blob(size, seed=6)
    url = http.put(f"norange/n-{target.kind}.bin", data)
    t = make_transfer("urls:x", target.con)
    store = NullResumeStore()
    with pytest.raises(TransferStopped):
        run(t, Item(url, "n.bin"), store, stop_after=5 * MiB)
    run(t, Item(url, "n.bin"), store)
    assert target.read("n.bin") == data
    gets = [f for f in http.fetches(f"norange/n-{target.kind}.bin") if f.method == "GET"]
    assert gets[-1].range.startswith("bytes=") and gets[-1].status == 200


@pytest.mark.parametrize("size", [100_000, 21 * MiB])
def test_unknown_size_is_streamed(http, target, size):
    data = blob(size, seed=7)
    url = http.put(f"chunked/u{size}.bin", data)
    res = run(make_transfer("urls:x", target.con), Item(url, "u.bin"))
    assert target.read("u.bin") == data and res.size == size


# -- verification, limits, what is already there ---------------------------------------------


def test_md5_mismatch_starts_over_once_then_fails(http, target):
    data = blob(200_000, seed=8)
    url = http.put(f"sum/m-{target.kind}.bin", data)
    t = make_transfer("urls:x", target.con)
    with pytest.raises(ItemFailed) as exc:
        run(t, Item(url, "m.bin", md5="0" * 32))
    assert exc.value.error_class == CHECKSUM and exc.value.permanent
    assert target.con.stat("m.bin") is None
    assert len([f for f in http.fetches(f"sum/m-{target.kind}.bin") if f.method == "GET"]) == 2
    res = run(t, Item(url, "m.bin", md5=hashlib.md5(data).hexdigest(), size=len(data)))
    assert res.size == len(data)


def test_size_from_the_list_is_checked(http, tmp_path):
    url = http.put("sum/s.bin", b"12345")
    with pytest.raises(ItemFailed) as exc:
        run(make_transfer("urls:x", _local_target(tmp_path).con), Item(url, "s.bin", size=6))
    assert exc.value.error_class == CHECKSUM


@pytest.mark.parametrize("where", ["plain", "chunked"])
def test_too_large(http, target, where):
    url = http.put(f"{where}/big-{target.kind}.bin", blob(3 * MiB, seed=9))
    t = make_transfer("urls:x", target.con, max_size=MiB)
    with pytest.raises(ItemFailed) as exc:
        run(t, Item(url, "big.bin"))
    assert exc.value.error_class == TOO_LARGE and exc.value.permanent
    assert target.con.stat("big.bin") is None


def test_identical_item_is_skipped(http, target):
    data = blob(50_000, seed=10)
    url = http.put(f"skip/k-{target.kind}.bin", data)
    t = make_transfer("urls:x", target.con)
    run(t, Item(url, "k.bin"))
    res = run(t, Item(url, "k.bin"))
    assert res.skipped and res.bytes_sent == 0
    res = run(t, Item(url, "k.bin", size=len(data), md5=hashlib.md5(data).hexdigest()))
    assert res.skipped  # S3: size + MD5 ETag; local (no MD5 ETag): size + mtime from a HEAD
    assert [f.method for f in http.fetches(f"skip/k-{target.kind}.bin")].count("GET") == 1
    http.put(f"skip/k-{target.kind}.bin", data + b"more")
    res = run(t, Item(url, "k.bin"))
    assert not res.skipped and target.read("k.bin") == data + b"more"
