"""Issue 21: the memory of a job's intake at 1 M and 10 M URLs (target: < 150 MiB at 10 M).

    bench/run jobs_intake [--lines 1000000,10000000]

A list of N URLs (a quarter of them in CSV form would change nothing: the
reader is the same) is read into a fresh item table by a child process doing
only intake (skynet.jobs.intake.Intake, as `job run` does before its workers
start); its peak RSS (VmHWM, sampled) and time are reported. The list is read
as a stream and committed a batch at a time, so the peak should not grow with N.
Writes the "Issue 21: job intake" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Proc, log, machine_info, table, write_section  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def make_list(path: Path, n: int) -> None:
    """N distinct URLs in 100 folders, written in large blocks."""
    with open(path, "w") as f:
        block = 100_000
        for start in range(0, n, block):
            f.write("".join(f"https://files.example.org/data/d{i % 100:02d}/object-{i:08d}.bin\n"
                            for i in range(start, min(n, start + block))))


def child(list_path: str, db: str) -> None:
    from skynet.config.settings import JobConfig
    from skynet.jobs.intake import Intake
    from skynet.jobs.table import ItemTable

    t0 = time.monotonic()
    table = ItemTable(db)
    intake = Intake(JobConfig("bench", f"urls:{list_path}", "t"), table)
    intake.prepare()
    intake.run()
    assert intake.finished.is_set()
    print(f"added {intake.added} rejected {intake.rejected} in {time.monotonic() - t0:.1f}s", flush=True)


def measure(work: Path, n: int) -> list[str]:
    lst, db = work / f"list-{n}.txt", work / f"items-{n}.sqlite"
    log(f"writing {n:,} URLs")
    make_list(lst, n)
    size = lst.stat().st_size
    log(f"intake of {n:,} lines ({size / 2**20:.0f} MiB)")
    t0 = time.monotonic()
    p = Proc([sys.executable, __file__, "--child", str(lst), str(db)], work / f"child-{n}.log")
    usage = p.wait()
    wall = time.monotonic() - t0
    if usage.returncode != 0:
        raise SystemExit(f"intake failed: {p.log_tail()}")
    log(p.log_tail().strip())
    db_size = sum(f.stat().st_size for f in work.glob(f"items-{n}.sqlite*"))
    lst.unlink()
    for f in work.glob(f"items-{n}.sqlite*"):
        f.unlink()
    return [f"{n:,}", f"{size / 2**20:.0f} MiB", f"{usage.maxrss_mib:.0f} MiB", f"{wall:.0f} s",
            f"{n / wall:,.0f}", f"{usage.cpu_s:.0f} s", f"{db_size / 2**20:.0f} MiB"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", default="1000000,10000000")
    ap.add_argument("--child", nargs=2, metavar=("LIST", "DB"), help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print, do not update bench/RESULTS.md")
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="skynet-jobs-intake-"))
    try:
        rows = [measure(work, int(n)) for n in args.lines.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = machine_info()
    body = "\n".join([
        "`bench/run jobs_intake` (bench/jobs_intake.py): a list of N URLs read into a fresh job's item table by",
        "a process doing only intake; peak RSS is its VmHWM, sampled. Target: < 150 MiB at 10 M lines.",
        "",
        table(["lines", "list", "peak RSS", "time", "lines/s", "CPU", "item table"], rows),
        "",
        f"Machine: {info.get('cpu', '?')}, {info.get('nproc', '?')} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
    ])
    print(body)
    if not args.no_write:
        write_section(RESULTS, "Issue 21: job intake", body)


if __name__ == "__main__":
    main()
