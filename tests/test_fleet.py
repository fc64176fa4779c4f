"""Issue 22, items 1 and 2: one job, several `skynet worker` processes, on
procrastinate and the real PostgreSQL of the tests; nginx is the source (its access
log says what was fetched), `rclone serve s3` the target.

The default suite runs three workers on 2,000 URLs with one killed with -9 and
started again, a worker cut off from PostgreSQL by a fault proxy, and the pause
row's and item table's rules in-process; the issue's full run (20,000 URLs, a
worker killed every 10 s; one from SFTP) and two workers paused mid-upload (17 s)
are slow:

    ./dev test -m slow tests/test_fleet.py
"""
from __future__ import annotations

import collections
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.harness import REPO, run_main
from tests.servers import free_port
from tests.test_jobs import wait_for
from tests.test_jobs_e2e import job_config, s3_objects, small


def fleet_config(tmp_path: Path, srv, bucket: str, lines: list[str], dsn: str, **job: str) -> Path:
    p = job_config(tmp_path, srv, bucket, lines, **job)
    p.write_text(p.read_text().replace("[skynet]\n", f"[skynet]\njobs_dsn = {dsn}\n", 1))
    return p


def pg(dsn: str):
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def count(dsn: str, sql: str, *args) -> int:
    with pg(dsn) as c:
        return c.execute(sql, args).fetchone()[0]


def pending(dsn: str) -> int:
    return count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE status IN ('queued', 'running')")


class Workers:
    """`skynet worker` processes of one config, started and ended by PID."""

    def __init__(self, cfg: Path, tmp_path: Path, *args: str) -> None:
        self.cfg, self.dir, self.args = cfg, tmp_path, args
        self.procs: list[subprocess.Popen] = []

    def start(self, *extra: str) -> subprocess.Popen:
        log = open(self.dir / f"worker{len(self.procs)}.log", "wb")
        p = subprocess.Popen([sys.executable, str(REPO / "main.py"), "worker", "--config-file", str(self.cfg),
                              *self.args, *extra], cwd=REPO, stdout=log, stderr=log)
        self.procs.append(p)
        return p

    def logs(self) -> str:
        return "\n".join((self.dir / f"worker{i}.log").read_text(errors="replace")[-3000:]
                         for i in range(len(self.procs)))

    def stop(self) -> list[int]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(60))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes


def url_lines(http, n: int, missing_every: int = 0) -> tuple[str, list[str], dict[str, bytes | None]]:
    tag = f"f{random.randrange(1 << 30)}"
    lines, expect = ["url,path"], {}
    for i in range(n):
        name = f"d{i % 10}/f{i}.bin"
        if missing_every and i % missing_every == 7:
            lines.append(f"{http.url(f'{tag}/{name}')},{name}")
            expect[name] = None
        else:
            lines.append(f"{http.put(f'{tag}/{name}', small(i))},{name}")
            expect[name] = small(i)
    return tag, lines, expect


def full_fetches(http, tag: str, since: int = 0) -> collections.Counter:
    """GETs answered with the whole object, per path of this job."""
    return collections.Counter(f.path for f in http.fetches()[since:]
                               if f.method == "GET" and f.status == 200 and f.sent > 0 and f"/{tag}/" in f.path)


def fleet_run(servers, tmp_path: Path, n: int, kill_every: float | None, kills: int, stall: float) -> None:
    """n URLs (1 % missing) into S3 by three workers; one killed with -9 `kills`
    times (every `kill_every` s, or once a third of the items are done) and started again."""
    http, srv, pgs = servers.get("http"), servers.get("s3"), servers.get("postgres")
    dsn = pgs.fresh_db("fleet")
    bucket = srv.new_bucket("fleet")
    t = time.monotonic()
    tag, lines, expect = url_lines(http, n, missing_every=100)
    print(f"files {time.monotonic() - t:.1f} s")
    p = fleet_config(tmp_path, srv, bucket, lines, dsn, workers="8", batch_size=str(max(n // 40, 20)))
    t0 = time.monotonic()
    res = run_main("job", "submit", "m", "--config-file", str(p), timeout=300)
    print(f"submit {time.monotonic() - t0:.1f} s")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{n:,} item(s) read" in res.stdout, res.stdout
    start = len(http.fetches())
    workers = Workers(p, tmp_path, "--stall-timeout", str(stall))
    victim = [workers.start(), workers.start(), workers.start()]
    takeovers: list[float] = []
    at_kill: list[tuple[set[str], set[str], int]] = []  # (done dests, dests the victim held, log position)
    waiting: list[tuple[int, set[int], str, float]] = []  # kills whose items are not taken over yet

    def watch_takeovers() -> None:
        """Note the kills whose held items no longer run under the dead worker."""
        for entry in list(waiting):
            k, held, pid, killed_at = entry
            if not held or count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE id = ANY(%s) AND "
                                      "status='running' AND split_part(worker, ':', 2) = %s", list(held), pid) == 0:
                waiting.remove(entry)
                takeovers.append(time.monotonic() - killed_at)
                print(f"kill {k + 1}: {len(held)} item(s) held by the killed worker, taken over "
                      f"{takeovers[-1]:.1f} s after the kill (stall timeout {stall:.0f} s)")

    try:
        for k in range(kills):
            if kill_every is None:
                wait_for(lambda: count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE status='done'") >= n // 3,
                         120, "a third done", every=0.05)
            else:  # the next kill comes on time, take-overs of earlier ones or not
                until = time.monotonic() + kill_every
                while time.monotonic() < until:
                    watch_takeovers()
                    time.sleep(0.1)
            if not pending(dsn):
                break
            print(f"kill at {time.monotonic() - t0:.1f} s")
            proc = victim[k % 3]
            pid = proc.pid
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = time.monotonic()
            with pg(dsn) as c:
                held = {r[0] for r in c.execute("SELECT id FROM skynet_jobs.items WHERE status='running' "
                                                "AND split_part(worker, ':', 2) = %s", (str(pid),))}
                done = {r[0] for r in c.execute("SELECT dest FROM skynet_jobs.items WHERE status='done'")}
                held_dests = {r[0] for r in c.execute("SELECT dest FROM skynet_jobs.items WHERE id = ANY(%s)", (list(held),))}
            at_kill.append((done, held_dests, len(http.fetches())))
            victim[k % 3] = workers.start()
            waiting.append((k, held, str(pid), killed_at))
            if kill_every is None:
                break
        wait_for(lambda: (watch_takeovers(), not waiting)[1], 120, "the killed workers' items to be taken over",
                 every=0.1)
        wait_for(lambda: pending(dsn) == 0, 600, "the job to finish", every=0.2)
        print(f"finished at {time.monotonic() - t0:.1f} s")
    finally:
        t1 = time.monotonic()
        codes = workers.stop()
        print(f"stopped in {time.monotonic() - t1:.1f} s")
        print("\n".join(line for line in workers.logs().splitlines() if " INFO " not in line)[-4000:])
    assert codes[-3:] == [0, 0, 0], workers.logs()
    assert takeovers and max(takeovers) < 60, takeovers
    # every item in its state, once
    with pg(dsn) as c:
        rows = {r[0]: r[1:] for r in c.execute("SELECT dest, status, error_class, done_transitions FROM skynet_jobs.items")}
    objects = s3_objects(srv, bucket, "in/")
    for dest, data in expect.items():
        status, cls, transitions = rows[dest]
        if data is None:
            assert (status, cls) == ("failed", "not_found") and dest not in objects
        else:
            assert status == "done" and transitions == 1 and objects[dest][0] == len(data), (dest, rows[dest])
    # at most one full fetch per item, but for items in flight when a worker died;
    # nothing finished before a kill was fetched after it
    fetched = full_fetches(http, tag, start)
    twice = {path for path, k in fetched.items() if k > 1}
    in_flight = {f"/{tag}/{d}" for _, held, _ in at_kill for d in held}
    assert twice <= in_flight, sorted(twice - in_flight)[:5]
    for done, _, pos in at_kill:
        again = {f.path for f in http.fetches()[pos:] if f.method == "GET"} & {f"/{tag}/{d}" for d in done}
        assert not again, sorted(again)[:5]
    report = run_main("job", "report", "m", "--csv", "--config-file", str(p)).stdout.splitlines()
    assert len(report) == n + 1 and sum(",done," in line for line in report) == n - n // 100, report[:3]
    print(f"checked at {time.monotonic() - t0:.1f} s")
    print(f"{n} items, {len(at_kill)} kill(s): {len(twice)} item(s) fetched twice (in flight at a kill), "
          f"take-over {', '.join(f'{t:.1f}' for t in takeovers)} s")


def test_three_workers_one_killed_and_restarted(servers, tmp_path):
    fleet_run(servers, tmp_path, n=2000, kill_every=None, kills=1, stall=6)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_three_workers_20000_items_one_killed_every_10s(servers, tmp_path):
    """The issue's run: 20,000 URLs, a worker killed with -9 every 10 s, default stall timeout."""
    fleet_run(servers, tmp_path, n=20_000, kill_every=10, kills=12, stall=30)


def test_a_worker_cut_off_from_postgresql_keeps_no_lease_it_cannot_renew(servers, tmp_path):
    """A worker whose PostgreSQL goes silent (a fault proxy holds every byte) stops
    its transfers and kills itself before its heartbeat is stale enough for another
    worker to take its batches; the other worker then finishes them, each item done once."""
    http, srv, pgs = servers.get("http"), servers.get("s3"), servers.get("postgres")
    dsn = pgs.fresh_db("cut")
    bucket = srv.new_bucket("cut")
    tag, lines, expect = url_lines(http, 40, missing_every=20)
    direct = fleet_config(tmp_path, srv, bucket, lines, dsn, workers="2", batch_size="10")
    assert run_main("job", "submit", "m", "--config-file", str(direct), timeout=120).returncode == 0
    proxy = FaultProxy(pgs.port).start()
    slow = tmp_path / "slow"
    slow.mkdir()
    proxied = fleet_config(slow, srv, bucket, lines, dsn.replace(f":{pgs.port}/", f":{proxy.port}/"),
                           workers="2", batch_size="10", bwlimit="64k")
    stall = 6.0
    workers = Workers(proxied, tmp_path, "--stall-timeout", str(stall))
    try:
        cut_off = workers.start()
        wait_for(lambda: count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE status='done'") >= 5, 60,
                 "some items done", every=0.05)
        proxy.stall()
        cut_at = time.time()
        code = cut_off.wait(30)
        gone_at = time.time()
        with pg(dsn) as c:
            beat = c.execute("SELECT extract(epoch FROM last_heartbeat) FROM skynet_jobs.workers WHERE pid=%s",
                             (cut_off.pid,)).fetchone()[0]
            held = c.execute("SELECT count(*) FROM skynet_jobs.items WHERE status='running'").fetchone()[0]
        print(f"cut off at +0 s; exited {gone_at - cut_at:.1f} s later, {gone_at - float(beat):.1f} s after its last "
              f"heartbeat (stall timeout {stall:.0f} s); {held} item(s) left running")
        assert code == -signal.SIGKILL and "heartbeat not renewed" in workers.logs(), workers.logs()
        assert gone_at - float(beat) < stall  # gone before anyone could take its batches over
        fetched = len(http.fetches())
        other = Workers(direct, tmp_path / "slow", "--stall-timeout", str(stall), "--exit-when-idle")
        finisher = other.start()
        assert finisher.wait(120) == 0, other.logs()
        # failed items stay queryable by class; `job retry` enqueues them again
        res = run_main("job", "status", "m", "--json", "--config-file", str(direct))
        assert res.returncode == 0, res.stderr
        st = json.loads(res.stdout)
        assert st["counts"]["done"] == 38 and st["errors"] == {"not_found": 2}, st
        assert len(st["workers"]) == 2 and all(w["stopped"] for w in st["workers"] if w["pid"] == finisher.pid), st
        missing = [d for d, data in expect.items() if data is None]
        for d in missing:
            http.put(f"{tag}/{d}", b"now here")
        res = run_main("job", "retry", "m", "--class", "not_found", "--config-file", str(direct))
        assert "2 failed item(s) queued again in 1 batch(es)" in res.stdout, res.stdout + res.stderr
        assert other.start().wait(120) == 0, other.logs()
    finally:
        proxy.close()
        workers.stop()
    with pg(dsn) as c:
        rows = dict(c.execute("SELECT dest, done_transitions FROM skynet_jobs.items WHERE status='done'").fetchall())
    assert len(rows) == 40 and set(rows.values()) == {1}
    assert len(s3_objects(srv, bucket, "in/")) == 40
    assert all(k == 1 for k in full_fetches(http, tag, fetched).values())


def procrastinate_jobs(dsn: str, status: str) -> int:
    return count(dsn, "SELECT count(*) FROM procrastinate_jobs WHERE queue_name='skynet-job-m' AND status=%s", status)


def heartbeats_after(dsn: str, at: float, n: int) -> bool:
    """Every live worker has sent a heartbeat after `at` (so it has looked at the pause row since)."""
    return count(dsn, "SELECT count(*) FROM skynet_jobs.workers WHERE stopped_at IS NULL AND "
                      "last_heartbeat > to_timestamp(%s)", at) >= n


@pytest.mark.slow
def test_a_paused_queue_stops_every_worker_at_a_chunk_boundary_and_resumes(servers, tmp_path):
    """Issue 22 item 3 with the pause row: two workers; a pause while a 24 MiB item
    is half sent into S3: no batch runs on either worker, the item stops at a part
    boundary, keeps its parts and is not charged an attempt; `job resume` and it
    continues without fetching or sending them again."""
    from skynet.jobs.fleet import set_pause
    from skynet.jobs.pgtable import make_pool
    from tests.test_jobs_e2e import MiB, big_blob

    http, srv, pgs = servers.get("http"), servers.get("s3"), servers.get("postgres")
    dsn = pgs.fresh_db("pause")
    bucket = srv.new_bucket("pause")
    tag, lines, expect = url_lines(http, 30)
    big = big_blob(24 * MiB)
    lines.append(f"{http.put(f'{tag}/big.bin', big)},big.bin")
    p = fleet_config(tmp_path, srv, bucket, lines, dsn, workers="2", batch_size="4", bwlimit="2M")
    assert run_main("job", "submit", "m", "--config-file", str(p)).returncode == 0
    workers = Workers(p, tmp_path, "--stall-timeout", "6")
    ports = [free_port(), free_port()]
    try:
        workers.start("--metrics-port", str(ports[0])), workers.start("--metrics-port", str(ports[1]))

        def parts() -> int:
            with pg(dsn) as c:
                resume = c.execute("SELECT resume FROM skynet_jobs.items WHERE dest='big.bin'").fetchone()[0]
            return len(json.loads(resume or "{}").get("parts", []))
        wait_for(lambda: parts() >= 1, 120, "a part of the big item sent", every=0.05)
        part_at = time.time()
        with make_pool(dsn) as pool:  # what `job pause` does (tested below), without its start-up time
            set_pause(pool, "m", True)
        paused_at = time.time()
        wait_for(lambda: count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE dest='big.bin' AND status='queued'"),
                 60, "the big item to stop", every=0.02)
        print(f"stopped {time.time() - paused_at:.1f} s after the pause")
        wait_for(lambda: procrastinate_jobs(dsn, "doing") == 0 and
                 count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE status='running'") == 0,
                 60, "every batch back in the queue", every=0.05)
        done_then = count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE status='done'")
        since = time.time()
        wait_for(lambda: heartbeats_after(dsn, since, 2), 30, "a heartbeat of each worker", every=0.1)
        # paused: the queue holds batches, no worker takes one
        assert procrastinate_jobs(dsn, "todo") > 0 and procrastinate_jobs(dsn, "doing") == 0
        assert count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE status='done'") == done_then < 31
        with pg(dsn) as c:
            status, attempts, resume = c.execute(
                "SELECT status, attempts, resume FROM skynet_jobs.items WHERE dest='big.bin'").fetchone()
        state = json.loads(resume)
        kept, part = len(state["parts"]), state["part_size"]
        assert (status, attempts) == ("queued", 0) and kept >= 1
        st = json.loads(run_main("job", "status", "m", "--json", "--config-file", str(p)).stdout)
        assert st["paused"] == "operator"
        assert [w["batches_held"] for w in st["workers"]] == [0, 0], st["workers"]
        # each worker's /metrics: the items it finished (whole-job states come every 15 s); together, all done
        finished = 0.0
        for port in ports:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            finished += sum(float(ln.split()[-1]) for ln in text.splitlines()
                            if ln.startswith('skynet_job_items_total{job="m",status="done"}'))
        assert finished == done_then, (finished, done_then)
        res = run_main("job", "pause", "m", "--config-file", str(p))
        assert res.returncode == 0 and "paused on every worker" in res.stdout, res.stderr
        print(f"paused {paused_at - part_at:.1f} s after the first part, {time.time() - paused_at:.1f} s: "
              f"{done_then} done, big.bin kept {kept} part(s)")
        assert "resumed" in run_main("job", "resume", "m", "--config-file", str(p)).stdout
        wait_for(lambda: pending(dsn) == 0, 120, "the job to finish", every=0.1)
    finally:
        codes = workers.stop()
    assert codes == [0, 0], workers.logs()
    got = srv.client().get_object(Bucket=bucket, Key="in/big.bin")["Body"].read()
    assert got == big
    trace = [(f.status, f.sent, f.range) for f in http.fetches(f"{tag}/big.bin")]
    assert len(trace) == 2 and trace[1] == (206, len(big) - kept * part, f"bytes={kept * part}-"), (kept, trace)
    assert count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE status='done' AND done_transitions=1") == 31


def test_the_pause_row_follows_the_window_but_not_over_an_operators_pause(servers):
    """What every worker does each second with its job's window (FleetWorker._windows):
    a closed window pauses the queue (reason window), an open one resumes it; a
    `job pause` (reason operator) holds whatever the window says until `job resume`."""
    from skynet.jobs.fleet import pause_state, set_pause, sync_pause
    from skynet.jobs.pgtable import make_pool

    pool = make_pool(servers.get("postgres").fresh_db("prow"))
    try:
        assert sync_pause(pool, "m", closed=True) is True and pause_state(pool, "m") == "window"
        assert sync_pause(pool, "m", closed=False) is False and pause_state(pool, "m") is None
        set_pause(pool, "m", True)
        assert sync_pause(pool, "m", closed=False) is True and pause_state(pool, "m") == "operator"
        set_pause(pool, "m", False)
        assert sync_pause(pool, "m", closed=True) is True and pause_state(pool, "m") == "window"
        assert sync_pause(pool, "other", closed=False) is False
    finally:
        pool.close()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_three_workers_sftp_into_s3_one_killed(servers, tmp_path):
    """The issue's SFTP run: a tree on the test sshd (`config:` source: another config's
    SFTP service) into S3 by three workers, one killed with -9 and started again."""
    sftp, srv, pgs = servers.get("sftp"), servers.get("s3"), servers.get("postgres")
    dsn = pgs.fresh_db("sftp")
    bucket = srv.new_bucket("fsftp")
    root = Path(sftp.fresh_folder())  # the server's folder is a local one
    n = 2000
    for i in range(n):
        f = root / f"d{i % 10}" / f"f{i}.bin"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(small(i))
    local = tmp_path / "unused-source"
    local.mkdir()
    src = tmp_path / "sftp.ini"
    src.write_text(f"[skynet]\nservice = sftp\nstate_dir = {tmp_path / 'sftp-state'}\n\n[sftp]\n"
                   + "".join(f"{k} = {v}\n" for k, v in sftp.service().items())
                   + f"\n[mapping src]\nsource = {local}\ntarget = {root}\n")
    src.chmod(0o600)
    p = fleet_config(tmp_path, srv, bucket, ["unused"], dsn, workers="8", batch_size="100")
    p.write_text(p.read_text().replace("source = urls:", f"source = config:{src}\n# was: urls:"))
    assert run_main("job", "submit", "m", "--config-file", str(p), timeout=600).returncode == 0
    workers = Workers(p, tmp_path, "--stall-timeout", "30")
    procs = [workers.start() for _ in range(3)]
    try:
        wait_for(lambda: count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE status='done'") >= n // 3,
                 600, "a third done", every=0.1)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        killed_at = time.monotonic()
        workers.start()
        wait_for(lambda: pending(dsn) == 0, 900, "the job to finish", every=0.2)
        print(f"SFTP -> S3: {n} items done {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        codes = workers.stop()
    assert codes[1:] == [0, 0, 0], workers.logs()
    assert count(dsn, "SELECT count(*) FROM skynet_jobs.items WHERE status='done' AND done_transitions=1") == n
    objects = s3_objects(srv, bucket, "in/")
    assert len(objects) == n and all(size == len(small(0)) for size, _ in objects.values())


def test_an_item_is_done_once_and_held_items_are_left_to_a_live_worker(servers):
    """The item table's two guards, on the real PostgreSQL: a second `done` for an item
    changes nothing (the conditional UPDATE; record() counts the transitions), and an
    item running for a worker whose heartbeat is fresh is not claimed by another,
    while one of a silent (or stopped) worker is taken over without a new attempt."""
    from skynet.jobs.item import Item
    from skynet.jobs.pgtable import PgItemTable, make_pool
    from skynet.jobs.table import DONE, NewItem, Outcome

    pool = make_pool(servers.get("postgres").fresh_db("once"))
    try:
        a, b = (PgItemTable(pool, "m", worker=w, stall_timeout=30) for w in ("A", "B"))
        a.add([NewItem(i, Item(f"http://h/{i}", f"f{i}")) for i in (1, 2, 3)], 1, {})
        with pool.connection() as c:
            c.execute("INSERT INTO skynet_jobs.workers(id, jobs, host, pid, started_at, last_heartbeat) VALUES "
                      "('A', ARRAY['m'], 'h', 1, now(), now()), ('B', ARRAY['m'], 'h', 2, now(), now())")
        with pool.connection() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM skynet_jobs.items ORDER BY id")]
        assert [c.attempts for c in a.claim_ids(ids, 1.0)] == [1, 1, 1]
        assert b.claim_ids(ids, 2.0) == []  # A is alive: its items stay its own
        assert a.record([Outcome(ids[0], DONE, 3.0, bytes=4)]) == 1
        assert b.record([Outcome(ids[0], DONE, 4.0, bytes=4)]) == 0  # already done: nothing changes
        with pool.connection() as c:
            c.execute("UPDATE skynet_jobs.workers SET last_heartbeat = now() - interval '1 min' WHERE id='A'")
        taken = b.claim_ids(ids, 5.0)  # A went silent: B takes its running items, not the done one
        assert [c.id for c in taken] == ids[1:] and [c.attempts for c in taken] == [1, 1]
        assert b.record([Outcome(c.id, DONE, 6.0) for c in taken]) == 2
        with pool.connection() as c:
            rows = c.execute("SELECT status, done_transitions, bytes FROM skynet_jobs.items ORDER BY id").fetchall()
        assert rows == [("done", 1, 4), ("done", 1, 0), ("done", 1, 0)]
    finally:
        pool.close()


def test_the_retry_strategy_maps_what_a_batch_raised_to_procrastinates_decision():
    """Windows retry at the window's opening, unfinished items when the first is due,
    anything else on the job's retry_after (a batch never fails for good: its items do)."""
    import datetime

    from skynet.config.settings import JobConfig
    from skynet.jobs.fleet import BatchNotFinished, FleetRetry, QueuePaused

    class Job:  # what procrastinate passes: the job's kwargs and attempts so far
        task_kwargs = {"job": "m"}
        attempts = 7

    j = JobConfig("m", "urls:x", "t", retry_after=[1.0, 60.0])
    retry = FleetRetry(lambda name: j if name == "m" else None)
    at = retry.get_retry_decision(exception=QueuePaused(2_000_000_000.0, "closed"), job=Job()).retry_at
    assert at == datetime.datetime.fromtimestamp(2_000_000_000.0, datetime.timezone.utc)
    before = datetime.datetime.now(datetime.timezone.utc)
    soon = retry.get_retry_decision(exception=BatchNotFinished(5.0, "x"), job=Job()).retry_at
    assert datetime.timedelta(seconds=4) < soon - before < datetime.timedelta(seconds=60)
    later = retry.get_retry_decision(exception=OSError("db away"), job=Job()).retry_at
    assert datetime.timedelta(seconds=55) < later - before < datetime.timedelta(seconds=120)
