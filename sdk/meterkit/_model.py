"""The measurement: m3ter's ingest shape, and the one validation every path shares.

A measurement on the wire (and in the spool) is a JSON object::

    {"uid": "...", "meter": "api_calls", "account": "acme", "ts": "2026-11-22T20:04:00.123Z",
     "ets": "...", "who": {...}, "what": {...}, "where": {...}, "other": {...},
     "metadata": {...}, "measure": {...}, "income": {...}, "cost": {...}}

String categories hold strings, numeric categories hold numbers; empty categories are
left out. :func:`build` is used by the SDK's flusher, by strict mode at the call site, by
backfill and (through :func:`validate_wire`) by the agent and the ledger, so a measurement
means the same thing everywhere. The limits it enforces (lengths, characters, the numeric
range, the time range) and their sources are in ``_limits``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ._corrections import EXTENSION_KEYS, check_extensions
from ._errors import MeasurementError, safe_repr
from ._limits import (
    MAX_ACCOUNT_LENGTH,
    MAX_CODE_LENGTH,
    MAX_INT,
    MAX_METADATA_LENGTH,
    MAX_STRING_LENGTH,
    MAX_UID_LENGTH,
    MIN_INT,
    check_ts,
    identifier_ok,
    identifier_problem,
    number_value,
    string_value,
)

# Re-exported: the ledger checks an organisation id with ``check_org``; backfill uses ``problem``.
from ._limits import check_org as check_org
from ._limits import problem as problem
from ._timefmt import iso_ms

if TYPE_CHECKING:
    from ._catalog import Catalog

STRING_CATEGORIES = ("who", "what", "where", "other", "metadata")
NUMERIC_CATEGORIES = ("measure", "income", "cost")
CATEGORIES = STRING_CATEGORIES + NUMERIC_CATEGORIES

#: m3ter: at most fifteen data fields and fifteen derived fields per meter.
MAX_DATA_FIELDS = 15
MAX_DERIVED_FIELDS = 15
FIELD_CODE_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,79}\Z")
METER_CODE_RE = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_$.:\-]{0,79}\Z")


_good_meters: set[str] = set()
_good_codes: set[str] = set()
_good_accounts: set[str] = set()
_CACHE_LIMIT = 10_000  # codes are few; stop caching if a caller invents them per event


def _meter_ok(meter: object) -> bool:
    try:
        if meter in _good_meters:
            return True
    except TypeError:  # unhashable: a JSON array or object where a code belongs
        return False
    if isinstance(meter, str) and METER_CODE_RE.match(meter):
        if len(_good_meters) < _CACHE_LIMIT:
            _good_meters.add(meter)
        return True
    return False


def _meter_problem(meter: object) -> MeasurementError:
    if isinstance(meter, str) and meter and not identifier_ok(meter, MAX_CODE_LENGTH):
        # too long, or a control character: named as such; any other bad character is a bad code
        return identifier_problem(meter, MAX_CODE_LENGTH, None, "meter")
    return problem(
        "bad_meter_code",
        f"meter code must be 1-{MAX_CODE_LENGTH} letters, digits or _$.:- characters, got {safe_repr(meter):.90}",
        None,
    )


def meter_ok(meter: object) -> bool:
    """Whether ``meter`` is a good meter code (cached: codes are few)."""
    return _meter_ok(meter)


def account_ok(account: object) -> bool:
    """Whether ``account`` is a good account code (the good ones are cached)."""
    if type(account) is not str:
        return False
    return account in _good_accounts or (bool(account) and not account.isspace() and _account_ok(account))


def _account_ok(account: str) -> bool:
    """Whether an account code is within m3ter's rules; the good ones are cached (accounts repeat)."""
    if identifier_ok(account, MAX_ACCOUNT_LENGTH):
        if len(_good_accounts) < _CACHE_LIMIT:
            _good_accounts.add(account)
        return True
    return False


def _code_ok(code: object) -> bool:
    try:
        if code in _good_codes:
            return True
    except TypeError:
        return False
    if isinstance(code, str) and FIELD_CODE_RE.match(code):
        if len(_good_codes) < _CACHE_LIMIT:
            _good_codes.add(code)
        return True
    return False


def _plain(value: Any) -> Any:
    """A ``str`` subclass (a ``StrEnum`` member, say) as the plain ``str`` it holds; any
    other value unchanged, for the checks to judge."""
    return str.__str__(value) if type(value) is not str and isinstance(value, str) else value


def build(
    meter: object,
    account: object,
    ts_ns: int,
    uid: object,
    values: Sequence[Mapping[str, object] | None],
    *,
    ets: object = None,
    catalog: Catalog | None = None,
    now_ns: int | None = None,
    user_ts: object = None,
    derived: bool = False,
) -> dict[str, Any]:
    """Validate one measurement and return its wire shape.

    ``values`` holds one mapping (or ``None``) per category, in :data:`CATEGORIES` order.
    ``ts_ns`` is the recording time; ``user_ts``, when given, is a caller-supplied
    timestamp that replaces it after validation. Raises :class:`MeasurementError` naming
    the meter, the field and the reason. ``derived`` allows values for the meter's derived
    fields (computed by the agent; an application does not send them). This runs once per
    measurement in the flusher,
    so the common case (known codes, plain str/int/float values) takes the short paths.
    """
    meter, account = _plain(meter), _plain(account)  # a str enum names what it holds
    if not _meter_ok(meter):
        raise _meter_problem(meter)
    assert isinstance(meter, str)
    if type(account) is not str or not account or account.isspace():
        raise _missing_account(meter)
    if account not in _good_accounts and not _account_ok(account):
        raise identifier_problem(account, MAX_ACCOUNT_LENGTH, meter, "account")
    if type(uid) is not str or not uid:
        raise problem("bad_uid", f"uid must be a non-empty string, got {safe_repr(uid):.60}", meter, "uid")
    # isprintable() (no control character, no lone surrogate) is the cheap common case.
    common = len(uid) <= MAX_UID_LENGTH and uid.isprintable() and uid[0] != " " and uid[-1] != " "
    if not common and not identifier_ok(uid, MAX_UID_LENGTH):
        raise identifier_problem(uid, MAX_UID_LENGTH, meter, "uid")
    if user_ts is not None or ets is not None:
        if now_ns is None:
            now_ns = time.time_ns()
        if user_ts is not None:
            ts_ns = check_ts(meter, "ts", user_ts, now_ns)
    out: dict[str, Any] = {"uid": uid, "meter": meter, "account": account, "ts": iso_ms(ts_ns)}
    if ets is not None:
        assert now_ns is not None
        ets_ns = check_ts(meter, "ets", ets, now_ns)
        if ets_ns < ts_ns:
            raise problem("bad_timestamp", "ets (end) is before ts (start)", meter, "ets")
        out["ets"] = iso_ms(ets_ns)

    known = catalog.meters.get(meter) if catalog is not None else None
    if catalog is not None and known is None:
        raise problem("unknown_meter", f"meter {meter!r} is not in the catalog {catalog.source}", meter)
    categories = (known.wire_categories if derived else known.field_categories) if known is not None else None

    count = 0
    for category, given in zip(CATEGORIES, values, strict=True):
        if not given:
            continue
        numeric = category in NUMERIC_CATEGORIES
        longest = MAX_METADATA_LENGTH if category == "metadata" else MAX_STRING_LENGTH
        clean: dict[str, Any] = {}
        value: Any
        for code, value in given.items():
            if categories is not None:
                expected = categories.get(code)
                if expected != category:
                    raise _misplaced(meter, category, code, expected)
            elif not _code_ok(code):
                raise problem(
                    "bad_field_code",
                    f"field code {safe_repr(code):.90} is not letters, digits, _ or $ (max 80)",
                    meter,
                    f"{category}.{code}",
                )
            if type(code) is not str:
                code = _plain(code)  # a str enum as a code: its text, which every encoder takes
            if value is None:
                continue
            kind = type(value)
            # The short paths: a plain int or float within range, a short string with no
            # control character. Everything else, good or bad, is decided in ``_limits``.
            if numeric:
                if (kind is int and MIN_INT <= value <= MAX_INT) or (kind is float and math.isfinite(value)):
                    clean[code] = value
                else:
                    clean[code] = number_value(meter, category, code, value)
            elif kind is str and len(value) <= longest and value.isprintable():
                clean[code] = value
            else:
                clean[code] = string_value(meter, category, code, value)
        if clean:
            count += len(clean)
            out[category] = clean
    if count > MAX_DATA_FIELDS:
        raise problem("too_many_fields", f"{count} data fields; a meter has at most {MAX_DATA_FIELDS}", meter)
    return out


def _missing_account(meter: str) -> MeasurementError:
    return problem(
        "missing_account", "no account: pass account= or set one with meterkit.context(account=...)", meter, "account"
    )


def key_problem(meter: object, account: object) -> MeasurementError | None:
    """Why ``meter`` and ``account`` cannot make a measurement, as :func:`build` names it,
    or ``None``. The production flusher checks each distinct pair of a batch this way,
    not each measurement; good codes are cached, so a known pair costs two set lookups."""
    if not _meter_ok(meter):
        return _meter_problem(meter)
    assert isinstance(meter, str)
    if type(account) is not str or not account or account.isspace():
        return _missing_account(meter)
    if account not in _good_accounts and not _account_ok(account):
        return identifier_problem(account, MAX_ACCOUNT_LENGTH, meter, "account")
    return None


def uid_problem(uid: object, meter: str | None) -> MeasurementError | None:
    """Why a caller's ``uid`` is refused, as :func:`build` names it, or ``None``."""
    if type(uid) is not str or not uid:
        return problem("bad_uid", f"uid must be a non-empty string, got {safe_repr(uid):.60}", meter, "uid")
    common = len(uid) <= MAX_UID_LENGTH and uid.isprintable() and uid[0] != " " and uid[-1] != " "
    if not common and not identifier_ok(uid, MAX_UID_LENGTH):
        return identifier_problem(uid, MAX_UID_LENGTH, meter, "uid")
    return None


def _misplaced(meter: str, category: str, code: str, expected: str | None) -> MeasurementError:
    if expected is None:
        return problem(
            "unknown_field",
            f"meter {meter!r} has no data field {code!r}",
            meter,
            f"{category}.{code}",
        )
    return problem(
        "wrong_category",
        f"{code!r} is a {expected.upper()} field of meter {meter!r}, not {category.upper()}",
        meter,
        f"{category}.{code}",
    )


#: Where the flusher's batch-frame numbering starts: 2**47 uids away from ``UidSource.next``'s.
BATCH_SEQ_START = 1 << 47


class UidSource:
    """Measurement ids that cost a counter increment, not a uuid4.

    Each process draws 74 random bits once; a measurement's uid is those bits followed by
    a 48-bit counter, laid out as an RFC 9562 version-8 UUID. Two processes collide only
    if they draw the same 74 bits. After ``fork()`` the child draws anew (see
    :meth:`reseed`), so parent and child never share a prefix.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        rand = int.from_bytes(os.urandom(10), "big") >> 6  # 74 bits
        hi = rand >> 26  # 48 bits: time_low + time_mid fields
        mid = (rand >> 14) & 0xFFF  # 12 bits after the version nibble
        low = rand & 0x3FFF  # 14 bits after the variant bits
        self.prefix = f"{hi >> 16:08x}-{hi & 0xFFFF:04x}-8{mid:03x}-{0x8000 | low:04x}-"
        # itertools.count's __next__ is atomic under the GIL: a lock-free sequence.
        self.next = itertools.count(1).__next__
        # The flusher numbers the rows of its batch frames from the upper half of the
        # 48-bit counter (``_frames``), so they never meet the numbers ``next`` gives.
        self.batch_next = BATCH_SEQ_START

    def format(self, n: int) -> str:
        return f"{self.prefix}{n & 0xFFFFFFFFFFFF:012x}"


#: Bumped whenever :func:`build`'s rules change: a spool segment written under the same
#: rules and catalog needs no second validation by the agent.
RULES_VERSION = 2  # 2: input limits (lengths, characters, numeric and time ranges)


def validation_token(catalog: Catalog | None) -> str:
    """Names what a measurement was validated against: the rules and the catalog."""
    return f"rules{RULES_VERSION}:{catalog.digest if catalog is not None else 'no-catalog'}"


def content_hash(m: Mapping[str, Any]) -> str:
    """The digest of a measurement's content, the same wherever it is computed (the agent's
    journal, the ledger, reconciliation): sha256 of its JSON with sorted keys, in hex."""
    return content_digest(m).hex()


def content_digest(m: Mapping[str, Any]) -> bytes:
    """:func:`content_hash` as its 32 bytes. A backfill's ``batch`` is left out: it says
    which run brought the measurement, not what the measurement says, so a backfill run
    again under another batch id re-sends the same measurements (duplicates, where the
    first run's batch stands), not conflicting ones."""
    if "batch" in m:
        m = {k: v for k, v in m.items() if k != "batch"}
    return hashlib.sha256(orjson.dumps(m, option=orjson.OPT_SORT_KEYS)).digest()


def tally(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (meter, account, hour): how many measurements, and the sums of their numeric
    fields keyed ``category.code``. The SDK writes this beside the records it counts; the
    agent journals the same figures for what it delivered or dead-lettered, so the two
    sides of a reconciliation are computed by one function. Tolerates the malformed
    measurements a dead-letter store may hold."""
    table: dict[tuple[Any, Any, str], list[Any]] = {}
    for r in records:
        meter, account, ts = r.get("meter"), r.get("account"), r.get("ts")
        key = (
            meter if type(meter) is str else str(meter),
            account if type(account) is str else str(account),
            (ts[:13] if type(ts) is str else "") + ":00:00Z",
        )
        entry = table.get(key)
        if entry is None:
            entry = table[key] = [0, {}]
        entry[0] += 1
        sums = entry[1]
        for category in NUMERIC_CATEGORIES:
            values = r.get(category)
            if values and type(values) is dict:
                for code, v in values.items():
                    if type(v) is int or type(v) is float:
                        name = f"{category}.{code}"
                        sums[name] = sums.get(name, 0) + v
    for _, totals in table.values():
        for name, total in totals.items():
            if type(total) is int and not -(2**63) <= total < 2**63:
                # Whole numbers sum exactly past 64 bits; JSON codecs stop there, so such a
                # sum is written as its decimal digits (docs/audit-journal.md).
                totals[name] = str(total)
    return [{"meter": m, "account": a, "hour": h, "count": c, "sums": s} for (m, a, h), (c, s) in table.items()]


#: The keys a measurement may have on the wire.
WIRE_KEYS = frozenset({"uid", "meter", "account", "ts", "ets", *CATEGORIES})


def validate_wire(raw: object, catalog: Catalog | None = None, now_ns: int | None = None) -> dict[str, Any]:
    """Check a measurement received in wire shape (from a spool, a request, a file).

    Same rules as :func:`build`; also refuses unknown keys and a missing ``ts``, and checks
    a correction's or a backfill's mark (:mod:`._corrections`). Returns the normalised
    measurement or raises :class:`MeasurementError`.
    """
    if not isinstance(raw, dict):
        raise problem("bad_shape", "a measurement must be a JSON object")
    meter = raw.get("meter")
    label = meter if isinstance(meter, str) else None
    unknown = sorted(str(k) for k in raw if k not in WIRE_KEYS and k not in EXTENSION_KEYS)
    if unknown:
        raise problem("unknown_key", f"unknown key(s) {', '.join(unknown)}", label)
    if raw.get("ts") in (None, ""):
        raise problem("missing_ts", "ts is required", label, "ts")
    values = [raw.get(c) for c in CATEGORIES]
    for category, v in zip(CATEGORIES, values, strict=True):
        if v is not None and not isinstance(v, dict):
            raise problem("bad_shape", f"{category} must be an object of field code to value", label, category)
    out = build(
        meter,
        raw.get("account"),
        0,
        raw.get("uid"),
        values,
        ets=raw.get("ets"),
        catalog=catalog,
        now_ns=now_ns,
        user_ts=raw["ts"],
        derived=True,
    )
    if "correction" in raw or "batch" in raw:
        check_extensions(raw, out, label)
    return out
