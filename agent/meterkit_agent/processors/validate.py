"""Checks every measurement against the catalog and the wire rules.

Since the SDK stopped validating in production mode (it captures and frames; catalog work
moved out of the application), this runs once per measurement in the agent, so its common
case is short: :func:`plain` recognises a measurement that
:func:`meterkit._model.validate_wire` would return unchanged (known meter, account and
field codes, plain values, a timestamp already in wire form) with set lookups, a length
and ``str.isprintable()`` per value. Anything else, good or bad, goes through
``validate_wire`` itself, which normalises it or names the problem: the rules live in one
place, and the short path only ever says "nothing to do here".

Most batches are all plain, so :func:`all_plain` asks the same questions of a whole chunk
of records column by column, in passes the interpreter runs in C: each distinct meter,
account, timestamp and field code is checked once, every uid and value by ``map``. Only a
chunk it cannot vouch for is looked at record by record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from functools import partial
from itertools import chain, compress, repeat
from operator import contains, is_not, itemgetter, le
from pathlib import Path
from typing import Any

from meterkit import Catalog, MeasurementError
from meterkit._limits import (
    MAX_ACCOUNT_LENGTH,
    MAX_FUTURE_SKEW_NS,
    MAX_INT,
    MAX_METADATA_LENGTH,
    MAX_STRING_LENGTH,
    MAX_UID_LENGTH,
    MIN_INT,
    identifier_ok,
)
from meterkit._model import (
    CATEGORIES,
    FIELD_CODE_RE,
    MAX_DATA_FIELDS,
    METER_CODE_RE,
    NUMERIC_CATEGORIES,
    WIRE_KEYS,
    validate_wire,
    validation_token,
)
from meterkit._timefmt import MAX_NS, MIN_NS, iso_ms, wire_ts_ns

from ..component import Factory, Measurement, Rejected, Settings, catalog_at

#: Known-good meters, accounts, field codes and timestamps are remembered up to this many
#: each (then forgotten and learnt again): they repeat, and a set lookup is the whole check.
_MEMORY = 100_000


class ValidateConfig(Settings):
    catalog: Path | None = None


class ShortPath:
    """What :func:`validate_wire` would accept unchanged, recognised cheaply (see the module
    docstring). ``None`` from :meth:`fields` means "no catalog": any well-formed code."""

    def __init__(self, catalog: Catalog | None) -> None:
        self.catalog = catalog
        # per meter, per category: the codes it may carry (data and derived fields)
        self.codes: dict[str, dict[str, frozenset[str]]] = {}
        if catalog is not None:
            for code, meter in catalog.meters.items():
                if METER_CODE_RE.match(code):
                    by: dict[str, set[str]] = {c: set() for c in CATEGORIES}
                    for field, category in meter.wire_categories.items():
                        by[category].add(field)
                    self.codes[code] = {c: frozenset(v) for c, v in by.items()}
        self.meters: set[str] = set()
        self.accounts: set[str] = set()
        self.field_codes: set[str] = set()
        self.timestamps: set[str] = set()

    def meter_ok(self, meter: object) -> bool:
        if type(meter) is not str:
            return False
        if self.catalog is not None or not METER_CODE_RE.match(meter):
            return False  # with a catalog, ``codes`` answers for every meter it knows
        _remember(self.meters, meter)
        return True

    def account_ok(self, account: object) -> bool:
        if type(account) is not str or not account or account.isspace():
            return False
        if not identifier_ok(account, MAX_ACCOUNT_LENGTH):
            return False
        _remember(self.accounts, account)
        return True

    def codes_ok(self, given: Mapping[str, Any]) -> bool:
        """Without a catalog: every code is a well-formed field code."""
        for code in given:
            if type(code) is not str or not FIELD_CODE_RE.match(code):
                return False
            _remember(self.field_codes, code)
        return True

    def ts_ok(self, ts: object) -> bool:
        """Already ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (what ``iso_ms`` writes) and in years 2000
        to 9999. Such strings sort as time does: the caller compares them with a limit."""
        if type(ts) is not str or len(ts) != 24:
            return False
        try:
            ns = wire_ts_ns(ts)
        except ValueError:
            return False
        if not MIN_NS <= ns <= MAX_NS or iso_ms(ns) != ts:
            return False
        _remember(self.timestamps, ts)
        return True


def _remember(known: set[str], value: str) -> None:
    if len(known) >= _MEMORY:
        known.clear()
    known.add(value)


_IDENTITY = frozenset({"uid", "meter", "account", "ts"})
_LONGEST = {"metadata": MAX_METADATA_LENGTH, **{c: MAX_STRING_LENGTH for c in CATEGORIES if c != "metadata"}}


def plain(m: object, short: ShortPath, latest: str) -> bool:
    """Whether ``validate_wire(m, catalog, now)`` would return ``m`` as it is, decided on
    the short paths only; False means "ask validate_wire", never "bad"."""
    try:
        if type(m) is not dict or not m.keys() <= WIRE_KEYS or "ets" in m:
            return False
        meter, uid, account, ts = m["meter"], m["uid"], m["account"], m["ts"]
        codes = None
        if short.catalog is not None:
            codes = short.codes.get(meter)
            if codes is None:
                return False
        elif meter not in short.meters and not short.meter_ok(meter):
            return False
        if (
            type(uid) is not str
            or not uid
            or len(uid) > MAX_UID_LENGTH
            or not uid.isprintable()
            or uid[0] == " "
            or uid[-1] == " "
        ):
            return False
        if account not in short.accounts and not short.account_ok(account):
            return False
        if (ts not in short.timestamps and not short.ts_ok(ts)) or ts > latest:
            return False
        count = 0
        for category, given in m.items():
            if category in _IDENTITY:
                continue
            if type(given) is not dict or not given:
                return False  # not an object, or one validate_wire would leave out
            if codes is not None:
                if not given.keys() <= codes[category]:
                    return False
            elif not given.keys() <= short.field_codes and not short.codes_ok(given):
                return False
            count += len(given)
            if category in NUMERIC_CATEGORIES:
                for v in given.values():
                    kind = type(v)
                    if not ((kind is int and MIN_INT <= v <= MAX_INT) or (kind is float and math.isfinite(v))):
                        return False
            else:
                longest = _LONGEST[category]
                for v in given.values():
                    if type(v) is not str or len(v) > longest or not v.isprintable():
                        return False
        return count <= MAX_DATA_FIELDS
    except (KeyError, TypeError):  # a missing or unhashable identity: validate_wire names it
        return False


#: Records checked together by :func:`all_plain`: one bad record sends this many down the
#: record-by-record path.
_CHUNK = 256
_DICT = frozenset({dict})
_STR = frozenset({str})
_MISSING = object()
_present = partial(is_not, _MISSING)
_uid, _meter, _account, _ts = itemgetter("uid"), itemgetter("meter"), itemgetter("account"), itemgetter("ts")


def all_plain(batch: list[Any], short: ShortPath, latest: str) -> bool:
    """Whether every record of ``batch`` is :func:`plain`, asked column by column; False
    means "ask record by record", never "bad". (The field count is bounded by the sum of
    each category's largest object, so a batch near the limit is left to :func:`plain`.)"""
    try:
        if set(map(type, batch)) != _DICT:
            return False
        keys = set(chain.from_iterable(batch))
        if not keys <= WIRE_KEYS or "ets" in keys:
            return False
        meters = list(map(_meter, batch))
        distinct_meters = set(meters)
        if not _uids_plain(list(map(_uid, batch))):
            return False
        if not _identities_plain(distinct_meters, set(map(_account, batch)), set(map(_ts, batch)), short, latest):
            return False
        fields = 0
        for category in CATEGORIES:
            if category not in keys:
                continue
            given, meters_of = _column(batch, category, meters)
            if set(map(type, given)) != _DICT or not all(given):
                return False  # not an object, or one validate_wire would leave out
            if not _codes_plain(category, given, meters_of, distinct_meters, short):
                return False
            fields += max(map(len, given))
            if not _values_plain(category, list(chain.from_iterable(map(dict.values, given)))):
                return False
        return fields <= MAX_DATA_FIELDS
    except (KeyError, TypeError):  # a missing or unhashable identity: plain() will say which
        return False


def _column(batch: list[dict[str, Any]], key: str, meters: list[Any]) -> tuple[list[Any], list[Any]]:
    """The values of ``key`` in the records that have it, and those records' meters."""
    if all(map(contains, batch, repeat(key))):
        return list(map(itemgetter(key), batch)), meters
    column = list(map(dict.get, batch, repeat(key), repeat(_MISSING)))
    return list(filter(_present, column)), list(compress(meters, map(_present, column)))


def _uids_plain(uids: list[Any]) -> bool:
    if set(map(type, uids)) != _STR or not all(uids) or max(map(len, uids)) > MAX_UID_LENGTH:
        return False
    if not printable(uids):
        return False
    joined = "\n".join(uids)  # printable uids hold no line feed: each space at an edge shows
    return joined[0] != " " and joined[-1] != " " and " \n" not in joined and "\n " not in joined


def _identities_plain(meters: set[Any], accounts: set[Any], stamps: set[Any], short: ShortPath, latest: str) -> bool:
    for meter in meters:
        if short.catalog is not None:
            if meter not in short.codes:
                return False
        elif meter not in short.meters and not short.meter_ok(meter):
            return False
    for account in accounts:
        if account not in short.accounts and not short.account_ok(account):
            return False
    for ts in stamps:
        if ts not in short.timestamps and not short.ts_ok(ts):
            return False
    newest: str = max(stamps)  # every one a string by now
    return newest <= latest


def _codes_plain(
    category: str, given: list[dict[str, Any]], meters: list[str], distinct: set[Any], short: ShortPath
) -> bool:
    """Every object's codes allowed for its record's meter (any well-formed code without a catalog)."""
    if short.catalog is None:
        codes = set(chain.from_iterable(given))
        return codes <= short.field_codes or short.codes_ok(dict.fromkeys(codes))
    keys = map(dict.keys, given)  # a keys view compares with a set without copying itself
    if len(distinct) == 1:
        return all(map(le, keys, repeat(short.codes[meters[0]][category])))
    allowed = {meter: short.codes[meter][category] for meter in distinct}
    return all(map(le, keys, map(allowed.__getitem__, meters)))


def _values_plain(category: str, values: list[Any]) -> bool:
    kinds = set(map(type, values))
    if category in NUMERIC_CATEGORIES:
        if kinds == {int}:
            return bool(min(values) >= MIN_INT and max(values) <= MAX_INT)
        if not kinds <= {int, float}:
            return False
        ints = [v for v in values if type(v) is int]
        floats = [v for v in values if type(v) is float]
        return all(map(math.isfinite, floats)) and (not ints or (min(ints) >= MIN_INT and max(ints) <= MAX_INT))
    return kinds == _STR and max(map(len, values)) <= _LONGEST[category] and printable(values)


_ASCII_PRINTABLE = bytes(range(0x20, 0x7F))  # the ASCII characters str.isprintable() accepts


def printable(texts: list[str]) -> bool:
    """``all(t.isprintable() for t in texts)``; for ASCII text (the common case) as one
    ``bytes.translate`` that deletes every printable character and must leave nothing."""
    joined = "".join(texts)
    if joined.isascii():
        return not joined.encode().translate(None, _ASCII_PRINTABLE)
    return all(map(str.isprintable, texts))


class ValidateProcessor:
    """Bad measurements are rejected with the reason, for the dead-letter store; none are
    dropped.

    A measurement its writer already validated under the same rules and the same catalog
    (the segment header's ``validated`` equals :attr:`token`) is passed through: checking
    it again could only give the same answer.
    """

    def __init__(self, cfg: ValidateConfig) -> None:
        self.catalog = catalog_at(cfg.catalog)
        self.token = validation_token(self.catalog)
        self.short = ShortPath(self.catalog)

    def __call__(
        self, batch: list[Measurement], trusted: list[bool] | None = None
    ) -> tuple[list[Measurement], list[Rejected]]:
        if trusted is not None and all(trusted):
            return batch, []
        kept: list[Measurement] = []
        rejected: list[Rejected] = []
        now = time.time_ns()
        latest = iso_ms(now + MAX_FUTURE_SKEW_NS)
        short = self.short
        for start in range(0, len(batch), _CHUNK):
            chunk = batch[start : start + _CHUNK]
            if all_plain(chunk, short, latest):
                kept.extend(chunk)
                continue
            for i, m in enumerate(chunk, start):
                if (trusted is not None and trusted[i]) or plain(m, short, latest):
                    kept.append(m)
                    continue
                try:
                    kept.append(validate_wire(m, self.catalog, now))
                except MeasurementError as exc:
                    rejected.append(Rejected(m, f"invalid:{exc.reason}", str(exc), "validate"))
        return kept, rejected


FACTORY = Factory(ValidateConfig, lambda _cid, cfg: ValidateProcessor(cfg))
