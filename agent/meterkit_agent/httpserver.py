"""What every HTTP endpoint of the agent and the ledger does the same way: a bearer token
compared in constant time, and a request body read within a size limit.

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
import time
import zlib
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from meterkit import Catalog, MeasurementError
from meterkit._model import tally, validate_wire
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
