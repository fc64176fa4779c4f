"""Issue 21: the transfer of one item (skynet/jobs/transfer.py) against real servers:
nginx (tests/server_http.py) and pyftpdlib (tests/server_ftp.py) as sources, a local
folder, `rclone serve s3` and OpenSSH as targets. What was fetched is counted from the
servers' own logs."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from connections.contract.xcon import NullResumeStore, TransferContext
from connections.local.con import LocalCon
from connections.s3.con import S3Con
from skynet.jobs.item import CHECKSUM, FORBIDDEN, NOT_FOUND, OTHER, REFUSED, TIMEOUT, TOO_LARGE, Item, ItemFailed
from skynet.jobs.transfer import make_transfer
from skynet.transfer.chunks import TransferStopped

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


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


def _sftp_target(tmp_path, servers) -> Iterator[Target]:
    from tests.backend_sftp import sftp_backend
    with sftp_backend(tmp_path, servers) as b:
        yield Target("sftp", b.con, lambda rel: b.con.read_range(rel, 0, 1 << 40), lambda rel: {})


@pytest.fixture(params=["local", "s3", "sftp"])
def target(request, tmp_path, servers) -> Iterator[Target]:
    if request.param == "local":
        yield _local_target(tmp_path)
    elif request.param == "s3":
        yield from _s3_target(servers)
    else:
        yield from _sftp_target(tmp_path, servers)


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


# -- FTP ---------------------------------------------------------------------------------------


@pytest.fixture
def ftp(servers):
    return servers.get("ftp")


def test_ftp_anonymous_and_login(ftp, target):
    data = blob(700_000, seed=11)
    ftp.put(f"pub/{target.kind}/a.bin", data)
    t = make_transfer("urls:x", target.con)
    res = run(t, Item(ftp.url(f"pub/{target.kind}/a.bin"), "anon.bin"))
    assert target.read("anon.bin") == data and res.meta["md5"] == hashlib.md5(data).hexdigest()
    mtime = int(os.stat(ftp.root / f"pub/{target.kind}/a.bin").st_mtime)
    assert target.con.stat("anon.bin").mtime_ns // 10**9 == mtime  # MDTM
    url = ftp.url(f"pub/{target.kind}/a.bin", login=True)
    res = run(t, Item(url, "login.bin"))
    assert target.read("login.bin") == data
    assert ftp.password not in res.meta["source-url"] and ftp.user in res.meta["source-url"]
    if target.kind == "s3":
        assert ftp.password not in str(target.meta("login.bin"))


def test_ftp_errors_are_classified(ftp, tmp_path):
    t = make_transfer("urls:x", _local_target(tmp_path).con)
    with pytest.raises(ItemFailed) as exc:
        run(t, Item(ftp.url("pub/none.bin"), "x"))
    assert (exc.value.error_class, exc.value.permanent, exc.value.status) == (NOT_FOUND, True, 550)
    ftp.put("pub/y.bin", b"y")
    bad = ftp.url("pub/y.bin", login=True).replace(ftp.password, "wrong")
    with pytest.raises(ItemFailed) as exc:
        run(t, Item(bad, "y"))
    assert exc.value.error_class == FORBIDDEN and exc.value.permanent and "wrong" not in exc.value.text


def test_ftp_resume_uses_rest(ftp, target):
    size = 23 * MiB + 77
    data = blob(size, seed=12)
    ftp.put(f"big/{target.kind}.bin", data)
    url = ftp.url(f"big/{target.kind}.bin", login=True)
    t = make_transfer("urls:x", target.con)
    store = NullResumeStore()
    with pytest.raises(TransferStopped):
        run(t, Item(url, "big.bin"), store, stop_after=6 * MiB)
    res = run(t, Item(url, "big.bin"), store)
    assert target.read("big.bin") == data
    rests = [int(c.split()[1]) for c in ftp.commands() if c.startswith("REST ")]
    assert rests and rests[-1] >= 5 * MiB and res.bytes_sent <= size - rests[-1]
    assert ftp.retrieved(f"big/{target.kind}.bin")[-1] == size - rests[-1]  # nothing before REST again


# -- trees and remotes as sources ----------------------------------------------------------------


def test_local_tree_into_s3_keeps_size_mtime_mode(tmp_path, servers):
    from skynet.jobs.sources import list_items
    tree = tmp_path / "tree"
    files = {"a.txt": (b"alpha", 0o640), "d/e/b.bin": (blob(3 * MiB, seed=13), 0o600), "odd name ü.txt": (b"x", 0o644)}
    for rel, (data, mode) in files.items():
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, mode)
        os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    for target in _s3_target(servers):
        t = make_transfer(f"local:{tree}", target.con)
        items = sorted(list_items(f"local:{tree}"), key=lambda i: i.dest)
        assert [i.dest for i in items] == sorted(files)
        for item in items:
            res = run(t, item)
            assert not res.skipped and target.read(item.dest) == files[item.dest][0]
            e = target.con.stat(item.dest)
            assert e.mode == files[item.dest][1] and e.mtime_ns == 1_600_000_000_000_000_000
        assert all(run(t, item).skipped for item in items)  # identical now: size + mtime
        t.close()


def test_sftp_source_into_s3_resumes_mid_file(tmp_path, servers):
    from skynet.jobs.sources import list_items
    from tests.backend_sftp import sftp_backend
    big = blob(30 * MiB + 5, seed=14)
    with sftp_backend(tmp_path, servers) as src:
        from tests.test_xcon_contract import make_file
        for rel, data in {"x/small.txt": b"small", "x/big.bin": big}.items():
            src.con.send(make_file(tmp_path, rel, data, mode=0o600, mtime_ns=1_610_000_000_000_000_000),
                         TransferContext())
        for target in _s3_target(servers):
            t = make_transfer("sftp://127.0.0.1/x", target.con, source_con=src.con)
            items = {i.dest: i for i in list_items("sftp://x", con=src.con)}
            assert set(items) == {"x/small.txt", "x/big.bin"} and items["x/big.bin"].size == len(big)
            assert run(t, items["x/small.txt"]).size == 5
            store = NullResumeStore()
            with pytest.raises(TransferStopped):
                run(t, items["x/big.bin"], store, stop_after=12 * MiB)
            res = run(t, items["x/big.bin"], store)
            assert target.read("x/big.bin") == big and res.bytes_sent <= len(big) - 10 * MiB
            e = target.con.stat("x/big.bin")
            assert e.mtime_ns == 1_610_000_000_000_000_000 and e.mode == 0o600


def test_s3_source_into_local_verifies_md5(tmp_path, servers):
    from skynet.jobs.sources import list_items
    for src in _s3_target(servers):
        data = {"k/one.bin": blob(200_000, seed=15), "k/two.bin": b"two"}
        for rel, b in data.items():
            src.con.send(__import__("tests.test_xcon_contract", fromlist=["make_file"]).make_file(
                tmp_path, rel, b, mtime_ns=1_620_000_000_000_000_000), TransferContext())
        target = _local_target(tmp_path)
        t = make_transfer("s3:bucket/prefix", target.con, source_con=src.con)
        items = list(list_items("s3:b", con=src.con))
        assert {i.dest: i.md5 for i in items} == {k: hashlib.md5(v).hexdigest() for k, v in data.items()}
        for item in items:
            res = run(t, item)
            assert target.read(item.dest) == data[item.dest] and res.meta["md5"] == item.md5
            assert os.stat(tmp_path / "target" / item.dest).st_mtime_ns == 1_620_000_000_000_000_000
        missing = Item("k/none.bin", "none.bin")
        with pytest.raises(ItemFailed) as exc:
            run(t, missing)
        assert exc.value.error_class == NOT_FOUND and exc.value.permanent


def test_empty_item(http, target):
    url = http.put(f"plain/empty-{target.kind}.bin", b"")
    res = run(make_transfer("urls:x", target.con), Item(url, "e/empty.bin"))
    assert res.size == 0 and target.read("e/empty.bin") == b""
    assert res.meta["md5"] == hashlib.md5(b"").hexdigest()


def test_fresh_target_needs_no_stat_per_item(http, tmp_path):
    """One listing of the target tells which destinations are new: no stat for them
    (an S3 HEAD per item); names that are there are stat()ed and compared."""
    class Counting(LocalCon):
        stats = 0

        def stat(self, rel):  # noqa: ANN001, ANN201
            Counting.stats += 1
            return super().stat(rel)

    (tmp_path / "target").mkdir()
    urls = [http.put(f"fresh/{i}.bin", blob(1000 + i, seed=i)) for i in range(5)]
    t = make_transfer("urls:x", Counting(str(tmp_path / "target")))
    for i, url in enumerate(urls):
        assert not run(t, Item(url, f"{i}.bin")).skipped
    assert Counting.stats == 0
    t2 = make_transfer("urls:x", Counting(str(tmp_path / "target")))
    assert all(run(t2, Item(url, f"{i}.bin")).skipped for i, url in enumerate(urls))
    assert Counting.stats == 5


# -- kill -9 in the middle of an item ------------------------------------------------------------

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from connections.contract.xcon import TransferContext
from skynet.jobs.item import Item
from skynet.jobs.transfer import make_transfer
from tests.test_job_transfer import FileStore
args = json.loads(sys.argv[1])
if args["kind"] == "local":
    from connections.local.con import LocalCon
    con = LocalCon(args["root"])
else:
    from connections.s3.con import S3Con
    con = S3Con(**args["s3"])
    con.connect()
ctx = TransferContext(progress=lambda done, total: print(done, flush=True), resume=FileStore(args["state"]),
                      throttle=lambda n: time.sleep(n / (12 << 20)))
make_transfer("urls:x", con)(Item(args["url"], "big.bin", md5=args["md5"]), ctx)
print("finished", flush=True)
"""


class FileStore:
    """A ResumeStore in a JSON file (what the job's item row is to a real run)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict | None:
        try:
            with open(self.path) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None

    def save(self, state: dict) -> None:
        with open(self.path + ".tmp", "w") as fh:
            json.dump(state, fh)
        os.replace(self.path + ".tmp", self.path)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_kill_9_mid_item_continues_with_range(http, tmp_path, servers, kind):
    """A process moving a 23 MiB item is killed with -9 mid-file; the next attempt
    continues from what the target kept (nginx's log: one ranged GET for the rest)."""
    size = 23 * MiB + 99
    data = blob(size, seed=16)
    md5 = hashlib.md5(data).hexdigest()
    url = http.put(f"kill/{kind}.bin", data)
    state = str(tmp_path / "state.json")
    if kind == "local":
        target = _local_target(tmp_path)
        args = {"kind": "local", "root": str(tmp_path / "target")}
        gen = None
    else:
        gen = _s3_target(servers)
        target = next(gen)
        args = {"kind": "s3", "s3": {"prefix": "root", "part_size": 5 * MiB, "multipart_threshold": 8 * MiB,
                                     "concurrency": 2, **servers.get("s3").con_kwargs(target.con.bucket)}}
    args.update(url=url, md5=md5, state=state)
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args), str(REPO)], stdout=subprocess.PIPE,
                             text=True, cwd=str(REPO))
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == "finished" or int(line) >= 11 * MiB:
            break
    child.kill()
    child.wait()
    assert FileStore(state).load(), "the kill came after the item finished"
    t = make_transfer("urls:x", target.con)
    res = run(t, Item(url, "big.bin", md5=md5), FileStore(state))
    assert target.read("big.bin") == data and FileStore(state).load() is None
    gets = [f for f in http.fetches(f"kill/{kind}.bin") if f.method == "GET"]
    start = int(gets[-1].range.removeprefix("bytes=").rstrip("-"))
    assert len(gets) == 2 and gets[-1].status == 206 and start >= 5 * MiB and gets[-1].sent == size - start
    assert res.bytes_sent <= size - start
    if kind == "s3":
        assert target.meta("big.bin")["md5"] == md5
        assert not list(target.con.uploads())
        with contextlib.suppress(StopIteration):
            next(gen)  # type: ignore[arg-type]


def test_another_configs_service_as_source(tmp_path, servers):
    """`config:FILE`: the job reads another config's service (here SFTP), rooted at its mapping's target."""
    from skynet.jobs.sources import list_items
    from tests.harness import write_config
    srv = servers.get("sftp")
    folder = srv.fresh_folder("cfgsrc")
    os.makedirs(os.path.join(folder, "sub"))
    files = {"one.txt": b"one", "sub/two.bin": blob(300_000, seed=17)}
    for rel, data in files.items():
        with open(os.path.join(folder, rel), "wb") as fh:
            fh.write(data)
    (tmp_path / "unused").mkdir()
    cfg = write_config(tmp_path / "other.ini", "sftp", {"m": {"source": str(tmp_path / "unused"), "target": folder}},
                       tmp_path / "state", srv.service())
    target = _local_target(tmp_path)
    t = make_transfer(f"config:{cfg}", target.con)
    items = sorted(list_items(f"config:{cfg}"), key=lambda i: i.dest)
    assert [i.dest for i in items] == sorted(files)
    for item in items:
        run(t, item)
        assert target.read(item.dest) == files[item.dest]
    t.close()


def test_http_basic_auth_from_the_url(http, tmp_path):
    from tests.server_http import PASSWORD, USER
    data = b"private bytes"
    url = http.put("private/p.bin", data)
    target = _local_target(tmp_path)
    t = make_transfer("urls:x", target.con)
    with pytest.raises(ItemFailed) as exc:
        run(t, Item(url, "p.bin"))
    assert (exc.value.error_class, exc.value.status) == (FORBIDDEN, 401)
    authed = url.replace("http://", f"http://{USER}:{PASSWORD}@")
    res = run(t, Item(authed, "p.bin"))
    assert target.read("p.bin") == data and PASSWORD not in res.meta["source-url"]
    with pytest.raises(ItemFailed) as exc:
        run(t, Item(authed.replace("/private/p.bin", "/private/none.bin"), "n.bin"))
    assert PASSWORD not in exc.value.text and exc.value.error_class == NOT_FOUND


def test_local_tree_item_stopped_is_a_pause_and_resumes(tmp_path, servers):
    """A `local:DIR` item goes through target.send(); ctx.stop there is TransferStopped
    (a window closing), not a failed attempt, and the upload continues after it."""
    tree = tmp_path / "tree"
    tree.mkdir()
    data = blob(30 * MiB, seed=18)
    (tree / "big.bin").write_bytes(data)
    for target in _s3_target(servers):
        t = make_transfer(f"local:{tree}", target.con)
        item = Item("big.bin", "big.bin", size=len(data))
        store = NullResumeStore()
        with pytest.raises(TransferStopped):
            run(t, item, store, stop_after=10 * MiB)
        res = run(t, item, store)
        assert target.read("big.bin") == data and res.bytes_sent < len(data)
        t.close()


@pytest.mark.parametrize("fault, cls", [("cut", OTHER), ("stall", TIMEOUT)])
def test_connection_reset_or_stall_mid_body_is_transient_and_resumes(http, target, fault, cls):
    """The source's connection is reset (or goes silent) mid-file: a transient error of
    its class, the target keeps what it has, and the next attempt continues with Range.
    (64 MiB, cut at 8 MiB written: far more than the socket buffers hold is still to come.)"""
    from tests.faultproxy import FaultProxy
    size = 64 * MiB + 5
    data = blob(size, seed=19)
    path = f"fault/{fault}-{target.kind}.bin"
    http.put(path, data)
    proxy = FaultProxy(http.port).start()
    try:
        url = f"http://127.0.0.1:{proxy.port}/{path}"
        t = make_transfer("urls:x", target.con, read_timeout=1.0)
        store = NullResumeStore()
        hit = threading.Event()

        def progress(done: int, _total: int) -> None:
            if done >= 8 * MiB and not hit.is_set():
                hit.set()
                getattr(proxy, fault)()

        with pytest.raises(ItemFailed) as exc:
            t(Item(url, "f.bin"), TransferContext(progress=progress, resume=store))
        assert exc.value.error_class == cls and not exc.value.permanent and store.load()
        proxy.restore()
        res = run(t, Item(url, "f.bin"), store)
        assert target.read("f.bin") == data
        ranged = [f for f in http.fetches(path) if f.method == "GET" and f.range.startswith("bytes=")]
        start = int(ranged[-1].range.removeprefix("bytes=").rstrip("-"))
        assert ranged[-1].status == 206 and start >= 5 * MiB and res.bytes_sent <= size - start
    finally:
        proxy.close()
