"""The HTTP receiver: ``POST /v1/measurements`` with a JSON batch or NDJSON.

Accepted measurements are appended to the agent's own spool and fsynced before the answer,
so a 200 means "durable". A request with a bad measurement is refused whole with a 400
naming every bad one (index, uid, reason), so the client can fix or drop them and resend.
Listens on 127.0.0.1 unless configured otherwise; a bearer token, if set, is compared in
constant time. An ``endpoint`` beyond loopback needs a ``token`` (or ``token_file``: a file
only its owner may read), or ``insecure_no_auth: true``, which is then warned about at
start; with a token set, ``/openapi.json`` needs it too and ``/docs`` is not served
(``httpserver``: secure by default). ``/health`` says only that the receiver is alive.
A body over ``max_request_bytes``, as sent or once decompressed, is a 413 as
soon as it passes the limit, chunked or not; ``Content-Encoding`` may be gzip, deflate or
identity, anything else is a 415 (``httpserver.read_body``).

Before anything is validated or spooled, the catalog's privacy rules (``meterkit._privacy``,
``docs/privacy.md``) are applied: pseudonyms made, ``privacy: drop`` fields removed, the
PII guard's policy applied; a measurement the guard refuses (``pii: reject``) is named
like any bad one (reason ``pii_detected``, its value not shown), so no raw value of a
protected field reaches the spool, the journal or a backend.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import Field, SecretStr, model_validator

from meterkit import Catalog, MeasurementError
from meterkit._model import validation_token
from meterkit._privacy import Privacy
from meterkit._sinks import SpoolSink

from ..component import Factory, HostPort, ReceiverHost, Settings
from ..httpserver import (
    BodyError,
    api_docs,
    bearer_dependency,
    bearer_ok,
    insecure_warning,
    is_loopback,
    json_response,
    open_listener_problem,
    read_body,
    serve_openapi,
    spool_accepted,
    validate_items,
)

logger = logging.getLogger("meterkit.agent")


class HttpReceiverConfig(Settings):
    endpoint: HostPort = "127.0.0.1:4319"
    token: SecretStr | None = None
    #: listen beyond loopback with no token: every host that reaches it may send usage
    insecure_no_auth: bool = False
    max_request_bytes: int = Field(5 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _secure_by_default(self) -> HttpReceiverConfig:
        remedy = "Give token (or token_file: PATH), or insecure_no_auth: true to serve without one"
        problem = open_listener_problem(self.host, self.authenticated, self.insecure_no_auth, remedy)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def host(self) -> str:
        return self.endpoint.rpartition(":")[0]

    @property
    def authenticated(self) -> bool:
        return bool(self.token and self.token.get_secret_value())

    def protect(self, app: FastAPI) -> None:
        """Serve ``/openapi.json`` behind the token, when one is set."""
        if self.authenticated:
            serve_openapi(app, bearer_dependency(self.token_bytes))

    @property
    def token_bytes(self) -> bytes | None:
        return self.token.get_secret_value().encode() if self.authenticated and self.token else None


#: builds the ASGI app a network receiver serves, from its settings, its sink and the catalog
AppFactory = Callable[[Any, SpoolSink, Catalog | None], FastAPI]


def create_receiver_app(cfg: HttpReceiverConfig, sink: SpoolSink, catalog: Catalog | None) -> FastAPI:
    app = FastAPI(title="meterkit agent HTTP receiver", version="1", **api_docs(cfg.authenticated))
    cfg.protect(app)
    token = cfg.token_bytes
    privacy = Privacy.for_catalog(catalog)  # setup: a catalog asking for pseudonyms needs a key

    @app.get("/health")
    def health() -> Response:
        return json_response({"status": "ok"})

    @app.post("/v1/measurements")
    async def receive(request: Request) -> Response:
        if not bearer_ok(request, token):
            return json_response({"message": "missing or wrong bearer token"}, 401)
        try:
            body = await read_body(request, cfg.max_request_bytes)
        except BodyError as exc:
            return json_response({"message": exc.message}, exc.status, exc.headers)
        items, problem = _parse(body, request.headers.get("content-type", ""))
        if problem:
            return json_response({"message": problem}, 400)
        items, refused, kept_at = private_items(items, privacy)
        good, errors = validate_items(items, catalog)
        errors = sorted(refused + [{**e, "index": kept_at[e["index"]]} for e in errors], key=lambda e: e["index"])
        if errors:
            return json_response(
                {
                    "message": f"{len(errors)} of {len(items)} measurements are invalid; none were accepted",
                    "errors": errors,
                },
                400,
            )
        try:
            spool_accepted(sink, good)
        except BodyError as exc:
            return json_response({"message": exc.message}, exc.status, exc.headers)
        return json_response({"accepted": len(good)})

    return app


def private_items(items: list[Any], privacy: Privacy | None) -> tuple[list[Any], list[dict[str, Any]], list[int]]:
    """``items`` with the privacy rules applied, less those the PII guard refuses; an error
    for each refused one (index, uid, reason, field, message: never the value); and the
    index in ``items`` of each one kept."""
    if privacy is None:
        return items, [], list(range(len(items)))
    kept, refused, kept_at = [], [], []
    for index, item in enumerate(items):
        try:
            kept.append(privacy.wire(item) if isinstance(item, dict) else item)
            kept_at.append(index)
        except MeasurementError as exc:
            p = exc.problem
            uid = item.get("uid")
            refused.append({"index": index, "uid": uid, "reason": p.reason, "field": p.field, "message": p.message})
    return kept, refused, kept_at


def _parse(body: bytes, content_type: str) -> tuple[list[Any], str | None]:
    if "ndjson" in content_type or "jsonlines" in content_type:
        items = []
        for number, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                return [], f"line {number} is not JSON: {exc}"
        return items, None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return [], f"body is not JSON: {exc}"
    if isinstance(doc, dict) and isinstance(doc.get("measurements"), list):
        return doc["measurements"], None
    if isinstance(doc, list):
        return doc, None
    return [], 'expected {"measurements": [...]}, a JSON array, or NDJSON'


class HttpReceiver:
    """Serves a receiver app (meterkit's JSON API, or OTLP/HTTP logs) in a thread, writing
    what it accepts to its own spool under the agent's state directory."""

    def __init__(self, cfg: HttpReceiverConfig, spool: Path, catalog: Catalog | None, app: AppFactory) -> None:
        if not cfg.authenticated and not is_loopback(cfg.host):  # allowed by insecure_no_auth: said loudly
            logger.warning("meterkit agent: %s", insecure_warning(f"the receiver at {cfg.endpoint}", cfg.host))
        # Everything this receiver writes was validated against `catalog` under the SDK's
        # rules; the same sink as the SDK's frames it, with a tally, into the agent's spool.
        self.sink = SpoolSink(
            spool,
            f"http{os.getpid()}",
            max_segment_bytes=64 * 1024 * 1024,
            max_segment_age_seconds=60,
            max_spool_bytes=1 << 62,  # the agent's own spool: bounded by what it is sent
            fsync=True,
            validated=validation_token(catalog),
        )
        host, _, port = cfg.endpoint.rpartition(":")
        self.server = uvicorn.Server(
            uvicorn.Config(app(cfg, self.sink, catalog), host=host, port=int(port), log_level="warning", lifespan="off")
        )
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.run, name="http-receiver", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        if not self.server.started:
            # Its port is taken: by another process, or by a leader paused (SIGSTOP) that a
            # standby took over from, which keeps its sockets until it stops. Said loudly:
            # the spool receivers go on, but nothing is received here.
            logger.error(
                "meterkit agent: the receiver at %s is NOT listening (its port is in use?); restart the agent"
                " once the port is free",
                self.server.config.port and f"{self.server.config.host}:{self.server.config.port}",
            )

    @property
    def port(self) -> int:
        servers = getattr(self.server, "servers", [])
        for s in servers:
            for sock in s.sockets:
                return int(sock.getsockname()[1])
        return 0

    def shutdown(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sink.close()


def serve(cid: str, cfg: HttpReceiverConfig, host: ReceiverHost, app: AppFactory = create_receiver_app) -> HttpReceiver:
    """A network receiver serving ``app``, and the tailer of the spool it writes."""
    spool = host.state_dir / "http-spool" / cid.replace("/", "_")
    receiver = HttpReceiver(cfg, spool, host.catalog, app)
    host.tail(spool, 0.05)
    return receiver


FACTORY = Factory(HttpReceiverConfig, serve)
