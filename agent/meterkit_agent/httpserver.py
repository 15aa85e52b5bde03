"""What every HTTP endpoint of the agent and the ledger does the same way: a bearer token
compared in constant time, and a request body read within a size limit (gzip included,
bounded so a small compressed body cannot expand past the limit)."""

from __future__ import annotations

import hmac
import time
import zlib
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from meterkit import Catalog, MeasurementError
from meterkit._model import tally, validate_wire
from meterkit._sinks import SinkUnavailable, SpoolSink


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bearer_ok(request: Request, expected: bytes | None) -> bool:
    if expected is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), expected)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, decompressed if gzip. Raises :class:`BodyError` (413 or 400)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyError(413, f"request is {declared} bytes; at most {max_bytes} are accepted")
    body = await request.body()
    if request.headers.get("content-encoding", "").lower() == "gzip":
        try:
            body = zlib.decompressobj(wbits=31).decompress(body, max_bytes + 1)
        except zlib.error as exc:
            raise BodyError(400, f"body is not valid gzip: {exc}") from None
    if len(body) > max_bytes:
        raise BodyError(413, f"request is over {max_bytes} bytes; at most {max_bytes} are accepted")
    return body


def validate_items(items: list[Any], catalog: Catalog | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Validate a request's measurements: (the good ones, an error per bad one naming its
    index, uid, reason, field and message), so an answer can name every bad record."""
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


def spool_accepted(sink: SpoolSink, measurements: list[dict[str, Any]]) -> None:
    """Write accepted measurements to a receiver's spool, with the tally that says they
    were recorded, as the SDK does. Raises :class:`BodyError` (503) if the spool refuses."""
    try:
        sink.write(measurements, [{"type": "tally", "entries": tally(measurements)}])
    except SinkUnavailable as exc:
        raise BodyError(503, f"cannot accept measurements now: {exc}") from None
