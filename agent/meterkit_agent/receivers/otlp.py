"""The OTLP/HTTP logs receiver: usage from any language, through OpenTelemetry.

``POST /v1/logs`` with an ``ExportLogsServiceRequest`` in protobuf
(``application/x-protobuf``) or JSON (``application/json``). A log record becomes a
measurement from its attributes (the resource's attributes fill in what a record lacks):

================================  ============================================
``meterkit.meter``                the meter code (required)
``meterkit.account``              the billed account (required)
``meterkit.uid``                  the measurement's uid (optional)
``meterkit.<category>.<code>``    a field: ``meterkit.measure.bytes``, ``meterkit.who.user``
================================  ============================================

The timestamp is the record's ``time_unix_nano`` (else its observed time).

**Records are counted as sent.** A ``meterkit.uid`` is the record's identity: records that
share one are one measurement. Without one, the uid is derived from what the request
says, never from when or how often it arrived: the record's serialized content and its
resource's ``meterkit.*`` attributes, plus its *occurrence*, how many records with exactly
that content came before it in the same request. So two equal records in one request (the
same event twice in a clock tick) are two measurements, and a byte-identical resend of the
request (an exporter's retry: the OpenTelemetry SDK re-sends the same
``ExportLogsServiceRequest``) derives the same uids and adds nothing. The occurrence
counts equal records, not positions, so a record keeps its uid wherever a resend places it
(a Collector that re-batches); the first occurrence keeps the uid earlier versions gave it.
Equal records in *different* requests are taken to be resends of one: a sender that means
two must give them different times or a ``meterkit.uid``.

A record with neither a time (``time_unix_nano`` and ``observed_time_unix_nano`` both 0)
nor a ``meterkit.uid`` is refused (reason ``missing_ts``): the receive time would make it a
new measurement at each resend, and its content alone would merge it with every equal
record sent later. (A record with a ``meterkit.uid`` but no time is stamped with the time
it is received; its uid keeps resends idempotent.)

The catalog's privacy rules (``docs/privacy.md``) are applied to each measurement before
it is validated and spooled, as the HTTP receiver does; a record the PII guard refuses
(``pii: reject``) is a rejected record with reason ``pii_detected``, its value not shown.
The uid derived from a record without ``meterkit.uid`` is a SHA-256 of the whole record,
time included: not a keyed pseudonym, but no dictionary of identifiers reverses it without
the record's other attributes and its nanosecond time.

Secure by default as the HTTP receiver is (``receivers/http.py``): beyond loopback only with
a token or ``insecure_no_auth: true``; ``/health`` says only that it is alive.

Records that are not measurements, or not valid ones, are answered with OTLP's partial
success: ``rejected_log_records`` counts every one, and ``error_message`` names the first
few by their position in the request, with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from meterkit import Catalog, MeasurementError
from meterkit._model import CATEGORIES, validate_wire
from meterkit._privacy import Privacy
from meterkit._sinks import SpoolSink
from meterkit._timefmt import iso_ms

from ..component import Factory, HostPort, ReceiverHost
from ..httpserver import BodyError, api_docs, bearer_ok, read_body, spool_accepted
from .http import HttpReceiver, HttpReceiverConfig, serve


class OtlpReceiverConfig(HttpReceiverConfig):
    endpoint: HostPort = "127.0.0.1:4318"  # OTLP/HTTP's registered port, on loopback


OTLP_NAMESPACE = uuid.UUID("0b8f5d5e-7f0c-5f61-9d2a-4c1a6e3b2f10")
PREFIX = "meterkit."


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    return None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def content_hash(resource_key: bytes, record: LogRecord) -> str:
    """What a record says, as a hex sha256: its serialized content and its resource's
    ``meterkit.*`` attributes (``resource_key``, as sorted JSON)."""
    return hashlib.sha256(record.SerializeToString(deterministic=True) + resource_key).hexdigest()


def derived_uid(content: str, occurrence: int) -> str:
    """The uid of a record without a ``meterkit.uid``, from its :func:`content_hash` and
    how many equal records came before it in its request. The first occurrence adds no
    count, so its uid is the one earlier versions derived: a retry across an upgrade still
    adds nothing."""
    return str(uuid.uuid5(OTLP_NAMESPACE, f"{content}#{occurrence}" if occurrence else content))


def to_measurement(resource: dict[str, Any], record: LogRecord, derived: str) -> dict[str, Any]:
    """One log record as a wire measurement (not yet validated), with the uid ``derived``
    if it has no ``meterkit.uid``. A record with no time and no ``meterkit.uid`` gets no
    ``ts`` and no uid: it is refused (see the module's docstring)."""
    attrs = {**resource, **_attrs(record.attributes)}
    m: dict[str, Any] = {"meter": attrs.get(PREFIX + "meter"), "account": attrs.get(PREFIX + "account")}
    for key, value in attrs.items():
        if not key.startswith(PREFIX):
            continue
        category, _, code = key[len(PREFIX) :].partition(".")
        if category in CATEGORIES and code:
            m.setdefault(category, {})[code] = value
    uid = attrs.get(PREFIX + "uid")
    ns = record.time_unix_nano or record.observed_time_unix_nano
    if ns or uid:
        m["ts"] = iso_ms(ns or time.time_ns())
        m["uid"] = uid or derived
    return m


def to_measurements(req: ExportLogsServiceRequest) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Each log record of a request, numbered from 1 in request order, as a wire
    measurement (not yet validated), or None for a record that is not a measurement (no
    ``meterkit.meter``). Equal records get distinct uids by their occurrence."""
    seen: Counter[str] = Counter()
    number = 0
    for rl in req.resource_logs:
        resource = {k: v for k, v in _attrs(rl.resource.attributes).items() if k.startswith(PREFIX)}
        resource_key = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
        for sl in rl.scope_logs:
            for record in sl.log_records:
                number += 1
                content = content_hash(resource_key, record)
                m = to_measurement(resource, record, derived_uid(content, seen[content]))
                seen[content] += 1
                yield number, (m if m.get("meter") else None)


def _hex_ids_to_base64(doc: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping wants base64."""
    for rl in doc.get("resourceLogs", []) if isinstance(doc, dict) else []:
        for sl in rl.get("scopeLogs", []):
            for lr in sl.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if isinstance(lr.get(key), str) and lr[key]:
                        with contextlib.suppress(ValueError):  # not hex: leave it for the parser to refuse
                            lr[key] = base64.b64encode(bytes.fromhex(lr[key])).decode()
    return doc


def create_otlp_app(cfg: HttpReceiverConfig, sink: SpoolSink, catalog: Catalog | None) -> FastAPI:
    app = FastAPI(title="meterkit agent OTLP/HTTP logs receiver", version="1", **api_docs(cfg.authenticated))
    cfg.protect(app)  # secure by default, as the HTTP receiver (``httpserver``)
    token = cfg.token_bytes
    max_bytes = cfg.max_request_bytes
    privacy = Privacy.for_catalog(catalog)  # setup: a catalog asking for pseudonyms needs a key

    def answer(response: ExportLogsServiceResponse, as_json: bool, status: int = 200) -> Response:
        if as_json:
            return Response(json_format.MessageToJson(response), status_code=status, media_type="application/json")
        return Response(response.SerializeToString(), status_code=status, media_type="application/x-protobuf")

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.post("/v1/logs")
    async def logs(request: Request) -> Response:
        as_json = "json" in request.headers.get("content-type", "")
        if not bearer_ok(request, token):
            return Response(status_code=401)
        try:
            body = await read_body(request, max_bytes)
        except BodyError as exc:
            return Response(exc.message, status_code=exc.status, headers=exc.headers)
        req = ExportLogsServiceRequest()
        try:
            if as_json:
                json_format.ParseDict(_hex_ids_to_base64(orjson.loads(body)), req)
            else:
                req.ParseFromString(body)
        except Exception as exc:  # a malformed body, in either encoding
            return Response(f"not an ExportLogsServiceRequest: {type(exc).__name__}", status_code=400)
        good, problems = [], []
        now = time.time_ns()
        for number, m in to_measurements(req):
            if m is None:
                problems.append(f"record {number}: no meterkit.meter attribute (not a measurement)")
            elif "ts" not in m:
                problems.append(
                    f"record {number}: no time (time_unix_nano and observed_time_unix_nano are 0) and no "
                    "meterkit.uid (missing_ts): a resend could not be told from a new record"
                )
            else:
                try:
                    good.append(validate_wire(privacy.wire(m) if privacy is not None else m, catalog, now))
                except MeasurementError as exc:
                    problems.append(f"record {number} (uid {m['uid']}): {exc}")
        if good:
            try:
                spool_accepted(sink, good)
            except BodyError as exc:
                return Response(exc.message, status_code=exc.status, headers=exc.headers)
        response = ExportLogsServiceResponse()
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            response.partial_success.CopyFrom(
                ExportLogsPartialSuccess(rejected_log_records=len(problems), error_message=shown)
            )
        return answer(response, as_json)

    return app


def _create(cid: str, cfg: OtlpReceiverConfig, host: ReceiverHost) -> HttpReceiver:
    return serve(cid, cfg, host, create_otlp_app)


FACTORY = Factory(OtlpReceiverConfig, _create)
