"""The ledger's HTTP API: m3ter's ingest shape, plus usage queries.

- ``POST /organizations/{orgId}/measurements`` with ``{"measurements": [...]}``: at most
  1,000 measurements and 512,000 bytes per request (m3ter's ingest limits), as sent and
  once decompressed, enforced as the body arrives (a chunked body is refused with a 413 as
  soon as it passes the limit); gzip or deflate, any other ``Content-Encoding`` is a 415
  (``httpserver.read_body``). A request with
  any bad measurement is refused whole with a 400 naming each bad one by index and uid, so
  a client can resend the rest; a measurement whose uid is already stored is accepted and
  ignored (never an error, never a second count).
- ``GET /organizations/{orgId}/usage``: aggregations per account, bucket and segment.
- ``GET /health``.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from meterkit import Catalog

from ..httpserver import BodyError, bearer_ok, json_response, read_body, validate_items
from .queries import UsageQuery
from .store import Ledger

MAX_MEASUREMENTS = 1_000
MAX_REQUEST_BYTES = 512_000
#: a client-credentials request is a line of JSON or a form; anything larger is not one
MAX_TOKEN_REQUEST_BYTES = 16_384


def create_app(
    ledger: Ledger,
    *,
    token: str | None = None,
    catalog: Catalog | None = None,
    client_credentials: tuple[str, str] | None = None,
    token_ttl_seconds: int = 3600,
) -> FastAPI:
    """The ledger's API. ``token`` is a fixed bearer token; ``client_credentials`` (id,
    secret) also enables m3ter's ``POST /oauth/token`` exchange, whose tokens expire after
    ``token_ttl_seconds``. With neither, requests are not authenticated."""
    app = FastAPI(
        title="meterkit ledger",
        version="1",
        description="An m3ter-compatible ingest API and usage queries, backed by SQLite or PostgreSQL.",
    )
    expected = token.encode() if token else None
    issued: dict[str, float] = {}  # access token -> expiry (monotonic)

    def authorize(request: Request) -> None:
        if expected is None and client_credentials is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        fresh = issued.get(given, 0.0) > time.monotonic() if scheme.lower() == "bearer" else False
        if not fresh and not (expected is not None and bearer_ok(request, expected)):
            raise HTTPException(
                status_code=401, detail="missing, wrong or expired bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    auth = [Depends(authorize)]

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
    def health() -> dict[str, Any]:
        return {"status": "ok", "measurements": ledger.count()}

    @app.post("/organizations/{org_id}/measurements", dependencies=auth)
    async def ingest(org_id: str, request: Request) -> Response:
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
        good, errors = validate_items(items, catalog)
        if errors:
            return _error(400, f"{len(errors)} of {len(items)} measurements are invalid; none were stored", errors)
        new, duplicates = await _run(ledger.ingest, org_id, good)
        return json_response({"result": "accepted", "accepted": new, "duplicates": duplicates})

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
        quantity_per_unit: Annotated[float, Query(alias="quantityPerUnit")] = 1.0,
        rounding: str = "NONE",
    ) -> Response:
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
        try:
            data = await _run(ledger.usage, org_id, query)
        except ValueError as exc:
            return _error(400, str(exc))
        return json_response({"data": data})

    @app.get("/organizations/{org_id}/uids", dependencies=auth)
    async def list_uids(
        org_id: str,
        meter: str | None = None,
        account: str | None = None,
        start: Annotated[str | None, Query(alias="from")] = None,
        end: Annotated[str | None, Query(alias="to")] = None,
    ) -> Response:
        return json_response({"uids": await _run(ledger.uids, org_id, meter, account, start, end)})

    @app.get("/organizations/{org_id}/measurements/{uid}", dependencies=auth)
    async def get_measurement(org_id: str, uid: str) -> Response:
        found = await _run(ledger.get, org_id, uid)
        if found is None:
            return _error(404, f"no measurement with uid {uid!r}")
        return json_response(found)

    return app


async def _run(fn: Any, *args: Any) -> Any:
    return await run_in_threadpool(fn, *args)


def _error(
    status: int, message: str, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    return json_response(body, status, headers)
