"""The console's routes, added to the ledger's app by :func:`register`.

- ``/console/``: the pages (static files, no data in them, served without a token so a
  browser can load them and then ask for it);
- ``GET /console/api/orgs``: the organisations with something stored;
- ``GET /organizations/{org}/console/accounts?from=&to=&sort=&order=&q=&limit=&offset=``:
  a page of accounts with their usage per meter (:mod:`.accounts`);
- ``GET /organizations/{org}/console/meters?from=&to=``: usage per meter and per field
  value across accounts (:func:`.meters.meter_summary`);
- ``GET /organizations/{org}/console/limits?account=&as_of=``: each cap of the given
  accounts' plans, its use to date and percentage (:mod:`.limits`); 404 without ``--plans``;
- ``GET /organizations/{org}/console/privacy``: the transparency report of the ledger's
  catalog (:func:`.meters.privacy_report`); 404 without ``--catalog``.

Every JSON route needs the ledger's token when one is set (``auth``, the API's own
dependency). ``from`` and ``to`` are instants as the ledger spells them (:mod:`..instants`),
in whole UTC hours.
"""

# No ``from __future__ import annotations``: FastAPI reads route annotations (as in ..ledger.digests).

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from meterkit import Catalog

from ..billing import Plans
from ..httpserver import json_response
from ..instants import InstantError, boundary_ms
from .accounts import MAX_PAGE, AccountsQuery, PageError, account_page
from .limits import CapBalances, limits_state
from .meters import meter_summary, privacy_report

if TYPE_CHECKING:  # the ledger serves the console: a runtime import would be a circle
    from ..ledger.store import Ledger

STATIC = Path(__file__).parent / "static"


def register(
    app: FastAPI,
    ledger: "Ledger",
    auth: list[Any],
    catalog: Catalog | None,
    plans: Plans | None,
    caps: CapBalances | None,
) -> None:
    """Add the console's pages and routes to the ledger's ``app``; ``auth`` are the API's
    dependencies (its bearer token), ``caps`` the ledger's cap balances (None without plans)."""

    @app.get("/console/api/orgs", dependencies=auth)
    async def orgs() -> Response:
        return json_response({"orgs": await run_in_threadpool(ledger.orgs)})

    @app.get("/organizations/{org_id}/console/accounts", dependencies=auth)
    async def accounts(
        org_id: str,
        start: Annotated[str, Query(alias="from")],
        end: Annotated[str, Query(alias="to")],
        sort: str = "account",
        order: str = "asc",
        q: Annotated[str, Query(max_length=200)] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        """A page of accounts, sorted by the database; usage per meter over ``[from, to)``."""
        try:
            lo, hi = _span(start, end)
            query = AccountsQuery(lo, hi, sort, order.lower() == "desc", q, limit, offset).checked()
        except (InstantError, PageError) as exc:
            return _error(400, str(exc))
        return json_response(await run_in_threadpool(account_page, ledger, org_id, query))

    @app.get("/organizations/{org_id}/console/meters", dependencies=auth)
    async def meters(
        org_id: str, start: Annotated[str, Query(alias="from")], end: Annotated[str, Query(alias="to")]
    ) -> Response:
        """Usage per meter and per field value, across accounts; unused meters flagged."""
        try:
            lo, hi = _span(start, end)
            AccountsQuery(lo, hi).checked()
        except (InstantError, PageError) as exc:
            return _error(400, str(exc))
        return json_response(await run_in_threadpool(meter_summary, ledger, org_id, lo, hi, catalog))

    @app.get("/organizations/{org_id}/console/limits", dependencies=auth)
    async def limits(
        org_id: str,
        account: Annotated[list[str], Query()],
        as_of: str | None = None,
    ) -> Response:
        """The caps of these accounts' plans, their use to date and its percentage."""
        if plans is None or caps is None:
            return _error(404, "started without --plans: no caps")
        if len(account) > MAX_PAGE:
            return _error(400, f"at most {MAX_PAGE} accounts at a time")
        try:
            at = time.time_ns() // 1_000_000 if as_of is None else boundary_ms(as_of, "as_of")
        except InstantError as exc:
            return _error(400, str(exc))
        return json_response(await run_in_threadpool(limits_state, caps, plans, org_id, account, at))

    @app.get("/organizations/{org_id}/console/privacy", dependencies=auth)
    async def privacy(org_id: str) -> Response:
        """The transparency report of the ledger's catalog, with what is stored of each
        pseudonymized field."""
        if catalog is None:
            return _error(404, "started without --catalog: no meters described, no report")
        return json_response(await run_in_threadpool(privacy_report, ledger, org_id, catalog))

    app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")


def _span(start: str, end: str) -> tuple[int, int]:
    return boundary_ms(start, "from"), boundary_ms(end, "to")


def _error(status: int, message: str) -> Response:
    return json_response({"message": message}, status)
