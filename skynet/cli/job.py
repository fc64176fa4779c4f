"""`skynet job ...`: run a migration job and watch it.

    skynet job run NAME [--reload]          until every item is done or failed for good
    skynet job status NAME [--json]         counts by status and error class, rate, ETA
    skynet job retry NAME [--class C,...]   failed items queued again (all, or by class)
    skynet job report NAME --csv            every item's final state, streamed
    skynet job submit NAME                  ([skynet] jobs_dsn) read the source, queue batches for `skynet worker`
    skynet job pause NAME / resume NAME     ([skynet] jobs_dsn) every worker stops / starts taking its batches

Exit codes of `run`: 0 every item done, 3 some failed for good (or lines of the
list made no item), 2 a bad config or a list changed since it was first read,
1 stopped by a signal before the end (run it again to continue).
"""
from __future__ import annotations

import csv
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from skynet.cli.common import ExtraAwareGroup, config_options, fail
from skynet.config import settings as configmod
from skynet.config.settings import ConfigError, JobConfig
from skynet.jobs.item import ERROR_CLASSES
from skynet.jobs.store import ItemStore
from skynet.jobs.table import FAILED, QUEUED, REPORT_COLUMNS, RUNNING, STATUSES, ItemTable
from skynet.state.folder import StateFolder, StateLock, StateLocked

if TYPE_CHECKING:
    from skynet.jobs.intake import Intake

log = logging.getLogger("skynet.jobs")

@click.group(cls=ExtraAwareGroup, context_settings={"help_option_names": ["-h", "--help"]})
def job() -> None:
    """Migration jobs: copy a URL list, a tree or another store to this config's service, item by item."""


def _load(config_file: str | None, service: str | None, name: str) -> tuple[configmod.Config, JobConfig]:
    from skynet.cli.main import load_for_inspection

    cfg = load_for_inspection(config_file, service)
    try:
        return cfg, configmod.job(cfg, name)
    except ConfigError as exc:
        fail(str(exc))
        raise  # not reached


def _table(cfg: configmod.Config, name: str, must_exist: bool = True) -> ItemStore:
    """The job's item table: in PostgreSQL with [skynet] jobs_dsn, else its SQLite file."""
    import os

    if cfg.jobs_dsn:
        table = _pg_table(cfg, name)
        if must_exist and table.get("intake") is None:
            table.close()
            fail(f"job {name} has not been submitted yet (queue it with: skynet job submit {name})", 1)
        return table
    path = StateFolder(cfg.state_dir).job_db(name)
    if must_exist and not os.path.exists(path):
        fail(f"job {name} has not run yet (start it with: skynet job run {name})", 1)
    return ItemTable(path)


@job.command("run", cls=click.Command)
@click.argument("name")
@click.option("--reload", is_flag=True, help="Read the list again: new lines queued, removed ones dropped, finished items kept.")
@config_options
def run_cmd(name: str, reload: bool, config_file: str | None, service: str | None) -> None:
    """Run job NAME until every item is done or has failed for good."""
    cfg, j = _load(config_file, service, name)
    if cfg.jobs_dsn:
        fail(f"{cfg.path}: [skynet] jobs_dsn is set: job {name}'s items live in PostgreSQL; queue them with "
             f"`skynet job submit {name}` and run them with `skynet worker` (on as many machines as you like)")
    sys.exit(run_job(cfg, j, reload=reload))


def _pg_table(cfg: configmod.Config, name: str) -> object:
    from skynet.extras import require

    require("fleet", "[skynet] jobs_dsn")
    from skynet.jobs.pgtable import PgItemTable

    try:
        return PgItemTable.open(cfg.jobs_dsn, name)
    except Exception as exc:  # unreachable, refused, bad credentials: one line
        fail(f"[skynet] jobs_dsn: cannot use the jobs database: {exc}", 1)
        raise  # not reached


@job.command("submit", cls=click.Command)
@click.argument("name")
@click.option("--reload", is_flag=True, help="Read the list again: new lines queued, removed ones dropped, finished items kept.")
@config_options
def submit_cmd(name: str, reload: bool, config_file: str | None, service: str | None) -> None:
    """Read job NAME's source into PostgreSQL ([skynet] jobs_dsn) and queue its items,
    by batches, for `skynet worker` on any number of machines."""
    from skynet.reporting import logs

    cfg, j = _load(config_file, service, name)
    if not cfg.jobs_dsn:
        fail(f"{cfg.path}: `job submit` needs [skynet] jobs_dsn (a PostgreSQL the workers share); "
             f"without it, run the job here: skynet job run {name}")
    logs.setup(cfg.log_level, cfg.log_file, cfg.log_format)
    table = _pg_table(cfg, name)
    from skynet.jobs import fleet

    try:
        fleet.ensure_schema(cfg.jobs_dsn)
        intake = _prepared_intake(cfg, j, table, reload)
        intake.run()
        app = fleet.build_app(cfg.jobs_dsn, sync=True)
        with app.open():
            batches = fleet.enqueue(app, table, j.batch_size)  # type: ignore[arg-type]
        counts = _by_status(table.counts())
    finally:
        table.close()
    click.echo(f"job {name}: {intake.added:,} item(s) read, {batches:,} batch(es) of up to {j.batch_size:,} queued on "
               f"{fleet.queue_of(name)}; {counts[QUEUED]:,} queued, {counts['done']:,} done, {counts[FAILED]:,} failed"
               + (f"; {intake.rejected:,} line(s) made no item" if intake.rejected else ""))


def run_job(cfg: configmod.Config, j: JobConfig, *, reload: bool = False,
            make_transfer: Callable[[JobConfig, object], Callable] | None = None, clock: object = None) -> int:
    """`job run` after the config is read: the lock, intake, the target, the runner.
    `make_transfer(job, target_con)` defaults to skynet.jobs.transfer's (tests give a fake)."""
    from skynet.cli.main import check_state_dir
    from skynet.jobs.runner import Runner
    from skynet.reporting import logs
    from skynet.transfer.throttle import Schedule, Throttle

    try:
        check_state_dir(cfg)
    except ConfigError as exc:
        fail(str(exc))
    logs.setup(cfg.log_level, cfg.log_file, cfg.log_format)
    folder = StateFolder(cfg.state_dir)
    lock = StateLock(folder.job_lock(j.name))
    try:
        lock.acquire()
    except StateLocked:
        fail(f"job {j.name} is already running (pid {folder.job_holder(j.name) or '?'})")
    table = ItemTable(folder.job_db(j.name))
    intake = _prepared_intake(cfg, j, table, reload)
    con = _target(cfg, j)
    transfer = (make_transfer or _default_make_transfer)(j, con)
    throttle = Throttle(Schedule(j.bwlimit if j.bwlimit != "off" else cfg.bwlimit))
    runner = Runner(j, table, transfer, intake=intake, clock=clock,  # type: ignore[arg-type]
                    throttle=throttle.consume if throttle.active else None)
    reporter = _progress(runner, cfg)
    runner.on_change = reporter.poke
    notifier = _notifier(cfg, j.name)
    runner.on_progress = notifier.job
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop())
    log.info("job %s: %s -> %s on %s, %d worker(s)", j.name, j.source, j.target or "/", cfg.service, j.workers)
    reporter.start()
    reporter.poke()
    try:
        code = runner.run()
    finally:
        reporter.stop()
        notifier.close()
        _close(transfer)
        _close(con)
        lock.release()
    _summary(j.name, table)
    return code


def _prepared_intake(cfg: configmod.Config, j: JobConfig, table: ItemStore, reload: bool) -> "Intake":
    """The job's intake, its list checked against what the table read before (the
    same refusals for `job run` and `job submit`: a changed list, a missing file)."""
    from skynet.jobs.intake import Intake, ListChanged

    intake = Intake(j, table, reload=reload)  # type: ignore[arg-type]
    try:
        intake.prepare()
    except ListChanged as exc:
        fail(str(exc))
    except FileNotFoundError:
        fail(f"{cfg.path}: [job {j.name}] source: no such list file {j.source_path!r}")
    return intake


def _notifier(cfg: configmod.Config, name: str) -> object:
    """The run's notifier (a no-op without notify_dsn): the daemon's id with
    "/job/NAME", and a spool of its own, so it never shares the daemon's."""
    import dataclasses

    from skynet.reporting.notifier import default_daemon_id, from_config, local_hostname

    base = cfg.daemon_id or default_daemon_id(local_hostname(), cfg.service, cfg.state_dir)
    folder = StateFolder(cfg.state_dir)
    return from_config(dataclasses.replace(cfg, daemon_id=f"{base}/job/{name}", state_dir=folder.job_notifier(name)))


def _default_make_transfer(j: JobConfig, con: object) -> Callable:
    from skynet.jobs.transfer import make_transfer

    return make_transfer(j.source, con, verify=j.verify, on_existing=j.on_existing,  # type: ignore[arg-type]
                         workers=j.workers, read_timeout=j.timeout, connect_timeout=min(10.0, j.timeout))


def _target(cfg: configmod.Config, j: JobConfig) -> object:
    """The connection to this config's service, rooted at the job's target."""
    from connections import service_module
    from connections.contract.xcon import PoolSized, XConError

    con = service_module(cfg.service).build(cfg.service_options, j.target)
    if isinstance(con, PoolSized):
        con.size_pool(j.workers)
    try:
        con.connect()
    except XConError as exc:
        fail(f"job {j.name}: cannot reach the target ({con.describe()}): {exc}", 1)
    return con


def _close(con: object) -> None:
    try:
        con.close()  # type: ignore[attr-defined]
    except Exception:  # the run is over; a failing close must not hide its result
        log.debug("closing the target failed", exc_info=True)


def _progress(runner: object, cfg: configmod.Config) -> object:
    from skynet.reporting.progress import ProgressReporter, Snapshot

    c = runner.counters  # type: ignore[attr-defined]
    return ProgressReporter(lambda: Snapshot(c.done + c.failed, c.bytes, max(c.pending, 0)),
                            every=cfg.progress_interval)


def _summary(name: str, table: ItemStore) -> None:
    counts = _by_status(table.counts())
    problems = table.problem_counts()
    line = ", ".join(f"{counts[s]:,} {s}" for s in STATUSES if counts[s])
    if problems:
        line += "; lines that made no item: " + ", ".join(f"{n:,} {k}" for k, n in sorted(problems.items()))
    log.info("job %s: %s", name, line or "no items")


def _by_status(counts: dict[tuple[str, str | None], int]) -> dict[str, int]:
    out = {s: 0 for s in STATUSES}
    for (status, _), n in counts.items():
        out[status] = out.get(status, 0) + n
    return out


@job.command("status", cls=click.Command)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a `counts` object keyed by status).")
@config_options
def status_cmd(name: str, as_json: bool, config_file: str | None, service: str | None) -> None:
    """Counts by status and error class, rate and ETA of job NAME."""
    cfg, _ = _load(config_file, service, name)
    st = job_status(cfg, name)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    c = st["counts"]
    click.echo(f"job {name}: {'running (pid %d)' % st['pid'] if st['pid'] else 'not running'}"
               + (f", queue paused ({st['paused']})" if st.get("paused") else ""))
    click.echo("  " + ", ".join(f"{c[s]:,} {s}" for s in STATUSES) + f" of {st['total']:,}")
    if st["errors"]:
        click.echo("  failed by class: " + ", ".join(f"{k} {n:,}" for k, n in sorted(st["errors"].items())))
    if st["rejected"]:
        click.echo("  lines that made no item: " + ", ".join(f"{k} {n:,}" for k, n in sorted(st["rejected"].items()))
                   + f" (skynet job report {name} --csv)")
    for w in st.get("workers", []):
        click.echo(f"  worker {w['host']} pid {w['pid']}: last heartbeat {w['age']:.0f} s ago, "
                   f"{w['batches_held']} batch(es) held, {w['done']:,} done, {w['rate']:,.1f} items/s"
                   + (" (stopped)" if w["stopped"] else ""))
    if st["pid"]:
        eta = st["eta_seconds"]
        from skynet.reporting.progress import human_bytes, human_seconds
        click.echo(f"  {st['rate']:,.1f} items/s, {human_bytes(st['bytes_rate'])}/s, "
                   f"ETA {human_seconds(eta) if eta is not None else '?'}")


def job_status(cfg: configmod.Config, name: str) -> dict:
    """A job's state from its table: what `job status --json` prints (and the notifier sends)."""
    table = _table(cfg, name)
    try:
        counts = table.counts()
        by_status = _by_status(counts)
        progress = table.get("progress") or {}
        pid = StateFolder(cfg.state_dir).job_holder(name)
        workers: list[dict] = []
        paused = None
        if cfg.jobs_dsn:  # the fleet's workers: their rates, from their heartbeats
            from skynet.jobs.fleet import worker_rows

            workers = [{k: v for k, v in w.items() if k != "jobs"}
                       for w in worker_rows(table.pool, name)]  # type: ignore[attr-defined]
            live = [w for w in workers if not w["stopped"] and w["age"] < 90]
            pid = live[0]["pid"] if live else None
            progress = {"rate": sum(w["rate"] for w in live), "bytes_rate": 0.0}
            from skynet.jobs.fleet import pause_state

            paused = pause_state(table.pool, name)  # type: ignore[attr-defined]
        rate = progress.get("rate", 0.0) if pid else 0.0
        pending = by_status[QUEUED] + by_status[RUNNING]
        return {
            "workers": workers,
            "paused": paused,
            "job": name,
            "pid": pid,
            "counts": by_status,
            "total": sum(by_status.values()),
            "errors": {e: n for (s, e), n in counts.items() if s == FAILED and e},
            "rejected": table.problem_counts(),
            "bytes": table.bytes_done(),
            "rate": rate,
            "bytes_rate": progress.get("bytes_rate", 0.0) if pid else 0.0,
            "eta_seconds": pending / rate if rate > 0 else None,
        }
    finally:
        table.close()


@job.command("pause", cls=click.Command)
@click.argument("name")
@config_options
def pause_cmd(name: str, config_file: str | None, service: str | None) -> None:
    """Pause job NAME's queue on every worker ([skynet] jobs_dsn): no new batch starts,
    items in flight stop at a chunk boundary, until `job resume NAME`."""
    _set_pause(config_file, service, name, True)


@job.command("resume", cls=click.Command)
@click.argument("name")
@config_options
def resume_cmd(name: str, config_file: str | None, service: str | None) -> None:
    """Undo `job pause NAME`: the workers follow the job's window again."""
    _set_pause(config_file, service, name, False)


def _set_pause(config_file: str | None, service: str | None, name: str, paused: bool) -> None:
    cfg, _ = _load(config_file, service, name)
    if not cfg.jobs_dsn:
        fail(f"{cfg.path}: pausing a job's queue needs [skynet] jobs_dsn (`job run` stops with SIGTERM)")
    table = _table(cfg, name)
    try:
        from skynet.jobs.fleet import set_pause

        set_pause(table.pool, name, paused)  # type: ignore[attr-defined]
    finally:
        table.close()
    click.echo(f"job {name}: " + ("paused on every worker (skynet job resume " + name + ")" if paused
                                  else "resumed: the workers follow its window"))


@job.command("retry", cls=click.Command)
@click.argument("name")
@click.option("--class", "classes", metavar="C,...",
              help=f"Only failed items of these error classes ({', '.join(ERROR_CLASSES)}).")
@config_options
def retry_cmd(name: str, classes: str | None, config_file: str | None, service: str | None) -> None:
    """Queue job NAME's failed items again, with fresh attempts."""
    cfg, _ = _load(config_file, service, name)
    wanted = [c.strip() for c in (classes or "").split(",") if c.strip()]
    unknown = [c for c in wanted if c not in ERROR_CLASSES]
    if unknown:
        fail(f"--class {unknown[0]!r}: expected one of {', '.join(ERROR_CLASSES)}")
    table = _table(cfg, name)
    if cfg.jobs_dsn:  # queued again, and enqueued as new batches for the workers
        from skynet.jobs import fleet

        cfg_job = configmod.job(cfg, name)
        ids = table.requeue_failed_ids(wanted or None)  # type: ignore[attr-defined]
        app = fleet.build_app(cfg.jobs_dsn, sync=True)
        with app.open():
            batches = fleet.enqueue(app, table, cfg_job.batch_size, ids=ids)  # type: ignore[arg-type]
        table.close()
        click.echo(f"job {name}: {len(ids):,} failed item(s) queued again in {batches:,} batch(es) for `skynet worker`")
        return
    n = table.requeue_failed(wanted or None)
    table.close()
    click.echo(f"job {name}: {n:,} failed item(s) queued again"
               + ("" if StateFolder(cfg.state_dir).job_holder(name) else f"; run: skynet job run {name}"))


@job.command("report", cls=click.Command)
@click.argument("name")
@click.option("--csv", "as_csv", is_flag=True, required=True, help="CSV on stdout (the only format).")
@config_options
def report_cmd(name: str, as_csv: bool, config_file: str | None, service: str | None) -> None:
    """Every item of job NAME with its final state, as CSV (streamed), then the lines that made no item."""
    cfg, _ = _load(config_file, service, name)
    table = _table(cfg, name)
    try:
        write_report(table, sys.stdout)
    finally:
        table.close()


def write_report(table: ItemStore, out: object) -> None:
    """Items in list order, then the list's rejected lines (status `rejected`,
    error_class malformed or duplicate): nothing of the list goes unaccounted."""
    w = csv.writer(out)  # type: ignore[arg-type]
    w.writerow(REPORT_COLUMNS)
    for row in table.rows():
        w.writerow(["" if v is None else v for v in row])
    blank = {k: "" for k in REPORT_COLUMNS}
    for line, kind, text in table.problems():
        w.writerow(list({**blank, "line": line, "status": "rejected", "error_class": kind, "error": text}.values()))

