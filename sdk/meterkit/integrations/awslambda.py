"""AWS Lambda: a handler wrapper that meters each invocation and flushes before returning.

::

    from meterkit.integrations.awslambda import metered_handler

    @metered_handler("api_calls", account="X-Account", measure={"calls": 1}, outcome="outcome")
    def handler(event, context): ...

Lambda freezes the execution environment as soon as the handler returns, and may end it
while frozen: a flusher thread's pending work would then be lost. So the wrapper flushes
the client before it returns (``flush_timeout_seconds``, 2 by default; a flush that does
not finish in time is logged and the invocation still answers). Flushing writes to the
spool; delivering from a runtime with no agent beside it is not solved here (see
docs/integrations.md).

``account``: a header name or ``header(...)``/``jwt_claim(...)`` (read from an API Gateway
or function URL event's ``headers``), or a callable given ``(event, context)``. A result
with a ``statusCode`` (API Gateway, function URLs, ALB) gives a status-aware outcome; a
:class:`meterkit.LimitExceeded` becomes such a result with 429 and ``Retry-After`` when
the event is an HTTP one, and is raised again otherwise.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .. import _api, _guard
from .._errors import LimitExceeded
from ._common import Call, Extractor, Metered, extract_account, too_many_requests

Handler = TypeVar("Handler", bound=Callable[[Any, Any], Any])


def metered_handler(
    meter: str, *, account: Extractor | None = None, flush_timeout_seconds: float = 2.0, **options: Any
) -> Callable[[Handler], Handler]:
    """Decorate a Lambda handler: one measurement per invocation (options: :class:`Metered`)."""
    metered = Metered(meter, account=account, **options)

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def invoke(event: Any, context: Any) -> Any:
            try:
                return _invoke(metered, handler, event, context)
            finally:
                _flush(metered, flush_timeout_seconds)

        return invoke  # type: ignore[return-value]

    return wrap


def _invoke(metered: Metered, handler: Callable[[Any, Any], Any], event: Any, context: Any) -> Any:
    found = extract_account(metered.account, _header_getter(event), event, context)
    try:
        call = metered.start(found)
    except LimitExceeded as exc:
        return _answer_429(event, exc)
    with call:
        try:
            result = handler(event, context)
        except LimitExceeded as exc:
            if not _is_http(event):
                raise
            call.failed(exc)
            call.finish(429)
            return _answer_429(event, exc)
        _note_status(call, result)
        return result


def _note_status(call: Call, result: Any) -> None:
    status = result.get("statusCode") if isinstance(result, Mapping) else None
    if isinstance(status, int) and not isinstance(status, bool):
        call.finish(status)


def _is_http(event: Any) -> bool:
    return isinstance(event, Mapping) and ("requestContext" in event or "httpMethod" in event)


def _answer_429(event: Any, exc: LimitExceeded) -> dict[str, Any]:
    if not _is_http(event):
        raise exc
    headers, body = too_many_requests(exc)
    return {"statusCode": 429, "headers": dict(headers), "body": body.decode()}


def _header_getter(event: Any) -> Callable[[str], str | None]:
    headers = event.get("headers") if isinstance(event, Mapping) else None
    lowered = {str(k).lower(): v for k, v in headers.items()} if isinstance(headers, Mapping) else {}

    def get(name: str) -> str | None:
        found = lowered.get(name.lower())
        return found if isinstance(found, str) else None

    return get


def _flush(metered: Metered, timeout: float) -> None:
    client = metered.spec.client or _api.get_client()
    if not client.flush(timeout):
        _guard.log_once(
            "lambda_flush_timeout",
            logging.WARNING,
            "meterkit: the flush before the Lambda handler returned did not finish in %.1f s",
            timeout,
        )


__all__ = ["metered_handler"]
