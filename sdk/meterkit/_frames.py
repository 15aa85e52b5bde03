"""Batch frames (spool format version 2): a whole flusher batch in one frame.

In production mode the application pays least (DESIGN.md §2): the flusher does no
per-measurement Python work for a plain measurement. It writes the batch's positional rows,
as the hot path captured them, with one ``orjson.dumps`` (about 0.15 µs a measurement,
where building and writing a wire dict each costs about 3 µs). Uid text, ISO timestamps
and the wire dicts are made by :func:`batch_records`, in the agent, which validates them
against the catalog. ``docs/spool-format.md`` describes the same bytes for people.

Payload, a JSON object::

    {"uids": "<uid prefix>", "first": <n>, "width": 11, "rows": [...]}

``rows`` is flat: row ``i`` is the ``width`` values from position ``i * width``::

    ts_ns, meter, account, who, what, where, other, metadata, measure, income, cost

and, with ``"width": 13`` (a batch where some caller gave them), ``ets_ns`` and ``uid``
(each null when not given). A category is an object, or null when empty. Unless the row
carries its own uid, it is ``uids`` followed by 12 hex digits of ``(first + i) mod 2**48``
(see ``_model.UidSource``): unique per writer, like the uids the SDK assigned before.
Flat, because the hot path queues a measurement's values flat (``_batch``: no tuple per
measurement for the garbage collector to walk) and the flusher writes them as they are.

:func:`tally_rows` is the flusher's tally of the rows it frames, without a Python loop
per row: it equals :func:`meterkit._model.tally` of :func:`batch_records` of the frame.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter, deque
from collections.abc import Sequence
from functools import reduce
from itertools import chain, compress, repeat
from operator import add, floordiv, itemgetter
from typing import Any

import orjson

from ._model import CATEGORIES, NUMERIC_CATEGORIES
from ._timefmt import MAX_NS, MIN_NS, iso_ms

#: Row positions.
ROW_TS, ROW_METER, ROW_ACCOUNT = 0, 1, 2
ROW_FIELDS = slice(3, 11)  # who, what, where, other, metadata, measure, income, cost
ROW_ETS, ROW_UID = 11, 12
ROW_SIZE = 11  # the width without the optional ets and uid
WIDE = 13
SEQ_MASK = 0xFFFFFFFFFFFF  # the 48-bit counter of a uid
HOUR_NS = 3_600_000_000_000

#: datetime and dataclass values are not written as JSON text: they are not field values
#: (the flusher isolates the row and names the problem, as validation would).
DUMPS_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_NUMERIC_AT = tuple((c, 3 + CATEGORIES.index(c)) for c in NUMERIC_CATEGORIES)


def encode_batch(prefix: str, first: int, rows: Sequence[Any], width: int = ROW_SIZE) -> bytes:
    """The payload of a batch frame for flat ``rows``. Raises ``orjson.JSONEncodeError`` (a
    ``TypeError``) if a row holds a value JSON cannot carry; the flusher then isolates it."""
    return orjson.dumps({"uids": prefix, "first": first, "width": width, "rows": rows}, option=DUMPS_OPTIONS)


def batch_records(payload: bytes) -> list[dict[str, Any]]:
    """The measurements of a batch frame, in m3ter's wire shape, in row order.

    They are not validated: a malformed row still becomes a dict (with what it holds), for
    the agent's validation to refuse alone, with a reason. A null field value is left out,
    as :func:`meterkit._model.build` leaves out a ``None``. Raises :class:`ValueError` when
    the payload is not a batch frame at all.
    """
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a batch frame: the payload is not JSON ({exc})") from None
    if type(body) is not dict:
        raise ValueError("not a batch frame: the payload is not a JSON object")
    prefix, first, width, flat = body.get("uids"), body.get("first"), body.get("width"), body.get("rows")
    if type(prefix) is not str or type(first) is not int or width not in (ROW_SIZE, WIDE) or type(flat) is not list:
        raise ValueError(
            'not a batch frame: it needs "uids" (text), "first" (a whole number), "width" (11 or 13)'
            ' and "rows" (a list)'
        )
    try:
        if width != ROW_SIZE or len(flat) % width:
            raise ValueError("not plain")
        out = _plain_rows(prefix, first, flat)
    except (TypeError, ValueError):  # ets or a uid of the caller's, or a malformed row
        rows: list[Any] = list(zip(*[iter(flat)] * width, strict=False))  # a torn last row is kept below
        if len(flat) % width:
            rows.append(flat[len(rows) * width :])  # a torn last row: refused alone by validation
        out = [_odd_row(row, _uid(prefix, first + i)) for i, row in enumerate(rows)]
    if _null_value(payload):  # a null field value somewhere (or that text inside a string)
        out = [_without_nulls(m) for m in out]
    return out


class _Stamps(dict[int, str]):
    """Wire text by millisecond: consecutive rows share one, so most rows cost a lookup."""

    def __missing__(self, ms: int) -> str:
        ns = ms * 1_000_000
        if not MIN_NS <= ns <= MAX_NS:
            raise ValueError(ns)
        text = self[ms] = iso_ms(ns)
        return text


_null_value = re.compile(rb":null").search  # faster than bytes.__contains__ for this needle
_LOW = [f"{n:03x}" for n in range(4096)]  # the last three hex digits of a uid


def _uids(prefix: str, first: int, count: int) -> list[str]:
    """``_uid(prefix, first + i)`` for each ``i < count`` (no wrap past 48 bits): the
    first nine digits once per 4096 uids, the last three from a table, so a uid costs one
    string addition."""
    out: list[str] = []
    end = first + count
    while first < end:
        stop = min(end, (first | 0xFFF) + 1)
        head = f"{prefix}{first >> 12:09x}"
        out += map(head.__add__, _LOW[first & 0xFFF : (stop - 1 & 0xFFF) + 1])
        first = stop
    return out


_INT = frozenset({int})


def _plain_rows(prefix: str, first: int, flat: list[Any]) -> list[dict[str, Any]]:
    """The common case, column by column (a column is a slice of the flat rows), with the
    per-row work done in C: uid text and timestamps by ``map``, each record's identity by
    one dict display, and each category set by ``map`` on the records whose value is not
    empty. The keys come in the same order as a row's. Raises TypeError or ValueError if
    some row is not a plain one (an integer time in range)."""
    count = len(flat) // ROW_SIZE
    if (first & SEQ_MASK) + count > SEQ_MASK + 1:
        raise ValueError("the uid counter wraps inside this batch")
    stamps = flat[ROW_TS::ROW_SIZE]
    if set(map(type, stamps)) != _INT:  # floordiv takes floats too, but only an integer is a row's time
        raise TypeError("a row's time is not an integer")
    uids = _uids(prefix, first & SEQ_MASK, count)
    texts = map(_Stamps().__getitem__, map(floordiv, stamps, repeat(1_000_000)))
    meters, accounts = flat[ROW_METER::ROW_SIZE], flat[ROW_ACCOUNT::ROW_SIZE]
    out = [
        {"uid": uid, "meter": meter, "account": account, "ts": text}
        for uid, meter, account, text in zip(uids, meters, accounts, texts, strict=True)
    ]
    for at, category in enumerate(CATEGORIES, ROW_FIELDS.start):
        column = flat[at::ROW_SIZE]
        if all(column):
            deque(map(dict.__setitem__, out, repeat(category), column), maxlen=0)
        elif any(column):  # some rows only: an empty category is left out
            deque(map(dict.__setitem__, compress(out, column), repeat(category), filter(None, column)), maxlen=0)
    return out


def _uid(prefix: str, n: int) -> str:
    return f"{prefix}{n & SEQ_MASK:012x}"


def _stamp(ns: Any) -> str:
    """A row's nanoseconds as wire text; raises ValueError for anything else."""
    if type(ns) is not int or not MIN_NS <= ns <= MAX_NS:
        raise ValueError(ns)
    return iso_ms(ns)


def _odd_row(row: Any, uid: str) -> dict[str, Any]:
    """A row with ets or its own uid, or a malformed one: as much of a measurement as it holds."""
    m: dict[str, Any] = {"uid": uid}
    for i, key in enumerate(("ts", "meter", "account", *CATEGORIES, "ets", "uid")):
        if i >= len(row):
            break
        value = row[i]
        if key in ("ts", "ets") and type(value) is int:
            with contextlib.suppress(ValueError):  # out of range: validation names it
                value = _stamp(value)
        if value is not None or (i < ROW_SIZE and key in ("meter", "account")):
            m[key] = value
    if len(row) not in (ROW_SIZE, WIDE):
        m["batch_row"] = list(row)  # a torn row: refused by validation as an unknown key, alone
    for category in CATEGORIES:
        if category in m and not m[category]:
            del m[category]
    return m


def _without_nulls(m: dict[str, Any]) -> dict[str, Any]:
    for category in CATEGORIES:
        values = m.get(category)
        if type(values) is dict and None in values.values():
            kept = {k: v for k, v in values.items() if v is not None}
            if kept:
                m[category] = kept
            else:
                del m[category]
    return m


# ---------------------------------------------------------------------------------------
# The tally of a batch, as the flusher writes it beside the frame

_NUMBER = frozenset({int, float})
_DICT = frozenset({dict})


def tally_rows(flat: list[Any], width: int = ROW_SIZE) -> list[dict[str, Any]] | None:
    """Per (meter, account, hour): count and sums, as :func:`meterkit._model.tally` gives
    them for the decoded rows, in C-level passes over the batch: a column is a slice of the
    flat rows (``flat[1::width]`` is every meter), one hour per batch unless it spans more,
    one ``Counter`` unless one meter and one account fill the batch, and sums only of the
    categories some row has.

    ``None`` when a row holds what the shortcut does not handle (a meter or account that is
    not text, a category that is not an object): the caller tallies the decoded records.
    """
    if not flat:
        return []
    stamps = flat[ROW_TS::width]
    try:
        first = min(stamps) // HOUR_NS
        single = max(stamps) // HOUR_NS == first
    except TypeError:
        return None
    if single:
        return _one_hour(flat, width, first)
    hours: dict[int, list[Any]] = {}
    for i, stamp in enumerate(stamps):
        hours.setdefault(stamp // HOUR_NS, []).extend(flat[i * width : (i + 1) * width])
    out: list[dict[str, Any]] = []
    for hour, part in hours.items():
        entries = _one_hour(part, width, hour)
        if entries is None:
            return None
        out.extend(entries)
    return out


def _one_hour(flat: list[Any], width: int, hour: int) -> list[dict[str, Any]] | None:
    meters, accounts = flat[ROW_METER::width], flat[ROW_ACCOUNT::width]
    try:
        one = len(set(meters)) == 1 and len(set(accounts)) == 1
        counts = (
            Counter({(meters[0], accounts[0]): len(meters)}) if one else Counter(zip(meters, accounts, strict=True))
        )
    except TypeError:  # unhashable
        return None
    if not all(type(m) is str and type(a) is str for m, a in counts):
        return None
    text = iso_ms(hour * HOUR_NS)[:13] + ":00:00Z"
    sums: dict[tuple[str, str], dict[str, Any]] = {key: {} for key in counts}
    for category, at in _NUMERIC_AT:
        column = flat[at::width]
        if not any(column):
            continue
        if one:
            groups: dict[tuple[str, str], list[Any]] = {(meters[0], accounts[0]): list(filter(None, column))}
        else:
            groups = {}
            for key, values in zip(zip(meters, accounts, strict=True), column, strict=True):
                if values:
                    groups.setdefault(key, []).append(values)
        for key, dicts in groups.items():
            if not _add_sums(category, dicts, sums[key]):
                return None
    return [{"meter": m, "account": a, "hour": text, "count": n, "sums": sums[(m, a)]} for (m, a), n in counts.items()]


def _add_sums(category: str, dicts: list[Any], sums: dict[str, Any]) -> bool:
    """Add the sums of one category's numeric values, code by code, in row order (the
    order :func:`meterkit._model.tally` adds them in: a float sum depends on it)."""
    columns = _columns(dicts)
    if columns is None:
        if not set(map(type, dicts)) <= _DICT:
            return False
        codes = dict.fromkeys(chain.from_iterable(dicts))  # in the order first seen
        columns = {code: [d[code] for d in dicts if code in d] for code in codes}
    for code, values in columns.items():
        kinds = set(map(type, values))
        if not kinds <= _NUMBER:  # bool, text, null...: not summed, as tally() skips them
            values = [v for v in values if type(v) is int or type(v) is float]
            if not values:
                continue
        total = sum(values) if float not in kinds else reduce(add, values, 0)
        if type(total) is int and not -(2**63) <= total < 2**63:
            total = str(total)  # as tally() writes a whole-number sum past 64 bits
        sums[f"{category}.{code}"] = total
    return True


def _columns(dicts: list[Any]) -> dict[str, list[Any]] | None:
    """{code: values} when every dict has the same codes (the common case), else None."""
    first = dicts[0]
    try:
        if set(map(len, dicts)) != {len(first)}:
            return None
        return {code: list(map(itemgetter(code), dicts)) for code in first}
    except (KeyError, TypeError):  # another code, or not a dict
        return None
