"""Hourly rollups, kept at ingest in the transaction that stores the measurements.

For the measurements one ingest stores (never a duplicate: only uids it claimed), this
module adds up, per (series, UTC hour):

- ``hours``: how many, and their content digest (:mod:`..contentdigest`: a sum mod 2**256
  and an XOR, so adding a batch to a stored bucket is arithmetic, in any order);
- ``num_rollup`` per number field: count, exact sum (integers as integers, floats as the
  decimals they were written as: :mod:`.exact`), min, max, and the latest value;
- ``str_rollup`` per string field and value: count and when it was latest;
- ``fields``: where each code of a meter has been seen (:mod:`.codec` flags), so a query
  knows whether the rollups answer it.

The measurements of a batch are first grouped by (series, hour, shape): inside a group the
string values and the field positions are the same. A number field's values are gathered
into one column per (series, hour, code) across the groups, and each column is summed and
compared once, by C-level passes (integers natively when all are integers). The totals are then added to the stored rows
by an upsert whose arithmetic is SQL (PostgreSQL NUMERIC) or the exact functions of
:mod:`.sqlfuncs` (SQLite), with rows in key order (two ledger processes lock them in the
same order: no deadlock). On PostgreSQL each table's rows go in one statement, as one JSON
parameter whose numbers are decimal text (:func:`batch_sql`): exact, and no per-row
round of the driver.

LATEST's tie-break: the measurement with the greatest ``ts_ms`` wins; at equal ``ts_ms``,
the greatest uid (compared by code point, as Python compares strings).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, localcontext
from typing import Any

import orjson

from ..contentdigest import fold
from ..instants import HOUR_MS
from .codec import Shape
from .exact import EXACT, Number, exact

_decimals: dict[float, Decimal] = {}  # a float -> the decimal it was written as


def _decimal(value: float) -> Decimal:
    found = Decimal(repr(value))
    if value:  # 0.0 and -0.0 are one key but two decimals: zero is not cached
        if len(_decimals) > 65536:
            _decimals.clear()
        _decimals[value] = found
    return found


def exact_total(values: Sequence[int | float]) -> Number:
    """The exact sum of stored numbers: integers as integers, floats as their decimals
    (a float's decimal is cached: ``Decimal(repr(f))`` is the slow part)."""
    ints = [v for v in values if type(v) is int]
    total: Number = sum(ints)
    if len(ints) != len(values):
        known = _decimals
        decimals = [known.get(v) or _decimal(v) for v in values if type(v) is not int]
        with localcontext(EXACT):
            total = sum(decimals, Decimal(0)) + total
    return total


def extremes(values: Sequence[int | float]) -> tuple[Number, Number]:
    """(min, max), compared as the exact values they stand for. Floats among themselves and
    integers among themselves compare so natively; a mixture compares as decimals."""
    kinds = {type(v) for v in values}
    if len(kinds) == 1:
        return exact(min(values)), exact(max(values))
    exacts = [exact(v) for v in values]
    return min(exacts), max(exacts)


class Changes:
    """What a batch of new measurements adds to the rollups: its columns, and the
    measurements grouped by (series, hour, shape)."""

    def __init__(
        self,
        series: list[int],
        ms: list[int],
        uids: list[str],
        shapes: list[int],
        nums: list[list[Any]],
        digests: list[str] | None,
    ) -> None:
        """``digests``: each measurement's content hash, or None when only the usage
        rollups are wanted (:func:`replace_usage`)."""
        self.ms, self.uids, self.nums, self.digests = ms, uids, nums, digests
        self.groups: dict[tuple[int, int, int], list[int]] = {}
        groups = self.groups
        for i, key in enumerate(zip(series, [m // HOUR_MS for m in ms], shapes, strict=True)):
            group = groups.get(key)
            if group is None:
                groups[key] = [i]
            else:
                group.append(i)

    def rows(
        self, shapes: dict[int, Shape]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Rows for the hours, num_rollup and str_rollup upserts, in key order. Numbers are
        int or Decimal; each hour's digest is (count, content int, check int)."""
        hours: dict[tuple[int, int], list[int]] = {}
        columns: dict[tuple[int, int, str], list[Any]] = {}  # a field's values in an hour
        latest: dict[tuple[int, int, str], tuple[int, str, Any]] = {}
        strs: dict[tuple[int, int, str, str], list[Any]] = {}
        ms, uids, values = self.ms, self.uids, self.nums
        for (series, hour, shape_id), members in self.groups.items():
            hours.setdefault((series, hour), []).extend(members)
            last = members[0] if len(members) == 1 else max(members, key=lambda i: (ms[i], uids[i]))
            when = (ms[last], uids[last])
            shape = shapes[shape_id]
            for code, at in shape.numeric:
                key = (series, hour, code)
                column = columns.get(key)
                if column is None:
                    columns[key] = [values[i][at] for i in members]
                    latest[key] = (*when, values[last][at])
                else:
                    column += [values[i][at] for i in members]
                    if when > latest[key][:2]:
                        latest[key] = (*when, values[last][at])
            for code, value in shape.strings:
                key2 = (series, hour, code, value)
                found = strs.get(key2)
                if found is None:
                    strs[key2] = [len(members), *when]
                else:
                    found[0] += len(members)
                    if when > (found[1], found[2]):
                        found[1:] = when
        hour_rows = []
        if self.digests is not None:
            digests = self.digests
            for (series, hour), members in sorted(hours.items()):
                digest = fold([digests[i] for i in members])
                hour_rows.append((series, hour, digest.count, digest.total, digest.check))
        num_rows = []
        for key, column in sorted(columns.items()):
            lo, hi = extremes(column)
            at_ms, at_uid, last_value = latest[key]
            num_rows.append((*key, len(column), exact_total(column), lo, hi, at_ms, at_uid, exact(last_value)))
        str_rows = [(*key, *state) for key, state in sorted(strs.items())]
        return hour_rows, num_rows, str_rows


def signed64(value: int) -> int:
    """A 64-bit check as the signed integer SQL stores."""
    return value - (1 << 64) if value >= 1 << 63 else value


def unsigned64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


_MOD = 1 << 256

SQLITE_UPSERTS = (
    "INSERT INTO hours (series, hour, count, content, check_xor) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (series, hour) DO UPDATE SET count = hours.count + excluded.count,"
    " content = mk_add256(hours.content, excluded.content),"
    " check_xor = (hours.check_xor | excluded.check_xor) - (hours.check_xor & excluded.check_xor)",
    "INSERT INTO num_rollup (series, hour, code, count, total, lo, hi, latest_ms, latest_uid, latest)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (series, hour, code) DO UPDATE SET"
    " count = num_rollup.count + excluded.count, total = mk_add(num_rollup.total, excluded.total),"
    " lo = mk_least(num_rollup.lo, excluded.lo), hi = mk_greatest(num_rollup.hi, excluded.hi),"
    " latest = CASE WHEN (excluded.latest_ms, excluded.latest_uid) > (num_rollup.latest_ms, num_rollup.latest_uid)"
    " THEN excluded.latest ELSE num_rollup.latest END,"
    " latest_uid = CASE WHEN (excluded.latest_ms, excluded.latest_uid) > (num_rollup.latest_ms, num_rollup.latest_uid)"
    " THEN excluded.latest_uid ELSE num_rollup.latest_uid END,"
    " latest_ms = max(num_rollup.latest_ms, excluded.latest_ms)",
    "INSERT INTO str_rollup (series, hour, code, value, count, latest_ms, latest_uid) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (series, hour, code, value) DO UPDATE SET count = str_rollup.count + excluded.count,"
    " latest_uid = CASE WHEN (excluded.latest_ms, excluded.latest_uid) > (str_rollup.latest_ms, str_rollup.latest_uid)"
    " THEN excluded.latest_uid ELSE str_rollup.latest_uid END,"
    " latest_ms = max(str_rollup.latest_ms, excluded.latest_ms)",
)


def batch_sql(types: Sequence[str], lead: str = "") -> str:
    """A SELECT of a batch's rows from one JSON parameter (:func:`batch_json`), column k
    cast to ``types[k]`` after the ``lead`` columns, in the order they were given (the
    caller's lock order). One statement for a whole batch, encoded by orjson's C: psycopg's
    ``executemany`` sends one statement per row, and its dump of Python lists to arrays
    costs a microsecond or two an element."""
    columns = ", ".join(f"(r->>{k})::{t}" for k, t in enumerate(types))
    return f"SELECT {lead}{columns} FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS batch(r, n) ORDER BY n"  # noqa: S608 - constant types


def batch_json(rows: Sequence[Sequence[Any]]) -> str:
    """Rows of int, str or None as one JSON text; a number a JSON number cannot carry
    exactly (a Decimal, an integer past 64 bits) goes as its decimal text."""
    return orjson.dumps(rows).decode()


POSTGRES_UPSERTS = (
    "INSERT INTO hours (series, hour, count, content, check_xor) "
    + batch_sql(("int", "int", "bigint", "numeric", "bigint"))
    + " ON CONFLICT (series, hour) DO UPDATE SET count = hours.count + excluded.count,"
    f" content = mod(hours.content + excluded.content, {_MOD}),"
    " check_xor = hours.check_xor # excluded.check_xor",
    "INSERT INTO num_rollup (series, hour, code, count, total, lo, hi, latest_ms, latest_uid, latest) "
    + batch_sql(("int", "int", "text", "bigint", "numeric", "numeric", "numeric", "bigint", "text", "numeric"))
    + " ON CONFLICT (series, hour, code) DO UPDATE SET"
    " count = num_rollup.count + excluded.count, total = num_rollup.total + excluded.total,"
    " lo = least(num_rollup.lo, excluded.lo), hi = greatest(num_rollup.hi, excluded.hi),"
    " latest = CASE WHEN (excluded.latest_ms, excluded.latest_uid) > (num_rollup.latest_ms, num_rollup.latest_uid)"
    " THEN excluded.latest ELSE num_rollup.latest END,"
    " latest_uid = CASE WHEN (excluded.latest_ms, excluded.latest_uid) > (num_rollup.latest_ms, num_rollup.latest_uid)"
    " THEN excluded.latest_uid ELSE num_rollup.latest_uid END,"
    " latest_ms = greatest(num_rollup.latest_ms, excluded.latest_ms)",
    "INSERT INTO str_rollup (series, hour, code, value, count, latest_ms, latest_uid) "
    + batch_sql(("int", "int", "text", "text", "bigint", "bigint", "text"))
    + " ON CONFLICT (series, hour, code, value) DO UPDATE SET count = str_rollup.count + excluded.count,"
    " latest_uid = CASE WHEN (excluded.latest_ms, excluded.latest_uid) > (str_rollup.latest_ms, str_rollup.latest_uid)"
    " THEN excluded.latest_uid ELSE str_rollup.latest_uid END,"
    " latest_ms = greatest(str_rollup.latest_ms, excluded.latest_ms)",
)


def upsert(cur: Any, postgres: bool, changes: Changes, shapes: dict[int, Shape]) -> None:
    """Add a batch's rollups to the stored ones, in the caller's transaction: on PostgreSQL
    one statement per table, its rows in key order."""
    hour_rows, num_rows, str_rows = changes.rows(shapes)
    hours_sql, nums_sql, strs_sql = POSTGRES_UPSERTS if postgres else SQLITE_UPSERTS
    content = str if postgres else "{:064x}".format  # NUMERIC(78, 0), or SQLite's hex text
    hour_params = [(s, h, n, content(total), signed64(check)) for s, h, n, total, check in hour_rows]
    num_params = [(*r[:4], str(r[4]), str(r[5]), str(r[6]), r[7], r[8], str(r[9])) for r in num_rows]
    if postgres:
        for sql, rows in ((hours_sql, hour_params), (nums_sql, num_params), (strs_sql, str_rows)):
            if rows:
                cur.execute(sql, (batch_json(rows),))
        return
    cur.executemany(hours_sql, hour_params)
    cur.executemany(nums_sql, num_params)
    if str_rows:
        cur.executemany(strs_sql, str_rows)


def replace_usage(
    cur: Any, postgres: bool, hours: Sequence[tuple[int, int]], changes: Changes, shapes: dict[int, Shape]
) -> None:
    """Rebuild the usage rollups (``num_rollup``, ``str_rollup``) of these (series, hour)
    from ``changes``, the measurements of those hours that count (:mod:`.corrections`),
    in the caller's transaction. ``hours`` (count and content digest of every stored row)
    is left as it is."""
    mark = "%s" if postgres else "?"
    for table in ("num_rollup", "str_rollup"):
        cur.executemany(f"DELETE FROM {table} WHERE series = {mark} AND hour = {mark}", list(hours))  # noqa: S608
    _, num_rows, str_rows = changes.rows(shapes)
    _, nums_sql, strs_sql = POSTGRES_UPSERTS if postgres else SQLITE_UPSERTS
    num_params = [(*r[:4], str(r[4]), str(r[5]), str(r[6]), r[7], r[8], str(r[9])) for r in num_rows]
    if postgres:
        for sql, rows in ((nums_sql, num_params), (strs_sql, str_rows)):
            if rows:
                cur.execute(sql, (batch_json(rows),))
        return
    if num_params:
        cur.executemany(nums_sql, num_params)
    if str_rows:
        cur.executemany(strs_sql, str_rows)
