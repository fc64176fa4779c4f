"""Issue 21 end to end: `skynet job run` with the real transfer, nginx as the
source (its access log says what was fetched) and `rclone serve s3` as the target.

The default suite runs a small job (2,000 URLs and a 64 MiB one); the issue's
full run (100,000 URLs, one of 500 MiB) is marked slow:

    ./dev test -m slow tests/test_jobs_e2e.py
"""
from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from connections.s3.con import S3Con
from skynet.config import settings
from skynet.jobs.intake import Intake
from skynet.jobs.runner import EXIT_DONE, EXIT_FAILED, Runner
from skynet.jobs.table import ItemTable
from skynet.jobs.transfer import make_transfer
from tests.harness import REPO
from tests.test_jobs import MONDAY_10, FakeClock, row, wait_for

MiB = 1 << 20
S3_OPTIONS = {"part_size": "5MiB", "multipart_threshold": "8MiB", "concurrency": "2"}


def small(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * 128  # 4 KiB, each its own


def big_blob(n: int) -> bytes:
    block = hashlib.sha256(b"big").digest() * (MiB // 32)
    return b"".join(hashlib.sha256(str(i).encode()).digest() + block[32:] for i in range(n // MiB))


def job_config(tmp_path: Path, srv, bucket: str, lines: list[str], **job: str) -> Path:
    lst = tmp_path / "urls.txt"
    lst.write_text("".join(line + "\n" for line in lines))
    opts = {"source": f"urls:{lst}", "target": "in", "workers": "16", "retry_after": "0s", "timeout": "1s", **job}
    service = {**srv.service_config(bucket), **S3_OPTIONS}
    text = (f"[skynet]\nservice = s3\nstate_dir = {tmp_path / 'state'}\nlog_level = INFO\n\n[s3]\n"
            + "".join(f"{k} = {v}\n" for k, v in service.items())
            + "\n[job m]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items()))
    p = tmp_path / "s3.ini"
    p.write_text(text)
    return p


def gets(http, since: int = 0) -> list:
    return [f for f in http.fetches()[since:] if f.method == "GET"]


def s3_objects(srv, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    out = {}
    for page in srv.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix):]] = (o["Size"], o["ETag"].strip('"'))
    return out


def _finished_offset(resume: str | None) -> int:
    """Bytes of a streamed S3 upload's unbroken run of finished parts, from its resume state."""
    state = json.loads(resume or "{}")
    parts = {int(n) for n in state.get("parts", {})}
    run = 0
    while run + 1 in parts:
        run += 1
    return run * state.get("part_size", 0)


def _range_start(header: str) -> int:
    """X of a "bytes=X-" Range header; 0 for none."""
    return int(header[len("bytes="):].split("-", 1)[0]) if header.startswith("bytes=") else 0


def url_job(servers, tmp_path: Path, n: int, big_mib: int, kills: int) -> None:
    """n URLs of 4 KiB (1 % missing, a few that stall) and one of big_mib MiB,
    into S3; `job run` killed with -9 `kills` times at random, then run to the end."""
    http, srv = servers.get("http"), servers.get("s3")
    bucket = srv.new_bucket("job")
    tag = f"j{random.randrange(1 << 30)}"
    big = big_blob(big_mib * MiB)
    lines = [http.put(f"{tag}/big.bin", big)]
    expect: dict[str, bytes | None] = {"big.bin": big}
    stalls = 5
    for i in range(n):
        name = f"d{i % 10}/f{i}.bin"
        if i % 100 == 7:
            lines.append(http.url(f"{tag}/{name}"))  # missing: 404
            expect[name] = None
        elif i % (n // stalls) == 3:
            lines.append(http.put(f"stall/{tag}/{name}", small(i)))
            expect[f"{name}"] = b"stall"
        else:
            lines.append(http.put(f"{tag}/{name}", small(i)))
            expect[name] = small(i)
    # a destination per URL: strip the tag (and stall/) with a path column
    csv_lines = ["url,path"] + [f"{u},{u.split(tag + '/', 1)[1]}" for u in lines]
    p = job_config(tmp_path, srv, bucket, csv_lines, bwlimit="32M")
    cmd = [sys.executable, str(REPO / "main.py"), "job", "run", "m", "--config-file", str(p)]
    rng = random.Random()
    db = tmp_path / "state" / "jobs" / "m.sqlite"
    start = len(http.fetches())
    checks: list[tuple[set[str], int]] = []
    kept: list[int] = []  # at each kill: the big item's bytes in finished parts (its resume state)
    for k in range(kills):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        goal = len(gets(http, start)) + rng.randint(n // 20, n // 6)
        wait_for(lambda: len(gets(http, start)) >= goal or proc.poll() is not None, 600, "fetches", every=0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        table = ItemTable(str(db))
        checks.append(({r[1] for r in table.rows() if r[3] == "done"}, len(http.fetches())))
        kept.append(_finished_offset(table.item("big.bin")["resume"]))
        table.close()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert res.returncode == EXIT_FAILED, res.stderr[-3000:]  # the missing and the stalled ones
    # no finished object fetched twice: nothing done before a kill was GET after it
    log = http.fetches()
    for done, at in checks:
        again = {f.path for f in log[at:] if f.method == "GET"} & {"/" + u.split("/", 3)[3] for u in done}
        assert not again, f"fetched again after finishing: {sorted(again)[:5]}"
    # every item in its right state, with the right bytes
    table = ItemTable(str(db))
    rows = {r[2]: r for r in table.rows()}
    objects = s3_objects(srv, bucket, "in/")
    for dest, data in expect.items():
        status, cls = rows[dest][3], rows[dest][4]
        if data is None:
            assert (status, cls) == ("failed", "not_found") and dest not in objects
        elif data == b"stall":
            assert (status, cls) == ("failed", "timeout") and dest not in objects
        elif dest != "big.bin":
            assert status == "done" and objects[dest] == (len(data), hashlib.md5(data).hexdigest()), dest
    assert rows["big.bin"][3] == "done"
    got = srv.client().get_object(Bucket=bucket, Key="in/big.bin")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
    # the big one continued mid-file: after each kill, no GET of it asked for bytes of a part
    # finished before that kill. (Counting the bytes nginx sent cannot show this: what a killed
    # run had received but not yet sent as a part -- its 8 MiB head, the parts in flight, and
    # up to the kernel's socket buffers, which grow to 32 MiB here while the bandwidth limit
    # holds the reader back -- counts as sent too; one run in the CI's parallel suite sent
    # 162 MB for the 64 MiB item that way, with every resume starting where it should.)
    path = f"/{tag}/big.bin"
    for (_done, at), offset in zip(checks, kept):
        if offset:
            for f in (f for f in log[at:] if f.method == "GET" and f.path == path):
                assert f.status == 206 and _range_start(f.range) >= offset, (offset, f)
    assert any(_range_start(f.range) > 0 for f in log if f.method == "GET" and f.path == path) or not any(kept), \
        "the big item never continued mid-file"
    st = json.loads(subprocess.run([sys.executable, str(REPO / "main.py"), "job", "status", "m", "--json",
                                    "--config-file", str(p)], capture_output=True, text=True).stdout)
    assert st["counts"]["done"] == len(expect) - n // 100 - stalls and st["counts"]["failed"] == n // 100 + stalls


def test_url_job_into_s3_killed_three_times(servers, tmp_path):
    url_job(servers, tmp_path, n=2000, big_mib=64, kills=3)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_url_job_into_s3_killed_three_times_full(servers, tmp_path):
    """The issue's run: 100,000 URLs, one of 500 MiB."""
    url_job(servers, tmp_path, n=100_000, big_mib=500, kills=3)


def test_a_window_closing_mid_upload_pauses_it_and_it_continues_when_it_opens(servers, tmp_path):
    """The window closes while a 64 MiB item is half sent into S3: the transfer
    stops at a part boundary, keeps its parts, is not charged an attempt, and
    when the window opens it continues without fetching or sending them again."""
    http, srv = servers.get("http"), servers.get("s3")
    bucket = srv.new_bucket("win")
    big = big_blob(64 * MiB)
    url = http.put(f"win{random.randrange(1 << 30)}/big.bin", big)
    path = "/" + url.split("/", 3)[3]
    p = job_config(tmp_path, srv, bucket, ["url,path", f"{url},big.bin"], window="10:00-12:00", workers="2")
    cfg = settings.load(str(p))
    job = settings.job(cfg, "m")
    con = S3Con(prefix="in", **srv.con_kwargs(bucket), part_size=5 * MiB, multipart_threshold=8 * MiB, concurrency=2)
    con.connect()
    transfer = make_transfer(job.source, con, read_timeout=5)
    table = ItemTable(str(tmp_path / "t.sqlite"))
    intake = Intake(job, table)
    intake.prepare()
    clock = FakeClock(MONDAY_10)
    from skynet.transfer.throttle import Schedule, Throttle
    throttle = Throttle(Schedule("16M"))  # 4 s for the item: time to close the window on it
    runner = Runner(job, table, transfer, intake=intake, clock=clock, throttle=throttle.consume)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("code", runner.run()), daemon=True)
    t.start()
    parts = lambda: len((json.loads(row(table, "big.bin")["resume"] or "{}")).get("parts", []))
    wait_for(lambda: parts() >= 2, 60, "two parts sent")
    clock.t = MONDAY_10 + 2 * 3600  # 12:00: closed
    wait_for(lambda: row(table, "big.bin")["status"] == "queued", 60, "the transfer to pause")
    paused = table.item("big.bin")
    state = json.loads(paused["resume"])
    kept, part = len(state["parts"]), state["part_size"]
    assert paused["attempts"] == 0 and kept >= 2
    fetched_then = http.bytes_sent(path)
    assert fetched_then < len(big)
    clock.t = MONDAY_10 + 86400  # Tuesday 10:00: open
    t.join(120)
    transfer.close()
    assert box["code"] == EXIT_DONE
    got = srv.client().get_object(Bucket=bucket, Key="in/big.bin")["Body"].read()
    assert got == big
    # it continued after its last finished part: no finished part fetched or sent again
    trace = [(f.status, f.sent, f.range) for f in http.fetches(path)]
    assert len(trace) == 2 and trace[1] == (206, len(big) - kept * part, f"bytes={kept * part}-"), (kept, trace)
    assert table.item("big.bin")["attempts"] == 1
