"""Tree and remote sources of a migration job: listing them as items, and
reading one item of them as a Stream.

A job whose source is `local:DIR`, `s3:bucket/prefix`, `sftp://host/path` or
`config:FILE` (another config's service) reads through the same XCon
connections the daemon writes with (issue 10): list() streams the listing
(pages, never the whole tree in memory), stat() and read_range() read one item
in ranges held to one version (`expect`), so an object replaced while it is
copied is started over, never stitched.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from connections.contract.xcon import RemoteEntry, Stream, StreamOpener, XCon
from skynet.jobs.item import NOT_FOUND, Item, ItemFailed

READ_MAX = 8 << 20  # bytes of one ranged read of a remote item
_MD5 = re.compile(r"[0-9a-f]{32}")


def source_con(spec: str) -> XCon | None:
    """The connection a job's source is read through, connected; None for a URL list.

    `s3:` takes its endpoint, region and credentials from the environment (as the
    AWS tools do: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID...), `sftp://`
    its keys and known hosts from ~/.ssh and the agent; anything else is said in
    another config (`config:FILE`: its service, rooted at its only mapping's
    target, or at the service's root)."""
    from connections import service_module

    kind, _, rest = spec.partition(":")
    if kind == "urls":
        return None
    if kind == "local":
        from connections.local.con import LocalCon
        con: XCon = LocalCon(rest)
    elif kind == "s3":
        bucket, _, prefix = rest.strip("/").partition("/")
        opts = {"bucket": bucket}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        if endpoint:
            opts.update(endpoint_url=endpoint, addressing_style="path")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            opts["region"] = region
        con = service_module("s3").build(opts, prefix)
    elif kind == "sftp":
        url = urlsplit(spec)
        opts = {"host": url.hostname or "", "port": str(url.port or 22), "use_agent": "yes"}
        if url.username:
            opts["user"] = unquote(url.username)
        con = service_module("sftp").build(opts, unquote(url.path) or "/")
    elif kind == "config":
        from skynet.config.settings import load
        cfg = load(rest)
        target = cfg.mappings[0].target if len(cfg.mappings) == 1 else ""
        con = service_module(cfg.service).build(cfg.service_options, target)
    else:
        raise ValueError(f"unknown job source {spec!r}")
    con.connect()
    return con


def item_of(entry: RemoteEntry) -> Item:
    """A listed file as an item: same relative path at the target; size, MD5 (an S3
    single-part ETag), mtime (never the time an S3 server stored it) and mode."""
    etag = (entry.etag or "").strip('"').lower()
    return Item(source=entry.rel, dest=entry.rel, size=entry.size,
                md5=etag if _MD5.fullmatch(etag) else None,
                mtime_ns=None if entry.mtime_is_stored else entry.mtime_ns, mode=entry.mode)


def list_items(job_or_spec: Any, *, con: XCon | None = None) -> Iterator[Item]:
    """Every item of a tree or remote source (a JobConfig or its `source`), streamed
    as the listing pages come. `con` reads it (else one is made for the spec and
    closed at the end)."""
    spec = job_or_spec if isinstance(job_or_spec, str) else job_or_spec.source
    own = con is None
    con = con or source_con(spec)
    if con is None:
        raise ValueError(f"{spec!r} is a URL list, not a tree or a remote")
    try:
        for entry in con.list(""):
            yield item_of(entry)
    finally:
        if own:
            con.close()


def remote_opener(con: XCon, item: Item) -> StreamOpener:
    """open_at(offset) over ranged reads of `item.source` on `con`, each held to the
    version stat() saw (RemoteChanged when it is replaced meanwhile)."""
    def open_at(offset: int) -> Stream:
        entry = con.stat(item.source)
        if entry is None:
            raise ItemFailed(NOT_FOUND, f"{item.source}: not on the source ({con.describe()})", permanent=True)
        start = offset if 0 < offset <= entry.size else 0
        pos = [start]

        def read(n: int) -> bytes:
            if pos[0] >= entry.size:
                return b""
            data = con.read_range(item.source, pos[0], min(n, READ_MAX, entry.size - pos[0]), expect=entry)
            pos[0] += len(data)
            return data

        version = f"{entry.size}:{entry.mtime_ns}:{entry.etag or ''}"
        meta = {"source-url": f"{con.describe()}/{item.source}"}
        return Stream(offset=start, size=entry.size, version=version, read=read, close=lambda: None, meta=meta,
                      mtime_ns=None if entry.mtime_is_stored else entry.mtime_ns, mode=entry.mode)

    return open_at
