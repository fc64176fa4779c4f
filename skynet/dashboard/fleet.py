"""The dashboard's view of migration jobs run by a fleet ([skynet] jobs_dsn): each
job (items by status, failures by class, rate, ETA, paused) and each `skynet
worker` (host, pid, last heartbeat, batches held, items done, rate), read from
the skynet_jobs schema (skynet/jobs/pgtable.py) on a small read-only pool.

`/api/fleet` serves it (login as /api/status); index.html shows it when the
dashboard's config has jobs_dsn.
"""
from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

LIVE = 90.0  # seconds: a worker silent this long is shown as stale
SHOWN = 24 * 3600.0  # workers seen within this are listed


class FleetSource:
    """Read-only queries against skynet_jobs, on a pool opened lazily (min_size 0)."""

    def __init__(self, dsn: str, max_conns: int = 2) -> None:
        from psycopg_pool import ConnectionPool

        from skynet.jobs.pgtable import conninfo

        kw = dict(connect_timeout=5, application_name="skynet-dashboard-fleet", autocommit=True,
                  options="-c default_transaction_read_only=on -c statement_timeout=5000")
        self._pool = ConnectionPool(conninfo(dsn), min_size=0, max_size=max_conns, kwargs=kw, open=True, timeout=5,
                                    check=ConnectionPool.check_connection, name="skynet-dashboard-fleet")

    def close(self) -> None:
        self._pool.close()

    def status(self) -> dict[str, Any]:
        with self._pool.connection() as c:
            if c.execute("SELECT to_regclass('skynet_jobs.items')").fetchone()[0] is None:
                return {"jobs": [], "workers": [], "now": time.time()}
            counts = c.execute("SELECT job, status, error_class, count(*), coalesce(sum(bytes), 0) "
                               "FROM skynet_jobs.items GROUP BY 1, 2, 3").fetchall()
            workers = c.execute(
                "SELECT host, pid, jobs, extract(epoch FROM last_heartbeat)::float8, batches_held, done, failed, rate, "
                "stopped_at IS NOT NULL, extract(epoch FROM now() - last_heartbeat)::float8 FROM skynet_jobs.workers "
                "WHERE last_heartbeat > now() - make_interval(secs => %s) ORDER BY host, pid", (SHOWN,)).fetchall()
            paused = dict(c.execute("SELECT job, reason FROM skynet_jobs.pauses WHERE paused").fetchall())
        ws = [{"host": h, "pid": pid, "jobs": list(jobs), "last_heartbeat": beat, "batches_held": held, "done": done,
               "failed": failed, "rate": rate if not stopped and age < LIVE else 0.0, "stopped": stopped,
               "stale": not stopped and age >= LIVE}
              for h, pid, jobs, beat, held, done, failed, rate, stopped, age in workers]
        return {"jobs": jobs_of(counts, ws, paused), "workers": ws, "now": time.time()}


def jobs_of(counts: list[tuple], workers: list[dict], paused: dict[str, str]) -> list[dict]:
    """Per job: items by status, failures by class, bytes, the live workers' rate, ETA."""
    jobs: dict[str, dict] = {}
    for job, status, cls, n, nbytes in counts:
        j = jobs.setdefault(job, {"name": job, "counts": {"queued": 0, "running": 0, "done": 0, "failed": 0},
                                  "errors": {}, "bytes": 0})
        j["counts"][status] = j["counts"].get(status, 0) + n
        j["bytes"] += int(nbytes)
        if status == "failed" and cls:
            j["errors"][cls] = j["errors"].get(cls, 0) + n
    for j in jobs.values():
        serving = [w for w in workers if j["name"] in w["jobs"] and not w["stopped"] and not w["stale"]]
        j["workers"] = len(serving)
        j["rate"] = sum(w["rate"] for w in serving)
        left = j["counts"]["queued"] + j["counts"]["running"]
        j["eta"] = left / j["rate"] if j["rate"] > 0 and left else None
        j["paused"] = paused.get(j["name"])
    return sorted(jobs.values(), key=lambda j: j["name"])


def register(app: Any, cfg: Any, logged_in: Any) -> bool:
    """Add /api/fleet to the dashboard when its config has jobs_dsn; whether it did."""
    dsn = getattr(cfg, "jobs_dsn", None)
    if not dsn:
        return False
    from flask import jsonify

    source = FleetSource(dsn)
    app.extensions["skynet_fleet"] = source

    @app.get("/api/fleet")
    def api_fleet() -> Any:
        if not logged_in():
            resp = jsonify({"error": "login required"})
            resp.status_code = 401
            return resp
        try:
            return jsonify(source.status())
        except Exception as exc:
            log.warning("dashboard: cannot read the jobs database: %s", type(exc).__name__)
            resp = jsonify({"error": f"cannot read the jobs database ({type(exc).__name__}); retrying"})
            resp.status_code = 503
            return resp

    return True
