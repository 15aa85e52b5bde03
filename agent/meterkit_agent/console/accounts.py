"""The console's account list: a page of accounts with this period's usage per meter,
sorted and paged by the database, read from the ledger's hourly rollups (:mod:`..ledger.rollups`).

Per (account, meter) a row gives ``count``, the measurements that count (corrections
applied: ``hours`` counts every stored row, ``voids`` names the reversed ones and their
reversals, which do not count), and ``sums``, the exact sum of each number field
(``num_rollup``, which a correction rebuilds), as decimal strings. They are the numbers
``GET .../usage`` answers with ``aggregation=COUNT`` and ``SUM`` over the same whole hours.

Sorting is SQL: by account, by a meter's count, or by a meter field's sum; then by account,
so pages never overlap. The sort key is computed per account by an index probe of its one
series (``series`` is unique per organisation, meter and account), so a page costs one
probe per account of the organisation, never a read of its measurements. On SQLite, whose
exact sums are text (:mod:`..ledger.sqlfuncs`), a field sum is ordered by its nearest
double: two sums equal in their first 15 significant digits may be ordered either way (the
values shown are exact); PostgreSQL orders NUMERIC exactly.

The statements are built from placeholders and fixed names only (``# noqa: S608``): every
value, the search and the sort's meter and field included, is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..instants import HOUR_MS

if TYPE_CHECKING:  # the ledger serves the console: a runtime import would be a circle
    from ..ledger.store import Ledger

MAX_PAGE = 200
#: the highest offset asked for (a page past every account is empty; a number past 64 bits
#: would be the database driver's error, a 500)
MAX_OFFSET = 10**9
#: the ``fields`` table's flag of a code seen in a numeric category (``..ledger.codec.NUM``,
#: which the console cannot import: the ledger serves it)
NUMBER_FIELD = 1


class PageError(ValueError):
    """A parameter the account list cannot answer, named."""


@dataclass(frozen=True)
class AccountsQuery:
    """One page: ``[lo_ms, hi_ms)`` in whole hours; ``sort`` is ``account``,
    ``<meter>`` (its count) or ``<meter>.<field>`` (its sum)."""

    lo_ms: int
    hi_ms: int
    sort: str = "account"
    descending: bool = False
    search: str = ""
    limit: int = 50
    offset: int = 0

    def checked(self) -> AccountsQuery:
        problems = []
        if not self.sort:
            problems.append("sort must be account, a meter or meter.field")
        if self.lo_ms % HOUR_MS or self.hi_ms % HOUR_MS:
            problems.append("from and to must be whole UTC hours: the rollups answer per hour")
        if self.lo_ms >= self.hi_ms:
            problems.append("from must be before to")
        if not 1 <= self.limit <= MAX_PAGE:
            problems.append(f"limit must be 1..{MAX_PAGE}")
        if self.offset < 0:
            problems.append("offset must be 0 or more")
        if problems:
            raise PageError("; ".join(problems))
        return self


def _like(search: str) -> str:
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def account_page(ledger: Ledger, org: str, q: AccountsQuery, described: Collection[str] = ()) -> dict[str, Any]:
    """``{"total", "accounts": [{"account", "meters": {meter: {"count", "sums"}}}], "signals"}``;
    ``described`` are the catalog's meters (sortable before anything is stored for them).
    Raises :class:`PageError` when the sort names a meter or field the ledger does not know."""
    m = ledger.mark
    lo, hi = q.lo_ms // HOUR_MS, q.hi_ms // HOUR_MS
    where = f"org = {m}" + (f" AND account LIKE {m} ESCAPE '\\'" if q.search else "")
    base: list[Any] = [org, _like(q.search)] if q.search else [org]
    conn = ledger.connection()
    try:
        cur = conn.cursor()
        _check_sort(ledger, cur, org, q.sort, described)
        cur.execute(f"SELECT COUNT(DISTINCT account) FROM series WHERE {where}", base)  # noqa: S608
        total = int(cur.fetchone()[0])
        key, key_params = _sort_key(ledger, q, lo, hi)
        direction = "DESC" if q.descending else "ASC"
        cur.execute(
            f"SELECT a.account FROM (SELECT DISTINCT account FROM series WHERE {where}) a"  # noqa: S608
            f" LEFT JOIN series s ON s.org = {m} AND s.meter = {m} AND s.account = a.account"
            f" ORDER BY {key} {direction}, a.account {direction} LIMIT {m} OFFSET {m}",
            [*base, org, q.sort.split(".", 1)[0], *key_params, q.limit, q.offset],
        )
        accounts = [row[0] for row in cur.fetchall()]
        usage = _usage(ledger, cur, org, accounts, lo, hi)
        signals = _latest_signals(ledger, cur, org, accounts)
    finally:
        conn.close()
    return {
        "total": total,
        "accounts": [{"account": a, "meters": usage.get(a, {}), "signal": signals.get(a)} for a in accounts],
    }


def _check_sort(ledger: Ledger, cur: Any, org: str, sort: str, described: Collection[str]) -> None:
    """A sort by a meter nothing stored and no catalog names, or by a field no meter
    stored a number for, is a mistake: said, not answered with a list in account order."""
    if sort == "account":
        return
    m = ledger.mark
    meter, _, field = sort.partition(".")
    if meter not in described:
        cur.execute(f"SELECT 1 FROM series WHERE org = {m} AND meter = {m} LIMIT 1", [org, meter])  # noqa: S608
        if cur.fetchone() is None:
            raise PageError(f"sort: no meter {meter!r} in this organisation")
    if field:
        cur.execute(f"SELECT flags FROM fields WHERE meter = {m} AND code = {m}", [meter, field])  # noqa: S608
        found = cur.fetchone()
        if found is None or not int(found[0]) & NUMBER_FIELD:
            raise PageError(f"sort: meter {meter!r} has no number field {field!r}")


def _sort_key(ledger: Ledger, q: AccountsQuery, lo: int, hi: int) -> tuple[str, list[Any]]:
    m = ledger.mark
    if q.sort == "account":
        return "a.account", []
    meter, _, field = q.sort.partition(".")
    if not field:
        counted = f"(SELECT SUM(h.count) FROM hours h WHERE h.series = s.id AND h.hour >= {m} AND h.hour < {m})"  # noqa: S608
        voided = f"(SELECT COUNT(*) FROM voids v WHERE v.series = s.id AND v.hour >= {m} AND v.hour < {m})"  # noqa: S608
        return f"COALESCE({counted}, 0) - COALESCE({voided}, 0)", [lo, hi, lo, hi]
    total = "SUM(r.total)" if ledger.postgres else "CAST(mk_sum(r.total) AS REAL)"
    summed = (
        f"(SELECT {total} FROM num_rollup r WHERE r.series = s.id AND r.code = {m} AND r.hour >= {m} AND r.hour < {m})"  # noqa: S608
    )
    del meter  # the joined series is the meter's
    return f"COALESCE({summed}, 0)", [field, lo, hi]


def _usage(
    ledger: Ledger, cur: Any, org: str, accounts: list[str], lo: int, hi: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per account and meter: the count that counts and each number field's exact sum."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    if not accounts:
        return found
    m = ledger.mark
    scope = (
        f"s.org = {m} AND s.account IN ({', '.join([m] * len(accounts))}) AND {{t}}.hour >= {m} AND {{t}}.hour < {m}"
    )
    for (account, meter), entry in rollup_usage(ledger, cur, scope, [org, *accounts, lo, hi], "s.account, s.meter"):
        found.setdefault(account, {})[meter] = entry
    return found


def rollup_usage(
    ledger: Ledger, cur: Any, scope: str, params: list[Any], by: str, counted_too: str = ""
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Per group of series (``by``: the ``s.`` columns grouped by), over what ``scope``
    selects (its ``{t}.hour`` bounds apply to each rollup table): ``count``, the
    measurements that count (stored hours minus voided ones, as the ledger's usage counts),
    and ``sums``, each number field's exact sum as decimal text. ``counted_too``: one more
    aggregate over the hours, kept as ``extra``."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    extra = f", {counted_too}" if counted_too else ""
    cur.execute(
        f"SELECT {by}, SUM(h.count){extra} FROM series s JOIN hours h ON h.series = s.id"  # noqa: S608
        f" WHERE {scope.format(t='h')} GROUP BY {by}",
        params,
    )
    width = by.count(",") + 1
    for row in cur.fetchall():
        entry = found[tuple(row[:width])] = {"count": int(row[width]), "sums": {}}
        if counted_too:
            entry["extra"] = row[width + 1]
    cur.execute(
        f"SELECT {by}, COUNT(*) FROM series s JOIN voids v ON v.series = s.id"  # noqa: S608
        f" WHERE {scope.format(t='v')} GROUP BY {by}",
        params,
    )
    for row in cur.fetchall():
        found.setdefault(tuple(row[:width]), {"count": 0, "sums": {}})["count"] -= int(row[width])
    summed = "SUM(r.total)" if ledger.postgres else "mk_sum(r.total)"
    cur.execute(
        f"SELECT {by}, r.code, {summed} FROM series s JOIN num_rollup r ON r.series = s.id"  # noqa: S608
        f" WHERE {scope.format(t='r')} GROUP BY {by}, r.code",
        params,
    )
    for row in cur.fetchall():
        entry = found.setdefault(tuple(row[:width]), {"count": 0, "sums": {}})
        entry["sums"][row[width]] = exact_text(row[width + 1])
    return list(found.items())


def exact_text(value: Any) -> str:
    """A rollup sum as decimal text: SQLite's is text already, PostgreSQL's a Decimal
    (written without an exponent, trailing zeros of a whole number dropped)."""
    text = str(value)
    if "E" in text or "e" in text:
        text = format(Decimal(text), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _latest_signals(ledger: Ledger, cur: Any, org: str, accounts: list[str]) -> dict[str, dict[str, Any]]:
    """Each account's most recent notification event (a drop, a spike, a threshold)."""
    if not accounts:
        return {}
    m = ledger.mark
    names = ", ".join([m] * len(accounts))
    cur.execute(
        f"SELECT e.account, e.kind, e.meter, e.created_ms FROM signal_events e"  # noqa: S608
        f" WHERE e.org = {m} AND e.account IN ({names}) AND e.created_ms ="
        f" (SELECT MAX(x.created_ms) FROM signal_events x WHERE x.org = e.org AND x.account = e.account)",
        [org, *accounts],
    )
    return {a: {"kind": k, "meter": mt, "created_ms": int(c)} for a, k, mt, c in cur.fetchall()}
