"""The state database of one mapping: queue, Index, failed actions, resume state.

One SQLite file per mapping, in WAL mode. Every thread gets its own connection
(SQLite connections must not be shared across threads mid-transaction); WAL
lets readers run while one writer commits. synchronous=NORMAL in WAL mode never
corrupts the database on power loss; it may roll back the last transactions,
which is safe here because every action is idempotent and the start-up scan
(SyncSnap) re-derives anything a rolled-back transaction had recorded.

Paths are stored as BLOBs of their exact bytes (os.fsencode), so names that
are not valid UTF-8 survive, and ORDER BY path is plain byte order, which the
start-up scan's merge-join relies on.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator
from urllib.parse import quote

from skynet.state.sqlitelib import WAL_RESET_FIXED, connect_wal, sqlite3
from skynet.state.folder import set_aside

SCHEMA_VERSION = 2

# AUTOINCREMENT (schema 2): an action's id is its identity for as long as the
# handler remembers it, which outlasts its row. With a plain INTEGER PRIMARY
# KEY, SQLite hands the highest id out again once that row is deleted: the
# handler still held the finished action under that id when a new one was
# claimed with it, and the path locks of one of them were never let go (a
# burst stalled with thousands of actions waiting; see StateDB._migrate_queue).
QUEUE_TABLE = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    src BLOB NOT NULL,
    dest BLOB NOT NULL DEFAULT x'',
    state INTEGER NOT NULL DEFAULT 0,      -- 0 waiting, 1 claimed by the handler
    queued_at REAL NOT NULL
);
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + QUEUE_TABLE + """
-- An identical action that is still *waiting* is not queued twice; one that is
-- already claimed (in flight) does not block a new one: that is the fix for the
-- "de-duplicating queue drops the last write" trap.
CREATE UNIQUE INDEX IF NOT EXISTS queue_unique_waiting ON queue(kind, src, dest) WHERE state = 0;
CREATE INDEX IF NOT EXISTS queue_order ON queue(state, id);
CREATE TABLE IF NOT EXISTS entries (
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER,                       -- NULL: not known (seeded from a remote listing)
    mode INTEGER,
    ino INTEGER,
    etag TEXT,
    synced_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failed (
    kind TEXT NOT NULL,
    src BLOB NOT NULL,
    dest BLOB NOT NULL DEFAULT x'',
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    PRIMARY KEY (kind, src, dest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS resume (path BLOB PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;
-- The folders the mirror holds on a target with real folders (local, SFTP), beside
-- the files in `entries`: made by skynet, or found there at the first sync. The key
-- is the folder's path with "/" after it, so that ORDER BY key is the order of the
-- start-up scan's walk ("a.txt" < "a/" < "a/x"), and a folder is under_range of itself.
CREATE TABLE IF NOT EXISTS folders (
    key BLOB PRIMARY KEY,
    mode INTEGER,                           -- NULL: not known
    synced_at REAL NOT NULL
) WITHOUT ROWID;
"""


def enc(rel: str) -> bytes:
    return os.fsencode(rel)


def dec(raw: bytes) -> str:
    return os.fsdecode(raw)


def under_range(rel: str) -> tuple[bytes, bytes]:
    """Byte range [lo, hi) holding exactly the paths below folder `rel`.

    '0' is the byte after '/', so 'dir/' <= p < 'dir0' selects 'dir/...' and
    never 'dir2/x' or 'dir.bak'. The root ('') covers everything.
    """
    if rel == "":
        return b"", b"\xff" * 8
    b = enc(rel)
    return b + b"/", b + b"0"


class StateError(Exception):
    """The state database cannot be used (corrupt, unwritable, disk full)."""


class CorruptState(StateError):
    """The state database is damaged (not merely unwritable)."""


def open_or_rebuild(path: str) -> tuple["StateDB", bool]:
    """Open the state database; if it is damaged, move it aside and start a
    new one. Returns (db, rebuilt). A rebuilt state is empty: the start-up
    scan then lists the remote and sends only what differs (first sync)."""
    try:
        return StateDB(path), False
    except CorruptState:
        set_aside(path)
        return StateDB(path), True


CACHE_KIB = 512  # SQLite page cache per connection


class StateDB:
    """One mapping's SQLite state file, with a connection per thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Our own threads take turns for writes here, rather than in SQLite's
        # busy handler (which sleeps 1, 2, 5, 10 ms between tries): a waiting
        # thread runs the moment the previous transaction commits.
        self._write_lock = threading.RLock()
        self._checkpointer: Checkpointer | None = None
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            c = self.conn()
            self._migrate_queue()
            c.executescript(SCHEMA)
            c.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
            # Touch every table once: a damaged page usually shows up here.
            for table in ("meta", "queue", "entries", "failed", "resume", "folders"):
                c.execute(f"SELECT * FROM {table} LIMIT 1").fetchall()  # noqa: S608 - fixed names
        except sqlite3.DatabaseError as exc:
            self.close()
            if "disk is full" in str(exc) or "unable to open" in str(exc) or "readonly" in str(exc):
                raise StateError(f"cannot use the state database {path!r}: {exc}") from exc
            raise CorruptState(f"state database {path!r} is damaged: {exc}") from exc

    def _migrate_queue(self) -> None:
        """A queue table from schema 1 (ids could be reused) becomes one with
        AUTOINCREMENT, keeping its rows and their ids, in one transaction."""
        row = self.conn().execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'queue'").fetchone()
        if row is None or "AUTOINCREMENT" in row[0].upper():
            return
        with self.write() as c:
            c.execute("ALTER TABLE queue RENAME TO queue_v1")
            c.execute("DROP INDEX IF EXISTS queue_unique_waiting")
            c.execute("DROP INDEX IF EXISTS queue_order")
            c.execute(QUEUE_TABLE)
            c.execute("INSERT INTO queue(id, kind, src, dest, state, queued_at) "
                      "SELECT id, kind, src, dest, state, queued_at FROM queue_v1")
            c.execute("DROP TABLE queue_v1")

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = connect_wal(self.path)
            # Checkpoints run on a thread of their own (Checkpointer), never
            # inside a COMMIT: see there.
            c.execute("PRAGMA wal_autocheckpoint=0")
            # Once a checkpoint has caught up, the next writer starts the WAL
            # over and shrinks a file that grew (say, behind a long read) to this.
            c.execute(f"PRAGMA journal_size_limit={Checkpointer.WAL_KEEP}")
            # Every thread has a connection and every connection its own page
            # cache, which fills up to cache_size as the tables outgrow it:
            # SQLite's default (2,000 KiB) made the daemon's memory grow with
            # the tree (12 connections). The OS page cache holds the file anyway.
            c.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._local.conn = c
            with self._lock:
                self._all.append(c)
        return c

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: take the write lock up front,
        so two writers never deadlock upgrading from a read)."""
        c = self.conn()
        with self._write_lock:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            else:
                c.execute("COMMIT")
                self._committed()

    def _committed(self) -> None:
        cp = self._checkpointer
        if cp is None:
            with self._lock:
                if self._checkpointer is None:
                    self._checkpointer = Checkpointer(self)
                cp = self._checkpointer
        cp.committed()

    def get_meta(self, key: str) -> str | None:
        row = self.conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def identity(self) -> str | None:
        """What this database describes (state_folder.mapping_identity), as last recorded."""
        return self.get_meta("identity")

    def set_identity(self, ident: str) -> None:
        self.set_meta("identity", ident)

    def close(self) -> None:
        with self._lock:
            cp, self._checkpointer = self._checkpointer, None
        if cp is not None:
            cp.stop()
        with self._lock:
            for c in self._all:
                with contextlib.suppress(Exception):
                    c.close()
            self._all.clear()
        self._local = threading.local()


class Checkpointer:
    """Moves the WAL's pages into the database file on a thread of its own.

    SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL
    past 1,000 pages, and it fsyncs. While a large upload fills the disk's write
    queue that fsync took over a second, and every other writer (the queue,
    the committer, a worker claiming work under the handler's lock) waited
    behind it: small files stalled for as long (bench/run scale latency). Here
    the commits never fsync (WAL with synchronous=NORMAL, automatic checkpoints
    off) and a PASSIVE checkpoint, which never blocks writers or readers, runs
    every CHECKPOINT_EVERY commits. An idle daemon commits nothing, so this
    thread sleeps without a timeout. Nothing here ever waits for readers or
    blocks writers (TRUNCATE or RESTART would): a WAL that grows while a long
    read holds an old snapshot is checkpointed once that read ends."""

    CHECKPOINT_EVERY = 200  # commits; each is a few pages, so the WAL stays a few MiB
    WAL_KEEP = 16 << 20  # bytes of WAL file kept when SQLite starts it over (journal_size_limit)

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._due = threading.Event()
        self._stopping = False
        self._commits = 0
        self.rounds = 0  # checkpoints run (tests and diagnostics)
        self._thread = threading.Thread(target=self._loop, name="state-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        self._commits += 1  # racy under threads; an approximate count is all it needs
        if self._commits >= self.CHECKPOINT_EVERY:
            self._commits = 0
            self._due.set()

    def stop(self) -> None:
        self._stopping = True
        self._due.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        """On this thread's own connection (StateDB.conn: the same settings;
        StateDB.close closes it, and the last connection to close checkpoints
        what is left)."""
        while True:
            self._due.wait()
            self._due.clear()
            if self._stopping:
                return
            try:
                c = self.db.conn()
            except sqlite3.Error:
                continue  # state folder unusable: the writers will say so
            if WAL_RESET_FIXED:
                self.checkpoint(c)
            else:  # an old SQLite (see skynet.state.sqlitelib): no commit may race the checkpoint
                with self.db._write_lock:
                    self.checkpoint(c)

    def checkpoint(self, c: sqlite3.Connection) -> None:
        try:
            c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.rounds += 1
        except sqlite3.Error:
            pass  # disk full or busy: the next round tries again; commits carry on in the WAL


@dataclass(frozen=True)
class FailedAction:
    kind: str
    src: str
    dest: str
    error: str
    attempts: int
    first_at: float
    last_at: float


class FailedActions:
    """Actions given up on (permanent error, or too many attempts)."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    def record(self, kind: str, src: str, dest: str, error: str, attempts: int) -> None:
        now = time.time()
        with self.db.write() as c:
            c.execute(
                """INSERT INTO failed(kind, src, dest, error, attempts, first_at, last_at) VALUES (?,?,?,?,?,?,?)
                   ON CONFLICT(kind, src, dest) DO UPDATE SET error = excluded.error,
                   attempts = failed.attempts + excluded.attempts, last_at = excluded.last_at""",
                (kind, enc(src), enc(dest), error, attempts, now, now),
            )

    @staticmethod
    def clear_paths(c: sqlite3.Connection, rels: Iterable[str]) -> None:
        """A later success on these paths settles any failure recorded for
        them (inside the caller's transaction)."""
        if c.execute("SELECT 1 FROM failed LIMIT 1").fetchone() is None:
            return  # the usual case: nothing has failed, nothing to settle
        for rel in rels:
            b = enc(rel)
            c.execute("DELETE FROM failed WHERE src = ? OR dest = ?", (b, b))

    def list(self) -> list[FailedAction]:
        return failed_rows(self.db.conn())

    def take(self, paths: list[str] | None = None) -> list[FailedAction]:
        """Remove and return failed actions (all, or those touching `paths`)."""
        items = self.list()
        if paths:
            wanted = set(paths)
            items = [f for f in items if f.src in wanted or f.dest in wanted]
        with self.db.write() as c:
            c.executemany(
                "DELETE FROM failed WHERE kind = ? AND src = ? AND dest = ?",
                ((f.kind, enc(f.src), enc(f.dest)) for f in items),
            )
        return items

    def count(self) -> int:
        return failed_count(self.db.conn())


def failed_rows(c: sqlite3.Connection, newest_first: bool = False, limit: int = -1) -> list[FailedAction]:
    """The failed actions, by when they last failed (the daemon's view and the read-only one)."""
    order = "DESC" if newest_first else "ASC"
    rows = c.execute(
        f"SELECT kind, src, dest, error, attempts, first_at, last_at FROM failed ORDER BY last_at {order} LIMIT ?",
        (limit,)).fetchall()
    return [FailedAction(r[0], dec(r[1]), dec(r[2]), *r[3:]) for r in rows]


def failed_count(c: sqlite3.Connection) -> int:
    return c.execute("SELECT count(*) FROM failed").fetchone()[0]


class ResumeTable:
    """Resume state of interrupted uploads, one JSON document per path.

    Every send asks whether its path has a saved upload, and almost none has:
    the paths that do are kept in memory (a handful: only big uploads in
    flight), so the usual answer costs no SQLite round trip. This instance is
    the table's only writer while the daemon runs."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._held: set[bytes] | None = None  # encoded paths with a row; None: not read yet
        self._lock = threading.Lock()

    def _paths(self) -> set[bytes]:
        held = self._held
        if held is None:
            with self._lock:
                if self._held is None:
                    self._held = {bytes(r[0]) for r in self.db.conn().execute("SELECT path FROM resume")}
                held = self._held
        return held

    def store(self, rel: str) -> "BoundResumeStore":
        return BoundResumeStore(self, rel)

    def load(self, rel: str) -> dict | None:
        key = enc(rel)
        if key not in self._paths():
            return None
        row = self.db.conn().execute("SELECT state FROM resume WHERE path = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    # save and clear change the row and the set under one lock, so that the set
    # follows the rows in the same order even when a part thread saves while
    # the worker clears (else a row could outlive its entry and never be cleared).
    def save(self, rel: str, state: dict) -> None:
        key = enc(rel)
        held = self._paths()
        with self._lock:
            with self.db.write() as c:
                c.execute("INSERT OR REPLACE INTO resume(path, state) VALUES (?, ?)", (key, json.dumps(state)))
            held.add(key)

    def clear(self, rel: str) -> None:
        key = enc(rel)
        held = self._paths()
        with self._lock:
            if key not in held:
                return
            with self.db.write() as c:
                c.execute("DELETE FROM resume WHERE path = ?", (key,))
            held.discard(key)

    def all(self) -> list[dict]:
        return [json.loads(r[0]) for r in self.db.conn().execute("SELECT state FROM resume")]

    def at_or_under(self, rel: str) -> list[tuple[str, dict]]:
        """(path, state) of `rel` and of every path below folder `rel`."""
        lo, hi = under_range(rel)
        rows = self.db.conn().execute(
            "SELECT path, state FROM resume WHERE path = ? OR (path >= ? AND path < ?)", (enc(rel), lo, hi))
        return [(dec(path), json.loads(state)) for path, state in rows]


class BoundResumeStore:
    """The ResumeStore protocol of connections.contract.xcon, bound to one path."""

    def __init__(self, table: ResumeTable, rel: str) -> None:
        self.table, self.rel = table, rel

    def load(self) -> dict | None:
        return self.table.load(self.rel)

    def save(self, state: dict) -> None:
        self.table.save(self.rel, state)

    def clear(self) -> None:
        self.table.clear(self.rel)


class StateReader:
    """A read-only look at one mapping's state database, for what runs beside
    the daemon (`--status`, the dashboard's local mode). Opened with mode=ro:
    it never creates, migrates or writes the file, and WAL lets it read while
    the daemon writes. Raises sqlite3.Error when the file cannot be read."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self.c = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=timeout)

    def __enter__(self) -> "StateReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def queue_counts(self) -> tuple[int, int]:
        """(waiting, claimed) actions of the queue."""
        counts = dict(self.c.execute("SELECT state, count(*) FROM queue GROUP BY state").fetchall())
        return counts.get(0, 0), counts.get(1, 0)

    def failed_count(self) -> int:
        return failed_count(self.c)

    def identity(self) -> str | None:
        row = self.c.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        return row[0] if row else None

    def claimed(self, limit: int) -> list[tuple[str, str, str, float]]:
        """(kind, src, dest, queued_at) of the actions the daemon is running, oldest first."""
        rows = self.c.execute(
            "SELECT kind, src, dest, queued_at FROM queue WHERE state = 1 ORDER BY id LIMIT ?", (limit,))
        return [(kind, dec(src), dec(dest), queued_at) for kind, src, dest, queued_at in rows]

    def failures(self, limit: int) -> list[FailedAction]:
        """The `limit` most recent failed actions, newest first."""
        return failed_rows(self.c, newest_first=True, limit=limit)

    def close(self) -> None:
        self.c.close()
