"""What the notifier costs the sync: measured, with PostgreSQL on this machine.

    .venv/bin/python bench/notifier_bench.py [--files 10000] [--dsn URL] [--workers 8]

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
sys.path.insert(0, str(REPO))

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
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM skynet.events WHERE daemon_id = %s", (daemon_id,))
            return cur.fetchone()[0]
    finally:
        conn.close()


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
    n = Notifier(dsn, "bench-host", "local", "bench/micro", spool, "bench")
    n.event("bench", "queued", "send", "warm-up")
    assert n.flush(30), "PostgreSQL not reachable"
    proc0 = time.process_time()
    t0 = time.perf_counter()
    wall, caller_cpu = _emit(n, files, workers)
    ok = n.flush(300)
    t_all = time.perf_counter() - t0
    proc_cpu = time.process_time() - proc0
    n.close()
    rows = count_rows(dsn, "bench/micro") - 1
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


def daemon_sync(files: int, work: Path, notify_dsn: str | None, timeout: float = 600) -> tuple[float, float]:
    """One real run: `main.py --run-with local` mirrors FILES x 4 KiB into an
    empty target. Returns (seconds until the target holds them all, the
    daemon's CPU seconds for the whole run, start to SIGTERM exit)."""
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
    lines += ["", "[mapping bench]", f"source = {src}", f"target = {dst}", ""]
    cfg = work / "bench.ini"
    cfg.write_text("\n".join(lines))
    log = open(work / "daemon.log", "ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), "--run-with", "local", "--config-file", str(cfg)],
                            cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
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
    import psycopg2

    without, with_, pg_cpu = [], [], []
    for k in range(rounds):
        without.append(daemon_sync(files, work, None))
        s0 = server_cpu(postmaster)
        with_.append(daemon_sync(files, work, dsn))
        pg_cpu.append(server_cpu(postmaster) - s0)
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT kind, count(*) FROM skynet.events GROUP BY kind ORDER BY kind")
        kinds = dict(cur.fetchall())
    conn.close()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--dsn", default=None, help="PostgreSQL URL (default: start a private PostgreSQL 15)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--daemon-rounds", type=int, default=3,
                    help="rounds of the daemon-level comparison (0: skip it); needs notify_dsn in the config")
    args = ap.parse_args()
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
