"""What the notifier costs the sync: measured, with PostgreSQL on this machine.

    .venv/bin/python bench/notifier_bench.py [--files 10000] [--dsn URL] [--workers 8]
    .venv/bin/python bench/notifier_bench.py --before [REV] [--daemon-rounds 3]   # psycopg2 -> psycopg 3

Three measurements (results also in bench/out/notifier_bench.json):

1. micro: FILES x 4 notifications (queued, started, a final progress, done)
   pushed through one Notifier from WORKERS threads, as the handler's workers
   would: wall time and CPU time spent in the callers' threads, and the time
   until every row is in PostgreSQL.
   (A 4 KiB file's final progress is not stored: progress is for large
   uploads, see Notifier.progress_min_bytes; so 3 rows per file.)
2. outage: the same calls while PostgreSQL is unreachable (they go to the
   spool): the callers' time must not change.
3. sync overhead: `measure_overhead(run_sync, make_notifier)` runs a sync
   with and without a notifier and reports both times and the ratio (target:
   < 10 % slower). Here `run_sync` is a stand-in that copies FILES small files
   with WORKERS threads and reports each one like the handler does: far
   cheaper per file than the daemon, so its ratio is a pessimistic bound.
4. daemon: `daemon_overhead()` runs the real `main.py --run-with local` on
   FILES x 4 KiB with and without `notify_dsn`: wall time to a complete
   target, the daemon's CPU, and the local PostgreSQL's CPU. It runs once the
   daemon reads notify_dsn (issue #6 integration); until then it says so.

5. --before [REV]: the notifier of commit REV (default 84ddf36, the last on
   psycopg2; checked out as a temporary `git worktree`) against this one, in
   the same run: micro (1) and the spool's re-delivery path of each in a child
   process, and the daemon (4) without notify_dsn, with the old and with the
   new notifier, interleaved; medians, new/old ratios, CPU per event.

Without --dsn a private PostgreSQL 15 is started (tests/server_pg.py) and
stopped at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
# --before runs this file again with SKYNET_BENCH_CODE=<a checkout of the old commit>:
# its skynet package is the one imported (the child measures that code).
CODE = Path(os.environ.get("SKYNET_BENCH_CODE") or REPO)
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(CODE))

from skynet.reporting.notifier import Notifier  # noqa: E402

OUT = REPO / "bench" / "out"


@contextlib.contextmanager
def postgres(dsn: str | None) -> Iterator[tuple[str, int | None]]:
    """(a fresh database's URL, the postmaster's PID if we started it): on the
    server at `dsn`, or on a private PostgreSQL 15."""
    if dsn:
        yield dsn, None
        return
    from tests.server_pg import run_postgres

    with run_postgres() as pg:
        yield pg.fresh_db("bench"), pg.pid


CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds PostgreSQL has used so far: the postmaster, its live
    children (backends, WAL writer...) and the children it has reaped. 0 when
    the server is not ours to look at."""
    if postmaster is None:
        return 0.0

    def stat(pid: int, reaped: bool) -> float:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        if reaped:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
        return ticks / CLK_TCK

    total = stat(postmaster, True)
    try:
        with open(f"/proc/{postmaster}/task/{postmaster}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        kids = []
    return total + sum(stat(k, False) for k in kids)


def count_rows(dsn: str, daemon_id: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM skynet.events WHERE daemon_id LIKE %s", (daemon_id,))
        return cur.fetchone()[0]


def _emit(n: Notifier, files: int, workers: int) -> tuple[float, float]:
    """FILES x 4 notifications from WORKERS threads: (wall s, callers' CPU s)."""
    cpu = [0.0] * workers
    barrier = threading.Barrier(workers + 1)

    def worker(k: int) -> None:
        barrier.wait()
        t = time.thread_time()
        for i in range(k, files, workers):
            p = f"dir{i % 100}/file{i:06d}.txt"
            n.event("bench", "queued", "send", p)
            n.event("bench", "started", "send", p)
            n.progress("bench", p, 4096, 4096)
            n.event("bench", "done", "send", p, bytes_total=4096)
        cpu[k] = time.thread_time() - t

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sum(cpu)


def micro(dsn: str, files: int, workers: int, spool: str) -> dict:
    did = f"bench/micro-{os.getpid()}"  # --before: the old and the new child write to one database
    n = Notifier(dsn, "bench-host", "local", did, spool, "bench")
    n.event("bench", "queued", "send", "warm-up")
    assert n.flush(30), "PostgreSQL not reachable"
    proc0 = time.process_time()
    t0 = time.perf_counter()
    wall, caller_cpu = _emit(n, files, workers)
    ok = n.flush(300)
    t_all = time.perf_counter() - t0
    proc_cpu = time.process_time() - proc0
    n.close()
    rows = count_rows(dsn, did) - 1
    calls = files * 4
    # A 4 KiB file's final progress row is skipped (progress is for large uploads).
    expected = files * 3 if 4096 < n.progress_min_bytes else calls
    return {
        "notifications": calls,
        "rows_expected": expected,
        "callers_wall_s": round(wall, 4),
        "callers_cpu_s": round(caller_cpu, 4),
        "per_call_us": round(caller_cpu / calls * 1e6, 2),
        "until_all_in_postgres_s": round(t_all, 3),
        "rows_per_s": round(expected / t_all),
        "writer_cpu_s": round(max(0.0, proc_cpu - caller_cpu), 3),
        "writer_cpu_per_row_us": round(max(0.0, proc_cpu - caller_cpu) / expected * 1e6, 1),
        "rows_in_postgres": rows,
        "complete": ok and rows == expected,
    }


def outage(files: int, workers: int, spool: str) -> dict:
    from tests.server_pg import free_port

    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    n = Notifier(dead, "bench-host", "local", "bench/outage", spool, "bench", backoff_initial=1, backoff_cap=5)
    wall, caller_cpu = _emit(n, files, workers)
    t0 = time.perf_counter()
    n.close(60)
    return {
        "notifications": files * 4,
        "callers_wall_s": round(wall, 4),
        "callers_cpu_s": round(caller_cpu, 4),
        "per_call_us": round(caller_cpu / (files * 4) * 1e6, 2),
        "spool_close_s": round(time.perf_counter() - t0, 3),
    }


# -- sync with and without the notifier ----------------------------------------------
SyncFn = Callable[[Notifier | None], float]


def measure_overhead(run_sync: SyncFn, make_notifier: Callable[[], Notifier], rounds: int = 5,
                     postmaster: int | None = None) -> dict:
    """Time `run_sync(None)` and `run_sync(notifier)` alternately, `rounds`
    times each (alternating cancels drift such as a warming page cache), and
    compare the medians. `run_sync` returns its own elapsed seconds; the
    notifier is flushed and closed inside the CPU window (its writer's work
    counts) but outside the timed part.

    Wall time on a shared 2-core machine is noisy, so CPU is reported too:
    this process's CPU seconds with and without, plus PostgreSQL's own CPU
    when it runs here (`postmaster` PID) - the cost a local database adds."""
    without, with_, cpu_without, cpu_with, pg_cpu = [], [], [], [], []
    for _ in range(rounds):
        c0 = time.process_time()
        without.append(run_sync(None))
        cpu_without.append(time.process_time() - c0)
        n = make_notifier()
        s0, c0 = server_cpu(postmaster), time.process_time()
        try:
            with_.append(run_sync(n))
            n.flush(120)
        finally:
            n.close()
        cpu_with.append(time.process_time() - c0)
        pg_cpu.append(server_cpu(postmaster) - s0)
    med = statistics.median
    w0, w1 = med(without), med(with_)
    c0, c1, pgc = med(cpu_without), med(cpu_with), med(pg_cpu)
    return {
        "without_s": round(w0, 3),
        "with_s": round(w1, 3),
        "ratio": round(w1 / w0, 3),
        "overhead_pct": round(100 * (w1 / w0 - 1), 1),
        "runs_without": [round(x, 3) for x in without],
        "runs_with": [round(x, 3) for x in with_],
        "cpu_without_s": round(c0, 3),
        "cpu_with_s": round(c1, 3),
        "postgres_cpu_s": round(pgc, 3),
        "cpu_ratio_client": round(c1 / c0, 3),
        "cpu_ratio_with_local_postgres": round((c1 + pgc) / c0, 3),
    }


def copy_sync(files: int, workers: int, work: Path) -> SyncFn:
    """A stand-in for the daemon's sync of FILES x 4 KiB: WORKERS threads copy
    files (write to a temporary name, set the mtime, rename) and report each
    action as the handler does (queued, started, done; progress for the file)."""
    src = work / "src"
    if not src.exists():
        for d in range(100):
            (src / f"dir{d}").mkdir(parents=True)
        block = os.urandom(4096)
        for i in range(files):
            (src / f"dir{i % 100}" / f"file{i:06d}.txt").write_bytes(block)

    def run(n: Notifier | None) -> float:
        dst = work / "dst"
        shutil.rmtree(dst, ignore_errors=True)
        for d in range(100):
            (dst / f"dir{d}").mkdir(parents=True)

        def worker(k: int) -> None:
            for i in range(k, files, workers):
                rel = f"dir{i % 100}/file{i:06d}.txt"
                if n is not None:
                    n.event("bench", "queued", "send", rel)
                    n.event("bench", "started", "send", rel)
                s, d = src / rel, dst / rel
                tmp = d.with_name(".skynet-tmp-" + d.name)
                shutil.copyfile(s, tmp)
                st = os.stat(s)
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.replace(tmp, d)
                if n is not None:
                    n.progress("bench", rel, st.st_size, st.st_size)
                    n.event("bench", "done", "send", rel, bytes_total=st.st_size)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    return run


def daemon_wired() -> bool:
    """True once the daemon reads notify_dsn (issue #6 integration)."""
    from skynet.config import settings as config
    return "notify_dsn" in config.GLOBAL_KEYS


def daemon_sync(files: int, work: Path, notify_dsn: str | None, timeout: float = 600, code: Path = REPO,
                daemon_id: str = "") -> tuple[float, float]:
    """One real run: `main.py --run-with local` mirrors FILES x 4 KiB into an
    empty target. Returns (seconds until the target holds them all, the
    daemon's CPU seconds for the whole run, start to SIGTERM exit). `code`: the
    checkout whose main.py runs (--before: an older commit's)."""
    import signal
    import subprocess

    src = work / "dsrc"
    if not src.exists():
        block = os.urandom(4096)
        for d in range(100):
            (src / f"dir{d}").mkdir(parents=True)
        for i in range(files):
            (src / f"dir{i % 100}" / f"file{i:06d}.txt").write_bytes(block)
    dst, state = work / "ddst", work / "dstate"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    dst.mkdir()
    lines = ["[skynet]", "service = local", f"state_dir = {state}", "log_level = WARNING",
             # The same priority as the benchmark itself: a shared machine is noisy enough.
             "nice = 0", "io_class = none"]
    if notify_dsn:
        lines.append(f"notify_dsn = {notify_dsn}")
    if daemon_id:
        lines.append(f"daemon_id = {daemon_id}")
    lines += ["", "[mapping bench]", f"source = {src}", f"target = {dst}", ""]
    cfg = work / "bench.ini"
    cfg.write_text("\n".join(lines))
    log = open(work / "daemon.log", "ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(code / "main.py"), "--run-with", "local", "--config-file", str(cfg)],
                            cwd=str(code), stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            n = sum(len(os.listdir(dst / f"dir{d}")) for d in range(100) if (dst / f"dir{d}").is_dir())
            if n >= files:
                break
            if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"daemon exited or timed out; see {work / 'daemon.log'}")
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        proc.send_signal(signal.SIGTERM)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        log.close()
    return elapsed, ru.ru_utime + ru.ru_stime


def daemon_overhead(files: int, work: Path, dsn: str, rounds: int, postmaster: int | None) -> dict:
    """The daemon-level comparison: median wall and CPU with and without
    notify_dsn, plus the local PostgreSQL's CPU (alternating runs)."""
    import psycopg

    without, with_, pg_cpu = [], [], []
    for k in range(rounds):
        without.append(daemon_sync(files, work, None))
        s0 = server_cpu(postmaster)
        with_.append(daemon_sync(files, work, dsn))
        pg_cpu.append(server_cpu(postmaster) - s0)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT kind, count(*) FROM skynet.events GROUP BY kind ORDER BY kind")
        kinds = dict(cur.fetchall())
    med = statistics.median
    w0, w1 = med(x[0] for x in without), med(x[0] for x in with_)
    c0, c1, pgc = med(x[1] for x in without), med(x[1] for x in with_), med(pg_cpu)
    return {
        "files": files,
        "without_s": round(w0, 3), "with_s": round(w1, 3), "ratio": round(w1 / w0, 3),
        "overhead_pct": round(100 * (w1 / w0 - 1), 1),
        "daemon_cpu_without_s": round(c0, 3), "daemon_cpu_with_s": round(c1, 3),
        "cpu_ratio": round(c1 / c0, 3), "postgres_cpu_s": round(pgc, 3),
        "cpu_ratio_with_local_postgres": round((c1 + pgc) / c0, 3),
        "runs_without": [(round(a, 2), round(b, 2)) for a, b in without],
        "runs_with": [(round(a, 2), round(b, 2)) for a, b in with_],
        "events_by_kind_all_runs": kinds,
    }


# -- --before REV: the same measurements on an older commit's notifier, same run -----------
def redeliver(dsn: str, files: int, workers: int, spool: str) -> dict:
    """The spool path: FILES x 4 notifications spooled while PostgreSQL is
    unreachable, then delivered by the next start (rows that may have been
    sent: INSERT ... ON CONFLICT DO NOTHING, psycopg2's execute_values before,
    one INSERT ... SELECT FROM unnest(arrays) since psycopg 3). Returns the
    time and this process's CPU from that start to every row in PostgreSQL."""
    from tests.servers import free_port

    did = f"bench/redeliver-{os.getpid()}"
    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    n = Notifier(dead, "bench-host", "local", did, spool, "bench", backoff_initial=1, backoff_cap=5)
    _emit(n, files, workers)
    n.close(60)
    c0, t0 = time.process_time(), time.perf_counter()
    n = Notifier(dsn, "bench-host", "local", did, spool, "bench")
    ok = n.flush(300)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n.close()
    rows = count_rows(dsn, did)
    return {"rows": rows, "complete": ok and rows == files * 3, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "cpu_per_row_us": round(cpu / max(rows, 1) * 1e6, 1)}


def child(args: argparse.Namespace) -> None:
    """`--child`: micro + redeliver with the skynet of SKYNET_BENCH_CODE; one JSON line out."""
    with tempfile.TemporaryDirectory() as tmp:
        out = {"micro": micro(args.dsn, args.files, args.workers, str(Path(tmp) / "spool-micro")),
               "redeliver": redeliver(args.dsn, args.files, args.workers, str(Path(tmp) / "spool-redeliver"))}
    print(json.dumps(out))


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A temporary `git worktree` of `rev` under /tmp, removed afterwards."""
    import subprocess

    path = Path(tempfile.mkdtemp(prefix="skynet-bench-before-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), rev], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def run_child(code: Path, dsn: str, files: int, workers: int) -> dict:
    import subprocess

    env = dict(os.environ, SKYNET_BENCH_CODE=str(code))
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--dsn", dsn, "--files", str(files),
                          "--workers", str(workers)], env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def before_after(rev: str, dsn: str, postmaster: int | None, files: int, workers: int, rounds: int,
                 work: Path) -> dict:
    """Old (`rev`, psycopg2) and new (this checkout, psycopg 3) notifiers in
    the same run: per round, the micro and redeliver measurements of each in a
    child process, then the daemon without notify_dsn, with the old and with the
    new one (the order of old and new alternates between rounds). Medians, and
    the daemon's added CPU per event (with minus without, over the events it
    stored)."""
    import psycopg

    runs: dict[str, list] = {"old": [], "new": []}
    daemon: dict[str, list] = {"without": [], "old": [], "new": []}
    pg: dict[str, list] = {"old": [], "new": []}
    with checkout(rev) as old:
        codes = {"old": old, "new": REPO}
        for k in range(rounds):
            order = ("old", "new") if k % 2 == 0 else ("new", "old")
            for tag in order:
                runs[tag].append(run_child(codes[tag], dsn, files, workers))
            daemon["without"].append(daemon_sync(files, work, None))
            for tag in order:
                s0 = server_cpu(postmaster)
                daemon[tag].append(daemon_sync(files, work, dsn, code=codes[tag], daemon_id=f"bench-{tag}-{k}"))
                pg[tag].append(server_cpu(postmaster) - s0)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT split_part(daemon_id, '-', 2), count(*) FROM skynet.events"
                    " WHERE daemon_id LIKE 'bench-%%' GROUP BY 1")
        events = {tag: n / rounds for tag, n in cur.fetchall()}
    med = statistics.median
    out: dict = {"rev": rev, "rounds": rounds, "files": files, "workers": workers}
    for tag in ("old", "new"):
        m = [r["micro"] for r in runs[tag]]
        d = [r["redeliver"] for r in runs[tag]]
        out[tag] = {
            "micro_per_call_us": med(x["per_call_us"] for x in m),
            "micro_writer_cpu_per_row_us": med(x["writer_cpu_per_row_us"] for x in m),
            "micro_rows_per_s": med(x["rows_per_s"] for x in m),
            "micro_complete": all(x["complete"] for x in m),
            "redeliver_cpu_per_row_us": med(x["cpu_per_row_us"] for x in d),
            "redeliver_wall_s": med(x["wall_s"] for x in d),
            "redeliver_complete": all(x["complete"] for x in d),
            "daemon_wall_s": med(x[0] for x in daemon[tag]),
            "daemon_cpu_s": med(x[1] for x in daemon[tag]),
            "postgres_cpu_s": med(pg[tag]),
            "events_per_run": events.get(tag, 0),
        }
    w0, c0 = med(x[0] for x in daemon["without"]), med(x[1] for x in daemon["without"])
    out["without"] = {"daemon_wall_s": w0, "daemon_cpu_s": c0}
    for tag in ("old", "new"):
        o = out[tag]
        o["daemon_wall_ratio"] = round(o["daemon_wall_s"] / w0, 3)
        o["daemon_cpu_ratio"] = round(o["daemon_cpu_s"] / c0, 3)
        o["added_cpu_per_event_us"] = round((o["daemon_cpu_s"] - c0) / max(o["events_per_run"], 1) * 1e6, 1)
    out["new_over_old"] = {key: round(out["new"][key] / out["old"][key], 3) for key in (
        "micro_per_call_us", "micro_writer_cpu_per_row_us", "redeliver_cpu_per_row_us", "daemon_wall_s",
        "daemon_cpu_s", "postgres_cpu_s") if out["old"][key]}
    out["runs"] = {"children": runs, "daemon": daemon, "postgres_cpu": pg}
    return out


def print_before_after(r: dict) -> None:
    o, n = r["old"], r["new"]
    print(f"notifier before ({r['rev']}, psycopg2) and after (psycopg 3), same run, {r['rounds']} interleaved rounds, "
          f"medians; {r['files']:,} files, {r['workers']} threads")
    rows = [
        ("callers' CPU per notification (us)", "micro_per_call_us"),
        ("writer CPU per row, COPY path (us)", "micro_writer_cpu_per_row_us"),
        ("rows/s into PostgreSQL, COPY path", "micro_rows_per_s"),
        ("CPU per row, spool re-delivery (us)", "redeliver_cpu_per_row_us"),
        ("daemon wall to a full target (s)", "daemon_wall_s"),
        ("daemon CPU (s)", "daemon_cpu_s"),
        ("daemon wall / without notifier", "daemon_wall_ratio"),
        ("daemon CPU / without notifier", "daemon_cpu_ratio"),
        ("daemon CPU added per event (us)", "added_cpu_per_event_us"),
        ("local PostgreSQL CPU per run (s)", "postgres_cpu_s"),
    ]
    print(f"  {'':40s} {'psycopg2':>10s} {'psycopg 3':>10s}")
    for label, key in rows:
        print(f"  {label:40s} {o[key]:>10} {n[key]:>10}")
    print(f"  without notifier: daemon {r['without']['daemon_wall_s']:.2f} s wall, "
          f"{r['without']['daemon_cpu_s']:.2f} s CPU; events per run {o['events_per_run']:.0f} / "
          f"{n['events_per_run']:.0f}; all complete: {o['micro_complete'] and n['micro_complete']}, "
          f"{o['redeliver_complete'] and n['redeliver_complete']}")
    print(f"  new / old: {r['new_over_old']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--dsn", default=None, help="PostgreSQL URL (default: start a private PostgreSQL 15)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--daemon-rounds", type=int, default=3,
                    help="rounds of the daemon-level comparison (0: skip it); needs notify_dsn in the config")
    ap.add_argument("--before", metavar="REV", nargs="?", const="84ddf36", default=None,
                    help="compare with the notifier of commit REV (default 84ddf36, the last on psycopg2), same run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.before:
        with postgres(args.dsn) as (dsn, postmaster), tempfile.TemporaryDirectory() as tmp:
            r = before_after(args.before, dsn, postmaster, args.files, args.workers, args.daemon_rounds, Path(tmp))
        r["loadavg"] = os.getloadavg()
        print_before_after(r)
        print(f"  load average at the end: {' '.join(f'{x:.1f}' for x in r['loadavg'])} "
              f"(the machine has {os.cpu_count()} cores)")
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "notifier_bench_before_after.json").write_text(json.dumps(r, indent=2) + "\n")
        return
    results: dict = {"files": args.files, "workers": args.workers}
    with postgres(args.dsn) as (dsn, postmaster), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["micro"] = micro(dsn, args.files, args.workers, str(work / "spool-micro"))
        results["outage"] = outage(args.files, args.workers, str(work / "spool-outage"))
        counter = iter(range(10**6))
        results["sync_overhead"] = measure_overhead(
            copy_sync(args.files, args.workers, work),
            lambda: Notifier(dsn, "bench-host", "local", f"bench/sync{next(counter)}", str(work / "spool-sync"), "bench"),
            rounds=args.rounds,
            postmaster=postmaster,
        )
        if args.daemon_rounds and daemon_wired():
            results["daemon"] = daemon_overhead(args.files, work, dsn, args.daemon_rounds, postmaster)
    results["loadavg"] = os.getloadavg()
    m, o, s = results["micro"], results["outage"], results["sync_overhead"]
    print(f"notifier micro-benchmark: {args.files:,} files x 4 notifications from {args.workers} threads")
    print(f"  callers' time            {m['callers_wall_s']:.3f} s wall, {m['callers_cpu_s']:.3f} s CPU "
          f"({m['per_call_us']:.1f} us CPU per call)")
    print(f"  all rows in PostgreSQL   {m['until_all_in_postgres_s']:.2f} s ({m['rows_per_s']:,} rows/s; "
          f"writer CPU {m['writer_cpu_s']:.2f} s = {m['writer_cpu_per_row_us']:.0f} us/row); complete: {m['complete']}")
    print(f"  PostgreSQL down          {o['callers_wall_s']:.3f} s wall, {o['per_call_us']:.1f} us CPU per call; "
          f"spooled, closed in {o['spool_close_s']:.2f} s")
    print(f"sync stand-in, an upper bound ({args.files:,} x 4 KiB copies, {args.workers} threads; ~4x less CPU per "
          f"file than the daemon, so GIL hand-offs weigh more), median of {args.rounds}:")
    print(f"  wall: without notifier {s['without_s']:.3f} s, with {s['with_s']:.3f} s: ratio {s['ratio']:.3f} "
          f"({s['overhead_pct']:+.1f} %; target < +10 %)  runs: {s['runs_without']} / {s['runs_with']}")
    print(f"  CPU:  without {s['cpu_without_s']:.3f} s, with {s['cpu_with_s']:.3f} s (x{s['cpu_ratio_client']:.3f}); "
          f"+ local PostgreSQL {s['postgres_cpu_s']:.3f} s (x{s['cpu_ratio_with_local_postgres']:.3f} in all)")
    d = results.get("daemon")
    if d:
        print(f"daemon (main.py --run-with local, {args.files:,} x 4 KiB into an empty folder), median of "
              f"{args.daemon_rounds}:")
        print(f"  wall: without notify_dsn {d['without_s']:.2f} s, with {d['with_s']:.2f} s: ratio {d['ratio']:.3f} "
              f"({d['overhead_pct']:+.1f} %; target < +10 %)  runs (wall, CPU): {d['runs_without']} / {d['runs_with']}")
        print(f"  daemon CPU: without {d['daemon_cpu_without_s']:.2f} s, with {d['daemon_cpu_with_s']:.2f} s "
              f"(x{d['cpu_ratio']:.3f}); + local PostgreSQL {d['postgres_cpu_s']:.2f} s "
              f"(x{d['cpu_ratio_with_local_postgres']:.3f} in all)")
    elif args.daemon_rounds:
        print("daemon-level comparison skipped: the daemon does not read notify_dsn yet (TODO integration #6)")
    print(f"  load average during the run: {os.getloadavg()[0]:.1f} (the machine has {os.cpu_count()} cores)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "notifier_bench.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
