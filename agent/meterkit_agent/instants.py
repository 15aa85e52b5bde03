"""Instants: every time the ledger and billing compare is a UTC instant, never text.

A stored measurement keeps ``ts_ms``, its time as UTC milliseconds since the epoch; periods
and buckets are computed on that number. A period boundary (``from``, ``to``) is parsed by
:func:`parse_instant` under these rules, the same for the HTTP API, ``meterkit usage`` and
the ledger's Python API (which reconciliation reads):

- a date and time with an explicit offset, in ISO 8601's extended format (RFC 3339):
  ``2026-11-01T00:00:00Z``, ``2026-11-01T01:00:00+01:00`` (the same instant),
  ``...+0100`` or ``...+01``, ``z`` or ``t`` in lower case, a space for the ``T``
  (RFC 3339 §5.6, note); seconds may be left out (``2026-11-01T00:00Z``) and may carry a
  fraction of up to 9 digits (``.`` or ``,``).
- a date alone, ``2026-11-01``: midnight UTC at its start, so ``from=2026-11-01&to=2026-12-01``
  is November (``to`` is exclusive).
- refused, with a message naming the parameter: a time without an offset (as the SDK
  refuses one: a time zone that is a guess is a billing dispute waiting to happen), the
  basic format (``20261101T000000Z``), week and ordinal dates, hour 24, a leap second,
  a date that does not exist (``2026-13-45``, ``2026-02-29``), words (``yesterday``).

Periods are half-open, ``[from, to)``. Stored instants are whole milliseconds, so a boundary
that falls between two milliseconds is rounded up to the next one: for a whole millisecond
``t`` and any boundary ``b``, ``t >= b`` exactly when ``t >= ceil(b)``.
"""

from __future__ import annotations

import calendar
import re

#: a UTC day and hour, in milliseconds
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
_MAX_TEXT = 64  # the longest spelling accepted is 40 characters; refuse anything far past it

_INSTANT = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[Tt ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?"
    r"(?P<tz>[Zz]|(?P<sign>[+-])(?P<oh>\d{2})(?::?(?P<om>\d{2}))?)?)?\Z",
    re.ASCII,
)
# "…T00:00:00 01:00": a "+01:00" sent unencoded in a URL query, where "+" means a space
_PLUS_AS_SPACE = re.compile(r"\d \d{2}(?::?\d{2})?\Z", re.ASCII)

ACCEPTED = "an ISO 8601 date-time with an offset (2026-11-01T00:00:00Z, ...+01:00) or a date (2026-11-01, midnight UTC)"


class InstantError(ValueError):
    """A value given as a time is not one the ledger accepts; the message names it."""


def parse_instant(text: object, name: str | None) -> int:
    """The instant ``text`` spells, in nanoseconds since the epoch (UTC). ``name`` is the
    parameter's name, for the message (None: the caller names it). Raises
    :class:`InstantError`."""
    named = f"{name}: " if name else ""
    if not isinstance(text, str) or len(text) > _MAX_TEXT:
        raise InstantError(f"{named}{text!r:.80} is not {ACCEPTED}")
    m = _INSTANT.match(text.strip())
    if m is None:
        hint = " (a '+' in a URL query means a space: send it as %2B)" if _PLUS_AS_SPACE.search(text) else ""
        raise InstantError(f"{named}{text!r} is not {ACCEPTED}{hint}")
    year, month, day = int(m["y"]), int(m["mo"]), int(m["d"])
    if not (year >= 1 and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        raise InstantError(f"{named}{text!r} is not a date that exists")
    if m["h"] is not None and m["tz"] is None:
        raise InstantError(f"{named}{text!r} has no offset; give Z (UTC) or one like +01:00")
    hour, minute, second = int(m["h"] or 0), int(m["mi"] or 0), int(m["s"] or 0)
    offset_h, offset_m = int(m["oh"] or 0), int(m["om"] or 0)
    if hour > 23 or minute > 59 or second > 59 or offset_h > 23 or offset_m > 59:
        raise InstantError(f"{named}{text!r} has an hour, minute, second or offset out of range")
    offset_s = (offset_h * 3600 + offset_m * 60) * (-1 if m["sign"] == "-" else 1)
    seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s
    return seconds * 1_000_000_000 + int((m["f"] or "").ljust(9, "0"))


def boundary_ms(text: object, name: str | None) -> int:
    """A period boundary as the first whole millisecond at or after it (see the module's
    note on half-open periods). Raises :class:`InstantError`."""
    return -(-parse_instant(text, name) // 1_000_000)


def iso(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` for UTC milliseconds since the epoch. Plain arithmetic:
    no cache shared between the threads the ledger formats from, and no ``strftime``,
    which writes year 999 as ``999``."""
    days, rest = divmod(ms, DAY_MS)
    year, month, day = civil_from_days(days)
    hour, rest = divmod(rest, HOUR_MS)
    minute, rest = divmod(rest, 60_000)
    second, milli = divmod(rest, 1000)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}Z"


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm: exact
    integer arithmetic for any year, no datetime range to fall out of)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number from :func:`days_from_civil`."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def month_start_ms(ms: int) -> int:
    """The first millisecond of the UTC calendar month ``ms`` falls in."""
    year, month, _ = civil_from_days(ms // DAY_MS)
    return days_from_civil(year, month, 1) * DAY_MS
