"""The ledger's storage: measurements keyed by (organisation, uid).

SQLAlchemy Core over SQLite (WAL) or PostgreSQL. A measurement is stored once per uid:
re-sending it is acknowledged and ignored, so no total ever changes on a retry. Usage
queries stream the matching rows (filtered and ordered by an index on org, meter,
account, ts) into :mod:`.queries`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .queries import UsageQuery, aggregate

metadata = sa.MetaData()

measurements = sa.Table(
    "measurements",
    metadata,
    sa.Column("org", sa.String(100), primary_key=True),
    sa.Column("uid", sa.String(100), primary_key=True),
    sa.Column("meter", sa.String(80), nullable=False),
    sa.Column("account", sa.String(200), nullable=False),
    sa.Column("ts", sa.String(24), nullable=False),  # ISO 8601 UTC, ms: sorts as time does
    sa.Column("body", sa.Text, nullable=False),  # the measurement's wire JSON
    sa.Index("ix_measurements_lookup", "org", "meter", "account", "ts"),
)


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


class Ledger:
    """Measurements by uid, and usage answers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        metadata.create_all(self.engine)
        dialect = self.engine.dialect.name
        # Fixed text; only the driver's placeholder style differs. Values are always bound.
        marks = "%s, %s, %s, %s, %s, %s" if dialect == "postgresql" else "?, ?, ?, ?, ?, ?"
        self._insert_sql = (
            "INSERT INTO measurements (org, uid, meter, account, ts, body)"  # noqa: S608 - no user input
            f" VALUES ({marks}) ON CONFLICT (org, uid) DO NOTHING"
        )

    def close(self) -> None:
        self.engine.dispose()

    def ingest(self, org: str, records: Iterable[dict[str, Any]]) -> tuple[int, int]:
        """Store validated measurements; returns (new, duplicates). Atomic per call."""
        rows = [
            {
                "org": org,
                "uid": r["uid"],
                "meter": r["meter"],
                "account": r["account"],
                "ts": r["ts"],
                "body": orjson.dumps(r).decode(),
            }
            for r in records
        ]
        if not rows:
            return 0, 0
        # The same uid twice within one request counts once.
        unique = list({row["uid"]: row for row in rows}.values())
        # The driver's own executemany of one prepared statement: SQLAlchemy's compiled
        # multi-row INSERT cost ~60 ms per 1,000 rows, this costs a few. Both drivers report
        # the rows actually inserted (conflicts skipped) as the summed rowcount.
        params = [(r["org"], r["uid"], r["meter"], r["account"], r["ts"], r["body"]) for r in unique]
        with self.engine.begin() as conn:
            result = conn.exec_driver_sql(self._insert_sql, params)
            new = result.rowcount
        return new, len(rows) - new

    def count(self, org: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(measurements)
        if org is not None:
            query = query.where(measurements.c.org == org)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def get(self, org: str, uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            body = conn.execute(
                sa.select(measurements.c.body).where(measurements.c.org == org, measurements.c.uid == uid)
            ).scalar_one_or_none()
        return orjson.loads(body) if body is not None else None

    def rows(
        self,
        org: str,
        meter: str | None = None,
        account: str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> Iterable[dict[str, Any]]:
        """Stream stored measurements matching the filters, oldest first."""
        query = _filtered(sa.select(measurements.c.body), org, meter, account, start, end)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=5000).execute(
                query.order_by(measurements.c.ts)
            )
            for (body,) in result:
                yield orjson.loads(body)

    def uids(
        self,
        org: str,
        meter: str | None = None,
        account: str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> list[str]:
        """The uids stored for the filters, for reconciliation and repair."""
        query = _filtered(sa.select(measurements.c.uid), org, meter, account, start, end)
        with self.engine.connect() as conn:
            return [uid for (uid,) in conn.execute(query)]

    def usage(self, org: str, q: UsageQuery) -> list[dict[str, Any]]:
        """Aggregate per account (and bucket and group fields). Raises ValueError on a bad query."""
        bad = q.problems()
        if bad:
            raise ValueError("; ".join(bad))
        return aggregate(self.rows(org, q.meter, q.account, q.start, q.end), q)


def _filtered(
    query: sa.Select[Any], org: str, meter: str | None, account: str | None, start: str | None, end: str | None
) -> sa.Select[Any]:
    """The ledger's one filter: organisation, then meter, account and [start, end) if given."""
    c = measurements.c
    query = query.where(c.org == org)
    if meter is not None:
        query = query.where(c.meter == meter)
    if account is not None:
        query = query.where(c.account == account)
    if start is not None:
        query = query.where(c.ts >= start)
    if end is not None:
        query = query.where(c.ts < end)
    return query
