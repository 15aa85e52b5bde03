"""A small web API, metered with meterkit. Copy the pattern; the HTTP part is incidental.

Run it:  python examples/app.py --port 8080 --spool-dir /tmp/spool
Then:    curl -H 'X-Account: acme' localhost:8080/download?size=5000000

Every request is an API call (decorator, with duration and outcome); downloads record
bytes per user and region; logins and sessions record Who did what.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import meterkit

CATALOG = Path(__file__).with_name("meters.yaml")
Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def download(environ: Environ, query: dict[str, list[str]]) -> dict[str, Any]:
    size = int(query.get("size", ["1024"])[0])
    user = query.get("user", ["anonymous"])[0]
    meterkit.record(
        "data_downloaded",
        measure={"bytes": size},
        who={"user": user},
        where={"region": environ.get("HTTP_X_REGION", "eu-west-1")},
    )
    return {"sent": size}


def login(environ: Environ, query: dict[str, list[str]]) -> dict[str, Any]:
    user = query.get("user", ["anonymous"])[0]
    meterkit.record(
        "logins",
        measure={"logins": 1},
        who={"user": user},
        where={"country": query.get("country", ["GB"])[0]},
    )
    return {"welcome": user}


def session(environ: Environ, query: dict[str, list[str]]) -> dict[str, Any]:
    # A context manager measures a block: here, a (very short) simulated session.
    with meterkit.meter("session_duration", duration="seconds") as m:
        m.who["user"] = query.get("user", ["anonymous"])[0]
        time.sleep(random.uniform(0, 0.002))
    return {"ok": True}


ROUTES = {"/download": download, "/login": login, "/session": session}


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    account = environ.get("HTTP_X_ACCOUNT")
    if not account:
        start_response("401 Unauthorized", [("Content-Type", "application/json")])
        return [b'{"error": "X-Account header required"}']
    # Everything recorded while handling this request is billed to this account.
    with meterkit.context(account=account):
        return handle(environ, start_response)


@meterkit.meter("api_calls", measure={"calls": 1}, duration="seconds", outcome="status")
def handle(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    metering = meterkit.active_meter()
    if metering is not None:
        metering.what["endpoint"] = path
        metering.metadata["request_id"] = environ.get("HTTP_X_REQUEST_ID", "")
    route = ROUTES.get(path)
    if route is None:
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"error": "no such endpoint"}']
    body = json.dumps(route(environ, parse_qs(environ.get("QUERY_STRING", "")))).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve(host: str, port: int) -> ThreadingWSGIServer:
    server = make_server(host, port, application, server_class=ThreadingWSGIServer, handler_class=_QuietHandler)
    assert isinstance(server, ThreadingWSGIServer)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--spool-dir",
        default=None,
        help="default: METERKIT_SPOOL_DIR or ~/.local/state/meterkit/spool",
    )
    args = parser.parse_args()
    meterkit.configure(catalog=CATALOG, spool_dir=args.spool_dir)
    server = serve(args.host, args.port)
    print(f"serving on http://{args.host}:{server.server_port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        meterkit.shutdown()


if __name__ == "__main__":
    main()
