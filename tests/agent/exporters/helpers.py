"""What the exporter tests share: fast retry settings and measurements in wire shape."""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from meterkit._timefmt import iso_ms
from meterkit_agent.exporters.exporterhelper import RetryConfig

FAST = RetryConfig(initial_interval_millis=1, max_interval_millis=2, request_timeout_millis=1000)
NOW = iso_ms(time.time_ns())
URL = "http://backend.test/organizations/o1/measurements"


def m(uid: str) -> dict[str, Any]:
    """A minimal measurement with a fixed time, for request shapes."""
    return {"uid": uid, "meter": "m", "account": "a", "ts": "2026-01-01T00:00:00.000Z", "measure": {"n": 1}}


def event(uid: str, **extra: Any) -> dict[str, Any]:
    """A measurement of now, with what OpenMeter and Stripe map."""
    base = {
        "uid": uid,
        "meter": "api_calls",
        "account": "customer-1",
        "ts": NOW,
        "measure": {"calls": 1, "seconds": 0.25},
        "what": {"route": "/hello"},
    }
    return {**base, **extra}


def body_of(call: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(gzip.decompress(call.request.body))
    return body


class Recorder:
    """An HTTP server on 127.0.0.1 that answers ``status`` (with ``Location`` for a 3xx)
    and records each request: method, request line's target, headers, body, and which
    connection. ``answer``: the body, gzipped with ``gzipped``; ``hang_up``: the connection
    is closed after each answer, which does not say so (as a server closing an idle
    keep-alive connection); ``delay``: seconds before answering; ``unanswered``: the
    requests (by number, from 0) it reads and closes the connection on without answering."""

    def __init__(
        self,
        status: int = 200,
        location: str = "",
        answer: bytes = b'{"ok":true}',
        gzipped: bool = False,
        hang_up: bool = False,
        delay: float = 0.0,
        unanswered: tuple[int, ...] = (),
    ) -> None:
        self.seen: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recorder.seen.append(
                    {
                        "method": self.command,
                        "target": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "connection": self.client_address,
                    }
                )
                if len(recorder.seen) - 1 in unanswered:
                    self.close_connection = True
                    return
                if delay:
                    time.sleep(delay)
                payload = gzip.compress(answer) if gzipped else answer
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up
                    self.send_response(status)
                    if location:
                        self.send_header("Location", location)
                    if gzipped:
                        self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                if hang_up:
                    self.close_connection = True

            do_POST = do_GET = _record

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
