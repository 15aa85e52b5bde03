"""Usage queries: m3ter's aggregations (SUM, MIN, MAX, COUNT, LATEST, MEAN, UNIQUE) per
account, bucket and group fields, with ``quantityPerUnit`` and rounding.

The store streams the rows a query selects; this module folds them in Python, which keeps
the SQL identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

from meterkit._model import NUMERIC_CATEGORIES, STRING_CATEGORIES

AGGREGATIONS = ("SUM", "MIN", "MAX", "COUNT", "LATEST", "MEAN", "UNIQUE")
ROUNDINGS = ("NONE", "UP", "DOWN", "NEAREST")
BUCKETS = {"hour": 13, "day": 10, "month": 7}


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


def aggregate(rows: Iterable[dict[str, Any]], q: UsageQuery) -> list[dict[str, Any]]:
    """Fold the measurements a query selected into its answer rows, sorted by key."""
    cut = BUCKETS.get(q.bucket or "", 0)
    groups: dict[tuple[Any, ...], _Acc] = {}
    for m in rows:
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
        row["value"] = _json_exact(to_units(groups[key].result(q.aggregation), q.quantity_per_unit, q.rounding))
        out.append(row)
    return out


def _json_exact(value: Any) -> Any:
    """A whole number past 64 bits (a sum can get there) as its decimal digits: JSON codecs
    stop at 64 bits, and the exact figure matters more than its type."""
    if type(value) is int and not -(2**63) <= value < 2**63:
        return str(value)
    return value


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
