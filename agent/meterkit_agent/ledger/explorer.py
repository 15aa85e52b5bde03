"""m3ter's usage query (``POST /organizations/{orgId}/usage/query``), answered by the ledger.

The official m3ter client's ``client.usage.query(...)`` asks this endpoint, so a program
written against m3ter reads the ledger's usage without a change. The answer is the
ledger's own usage query (:meth:`.store.Ledger.usage`), so it agrees with ``/usage`` and
with bills, corrections applied: a reversed measurement counts for nothing, its
replacement counts instead.

What m3ter's request says and how it is answered:

- ``aggregations`` (``meterId``, ``fieldCode``, ``fieldType``, ``function``): one data item
  per aggregation and per group: ``{"meterId", "fieldCode", "function", "accountId",
  "value"}``, plus ``"timeGroup"`` (the bucket's start) with a TIME group and the field's
  value with a DIMENSION group. ``meterId`` is the meter's code: the ledger names meters by
  code. A value is an exact JSON number, as ``/usage`` writes it.
- ``groups``: ``ACCOUNT`` (every answer is per account anyway), ``TIME`` with a
  ``frequency`` of ``HOUR``, ``DAY`` or ``MONTH``, ``DIMENSION`` with a ``fieldCode``.
- ``accountIds``, ``meterIds``, ``startDate`` (inclusive), ``endDate`` (exclusive),
  ``limit``: as m3ter defines them; with no aggregation, the data items are the stored
  measurements themselves, newest first, every row as stored (a correction's reversal
  included, as m3ter lists the negative measurement it was sent).
- What the ledger does not do (``dimensionFilters``; ``WEEK`` and ``QUARTER`` time groups)
  is refused with a 400 that names it, never ignored.

At most 20,000 data items are returned, as m3ter's documentation states; ``hasMoreData``
says when there were more.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from ..httpserver import BodyError, json_response, read_body
from ..instants import parse_instant
from .exact import json_value
from .queries import QueryError, UsageQuery
from .store import Ledger

#: m3ter returns at most this many data items per query
MAX_ITEMS = 20_000
MAX_QUERY_BYTES = 65_536
_FREQUENCIES = {"HOUR": "hour", "DAY": "day", "MONTH": "month"}


def register(app: FastAPI, ledger: Ledger, auth: list[Any]) -> None:
    """Add ``POST /organizations/{org_id}/usage/query`` to ``app``."""

    @app.post("/organizations/{org_id}/usage/query", dependencies=auth)
    async def usage_query(org_id: str, request: Request) -> Response:
        try:
            body = orjson.loads(await read_body(request, MAX_QUERY_BYTES) or b"{}")
        except BodyError as exc:
            return json_response({"message": exc.message}, exc.status, exc.headers)
        except ValueError:
            return json_response({"message": "the body is not JSON"}, 400)
        try:
            data, more = await run_in_threadpool(answer, ledger, org_id, body)
        except QueryError as exc:
            return json_response({"message": "; ".join(exc.problems)}, 400)
        return json_response({"data": data, "hasMoreData": more})


def answer(ledger: Ledger, org: str, body: Any) -> tuple[list[dict[str, Any]], bool]:
    """The data items of an m3ter usage query and whether there were more than the limit.
    Raises :class:`QueryError` naming every problem of the request at once."""
    request = _Request(body)
    if not request.aggregations:
        return request.measurements(ledger, org)
    items: list[dict[str, Any]] = []
    for query, head in request.usage_queries():
        for row in ledger.usage(org, query):
            item = {**head, "accountId": row["account"], "value": json_value(row["value"])}
            if "bucket" in row:
                item["timeGroup"] = row["bucket"]
            for code in query.group_by:
                item[code] = row.get(code)
            items.append(item)
    limit = request.limit
    return items[:limit], len(items) > limit


class _Request:
    """An m3ter usage query's body, checked: every problem is collected, then raised."""

    def __init__(self, body: Any) -> None:
        problems: list[str] = []
        if not isinstance(body, dict):
            raise QueryError(["the body must be a JSON object"])
        if body.get("dimensionFilters"):
            problems.append("dimensionFilters: the ledger does not filter by dimension; group by it instead")
        self.accounts = _strings(body, "accountIds", problems)
        self.meters = _strings(body, "meterIds", problems)
        self.start, self.end = body.get("startDate"), body.get("endDate")
        limit = body.get("limit", MAX_ITEMS)
        if type(limit) is not int or not limit > 0:
            problems.append(f"limit must be a positive whole number, got {limit!r:.40}")
            limit = MAX_ITEMS
        self.limit = min(limit, MAX_ITEMS)
        self.bucket: str | None = None
        self.dimensions: list[str] = []
        for group in body.get("groups") or []:
            kind = group.get("groupType") if isinstance(group, dict) else None
            if kind == "TIME":
                frequency = group.get("frequency")
                if frequency not in _FREQUENCIES:
                    problems.append(f"groups: TIME frequency must be HOUR, DAY or MONTH here, got {frequency!r:.40}")
                else:
                    self.bucket = _FREQUENCIES[frequency]
            elif kind == "DIMENSION" and isinstance(group.get("fieldCode"), str):
                self.dimensions.append(group["fieldCode"])
            elif kind != "ACCOUNT":
                problems.append(f"groups: expected ACCOUNT, TIME or DIMENSION with a fieldCode, got {group!r:.80}")
        self.aggregations: list[dict[str, Any]] = []
        for one in body.get("aggregations") or []:
            if not isinstance(one, dict) or not all(isinstance(one.get(k), str) for k in ("meterId", "function")):
                problems.append(f"aggregations: each needs meterId and function, got {one!r:.80}")
                continue
            if one["function"] != "COUNT" and not isinstance(one.get("fieldCode"), str):
                problems.append(f"aggregations: {one['function']:.20} of meter {one['meterId']:.80} needs a fieldCode")
                continue
            self.aggregations.append(one)
        if (self.bucket or self.dimensions) and not self.aggregations:
            problems.append("groups need aggregations (as in m3ter)")
        if problems:
            raise QueryError(problems)

    def usage_queries(self) -> list[tuple[UsageQuery, dict[str, Any]]]:
        """One ledger usage query per aggregation and account filter, with the item head."""
        out = []
        for one in self.aggregations:
            if self.meters and one["meterId"] not in self.meters:
                continue
            head = {"meterId": one["meterId"], "fieldCode": one.get("fieldCode"), "function": one["function"]}
            accounts: list[str | None] = [*self.accounts] or [None]
            for account in accounts:
                query = UsageQuery(
                    meter=one["meterId"],
                    account=account,
                    start=self.start,
                    end=self.end,
                    aggregation=one["function"],
                    target=one.get("fieldCode"),
                    bucket=self.bucket,
                    group_by=tuple(self.dimensions),
                )
                query.checked()  # a bad period or function is named before anything is read
                out.append((query, head))
        return out

    def measurements(self, ledger: Ledger, org: str) -> tuple[list[dict[str, Any]], bool]:
        """Without aggregations m3ter lists the data items themselves, newest first."""
        found: list[dict[str, Any]] = []
        everything: list[str | None] = [None]
        for meter in self.meters or everything:
            for account in self.accounts or everything:
                found.extend(ledger.rows(org, meter, account, self.start, self.end))
        found.sort(key=lambda m: (parse_instant(m["ts"], "ts"), m["uid"]), reverse=True)
        items = list(islice(found, self.limit + 1))
        return items[: self.limit], len(items) > self.limit


def _strings(body: dict[str, Any], key: str, problems: list[str]) -> list[str]:
    given = body.get(key) or []
    if not isinstance(given, list) or not all(isinstance(v, str) for v in given):
        problems.append(f"{key} must be a list of strings")
        return []
    return given
