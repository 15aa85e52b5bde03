"""The ledger's storage: measurements keyed by (organisation, uid).

SQLite (WAL, synchronous=FULL) or PostgreSQL (tables, layout and migration in
:mod:`.schema`). A measurement is stored once per uid, and the first content stored for a
uid stands:

- re-sending it with the same content is acknowledged and ignored (a duplicate), so no
  total ever changes on a retry;
- re-sending it with different content is acknowledged too (idempotency holds: the sender
  must not retry it forever), stored nowhere but in ``conflicts``, counted in the answer
  and listed by :meth:`Ledger.conflicts`. Inside one request the first occurrence of a uid
  is the one that can be stored; a later one is a duplicate or a conflict of it.

Measurements are stored compactly (:mod:`.codec`) by :mod:`.ingest`, which keeps the
hourly rollups (:mod:`.rollups`) in the same transaction. Usage queries read the rollups
(:mod:`.answers`); reading measurements themselves (:meth:`Ledger.rows`, :meth:`get`,
reconciliation's listings) decodes them exactly as they were stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..instants import iso
from .answers import Answers
from .codec import decode, uid_text
from .corrections import Refusal
from .ingest import Row, Writer, partition_sql
from .queries import UsageQuery, period
from .schema import LOCK_KEY, is_postgres, make_engine, prepare


@dataclass(frozen=True)
class Ingested:
    """What one ingest did with each measurement it was given: stored (``accepted``),
    already stored with the same content (``duplicates``), or already stored with
    different content (``conflicts``, their uids in ``conflicting_uids``)."""

    accepted: int
    duplicates: int
    conflicts: int = 0
    conflicting_uids: tuple[str, ...] = ()
    #: measurements refused one by one (a reversal that does not match what it reverses),
    #: by index in the batch; the rest of the batch was stored
    refused: tuple[Refusal, ...] = ()

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
        if self.refused:
            text += (
                f", refused {len(self.refused)} ({self.refused[0].message}{', ...' if len(self.refused) > 1 else ''})"
            )
        return text


class Ledger:
    """Measurements by uid, conflicts, and usage answers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        prepare(self.engine)
        self.postgres = is_postgres(self.engine)
        self.mark = "%s" if self.postgres else "?"
        self.writer = Writer(self.postgres)
        self._lock = threading.Lock()  # one ingest at a time per process: the writer's caches
        #: called with (org, rows) after a batch that stored something has committed
        #: (:mod:`.thresholds`); None, the default, costs ingest one test
        self.watch: Callable[[str, list[Row]], None] | None = None

    def close(self) -> None:
        self.engine.dispose()

    def connection(self) -> Any:
        """A pooled DBAPI connection (close it to give it back); SQLite's is in autocommit
        mode: ``BEGIN`` where a transaction is wanted."""
        return self.engine.raw_connection()

    def ingest(self, org: str, records: Any) -> Ingested:
        """Store measurements validated by :func:`meterkit._model.validate_wire` (or sent by an
        agent that validated them under the same catalog). Atomic per call. Raises
        ValueError for a record whose ``ts`` is not a time."""
        writer = self.writer
        rows = writer.split(records)
        if not rows:
            return Ingested(0, 0)
        with self._lock:
            months = writer.months_of(rows)
            if months:
                _partitions(self, months)
            conn = self.connection()
            try:
                cur = conn.cursor()
                if not self.postgres:
                    cur.execute("BEGIN IMMEDIATE")
                outcome = writer.write(cur, org, rows)
                conn.commit()
                writer.committed()
            except BaseException:
                conn.rollback()
                writer.rolled_back()
                raise
            finally:
                conn.close()
        if self.watch is not None and outcome.new:
            self.watch(org, rows)  # after the commit, outside the lock: see .thresholds for why
        uids = tuple(dict.fromkeys(uid for uid, *_ in outcome.clashes))
        return Ingested(outcome.new, outcome.duplicates, len(outcome.clashes), uids, tuple(outcome.refused))

    # -- reading ---------------------------------------------------------------------------

    def org_id(self, cur: Any, org: str) -> int | None:
        cur.execute(f"SELECT id FROM orgs WHERE org = {self.mark}", (org,))  # noqa: S608 - a mark
        found = cur.fetchone()
        return None if found is None else int(found[0])

    def series(self, cur: Any, org: str, meter: str | None, account: str | None) -> dict[int, tuple[str, str]]:
        """series id -> (meter, account), for the filters."""
        sql, params = f"SELECT id, meter, account FROM series WHERE org = {self.mark}", [org]  # noqa: S608 - marks
        for column, value in (("meter", meter), ("account", account)):
            if value is not None:
                sql += f" AND {column} = {self.mark}"
                params.append(value)
        cur.execute(sql, params)
        return {int(i): (m, a) for i, m, a in cur.fetchall()}

    def raw(
        self, cur: Any, series: dict[int, tuple[str, str]], lo: int | None, hi: int | None
    ) -> Iterator[tuple[str, int, dict[str, Any] | None, tuple[Any, ...]]]:
        """(uid, ts_ms, None, stored parts) of each stored row of these series in [lo, hi),
        a series at a time, by the (series, ts_ms) index."""
        lo = -(2**62) if lo is None else lo
        hi = 2**62 if hi is None else hi
        sql = (
            "SELECT uid, ts_ms, shape, nums, extra FROM measurements"  # noqa: S608 - marks only
            f" WHERE series = {self.mark} AND ts_ms >= {self.mark} AND ts_ms < {self.mark}"
        )
        for sid, (meter, account) in sorted(series.items()):
            cur.execute(sql, (sid, lo, hi))
            while batch := cur.fetchmany(5000):
                for uid, ms, shape, nums, extra in batch:
                    yield uid_text(uid), ms, None, (meter, account, shape, nums, extra)

    def decoded(
        self, cur: Any, org: str, meter: str | None, account: str | None, lo: int | None, hi: int | None
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """(ts_ms, measurement) of the stored measurements matching the filters."""
        shape_of = self.writer.shape
        for uid, ms, _, (m, a, shape, nums, extra) in self.raw(cur, self.series(cur, org, meter, account), lo, hi):
            yield ms, decode(uid, m, a, ms, shape_of(cur, shape), nums, extra)

    def conflicts(self, org: str, uid: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Re-sends of a stored uid with different content, oldest first: each as its uid,
        the digest of the content that stands (``first_hash``), the refused content
        (``other``, its digest ``other_hash``) and when it was first seen (``seen_at``)."""
        sql = f"SELECT uid, first_hash, other_hash, other_body, seen_at_ms FROM conflicts WHERE org = {self.mark}"  # noqa: S608 - marks
        params: list[Any] = [org]
        if uid is not None:
            sql += f" AND uid = {self.mark}"
            params.append(uid)
        sql += f" ORDER BY seen_at_ms, uid, other_hash LIMIT {int(limit)}"
        found = self._all(sql, params)
        return [
            {"uid": u, "first_hash": f, "other_hash": o, "other": orjson.loads(body), "seen_at": iso(seen)}
            for u, f, o, body, seen in found
        ]

    def _all(self, sql: str, params: Any) -> list[Any]:
        conn = self.connection()
        try:
            cur = conn.cursor()
            cur.execute(sql, params)
            return list(cur.fetchall())
        finally:
            conn.close()

    def orgs(self) -> list[str]:
        """Every organisation that has stored something."""
        return [org for (org,) in self._all("SELECT org FROM orgs ORDER BY org", ())]

    def count(self, org: str | None = None) -> int:
        """How many measurements are stored (from the hourly rollups: the cost of the
        hours, not of the measurements)."""
        sql = "SELECT coalesce(sum(h.count), 0) FROM hours h"
        if org is None:
            return int(self._all(sql, ())[0][0])
        sql += f" JOIN series s ON s.id = h.series WHERE s.org = {self.mark}"
        return int(self._all(sql, (org,))[0][0])

    def absent(self, org: str, meter: str) -> str | None:
        """Why a query for ``meter`` in ``org`` can find nothing at any time, if it cannot:
        the organisation has stored nothing, or nothing for that meter."""
        mark = self.mark
        if self._all(f"SELECT 1 FROM series WHERE org = {mark} AND meter = {mark} LIMIT 1", (org, meter)):  # noqa: S608
            return None
        if not self._all(f"SELECT 1 FROM series WHERE org = {mark} LIMIT 1", (org,)):  # noqa: S608
            return f"organisation {org!r} has stored nothing in this ledger"
        return f"organisation {org!r} has stored nothing for meter {meter!r}"

    def get(self, org: str, uid: str) -> dict[str, Any] | None:
        """The measurement stored for a uid, exactly as it was stored."""
        return self.get_many(org, [uid]).get(uid)

    def get_many(self, org: str, uids: list[str]) -> dict[str, dict[str, Any]]:
        conn = self.connection()
        try:
            cur = conn.cursor()
            org_id = self.org_id(cur, org)
            return {} if org_id is None else self.writer.decoded(cur, org_id, uids)
        finally:
            conn.close()

    def rows(
        self,
        org: str,
        meter: str | None = None,
        account: str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Stored measurements matching the filters, oldest first (then by uid); ``start``
        and ``end`` are instants as :mod:`.instants` accepts them, ``[start, end)``. Raises
        :class:`~.queries.QueryError` (a ValueError) for a bad bound, at the call."""
        lo, hi = period(start, end)

        def rows() -> Iterator[dict[str, Any]]:
            conn = self.connection()
            try:
                found = list(self.decoded(conn.cursor(), org, meter, account, lo, hi))
            finally:
                conn.close()
            found.sort(key=lambda t: (t[0], t[1]["uid"]))
            for _, m in found:
                yield m

        return rows()

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
        conn = self.connection()
        try:
            cur = conn.cursor()
            return [uid for uid, *_ in self.raw(cur, self.series(cur, org, meter, account), lo, hi)]
        finally:
            conn.close()

    def usage(self, org: str, q: UsageQuery) -> list[dict[str, Any]]:
        """Aggregate per account (and bucket and group fields), exactly. Raises
        :class:`~.queries.QueryError` (a ValueError) naming each problem of a bad query."""
        plan = q.checked()
        conn = self.connection()
        try:
            return Answers(self, conn.cursor(), org, plan).rows()
        finally:
            conn.close()


def _partitions(ledger: Ledger, months: set[int]) -> None:
    """PostgreSQL's monthly partitions, each created in a transaction of its own under the
    schema lock (two processes creating one month at once both succeed)."""
    for start in sorted(months):
        conn = ledger.connection()
        try:
            cur = conn.cursor()
            cur.execute(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
            cur.execute(partition_sql(start))
            conn.commit()
        finally:
            conn.close()
        ledger.writer.months.add(start)
