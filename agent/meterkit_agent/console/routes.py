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
dependency) and is answered ``no-store``; the pages carry a Content-Security-Policy that
lets only the console's own script files run. A sort by a meter or field the ledger does
not know is a 400, not a list in account order. ``from`` and ``to`` are instants as the
ledger spells them (:mod:`..instants`), in whole UTC hours.
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
from .accounts import MAX_OFFSET, MAX_PAGE, AccountsQuery, PageError, account_page
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
    described = frozenset(catalog.meters) if catalog is not None else frozenset()

    @app.get("/console/api/orgs", dependencies=auth)
    async def orgs() -> Response:
        """The organisations, and what this ledger was started with: the pages never ask
        for what it cannot answer (bills and caps need ``--plans``, the privacy view
        ``--catalog``), so a browser logs no failed request for them."""
        has = {"plans": plans is not None and caps is not None, "catalog": catalog is not None}
        return _json({"orgs": await run_in_threadpool(ledger.orgs), "has": has})

    @app.get("/organizations/{org_id}/console/accounts", dependencies=auth)
    async def accounts(
        org_id: str,
        start: Annotated[str, Query(alias="from")],
        end: Annotated[str, Query(alias="to")],
        sort: str = "account",
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
        q: Annotated[str, Query(max_length=200)] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Response:
        """A page of accounts, sorted by the database; usage per meter over ``[from, to)``."""
        try:
            lo, hi = _span(start, end)
            query = AccountsQuery(lo, hi, sort, order == "desc", q, limit, offset).checked()
            return _json(await run_in_threadpool(account_page, ledger, org_id, query, described))
        except (InstantError, PageError) as exc:
            return _error(400, str(exc))

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
        return _json(await run_in_threadpool(meter_summary, ledger, org_id, lo, hi, catalog))

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
        return _json(await run_in_threadpool(limits_state, caps, plans, org_id, account, at))

    @app.get("/organizations/{org_id}/console/privacy", dependencies=auth)
    async def privacy(org_id: str) -> Response:
        """The transparency report of the ledger's catalog, with what is stored of each
        pseudonymized field."""
        if catalog is None:
            return _error(404, "started without --catalog: no meters described, no report")
        return _json(await run_in_threadpool(privacy_report, ledger, org_id, catalog))

    app.mount("/console", _Pages(directory=STATIC, html=True), name="console")


def _span(start: str, end: str) -> tuple[int, int]:
    return boundary_ms(start, "from"), boundary_ms(end, "to")


def _error(status: int, message: str) -> Response:
    return _json({"message": message}, status)


#: every console answer: data is never cached nor sniffed into something else
_DATA_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

#: the pages: scripts only from the console's own files (no inline script, no eval), so a
#: value that slipped into the page's HTML unescaped could still run nothing; inline
#: styles allowed (bar widths); no framing, no referrer, nowhere else to connect or post
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _json(body: Any, status: int = 200) -> Response:
    return json_response(body, status, _DATA_HEADERS)


class _Pages(StaticFiles):
    """The console's static files, each answered with :data:`_PAGE_HEADERS`."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(_PAGE_HEADERS)
        return response
