"""What the fallback to the standard library's sqlite3 costs, beside pysqlite3.

    bench/run sqlite [--rounds 5] [--puts 20000] [--files 10000]

pysqlite3 ships wheels for Linux x86_64 only (CPython 3.11-3.14); elsewhere
skynet/state/sqlitelib.py uses Python's own sqlite3, which links the system's library
(3.40.1 on Debian 12, with the WAL-reset bug), and state.Checkpointer then holds the
write lock while it checkpoints. Each round runs, in new processes and alternating
which goes first, both libraries through:
  * the queue: N puts into skynet's UniqueQ, as the start-up scan (batches of 2,000)
    and as the watcher (group commit) make them (bench/queue_bench.py's skynet rows);
  * the daemon: an initial sync of F files x 4 KiB in 100 folders, local -> local
    (exec -> every file in the target), which writes the queue and the Index while the
    checkpointer runs.
The fallback process is started with PYTHONPATH=bench/preludes/no_pysqlite3.
Prints medians and the fallback/pysqlite3 ratios of the same rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Proc, TreeCounter, daemon_env, make_tree, median, verify_tree  # noqa: E402

PY = sys.executable
NO_PYSQLITE3 = str(REPO / "bench" / "preludes" / "no_pysqlite3")
LIBS = ("pysqlite3", "stdlib")


def env_for(lib: str) -> dict[str, str]:
    return daemon_env(PYTHONUNBUFFERED="1", **({"PYTHONPATH": NO_PYSQLITE3} if lib == "stdlib" else {}))


def child_queue(n: int) -> None:
    """In a child process: time the two UniqueQ put paths; print JSON."""
    sys.path.insert(0, str(REPO))
    from skynet.state.sqlitelib import sqlite3
    from skynet.state.db import StateDB
    from skynet.state.uniqueq import SEND, UniqueQ

    with tempfile.TemporaryDirectory() as d:
        q = UniqueQ(StateDB(os.path.join(d, "a.db")))
        t0 = time.perf_counter()
        for i in range(0, n, 2000):
            q.put_many([(SEND, f"dir{j % 100}/file{j}", "") for j in range(i, min(n, i + 2000))])
        t_batch = time.perf_counter() - t0
        q2 = UniqueQ(StateDB(os.path.join(d, "b.db")))
        t0 = time.perf_counter()
        for i in range(n):
            q2.put(SEND, f"dir{i % 100}/file{i}")
        q2.flush()
        t_buf = time.perf_counter() - t0
    print(json.dumps({"module": sqlite3.__name__, "version": sqlite3.sqlite_version,
                      "batch": n / t_batch, "watcher": n / t_buf}))


def queue_run(lib: str, n: int) -> dict:
    res = subprocess.run([PY, __file__, "--child-queue", str(n)], env=env_for(lib), capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout)


def daemon_run(lib: str, work: Path, src: Path, rels: list[str], tag: str) -> dict:
    dst = work / f"dst-{tag}"
    dst.mkdir()
    cfg = work / f"{tag}.ini"
    cfg.write_text(f"[skynet]\nservice = local\nstate_dir = {work / ('state-' + tag)}\nlog_level = WARNING\n"
                   f"workers = 8\nnice = 0\nio_class = none\n\n[mapping bench]\nsource = {src}\ntarget = {dst}\n")
    counter = TreeCounter(dst, rels)
    t0 = time.monotonic()
    p = Proc([PY, str(REPO / "main.py"), "--run-with", "local", "--config-file", str(cfg)], work / f"{tag}.log",
             cwd=REPO, env=env_for(lib))
    while counter.count() < counter.total:
        if not p.alive():
            raise SystemExit(f"{tag}: the daemon exited:\n{p.log_tail()}")
        time.sleep(0.05)
    seconds = time.monotonic() - t0
    u = p.stop(signal.SIGTERM, timeout=60)
    missing, wrong = verify_tree(src, dst, rels)
    if missing or wrong or u.returncode not in (0, -15):
        raise SystemExit(f"{tag}: missing={missing} wrong={wrong} exit={u.returncode}\n{p.log_tail()}")
    shutil.rmtree(dst)  # now, not all at the end (10,000 files a run)
    return {"files_s": len(rels) / seconds, "cpu_s": u.cpu_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--puts", type=int, default=20000)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--child-queue", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_queue:
        child_queue(args.child_queue)
        return
    runs: dict[str, list[dict]] = {lib: [] for lib in LIBS}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="skynet-sqlite-bench-", dir="/var/tmp") as d:
        work = Path(d)
        src = work / "src"
        rels = make_tree(src, args.files, 100, 4096)
        for r in range(args.rounds):
            order = LIBS if r % 2 == 0 else LIBS[::-1]
            for lib in order:
                q = queue_run(lib, args.puts)
                versions[lib] = f"{q['module']} {q['version']}"
                dm = daemon_run(lib, work, src, rels, f"{lib}-{r}")
                runs[lib].append({**q, **dm})
                print(f"round {r + 1} {lib:9s} queue {q['batch']:9,.0f}/s batch {q['watcher']:9,.0f}/s watcher; "
                      f"daemon {dm['files_s']:6,.0f} files/s, CPU {dm['cpu_s']:.2f} s", file=sys.stderr)
    med = {lib: {k: median([x[k] for x in runs[lib]]) for k in ("batch", "watcher", "files_s", "cpu_s")} for lib in LIBS}
    ratio = {k: median([s[k] / p[k] for p, s in zip(runs["pysqlite3"], runs["stdlib"])])
             for k in ("batch", "watcher", "files_s", "cpu_s")}
    print(f"medians of {args.rounds} interleaved rounds ({args.puts:,} puts; {args.files:,} x 4 KiB files, local -> local)")
    print("| library | UniqueQ puts/s, scan batches | UniqueQ puts/s, watcher | initial sync files/s | daemon CPU s |")
    print("|---|---|---|---|---|")
    for lib in LIBS:
        m = med[lib]
        print(f"| {versions[lib]} | {m['batch']:,.0f} | {m['watcher']:,.0f} | {m['files_s']:,.0f} | {m['cpu_s']:.2f} |")
    print(f"| fallback / pysqlite3 (median of the rounds' ratios) | {ratio['batch']:.2f} | {ratio['watcher']:.2f} "
          f"| {ratio['files_s']:.2f} | {ratio['cpu_s']:.2f} |")


if __name__ == "__main__":
    main()
