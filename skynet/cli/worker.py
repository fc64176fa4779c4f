"""`skynet worker`: run the batches of migration jobs queued with `skynet job submit`
([skynet] jobs_dsn), on as many machines as you like (skynet/jobs/fleet.py).

    skynet worker [--job NAME] [--concurrency N] [--exit-when-idle] [--stall-timeout S] [--metrics-port N]

Exit codes: 0 stopped (SIGTERM, SIGINT, or idle with --exit-when-idle), 2 a bad
config. A worker that cannot renew its heartbeat (cut off from PostgreSQL) stops
its transfers and kills itself (SIGKILL) before others may take its batches over,
so no batch runs twice; systemd starts it again.
"""
from __future__ import annotations

import logging
import signal
import sys

import click

from skynet.cli.common import ExtraAware, config_options, fail
from skynet.config import settings as configmod
from skynet.config.settings import ConfigError

log = logging.getLogger("skynet.jobs.fleet")


@click.command(cls=ExtraAware, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--job", "job_name", metavar="NAME", help="Serve this job's queue only (default: every job of the config).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Batches run at once (each runs its job's `workers` items at once).")
@click.option("--exit-when-idle", is_flag=True, help="Exit once no batch of its jobs is queued or running.")
@click.option("--stall-timeout", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Seconds without a heartbeat after which a worker's batches go to others.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus /metrics on this port (at [skynet] metrics_host; default: metrics_port).")
@config_options
def worker(job_name: str | None, concurrency: int, exit_when_idle: bool, stall_timeout: float,
           metrics_port: int | None, config_file: str | None, service: str | None) -> None:
    """Take batches of migration jobs from PostgreSQL ([skynet] jobs_dsn) and run their items."""
    from skynet.cli.job import _default_make_transfer, _target
    from skynet.cli.main import load_for_inspection
    from skynet.extras import require
    from skynet.reporting import logs
    from skynet.transfer.throttle import Schedule, Throttle

    cfg = load_for_inspection(config_file, service)
    if not cfg.jobs_dsn:
        fail(f"{cfg.path}: `skynet worker` needs [skynet] jobs_dsn (the PostgreSQL `job submit` queued the batches in)")
    try:
        jobs = [configmod.job(cfg, job_name)] if job_name else list(cfg.jobs)
    except ConfigError as exc:
        fail(str(exc))
    if not jobs:
        fail(f"{cfg.path}: no [job NAME] section to serve")
    require("fleet", "`skynet worker`")
    from skynet.jobs.fleet import FleetWorker

    logs.setup(cfg.log_level, cfg.log_file, cfg.log_format)
    cons: list = []

    def make_transfer(j: configmod.JobConfig) -> object:
        con = _target(cfg, j)
        cons.append(con)
        return _default_make_transfer(j, con)

    def throttle(j: configmod.JobConfig) -> object:
        t = Throttle(Schedule(j.bwlimit if j.bwlimit != "off" else cfg.bwlimit))
        return t.consume if t.active else None

    on_outcomes, on_states = _metrics(cfg, metrics_port)
    w = FleetWorker(cfg.jobs_dsn, jobs, make_transfer, concurrency=concurrency, exit_when_idle=exit_when_idle,
                    stall_timeout=stall_timeout, throttle=throttle, on_outcomes=on_outcomes,  # type: ignore[arg-type]
                    on_states=on_states)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop())
    log.info("worker %s: serving %s (concurrency %d, stall timeout %.0f s)", w.id,
             ", ".join(j.name for j in jobs), concurrency, stall_timeout)
    try:
        code = w.run()
    finally:
        for con in cons:
            try:
                con.close()
            except Exception:  # the run is over; a failing close must not hide its result
                log.debug("closing the target failed", exc_info=True)
    sys.exit(code)


def _metrics(cfg: configmod.Config, port: int | None) -> tuple:
    """With --metrics-port (or [skynet] metrics_port): /metrics on that port, fed
    with every item this worker finishes and, now and then, the whole job's items by state."""
    from skynet.reporting import metrics

    port = port if port is not None else cfg.metrics_port
    if not port:
        return (lambda job, outcomes: None), None
    from skynet.extras import require

    require("metrics", "--metrics-port")
    metrics.start_metrics_server(cfg.metrics_host or "127.0.0.1", port)

    def on_outcomes(job: str, outcomes: list) -> None:
        for o in outcomes:
            if o.kind in ("done", "failed"):
                metrics.item_finished(job, o.kind, o.error_class, o.bytes)

    return on_outcomes, metrics.set_job_states
