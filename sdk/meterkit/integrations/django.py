"""Django middleware: one measurement per request, configured in ``settings.py``.

::

    MIDDLEWARE = ["meterkit.integrations.django.MeterkitMiddleware", ...]   # first, or near it
    METERKIT_DJANGO = {"meter": "api_calls", "account": "X-Account", "measure": {"calls": 1},
                       "outcome": "outcome", "status": "status"}

``METERKIT_DJANGO`` holds the options of :class:`meterkit.integrations._common.Metered`;
``account`` is a header name, ``header(...)``, ``jwt_claim(...)`` or a callable given the
``HttpRequest``. Sync and async: under ASGI, Django runs sync views through asgiref's
``sync_to_async``, which copies the context, so they see the scope. Django turns a view's
exception into a 500 before a middleware sees it; ``process_exception`` notes it (outcome
``error``) and answers :class:`meterkit.LimitExceeded` with a 429 and ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import LimitExceeded
from ._common import Call, Metered, current_call, extract_account, require, too_many_requests

_django_conf = require("django.conf", "Django", "django")
_http = require("django.http", "Django", "django")
_asgiref_sync = require("asgiref.sync", "Django", "django")
_exceptions = require("django.core.exceptions", "Django", "django")
#: What Django answers with a 4xx (``response_for_exception``): the client's error, not an
#: error of the application; its status gives the outcome (``client_error``).
_CLIENT_ERRORS: tuple[type[Exception], ...] = (
    _http.Http404,
    _exceptions.PermissionDenied,
    _exceptions.BadRequest,
    _exceptions.SuspiciousOperation,
)


class MeterkitMiddleware:
    """Meter each request with the options in ``settings.METERKIT_DJANGO``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        options = dict(getattr(_django_conf.settings, "METERKIT_DJANGO", None) or {})
        if "meter" not in options:
            raise _exceptions.ImproperlyConfigured("METERKIT_DJANGO needs a 'meter' (the meter code to record)")
        self.metered = Metered(options.pop("meter"), **options)
        self.get_response = get_response
        self._async = _asgiref_sync.iscoroutinefunction(get_response)
        if self._async:
            _asgiref_sync.markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self._acall(request)
        try:
            call = self._start(request)
        except LimitExceeded as exc:
            return _response_429(exc)
        with call:
            return self._noted(call, self.get_response(request))

    async def _acall(self, request: Any) -> Any:
        try:
            call = self._start(request)
        except LimitExceeded as exc:
            return _response_429(exc)
        with call:
            return self._noted(call, await self.get_response(request))

    def _start(self, request: Any) -> Call:
        account = extract_account(self.metered.account, request.headers.get, request)
        return self.metered.start(account)

    @staticmethod
    def _noted(call: Call, response: Any) -> Any:
        call.finish(int(response.status_code))
        return response

    def process_exception(self, request: Any, exception: Exception) -> Any:
        call = current_call.get()
        if call is not None and not isinstance(exception, _CLIENT_ERRORS):
            call.failed(exception)
        return _response_429(exception) if isinstance(exception, LimitExceeded) else None


def _response_429(exc: LimitExceeded) -> Any:
    headers, body = too_many_requests(exc)
    response = _http.HttpResponse(body, status=429, content_type="application/json")
    for name, value in headers[1:]:
        response[name] = value
    return response


__all__ = ["MeterkitMiddleware"]
