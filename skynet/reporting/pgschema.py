"""The notifier's PostgreSQL schema: versioned migrations, applied automatically.

Everything lives in its own PostgreSQL schema, ``skynet``, so it can share a
database with other applications without name clashes.

Migrations are an ordered list of SQL steps; ``skynet.schema_version`` records
which ones ran. ``migrate()`` applies the missing ones in ONE transaction that
first takes a transaction-scoped advisory lock: when a hundred daemons start at
once, one of them migrates and the others wait on the lock, then find nothing
left to do. (Without the lock, concurrent ``CREATE TABLE IF NOT EXISTS`` can
still fail with a unique violation in the catalogue.) A fast path reads the
version without the lock, so a normal start costs one small query.

Tables
------
daemons     one row per daemon (upserted by its heartbeat): host, service,
            version, mappings (JSON), queue depth, last heartbeat, started_at.
events      every notification: (daemon_id, seq) is the primary key, which is
            what makes re-delivery after a half-failed batch harmless
            (INSERT ... ON CONFLICT DO NOTHING). Indexes: the primary key, a
            BRIN on ts (retention), and two small partial B-trees for the
            dashboard's lists (done, failed); each index is insert cost.
transfers   the *current* progress of uploads in flight, one row per
            (daemon, mapping, path), upserted from progress events and deleted
            when the action is done or failed: the dashboard's progress bars
            read a few rows instead of scanning events.
throughput  per-minute roll-up (files, bytes, failures) per daemon and mapping,
            maintained from the rows an insert actually added (RETURNING; a
            COPY is all or nothing), so a re-delivered batch is never counted twice; the hour chart reads at
            most 60 x daemons x mappings small rows.

All statements here are constants; values are always passed as parameters.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = "skynet"

# An arbitrary, fixed 64-bit key for pg_advisory_xact_lock: "skynet-notifier".
ADVISORY_LOCK_KEY = 0x736B796E65744E31

# Ordered; never edit a step that has shipped: append a new one.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "daemons, events, transfers, throughput",
        [
            """CREATE TABLE IF NOT EXISTS skynet.daemons (
                   id                 text PRIMARY KEY,
                   host               text NOT NULL,
                   service            text NOT NULL,
                   version            text NOT NULL,
                   pid                integer,
                   mappings           jsonb NOT NULL DEFAULT '[]'::jsonb,
                   queue_depth        bigint NOT NULL DEFAULT 0,
                   in_flight          integer NOT NULL DEFAULT 0,
                   failed             integer NOT NULL DEFAULT 0,
                   heartbeat_interval real NOT NULL DEFAULT 10,
                   started_at         timestamptz NOT NULL,
                   last_heartbeat     timestamptz NOT NULL,
                   stopped_at         timestamptz
               )""",
            """CREATE TABLE IF NOT EXISTS skynet.events (
                   daemon_id   text NOT NULL,
                   seq         bigint NOT NULL,
                   ts          timestamptz NOT NULL,
                   mapping     text NOT NULL,
                   kind        text NOT NULL,   -- queued | started | done | failed | progress
                   action      text NOT NULL,   -- send | delete | move
                   path        text NOT NULL,
                   dest        text,
                   error       text,
                   bytes_done  bigint,
                   bytes_total bigint,
                   PRIMARY KEY (daemon_id, seq)
               )""",
            # Retention deletes by age. BRIN, not B-tree: rows arrive in about
            # ts order, and a BRIN index costs next to nothing per insert (the
            # B-trees on events are what PostgreSQL spends its insert time on).
            "CREATE INDEX IF NOT EXISTS events_ts ON skynet.events USING brin (ts)",
            # The dashboard's two lists, newest first (a backward index scan), with
            # keyset pagination on (ts, daemon_id, seq).
            "CREATE INDEX IF NOT EXISTS events_done_ts ON skynet.events (ts, daemon_id, seq) WHERE kind = 'done'",
            "CREATE INDEX IF NOT EXISTS events_failed_ts ON skynet.events (ts, daemon_id, seq) WHERE kind = 'failed'",
            """CREATE TABLE IF NOT EXISTS skynet.transfers (
                   daemon_id   text NOT NULL,
                   mapping     text NOT NULL,
                   path        text NOT NULL,
                   bytes_done  bigint NOT NULL,
                   bytes_total bigint NOT NULL,
                   started_at  timestamptz NOT NULL,
                   updated_at  timestamptz NOT NULL,
                   PRIMARY KEY (daemon_id, mapping, path)
               )""",
            "CREATE INDEX IF NOT EXISTS transfers_updated ON skynet.transfers (updated_at DESC)",
            """CREATE TABLE IF NOT EXISTS skynet.throughput (
                   minute    timestamptz NOT NULL,
                   daemon_id text NOT NULL,
                   mapping   text NOT NULL,
                   files     bigint NOT NULL DEFAULT 0,
                   bytes     bigint NOT NULL DEFAULT 0,
                   failed    bigint NOT NULL DEFAULT 0,
                   PRIMARY KEY (minute, daemon_id, mapping)
               )""",
        ],
    ),
    (
        2,
        "jobs",
        [
            # One row per job run by `skynet job run` (issue 21): its latest counts,
            # kept by upsert; a job's daemon_id is its runner's (".../job/NAME").
            """CREATE TABLE IF NOT EXISTS skynet.jobs (
                   daemon_id  text NOT NULL,
                   name       text NOT NULL,
                   source     text NOT NULL,
                   target     text NOT NULL,
                   counts     jsonb NOT NULL,   -- items by status: queued, running, done, failed
                   errors     jsonb NOT NULL,   -- failed items by error class
                   bytes      bigint NOT NULL DEFAULT 0,
                   rate       real NOT NULL DEFAULT 0,   -- items/s of the running job
                   eta        real,                      -- seconds left; NULL when unknown
                   running    boolean NOT NULL,
                   updated_at timestamptz NOT NULL,
                   PRIMARY KEY (daemon_id, name)
               )""",
        ],
    ),
]

LATEST = MIGRATIONS[-1][0]


class SchemaTooNew(Exception):
    """The database was migrated by a newer skynet than this one."""


def current_version(conn: Any, schema: str = SCHEMA) -> int:
    """The applied schema version (0 if none), without taking any lock."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.schema_version",))
        if not cur.fetchone()[0]:
            return 0
        cur.execute(f"SELECT coalesce(max(version), 0) FROM {schema}.schema_version")  # noqa: S608 (a constant)
        return int(cur.fetchone()[0])


def migrate(conn: Any, schema: str = SCHEMA, migrations: list[tuple[int, str, list[str]]] | None = None,
            lock_key: int = ADVISORY_LOCK_KEY, what: str = "notifier schema") -> int:
    """Bring `schema` up to the last of `migrations` (default: the notifier's);
    return the version found before. The one migration runner of skynet's
    PostgreSQL schemas (the notifier's `skynet`, the jobs' `skynet_jobs`): each
    passes its own schema name (a constant of the code, never input), steps and
    advisory-lock key.

    `conn` is a psycopg (3) connection; a transaction left open on it is rolled
    back first, and its autocommit setting is restored afterwards. Safe to call
    from many processes at once. Raises SchemaTooNew if the database is ahead of
    this code: an older daemon must not write to a schema it does not know (the
    notifier then logs it and keeps spooling; syncing is not affected).
    """
    assert schema.isidentifier(), schema
    migrations = MIGRATIONS if migrations is None else migrations
    latest = migrations[-1][0]
    autocommit = conn.autocommit
    if autocommit:
        conn.autocommit = False
    else:
        conn.rollback()
    try:
        found = current_version(conn, schema)
        conn.rollback()
        if found > latest:
            raise SchemaTooNew(f"the {what} is at version {found}; this skynet knows up to {latest}")
        if found == latest:
            return found
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            cur.execute(
                f"""CREATE TABLE IF NOT EXISTS {schema}.schema_version (
                       version     integer PRIMARY KEY,
                       description text NOT NULL,
                       applied_at  timestamptz NOT NULL DEFAULT now())"""
            )
            cur.execute(f"SELECT coalesce(max(version), 0) FROM {schema}.schema_version")  # noqa: S608
            have = int(cur.fetchone()[0])  # re-read under the lock: another daemon may have done it
            for version, description, steps in migrations:
                if version <= have:
                    continue
                for sql in steps:
                    cur.execute(sql)
                cur.execute(
                    f"INSERT INTO {schema}.schema_version(version, description) VALUES (%s, %s)",  # noqa: S608
                    (version, description)
                )
                log.info("%s: applied migration %d (%s)", what, version, description)
        conn.commit()
        return found
    except BaseException:
        conn.rollback()
        raise
    finally:
        if autocommit:
            conn.autocommit = True
