"""Usage answers from the hourly rollups: a query's cost grows with the (account, hour)
rollup rows of its period, not with the measurements stored.

A period ``[from, to)`` is split into the whole UTC hours it covers, answered by SQL over
the rollups (:mod:`.rollups`), grouped by series and bucket, and the parts of an hour at
either edge, folded from the measurements of those parts (at most two hours per account).
Both are folded exactly (:class:`.queries.Fold`) into the same groups.

Measurements answer the whole query instead where a rollup cannot: ``groupBy`` (rollups
are per account, not per value of every field), a field seen in metadata, or in a segment
and a numeric category of one measurement, UNIQUE of a number field, a meter with a
measurement stored whole (:mod:`.codec`), or a period shorter than its edges. Those are
folded from decoded measurements: exact, and linear in what the period holds.

Corrections (:mod:`.corrections`): the usage rollups of an hour hold only the rows that
count (a reversal and what it reverses are voided, and the hour's rollups rebuilt);
``hours`` counts every stored row, so COUNT from it subtracts the hour's ``voids``, and
rows read from measurements leave out the uids ``voids`` names for their hours.

SQLite sums and compares its exact text numbers with :mod:`.sqlfuncs`; PostgreSQL with
NUMERIC.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from ..instants import DAY_MS, HOUR_MS, month_start_ms
from . import corrections
from .codec import BOTH, IRREGULAR, META, NUM, STR
from .queries import NUMERIC_AGGREGATIONS, Fold, Plan, answer, bucketer, fold_rows
from .sqlfuncs import number

_DAY_SHIFT = 24 * 10**9  # hours added before dividing by 24, so a day number is a floor for any year
_ALL = 2**40  # hours: far past any instant the ledger takes


class Answers:
    """One usage query, answered on a DBAPI cursor of a :class:`.store.Ledger`."""

    def __init__(self, ledger: Any, cur: Any, org: str, plan: Plan) -> None:
        self.ledger = ledger
        self.cur = cur
        self.org = org
        self.plan = plan
        self.q = plan.query
        self.mark = ledger.mark
        self.postgres = ledger.postgres
        self.groups: dict[tuple[Any, ...], Fold] = {}

    def rows(self) -> list[dict[str, Any]]:
        q, plan = self.q, self.plan
        series = self.ledger.series(self.cur, self.org, q.meter, q.account)
        if not series:
            return []
        sources = self._sources()
        lo, hi = plan.start_ms, plan.end_ms
        first = -_ALL if lo is None else -(-lo // HOUR_MS)
        last = _ALL if hi is None else hi // HOUR_MS
        if sources is None or first >= last:
            fold_rows(self._live(series, lo, hi), plan, self.groups)
            return answer(self.groups, plan)
        self.series = series
        for start, end, unit, bucket_ms in self._ranges(first, last):
            for source in sources:
                self._from_rollup(source, start, end, unit, bucket_ms)
        edges = [(lo, first * HOUR_MS)] if lo is not None and lo < first * HOUR_MS else []
        edges += [(last * HOUR_MS, hi)] if hi is not None and last * HOUR_MS < hi else []
        if q.aggregation == "UNIQUE" and edges:
            self._edge_sets([bucketer(q.bucket)(a) for a, _ in edges], first, last)
        for a, b in edges:
            fold_rows(self._live(series, a, b), plan, self.groups)
        return answer(self.groups, plan)

    def _live(self, series: dict[int, Any], lo: int | None, hi: int | None) -> Iterable[tuple[int, dict[str, Any]]]:
        """(ts_ms, measurement) of the rows in ``[lo, hi)`` that count: those a stored
        reversal voids are left out (:mod:`.corrections`; ``voids`` is read for the hours
        of the period only, and is empty but for corrections)."""
        q = self.q
        first = -_ALL if lo is None else lo // HOUR_MS
        end = _ALL if hi is None else -(-hi // HOUR_MS)
        void = corrections.voided(self.cur, self.mark, list(series), first, end)
        rows = self.ledger.decoded(self.cur, self.org, q.meter, q.account, lo, hi)
        return rows if not void else ((ms, m) for ms, m in rows if m["uid"] not in void)

    # -- which rollups answer -----------------------------------------------------------

    def _sources(self) -> list[str] | None:
        """The rollup tables that answer the query, or None when measurements must."""
        q = self.q
        if q.group_by:
            return None
        self.cur.execute(
            f"SELECT code, flags FROM fields WHERE meter = {self.mark} AND code IN ({self.mark}, '')",  # noqa: S608
            (q.meter, q.target or ""),
        )
        flags = dict(self.cur.fetchall())
        if flags.get("", 0) & IRREGULAR:
            return None
        if q.aggregation == "COUNT" and not q.target:
            return ["hours"]
        if q.aggregation in NUMERIC_AGGREGATIONS:
            return ["num"]
        seen = flags.get(q.target, 0)
        if seen & (META | BOTH) or (q.aggregation == "UNIQUE" and seen & NUM):
            return None
        return [name for name, flag in (("num", NUM), ("str", STR)) if seen & flag]

    def _ranges(self, first: int, last: int) -> Iterator[tuple[int, int, str, Any]]:
        """(first hour, end hour, SQL unit of a bucket, unit -> bucket start ms) covering
        [first, last): one range, or one per calendar month for monthly buckets."""
        bucket = self.q.bucket
        if bucket == "hour":
            yield first, last, "hour", lambda u: u * HOUR_MS
        elif bucket == "day":
            yield first, last, f"(hour + {_DAY_SHIFT}) / 24", lambda u: (u - _DAY_SHIFT // 24) * DAY_MS
        elif bucket is None:
            yield first, last, "0", lambda u: 0
        else:
            if first == -_ALL or last == _ALL:  # open-ended: only the months that hold rollups
                first, last = self._held_hours(first, last)
            start = first
            while start < last:
                month = month_start_ms(start * HOUR_MS)
                end = min(last, -(-_next_month(month) // HOUR_MS))
                yield start, end, "0", lambda u, m=month: m
                start = end

    def _held_hours(self, first: int, last: int) -> tuple[int, int]:
        marks = ", ".join([self.mark] * len(self.series))
        self.cur.execute(
            f"SELECT min(hour), max(hour) FROM hours WHERE series IN ({marks})"  # noqa: S608 - marks only
            f" AND hour >= {self.mark} AND hour < {self.mark}",
            (*self.series, first, last),
        )
        low, high = self.cur.fetchone()
        return (0, 0) if low is None else (int(low), int(high) + 1)

    # -- reading rollups ------------------------------------------------------------------

    def _select(self, table: str, columns: str, start: int, end: int, unit: str, extra: str = "") -> list[Any]:
        marks = ", ".join([self.mark] * len(self.series))
        where = f"series IN ({marks}) AND hour >= {self.mark} AND hour < {self.mark}"
        params: list[Any] = [*self.series, start, end]
        if table not in ("hours", "voids"):
            where += f" AND code = {self.mark}"
            params.append(self.q.target)
        self.cur.execute(f"SELECT series, {unit} AS unit, {columns} FROM {table} WHERE {where} {extra}", params)  # noqa: S608 - fixed text
        return list(self.cur.fetchall())

    def _fold(self, series: int, unit: int, bucket_ms: Any) -> Fold:
        key = (self.series[series][1], bucket_ms(unit))
        found = self.groups.get(key)
        if found is None:
            found = self.groups[key] = Fold(self.q.aggregation)
        return found

    def _from_rollup(self, source: str, start: int, end: int, unit: str, bucket_ms: Any) -> None:
        agg, pg = self.q.aggregation, self.postgres
        group = "GROUP BY series, unit"
        if source == "hours":  # every stored row, less those voided by a correction
            counts = {(s, u): int(n) for s, u, n in self._select("hours", "sum(count)", start, end, unit, group)}
            for s, u, n in self._select("voids", "count(*)", start, end, unit, group):
                counts[(s, u)] = counts.get((s, u), 0) - int(n)
            for (s, u), n in counts.items():
                if n > 0:
                    self._fold(s, u, bucket_ms).merge(n)
        elif agg == "LATEST":
            table = "num_rollup" if source == "num" else "str_rollup"
            value = "latest" if source == "num" else "value"
            for s, u, n, ms, uid, v in self._select(table, f"count, latest_ms, latest_uid, {value}", start, end, unit):
                v = _exact(v) if source == "num" else v
                self._fold(s, u, bucket_ms).merge_latest(int(n), v, int(ms), uid)
        elif agg == "UNIQUE":
            for s, u, n in self._select("str_rollup", "count(DISTINCT value)", start, end, unit, group):
                fold = self._fold(s, u, bucket_ms)
                fold.count += 1
                fold.unique_counted += int(n)
        elif agg == "COUNT":
            table = "num_rollup" if source == "num" else "str_rollup"
            for s, u, n in self._select(table, "sum(count)", start, end, unit, group):
                self._fold(s, u, bucket_ms).merge(int(n))
        else:
            total = "sum(total)" if pg else "mk_sum(total)"
            low = "min(lo)" if pg else "mk_min(lo)"
            high = "max(hi)" if pg else "mk_max(hi)"
            columns = f"sum(count), {total if agg in ('SUM', 'MEAN') else 'NULL'}, "
            columns += f"{low if agg == 'MIN' else 'NULL'}, {high if agg == 'MAX' else 'NULL'}"
            for s, u, n, t, a, b in self._select("num_rollup", columns, start, end, unit, group):
                self._fold(s, u, bucket_ms).merge(int(n), _exact(t), _exact(a), _exact(b))

    def _edge_sets(self, buckets: list[int], first: int, last: int) -> None:
        """UNIQUE: in the buckets a period's edge falls in, the distinct values themselves
        (the edge's measurements add to them), instead of their count."""
        for bucket_start in set(buckets):
            start, end = self._hours_of(bucket_start, first, last)
            if start >= end:
                continue
            for fold in [f for (_, b), f in self.groups.items() if b == bucket_start]:
                fold.unique_counted = 0
            for s, _u, value in self._select("str_rollup", "value", start, end, "0", "GROUP BY series, value"):
                fold = self._fold(s, 0, lambda _u, b=bucket_start: b)
                fold.unique.add(value)

    def _hours_of(self, bucket_start: int, first: int, last: int) -> tuple[int, int]:
        """The rollup hours of the bucket that starts at ``bucket_start`` (ms)."""
        bucket = self.q.bucket
        if bucket is None:
            return first, last
        length = {"hour": HOUR_MS, "day": DAY_MS}.get(bucket)
        end_ms = bucket_start + length if length else _next_month(bucket_start)
        return max(first, bucket_start // HOUR_MS), min(last, end_ms // HOUR_MS)


def _next_month(month_ms: int) -> int:
    return month_start_ms(month_ms + 32 * DAY_MS)


def _exact(value: Any) -> Any:
    """A rollup number as an exact int or Decimal (SQLite keeps them as text)."""
    if value is None or type(value) is int or isinstance(value, Decimal):
        return value
    return number(value)
