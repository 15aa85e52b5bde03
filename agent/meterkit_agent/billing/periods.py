"""Instants and calendar bill periods, in UTC milliseconds since the epoch.

Every time billing compares is an integer: a plan attachment's ``from`` and ``to``, a bill
period's bounds, the range a bill preview is asked for. Periods are half-open,
``[start, end)``, like the ledger's (``ledger/instants.py``), and a bound that falls between
two milliseconds is the first whole millisecond at or after it, so for a stored instant
``t``, ``t >= bound`` means the same either way.

Accepted spellings are the ledger's: a date and time with an explicit offset (``Z``,
``+01:00``, ``+0100``, ``+01``; seconds and a fraction of up to 9 digits optional), or a
date alone (midnight UTC). A time without an offset is refused: a time zone that is a
guess is a billing dispute waiting to happen. (This module does not import the ledger's,
so that the ledger can import billing without a circle; ``tests/agent/billing`` checks
both parsers agree.)

Bill periods are calendar months, quarters (January, April, July, October) and years,
in UTC, as ``bill_period`` says.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, timezone

DAY_MS = 86_400_000
BILL_PERIODS = ("month", "quarter", "year")
_MONTHS = {"month": 1, "quarter": 3, "year": 12}
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

_INSTANT = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[Tt ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?"
    r"(?P<tz>[Zz]|(?P<sign>[+-])(?P<oh>\d{2})(?::?(?P<om>\d{2}))?)?)?\Z",
    re.ASCII,
)
ACCEPTED = "an ISO 8601 date-time with an offset (2026-01-01T00:00:00Z, ...+01:00) or a date (2026-01-01)"


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
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"{value!r:.60} is not {ACCEPTED}")
    m = _INSTANT.match(value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not {ACCEPTED}")
    year, month, day = int(m["y"]), int(m["mo"]), int(m["d"])
    if not (year >= 1 and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        raise ValueError(f"{value!r} is not a date that exists")
    if m["h"] is not None and m["tz"] is None:
        raise ValueError(f"{value!r} has no offset; give Z (UTC) or one like +01:00")
    hour, minute, second = int(m["h"] or 0), int(m["mi"] or 0), int(m["s"] or 0)
    offset_h, offset_m = int(m["oh"] or 0), int(m["om"] or 0)
    if hour > 23 or minute > 59 or second > 59 or offset_h > 23 or offset_m > 59:
        raise ValueError(f"{value!r} has an hour, minute, second or offset out of range")
    offset_s = (offset_h * 3600 + offset_m * 60) * (-1 if m["sign"] == "-" else 1)
    days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s
    nanos = seconds * 1_000_000_000 + int((m["f"] or "").ljust(9, "0"))
    return -(-nanos // 1_000_000)


def iso(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` for UTC milliseconds, as the ledger writes instants."""
    days, rest = divmod(ms, DAY_MS)
    day = date.fromordinal(days + _EPOCH_ORDINAL)
    hour, rest = divmod(rest, 3_600_000)
    minute, rest = divmod(rest, 60_000)
    second, milli = divmod(rest, 1000)
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}Z"


def _month_start(year: int, month: int) -> int:
    return (date(year, month, 1).toordinal() - _EPOCH_ORDINAL) * DAY_MS


def period_start(ms: int, bill_period: str) -> int:
    """The first millisecond of the ``bill_period`` (month, quarter, year) ``ms`` is in."""
    day = date.fromordinal(ms // DAY_MS + _EPOCH_ORDINAL)
    size = _MONTHS[bill_period]
    return _month_start(day.year, (day.month - 1) // size * size + 1)


def next_start(start: int, bill_period: str) -> int:
    """The start of the period after the one starting at ``start``."""
    day = date.fromordinal(start // DAY_MS + _EPOCH_ORDINAL)
    months = day.year * 12 + day.month - 1 + _MONTHS[bill_period]
    return _month_start(months // 12, months % 12 + 1)


def periods(start: int, end: int, bill_period: str) -> list[tuple[int, int]]:
    """Every ``bill_period`` that intersects ``[start, end)``, whole, in order."""
    out = []
    lo = period_start(start, bill_period)
    while lo < end:
        hi = next_start(lo, bill_period)
        out.append((lo, hi))
        lo = hi
    return out
