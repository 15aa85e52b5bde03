"""Where the ledger's data lives: the tables, the engine, and bringing an older ledger's
database up to date when it is opened.

Measurements are stored compactly (:mod:`.codec`), with hourly rollups kept at ingest
(:mod:`.rollups`) that usage queries and reconciliation read instead of the measurements:

- ``orgs``, ``series`` (organisation, meter, account), ``shapes`` (templates): small
  dictionaries the measurements refer to by integer.
- ``measurements``: one row per (organisation, uid): ``series``, ``ts_ms``, ``uid``,
  ``shape``, ``nums``, ``extra``. SQLite keeps ``org_id`` in the row with a unique index
  on (org_id, uid), and a uid that is a lowercase UUID as its 16 bytes. PostgreSQL
  partitions the table by month of ``ts_ms`` (a partition is created when a month is first
  written); a uid is unique across partitions through ``uids`` (org_id, uid) → (series,
  ts_ms), which every ingest claims first, so concurrent ledger processes never store one
  twice.
- ``hours`` (series, hour): count, content digest (:mod:`..contentdigest`) and ``dirty``,
  set by a trigger when a stored measurement is changed or deleted by anything but the
  ledger; ``num_rollup`` (series, hour, code): count, exact sum, min, max, latest of a
  number field; ``str_rollup`` (series, hour, code, value): count and latest of a string
  value; ``fields`` (meter, code): where a code has been seen (:mod:`.codec` flags).
- ``conflicts``: each different content a stored uid was re-sent with.
- ``closed_bills``: a closed bill period's bill, frozen as it stood when it was closed.
- ``signal_events``, ``signal_deliveries``: the notifications outbox (:mod:`..signals.outbox`),
  which thresholds and trends write and the webhook sender reads.
- Corrections (:mod:`.corrections`): ``corrections`` (org_id, uid) → the uid it corrects
  (``of_uid``, indexed) and its kind; ``voids`` (series, hour, uid): the measurements a
  stored reversal voids, itself included, which usage answers leave out; ``orphans``: a
  reversal stored before the measurement it reverses; ``batches`` (org_id, batch, uid): a
  backfill batch's measurements.
- Privacy (:mod:`.erasure`, :mod:`.retention`): ``erased`` (org_id, uid) → the content hash
  a row had when it was ingested, before an erasure or a retention pass rewrote its
  personal values (its numbers never change), and which erasure or pass did it.

A database written by the ledger before this layout (``measurements`` with a JSON
``body``) is migrated when opened: its rows are moved into the new layout a page at a time
and the rollups built, in one transaction (a crash leaves the old table as it was). A
row whose body or time cannot be read is kept in ``unreadable``. Opening is idempotent and
safe when several processes open one database at once (PostgreSQL: an advisory lock;
SQLite: the write lock, taken first).
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..signals.outbox import prepare as prepare_outbox
from . import sqlfuncs
from .metersapi import prepare as prepare_meters
from .migrate import migrate

LOCK_KEY = 0x6D6B_6C64  # "mkld": PostgreSQL advisory lock held while the schema is prepared

_COMMON = [
    "CREATE TABLE IF NOT EXISTS orgs (id {serial} PRIMARY KEY, org VARCHAR(100) NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS series (id {serial} PRIMARY KEY, org VARCHAR(100) NOT NULL,"
    " meter VARCHAR(80) NOT NULL, account VARCHAR(200) NOT NULL, UNIQUE (org, meter, account))",
    "CREATE TABLE IF NOT EXISTS shapes (id {serial} PRIMARY KEY, template TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS fields (meter VARCHAR(80) NOT NULL, code VARCHAR(80) NOT NULL,"
    " flags INTEGER NOT NULL, PRIMARY KEY (meter, code))",
    "CREATE TABLE IF NOT EXISTS hours (series INTEGER NOT NULL, hour INTEGER NOT NULL, count BIGINT NOT NULL,"
    " content {digest} NOT NULL, check_xor BIGINT NOT NULL, dirty INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (series, hour))",
    "CREATE TABLE IF NOT EXISTS num_rollup (series INTEGER NOT NULL, hour INTEGER NOT NULL,"
    " code VARCHAR(80) NOT NULL, count BIGINT NOT NULL, total {number} NOT NULL, lo {number} NOT NULL,"
    " hi {number} NOT NULL, latest_ms BIGINT NOT NULL, latest_uid TEXT {collate} NOT NULL,"
    " latest {number} NOT NULL, PRIMARY KEY (series, hour, code))",
    "CREATE TABLE IF NOT EXISTS str_rollup (series INTEGER NOT NULL, hour INTEGER NOT NULL,"
    " code VARCHAR(80) NOT NULL, value TEXT NOT NULL, count BIGINT NOT NULL, latest_ms BIGINT NOT NULL,"
    " latest_uid TEXT {collate} NOT NULL, PRIMARY KEY (series, hour, code, value))",
    "CREATE TABLE IF NOT EXISTS conflicts (org VARCHAR(100) NOT NULL, uid VARCHAR(100) NOT NULL,"
    " other_hash VARCHAR(64) NOT NULL, first_hash VARCHAR(64) NOT NULL, other_body TEXT NOT NULL,"
    " seen_at_ms BIGINT NOT NULL, PRIMARY KEY (org, uid, other_hash))",
    "CREATE TABLE IF NOT EXISTS unreadable (org VARCHAR(100) NOT NULL, uid VARCHAR(100) NOT NULL,"
    " meter TEXT, account TEXT, ts TEXT, body TEXT, PRIMARY KEY (org, uid))",
    # A closed bill period: the bill as it stood when closed, never changed after.
    "CREATE TABLE IF NOT EXISTS closed_bills (org VARCHAR(100) NOT NULL, account VARCHAR(200) NOT NULL,"
    " period_start_ms BIGINT NOT NULL, period_end_ms BIGINT NOT NULL, closed_at_ms BIGINT NOT NULL,"
    " bill TEXT NOT NULL, PRIMARY KEY (org, account, period_start_ms))",
    # Corrections (.corrections): lineage, the rows a reversal voids, reversals waiting for
    # their original, and backfill batches. Small tables; uids as text.
    "CREATE TABLE IF NOT EXISTS corrections (org_id INTEGER NOT NULL, uid TEXT {collate} NOT NULL,"
    " of_uid TEXT {collate} NOT NULL, kind VARCHAR(16) NOT NULL, PRIMARY KEY (org_id, uid))",
    "CREATE INDEX IF NOT EXISTS ix_corrections_of ON corrections (org_id, of_uid)",
    "CREATE TABLE IF NOT EXISTS voids (series INTEGER NOT NULL, hour INTEGER NOT NULL,"
    " uid TEXT {collate} NOT NULL, PRIMARY KEY (series, hour, uid))",
    "CREATE TABLE IF NOT EXISTS orphans (org_id INTEGER NOT NULL, of_uid TEXT {collate} NOT NULL,"
    " uid TEXT {collate} NOT NULL, series INTEGER NOT NULL, PRIMARY KEY (org_id, of_uid, uid))",
    "CREATE TABLE IF NOT EXISTS batches (org_id INTEGER NOT NULL, batch TEXT {collate} NOT NULL,"
    " uid TEXT {collate} NOT NULL, PRIMARY KEY (org_id, batch, uid))",
    # Erasure and retention (.erasure, .retention): the content hash a rewritten row had
    # when it was ingested, which reconciliation uses for it.
    "CREATE TABLE IF NOT EXISTS erased (org_id INTEGER NOT NULL, uid TEXT {collate} NOT NULL,"
    " content_hash VARCHAR(64) NOT NULL, erasure_id VARCHAR(80) NOT NULL, at_ms BIGINT NOT NULL,"
    " PRIMARY KEY (org_id, uid))",
]

_SQLITE = [
    # rowid order is arrival order: the table's pages fill as it grows (no splits).
    "CREATE TABLE IF NOT EXISTS measurements (org_id INTEGER NOT NULL, series INTEGER NOT NULL,"
    " ts_ms INTEGER NOT NULL, uid NOT NULL, shape INTEGER NOT NULL, nums TEXT, extra TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_measurements_uid ON measurements (org_id, uid)",
    "CREATE INDEX IF NOT EXISTS ix_measurements_instant ON measurements (series, ts_ms)",
    # Anything but the ledger changing or deleting a stored measurement makes its hour's
    # rollups unreliable: reconciliation recomputes a dirty hour from its rows.
    "CREATE TRIGGER IF NOT EXISTS measurements_changed AFTER UPDATE ON measurements BEGIN"
    " UPDATE hours SET dirty = 1 WHERE series IN (OLD.series, NEW.series)"
    " AND hour IN (OLD.ts_ms / 3600000, NEW.ts_ms / 3600000); END",
    "CREATE TRIGGER IF NOT EXISTS measurements_deleted AFTER DELETE ON measurements BEGIN"
    " UPDATE hours SET dirty = 1 WHERE series = OLD.series AND hour = OLD.ts_ms / 3600000; END",
]

_POSTGRES = [
    "CREATE TABLE IF NOT EXISTS measurements (series INTEGER NOT NULL, ts_ms BIGINT NOT NULL,"
    ' uid TEXT COLLATE "C" NOT NULL, shape INTEGER NOT NULL, nums TEXT, extra TEXT) PARTITION BY RANGE (ts_ms)',
    "CREATE INDEX IF NOT EXISTS ix_measurements_instant ON measurements (series, ts_ms)",
    'CREATE TABLE IF NOT EXISTS uids (org_id INTEGER NOT NULL, uid TEXT COLLATE "C" NOT NULL,'
    " series INTEGER NOT NULL, ts_ms BIGINT NOT NULL, PRIMARY KEY (org_id, uid))",
    """CREATE OR REPLACE FUNCTION meterkit_measurement_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE hours SET dirty = 1 WHERE series = OLD.series AND hour = OLD.ts_ms / 3600000;
    IF TG_OP = 'UPDATE' THEN
        UPDATE hours SET dirty = 1 WHERE series = NEW.series AND hour = NEW.ts_ms / 3600000;
    END IF;
    RETURN NULL;
END
$$""",
]
_POSTGRES_TRIGGER = (
    "CREATE TRIGGER measurements_changed AFTER UPDATE OR DELETE ON measurements"
    " FOR EACH ROW EXECUTE FUNCTION meterkit_measurement_changed()"
)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _private_file(url: str) -> None:
    """Create a SQLite database file readable by its owner only (its -wal and -shm files
    take the same mode), before SQLite creates it with the umask's mode."""
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if not path or path.startswith(":memory:") or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.chmod(path, 0o600)  # an older ledger's file, made with the umask's 0644
    except OSError:
        return  # a missing folder or another owner's file: SQLite says so, or it is theirs to share


def make_engine(url: str) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql://...`` (psycopg 3)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        _private_file(url)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions begin where the ledger says
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            # FULL: a commit is fsynced before the ledger answers, so an acknowledged
            # measurement survives power loss (the agent never resends what was acknowledged).
            # NORMAL would lose the last transactions on power loss, WAL or not.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            sqlfuncs.register(dbapi_conn)

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # A transaction that will write takes the write lock first ("immediate"): two
            # that both read, then both try to write, would deadlock instead of waiting.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("immediate") else "BEGIN")

        return engine
    return sa.create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


def prepare(engine: Engine) -> None:
    """Create the tables, or bring an older ledger's up to date."""
    postgres = is_postgres(engine)
    kinds = {
        "serial": "SERIAL" if postgres else "INTEGER",
        "digest": "NUMERIC(78, 0)" if postgres else "TEXT",
        "number": "NUMERIC" if postgres else "TEXT",
        "collate": 'COLLATE "C"' if postgres else "",
    }
    with engine.connect() as conn, conn.execution_options(immediate=True).begin():
        if postgres:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
        old = _old_table(conn)
        if old:
            conn.exec_driver_sql("ALTER TABLE measurements RENAME TO measurements_v1")
            for name in ("ix_measurements_instant", "ix_measurements_lookup"):
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
            if not postgres:
                conn.exec_driver_sql("DROP TRIGGER IF EXISTS measurements_ts_ms")
                conn.exec_driver_sql("DROP TRIGGER IF EXISTS measurements_content_stale")
        for statement in _COMMON + (_POSTGRES if postgres else _SQLITE):
            conn.exec_driver_sql(statement.format(**kinds))
        if (
            postgres
            and not conn.exec_driver_sql(
                "SELECT 1 FROM pg_trigger WHERE tgname = 'measurements_changed' AND tgrelid = 'measurements'::regclass"
            ).first()
        ):
            conn.exec_driver_sql(_POSTGRES_TRIGGER)
        prepare_outbox(conn)  # notification events and their webhook deliveries (..signals)
        prepare_meters(conn)  # m3ter's Meter configuration (.metersapi)
        if old or _has_table(conn, "measurements_v1"):
            migrate(conn, postgres)


def _has_table(conn: sa.Connection, name: str) -> bool:
    return sa.inspect(conn).has_table(name)


def _old_table(conn: sa.Connection) -> bool:
    """Whether ``measurements`` is an older ledger's (a JSON ``body`` per row)."""
    if not _has_table(conn, "measurements"):
        return False
    return "body" in {c["name"] for c in sa.inspect(conn).get_columns("measurements")}
