"""A fake TransferItem for the job runner's tests, and `python -m tests.jobs_fake`
to run `skynet job run` with it in a subprocess (the kill -9 tests).

The fake is scripted by the item's source URL:
  .../missing...   404: not_found, permanent
  .../flaky-K...   fails K times with a transient 503 (class other), then works
  .../down...      connection refused (transient; its host backs off)
  .../big-N...     N chunks; resume state {"done": i}; stops at a chunk boundary on ctx.stop
anything else: one chunk. Each finished item writes "<source>\n" to the target
folder under its dest and appends its source to the fetch log (one line per
item fetched, like an HTTP server's access log).
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

from connections.contract.xcon import TransferContext
from skynet.jobs.item import NOT_FOUND, OTHER, REFUSED, Item, ItemFailed, ItemResult
from skynet.transfer.chunks import TransferStopped


class FakeTransfer:
    def __init__(self, out: str | None = None, log: str | None = None, delay: float = 0.0,
                 now: Callable[[], float] = time.time) -> None:
        self.out, self.log, self.delay, self.now = out, log, delay, now
        self.calls: list[tuple[str, float]] = []
        self.chunks: Counter[str] = Counter()
        self.on_chunk: Callable[[Item, int, TransferContext], None] | None = None
        self._failures: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, item: Item, ctx: TransferContext) -> ItemResult:
        with self._lock:
            self.calls.append((item.source, self.now()))
        if "/missing" in item.source:
            raise ItemFailed(NOT_FOUND, f"404 Not Found: {item.source}", permanent=True, status=404)
        if "/down" in item.source:
            raise ItemFailed(REFUSED, "connection refused", permanent=False)
        m = re.search(r"/flaky-(\d+)", item.source)
        if m:
            with self._lock:
                self._failures[item.source] += 1
                failing = self._failures[item.source] <= int(m.group(1))
            if failing:
                raise ItemFailed(OTHER, "503 Service Unavailable", permanent=False, status=503)
        m = re.search(r"/big-(\d+)", item.source)
        n = int(m.group(1)) if m else 1
        start = (ctx.resume.load() or {}).get("done", 0)
        for i in range(start, n):
            if ctx.stop.is_set():
                raise TransferStopped(i, n)
            if self.delay:
                time.sleep(self.delay)
            with self._lock:
                self.chunks[item.source] += 1
            ctx.resume.save({"done": i + 1})
            ctx.report(i + 1, n)
            if self.on_chunk:
                self.on_chunk(item, i, ctx)
        if self.out:
            path = os.path.join(self.out, item.dest)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(item.source + "\n")
        if self.log:
            with open(self.log, "a") as f:
                f.write(item.source + "\n")
        return ItemResult(size=n, bytes_sent=n - start)


def main() -> None:
    """python -m tests.jobs_fake CONFIG JOB FETCH_LOG DELAY: `job run` with the fake."""
    from skynet.cli.job import run_job
    from skynet.config import settings

    config, name, fetch_log, delay = sys.argv[1:5]
    cfg = settings.load(config)
    job = settings.job(cfg, name)
    fake = FakeTransfer(out=job.target, log=fetch_log, delay=float(delay))
    sys.exit(run_job(cfg, job, make_transfer=lambda j, con: fake))


if __name__ == "__main__":
    main()
