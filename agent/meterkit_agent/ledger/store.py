"""The ledger's storage: measurements keyed by (organisation, uid).

SQLAlchemy Core over SQLite (WAL) or PostgreSQL (tables and migration in :mod:`.schema`).
A measurement is stored once per uid, and the first content stored for a uid stands:

- re-sending it with the same content is acknowledged and ignored (a duplicate), so no
  total ever changes on a retry;
- re-sending it with different content is acknowledged too (idempotency holds: the sender
  must not retry it forever), stored nowhere but in ``conflicts``, counted in the answer
  and listed by :meth:`Ledger.conflicts`. Inside one request the first occurrence of a uid
  is the one that can be stored; a later one is a duplicate or a conflict of it.

Usage queries stream the rows of a period, selected by instant (``ts_ms``) on an index of
org, meter, account and ``ts_ms``, into :mod:`.queries`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meterkit._model import content_hash
from meterkit._timefmt import wire_ts_ns

from .instants import iso
from .queries import UsageQuery, aggregate, period
from .schema import conflicts, make_engine, measurements, prepare

_IN_CHUNK = 500  # uids per IN (...) list: well under every SQLite build's variable limit


class _Row(NamedTuple):
    """A measurements row, in the insert statement's column order."""

    org: str
    uid: str
    meter: str
    account: str
    ts: str
    ts_ms: int
    digest: str
    body: str


@dataclass(frozen=True)
class Ingested:
    """What one ingest did with each measurement it was given: stored (``accepted``),
    already stored with the same content (``duplicates``), or already stored with
    different content (``conflicts``, their uids in ``conflicting_uids``)."""

    accepted: int
    duplicates: int
    conflicts: int = 0
    conflicting_uids: tuple[str, ...] = ()

    def answer(self) -> dict[str, Any]:
        """The counts as the ingest API answers them, beside m3ter's ``result``."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "conflictingUids": list(self.conflicting_uids),
        }

    def summary(self) -> str:
        text = f"stored {self.accepted}, already stored {self.duplicates}"
        if self.conflicts:
            shown = ", ".join(self.conflicting_uids[:5]) + (", ..." if len(self.conflicting_uids) > 5 else "")
            text += f", conflicting re-sends {self.conflicts} (the first stored stands: {shown})"
        return text


class Ledger:
    """Measurements by uid, conflicts, and usage answers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        prepare(self.engine)
        # Fixed text; only the driver's placeholder style differs. Values are always bound.
        postgres = self.engine.dialect.name == "postgresql"
        self._mark = "%s" if postgres else "?"
        self._insert_sql = (
            "INSERT INTO measurements (org, uid, meter, account, ts, ts_ms, content_hash, body)"  # noqa: S608 - no user input
            f" VALUES ({_marks(8, postgres)}) ON CONFLICT (org, uid) DO NOTHING"
        )
        self._conflict_sql = (
            "INSERT INTO conflicts (org, uid, other_hash, first_hash, other_body, seen_at_ms)"  # noqa: S608 - no user input
            f" VALUES ({_marks(6, postgres)}) ON CONFLICT (org, uid, other_hash) DO NOTHING"
        )

    def close(self) -> None:
        self.engine.dispose()

    def ingest(self, org: str, records: Iterable[dict[str, Any]]) -> Ingested:
        """Store measurements validated by :func:`meterkit._model.validate_wire` (the API and
        the ledger exporter validate them). Atomic per call. Raises ValueError for a record
        whose ``ts`` is not a time."""
        rows = []
        for r in records:
            try:
                ms = wire_ts_ns(r["ts"]) // 1_000_000
            except ValueError as exc:
                raise ValueError(f"measurement {r.get('uid')!r}: {exc}") from None
            ts = r["ts"]
            if not (len(ts) == 24 and ts[10] == "T" and ts[19] == "." and ts[23] == "Z"):
                ts = iso(ms)  # the column holds one spelling; the body keeps the sender's
            body = orjson.dumps(r).decode()
            rows.append(_Row(org, r["uid"], r["meter"], r["account"], ts, ms, content_hash(r), body))
        if not rows:
            return Ingested(0, 0)
        first: dict[str, _Row] = {}  # uid -> its first occurrence in this call: the one that may be stored
        for row in rows:
            first.setdefault(row.uid, row)
        with self.engine.begin() as conn:
            # The driver's own executemany of one prepared statement: SQLAlchemy's compiled
            # multi-row INSERT cost ~60 ms per 1,000 rows, this costs a few. Both drivers
            # report the rows actually inserted (existing uids skipped) as the summed rowcount.
            new = conn.exec_driver_sql(self._insert_sql, list(first.values())).rowcount
            if new == len(first):  # every uid was new: each stands with its first occurrence
                standing = {uid: row.digest for uid, row in first.items()}
            else:  # some were stored before (or by a concurrent request): read what stands
                standing = self._stored_hashes(conn, org, list(first))
            clashes = [row for row in rows if row.digest != standing.get(row.uid, row.digest)]
            if clashes:
                seen = time.time_ns() // 1_000_000
                params = [(org, row.uid, row.digest, standing[row.uid], row.body, seen) for row in clashes]
                conn.exec_driver_sql(self._conflict_sql, params)
        uids = tuple(dict.fromkeys(row.uid for row in clashes))
        return Ingested(new, len(rows) - new - len(clashes), len(clashes), uids)

    def _stored_hashes(self, conn: Connection, org: str, uids: list[str]) -> dict[str, str]:
        """uid -> the content digest stored for it; computed from the body for a row written
        without one (by something other than :meth:`ingest`)."""
        out = {}
        for i in range(0, len(uids), _IN_CHUNK):
            chunk = uids[i : i + _IN_CHUNK]
            # Driver-level SQL, as for the insert: SQLAlchemy's expanding IN and row objects
            # cost three times the query itself on a request of re-sends.
            sql = (
                "SELECT uid, content_hash, CASE WHEN content_hash IS NULL THEN body END"  # noqa: S608 - no user input
                f" FROM measurements WHERE org = {self._mark} AND uid IN ({', '.join([self._mark] * len(chunk))})"
            )
            for uid, digest, body in conn.exec_driver_sql(sql, (org, *chunk)).fetchall():
                out[uid] = digest if digest is not None else content_hash(orjson.loads(body))
        return out

    def conflicts(self, org: str, uid: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Re-sends of a stored uid with different content, oldest first: each as its uid,
        the digest of the content that stands (``first_hash``), the refused content
        (``other``, its digest ``other_hash``) and when it was first seen (``seen_at``)."""
        c = conflicts.c
        query = sa.select(c.uid, c.first_hash, c.other_hash, c.other_body, c.seen_at_ms).where(c.org == org)
        if uid is not None:
            query = query.where(c.uid == uid)
        with self.engine.connect() as conn:
            found = conn.execute(query.order_by(c.seen_at_ms, c.uid, c.other_hash).limit(limit)).all()
        return [
            {"uid": u, "first_hash": f, "other_hash": o, "other": orjson.loads(body), "seen_at": iso(seen)}
            for u, f, o, body, seen in found
        ]

    def count(self, org: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(measurements)
        if org is not None:
            query = query.where(measurements.c.org == org)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def absent(self, org: str, meter: str) -> str | None:
        """Why a query for ``meter`` in ``org`` can find nothing at any time, if it cannot:
        the organisation has stored nothing, or nothing for that meter."""
        c = measurements.c
        with self.engine.connect() as conn:
            if conn.execute(sa.select(c.uid).where(c.org == org, c.meter == meter).limit(1)).first() is not None:
                return None
            if conn.execute(sa.select(c.uid).where(c.org == org).limit(1)).first() is None:
                return f"organisation {org!r} has stored nothing in this ledger"
        return f"organisation {org!r} has stored nothing for meter {meter!r}"

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
    ) -> Iterator[dict[str, Any]]:
        """Stored measurements matching the filters, oldest first; ``start`` and ``end`` are
        instants as :mod:`.instants` accepts them, ``[start, end)``. Raises
        :class:`~.queries.QueryError` (a ValueError) for a bad bound, at the call."""
        lo, hi = period(start, end)
        return (m for _, m in self._stream(org, meter, account, lo, hi))

    def uids(
        self,
        org: str,
        meter: str | None = None,
        account: str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> list[str]:
        """The uids stored for the filters, for reconciliation and repair. Raises
        :class:`~.queries.QueryError` for a bad bound."""
        lo, hi = period(start, end)
        query = _filtered(sa.select(measurements.c.uid), org, meter, account, lo, hi)
        with self.engine.connect() as conn:
            return [uid for (uid,) in conn.execute(query)]

    def usage(self, org: str, q: UsageQuery) -> list[dict[str, Any]]:
        """Aggregate per account (and bucket and group fields), exactly. Raises
        :class:`~.queries.QueryError` (a ValueError) naming each problem of a bad query."""
        plan = q.checked()
        return aggregate(self._stream(org, q.meter, q.account, plan.start_ms, plan.end_ms), plan)

    def _stream(
        self, org: str, meter: str | None, account: str | None, lo: int | None, hi: int | None
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        c = measurements.c
        query = _filtered(sa.select(c.ts_ms, c.body), org, meter, account, lo, hi).order_by(c.ts_ms, c.uid)
        with self.engine.connect() as conn:
            for ts_ms, body in conn.execution_options(stream_results=True, yield_per=5000).execute(query):
                yield ts_ms, orjson.loads(body)


def _filtered(
    query: sa.Select[Any], org: str, meter: str | None, account: str | None, lo: int | None, hi: int | None
) -> sa.Select[Any]:
    """The ledger's one filter: organisation, then meter, account and [lo, hi) in UTC ms."""
    c = measurements.c
    query = query.where(c.org == org, c.ts_ms.is_not(None))
    if meter is not None:
        query = query.where(c.meter == meter)
    if account is not None:
        query = query.where(c.account == account)
    if lo is not None:
        query = query.where(c.ts_ms >= lo)
    if hi is not None:
        query = query.where(c.ts_ms < hi)
    return query


def _marks(n: int, postgres: bool) -> str:
    return ", ".join(["%s" if postgres else "?"] * n)
