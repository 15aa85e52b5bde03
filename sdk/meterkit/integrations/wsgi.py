"""WSGI middleware (Flask, any WSGI app): one measurement per HTTP request.

::

    from meterkit.integrations.wsgi import instrument_flask

    instrument_flask(app, meter="api_calls", account="X-Account", measure={"calls": 1})

It wraps the application callable, so the ``meterkit.context`` it enters is current for
everything the request runs on its thread (Flask's ``before_request`` hooks, views,
``teardown_request``), with no ``__enter__``/``__exit__`` by hand. The measurement ends
when the application has returned its response, or, for an application that calls
``start_response`` only when its body is first iterated, when the first chunk is made:
the status is known then. A streamed body made after that runs outside the scope (wrap
its generator in ``contextvars.copy_context().run`` or Flask's ``stream_with_context``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any

from .._errors import LimitExceeded
from ._common import Call, Extractor, Metered, current_call, extract_account, require, too_many_requests

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class MeterkitWSGIMiddleware:
    """Meter each request of ``app`` with ``meter`` (options: :class:`Metered`).

    ``account``: a header name, ``header(...)``, ``jwt_claim(...)``, or a callable given the
    WSGI ``environ``. A :class:`meterkit.LimitExceeded` from the application (or from
    ``limit=True``) becomes a 429 with ``Retry-After``.
    """

    def __init__(self, app: WSGIApp, meter: str, *, account: Extractor | None = None, **options: Any) -> None:
        self.app = app
        self.metered = Metered(meter, account=account, **options)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        account = extract_account(self.metered.account, _header_getter(environ), environ)
        try:
            call = self.metered.start(account)
        except LimitExceeded as exc:
            return _respond_429(start_response, exc)
        with call:
            try:
                return self._run(call, environ, start_response)
            except LimitExceeded as exc:
                call.failed(exc)
                call.finish(429)
                return _respond_429(start_response, exc)

    def _run(self, call: Call, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def start_noting_status(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            call.finish(int(status.split(" ", 1)[0]))
            return (
                start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)
            )

        body = self.app(environ, start_noting_status)
        if call.status is not None:
            return body
        return _first_chunk_now(body)


def _first_chunk_now(body: Iterable[bytes]) -> Iterable[bytes]:
    """Make the body's first chunk now (PEP 3333 lets ``start_response`` wait for it),
    keeping the rest lazy and the body's ``close`` for the server to call."""
    chunks = iter(body)
    try:
        first = next(chunks)
    except StopIteration:
        return body
    return _Body(chain((first,), chunks), body)


class _Body:
    def __init__(self, chunks: Iterator[bytes], original: Iterable[bytes]) -> None:
        self._chunks = chunks
        self._original = original

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        close = getattr(self._original, "close", None)
        if close is not None:
            close()


def _header_getter(environ: dict[str, Any]) -> Callable[[str], str | None]:
    def get(name: str) -> str | None:
        key = name.upper().replace("-", "_")
        found = environ.get(key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}")
        return found if isinstance(found, str) else None

    return get


def _respond_429(start_response: StartResponse, exc: LimitExceeded) -> list[bytes]:
    headers, body = too_many_requests(exc)
    start_response("429 Too Many Requests", [*headers, ("Content-Length", str(len(body)))])
    return [body]


def instrument_flask(app: Any, meter: str, *, account: Extractor | None = None, **options: Any) -> Any:
    """Meter every request of a Flask ``app``; returns ``app``.

    Wraps ``app.wsgi_app`` in :class:`MeterkitWSGIMiddleware` (the account callable is given
    the WSGI ``environ``; ``flask.Request(environ)`` reads it as Flask would). Flask turns a
    view's exception into a 500 response before the middleware sees it, so this also
    listens to ``got_request_exception`` (the outcome is ``error``, not ``server_error``)
    and registers an error handler that answers :class:`meterkit.LimitExceeded` with a 429.
    """
    flask = require("flask", "Flask", "flask")
    if not isinstance(app, flask.Flask):
        raise TypeError(f"instrument_flask() needs a Flask app, not {type(app).__name__}")
    app.wsgi_app = MeterkitWSGIMiddleware(app.wsgi_app, meter, account=account, **options)
    app.register_error_handler(LimitExceeded, _flask_429)
    flask.got_request_exception.connect(_note_exception, app, weak=False)
    return app


def _flask_429(exc: LimitExceeded) -> tuple[bytes, int, list[tuple[str, str]]]:
    call = current_call.get()
    if call is not None:
        call.failed(exc)
    headers, body = too_many_requests(exc)
    return body, 429, headers


def _note_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
    call = current_call.get()
    if call is not None:
        call.failed(exception)


__all__ = ["MeterkitWSGIMiddleware", "instrument_flask"]
