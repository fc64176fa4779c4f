"""The Notifier against a real PostgreSQL 15 (tests/server_pg.py).

What must hold (issue #6, DESIGN.md "Notifier"): every action kind arrives
(including delete and move); an outage loses nothing, duplicates nothing and
keeps order; the public calls stay fast while PostgreSQL is down; a hundred
daemons write at once; reconnects leak no thread and no connection; the spool
respects its cap; no password reaches the log; no database means no-op.
"""
from __future__ import annotations

import logging
import os
from skynet.state.sqlitelib import sqlite3
import statistics
import threading
import time
from pathlib import Path

import pytest

import tests.server_pg  # noqa: F401  (registers the "postgres" server)
from connections.contract.xcon import PermanentError
from skynet.reporting import pgschema
from skynet.reporting.notifier import Notifier, NotifyingQueue, default_daemon_id, redact_dsn
from skynet.state.spool import Spool
from skynet.engine.reconcile import Outcome
from skynet.state.uniqueq import Action
from tests.server_pg import free_port, pg_or_skip

APP = "skynet-notifier%"


@pytest.fixture
def pg(servers):
    return pg_or_skip(servers)


@pytest.fixture
def db(pg):
    """A fresh database: (dsn, connection in autocommit)."""
    dsn = pg.fresh_db("notif")
    conn = pg.connect(dsn.rsplit("/", 1)[1])
    yield dsn, conn
    conn.close()


def q(conn, sql: str, *params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def make(dsn, tmp_path: Path, name: str = "d1", **kw) -> Notifier:
    kw.setdefault("progress_min_bytes", 0)  # the tests use small files
    return Notifier(dsn, host="host-" + name, service="local", daemon_id=f"host-{name}/local/x",
                    spool_dir=str(tmp_path / f"spool-{name}"), version="0.1-test", **kw)


def notifier_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("skynet-notifier")]


# -- no database ----------------------------------------------------------------------
def test_no_dsn_is_a_noop(tmp_path):
    before = threading.active_count()
    n = Notifier(None, "h", "local", "h/local/x", str(tmp_path / "spool"), "0.1")
    t0 = time.perf_counter()
    for i in range(10_000):
        n.event("m", "queued", "send", f"f{i}")
        n.progress("m", f"f{i}", 1, 2)
    n.heartbeat([{"name": "m"}])
    n.handler_hook("m")("done", Action(1, "send", "a"), Outcome())
    assert time.perf_counter() - t0 < 0.5
    assert threading.active_count() == before and not n.enabled
    assert not (tmp_path / "spool").exists()  # nothing written anywhere
    assert n.flush(0.1) and n.pending() == 0
    n.close()


# -- secrets ------------------------------------------------------------------------------
def test_redact_dsn():
    assert redact_dsn("postgresql://bob:s3cr%40t@db.example:5432/sky?sslmode=require") == \
        "postgresql://bob:***@db.example:5432/sky?sslmode=require"
    assert "hunter2" not in redact_dsn("host=db user=bob password=hunter2 dbname=sky")
    assert "hunter2" not in redact_dsn("host=db password='hunter2 x' dbname=sky")
    assert "hunter2" not in redact_dsn("postgresql://db/sky?user=bob&password=hunter2")
    assert redact_dsn("postgresql://db/sky") == "postgresql://db/sky"
    assert "environment" in redact_dsn("")


def test_password_never_logged(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    dsn = f"postgresql://bob:Sup3rS3cretPw@127.0.0.1:{free_port()}/sky"
    n = make(dsn, tmp_path, backoff_initial=0.05, backoff_cap=0.1)
    n.event("m", "queued", "send", "a")
    time.sleep(0.6)  # a few failed connection attempts
    n.close(2)
    assert "unreachable" in caplog.text
    assert "Sup3rS3cretPw" not in caplog.text
    assert "bob:***@" in caplog.text


# -- every kind of action --------------------------------------------------------------
def test_every_action_kind_arrives(db, tmp_path):
    dsn, conn = db
    n = make(dsn, tmp_path)
    hook = n.handler_hook("photos")

    class FakeQ:
        def __init__(self):
            self.puts = []

        def put(self, kind, src, dest=""):
            self.puts.append((kind, src, dest))

        def put_many(self, specs):
            self.puts += list(specs)
            return len(self.puts)

        def __len__(self):
            return len(self.puts)

    tap = NotifyingQueue(FakeQ(), n, "photos")
    tap.put("send", "a/big.bin")
    tap.put_many([("delete", "old.txt", ""), ("move", "x.txt", "y/x.txt")])
    assert len(tap) == 3  # the real queue got them too

    send, delete, move = Action(1, "send", "a/big.bin"), Action(2, "delete", "old.txt"), Action(3, "move", "x.txt", "y/x.txt")
    for a in (send, delete, move):
        hook("started", a, None)
    prog = n.progress_hook("photos")
    prog("a/big.bin", 10, 100)
    prog("a/big.bin", 20, 100)  # within 1 s of the first: rate-limited away
    n.flush(10)
    assert q(conn, "SELECT bytes_done, bytes_total FROM skynet.transfers WHERE path = 'a/big.bin'") == [(10, 100)]
    prog("a/big.bin", 100, 100)  # the final one always goes through
    hook("done", send, Outcome(uploaded=1, bytes_sent=100))
    hook("done", move, Outcome(moved=1))
    hook("failed", delete, PermanentError("permission denied on the remote"))
    odd = os.fsdecode(b"caf\xe9\nname.txt")  # not UTF-8, with a newline
    n.event("photos", "queued", "send", odd)
    n.heartbeat([{"name": "photos", "source": "/src", "target": "/dst", "queue_depth": 2, "in_flight": 1,
                  "failed": 1, "connected": True, "password": "must-not-be-stored"}])
    assert n.flush(10)

    rows = q(conn, "SELECT kind, action, path, dest, error, bytes_done, bytes_total, mapping, daemon_id"
                   " FROM skynet.events ORDER BY seq")
    got = [(r[0], r[1], r[2], r[3]) for r in rows]
    assert got == [
        ("queued", "send", "a/big.bin", None),
        ("queued", "delete", "old.txt", None),
        ("queued", "move", "x.txt", "y/x.txt"),
        ("started", "send", "a/big.bin", None),
        ("started", "delete", "old.txt", None),
        ("started", "move", "x.txt", "y/x.txt"),
        ("progress", "send", "a/big.bin", None),
        ("progress", "send", "a/big.bin", None),
        ("done", "send", "a/big.bin", None),
        ("done", "move", "x.txt", "y/x.txt"),
        ("failed", "delete", "old.txt", None),
        ("queued", "send", "caf\\xe9\nname.txt", None),
    ]
    assert {r[7] for r in rows} == {"photos"} and {r[8] for r in rows} == {"host-d1/local/x"}
    failed = [r for r in rows if r[0] == "failed"][0]
    assert failed[4] == "PermanentError: permission denied on the remote"
    assert [(r[5], r[6]) for r in rows if r[0] == "progress"] == [(10, 100), (100, 100)]
    assert [r[6] for r in rows if r[0] == "done"] == [100, 0]
    # The daemon row names host, service, version; the heartbeat kept only known keys.
    (host, service, version, mappings, depth) = q(
        conn, "SELECT host, service, version, mappings, queue_depth FROM skynet.daemons")[0]
    assert (host, service, version, depth) == ("host-d1", "local", "0.1-test", 2)
    assert "password" not in mappings[0] and mappings[0]["target"] == "/dst"
    # Done and failed clear the transfer; the roll-up counts the send and the failure.
    assert q(conn, "SELECT count(*) FROM skynet.transfers") == [(0,)]
    assert q(conn, "SELECT sum(files), sum(bytes), sum(failed) FROM skynet.throughput") == [(1, 100, 1)]
    n.close()
    assert q(conn, "SELECT stopped_at IS NOT NULL FROM skynet.daemons") == [(True,)]


def test_progress_only_for_large_uploads(db, tmp_path):
    dsn, conn = db
    n = make(dsn, tmp_path, progress_min_bytes=1 << 20)
    n.progress("m", "small", 4096, 4096)
    n.progress("m", "large", 4 << 20, 4 << 20)
    assert n.flush(10)
    assert q(conn, "SELECT path FROM skynet.events WHERE kind = 'progress'") == [("large",)]
    n.close()


def test_progress_every_second_while_it_moves(db, tmp_path):
    dsn, conn = db
    n = make(dsn, tmp_path, progress_interval=0.2)
    t0 = time.monotonic()
    done = 0
    while time.monotonic() - t0 < 1.0:  # a transfer reporting every 10 ms for 1 s
        done += 1000
        n.progress("m", "big", done, 10**9)
        time.sleep(0.01)
    n.progress("m", "big", 10**9, 10**9)
    assert n.flush(10)
    rows = q(conn, "SELECT ts, bytes_done FROM skynet.events WHERE kind = 'progress' ORDER BY seq")
    assert 4 <= len(rows) <= 8, len(rows)  # about one per 0.2 s plus the final one
    gaps = [(b[0] - a[0]).total_seconds() for a, b in zip(rows, rows[1:-1])]
    assert all(0.19 <= g < 0.5 for g in gaps), gaps
    assert rows[-1][1] == 10**9
    n.close()


# -- the outage -------------------------------------------------------------------------
def test_outage_loses_nothing_keeps_order_and_stays_fast(pg, db, tmp_path, caplog):
    """PostgreSQL stops mid-run and comes back later: every row arrives once, in
    order; the callers' calls stay fast throughout; nothing leaks."""
    caplog.set_level(logging.INFO, logger="skynet")
    dsn, conn = db
    conn.close()
    threads_before = {t.ident for t in threading.enumerate()}
    n = make(dsn, tmp_path, backoff_initial=0.1, backoff_cap=0.5)
    timings: list[float] = []
    outage_timings: list[float] = []
    stop = threading.Event()
    in_outage = threading.Event()
    emitted = [0]

    def emitter() -> None:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            n.event("m", ("queued", "started", "done", "failed")[i % 4], ("send", "delete", "move")[i % 3],
                    f"dir/f{i:06d}", dest=f"dir/g{i:06d}" if i % 3 == 2 else None,
                    error="boom" if i % 4 == 3 else None, bytes_total=i)
            dt = time.perf_counter() - t
            (outage_timings if in_outage.is_set() else timings).append(dt)
            i += 1
            if i % 20 == 0:
                time.sleep(0.001)  # ~ thousands of events per second
        emitted[0] = i

    th = threading.Thread(target=emitter)
    try:
        th.start()
        time.sleep(1.0)
        in_outage.set()
        pg.stop()
        time.sleep(3.0)  # several reconnect attempts while events keep coming
        spooled_during = n.pending()
        pg.start()
        in_outage.clear()
        time.sleep(1.0)
        stop.set()
        th.join()
    finally:
        stop.set()
        if not pg.running:
            pg.start()
    assert n.flush(30), f"still pending: {n.pending()}"
    conn = pg.connect(dsn.rsplit("/", 1)[1])
    rows = q(conn, "SELECT seq, path FROM skynet.events ORDER BY seq")
    total = emitted[0]
    assert len(rows) == total, (len(rows), total)
    assert [r[1] for r in rows] == [f"dir/f{i:06d}" for i in range(total)]  # no gap, no duplicate, in order
    assert q(conn, "SELECT count(*), count(DISTINCT (daemon_id, seq)) FROM skynet.events") == [(total, total)]
    assert spooled_during > 100, "the outage should have spooled events"
    assert "unreachable" in caplog.text or "lost PostgreSQL" in caplog.text
    assert "delivering" in caplog.text

    # The caller's calls stayed fast, outage or not (they only append to a deque).
    for name, ts in (("normal", timings), ("outage", outage_timings)):
        ts = sorted(ts)
        p50, p99 = ts[len(ts) // 2], ts[int(len(ts) * 0.99)]
        print(f"event() {name}: n={len(ts)} median={p50 * 1e6:.1f}us p99={p99 * 1e6:.1f}us max={ts[-1] * 1e3:.2f}ms")
        assert p50 < 50e-6 and p99 < 1e-3, (name, p50, p99)
    assert len(outage_timings) > 1000

    # One thread, one connection, however many reconnects.
    assert n.connects >= 2
    assert len(notifier_threads()) == 1
    assert q(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", APP) == [(1,)]
    n.close()
    assert notifier_threads() == []
    assert {t.ident for t in threading.enumerate()} <= threads_before
    assert q(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", APP) == [(0,)]
    assert not os.path.exists(tmp_path / "spool-d1" / "notifier-spool.sqlite") or \
        sqlite3.connect(tmp_path / "spool-d1" / "notifier-spool.sqlite").execute("SELECT count(*) FROM spool").fetchone()[0] == 0
    conn.close()


def test_no_leak_across_many_reconnects(pg, db, tmp_path):
    dsn, conn = db
    conn.close()
    n = make(dsn, tmp_path, backoff_initial=0.05, backoff_cap=0.2)
    baseline = threading.active_count()
    try:
        for cycle in range(3):
            for i in range(50):
                n.event("m", "done", "send", f"c{cycle}-{i}")
            assert n.flush(15)
            pg.stop()
            for i in range(50):
                n.event("m", "failed", "delete", f"c{cycle}-down-{i}", error="x")
            time.sleep(0.5)
            pg.start()
            assert n.flush(15)
            assert threading.active_count() == baseline
            c = pg.connect(dsn.rsplit("/", 1)[1])
            assert q(c, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", APP) == [(1,)]
            c.close()
    finally:
        if not pg.running:
            pg.start()
    c = pg.connect(dsn.rsplit("/", 1)[1])
    assert q(c, "SELECT count(*), count(DISTINCT seq) FROM skynet.events") == [(300, 300)]
    n.close()
    assert q(c, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", APP) == [(0,)]
    assert threading.active_count() == baseline - 1
    c.close()


def test_redelivery_of_a_half_failed_batch_is_harmless(db, tmp_path):
    """A batch committed on the server whose acknowledgement was lost is sent
    again: ON CONFLICT DO NOTHING keeps one copy, and the roll-up and the
    transfers table only follow rows that were really new."""
    dsn, conn = db
    n = make(dsn, tmp_path)
    n.close()  # the writer thread is gone: drive delivery by hand
    n._connect()
    rows = [(1, time.time(), "m", "progress", "send", "big", None, None, 5, 10),
            (2, time.time(), "m", "done", "send", "a", None, None, None, 7),
            (3, time.time(), "m", "failed", "send", "b", None, "nope", None, None)]
    assert n._deliver(rows)
    assert n._deliver(rows)  # the re-delivery
    assert n._deliver(rows[1:])
    assert q(conn, "SELECT count(*) FROM skynet.events") == [(3,)]
    assert q(conn, "SELECT sum(files), sum(bytes), sum(failed) FROM skynet.throughput") == [(1, 7, 1)]
    assert q(conn, "SELECT bytes_done FROM skynet.transfers") == [(5,)]
    # The fast path (COPY, for rows never sent) meets a duplicate: redone with ON CONFLICT.
    more = [(4, time.time(), "m", "done", "send", "c\tab\\N\nline", None, None, None, 3)]
    assert n._deliver(more, maybe_seen=False)
    assert n._deliver(rows + more, maybe_seen=False)
    assert q(conn, "SELECT count(*) FROM skynet.events") == [(4,)]
    assert q(conn, "SELECT path FROM skynet.events WHERE seq = 4") == [("c\tab\\N\nline",)]
    assert q(conn, "SELECT sum(files), sum(bytes), sum(failed) FROM skynet.throughput") == [(2, 10, 1)]
    n._disconnect(None)


def test_spool_survives_a_restart_and_is_delivered_first(pg, db, tmp_path):
    dsn, conn = db
    pg.stop()
    try:
        n1 = make(dsn, tmp_path, backoff_initial=5, backoff_cap=5)
        for i in range(500):
            n1.event("m", "done", "send", f"first-{i}")
        n1.close(5)  # PostgreSQL down: everything goes to the spool file
        assert Spool(str(tmp_path / "spool-d1" / "notifier-spool.sqlite"), 1 << 30).count == 500
    finally:
        pg.start()
    n2 = make(dsn, tmp_path)  # same daemon, next run
    for i in range(100):
        n2.event("m", "done", "send", f"second-{i}")
    assert n2.flush(20)
    conn = pg.connect(dsn.rsplit("/", 1)[1])
    paths = [r[0] for r in q(conn, "SELECT path FROM skynet.events ORDER BY seq")]
    assert paths == [f"first-{i}" for i in range(500)] + [f"second-{i}" for i in range(100)]
    n2.close()
    conn.close()


# -- the spool cap -------------------------------------------------------------------------
def test_spool_cap_drops_progress_first_and_says_so(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="skynet")
    cap = 1 << 20  # about 10,000 rows: all 6,000 events fit, not all 20,000 progress rows
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    n = make(dead, tmp_path, spool_max_bytes=cap, backoff_initial=60, backoff_cap=60, progress_interval=0)
    for i in range(3000):
        n.event("m", "done", "send", f"keep/{i:05d}")
    for i in range(20000):
        n.progress("m", f"p/{i:05d}", i, 10**9)
    for i in range(3000):
        n.event("m", "failed", "send", f"keep2/{i:05d}", error="e" * 20)
    n.close(10)
    path = tmp_path / "spool-d1" / "notifier-spool.sqlite"
    sp = Spool(str(path), cap)
    assert sp.bytes <= cap
    kinds = dict(sp.db.execute("SELECT prio, count(*) FROM spool GROUP BY prio").fetchall())
    # The events all survived; the oldest progress rows were dropped.
    assert kinds.get(2) == 6000, kinds
    assert 0 < kinds.get(0, 0) < 20000
    oldest_progress = sp.db.execute("SELECT min(seq) FROM spool WHERE prio = 0").fetchone()[0]
    newest_event = sp.db.execute("SELECT max(seq) FROM spool WHERE prio = 2").fetchone()[0]
    assert oldest_progress < newest_event  # only the *oldest* progress went
    sp.close()
    size = sum(os.path.getsize(p) for p in (path, Path(str(path) + "-wal")) if os.path.exists(p))
    assert size < cap * 2 + 4 * 1024 * 1024, size
    assert "spool full" in caplog.text and "progress" in caplog.text


def test_spool_cap_drops_events_when_only_events_remain(tmp_path):
    sp = Spool(str(tmp_path / "s.sqlite"), 10_000)
    dropped = sp.append([(i, 0.0, "m", "done", "send", f"f{i}", None, None, None, 1) for i in range(1, 1001)])
    assert sp.bytes <= 10_000 and dropped.get(2, 0) > 0
    first = sp.peek(1)[0][0]
    assert first > 1 and sp.peek(10_000)[-1][0] == 1000  # oldest dropped, newest kept
    sp.remove_through(first + 10)
    sp.append([(2000, 0.0, "m", "progress", "send", "p", None, None, 1, 2)])
    # The running totals (kept incrementally, for cheap appends) match the file.
    assert (sp.count, sp.bytes) == sp.db.execute("SELECT count(*), sum(size) FROM spool").fetchone()
    sp.close()


# -- many daemons ------------------------------------------------------------------------
def test_a_hundred_daemons_at_once(pg, tmp_path, caplog):
    """100 notifiers start together on an empty database (they race on the
    migration) and write at once: every row arrives, nothing is logged as an error."""
    caplog.set_level(logging.WARNING)
    dsn = pg.fresh_db("fleet")
    barrier = threading.Barrier(100)
    notifiers: list[Notifier] = []
    lock = threading.Lock()

    def daemon(k: int) -> None:
        barrier.wait()
        n = make(dsn, tmp_path, name=f"d{k:03d}")
        with lock:
            notifiers.append(n)
        for i in range(100):
            n.event("m", "queued", "send", f"f{i}")
            n.event("m", "started", "send", f"f{i}")
            n.event("m", "done", "send", f"f{i}", bytes_total=10)
        n.heartbeat([{"name": "m", "queue_depth": 0}])

    t0 = time.monotonic()
    threads = [threading.Thread(target=daemon, args=(k,)) for k in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in notifiers:
        assert n.flush(60)
    elapsed = time.monotonic() - t0
    conn = pg.connect(dsn.rsplit("/", 1)[1])
    assert q(conn, "SELECT count(*) FROM skynet.events") == [(30_000,)]
    assert q(conn, "SELECT count(*) FROM skynet.daemons") == [(100,)]
    assert q(conn, "SELECT count(*) FROM skynet.schema_version") == [(pgschema.LATEST,)]
    assert q(conn, "SELECT sum(files) FROM skynet.throughput") == [(10_000,)]
    assert q(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", APP) == [(100,)]
    for n in notifiers:
        n.close(5)
    assert notifier_threads() == []
    assert q(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", APP) == [(0,)]
    conn.close()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [r.getMessage() for r in errors][:5]
    print(f"100 daemons x 300 events delivered in {elapsed:.1f}s")


def test_concurrent_migrations(pg):
    dsn = pg.fresh_db("mig")
    import psycopg

    errors: list[Exception] = []

    def run() -> None:
        c = psycopg.connect(dsn)
        try:
            pgschema.migrate(c)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=run) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    c = psycopg.connect(dsn)
    assert pgschema.current_version(c) == pgschema.LATEST
    assert pgschema.migrate(c) == pgschema.LATEST  # nothing left to do
    c.close()


# -- retention ---------------------------------------------------------------------------
def test_retention_prunes_old_events(db, tmp_path):
    dsn, conn = db
    n = make(dsn, tmp_path, name="old")
    n.event("m", "done", "send", "fresh")
    assert n.flush(10)
    n.close()
    q(conn, "INSERT INTO skynet.events (daemon_id, seq, ts, mapping, kind, action, path)"
            " SELECT 'x', g, now() - interval '30 days', 'm', 'done', 'send', 'old' || g"
            " FROM generate_series(1, 12000) g")
    n2 = make(dsn, tmp_path, name="new", retention_days=7)  # prunes once at connection, then hourly
    n2.event("m", "done", "send", "fresh2")
    assert n2.flush(10)
    deadline = time.monotonic() + 10
    while q(conn, "SELECT count(*) FROM skynet.events WHERE path LIKE 'old%%'")[0][0] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert q(conn, "SELECT path FROM skynet.events ORDER BY path") == [("fresh",), ("fresh2",)]
    n2.close()


def test_default_daemon_id_is_stable_and_distinct():
    a = default_daemon_id("h", "s3", "/var/lib/skynet/a")
    assert a == default_daemon_id("h", "s3", "/var/lib/skynet/a")
    assert a != default_daemon_id("h", "s3", "/var/lib/skynet/b") and a.startswith("h/s3/")
