"""m3ter's Meter endpoints, served by the ledger, so ``meterkit meters push`` and the
official m3ter client's ``client.meters`` calls work against it as they do against m3ter.

- ``GET /organizations/{orgId}/meters?codes=&ids=&productId=&pageSize=&nextToken=``: the
  organisation's meters in code order, ``pageSize`` (at most :data:`MAX_PAGE`, default
  :data:`DEFAULT_PAGE`) at a time; ``nextToken`` names the next page. List filters take a
  comma-separated value (the official client's spelling) or a repeated parameter.
- ``POST /organizations/{orgId}/meters``: create; the answer carries the new ``id`` (a
  UUID) and ``version`` 1. A code the organisation already has is a 409.
- ``GET|PUT|DELETE /organizations/{orgId}/meters/{id}``: read, replace, delete. As m3ter
  says, an update's ``version`` must equal the stored one (a 409 otherwise: someone else
  changed the meter since it was read) and the answer's is one higher; without a
  ``version`` the update replaces whatever is stored.

A meter is m3ter's shape: ``id, code, name, productId, groupId, dataFields [{category, code,
name, unit}], derivedFields [{..., calculation}], customFields, version, dtCreated,
dtLastModified``. A body is checked by the same rules as a ``meters.yaml``
(:func:`meterkit.catalog_from_dict`: codes, categories, at most 15 fields of each kind,
calculations parsed by the bounded grammar) and every problem is answered at once in a
400. One rule is relaxed: a calculation may read a name the meter does not define, since
m3ter's organisation-level custom fields live outside the meter. Meters describe usage;
they do not change what is stored or how ``/usage`` answers (that is the ledger's
``--catalog``).
"""

# No ``from __future__ import annotations``: FastAPI reads route annotations (as in .digests).

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from meterkit import CatalogError, catalog_from_dict

from ..httpserver import BodyError, json_response, read_body

if TYPE_CHECKING:  # schema.py prepares this module's table: importing the store here would be a circle
    from .store import Ledger

MAX_PAGE = 200
DEFAULT_PAGE = 10
#: a meter with 30 fields and their calculations is a few kilobytes
MAX_METER_BYTES = 256_000
_CATEGORIES = ("WHO", "WHERE", "WHAT", "OTHER", "METADATA", "MEASURE", "INCOME", "COST")

_DDL = (
    "CREATE TABLE IF NOT EXISTS meters (org VARCHAR(100) NOT NULL, id VARCHAR(36) NOT NULL,"
    " code VARCHAR(80) NOT NULL, product_id VARCHAR(200), version INTEGER NOT NULL, body TEXT NOT NULL,"
    " PRIMARY KEY (org, id), UNIQUE (org, code))",
)


def prepare(conn: sa.Connection) -> None:
    """Create the meters table if it is not there (idempotent; in the caller's transaction,
    so the ledger prepares it with its own schema)."""
    for statement in _DDL:
        conn.exec_driver_sql(statement)


class MeterRefused(Exception):
    """A request the meter store refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def register(app: FastAPI, ledger: "Ledger", auth: list[Any]) -> None:
    """Add m3ter's Meter endpoints (``/organizations/{org_id}/meters[/{id}]``) to ``app``."""
    store = MeterStore(ledger.engine)

    async def call(fn: Any, *args: Any) -> Response:
        try:
            return json_response(await run_in_threadpool(fn, *args))
        except MeterRefused as exc:
            return json_response({"message": exc.message}, exc.status)

    async def body_of(request: Request) -> Any:
        try:
            return orjson.loads(await read_body(request, MAX_METER_BYTES) or b"null")
        except BodyError as exc:
            raise MeterRefused(exc.status, exc.message) from None
        except orjson.JSONDecodeError:
            raise MeterRefused(400, "the body is not JSON") from None

    @app.get("/organizations/{org_id}/meters", dependencies=auth)
    async def list_meters(org_id: str, request: Request) -> Response:
        params = request.query_params
        try:
            size = int(params.get("pageSize", DEFAULT_PAGE))
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_PAGE:
            return json_response({"message": f"pageSize must be a whole number from 1 to {MAX_PAGE}"}, 400)
        wanted = {key: _listed(params.getlist(key)) for key in ("codes", "ids", "productId")}
        return await call(store.page, org_id, wanted, size, params.get("nextToken") or "")

    @app.post("/organizations/{org_id}/meters", dependencies=auth)
    async def create_meter(org_id: str, request: Request) -> Response:
        try:
            body = await body_of(request)
        except MeterRefused as exc:
            return json_response({"message": exc.message}, exc.status)
        return await call(store.create, org_id, body)

    @app.get("/organizations/{org_id}/meters/{meter_id}", dependencies=auth)
    async def get_meter(org_id: str, meter_id: str) -> Response:
        return await call(store.get, org_id, meter_id)

    @app.put("/organizations/{org_id}/meters/{meter_id}", dependencies=auth)
    async def update_meter(org_id: str, meter_id: str, request: Request) -> Response:
        try:
            body = await body_of(request)
        except MeterRefused as exc:
            return json_response({"message": exc.message}, exc.status)
        return await call(store.update, org_id, meter_id, body)

    @app.delete("/organizations/{org_id}/meters/{meter_id}", dependencies=auth)
    async def delete_meter(org_id: str, meter_id: str) -> Response:
        return await call(store.delete, org_id, meter_id)


def _listed(values: list[str]) -> set[str]:
    return {v for value in values for v in value.split(",") if v}


class MeterStore:
    """Meters in the ledger's database, one row each: the answer as JSON plus the columns
    lookups need. Every change is one statement, so concurrent ledgers cannot interleave."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def page(self, org: str, wanted: dict[str, set[str]], size: int, after: str) -> dict[str, Any]:
        sql = "SELECT body FROM meters WHERE org = :org AND code > :after"
        params: dict[str, Any] = {"org": org, "after": after}
        for key, column in (("codes", "code"), ("ids", "id"), ("productId", "product_id")):
            if wanted[key]:
                names = [f"{column}{n}" for n in range(len(wanted[key]))]
                sql += f" AND {column} IN ({', '.join(':' + n for n in names)})"
                params.update(zip(names, sorted(wanted[key]), strict=True))
        sql += f" ORDER BY code LIMIT {size + 1}"
        with self.engine.connect() as conn:
            rows = [orjson.loads(r[0]) for r in conn.execute(sa.text(sql), params)]
        more = len(rows) > size
        data = rows[:size]
        # the code is the order, and unique per organisation: the last one resumes the listing
        return {"data": data, "nextToken": data[-1]["code"] if more else None}

    def get(self, org: str, meter_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return self._stored(conn, org, meter_id)

    def create(self, org: str, body: Any) -> dict[str, Any]:
        meter = checked(body)
        now = _now()
        meter.update(id=str(uuid.uuid4()), version=1, dtCreated=now, dtLastModified=now)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO meters (org, id, code, product_id, version, body)"
                        " VALUES (:org, :id, :code, :product, 1, :body)"
                    ),
                    {**_columns(meter), "org": org},
                )
        except sa.exc.IntegrityError:
            raise MeterRefused(409, f"a meter with code {meter['code']!r} already exists") from None
        return meter

    def update(self, org: str, meter_id: str, body: Any) -> dict[str, Any]:
        meter = checked(body)
        given = body.get("version")
        if given is not None and type(given) is not int:
            raise MeterRefused(400, f"version must be a whole number, got {given!r:.40}")
        try:
            with self.engine.begin() as conn:
                stored = self._stored(conn, org, meter_id)
                version = stored["version"]
                if given is not None and given != version:
                    raise MeterRefused(409, f"version {given} is not the meter's current version {version}")
                meter.update(id=meter_id, version=version + 1, dtCreated=stored.get("dtCreated"), dtLastModified=_now())
                changed = conn.execute(
                    sa.text(
                        "UPDATE meters SET code = :code, product_id = :product, version = :version, body = :body"
                        " WHERE org = :org AND id = :id AND version = :was"
                    ),
                    {**_columns(meter), "org": org, "was": version},
                ).rowcount
        except sa.exc.IntegrityError:
            raise MeterRefused(409, f"a meter with code {meter['code']!r} already exists") from None
        if changed != 1:  # another writer updated it between our read and write
            raise MeterRefused(409, f"meter {meter_id!r} was changed meanwhile; read it again")
        return meter

    def delete(self, org: str, meter_id: str) -> dict[str, Any]:
        with self.engine.begin() as conn:
            stored = self._stored(conn, org, meter_id)
            conn.execute(sa.text("DELETE FROM meters WHERE org = :org AND id = :id"), {"org": org, "id": meter_id})
        return stored

    @staticmethod
    def _stored(conn: sa.Connection, org: str, meter_id: str) -> dict[str, Any]:
        row = conn.execute(
            sa.text("SELECT body FROM meters WHERE org = :org AND id = :id"), {"org": org, "id": meter_id}
        ).first()
        if row is None:
            raise MeterRefused(404, f"no meter with id {meter_id!r}")
        found: dict[str, Any] = orjson.loads(row[0])
        return found


def _columns(meter: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": meter["id"],
        "code": meter["code"],
        "product": meter.get("productId"),
        "version": meter["version"],
        "body": orjson.dumps(meter).decode(),
    }


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def checked(body: Any) -> dict[str, Any]:
    """The meter a create or update body describes, in the stored shape; raises
    :class:`MeterRefused` (400) naming every problem at once."""
    if not isinstance(body, dict):
        raise MeterRefused(400, "the body must be a JSON object")
    problems: list[str] = []
    for key in ("code", "name"):
        if not isinstance(body.get(key), str) or not body[key]:
            problems.append(f"{key} is required and must be a string")
    for key in ("dataFields", "derivedFields"):
        if not isinstance(body.get(key), list):
            problems.append(f"{key} is required and must be a list (m3ter: [] for none, never null)")
    if isinstance(body.get("dataFields"), list) and not body["dataFields"]:
        problems.append("dataFields: m3ter requires at least one data field per meter")
    custom = body.get("customFields") or {}
    if not isinstance(custom, dict):
        problems.append("customFields must be an object")
    for key in ("productId", "groupId"):
        if body.get(key) is not None and not isinstance(body[key], str):
            problems.append(f"{key} must be a string")
    if problems:
        raise MeterRefused(400, "; ".join(problems))
    data = [_field(f, False, problems, n) for n, f in enumerate(body["dataFields"])]
    derived = [_field(f, True, problems, n) for n, f in enumerate(body["derivedFields"])]
    if problems:
        raise MeterRefused(400, "; ".join(problems))
    meter = {
        "code": body["code"],
        "name": body["name"],
        "productId": body.get("productId") or None,
        "groupId": body.get("groupId") or None,
        "dataFields": data,
        "derivedFields": derived,
        "customFields": custom,
    }
    _catalog_check(meter)
    return meter


def _field(raw: Any, derived: bool, problems: list[str], n: int) -> dict[str, Any]:
    where = f"{'derivedFields' if derived else 'dataFields'}[{n}]"
    keys = ("category", "code", "name", "unit", "calculation") if derived else ("category", "code", "name", "unit")
    if not isinstance(raw, dict):
        problems.append(f"{where} must be an object")
        return {}
    if raw.get("category") not in _CATEGORIES:
        problems.append(f"{where}.category must be one of {', '.join(_CATEGORIES)}, got {raw.get('category')!r:.40}")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        problems.append(f"{where}: unknown keys {', '.join(map(repr, unknown))}")
    return {k: raw.get(k) for k in keys if k != "unit" or raw.get(k) is not None}


def _catalog_check(meter: dict[str, Any]) -> None:
    """The catalog's rules for one meter, every problem at once; names the meter does not
    define are allowed (organisation-level custom fields live outside it)."""
    doc = {
        "meters": [
            {
                "code": meter["code"],
                "name": meter["name"],
                "data_fields": [_yaml_field(f) for f in meter["dataFields"]],
                "derived_fields": [_yaml_field(f) for f in meter["derivedFields"]],
                "custom_fields": meter["customFields"],
            }
        ]
    }
    try:
        catalog_from_dict(doc, "request")
    except CatalogError as exc:
        problems = [p for p in exc.problems if p.reason != "unknown_reference"]
        if problems:
            named = [f"field {p.field!r}: {p.message}" if p.field else p.message for p in problems]
            raise MeterRefused(400, "; ".join(named)) from None


def _yaml_field(field: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in field.items() if v is not None}
