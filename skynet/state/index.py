"""The Index: what the remote holds, per relative path, as of the last successful action.

A table (`entries`) of the mapping's state database (skynet.state.db). Every write
to it goes through one route, `Index.apply`: the handler's commit of finished
actions (single or batched, inside the queue's transaction: skynet.state.queue_store),
the start-up scan (first-sync adoption, refreshed rows) and the reconciler
(deletes and moves) alike. So how a row is written (byte-exact BLOB paths,
the time it was synced, a folder's subtree re-keyed with it) is decided once.

Paths are BLOBs of their exact bytes, in byte order: the scan's merge-join and
the range reads below rely on it (see skynet.state.db.under_range).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

from skynet.state.sqlitelib import sqlite3
from skynet.state.db import StateDB, dec, enc, under_range

#: (rel, size, mtime_ns, mode, ino, etag): one file as the remote now holds it
IndexRow = tuple
#: (rel, mode): one folder the remote holds (targets with folders: Folders)
FolderRow = tuple

UPSERT = ("INSERT OR REPLACE INTO entries(path, size, mtime_ns, mode, ino, etag, synced_at) "
          "VALUES (?,?,?,?,?,?,?)")
COLUMNS = "path, size, mtime_ns, mode, ino, etag"
PAGE = 1000
FOLDER_UPSERT = "INSERT OR REPLACE INTO folders(key, mode, synced_at) VALUES (?,?,?)"


@dataclass(frozen=True)
class IndexEntry:
    rel: str
    size: int
    mtime_ns: int | None
    mode: int | None
    ino: int | None
    etag: str | None


@dataclass(frozen=True)
class IndexFolder:
    """A folder the remote holds, as the `folders` table records it."""

    rel: str
    mode: int | None


def folder_key(rel: str) -> bytes:
    """The `folders` table's key of `rel`: its bytes and a "/" (see skynet.state.db)."""
    return enc(rel) + b"/"


def _entry(row: tuple) -> IndexEntry:
    """An IndexEntry from a `SELECT {COLUMNS}` row."""
    return IndexEntry(dec(row[0]), row[1], row[2], row[3], row[4], row[5])


class Index:
    """What the remote holds, per relative path, as of the last successful action."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    # -- writing: one route ------------------------------------------------
    def apply(self, put: Iterable[IndexRow] = (), forget: Iterable[str] = (),
              rename: Iterable[tuple[str, str]] = (), c: sqlite3.Connection | None = None,
              folders: Iterable[FolderRow] = ()) -> None:
        """The one way the Index is written. In one transaction (the caller's
        `c`, else a new one): re-key each (src, dest) of `rename` (a file, or a
        folder's whole subtree: dest's old rows go), forget each path of
        `forget` and everything under it ('' is everything), then upsert the
        rows of `put` in the order given, so a later row for a path wins, and
        the folder rows of `folders`. Renames and forgets take the recorded
        folders along with the files."""
        if c is None:
            with self.db.write() as c:
                self.apply(put, forget, rename, c, folders)
            return
        for src, dest in rename:
            _rename(c, src, dest)
        for rel in forget:
            _forget(c, rel)
        now = time.time()
        c.executemany(UPSERT, ((enc(r[0]), r[1], r[2], r[3], r[4], r[5], now) for r in put))
        c.executemany(FOLDER_UPSERT, ((folder_key(r[0]), r[1], now) for r in folders))

    def put_many(self, rows: Iterable[IndexRow]) -> None:
        self.apply(put=rows)

    def remove(self, rel: str) -> None:
        """Forget `rel` and everything under it."""
        self.apply(forget=[rel])

    def rename(self, src: str, dest: str) -> None:
        """Re-key `src` (a file, or a folder's whole subtree) to `dest`."""
        self.apply(rename=[(src, dest)])

    def clear(self) -> None:
        self.apply(forget=[""])

    def put_folder(self, rel: str, mode: int | None) -> None:
        """Record that the remote holds the folder `rel` with permission bits `mode`."""
        self.apply(folders=[(rel, mode)])

    # -- reading -----------------------------------------------------------
    def get(self, rel: str) -> IndexEntry | None:
        row = self.db.conn().execute(f"SELECT {COLUMNS} FROM entries WHERE path = ?", (enc(rel),)).fetchone()
        return _entry(row) if row else None

    def has_under(self, rel: str) -> bool:
        lo, hi = under_range(rel)
        return (
            self.db.conn().execute("SELECT 1 FROM entries WHERE path >= ? AND path < ? LIMIT 1", (lo, hi)).fetchone()
            is not None
        )

    def iter_under(self, rel: str, batch: int = 2000) -> Iterator[IndexEntry]:
        """The entries below folder `rel` ('': all of them), in byte order,
        paged so memory stays flat whatever the tree's size."""
        lo, hi = under_range(rel)
        bound = "" if rel == "" else " AND path < ?"  # the root: no upper bound, whatever bytes a name holds
        c = self.db.conn()
        op = ">="
        while True:
            rows = c.execute(
                f"SELECT {COLUMNS} FROM entries WHERE path {op} ?{bound} ORDER BY path LIMIT ?",  # noqa: S608
                (lo, *((hi,) if bound else ()), batch)).fetchall()
            for r in rows:
                yield _entry(r)
            if len(rows) < batch:
                return
            lo, op = rows[-1][0], ">"

    def iter_sorted(self, batch: int = 2000) -> Iterator[IndexEntry]:
        """All entries in byte order, paged so memory stays flat."""
        return self.iter_under("", batch)

    def paths_under(self, rel: str, batch: int = PAGE) -> Iterator[str]:
        """Every path below folder `rel`, in byte order, paged so memory stays flat."""
        return (e.rel for e in self.iter_under(rel, batch))

    def folder(self, rel: str) -> IndexFolder | None:
        """The folder `rel` as recorded, or None: the mirror does not hold it (as far as it knows)."""
        row = self.db.conn().execute("SELECT mode FROM folders WHERE key = ?", (folder_key(rel),)).fetchone()
        return IndexFolder(rel, row[0]) if row else None

    def iter_folders_under(self, rel: str, batch: int = 2000) -> Iterator[IndexFolder]:
        """The recorded folders below folder `rel` ('': all of them; never `rel`
        itself), in the order of their keys (the scan's walk order), paged."""
        lo, hi = under_range(rel)
        if rel:
            lo += b"\x00"  # past the key of `rel` itself (rel + "/"): the least key longer than it
        bound = "" if rel == "" else " AND key < ?"
        c = self.db.conn()
        op = ">="
        while True:
            rows = c.execute(
                f"SELECT key, mode FROM folders WHERE key {op} ?{bound} ORDER BY key LIMIT ?",  # noqa: S608
                (lo, *((hi,) if bound else ()), batch)).fetchall()
            for key, mode in rows:
                yield IndexFolder(dec(key[:-1]), mode)
            if len(rows) < batch:
                return
            lo, op = rows[-1][0], ">"

    def count(self) -> int:
        return self.db.conn().execute("SELECT count(*) FROM entries").fetchone()[0]

    def total_bytes(self) -> int:
        """What the remote holds, in bytes (a destination's `capacity` minus this is its room)."""
        return self.db.conn().execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()[0]


def _forget(c: sqlite3.Connection, rel: str) -> None:
    if rel == "":
        c.execute("DELETE FROM entries")
        c.execute("DELETE FROM folders")
        return
    lo, hi = under_range(rel)
    c.execute("DELETE FROM entries WHERE path = ?", (enc(rel),))
    c.execute("DELETE FROM entries WHERE path >= ? AND path < ?", (lo, hi))
    c.execute("DELETE FROM folders WHERE key >= ? AND key < ?", (lo, hi))  # rel's own key is lo


def _rename_folders(c: sqlite3.Connection, src: str, dest: str) -> None:
    """Re-key the recorded folders at and below `src` to `dest` (dest's go first)."""
    s, d = enc(src), enc(dest)
    lo, hi = under_range(src)
    rows = c.execute("SELECT key, mode, synced_at FROM folders WHERE key >= ? AND key < ?", (lo, hi)).fetchall()
    c.execute("DELETE FROM folders WHERE key >= ? AND key < ?", (lo, hi))
    c.executemany(FOLDER_UPSERT, ((d + r[0][len(s):], r[1], r[2]) for r in rows))


def _rename(c: sqlite3.Connection, src: str, dest: str) -> None:
    s, d = enc(src), enc(dest)
    lo, hi = under_range(src)
    _forget(c, dest)
    _rename_folders(c, src, dest)
    c.execute("UPDATE entries SET path = ? WHERE path = ?", (d, s))
    # Re-key the subtree in pages, in Python: SQLite's || turns BLOBs
    # into TEXT, and paths must stay byte-exact BLOBs.
    cut = len(s) + 1
    last = lo
    while True:
        rows = c.execute(
            "SELECT path, size, mtime_ns, mode, ino, etag, synced_at FROM entries"
            " WHERE path >= ? AND path < ? ORDER BY path LIMIT ?", (last, hi, PAGE)).fetchall()
        if not rows:
            break
        c.executemany("DELETE FROM entries WHERE path = ?", ((r[0],) for r in rows))
        c.executemany(UPSERT, ((d + b"/" + r[0][cut:], *r[1:]) for r in rows))
        last = rows[-1][0]
