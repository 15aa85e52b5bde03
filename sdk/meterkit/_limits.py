"""What a measurement may hold: lengths, characters, numbers and times, each refused with
a named reason.

Every edge reaches these checks through :func:`meterkit._model.build`: the SDK (strict mode
at the call site, production mode in the flusher, backfill) and, through
:func:`~meterkit._model.validate_wire`, the agent's receivers, its ``validate`` processor,
the ledger's ingest API and the ledger exporter. The ledger checks the organisation of a
request with :func:`check_org`. The SDK's hot path (``Client.record``) checks nothing: it
appends a tuple, and the flusher runs these checks. In the common case ``build`` inlines
them as a length comparison and ``str.isprintable()`` per string (about 0.1 µs each); only
a value that fails that comes here, to be accepted (a tab, a no-break space) or named.

The limits are the tightest that the backends meterkit delivers to document, so a
measurement accepted here is not refused later by m3ter or Stripe for its shape. Where no
backend documents a figure, the one chosen is said to be a choice. The README's "Limits on
what is accepted" states them for users.

Characters. Identifiers (``uid``, ``meter``, ``account``, the organisation) may not hold a control
character (C0, DEL or C1) and may not start or end with a space: m3ter's pattern for an
Account code. Free-text values (Who, What, Where, Other, Metadata) may hold tab, line feed
and carriage return, and no other control character: NUL truncates C strings and log
lines, and the rest are never text. A lone surrogate (possible in a Python ``str``, never
in JSON) is refused in both, because no UTF-8 encoder can write it.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from decimal import Decimal

from ._errors import MeasurementError, Problem, safe_repr
from ._timefmt import MAX_NS, MIN_NS, parse_ts, wire_ts_ns

#: Stripe's meter event ``identifier`` (which carries the uid) allows at most 100
#: characters (Stripe API reference, "Create a billing meter event",
#: https://docs.stripe.com/api/billing/meter-event/create). m3ter documents no length for a
#: measurement's ``uid`` (https://docs.m3ter.com/api/measurements/submit-measurements), so
#: Stripe's is the tightest.
MAX_UID_LENGTH = 100
#: m3ter: a Meter code is 1-80 characters (https://docs.m3ter.com/api/meter/create-meter);
#: Stripe's ``event_name`` allows 100, so m3ter's is the tightest. Field codes too (DESIGN §1).
MAX_CODE_LENGTH = 80
#: m3ter: an Account code is 1-80 characters with no control characters and no whitespace
#: at either end (https://docs.m3ter.com/api/account/create-account).
MAX_ACCOUNT_LENGTH = 80
#: m3ter's organisation id is a UUID, 36 characters (the ``orgId`` path parameter of
#: Submit Measurements). The ledger serves any organisation name; 100 is a choice, the
#: width of the ledger's ``org`` column.
MAX_ORG_LENGTH = 100
#: m3ter: Metadata values are at most 256 characters (DESIGN §1, after m3ter's Meter model).
MAX_METADATA_LENGTH = 256
#: Who, What, Where and Other values. Neither m3ter nor Stripe documents a length for them
#: (Stripe's payload values are strings with no stated limit); 500 is a choice: Stripe's
#: limit for free-form string values elsewhere (metadata values, https://docs.stripe.com/metadata).
MAX_STRING_LENGTH = 500
#: A timestamp in any ISO 8601 spelling fits in 40 characters; longer text is not parsed.
MAX_TS_TEXT = 64

#: Measure, Income and Cost. Whole numbers: signed 64-bit, what m3ter's Java engine (a
#: ``long``), the derived-field engine (``_expr.MAX_INT``) and JSON codecs hold exactly;
#: orjson refuses to write a larger int, so one accepted here would sink its whole spool
#: write. Fractional numbers: any finite binary64 float (|x| <= 1.7976931348623157e308),
#: what JSON writes; NaN and infinities are refused (``not_finite``). No tighter bound:
#: the ledger sums floats exactly, in decimal, at any magnitude (``ledger/exact.py``), and
#: derived fields may be large (the agent delivers 1e306). A ``Decimal`` becomes the
#: nearest float, and must be finite as one.
MIN_INT = -(2**63)
MAX_INT = 2**63 - 1

#: Identifiers may hold no control character (C0, DEL, C1) and no lone surrogate.
BAD_IDENTIFIER_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: Free text: tab, line feed and carriage return are allowed; other controls and lone surrogates are not.
BAD_TEXT_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")

#: Clocks drift; a measurement more than this far ahead of the recorder's clock is refused
#: rather than billed in a period that has not happened yet (Stripe allows the same 5 minutes).
MAX_FUTURE_SKEW_NS = 5 * 60 * 1_000_000_000


def problem(reason: str, message: str, meter: str | None = None, field: str | None = None) -> MeasurementError:
    return MeasurementError(Problem(reason, message, meter=meter, field=field))


def _character_problem(value: str, meter: str | None, field: str, text: bool) -> MeasurementError | None:
    """The control character or lone surrogate in ``value``, named with its position."""
    found = _SURROGATE_RE.search(value)
    if found is not None:
        return problem(
            "invalid_unicode",
            f"{field} holds a lone surrogate U+{ord(found.group()):04X} at position {found.start()};"
            " it cannot be written as UTF-8",
            meter,
            field,
        )
    found = _CONTROL_RE.search(value) if not text else BAD_TEXT_RE.search(value)
    if found is not None:
        allowed = " (tab, line feed and carriage return are allowed)" if text else ""
        return problem(
            "control_character",
            f"{field} holds the control character U+{ord(found.group()):04X} at position {found.start()}{allowed}",
            meter,
            field,
        )
    return None


def _too_long(value: str, limit: int, meter: str | None, field: str) -> MeasurementError:
    return problem(
        "too_long",
        f"{field} is {len(value)} characters; at most {limit} are accepted: {value[:40]!r}...",
        meter,
        field,
    )


def identifier_problem(value: str, limit: int, meter: str | None, field: str) -> MeasurementError:
    """Why ``value`` (a non-empty ``str``) is not an identifier of at most ``limit`` characters."""
    if len(value) > limit:
        return _too_long(value, limit, meter, field)
    found = _character_problem(value, meter, field, text=False)
    if found is not None:
        return found
    return problem("surrounding_whitespace", f"{field} {value!r:.60} starts or ends with a space", meter, field)


def identifier_ok(value: str, limit: int) -> bool:
    """Whether ``value`` (a non-empty ``str``) is an identifier of at most ``limit`` characters."""
    return len(value) <= limit and value[0] != " " and value[-1] != " " and not BAD_IDENTIFIER_RE.search(value)


def check_org(org: object) -> str:
    """Validate an organisation id (the ledger's ``{orgId}``): a string of 1-100 characters
    with no control characters and no space at either end. Returns it, or raises
    :class:`MeasurementError` (reason ``bad_org``, ``too_long``, ``control_character``,
    ``invalid_unicode`` or ``surrounding_whitespace``; field ``org``)."""
    if type(org) is not str or not org or org.isspace():
        raise problem("bad_org", f"the organisation must be a non-empty string, got {safe_repr(org):.60}", None, "org")
    if not identifier_ok(org, MAX_ORG_LENGTH):
        raise identifier_problem(org, MAX_ORG_LENGTH, None, "org")
    return org


def text_problem(meter: str, category: str, code: str, value: str) -> MeasurementError | None:
    """Why a string field value is refused, or ``None`` if it is fine."""
    field = f"{category}.{code}"
    if category == "metadata":
        if len(value) > MAX_METADATA_LENGTH:
            return problem(
                "metadata_too_long",  # the older name of too_long for Metadata, kept: reasons are stable
                f"Metadata value is {len(value)} characters; at most {MAX_METADATA_LENGTH} are allowed",
                meter,
                field,
            )
    elif len(value) > MAX_STRING_LENGTH:
        return _too_long(value, MAX_STRING_LENGTH, meter, field)
    return _character_problem(value, meter, field, text=True)


def string_value(meter: str, category: str, code: str, value: object) -> str:
    """A Who/What/Where/Other/Metadata value, checked; an int identifier becomes its text."""
    if isinstance(value, str):
        found = text_problem(meter, category, code, value)
        if found is not None:
            raise found
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # An int identifier (a user id, a shard number) is written as its decimal text.
        if MIN_INT <= value <= MAX_INT:
            return str(value)
        raise problem(
            "number_out_of_range",
            f"{category.upper()} value {value!r:.40} is past the signed 64-bit range",
            meter,
            f"{category}.{code}",
        )
    raise problem(
        "wrong_type",
        f"{category.upper()} fields take strings, got {type(value).__name__} {safe_repr(value):.40}",
        meter,
        f"{category}.{code}",
    )


def number_value(meter: str, category: str, code: str, value: object) -> float | int:
    """A Measure/Income/Cost value, checked: an int within signed 64 bits, or a finite
    float. A ``Decimal`` becomes a float under the same rule."""
    field = f"{category}.{code}"
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise problem(
            "wrong_type",
            f"{category.upper()} fields take numbers, got {type(value).__name__} {safe_repr(value):.40}",
            meter,
            field,
        )
    if isinstance(value, int):
        if MIN_INT <= value <= MAX_INT:
            return int(value)
        raise problem(
            "number_out_of_range",
            f"{category.upper()} value {value!r:.40} is past the signed 64-bit range"
            f" [{MIN_INT}, {MAX_INT}] that backends hold exactly",
            meter,
            field,
        )
    if isinstance(value, Decimal) and not value.is_finite():
        number = math.nan  # float() of a signalling NaN would raise
    else:
        number = float(value)
        if math.isinf(number) and isinstance(value, Decimal):
            raise problem(
                "number_out_of_range",
                f"{category.upper()} value {value!r:.40} is past the range of a float (about 1.8e308)",
                meter,
                field,
            )
    if not math.isfinite(number):
        message = f"{category.upper()} value is {value}; only finite numbers are billable"
        raise problem("not_finite", message, meter, field)
    return number


def check_ts(meter: str | None, name: str, value: object, now_ns: int) -> int:
    """Validate a caller-given timestamp and return it as nanoseconds since the epoch.

    Takes an ISO 8601 string with a time zone (what the wire carries) or a timezone-aware
    ``datetime``. A number is refused: whether it counts seconds, milliseconds or
    nanoseconds would be a guess (an integer read as nanoseconds made Unix seconds 1970).
    The instant must lie in years 2000 to 9999, so it is stored as
    ``YYYY-MM-DDTHH:MM:SS.mmmZ``, and at most 5 minutes ahead of ``now_ns``. There is no
    limit on age here: backfills need old times; each backend's rule is in the README."""
    try:
        if type(value) is str:
            if len(value) > MAX_TS_TEXT:
                raise ValueError(f"{name} is {len(value)} characters; an ISO 8601 timestamp is at most {MAX_TS_TEXT}")
            # Wire-format strings (what spools and ingest requests carry) take a cached fast path.
            ns = wire_ts_ns(value)
        elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            raise ValueError(
                f"{name} is the number {safe_repr(value):.30}; send an ISO 8601 string with a time zone"
                " (2026-01-31T12:00:00.000Z) or a timezone-aware datetime: a number's unit is a guess"
            )
        elif isinstance(value, datetime | str):
            ns = parse_ts(value)
        else:
            kind = type(value).__name__
            raise ValueError(f"{name} must be an ISO 8601 string or a timezone-aware datetime, got {kind}")
    except ValueError as exc:
        raise problem("bad_timestamp", str(exc), meter, name) from None
    if not MIN_NS <= ns <= MAX_NS:
        raise problem(
            "ts_out_of_range",
            f"{name} {value!s:.40} is outside the accepted range, years 2000 to 9999 (UTC)",
            meter,
            name,
        )
    if ns > now_ns + MAX_FUTURE_SKEW_NS:
        raise problem(
            "ts_in_future",
            f"{name} is {(ns - now_ns) / 1e9:.0f} s ahead of this clock;"
            f" at most {MAX_FUTURE_SKEW_NS // 1_000_000_000} s is accepted",
            meter,
            name,
        )
    return ns
