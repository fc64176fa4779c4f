"""`skynet restore [PATH...] --at TIME --to DIR`: a mapping's tree, or some of its
paths, as it was at TIME (skynet/versions/restore.py does the work).

Bad input is one line and exit 2 with nothing written; a restore in which some
files failed exits 1 after the summary; Ctrl-C stops cleanly (the same command
later resumes) and exits 130.
"""
from __future__ import annotations

import logging
import os
import sys
import threading

import click

from skynet.cli.common import EXIT_USAGE, ExtraAware, config_options, fail, pick_mapping, rel_in

EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 130


@click.command("restore", cls=ExtraAware, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1)
@click.option("--at", "at", metavar="TIME",
              help="ISO 8601 (2026-12-04T12:00, 2026-12-04T12:00+01:00; no zone: local time) or relative "
                   "('2h ago', '90m ago', '3d ago', 'now'). Default: now.")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Folder to restore into (made if missing); each file lands at DIR/PATH.")
@click.option("--into-source", is_flag=True,
              help="Allow DIR inside a watched source folder: the daemon then syncs the restored files back.")
@click.option("--keep-special-bits", is_flag=True, help="Keep setuid/setgid/sticky bits (stripped by default).")
@config_options
@click.option("--mapping", "mapping_name", metavar="NAME", help="Which mapping (default: the only one).")
@click.option("--workers", default=16, show_default=True, type=click.IntRange(1, 256), help="Files in flight at once.")
@click.option("--bwlimit", metavar="RATE", help="Bandwidth limit (as the config's bwlimit; default: the config's).")
@click.option("-v", "--verbose", is_flag=True, help="Log every chunk fetched (debug) on stderr.")
def restore_cmd(paths: tuple[str, ...], at: str | None, dest: str, into_source: bool, keep_special_bits: bool,
                config_file: str | None, service: str | None, mapping_name: str | None, workers: int,
                bwlimit: str | None, verbose: bool) -> None:
    """Recreate a mapping's tree, or the PATHs given (files or folders, relative to the
    source folder or absolute under it), as it was at TIME, in DIR: files deleted since
    come back, files created after are absent, each with its bytes, mtime and mode."""
    from skynet.cli.main import load_for_inspection
    from skynet.versions import restore as rs

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    if verbose:
        logging.getLogger("skynet.transfer.fetch").setLevel(logging.DEBUG)
    now = rs.now_ns()
    try:
        when = rs.parse_when(at, now)
    except rs.RestoreRefused as exc:
        fail(str(exc))
    cfg = load_for_inspection(config_file, service)
    m = pick_mapping(cfg, mapping_name)
    try:
        check_not_in_source(cfg, dest, into_source)
        prefixes = [rel_to_source(m, p) for p in paths] or [""]
        rs.check_dest(dest)
    except rs.RestoreRefused as exc:
        fail(str(exc))
    opts = rs.Options(os.path.abspath(dest), when, prefixes, keep_special_bits, workers=workers,
                      throttle=_throttle(bwlimit if bwlimit is not None else cfg.bwlimit))
    sys.exit(run(cfg, m, opts, now))


def run(cfg, m, opts, now: int) -> int:  # type: ignore[no-untyped-def]
    """Connect, restore with a progress bar, print the summary; the exit code."""
    from connections.contract.xcon import PermanentError, TransientError
    from skynet.reporting.progress import ProgressReporter, Snapshot
    from skynet.versions import restore as rs
    from skynet.versions.session import connected_store

    stop = threading.Event()
    job: rs.Restore | None = None

    def snapshot() -> Snapshot:
        s = job.summary if job is not None else rs.Summary()
        return Snapshot(s.handled, s.bytes, max(0, s.listed - s.handled))

    reporter = ProgressReporter(snapshot, stream=sys.stderr, every=cfg.progress_interval)
    try:
        with connected_store(cfg, m, now, threads=opts.workers + opts.concurrency * opts.big_files) as store:
            job = rs.Restore(store, opts, stop, on_change=reporter.poke)
            reporter.start()
            try:
                summary = job.run()
            except KeyboardInterrupt:
                stop.set()
                click.echo(f"\nskynet: interrupted; {job.summary.line()}; the same command resumes", err=True)
                return EXIT_INTERRUPTED
    except rs.RestoreRefused as exc:
        fail(str(exc))
        return EXIT_USAGE  # not reached
    except TransientError as exc:  # unreachable at the start, or while listing (the files in flight end first)
        done = f"; {job.summary.line()}" if job is not None else ""
        fail(f"mapping {m.name!r}: the remote cannot be reached now ({exc}){done}; the same command resumes",
             code=EXIT_SOME_FAILED)
    except PermanentError as exc:
        fail(f"mapping {m.name!r}: {exc}")
    finally:
        reporter.stop()
    for line in summary.errors[:20]:
        click.echo(f"skynet: failed: {line}", err=True)
    if len(summary.errors) > 20:
        click.echo(f"skynet: ... and {len(summary.errors) - 20} more failures", err=True)
    click.echo(summary.line())
    return EXIT_SOME_FAILED if summary.failed else 0


def rel_to_source(m, path: str) -> str:  # type: ignore[no-untyped-def]
    """A PATH relative to the mapping root, or absolute under the source folder, as the store names it."""
    from skynet.versions.restore import RestoreRefused, norm_prefix

    rel = rel_in(m, path)
    if rel is None:
        raise RestoreRefused(f"{path}: not under the mapping's source folder {os.path.abspath(m.source)}")
    return norm_prefix(rel)


def check_not_in_source(cfg, dest: str, into_source: bool) -> None:  # type: ignore[no-untyped-def]
    """DIR inside a watched source folder would be synced back (as new versions of every file):
    only on purpose, with --into-source."""
    from skynet.versions.restore import RestoreRefused

    if into_source:
        return
    target = os.path.realpath(dest)
    for x in cfg.mappings:
        src = os.path.realpath(x.source)
        if target == src or target.startswith(src.rstrip(os.sep) + os.sep):
            raise RestoreRefused(f"--to {dest} is inside the watched source folder {x.source} (mapping {x.name!r}); "
                                 "restore elsewhere, or give --into-source to let the daemon sync the files back")


def _throttle(text: str):  # type: ignore[no-untyped-def]
    """The bandwidth limit's consume(), or None when off."""
    from skynet.transfer.throttle import Schedule, Throttle, validate_bwlimit

    try:
        validate_bwlimit(text)
    except ValueError as exc:
        fail(f"--bwlimit {text!r}: {exc}")
    t = Throttle(Schedule(text))
    return t.consume if t.active else None
