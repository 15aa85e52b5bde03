"""Instants and calendar bill periods, in UTC milliseconds since the epoch.

Every time billing compares is an integer: a plan attachment's ``from`` and ``to``, a bill
period's bounds, the range a bill preview is asked for. Periods are half-open,
``[start, end)``, like the ledger's (:mod:`meterkit_agent.instants`), and a bound that falls between
two milliseconds is the first whole millisecond at or after it, so for a stored instant
``t``, ``t >= bound`` means the same either way.

Accepted spellings are the ledger's, parsed by the same code (:mod:`meterkit_agent.instants`):
a date and time with an explicit offset, or a date alone (midnight UTC). A time without an
offset is refused: a time zone that is a guess is a billing dispute waiting to happen.

Bill periods are calendar months, quarters (January, April, July, October) and years,
in UTC, as ``bill_period`` says. Their bounds are computed in integers for any year (no
``datetime`` range to fall out of). A bill period's start and end (the instant after it)
must both be in the years 1 to 9999, the years of the instants the ledger reads and writes:
December 9999 ends at 10000-01-01, which a bill could show as its ``to`` but no client, and
not the ledger, could read back. :func:`periods` refuses such a period with a
:class:`.BillingError` (``period_out_of_range``) naming it.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

from ..instants import DAY_MS, boundary_ms, civil_from_days, days_from_civil, iso
from .errors import BillingError

__all__ = ["BILL_PERIODS", "DAY_MS", "instant_ms", "iso", "next_start", "period_start", "periods"]

BILL_PERIODS = ("month", "quarter", "year")
_MONTHS = {"month": 1, "quarter": 3, "year": 12}
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
#: a bill period starts at or after year 1 and ends before year 10000 (four-digit years)
FIRST_MS, YEAR_10000_MS = days_from_civil(1, 1, 1) * DAY_MS, days_from_civil(10_000, 1, 1) * DAY_MS


def instant_ms(value: object) -> int:
    """The instant ``value`` spells (text, or a timezone-aware datetime or a date from a
    caller), as the first whole UTC millisecond at or after it. Raises ValueError."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{value.isoformat()} has no offset; give Z (UTC) or one like +01:00")
        delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return -(-micros // 1000)
    if isinstance(value, date):
        return (value.toordinal() - _EPOCH_ORDINAL) * DAY_MS
    return boundary_ms(value, None)


def _month_start(year: int, month: int) -> int:
    return days_from_civil(year, month, 1) * DAY_MS


def period_start(ms: int, bill_period: str) -> int:
    """The first millisecond of the ``bill_period`` (month, quarter, year) ``ms`` is in."""
    year, month, _ = civil_from_days(ms // DAY_MS)
    size = _MONTHS[bill_period]
    return _month_start(year, (month - 1) // size * size + 1)


def next_start(start: int, bill_period: str) -> int:
    """The start of the period after the one starting at ``start``."""
    year, month, _ = civil_from_days(start // DAY_MS)
    months = year * 12 + month - 1 + _MONTHS[bill_period]
    return _month_start(months // 12, months % 12 + 1)


def periods(start: int, end: int, bill_period: str) -> list[tuple[int, int]]:
    """Every ``bill_period`` that intersects ``[start, end)``, whole, in order. Raises
    :class:`.BillingError` (``period_out_of_range``) when one of them starts before year 1
    or ends in year 10000 (December 9999, or the quarter or year it ends)."""
    out = []
    lo = period_start(start, bill_period)
    while lo < end:
        hi = next_start(lo, bill_period)
        if lo < FIRST_MS or hi >= YEAR_10000_MS:
            raise BillingError(
                "period_out_of_range",
                f"the {bill_period} bill period {iso(lo)} to {iso(hi)} cannot be billed: a bill period"
                " must start and end in the years 1 to 9999 (four-digit years, as instants are written)",
            )
        out.append((lo, hi))
        lo = hi
    return out
