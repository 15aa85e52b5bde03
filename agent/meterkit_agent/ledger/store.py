"""The ledger's storage: measurements keyed by (organisation, uid), and usage queries.

SQLAlchemy Core over SQLite (WAL) or PostgreSQL. A measurement is stored once per uid:
re-sending it is acknowledged and ignored, so no total ever changes on a retry.
Aggregation streams the matching rows (filtered and ordered by an index on
org, meter, account, ts) and folds them in Python, which keeps the SQL identical on both
databases; it is fast enough for the ledger's purpose (local use, tests, small deployments).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from meterkit._model import NUMERIC_CATEGORIES, STRING_CATEGORIES

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

AGGREGATIONS = ("SUM", "MIN", "MAX", "COUNT", "LATEST", "MEAN", "UNIQUE")
ROUNDINGS = ("NONE", "UP", "DOWN", "NEAREST")
BUCKETS = {"hour": 13, "day": 10, "month": 7}


def make_engine(url: str) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql://...`` (psycopg 3)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint; safe with WAL
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


@dataclass(frozen=True)
class UsageQuery:
    meter: str
    account: str | None = None
    start: str | None = None  # inclusive, ISO 8601 UTC
    end: str | None = None  # exclusive
    aggregation: str = "SUM"
    target: str | None = None  # field code; optional for COUNT
    bucket: str | None = None  # hour | day | month
    group_by: Sequence[str] = field(default_factory=tuple)
    quantity_per_unit: float = 1.0
    rounding: str = "NONE"

    def problems(self) -> list[str]:
        out = []
        if self.aggregation not in AGGREGATIONS:
            out.append(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        if self.aggregation != "COUNT" and not self.target:
            out.append(f"{self.aggregation} needs a target field")
        if self.bucket is not None and self.bucket not in BUCKETS:
            out.append(f"bucket must be one of {', '.join(BUCKETS)}")
        if self.rounding not in ROUNDINGS:
            out.append(f"rounding must be one of {', '.join(ROUNDINGS)}")
        if not (self.quantity_per_unit > 0 and math.isfinite(self.quantity_per_unit)):
            out.append("quantityPerUnit must be a positive number")
        return out


class _Acc:
    """Folds values for one aggregation."""

    __slots__ = ("count", "latest", "latest_ts", "max", "min", "sum", "unique")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.latest: Any = None
        self.latest_ts = ""
        self.unique: set[Any] = set()

    def add(self, value: Any, ts: str) -> None:
        self.count += 1
        if isinstance(value, int | float):
            self.sum += value
            self.min = min(self.min, value)
            self.max = max(self.max, value)
        else:
            self.unique.add(value)
        if ts >= self.latest_ts:
            self.latest, self.latest_ts = value, ts

    def result(self, aggregation: str) -> Any:
        if aggregation == "COUNT":
            return self.count
        if aggregation == "UNIQUE":
            return len(self.unique)
        if aggregation == "SUM":
            return self.sum
        if aggregation == "MEAN":
            return self.sum / self.count if self.count else None
        if aggregation == "MIN":
            return self.min if self.count else None
        if aggregation == "MAX":
            return self.max if self.count else None
        return self.latest


def to_units(value: Any, per_unit: float, rounding: str) -> Any:
    """m3ter's quantityPerUnit and rounding: how many billable units a value is."""
    if value is None or not isinstance(value, int | float):
        return value
    units = Decimal(str(value)) / Decimal(str(per_unit))
    if rounding == "NONE":
        result = float(units)
    else:
        mode = {"UP": ROUND_CEILING, "DOWN": ROUND_FLOOR, "NEAREST": ROUND_HALF_UP}[rounding]
        result = float(units.quantize(Decimal(1), rounding=mode))
    return int(result) if result.is_integer() else result


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
        cut = BUCKETS.get(q.bucket or "", 0)
        groups: dict[tuple[Any, ...], _Acc] = {}
        for m in self.rows(org, q.meter, q.account, q.start, q.end):
            value: Any = 1
            if q.target:
                value = _find(m, q.target, numeric=q.aggregation not in ("UNIQUE", "COUNT", "LATEST"))
                if value is None:
                    continue
            key = (m["account"], m["ts"][:cut] if cut else None, *(_find(m, g, numeric=False) for g in q.group_by))
            acc = groups.get(key)
            if acc is None:
                acc = groups[key] = _Acc()
            acc.add(value, m["ts"])
        out = []
        for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
            row: dict[str, Any] = {"meter": q.meter, "account": key[0]}
            if cut:
                row["bucket"] = _bucket_start(key[1], q.bucket or "")
            for name, value in zip(q.group_by, key[2:], strict=True):
                row[name] = value
            row["value"] = to_units(groups[key].result(q.aggregation), q.quantity_per_unit, q.rounding)
            out.append(row)
        return out


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


def _find(m: dict[str, Any], code: str, numeric: bool) -> Any:
    for category in NUMERIC_CATEGORIES if numeric else (*STRING_CATEGORIES, *NUMERIC_CATEGORIES):
        values = m.get(category)
        if values and code in values:
            return values[code]
    return None


def _bucket_start(prefix: str, bucket: str) -> str:
    if bucket == "hour":
        return prefix + ":00:00.000Z"
    if bucket == "day":
        return prefix + "T00:00:00.000Z"
    return prefix + "-01T00:00:00.000Z"
