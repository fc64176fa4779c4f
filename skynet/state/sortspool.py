"""A sort on disk: rows keyed by bytes, added in any order, read back grouped by key in
byte order, with memory that does not grow with the rows (a temporary SQLite file,
removed on exit). skynet.versions.area sorts a whole remote listing by path with it.

It lives here because skynet's SQLite files are opened only by the state modules
(tests/test_state_owner.py); this one is not in the state folder but in the system's
temporary folder: it holds nothing that must survive the process.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from typing import Iterable, Iterator

from skynet.state.sqlitelib import sqlite3


class SortSpool:
    """`add()` rows (key: bytes, *values) of `width` values each; `groups(prefix)` gives
    (key, [values, ...]) for every key equal to `prefix` or under `prefix + b"/"`,
    in key order; the values of one key in the order they were added."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._dir = tempfile.TemporaryDirectory(prefix="skynet-sort-")
        self.db = sqlite3.connect(os.path.join(self._dir.name, "sort.sqlite"), check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        cols = ", ".join(f"v{i}" for i in range(width))
        self.db.execute(f"CREATE TABLE rows (k BLOB, {cols})")
        self._indexed = False

    def __enter__(self) -> "SortSpool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()

    def add(self, rows: Iterable[tuple]) -> None:
        marks = ", ".join("?" * (self.width + 1))
        self.db.executemany(f"INSERT INTO rows VALUES ({marks})", rows)

    def groups(self, prefix: bytes = b"") -> Iterator[tuple[bytes, list[tuple]]]:
        if not self._indexed:  # made once every row is in: cheaper than keeping it up to date
            self.db.execute("CREATE INDEX by_key ON rows (k)")
            self._indexed = True
        cols = ", ".join(f"v{i}" for i in range(self.width))
        sql, args = f"SELECT k, {cols} FROM rows", ()
        if prefix:
            sql += " WHERE k = ? OR (k >= ? AND k < ?)"
            args = (prefix, prefix + b"/", prefix + b"0")  # "0" follows "/": everything under prefix/
        rows = self.db.execute(sql + " ORDER BY k, rowid", args)
        for key, group in itertools.groupby(rows, key=lambda r: r[0]):
            yield key, [r[1:] for r in group]
