"""Where the ledger's data lives: the tables, the engine, and bringing an older ledger's
database up to date when it is opened.

``measurements`` holds one row per (org, uid): the measurement's wire JSON (``body``), its
time as text for display (``ts``, ISO 8601 UTC with milliseconds) and as an instant to
compare (``ts_ms``, UTC milliseconds since the epoch, indexed with org, meter and account),
and the digest of its content (``content_hash``, :func:`meterkit._model.content_hash`) that
tells an idempotent re-send from a conflicting one. ``conflicts`` keeps each different
content a stored uid was re-sent with, once per (org, uid, content).

A database made by an older ledger (no ``ts_ms``, no ``content_hash``) is migrated when it
is opened: the columns are added and filled from each row's ``ts`` and ``body``, the new
index replaces the old text one. A trigger fills ``ts_ms`` for a row written by anything
but :meth:`Ledger.ingest <.store.Ledger.ingest>` (an older ledger process still running on
the same PostgreSQL during an upgrade, a hand-written INSERT), so no stored row is ever
outside every period. Opening is idempotent and safe when several processes open one
database at once (PostgreSQL: an advisory lock; SQLite: each step tolerates a peer's).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from meterkit._model import content_hash
from meterkit._timefmt import wire_ts_ns

metadata = sa.MetaData()

measurements = sa.Table(
    "measurements",
    metadata,
    sa.Column("org", sa.String(100), primary_key=True),
    sa.Column("uid", sa.String(100), primary_key=True),
    sa.Column("meter", sa.String(80), nullable=False),
    sa.Column("account", sa.String(200), nullable=False),
    sa.Column("ts", sa.String(24), nullable=False),  # ISO 8601 UTC, ms: for display, never compared
    # Nullable only so the columns can be added to an older table; filled at ingest,
    # by the migration, and for ts_ms by a trigger.
    sa.Column("ts_ms", sa.BigInteger),  # UTC milliseconds since the epoch: what periods compare
    sa.Column("content_hash", sa.String(64)),  # sha256 hex of the body's sorted-key JSON
    sa.Column("body", sa.Text, nullable=False),  # the measurement's wire JSON
    # content_hash last: reconciliation's per-bucket digests read it from the index alone
    # (1,000,000 measurements a day: 0.7 s instead of 3.1 s).
    sa.Index("ix_measurements_instant", "org", "meter", "account", "ts_ms", "content_hash"),
)

conflicts = sa.Table(
    "conflicts",
    metadata,
    sa.Column("org", sa.String(100), primary_key=True),
    sa.Column("uid", sa.String(100), primary_key=True),
    sa.Column("other_hash", sa.String(64), primary_key=True),  # the content that was refused
    sa.Column("first_hash", sa.String(64), nullable=False),  # the content that stands
    sa.Column("other_body", sa.Text, nullable=False),
    sa.Column("seen_at_ms", sa.BigInteger, nullable=False),  # first seen, UTC ms since the epoch
)

_OLD_INDEX = "ix_measurements_lookup"  # (org, meter, account, ts): text, replaced by ts_ms
_LOCK_KEY = 0x6D6B_6C64  # "mkld": PostgreSQL advisory lock held while the schema is prepared
_PAGE = 2000


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
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            # FULL: a commit is fsynced before the ledger answers, so an acknowledged
            # measurement survives power loss (the agent never resends what was acknowledged).
            # NORMAL would lose the last transactions on power loss, WAL or not.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


def prepare(engine: Engine) -> None:
    """Create the tables, or bring an older ledger's up to date."""
    postgres = engine.dialect.name == "postgresql"
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                if postgres:
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
                metadata.create_all(conn)
                _migrate(conn, postgres)
            return
        except sa.exc.OperationalError as exc:
            # SQLite: a peer opening the same file created or altered the table between
            # our look and our change. Look again; what it did is what we wanted.
            raced = "already exists" in str(exc) or "duplicate column" in str(exc)
            if postgres or attempt == 2 or not raced:
                raise


def _migrate(conn: Connection, postgres: bool) -> None:
    present = {c["name"] for c in sa.inspect(conn).get_columns("measurements")}
    added = False
    for name, kind in (("ts_ms", "BIGINT"), ("content_hash", "VARCHAR(64)")):
        if name not in present:
            conn.exec_driver_sql(f"ALTER TABLE measurements ADD COLUMN {name} {kind}")
            added = True
    # PostgreSQL adds and fills the columns in one transaction, so a table that has them
    # was filled, and no open pays for a scan of every row. SQLite's ALTER commits on its
    # own: a migration cut short after it is finished by the next open (a scan SQLite's
    # small databases afford).
    if added or not postgres:
        _fill(conn)
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_measurements_instant ON measurements (org, meter, account, ts_ms, content_hash)"
    )
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {_OLD_INDEX}")
    if postgres:
        _postgres_trigger(conn)
    else:
        conn.exec_driver_sql(_SQLITE_TRIGGER)


def _fill(conn: Connection) -> None:
    """Give every row without them its instant and content digest, a page at a time in
    (org, uid) order. A row whose ts or body cannot be read keeps NULL (and is listed by no
    period), rather than stopping the ledger from opening."""
    c = measurements.c
    missing = sa.or_(c.ts_ms.is_(None), c.content_hash.is_(None))
    update = (
        measurements.update()
        .where(c.org == sa.bindparam("k_org"), c.uid == sa.bindparam("k_uid"))
        .values(ts_ms=sa.bindparam("v_ts_ms"), content_hash=sa.bindparam("v_hash"))
    )
    after: tuple[str, str] | None = None
    while True:
        query = sa.select(c.org, c.uid, c.ts, c.ts_ms, c.content_hash, c.body).where(missing)
        if after is not None:
            query = query.where(sa.tuple_(c.org, c.uid) > sa.tuple_(*after))
        page = conn.execute(query.order_by(c.org, c.uid).limit(_PAGE)).all()
        if not page:
            return
        changes = []
        for org, uid, ts, ts_ms, digest, body in page:
            if ts_ms is None:
                with contextlib.suppress(ValueError):
                    ts_ms = wire_ts_ns(ts) // 1_000_000
            if digest is None:
                with contextlib.suppress(orjson.JSONDecodeError):
                    digest = content_hash(orjson.loads(body))
            changes.append({"k_org": org, "k_uid": uid, "v_ts_ms": ts_ms, "v_hash": digest})
        conn.execute(update, changes)
        after = (page[-1].org, page[-1].uid)


# SQLite keeps times as whole milliseconds of a Julian day; the arithmetic below recovers
# them exactly (its error is far below half a millisecond). NULL when ts is not a time.
_SQLITE_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS measurements_ts_ms AFTER INSERT ON measurements
WHEN NEW.ts_ms IS NULL
BEGIN
    UPDATE measurements
    SET ts_ms = CAST(ROUND((julianday(NEW.ts) - 2440587.5) * 86400000.0) AS INTEGER)
    WHERE org = NEW.org AND uid = NEW.uid;
END
"""

_POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION meterkit_measurements_ts_ms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        NEW.ts_ms := floor(extract(epoch FROM NEW.ts::timestamptz) * 1000);
    EXCEPTION WHEN others THEN
        NEW.ts_ms := NULL;  -- not a time: the row is stored, in no period
    END;
    RETURN NEW;
END
$$
"""


def _postgres_trigger(conn: Connection) -> None:
    conn.exec_driver_sql(_POSTGRES_FUNCTION)
    exists = conn.exec_driver_sql(
        "SELECT 1 FROM pg_trigger WHERE tgname = 'measurements_ts_ms' AND tgrelid = 'measurements'::regclass"
    ).first()
    if exists is None:
        conn.exec_driver_sql(
            "CREATE TRIGGER measurements_ts_ms BEFORE INSERT ON measurements"
            " FOR EACH ROW WHEN (NEW.ts_ms IS NULL) EXECUTE FUNCTION meterkit_measurements_ts_ms()"
        )
