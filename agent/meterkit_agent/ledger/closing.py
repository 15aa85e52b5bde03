"""Closed bill periods in the ledger, and the bill routes: previews, frozen bills, closing.

:class:`ClosedBills` keeps each closed period's bill in ``closed_bills`` (:mod:`.schema`),
one row per (organisation, account, period start), written once and never changed: the
JSON the ledger served for the period when it was closed, ``"status": "closed"`` and
``closed_at`` added. What it means for later bills (adjustment lines) is
:mod:`..billing.adjustments`.

Closing is idempotent and safe to race: the row is inserted only if absent (``ON CONFLICT
DO NOTHING``, in SQLite and PostgreSQL alike), then read back, so a second close, from this
process or another, answers the bill the first one froze.

:func:`bill_routes` is the API for bills, included by :func:`.api.create_app`:

- ``GET /organizations/{org}/bills?account=&from=&to=``: the account's bill for every bill
  period that intersects ``[from, to)``: a closed period's frozen bill (``"status":
  "closed"``), an open one's computed now (``"status": "open"``) with an ``adjustment``
  line for each closed period it is the first open period after.
- ``POST /organizations/{org}/bills/close`` with ``{"account": A, "period": "2026-01"}``
  (or the period's first instant): freezes that bill period's bill, 201 with ``{"bill":
  ...}``; 200 with the same frozen bill when it was closed already. A period still running
  is a 409 (``period_not_ended``); an instant that starts no bill period of the account's
  plan a 400 (``not_a_period_start``, naming the period it is in).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..billing import BillingError, ClosedBill, Plans, account_bills, bill_to_close, period_start_ms
from ..httpserver import BodyError, json_response, read_body
from .billsource import LedgerUsage
from .queries import QueryError, period
from .store import Ledger

#: a close request is an account and a period; anything larger is not one
MAX_CLOSE_REQUEST_BYTES = 16_384
#: the HTTP status of each reason a bill cannot be given or a period closed
_STATUS = {
    "unknown_account": 404,
    "empty_range": 400,
    "not_a_period_start": 400,
    "period_out_of_range": 400,
    "ambiguous_period": 409,
    "period_not_ended": 409,
}


class ClosedBills:
    """The closed bill periods of a ledger's organisations."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def of(self, org: str, account: str) -> list[ClosedBill]:
        """Every closed period of ``account``, oldest first."""
        mark = self._ledger.mark
        sql = (
            "SELECT period_start_ms, period_end_ms, closed_at_ms, bill FROM closed_bills"  # noqa: S608 - marks
            f" WHERE org = {mark} AND account = {mark} ORDER BY period_start_ms"
        )
        conn = self._ledger.connection()
        try:
            cur = conn.cursor()
            cur.execute(sql, (org, account))
            rows = cur.fetchall()
        finally:
            conn.close()
        return [ClosedBill(int(s), int(e), int(at), orjson.loads(doc)) for s, e, at, doc in rows]

    def freeze(
        self, org: str, account: str, start_ms: int, end_ms: int, closed_at_ms: int, doc: dict[str, Any]
    ) -> tuple[ClosedBill, bool]:
        """Store ``doc`` as the bill of the period starting at ``start_ms`` unless one is
        stored already (one statement: atomic, and a racing close keeps the first); the
        bill that stands, and whether it is this one."""
        mark = self._ledger.mark
        insert = (
            "INSERT INTO closed_bills (org, account, period_start_ms, period_end_ms, closed_at_ms, bill)"  # noqa: S608 - marks
            f" VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, {mark})"
            " ON CONFLICT (org, account, period_start_ms) DO NOTHING"
        )
        conn = self._ledger.connection()
        try:
            cur = conn.cursor()
            cur.execute(insert, (org, account, start_ms, end_ms, closed_at_ms, orjson.dumps(doc).decode()))
            created = cur.rowcount == 1
            conn.commit()
        finally:
            conn.close()
        stands = next(c for c in self.of(org, account) if c.start_ms == start_ms)
        return stands, created


def bill_routes(ledger: Ledger, plans: Plans | None, dependencies: Sequence[Any] = ()) -> APIRouter:
    """The bill routes over ``ledger`` priced by ``plans`` (None: the ledger was started
    without ``--plans``, and every bill route says so with a 404). ``dependencies`` are the
    API's (its bearer-token check)."""
    router = APIRouter(dependencies=list(dependencies))
    store = ClosedBills(ledger)

    @router.get("/organizations/{org_id}/bills")
    async def bills(
        org_id: str,
        account: str | None = None,
        start: Annotated[str | None, Query(alias="from")] = None,
        end: Annotated[str | None, Query(alias="to")] = None,
    ) -> Response:
        """The account's bills for the bill periods that intersect ``[from, to)``: frozen
        for a closed period, computed now with adjustments for an open one. Amounts are
        exact decimal strings."""
        if plans is None:
            return _error(404, "no bill previews: this ledger was started without --plans")
        missing = [name for name, value in (("account", account), ("from", start), ("to", end)) if not value]
        if missing:
            return _error(400, "; ".join(f"{name} is required" for name in missing))
        assert account is not None and start is not None and end is not None
        try:
            start_ms, end_ms = period(start, end)
        except QueryError as exc:
            return _error(400, "; ".join(exc.problems))
        assert start_ms is not None and end_ms is not None

        def answer() -> list[dict[str, Any]]:
            closed = store.of(org_id, account)
            return account_bills(plans, account, start_ms, end_ms, LedgerUsage(ledger, org_id), closed)

        try:
            found = await run_in_threadpool(answer)
        except BillingError as exc:
            return _refused(exc, account)
        return json_response({"bills": found})

    @router.post("/organizations/{org_id}/bills/close")
    async def close(org_id: str, request: Request) -> Response:
        """Close a bill period: its bill is frozen as it stands now (201), or was already
        (200, the frozen bill)."""
        if plans is None:
            return _error(404, "no bills to close: this ledger was started without --plans")
        try:
            body = orjson.loads(await read_body(request, MAX_CLOSE_REQUEST_BYTES) or b"null")
        except BodyError as exc:
            return _error(exc.status, exc.message, headers=exc.headers)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body is not JSON: {exc}")
        account, named = (body.get("account"), body.get("period")) if isinstance(body, dict) else (None, None)
        problems = [f"{key} is required (text)" for key, v in (("account", account), ("period", named)) if not v]
        problems += [
            f"{key} must be text"
            for key, v in (("account", account), ("period", named))
            if v and not isinstance(v, str)
        ]
        if problems:
            return _error(400, 'body must be {"account": A, "period": "2026-01"}: ' + "; ".join(problems))
        assert isinstance(account, str) and isinstance(named, str)
        try:
            start_ms = period_start_ms(named)
        except ValueError as exc:
            return _error(400, f"period: {exc}; or a month such as 2026-01", [{"reason": "bad_period"}])

        def run() -> tuple[ClosedBill, bool]:
            closed = store.of(org_id, account)
            for c in closed:
                if c.start_ms == start_ms:
                    return c, False
            now_ms = int(time.time() * 1000)
            key, doc = bill_to_close(plans, account, start_ms, LedgerUsage(ledger, org_id), closed, now_ms)
            return store.freeze(org_id, account, key[0], key[1], now_ms, doc)

        try:
            frozen, created = await run_in_threadpool(run)
        except BillingError as exc:
            return _refused(exc, account)
        return json_response({"bill": frozen.doc}, 201 if created else 200)

    return router


def _refused(exc: BillingError, account: str) -> Response:
    if exc.reason == "unknown_account":  # said without the server's path to its plans file
        return _error(404, f"account {account!r:.80} is not in the plans file", [{"reason": exc.reason}])
    return _error(_STATUS.get(exc.reason, 422), str(exc), [{"reason": exc.reason}])


def _error(
    status: int, message: str, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    return json_response(body, status, headers)
