"""Intake: a job's source read into its item table, as a stream.

`urls:PATH` is read line by line (one URL per line, or CSV/TSV whose header
names `url` and optionally `path`, `size`, `md5`), a few thousand lines per
transaction, with the byte offset reached committed beside the rows: memory
stays flat however long the list is, and a killed intake continues at the
line after the last batch it committed (no line is read twice, so no line
looks like its own duplicate). Tree and remote sources are listed by
skynet.jobs.sources.list_items (the transfer side's listing) and inserted the
same way.

What the list says is checked line by line and never stops the job: a
malformed line is a problem with its line number; a second line with a
destination already taken is a problem naming the first; an unsupported
scheme makes an item that fails at once with one clear error.

The list's identity (size, mtime, SHA-256) is kept. A list that changed since
the job first read it stops the job with one line (ListChanged) unless the
run was asked to `--reload`: then it is read again as a new pass; items it
still names keep their state, new lines are queued, items of removed lines
that had not finished are dropped (finished ones are kept and reported).
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from connections.contract.xcon import UnsafePath, check_rel
from skynet.config.settings import JobConfig
from skynet.jobs.item import OTHER, Item, scheme_host
from skynet.jobs.table import FAILED, ItemTable, NewItem

log = logging.getLogger("skynet.jobs.intake")

SCHEMES = ("http", "https", "ftp")
BATCH = 5000
COLUMNS = ("url", "path", "size", "md5")
_MD5 = re.compile(r"[0-9a-fA-F]{32}")


class ListChanged(Exception):
    """The list file is not the one the job first read (and no --reload)."""


class BadLine(ValueError):
    """A line that makes no item; the message says why."""


@dataclass(frozen=True)
class ListFormat:
    """How the lines of a list read: plain URLs, or delimited columns."""

    delimiter: str | None = None  # None: one URL per line
    columns: tuple[str, ...] = ()

    @staticmethod
    def from_header(text: str) -> "ListFormat | None":
        """The format a header line announces, or None when the line is not a header
        (it names no `url` column: a plain list's first URL)."""
        delimiter = "\t" if "\t" in text else ","
        names = tuple(f.strip().lower() for f in next(csv.reader([text], delimiter=delimiter)))
        if "url" not in names:
            return None
        unknown = [n for n in names if n not in COLUMNS]
        if unknown:
            raise BadLine(f"unknown column {unknown[0]!r} in the header (known: {', '.join(COLUMNS)})")
        return ListFormat(delimiter, names)

    def to_json(self) -> dict:
        return {"delimiter": self.delimiter, "columns": list(self.columns)}

    @staticmethod
    def from_json(d: dict | None) -> "ListFormat | None":
        return None if d is None else ListFormat(d["delimiter"], tuple(d["columns"]))


def parse_line(text: str, fmt: ListFormat, lineno: int) -> NewItem:
    """One line of the list as a row to add; BadLine if it makes no item."""
    fields = {"url": text.strip()}
    if fmt.delimiter is not None:
        values = split_fields(text, fmt.delimiter)
        if len(values) != len(fmt.columns):
            raise BadLine(f"expected {len(fmt.columns)} fields ({', '.join(fmt.columns)}), found {len(values)}")
        fields = {k: v.strip() for k, v in zip(fmt.columns, values)}
    elif any(c.isspace() for c in fields["url"]):
        raise BadLine("a URL has no spaces (for more columns, start the list with a header such as url,path,size,md5)")
    url = fields["url"]
    try:
        if fields.get("path") and url.isascii():  # no file name to take from the URL's path: its parts only
            (scheme, netloc), url_path = scheme_host(url), ""
        else:
            parts = urlsplit(url)
            scheme, netloc, url_path = parts.scheme.lower(), parts.netloc, parts.path
    except ValueError as exc:
        raise BadLine(f"not a URL ({exc}): {url!r}") from None
    if not scheme or not netloc:
        raise BadLine(f"not a URL: {url!r}")
    dest = fields.get("path") or unquote(url_path).lstrip("/")
    if not dest or dest.endswith("/"):
        raise BadLine(f"no file name in {url!r} (give it a path column)")
    try:
        check_rel(dest)
    except UnsafePath:
        raise BadLine(f"destination {dest!r} is not a clean relative path") from None
    item = Item(url, dest, _size(fields.get("size")), _md5(fields.get("md5")))
    if scheme not in SCHEMES:
        return NewItem(lineno, item, FAILED, OTHER, f"unsupported scheme {scheme!r} (skynet fetches http, https and ftp)")
    return NewItem(lineno, item)


def split_fields(text: str, delimiter: str) -> list[str]:
    """The fields of one CSV or TSV line, as csv.reader reads them. A line without a
    quote, a line break or a NUL (nearly every line of a list) has nothing for csv to
    interpret: it is split at once (a csv.reader per line cost ~1 us of the ~7 us a
    line costs intake, ten million times for a list of ten million)."""
    if not text or '"' in text or "\r" in text or "\n" in text or "\x00" in text:
        return next(csv.reader([text], delimiter=delimiter), [])
    return text.split(delimiter)


def _size(text: str | None) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise BadLine(f"size {text!r} is not a number of bytes")
    return int(text)


def _md5(text: str | None) -> str | None:
    if not text:
        return None
    if not _MD5.fullmatch(text):
        raise BadLine(f"md5 {text!r} is not 32 hexadecimal digits")
    return text.lower()


def identity(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_sha256(path: str, upto: int | None = None) -> "hashlib._Hash":
    """A SHA-256 of the file's first `upto` bytes (all when None), to go on from."""
    h = hashlib.sha256()
    left = upto
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h


class Intake:
    """Reads a job's source into its table; prepare() first (it may refuse), then run()."""

    def __init__(self, job: JobConfig, table: ItemTable, *, reload: bool = False,
                 list_items: Callable[[JobConfig], Iterable[Item]] | None = None, batch: int = BATCH,
                 on_added: Callable[[int], None] | None = None) -> None:
        self.job, self.table, self.reload, self.batch = job, table, reload, batch
        self._list_items = list_items
        self.on_added = on_added or (lambda n: None)
        self.state: dict = {}
        self.added = self.rejected = 0
        self.finished = threading.Event()

    @property
    def is_list(self) -> bool:
        return self.job.source_kind == "urls"

    def prepare(self) -> None:
        """Decide what this run reads: nothing (the source was read whole
        before), the rest of an interrupted pass, or a new pass. ListChanged,
        or FileNotFoundError, when the list cannot be used as it is."""
        state = self.table.get("intake")
        if self.is_list:
            path = self.job.source_path
            now = identity(path)  # FileNotFoundError: said by the caller
            known = self.table.get("list")
            if state is not None and known is not None and not self.reload and not self._same(known, now, path):
                raise ListChanged(
                    f"the list {path} changed since job {self.job.name} first read it (size {known['size']:,} -> "
                    f"{now['size']:,} bytes); run `skynet job run {self.job.name} --reload` to queue its new lines, "
                    f"drop removed ones and keep finished items")
        if state is None or self.reload or (not self.is_list and not state.get("done")):
            gen = (state or {}).get("gen", 0) + 1
            self.state = {"gen": gen, "offset": 0, "line": 0, "done": False, "format": None}
            self.table.start_pass(gen)
            if self.is_list:
                self.table.set("list", identity(self.job.source_path))
            self.table.set("intake", self.state)
        else:
            self.state = state
        if self.state.get("done"):
            self.finished.set()

    def _same(self, known: dict, now: dict, path: str) -> bool:
        """Is the list the one first read? Size and mtime say so at no cost; a
        touched but unchanged file is recognised by its hash."""
        if known["size"] == now["size"] and known["mtime_ns"] == now["mtime_ns"]:
            return True
        if known.get("sha256") and known["size"] == now["size"] and file_sha256(path).hexdigest() == known["sha256"]:
            self.table.set("list", {**known, "mtime_ns": now["mtime_ns"]})
            return True
        return False

    def run(self, stop: threading.Event | None = None) -> None:
        """Read until the source ends (or `stop`); finished is set when it ended."""
        stop = stop or threading.Event()
        try:
            if not self.state.get("done"):
                rows = self._list_rows() if self.is_list else self._listing_rows()
                self._insert(rows, stop)
        finally:
            if self.state.get("done"):
                self.finished.set()

    def _insert(self, rows: Iterator[NewItem | tuple[int, str]], stop: threading.Event) -> None:
        """Rows go in by batches with intake's progress; problems beside them."""
        batch: list[NewItem] = []
        problems: list[tuple[int, str, str]] = []
        for row in rows:
            if isinstance(row, tuple):
                problems.append((row[0], "malformed", row[1]))
            else:
                batch.append(row)
            if len(batch) + len(problems) >= self.batch:
                self._commit(batch, problems)
                batch, problems = [], []
                if stop.is_set():
                    return
        self.state["done"] = True
        self._commit(batch, problems)
        if self.state["gen"] > 1:
            dropped = self.table.drop_unseen(self.state["gen"])
            if dropped:
                log.info("job %s: %d unfinished item(s) no longer in the source dropped", self.job.name, dropped)

    def _commit(self, batch: list[NewItem], problems: list[tuple[int, str, str]]) -> None:
        info = {"intake": self.state}
        if self.state["done"] and self.is_list:
            info["list"] = {**identity(self.job.source_path), "sha256": self._hash.hexdigest()}
        dups = self.table.add(batch, self.state["gen"], info, problems)
        for line, _kind, text in problems:
            log.warning("%s line %d: %s", self._where(), line, text)
        for line, text in dups:
            log.warning("%s line %d: %s", self._where(), line, text)
        self.rejected += len(problems) + len(dups)
        self.added += len(batch) - len(dups)
        self.on_added(len(batch) - len(dups))

    def _where(self) -> str:
        return self.job.source_path if self.is_list else self.job.source

    def _list_rows(self) -> Iterator[NewItem | tuple[int, str]]:
        """The list's lines from where the last committed batch ended, as rows
        or (line, problem); the state's offset and line follow each line read."""
        path = self.job.source_path
        offset, lineno = self.state["offset"], self.state["line"]
        self._hash = file_sha256(path, offset)
        fmt = ListFormat.from_json(self.state.get("format"))
        with open(path, "rb") as f:
            f.seek(offset)
            for raw in f:
                self._hash.update(raw)
                lineno += 1
                self.state["offset"] = offset = offset + len(raw)
                self.state["line"] = lineno
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    yield lineno, "not UTF-8 text"
                    continue
                if not text.strip() or text.lstrip().startswith("#"):
                    continue
                try:
                    if fmt is None:
                        fmt = ListFormat.from_header(text) or ListFormat()
                        self.state["format"] = fmt.to_json()
                        if fmt.delimiter is not None:
                            continue
                    yield parse_line(text, fmt, lineno)
                except BadLine as exc:
                    yield lineno, str(exc)

    def _listing_rows(self) -> Iterator[NewItem]:
        """A tree's or a remote's items, numbered in listing order."""
        list_items = self._list_items
        if list_items is None:
            from skynet.jobs.sources import list_items
        for n, item in enumerate(list_items(self.job), 1):
            self.state["line"] = n
            yield NewItem(n, item)
