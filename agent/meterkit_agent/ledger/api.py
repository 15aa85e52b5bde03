"""The ledger's HTTP API: m3ter's ingest shape, plus usage queries and bill previews.

- ``POST /organizations/{orgId}/measurements`` with ``{"measurements": [...]}``: at most
  1,000 measurements and 512,000 bytes per request (m3ter's ingest limits), as sent and
  once decompressed, enforced as the body arrives (a chunked body is refused with a 413 as
  soon as it passes the limit); gzip or deflate, any other ``Content-Encoding`` is a 415
  (``httpserver.read_body``). A request with
  any bad measurement is refused whole with a 400 naming each bad one by index and uid, so
  a client can resend the rest. A measurement whose uid is already stored is acknowledged
  and never counted twice: the first content stored for a uid stands (inside one request,
  the first occurrence). The answer is m3ter's ``{"result": "accepted"}`` plus the counts
  ``accepted`` (stored now), ``duplicates`` (re-sent with the same content), ``conflicts``
  (re-sent with different content, not stored) and ``conflictingUids``.
- Trusted ingest: a request authenticated with the ledger's bearer token (or a token from
  its ``/oauth/token``) whose ``Meterkit-Validated`` header equals the ledger's own
  :func:`meterkit._model.validation_token` (the same rules and catalog digest) was
  validated by a meterkit agent already; checking it again could only give the same
  answer, and cost two thirds of the API's own CPU per measurement. Its measurements are
  taken as sent when they are in the exact shape validation gives
  (:func:`..httpserver.canonical`, a few C-speed checks per column), and validated as
  usual otherwise, so a trusted request stores the same content an untrusted one would.
  Without authentication configured nothing is trusted. A wrong header is not an error:
  the request is validated.
- Corrections (:mod:`.corrections`): a measurement carrying ``correction`` or ``batch`` is
  stored with it. A reversal whose original is stored for another meter or account is
  refused by itself: a 400 naming it (index, uid, reason ``bad_correction``, both meters
  and accounts) after the rest of the request was stored, so a client resends the rest as
  duplicates. ``GET /organizations/{orgId}/measurements/{uid}`` answers the stored
  measurement plus ``corrected`` (``reversed_by``, ``replaced_by``: uids or null);
  ``GET /organizations/{orgId}/measurements?batch=&after=&limit=`` lists a backfill
  batch's measurements in uid order, ``limit`` (at most 10,000, default 1,000) a page,
  ``next`` the ``after`` of the next page.
- ``GET /organizations/{orgId}/conflicts?uid=&limit=``: those conflicting re-sends, each
  with the digest of the content that stands, the refused content and when it was seen.
- ``GET /organizations/{orgId}/usage``: aggregations per account, bucket and segment.
  ``from`` and ``to`` are instants in any ISO 8601 spelling with an offset, or dates
  (midnight UTC), compared as instants, ``[from, to)`` (:mod:`.instants`). Values are
  exact (:mod:`.exact`): each is a JSON number literal holding the exact decimal, an
  integer when whole; parse numbers as decimals to keep them exact (Python:
  ``json.loads(text, parse_float=Decimal)``). A bad parameter (a time that is not one, a
  ``quantityPerUnit`` outside [1e-9, 1e18], an unknown aggregation) is a 400 naming it;
  with a catalog, so is a meter or field it does not have. An organisation or meter with
  nothing stored answers an empty ``data`` and a ``notes`` entry saying so: organisations
  are not provisioned here, one exists once something is stored for it.
- ``GET /organizations/{orgId}/bills?account=&from=&to=``, when the ledger was started
  with a plans file (``--plans``; otherwise a 404 saying so): the account's bill for every
  bill period that intersects ``[from, to)`` (:func:`..billing.bill`), each with its lines,
  per-band breakdown, standing charge, minimum-spend true-up, credits and ``total``, every
  amount an exact decimal string (``"135.00"``), priced from the same exact aggregates
  ``/usage`` answers (:mod:`.billsource`). ``from`` and ``to`` follow the rules above; a
  missing or bad one, or an empty range, is a 400 naming it; an account the plans file
  does not name is a 404; usage that cannot be priced (a negative quantity, a LATEST that is not a number) is a 422.
  ``POST /organizations/{orgId}/bills/close`` freezes an ended bill period's bill; a
  closed period's bill is the frozen one ever after, and a later change to its usage is an
  adjustment line on the next open period's bill. These routes are :mod:`.closing`'s.
- ``GET /organizations/{orgId}/measurements/{uid}`` (with ``corrected``: what reversed
  and replaced it) and ``GET /organizations/{orgId}/measurements?batch=`` (a backfill's
  measurements, paged): :mod:`.corrections`.
- ``POST /organizations/{orgId}/usage/query``: m3ter's usage query (:mod:`.explorer`).
- ``POST /organizations/{orgId}/privacy/erase`` and ``.../privacy/retain``: erasure and
  retention passes (:mod:`.erasure`, :mod:`.retention`).
- ``GET /organizations/{orgId}/balances`` (cap balances, with ``--plans``) and
  ``GET /organizations/{orgId}/notifications``: :mod:`.notices`.
- ``/console/``: the usage console's pages, and the JSON routes only they need
  (:mod:`..console`); every data call needs the token.
- ``GET /health``: ``{"status": "ok"}`` while the process serves, and nothing else; no
  token needed (a liveness probe has none). With a token (or client credentials) set,
  ``GET /openapi.json`` needs it too, and ``/docs`` and ``/redoc`` are not served
  (:func:`..httpserver.api_docs`).
"""

from __future__ import annotations

import base64
import functools
import hmac
import secrets
import time
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from meterkit import Catalog, MeasurementError
from meterkit._model import check_org, validation_token

from ..billing import Plans
from ..console import register as register_console
from ..httpserver import BodyError, api_docs, bearer_ok, json_response, read_body, serve_openapi, validate_items
from ..signals import SignalsSettings
from . import corrections
from .balances import balances, caps_held
from .closing import bill_routes
from .digests import register as register_reconciliation
from .exact import json_value
from .explorer import register as register_explorer
from .metersapi import register as register_meters
from .notices import notice_routes
from .privacyroutes import register as register_erasure
from .queries import QueryError, UsageQuery, catalog_problems
from .retention import register as register_retention
from .signalsrun import SignalsRuntime
from .store import Ledger

MAX_MEASUREMENTS = 1_000
MAX_REQUEST_BYTES = 512_000
#: the most measurements one page of a backfill batch's listing holds
MAX_BATCH_PAGE = 10_000
#: a client-credentials request is a line of JSON or a form; anything larger is not one
MAX_TOKEN_REQUEST_BYTES = 16_384
#: names the rules and catalog the sender validated a request's measurements against
VALIDATED_HEADER = "Meterkit-Validated"


def create_app(
    ledger: Ledger,
    *,
    token: str | None = None,
    catalog: Catalog | None = None,
    client_credentials: tuple[str, str] | None = None,
    token_ttl_seconds: int = 3600,
    plans: Plans | None = None,
    signals: SignalsSettings | None = None,
) -> FastAPI:
    """The ledger's API. ``token`` is a fixed bearer token; ``client_credentials`` (id,
    secret) also enables m3ter's ``POST /oauth/token`` exchange, whose tokens expire after
    ``token_ttl_seconds``. With neither, requests are not authenticated. ``plans`` (a
    checked plans file) enables bill previews, cap balances and threshold notifications;
    ``signals`` webhooks and trends (:mod:`.signalsrun`, started by the app's lifespan)."""
    runtime = SignalsRuntime(ledger, plans, signals)
    app = FastAPI(
        title="meterkit ledger",
        version="1",
        description="An m3ter-compatible ingest API and usage queries, backed by SQLite or PostgreSQL.",
        lifespan=runtime.lifespan,
        **api_docs(bool(token) or client_credentials is not None),
    )
    app.state.signals = runtime
    expected = token.encode() if token else None
    issued: dict[str, float] = {}  # access token -> expiry (monotonic)
    # Only an authenticated sender can be trusted; an open ledger validates everything.
    trust = validation_token(catalog) if expected is not None or client_credentials is not None else None

    async def authorize(request: Request) -> None:
        # async: a few comparisons, which FastAPI would otherwise run in its thread pool
        # (a thread hop per request, a third of the API's CPU on an empty one)
        if expected is None and client_credentials is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        fresh = issued.get(given, 0.0) > time.monotonic() if scheme.lower() == "bearer" else False
        if not fresh and not (expected is not None and bearer_ok(request, expected)):
            raise HTTPException(
                status_code=401, detail="missing, wrong or expired bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    auth = [Depends(authorize)]
    if expected is not None or client_credentials is not None:
        serve_openapi(app, auth)  # the API's description, for whoever may call it

    if client_credentials is not None:
        basic = base64.b64encode(f"{client_credentials[0]}:{client_credentials[1]}".encode()).decode()

        @app.post("/oauth/token")
        async def oauth_token(request: Request) -> Response:
            """m3ter's client-credentials exchange: Basic id:secret, grant_type=client_credentials."""
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Basic {basic}".encode()):
                return _error(401, "wrong client credentials")
            try:
                raw = await read_body(request, MAX_TOKEN_REQUEST_BYTES)
            except BodyError as exc:
                return _error(exc.status, exc.message, headers=exc.headers)
            try:
                body = orjson.loads(raw or b"{}")
            except orjson.JSONDecodeError:
                body = {}
            if isinstance(body, dict) and body.get("grant_type", "client_credentials") != "client_credentials":
                return _error(400, "grant_type must be client_credentials")
            now = time.monotonic()
            for stale in [t for t, until in issued.items() if until <= now]:
                del issued[stale]
            access = secrets.token_urlsafe(32)
            issued[access] = now + token_ttl_seconds
            return json_response({"access_token": access, "token_type": "Bearer", "expires_in": token_ttl_seconds})

    @app.get("/health")
    async def health() -> Response:
        """Alive: nothing about what is stored, and no token needed."""
        return json_response({"status": "ok"})

    @app.post("/organizations/{org_id}/measurements", dependencies=auth)
    async def ingest(org_id: str, request: Request) -> Response:
        try:
            check_org(org_id)
        except MeasurementError as exc:
            return _error(400, exc.problem.message)
        try:
            body = await read_body(request, MAX_REQUEST_BYTES)
        except BodyError as exc:
            return _error(exc.status, exc.message, headers=exc.headers)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body is not JSON: {exc}")
        items = doc.get("measurements") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            return _error(400, 'body must be {"measurements": [...]}')
        if len(items) > MAX_MEASUREMENTS:
            return _error(400, f"{len(items)} measurements; at most {MAX_MEASUREMENTS} per request")
        # `authorize` has run: the request is authenticated whenever `trust` is set.
        trusted = trust is not None and request.headers.get(VALIDATED_HEADER) == trust
        good, errors = validate_items(items, catalog, trusted)
        if errors:
            return _error(400, f"{len(errors)} of {len(items)} measurements are invalid; none were stored", errors)
        try:
            ingested = await _run(ledger.ingest, org_id, good)
        except ValueError as exc:  # a trusted `ts` in the wire spelling that is no time (2026-02-30...)
            return _error(400, f"none were stored: {exc}")
        if ingested.refused:  # refused one by one, by what is stored: the rest of the batch was
            n = len(ingested.refused)
            message = f"{n} of {len(items)} measurements were refused; the rest were stored"
            return json_response(
                {"message": message, "errors": [r.as_error() for r in ingested.refused], **ingested.answer()}, 400
            )
        return json_response({"result": "accepted", **ingested.answer()})

    @app.get("/organizations/{org_id}/usage", dependencies=auth)
    async def usage(
        org_id: str,
        meter: str,
        account: str | None = None,
        start: Annotated[str | None, Query(alias="from")] = None,
        end: Annotated[str | None, Query(alias="to")] = None,
        aggregation: str = "SUM",
        field: str | None = None,
        bucket: str | None = None,
        group_by: Annotated[list[str] | None, Query(alias="groupBy")] = None,
        quantity_per_unit: Annotated[str, Query(alias="quantityPerUnit")] = "1",
        rounding: str = "NONE",
    ) -> Response:
        """Aggregated usage. Each ``value`` is an exact JSON number literal (see the module's
        docstring); a bad parameter is a 400 that names it."""
        query = UsageQuery(
            meter=meter,
            account=account,
            start=start,
            end=end,
            aggregation=aggregation.upper(),
            target=field,
            bucket=bucket.lower() if bucket else None,
            group_by=tuple(group_by or ()),
            quantity_per_unit=quantity_per_unit,
            rounding=rounding.upper(),
        )
        problems = catalog_problems(query, catalog) if catalog is not None else []
        try:
            query.checked()
        except QueryError as exc:
            problems.extend(exc.problems)
        if problems:
            return _error(400, "; ".join(problems))
        data = await _run(ledger.usage, org_id, query)
        answer: dict[str, Any] = {"data": [{**row, "value": json_value(row["value"])} for row in data]}
        if not data:
            why = await _run(ledger.absent, org_id, meter)
            if why is not None:
                answer["notes"] = [why]
        return json_response(answer)

    @app.get("/organizations/{org_id}/uids", dependencies=auth)
    async def list_uids(
        org_id: str,
        meter: str | None = None,
        account: str | None = None,
        start: Annotated[str | None, Query(alias="from")] = None,
        end: Annotated[str | None, Query(alias="to")] = None,
    ) -> Response:
        try:
            uids = await _run(ledger.uids, org_id, meter, account, start, end)
        except QueryError as exc:
            return _error(400, str(exc))
        return json_response({"uids": uids})

    @app.get("/organizations/{org_id}/conflicts", dependencies=auth)
    async def list_conflicts(
        org_id: str, uid: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
    ) -> Response:
        """Re-sends of a stored uid with different content, oldest first. The first content
        stored for a uid stands; these were acknowledged and not stored."""
        found = await _run(ledger.conflicts, org_id, uid, limit)
        return json_response(
            {
                "conflicts": [
                    {
                        "uid": c["uid"],
                        "firstHash": c["first_hash"],
                        "otherHash": c["other_hash"],
                        "other": c["other"],
                        "seenAt": c["seen_at"],
                    }
                    for c in found
                ]
            }
        )

    @app.get("/organizations/{org_id}/measurements/{uid}", dependencies=auth)
    async def get_measurement(org_id: str, uid: str) -> Response:
        """The stored measurement, and ``corrected``: its reversal's and replacement's uids."""
        found = await _run(corrections.state, ledger, org_id, uid)
        if found is None:
            return _error(404, f"no measurement with uid {uid!r}")
        return json_response(found)

    @app.get("/organizations/{org_id}/measurements", dependencies=auth)
    async def list_batch(
        org_id: str,
        batch: str,
        after: str = "",
        limit: Annotated[int, Query(ge=1, le=MAX_BATCH_PAGE)] = 1000,
    ) -> Response:
        """A backfill batch's measurements in uid order, ``limit`` at a time; ``next`` is the
        ``after`` of the next page (None after the last)."""
        found = await _run(corrections.batch_page, ledger, org_id, batch, after, limit)
        following = found[-1]["uid"] if len(found) == limit else None
        return json_response({"measurements": found, "next": following})

    app.include_router(bill_routes(ledger, plans, auth))  # bills: previews, frozen bills, closing
    register_reconciliation(app, ledger, auth)  # digests, uid listings and journal anchors
    register_explorer(app, ledger, auth)  # m3ter's usage query
    register_meters(app, ledger, auth)  # m3ter's Meter endpoints (meterkit meters push | pull | diff)
    app.include_router(notice_routes(ledger, plans, auth))  # cap balances and notifications
    register_erasure(app, ledger, auth)  # privacy: erase a subject's values, keeping the books
    register_retention(app, ledger, auth)  # privacy: age out per-person detail
    # the usage console's pages and the JSON they read (cap balances handed to it: it never imports the ledger)
    caps = functools.partial(_cap_balances, ledger, plans) if plans is not None else None
    register_console(app, ledger, auth, catalog, plans, caps)
    return app


def _cap_balances(
    ledger: Ledger, plans: Plans, org: str, at_ms: int, accounts: Any
) -> tuple[dict[str, Any], list[Any]]:
    return balances(ledger, plans, org, at_ms), list(caps_held(plans, at_ms, accounts))


async def _run(fn: Any, *args: Any) -> Any:
    return await run_in_threadpool(fn, *args)


def _error(
    status: int, message: str, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    return json_response(body, status, headers)
