"""A delivered batch's totals for the journal: :func:`meterkit._model.tally` per (meter,
account, hour), each bucket with its content digest (:mod:`..contentdigest`).

``tally`` walks the records one by one in Python. Here the common case (every meter,
account and timestamp a string, every numeric category an object) is done in passes the
interpreter runs in C (``map`` over ``itemgetter``), per bucket and per field code, as the
SDK's ``_frames.tally_rows`` does for its rows: the same figures, added in the same
order, so a float sum is the same float. Anything else is left to ``tally`` itself, and a
property test holds the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from itertools import chain, groupby, repeat
from operator import add, contains, itemgetter, methodcaller
from typing import Any

from meterkit._model import NUMERIC_CATEGORIES, content_digest, tally

from ..contentdigest import bucket_of, fold_digests

_meter, _account, _ts = itemgetter("meter"), itemgetter("account"), itemgetter("ts")
_hour = itemgetter(slice(0, 13))
_STR = frozenset({str})
_DICT = frozenset({dict})
_NUMBER = frozenset({int, float})
_GETS = tuple((category, methodcaller("get", category)) for category in NUMERIC_CATEGORIES)


def delivery_totals(delivered: list[dict[str, Any]], digests: Sequence[bytes] | None = None) -> list[dict[str, Any]]:
    """``tally(delivered)``, each row with the ``content`` and ``check`` of its bucket.
    ``digests``: each record's content hash as 32 bytes, when the pipeline has them."""
    if digests is None:
        digests = [content_digest(m) for m in delivered]
    rows = _quick(delivered, digests)
    if rows is not None:
        return rows
    hashes: dict[tuple[str, str, str], list[bytes]] = {}
    for m, digest in zip(delivered, digests, strict=True):
        hashes.setdefault(bucket_of(m), []).append(digest)
    totals = tally(delivered)
    for row in totals:
        row.update(fold_digests(hashes[(row["meter"], row["account"], row["hour"])]).as_json())
    return totals


def _quick(delivered: list[dict[str, Any]], digests: Sequence[bytes]) -> list[dict[str, Any]] | None:
    """The common case, or None when some record is not plain enough for it."""
    try:
        meters, accounts = list(map(_meter, delivered)), list(map(_account, delivered))
        stamps = list(map(_ts, delivered))
    except (KeyError, TypeError):
        return None
    if not (set(map(type, meters)) | set(map(type, accounts)) | set(map(type, stamps))) <= _STR:
        return None
    groups: list[tuple[tuple[str, str, str], list[int] | None]]
    if not delivered:
        groups = []
    elif len(set(meters)) == 1 and len(set(accounts)) == 1 and min(stamps)[:13] == max(stamps)[:13]:
        # One bucket (strings between two that share a prefix share it too): every record.
        groups = [((meters[0], accounts[0], stamps[0][:13]), None)]
    else:
        keys = list(zip(meters, accounts, map(_hour, stamps), strict=True))
        # A stable sort of the positions by bucket: each bucket's positions in record
        # order; buckets in the order they first appear, as tally() lists them.
        order = sorted(range(len(keys)), key=keys.__getitem__)
        groups = [(key, list(members)) for key, members in groupby(order, keys.__getitem__)]
        groups.sort(key=_first_position)
    out = []
    for (meter, account, hour), members in groups:
        records = delivered if members is None else list(map(delivered.__getitem__, members))
        sums: dict[str, Any] = {}
        for category, get in _GETS:
            if not any(map(contains, records, repeat(category))):
                continue
            values = list(filter(None, map(get, records)))
            if values and not _add_sums(category, values, sums):
                return None
        digest = fold_digests(digests if members is None else list(map(digests.__getitem__, members)))
        row = {"meter": meter, "account": account, "hour": hour + ":00:00Z", "count": len(records), "sums": sums}
        out.append(row | digest.as_json())
    return out


def _first_position(group: tuple[Any, list[int] | None]) -> int:
    members = group[1]
    return members[0] if members else 0


def _add_sums(category: str, dicts: list[Any], sums: dict[str, Any]) -> bool:
    """Add one category's numeric values code by code, in record order (the order ``tally``
    adds them in, which a float sum depends on). False if a value is not an object."""
    if not set(map(type, dicts)) <= _DICT:
        return False
    codes = dicts[0].keys()
    same = all(map(codes.__eq__, map(dict.keys, dicts)))
    if not same:
        codes = dict.fromkeys(chain.from_iterable(dicts)).keys()  # in the order first seen
    for code in codes:
        values = list(map(itemgetter(code), dicts)) if same else [d[code] for d in dicts if code in d]
        kinds = set(map(type, values))
        if not kinds <= _NUMBER:  # bool, text: not summed, as tally() skips them
            values = [v for v in values if type(v) is int or type(v) is float]
            if not values:
                continue
        total = reduce(add, values, 0) if float in kinds else sum(values)
        if type(total) is int and not -(2**63) <= total < 2**63:
            total = str(total)  # as tally() writes a whole-number sum past 64 bits
        sums[f"{category}.{code}"] = total
    return True
