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

The timestamp is the record's ``time_unix_nano`` (else its observed time). Without a
``meterkit.uid`` the uid is derived from the record's content, so an exporter's retry of
the same request can never double count. Records that are not measurements, or not valid
ones, are answered with OTLP's partial success: how many were rejected, and why.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
import uuid
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

from meterkit import Catalog, MeasurementError
from meterkit._model import CATEGORIES, validate_wire
from meterkit._sinks import SpoolSink
from meterkit._timefmt import iso_ms

from ..component import Factory, HostPort, ReceiverHost
from ..httpserver import BodyError, bearer_ok, read_body, spool_accepted
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


def to_measurement(resource: dict[str, Any], record: Any) -> dict[str, Any]:
    """One log record as a wire measurement (not yet validated)."""
    attrs = {**resource, **_attrs(record.attributes)}
    m: dict[str, Any] = {"meter": attrs.get(PREFIX + "meter"), "account": attrs.get(PREFIX + "account")}
    for key, value in attrs.items():
        if not key.startswith(PREFIX):
            continue
        category, _, code = key[len(PREFIX) :].partition(".")
        if category in CATEGORIES and code:
            m.setdefault(category, {})[code] = value
    ns = record.time_unix_nano or record.observed_time_unix_nano or time.time_ns()
    m["ts"] = iso_ms(ns)
    uid = attrs.get(PREFIX + "uid")
    if not uid:
        digest = hashlib.sha256(
            record.SerializeToString(deterministic=True) + orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
        )
        uid = str(uuid.uuid5(OTLP_NAMESPACE, digest.hexdigest()))
    m["uid"] = uid
    return m


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
    app = FastAPI(title="meterkit agent OTLP/HTTP logs receiver", version="1")
    token = cfg.token.get_secret_value().encode() if cfg.token else None
    max_bytes = cfg.max_request_bytes

    def answer(response: ExportLogsServiceResponse, as_json: bool, status: int = 200) -> Response:
        if as_json:
            return Response(json_format.MessageToJson(response), status_code=status, media_type="application/json")
        return Response(response.SerializeToString(), status_code=status, media_type="application/x-protobuf")

    @app.post("/v1/logs")
    async def logs(request: Request) -> Response:
        as_json = "json" in request.headers.get("content-type", "")
        if not bearer_ok(request, token):
            return Response(status_code=401)
        try:
            body = await read_body(request, max_bytes)
        except BodyError as exc:
            return Response(exc.message, status_code=exc.status)
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
        total = 0
        for rl in req.resource_logs:
            resource = {k: v for k, v in _attrs(rl.resource.attributes).items() if k.startswith(PREFIX)}
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    total += 1
                    m = to_measurement(resource, record)
                    if not m.get("meter"):
                        problems.append(f"record {total}: no meterkit.meter attribute (not a measurement)")
                        continue
                    try:
                        good.append(validate_wire(m, catalog, now))
                    except MeasurementError as exc:
                        problems.append(f"record {total} (uid {m['uid']}): {exc}")
        if good:
            try:
                spool_accepted(sink, good)
            except BodyError as exc:
                return Response(exc.message, status_code=exc.status)
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
