"""Where a bill's quantities come from: the :class:`Usage` protocol, which the ledger
answers from its SQL aggregates, and :class:`MeasurementsUsage`, the same answers computed
from measurements in memory (a reference, and what tests and offline previews use).

A bill asks for each pricing line's aggregation over a whole range, ``[start_ms,
end_ms)``, once per range: a period's UNIQUE is not the sum of its days' UNIQUEs, nor its
MAX the sum of anything, so the source must aggregate the range itself. For a line whose
tiers span the plan it asks for the range from the attachment's start to each period
bound (SUM and COUNT only, so the source may add up stored partial sums).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol

from .money import as_decimal
from .periods import instant_ms

#: where a measurement carries its fields (m3ter's ingest shape)
CATEGORIES = ("who", "what", "where", "other", "metadata", "measure", "income", "cost")


class Usage(Protocol):
    """The exact aggregate a bill prices."""

    def quantity(
        self, meter: str, field: str | None, function: str, account: str, start_ms: int, end_ms: int
    ) -> Decimal | int | None:
        """``function`` (SUM, COUNT, MAX, MIN, MEAN, LATEST, UNIQUE) of ``field`` over the
        measurements of ``meter`` for ``account`` whose instant is in ``[start_ms, end_ms)``
        (UTC milliseconds), exactly, with no ``quantityPerUnit`` applied (billing applies
        the pricing line's). COUNT and UNIQUE count measurements and distinct values;
        LATEST is the value of the latest measurement (at equal instants, the greatest
        uid). None when no measurement has the field (SUM, COUNT and UNIQUE may say 0)."""
        ...


def _value(measurement: Mapping[str, Any], field: str) -> Any:
    for category in CATEGORIES:
        values = measurement.get(category)
        if isinstance(values, Mapping) and field in values:
            return values[field]
    return None


def _exact(value: Any) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise ValueError(f"{value!r:.40} is not a number")
    # a float is the decimal it was written as (repr), as the ledger reads stored floats
    return Fraction(Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value)))


class MeasurementsUsage:
    """:class:`Usage` over measurements held in memory, in m3ter's wire shape
    (``{"uid", "meter", "account", "ts", "measure": {...}, "who": {...}, ...}``)."""

    def __init__(self, measurements: Iterable[Mapping[str, Any]]) -> None:
        self._rows = [(instant_ms(m["ts"]), m) for m in measurements]

    def quantity(
        self, meter: str, field: str | None, function: str, account: str, start_ms: int, end_ms: int
    ) -> Decimal | int | None:
        rows = [
            (ts, m)
            for ts, m in self._rows
            if m.get("meter") == meter and m.get("account") == account and start_ms <= ts < end_ms
        ]
        if field is not None:
            rows = [(ts, m) for ts, m in rows if _value(m, field) is not None]
        if function == "COUNT":
            return len(rows)
        if function == "UNIQUE":
            assert field is not None
            return len({str(_value(m, field)) for _, m in rows})
        if not rows:
            return 0 if function == "SUM" else None
        assert field is not None
        if function == "LATEST":
            _, latest = max(rows, key=lambda row: (row[0], str(row[1].get("uid", ""))))
            return as_decimal(_exact(_value(latest, field)))
        values = [_exact(_value(m, field)) for _, m in rows]
        if function == "SUM":
            return as_decimal(sum(values, Fraction(0)))
        if function == "MEAN":
            return as_decimal(sum(values, Fraction(0)) / len(values))
        if function in ("MAX", "MIN"):
            return as_decimal(max(values) if function == "MAX" else min(values))
        raise ValueError(f"unknown aggregation function {function!r:.40}")
