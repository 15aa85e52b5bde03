"""Usage queries: m3ter's aggregations (SUM, MIN, MAX, COUNT, LATEST, MEAN, UNIQUE) per
account, bucket and group fields, with ``quantityPerUnit`` and rounding.

This module checks a query and folds values exactly (:mod:`.exact`): partial aggregates of
the hourly rollups (:mod:`.answers` reads them) and, where no rollup answers (a part of an
hour at a period's edge, ``groupBy``), measurements themselves. Buckets are UTC hours,
days and calendar months of each measurement's instant. A group exists only where a value
was folded into it: MEAN, MIN and MAX never answer for nothing. LATEST is the value of the
measurement with the greatest instant, and at equal instants the greatest uid (by code
point).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from meterkit._model import NUMERIC_CATEGORIES, STRING_CATEGORIES

from ..instants import DAY_MS, HOUR_MS, InstantError, iso, month_start_ms, parse_instant
from .exact import EXACT, ROUNDINGS, Number, exact, per_unit, to_units

if TYPE_CHECKING:
    from meterkit import Catalog

AGGREGATIONS = ("SUM", "MIN", "MAX", "COUNT", "LATEST", "MEAN", "UNIQUE")
#: the aggregations of numbers (MEASURE, INCOME, COST fields)
NUMERIC_AGGREGATIONS = ("SUM", "MIN", "MAX", "MEAN")
BUCKETS = ("hour", "day", "month")


class QueryError(ValueError):
    """A query the ledger refuses; ``problems`` names each thing wrong with it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class UsageQuery:
    meter: str
    account: str | None = None
    start: str | None = None  # inclusive; an instant as .instants accepts it
    end: str | None = None  # exclusive
    aggregation: str = "SUM"
    target: str | None = None  # field code; optional for COUNT
    bucket: str | None = None  # hour | day | month
    group_by: Sequence[str] = field(default_factory=tuple)
    quantity_per_unit: Decimal | int | float | str = 1  # text is read as a decimal
    rounding: str = "NONE"

    def checked(self) -> Plan:
        """The query with its period as instants and its unit as a decimal. Raises
        :class:`QueryError` naming every problem at once."""
        out = []
        if self.aggregation not in AGGREGATIONS:
            out.append(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r:.40}")
        if self.aggregation != "COUNT" and not self.target:
            out.append(f"{self.aggregation:.40} needs a target field")
        if self.bucket is not None and self.bucket not in BUCKETS:
            out.append(f"bucket must be one of {', '.join(BUCKETS)}, got {self.bucket!r:.40}")
        if self.rounding not in ROUNDINGS:
            out.append(f"rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r:.40}")
        unit = Decimal(1)
        start_ms = end_ms = None
        try:
            unit = per_unit(self.quantity_per_unit)
        except ValueError as exc:
            out.append(str(exc))
        try:
            start_ms, end_ms = period(self.start, self.end)
        except QueryError as exc:
            out.extend(exc.problems)
        if out:
            raise QueryError(out)
        return Plan(self, start_ms, end_ms, unit)


@dataclass(frozen=True)
class Plan:
    """A checked query: its period ``[start_ms, end_ms)`` in UTC milliseconds (None: open)."""

    query: UsageQuery
    start_ms: int | None
    end_ms: int | None
    unit: Decimal


def period(
    start: str | None, end: str | None, names: tuple[str, str] = ("from", "to")
) -> tuple[int | None, int | None]:
    """``from`` and ``to`` as whole UTC milliseconds (see :mod:`.instants`). Raises
    :class:`QueryError` naming each bad bound (by ``names``), or an empty period."""
    bounds: list[int | None] = []
    problems = []
    for text, name in zip((start, end), names, strict=True):
        try:
            bounds.append(None if text is None else parse_instant(text, name))
        except InstantError as exc:
            problems.append(str(exc))
    if problems:
        raise QueryError(problems)
    lo, hi = bounds
    if lo is not None and hi is not None and lo >= hi:
        raise QueryError([f"empty period: {names[0]} {start} is not before {names[1]} {end}"])
    return (None if lo is None else -(-lo // 1_000_000)), (None if hi is None else -(-hi // 1_000_000))


def catalog_problems(q: UsageQuery, catalog: Catalog) -> list[str]:
    """What a query names that the catalog does not have: its meter, its field, a groupBy
    field, or a field of the wrong kind for its aggregation."""
    meter = catalog.meters.get(q.meter)
    if meter is None:
        return [f"meter {q.meter!r:.90} is not in the catalog {catalog.source}"]
    out = []
    for name, code in (("field", q.target), *(("groupBy", g) for g in q.group_by)):
        if code is None:
            continue
        category = meter.wire_categories.get(code)
        if category is None:
            out.append(f"{name}: meter {q.meter!r} has no field {code!r:.90}")
        elif name == "field" and q.aggregation in NUMERIC_AGGREGATIONS and category not in NUMERIC_CATEGORIES:
            out.append(
                f"field: {code!r} is a {category.upper()} field of meter {q.meter!r};"
                f" {q.aggregation} needs a MEASURE, INCOME or COST field"
            )
    return out


class Fold:
    """Folds one group's values for one aggregation, exactly."""

    __slots__ = (
        "aggregation",
        "count",
        "decimals",
        "high",
        "ints",
        "latest",
        "latest_ms",
        "latest_uid",
        "low",
        "unique",
        "unique_counted",
    )

    def __init__(self, aggregation: str) -> None:
        self.aggregation = aggregation
        self.count = 0
        self.ints = 0  # integers sum as integers: exact and fast
        self.decimals = Decimal(0)  # floats, as the decimals they were written as
        self.low: Number | None = None
        self.high: Number | None = None
        self.latest: Any = None
        self.latest_ms = 0
        self.latest_uid = ""
        self.unique: set[Any] = set()
        self.unique_counted = 0  # distinct values counted in SQL, for buckets whose sets are not read

    def add(self, value: Any, ts_ms: int, uid: str) -> None:
        self.count += 1
        aggregation = self.aggregation
        if aggregation == "COUNT":
            return
        if aggregation == "UNIQUE":
            self.unique.add(value)
        elif aggregation == "LATEST":
            if self.count == 1 or (ts_ms, uid) > (self.latest_ms, self.latest_uid):  # ties: the greater uid
                self.latest, self.latest_ms, self.latest_uid = value, ts_ms, uid
        elif aggregation in ("SUM", "MEAN"):
            if type(value) is int:
                self.ints += value
            else:
                self.decimals = EXACT.add(self.decimals, Decimal(repr(value)))
        else:
            number = exact(value)
            if self.low is None or number < self.low:
                self.low = number
            if self.high is None or number > self.high:
                self.high = number

    def merge(
        self, count: int, total: Number | None = None, low: Number | None = None, high: Number | None = None
    ) -> None:
        """Add a rollup's partial aggregate (exact numbers) of ``count`` values."""
        self.count += count
        if total is not None:
            if type(total) is int:
                self.ints += total
            else:
                self.decimals = EXACT.add(self.decimals, total)
        if low is not None and (self.low is None or low < self.low):
            self.low = low
        if high is not None and (self.high is None or high > self.high):
            self.high = high

    def merge_latest(self, count: int, value: Any, ts_ms: int, uid: str) -> None:
        first = self.count == 0
        self.count += count
        if first or (ts_ms, uid) > (self.latest_ms, self.latest_uid):
            self.latest, self.latest_ms, self.latest_uid = value, ts_ms, uid

    def result(self) -> Fraction | str:
        """The exact result, or a LATEST that is a string."""
        aggregation = self.aggregation
        if aggregation == "COUNT":
            return Fraction(self.count)
        if aggregation == "UNIQUE":
            return Fraction(len(self.unique) + self.unique_counted)
        if aggregation in ("SUM", "MEAN"):
            total = Fraction(self.ints) + Fraction(self.decimals)
            return total if aggregation == "SUM" else total / self.count
        chosen = {"MIN": self.low, "MAX": self.high}.get(aggregation, self.latest)
        if isinstance(chosen, str):
            return chosen
        return Fraction(exact(chosen))


def aggregate(rows: Iterable[tuple[int, dict[str, Any]]], plan: Plan) -> list[dict[str, Any]]:
    """Fold the ``(ts_ms, measurement)`` rows a query selected into its answer rows,
    sorted by account, bucket and group values. Values are ``int``, ``Decimal`` (exact) or,
    for LATEST of a string field, ``str``."""
    groups: dict[tuple[Any, ...], Fold] = {}
    fold_rows(rows, plan, groups)
    return answer(groups, plan)


def fold_rows(rows: Iterable[tuple[int, dict[str, Any]]], plan: Plan, groups: dict[tuple[Any, ...], Fold]) -> None:
    """Fold measurements into ``groups``, keyed (account, bucket start ms, *group values)."""
    q = plan.query
    numeric = q.aggregation in NUMERIC_AGGREGATIONS
    bucket_of = bucketer(q.bucket)
    for ts_ms, m in rows:
        value: Any = 1
        if q.target:
            value = _find(m, q.target, numeric)
            if value is None or (numeric and (type(value) is not int and type(value) is not float)):
                continue
        key = (m["account"], bucket_of(ts_ms), *(_find(m, g, numeric=False) for g in q.group_by))
        fold = groups.get(key)
        if fold is None:
            fold = groups[key] = Fold(q.aggregation)
        fold.add(value, ts_ms, m["uid"])


def answer(groups: dict[tuple[Any, ...], Fold], plan: Plan) -> list[dict[str, Any]]:
    """The answer rows of folded groups, sorted by account, bucket and group values."""
    q = plan.query
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], *("" if v is None else str(v) for v in k[2:]))):
        row: dict[str, Any] = {"meter": q.meter, "account": key[0]}
        if q.bucket:
            row["bucket"] = iso(key[1])
        for name, group_value in zip(q.group_by, key[2:], strict=True):
            row[name] = group_value
        result = groups[key].result()
        row["value"] = result if isinstance(result, str) else to_units(result, plan.unit, q.rounding)
        out.append(row)
    return out


def bucketer(bucket: str | None) -> Callable[[int], int]:
    if bucket == "hour":
        return lambda ms: ms - ms % HOUR_MS
    if bucket == "day":
        return lambda ms: ms - ms % DAY_MS
    if bucket == "month":
        months: dict[int, int] = {}  # day number -> the month's first millisecond

        def month(ms: int) -> int:
            day = ms // DAY_MS
            start = months.get(day)
            if start is None:
                start = months[day] = month_start_ms(ms)
            return start

        return month
    return lambda ms: 0


def _find(m: dict[str, Any], code: str, numeric: bool) -> Any:
    for category in NUMERIC_CATEGORIES if numeric else (*STRING_CATEGORIES, *NUMERIC_CATEGORIES):
        values = m.get(category)
        if values and code in values:
            return values[code]
    return None
