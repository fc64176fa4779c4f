"""Why skynet's UniqueQ is not persist-queue's: measured, in one run.

    .venv/bin/python bench/queue_bench.py [N]

Puts N actions into persist-queue 1.1's UniqueQ (auto_commit, as the seed
project used it) and into skynet's UniqueQ (the start-up scan's batched path
and the watcher's buffered path), on the same disk, and shows the in-flight
behaviour of each: a put identical to an item already handed out.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from persistqueue import UniqueQ as PQUniqueQ  # noqa: E402

from skynet.state.db import StateDB  # noqa: E402
from skynet.state.uniqueq import SEND, UniqueQ  # noqa: E402


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        pq = PQUniqueQ(path=os.path.join(d, "pq"), auto_commit=True, multithreading=True)
        t0 = time.perf_counter()
        for i in range(n):
            pq.put({"action": "send", "src_path": f"dir{i % 100}/file{i}"})
        t_pq = time.perf_counter() - t0

        q = UniqueQ(StateDB(os.path.join(d, "skynet.db")))
        t0 = time.perf_counter()
        batch = []
        for i in range(n):
            batch.append((SEND, f"dir{i % 100}/file{i}", ""))
            if len(batch) == 2000:
                q.put_many(batch)
                batch = []
        q.put_many(batch)
        t_batch = time.perf_counter() - t0

        q2 = UniqueQ(StateDB(os.path.join(d, "skynet2.db")))
        t0 = time.perf_counter()
        for i in range(n):
            q2.put(SEND, f"dir{i % 100}/file{i}")
        q2.flush()
        t_buf = time.perf_counter() - t0

        # The two ways persist-queue's UniqueQ loses an action in flight.
        pq2 = PQUniqueQ(path=os.path.join(d, "pq2"), auto_commit=True, multithreading=True)
        pq2.put("send f")
        pq2.get()  # handed to a worker, upload running...
        crash_kept = PQUniqueQ(path=os.path.join(d, "pq2"), auto_commit=True, multithreading=True).qsize()
        pq3 = PQUniqueQ(path=os.path.join(d, "pq3"), auto_commit=False, multithreading=True)
        pq3.put("send f")
        pq3.task_done()
        pq3.get()  # in flight
        pq3.put("send f")  # the file changed during its upload
        pq3.task_done()
        trap_kept = pq3.qsize()
        q3 = UniqueQ(StateDB(os.path.join(d, "skynet3.db")))
        q3.put_many([(SEND, "f", "")])
        q3.claim(1)
        q3.put_many([(SEND, "f", "")])
        ours_trap = len(q3.claim(5))
        q4 = UniqueQ(StateDB(os.path.join(d, "skynet4.db")))
        q4.put_many([(SEND, "f", "")])
        q4.claim(1)
        reopened = UniqueQ(StateDB(os.path.join(d, "skynet4.db")))
        reopened.reset_inflight()
        ours_crash = len(reopened.claim(5))

    print(f"{n:,} puts")
    print(f"  persist-queue UniqueQ, auto_commit      {t_pq:7.2f}s  {rate(n, t_pq):>12}")
    print(f"  skynet UniqueQ, scan batches of 2,000   {t_batch:7.2f}s  {rate(n, t_batch):>12}  "
          f"({t_pq / t_batch:,.0f}x)")
    print(f"  skynet UniqueQ, watcher (group commit)  {t_buf:7.2f}s  {rate(n, t_buf):>12}  ({t_pq / t_buf:,.0f}x)")
    print(f"  1,000,000 puts would take: persist-queue {1e6 * t_pq / n / 60:.1f} min, "
          f"skynet scan {1e6 * t_batch / n:.1f} s")
    print("an action in flight (handed to a worker, not finished):")
    print(f"  kill -9, reopen: persist-queue (auto_commit) still holds {crash_kept}; skynet holds {ours_crash}")
    print(f"  identical put while in flight: persist-queue (no auto_commit) holds {trap_kept}; skynet holds {ours_trap}")
    print("  (0 = the change is lost; 1 = it will be synced)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
