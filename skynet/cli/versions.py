"""`skynet versions PATH [--json]`: every kept version of a file, or of the files
under a folder, with its time, size, hash and whether it was a deletion.

PATH is absolute (under a mapping's source folder) or relative to the source
folder. It needs no file on the disk: a file deleted long ago is exactly what one
asks about. The versions come from the mapping's VersionStore (native S3 versions,
or the versions area under the remote root), streamed: a large folder prints as it
is listed, in text or as one JSON array.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import time
from collections.abc import Iterator

import click

from skynet.cli.common import ExtraAware, config_options, fail, mapping_and_rel
from skynet.config.settings import Config, MappingConfig
from skynet.versions.model import Version, VersionStore


def open_store(cfg: Config, m: MappingConfig) -> contextlib.AbstractContextManager[VersionStore]:
    """The version store of mapping `m`, on a connection of its own (closed after); for a
    mapping without versions, its current files (the only version there is of each)."""
    from skynet.versions.session import connected_store

    return connected_store(cfg, m, now_ns=time.time_ns())


def local_iso(ns: int | None) -> str | None:
    """A UTC-nanoseconds time as local ISO 8601 with the zone, to the millisecond."""
    if ns is None:
        return None
    when = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc).astimezone()
    return when.isoformat(timespec="milliseconds")


def record(mapping: str, v: Version) -> dict:
    """One version as a machine-readable record (--json)."""
    return {"mapping": mapping, "path": v.rel, "since": local_iso(v.since_ns), "until": local_iso(v.until_ns),
            "since_ns": v.since_ns, "until_ns": v.until_ns, "current": v.until_ns is None and not v.deleted,
            "deleted": v.deleted, "size": None if v.deleted else v.size, "hash": v.etag,
            "mtime_ns": v.mtime_ns, "mode": v.mode}


def text_line(v: Version) -> str:
    """One version as a line under its path's heading."""
    state = "deleted" if v.deleted else ("current" if v.until_ns is None else "")
    size = "" if v.deleted else f"{v.size:,} B"
    return f"  {local_iso(v.since_ns)}  {size:>15}  {v.etag or '-':<34}  {state}".rstrip()


def _peek(it: Iterator[Version]) -> tuple[Version | None, Iterator[Version]]:
    first = next(it, None)
    if first is None:
        return None, it

    def chained() -> Iterator[Version]:
        yield first
        yield from it

    return first, chained()


def print_text(versions: Iterator[Version]) -> int:
    """Grouped by path, each path's versions newest first (as the store lists them)."""
    current_path, n = None, 0
    for v in versions:
        if v.rel != current_path:
            current_path = v.rel
            click.echo(v.rel)
        click.echo(text_line(v))
        n += 1
    return n


def print_json(mapping: str, versions: Iterator[Version]) -> None:
    """One JSON array, written record by record (a folder of a million versions is never held whole)."""
    click.echo("[", nl=False)
    for i, v in enumerate(versions):
        click.echo(("," if i else "") + "\n  " + json.dumps(record(mapping, v), ensure_ascii=False), nl=False)
    click.echo("\n]")


@click.command(cls=ExtraAware, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of records instead of text.")
@config_options
@click.option("--mapping", metavar="NAME", help="The mapping PATH belongs to (needed for a relative PATH "
                                                "when the config has several).")
def versions(path: str, as_json: bool, config_file: str | None, service: str | None, mapping: str | None) -> None:
    """List every kept version of the file PATH, or of every file under the folder PATH:
    when it became the content (local time), size, hash, and whether it was a deletion.

    PATH is absolute, under a mapping's source folder, or relative to that folder; it
    need not exist on the disk any more."""
    from connections.contract.xcon import PermanentError, TransientError
    from skynet.cli.main import load_for_inspection

    cfg = load_for_inspection(config_file, service)
    m, rel = mapping_and_rel(cfg, path, mapping)
    try:
        with open_store(cfg, m) as store:
            first, stream = _peek(iter(store.history(rel)))
            if first is None:
                fail(f"{path}: no version of it in mapping {m.name!r} (never synced)")
            if not m.versions:
                click.echo(f"skynet: note: mapping {m.name!r} keeps no versions (versions = no): only the current "
                           "copy of each file is listed", err=True)
            if as_json:
                print_json(m.name, stream)
            else:
                print_text(stream)
    except TransientError as exc:
        fail(f"mapping {m.name!r}: the remote cannot be reached now: {exc}", code=1)
    except PermanentError as exc:
        fail(f"mapping {m.name!r}: {exc}")
