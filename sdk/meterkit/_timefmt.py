"""UTC timestamps in m3ter's ingest format, millisecond precision, cheaply.

Measurements are accepted with times in years 2000 to 9999 (:data:`MIN_NS`, :data:`MAX_NS`;
checked in ``_limits.check_ts``): in that range :func:`iso_ms` always writes
``YYYY-MM-DDTHH:MM:SS.mmmZ``, which sorts as time does. Earlier instants are refused, not
formatted: ``time.strftime`` writes year 1 as ``1``, not ``0001``, and a time before 2000 in
usage data is a number read in the wrong unit far more often than history.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

#: 2000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999999999Z, in nanoseconds since the epoch.
MIN_NS = 946_684_800 * 1_000_000_000
MAX_NS = 253_402_300_800 * 1_000_000_000 - 1

#: (second, its formatted prefix), replaced as one object so threads never pair one
#: second with another's prefix
_cache: tuple[int, str] = (-1, "")


def iso_ms(ns: int) -> str:
    """Format nanoseconds since the epoch as ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    The seconds part is cached: a flusher formats thousands of timestamps per second
    and nearly all share a second, so this costs a division and an f-string.
    """
    global _cache
    second, rest = divmod(ns, 1_000_000_000)
    cached = _cache
    if cached[0] != second:
        cached = _cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{rest // 1_000_000:03d}Z"


def parse_ts(value: object) -> int:
    """Turn a timestamp given by a caller into nanoseconds since the epoch (UTC).

    Accepts a timezone-aware ``datetime`` or an ISO 8601 string with an offset or ``Z``.
    Naive datetimes and strings without an offset are refused: a billing event whose
    time zone is a guess is a dispute waiting to happen.
    """
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    else:
        raise ValueError(f"expected a timezone-aware datetime or ISO 8601 string, got {type(value).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"timestamp {value!s} has no time zone; give UTC explicitly")
    # Subtracting aware datetimes never overflows, where astimezone() does for an instant
    # just outside years 1-9999 (0001-01-01T00:00:00+01:00); the caller checks the range.
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_wire_second: dict[str, int] = {}


def wire_ts_ns(text: str) -> int:
    """Parse a timestamp in the wire format this module writes (``...SS.mmmZ``), fast.

    The seconds part is cached (a handful of distinct seconds per batch); anything else
    falls back to :func:`parse_ts`.
    """
    if len(text) == 24 and text[19] == "." and text[23] == "Z" and text[20:23].isdigit():
        head = text[:19]
        second = _wire_second.get(head)
        if second is None:
            try:
                second = parse_ts(head + "Z") // 1_000_000_000
            except ValueError:
                raise ValueError(f"not an ISO 8601 timestamp: {text!r}") from None
            if len(_wire_second) > 4096:
                _wire_second.clear()
            _wire_second[head] = second
        return second * 1_000_000_000 + int(text[20:23]) * 1_000_000
    return parse_ts(text)
