"""What every HTTP endpoint of the agent and the ledger does the same way: a bearer token
compared in constant time, a request body read within a size limit, and its measurements
validated, or, from a sender trusted to have validated them, checked to be exactly in the
shape validation gives (:func:`canonical`); and the same rules for who may be served.

Secure by default. A listener on loopback (127.0.0.0/8, ::1, ``localhost``) is reached
from this machine only; anything else with no token would serve every host that can reach
it, so it is refused (:func:`open_listener_problem`) unless asked for by name
(``--insecure-no-auth``, ``insecure_no_auth: true``), and then said loudly at start.
``/health`` answers that the process is alive and nothing more, without a token (a
liveness probe has none). The API's description needs the token when one is set
(:func:`api_docs`): ``/openapi.json`` is served behind the same bearer check as the API,
and the browser pages ``/docs`` and ``/redoc`` are not served at all, since a browser
cannot send a bearer header with them (fetch ``/openapi.json`` with the token and open it
in any OpenAPI viewer instead).

The limit holds as the body arrives, whatever its framing: a declared ``Content-Length``
over it is refused before a byte is read, and a chunked body (no length) is refused as
soon as the bytes received pass it, without reading the rest (the server discards what
the client still sends, so the client reads the 413). The same limit holds again after
decompression, which is incremental and bounded, so a small compressed body cannot expand
past it. Content codings (RFC 9110 §8.4.1):

- absent or ``identity``: the body as sent.
- ``gzip`` (and its alias ``x-gzip``): every member, in order (RFC 1952 §2.2: a gzip file
  is a series of members, and ``gzip -c a b`` writes two); bytes after a member that do not
  start another one are a 400, never silently dropped; a body that ends inside a member is
  a 400.
- ``deflate``: the zlib format (RFC 1950), which is what RFC 9110 names ``deflate`` and
  what the OpenTelemetry Collector accepts under that name; a raw deflate stream is a 400.
- anything else (``br``, ``zstd``, a stack of codings) is a 415 that names the coding,
  with an ``Accept-Encoding`` header saying what would be accepted (RFC 9110 §15.5.16).
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
import time
import zlib
from collections.abc import Sequence
from itertools import chain
from typing import Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from meterkit import Catalog, MeasurementError
from meterkit._limits import (
    MAX_ACCOUNT_LENGTH,
    MAX_INT,
    MAX_METADATA_LENGTH,
    MAX_STRING_LENGTH,
    MAX_UID_LENGTH,
    MIN_INT,
)
from meterkit._model import (
    CATEGORIES,
    FIELD_CODE_RE,
    MAX_DATA_FIELDS,
    METER_CODE_RE,
    STRING_CATEGORIES,
    WIRE_KEYS,
    tally,
    validate_wire,
)
from meterkit._sinks import SinkUnavailable, SpoolSink

#: content codings a body may arrive in, and the zlib ``wbits`` that decodes each
WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
ACCEPT_ENCODING = "gzip, deflate, identity"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class BodyError(Exception):
    """A request body refused: the status (400, 413, 415, 503), why, and any header the
    answer must carry."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bearer_ok(request: Request, expected: bytes | None) -> bool:
    if expected is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), expected)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, a bracketed IPv6 address or a name) is reached from this
    machine only: 127.0.0.0/8, ::1 or ``localhost``. Any other name may resolve anywhere."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_listener_problem(host: str, authenticated: bool, insecure: bool, remedy: str) -> str | None:
    """Why listening on ``host`` is refused, or None: a host beyond loopback needs
    authentication, unless ``insecure`` says to serve without it. ``remedy`` says how to
    give a token here (an option, a configuration key)."""
    if authenticated or insecure or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host} without a token: every host that can reach it could send and read usage."
        f" {remedy}, or listen on 127.0.0.1"
    )


def insecure_warning(what: str, host: str) -> str:
    """The warning logged when a listener beyond loopback serves without authentication."""
    return (
        f"WARNING: {what} listens on {host} WITHOUT AUTHENTICATION (insecure_no_auth): every host that can"
        " reach it can send and read usage; give it a token unless a network boundary you trust stands in front"
    )


def api_docs(protected: bool) -> dict[str, Any]:
    """``FastAPI(...)`` keyword arguments for the API's description: the defaults when no
    token is set; else none of the three routes, :func:`serve_openapi` adds a protected one."""
    return {"openapi_url": None, "docs_url": None, "redoc_url": None} if protected else {}


def serve_openapi(app: FastAPI, dependencies: Sequence[Any]) -> None:
    """Serve ``GET /openapi.json`` behind ``dependencies`` (the API's bearer check)."""

    @app.get("/openapi.json", dependencies=list(dependencies), include_in_schema=False)
    def openapi() -> Response:
        return json_response(app.openapi())  # made once, then kept by FastAPI


def bearer_dependency(expected: bytes | None) -> list[Any]:
    """A route dependency that refuses a request without the bearer token (401)."""

    async def check(request: Request) -> None:
        if not bearer_ok(request, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return [Depends(check)]


def content_coding(header: str) -> str:
    """The one content coding a ``Content-Encoding`` header names: ``identity``, or a key of
    :data:`WBITS`. Raises :class:`BodyError` (415) for any other, or for a stack of them."""
    codings = [c.strip().lower() for c in header.split(",")]
    applied = [c for c in codings if c and c != "identity"]
    if not applied:
        return "identity"
    if len(applied) == 1 and applied[0] in WBITS:
        return applied[0]
    raise BodyError(
        415,
        f"Content-Encoding {header.strip()!r} is not supported; send the body as gzip, deflate or identity",
        {"Accept-Encoding": ACCEPT_ENCODING},
    )


class BodyDecoder:
    """Decodes a body fed in pieces as they arrive, never holding more than ``limit``
    decoded bytes and never asking zlib for more than one byte past what is left."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding = coding
        self.limit = limit
        self.size = 0
        self.members = 0  # gzip members (or zlib streams) begun
        self._parts: list[bytes] = []
        self._inflater: Any = None  # zlib's decompress object has no public type

    def feed(self, data: bytes) -> None:
        """Decode one more piece. Raises :class:`BodyError` (413 past the limit, 400 if not
        valid in its coding)."""
        if self.coding == "identity":
            self._keep(data)
            return
        while data:
            if self._inflater is None or self._inflater.eof:
                if self.members and self.coding == "deflate":
                    raise BodyError(400, "body has data after the end of its deflate (zlib) stream")
                self._inflater = zlib.decompressobj(wbits=WBITS[self.coding])
                self.members += 1
            try:
                out = self._inflater.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                if self.coding == "deflate":
                    where = "in its zlib stream (RFC 1950; raw deflate is not accepted)"
                elif self.members > 1:
                    where = f"at member {self.members} (after a member, only another member may follow)"
                else:
                    where = "in its first member"
                raise BodyError(400, f"body is not valid {self.coding} {where}: {exc}") from None
            self._keep(out)
            # Under the limit, zlib took all of `data`: what it did not need is the next member.
            data = self._inflater.unused_data if self._inflater.eof else b""

    def finish(self) -> bytes:
        """The decoded body. Raises :class:`BodyError` (400) if it ends inside a member."""
        if self._inflater is not None and not self._inflater.eof:
            raise BodyError(400, f"body ends inside {self.coding} member {self.members}: it is truncated")
        return b"".join(self._parts)

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            what = "request body" if self.coding == "identity" else f"{self.coding}-decoded request body"
            raise BodyError(413, f"{what} is over {self.limit} bytes; at most {self.limit} are accepted")
        if data:
            self._parts.append(data)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, decoded, read as it arrives and never past ``max_bytes`` (raw or
    decoded). Raises :class:`BodyError`: 413 over the limit, 415 for an unknown
    ``Content-Encoding``, 400 for a body that is not valid in its coding."""
    decoder = BodyDecoder(content_coding(request.headers.get("content-encoding", "")), max_bytes)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyError(413, f"request body is {declared} bytes; at most {max_bytes} are accepted")
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:  # chunked, or longer than declared: stop reading now
                raise BodyError(413, f"request body is over {max_bytes} bytes; at most {max_bytes} are accepted")
            decoder.feed(chunk)
    except ClientDisconnect:
        raise BodyError(400, "the client closed the connection before the body ended") from None
    return decoder.finish()


def validate_items(
    items: list[Any], catalog: Catalog | None, trusted: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Validate a request's measurements: (the good ones, an error per bad one naming its
    index, uid, reason, field and message), so an answer can name every bad record.

    ``trusted``: the sender validated them under the same rules and catalog (the caller
    decides whether to believe it). Measurements already in the exact shape validation
    give (:func:`canonical`) are then taken as they are; otherwise each is validated, so what is
    kept is the same content, with the same content digest, either way."""
    if trusted and canonical(items):
        return items, []
    good, errors = [], []
    now = time.time_ns()
    for index, raw in enumerate(items):
        try:
            good.append(validate_wire(raw, catalog, now))
        except MeasurementError as exc:
            p = exc.problem
            uid = raw.get("uid") if isinstance(raw, dict) else None
            errors.append({"index": index, "uid": uid, "reason": p.reason, "field": p.field, "message": p.message})
    return good, errors


#: Free-text categories and the longest value each takes (``meterkit._limits``).
_TEXT_LIMITS = {c: MAX_METADATA_LENGTH if c == "metadata" else MAX_STRING_LENGTH for c in STRING_CATEGORIES}
#: iso_ms's spelling, repeated; years 2000-9999 as validation allows (``meterkit._limits``)
_WIRE_TIMES = re.compile(r"(?:[2-9]\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)+")
_STR, _DICT, _NUMBERS, _LENGTH_24 = {str}, {dict}, {int, float}, {24}


def canonical(items: list[Any]) -> bool:
    """Whether every measurement of a request is already exactly what
    :func:`meterkit._model.validate_wire` returns for it, as far as that shows without the
    catalog: wire keys only; ``uid``, ``meter`` and ``account`` within their lengths and
    characters, with no space at either end; ``ts`` (and ``ets``) in the one spelling
    validation writes, ``YYYY-MM-DDTHH:MM:SS.mmmZ``; categories non-empty objects of valid
    field codes; free text printable and within its length; numbers ints in signed 64 bits
    or finite floats; at most 15 fields. What only validation decides is not checked: the
    catalog (meters, fields, categories), that a timestamp is a real date and time (the
    store refuses one that is not) and not in the future, ``ets`` after ``ts``. A trusted
    sender vouches for those.

    Checked column by column (every uid, then every account, ...) with ``map``, ``set``,
    ``join`` and one regular expression, which run at C speed: about a seventh of what
    validating costs. One measurement out of shape makes the answer False, and a float
    past 2**63 does too (rare; it is valid): the caller then validates each measurement,
    which names each bad one."""
    if not items:
        return True
    if set(map(type, items)) != _DICT:
        return False
    keys: set[str] = set().union(*items)
    if not keys <= WIRE_KEYS:
        return False
    try:
        uids, meters = [r["uid"] for r in items], {r["meter"] for r in items}
        accounts, times = {r["account"] for r in items}, [r["ts"] for r in items]
    except (KeyError, TypeError):  # a key missing; an account or meter that is a list or an object
        return False
    if not _identifiers(uids, MAX_UID_LENGTH) or not all(_identifier(a, MAX_ACCOUNT_LENGTH) for a in accounts):
        return False  # accounts repeat: each distinct one is checked once
    if not all(type(m) is str and METER_CODE_RE.match(m) for m in meters):
        return False
    if not _wire_times(times) or ("ets" in keys and not _wire_times([r["ets"] for r in items if "ets" in r])):
        return False
    fields = 0  # the most fields any measurement can have: a bound, never an undercount
    for category in CATEGORIES:
        if category in keys:
            given = [r[category] for r in items if category in r]
            if set(map(type, given)) != _DICT:
                return False
            sizes = set(map(len, given))
            if 0 in sizes or not all(map(_field_code, set().union(*given))):
                return False
            fields += max(sizes)
            if not _values(list(chain.from_iterable(map(dict.values, given))), _TEXT_LIMITS.get(category)):
                return False
    return fields <= MAX_DATA_FIELDS


def _identifier(value: object, limit: int) -> bool:
    return (
        type(value) is str and 0 < len(value) <= limit and value.isprintable() and value[0] != " " and value[-1] != " "
    )


def _identifiers(column: list[Any], limit: int) -> bool:
    if set(map(type, column)) != _STR:
        return False
    sizes = set(map(len, column))
    if 0 in sizes or max(sizes) > limit:
        return False
    flat = "".join(column)  # printable iff each is; a space anywhere is rare, then look closer
    return flat.isprintable() and (" " not in flat or all(_identifier(v, limit) for v in column))


def _wire_times(column: list[Any]) -> bool:
    return (
        set(map(type, column)) == _STR
        and set(map(len, column)) == _LENGTH_24  # so each is one match of the expression
        and _WIRE_TIMES.fullmatch("".join(column)) is not None
    )


def _field_code(code: str) -> bool:
    return FIELD_CODE_RE.match(code) is not None


def _values(values: list[Any], longest: int | None) -> bool:
    """A category's values: strings up to ``longest`` characters, or numbers (``None``)."""
    kinds = set(map(type, values))
    if longest is not None:
        return kinds == _STR and max(set(map(len, values))) <= longest and "".join(values).isprintable()
    if not kinds <= _NUMBERS or (float in kinds and not math.isfinite(sum(values))):
        return False  # a NaN or an infinity makes the sum one; an overflowing sum only costs the fast path
    return bool(min(values) >= MIN_INT and max(values) <= MAX_INT)


def spool_accepted(sink: SpoolSink, measurements: list[dict[str, Any]]) -> None:
    """Write accepted measurements to a receiver's spool, with the tally that says they
    were recorded, as the SDK does. Raises :class:`BodyError` (503) if the spool refuses."""
    try:
        sink.write(measurements, [{"type": "tally", "entries": tally(measurements)}])
    except SinkUnavailable as exc:
        raise BodyError(503, f"cannot accept measurements now: {exc}") from None
