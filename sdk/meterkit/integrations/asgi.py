"""ASGI middleware (FastAPI, Starlette, any ASGI app): one measurement per HTTP request.

::

    from meterkit.integrations.asgi import MeterkitMiddleware

    app.add_middleware(MeterkitMiddleware, meter="api_calls", account="X-Account",
                       measure={"calls": 1}, outcome="status")

A plain ASGI middleware, not Starlette's ``BaseHTTPMiddleware``: the application runs in
this middleware's own task, so the ``meterkit.context`` it enters is the one every
handler, dependency and thread-pool call copies (Starlette's ``run_in_threadpool`` copies
the context). It needs no framework; under FastAPI it also makes sync ``yield``
dependencies keep the scope they enter (``meterkit.integrations.fastapi``).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._errors import LimitExceeded
from ._common import Extractor, Metered, extract_account, too_many_requests

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MeterkitMiddleware:
    """Meter each HTTP request of ``app`` with ``meter`` (see :class:`Metered` for the options).

    ``account``: a header name, ``header(...)``, ``jwt_claim(...)``, or a callable given the
    ASGI ``scope``. A :class:`meterkit.LimitExceeded` from the handler (or from ``limit=True``)
    becomes a 429 with ``Retry-After`` when the response has not started.
    """

    def __init__(self, app: ASGIApp, meter: str, *, account: Extractor | None = None, **options: Any) -> None:
        self.app = app
        self.metered = Metered(meter, account=account, **options)
        if "fastapi" in sys.modules:
            from ._fastapi_dependencies import keep_scope_in_sync_dependencies

            keep_scope_in_sync_dependencies()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        account = extract_account(self.metered.account, _header_getter(scope), scope)
        try:
            call = self.metered.start(account)
        except LimitExceeded as exc:
            await _send_429(send, exc)
            return
        started = False

        async def send_noting_status(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                call.finish(int(message["status"]))
            await send(message)

        with call:
            try:
                await self.app(scope, receive, send_noting_status)
            except LimitExceeded as exc:
                if started:
                    raise
                call.failed(exc)
                call.finish(429)
                await _send_429(send, exc)


def _header_getter(scope: Scope) -> Callable[[str], str | None]:
    def get(name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in scope.get("headers") or ():
            if key.lower() == wanted:
                return bytes(value).decode("latin-1")
        return None

    return get


async def _send_429(send: Send, exc: LimitExceeded) -> None:
    headers, body = too_many_requests(exc)
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode("latin-1")))
    await send({"type": "http.response.start", "status": 429, "headers": raw})
    await send({"type": "http.response.body", "body": body})
