"""What every integration shares: the account extractors, the request measurement, the
outcome of a response or an exception, and the 429 a refused limit turns into.

An integration only translates its framework's request and response into these: the
header lookup, the status code, the exception. So the outcome values, the ``Retry-After``
rounding and the extractor rules are the same in every framework, and tested once.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import logging
import math
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from types import ModuleType, TracebackType
from typing import Any

import orjson

from .. import _guard
from .._errors import ConfigError, LimitExceeded
from .._meter import Metering, meter
from .._model import STRING_CATEGORIES
from .._scope import context

#: What an integration records in its ``outcome`` field (docs/integrations.md).
OK, CLIENT_ERROR, LIMITED, SERVER_ERROR, ERROR, RETRY = (
    "ok",
    "client_error",
    "limited",
    "server_error",
    "error",
    "retry",
)

#: A header lookup: the header's value for a case-insensitive name, or None.
HeaderGetter = Callable[[str], "str | None"]


def require(module: str, package: str, extra: str) -> ModuleType:
    """Import ``module`` of a framework, or raise an ImportError that says how to install it.

    Called when an integration module is imported, never by ``import meterkit``: the SDK
    installs and imports without any framework.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"meterkit.integrations.{extra} needs {package}, which is not installed: "
            f"pip install 'meterkit[{extra}]' (or pip install {package})"
        ) from exc


class FromHeaders:
    """An account extractor that reads request headers (every HTTP integration knows how)."""

    def from_headers(self, get: HeaderGetter) -> str | None:
        raise NotImplementedError


class header(FromHeaders):
    # lower-case on purpose: it reads like a function, `account=header("X-Account")`
    """The account is the value of a request header (a plain string does the same)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def from_headers(self, get: HeaderGetter) -> str | None:
        return get(self.name) or None


class jwt_claim(FromHeaders):
    # lower-case on purpose: `account=jwt_claim("org_id", verified=True)`
    """The account is a claim of the bearer token in a header (``Authorization`` by default).

    meterkit does **not** verify the token's signature: it decodes the payload only. Pass
    ``verified=True`` to state that the application (an auth dependency, a middleware that
    runs first, an API gateway in front of it) has already verified the same token; without
    that, use a callable extractor that verifies it with your key. A token that cannot be
    decoded, or lacks the claim, gives no account (the measurement is then refused as
    ``missing_account`` and counted). Raises :class:`ConfigError` unless ``verified=True``.
    """

    def __init__(self, claim: str, *, verified: bool, header: str = "Authorization", scheme: str = "Bearer") -> None:
        if verified is not True:
            raise ConfigError(
                "jwt_claim() decodes the token without verifying its signature: pass verified=True only where "
                "the application or a gateway in front of it verifies the token first, else pass a callable "
                "that verifies it"
            )
        self.claim = claim
        self.header = header
        self.prefix = f"{scheme.lower()} " if scheme else ""

    def from_headers(self, get: HeaderGetter) -> str | None:
        value = get(self.header)
        if not value:
            return None
        if self.prefix:
            if value[: len(self.prefix)].lower() != self.prefix:
                return None
            value = value[len(self.prefix) :]
        return self.from_token(value.strip())

    def from_token(self, token: str) -> str | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except (binascii.Error, ValueError):
            return None
        found = payload.get(self.claim) if isinstance(payload, dict) else None
        if isinstance(found, str):
            return found or None
        if isinstance(found, int) and not isinstance(found, bool):
            return str(found)
        return None


#: ``account=``: a header name, ``header(...)``, ``jwt_claim(...)``, or a callable given
#: the framework's own request (see each integration).
Extractor = str | FromHeaders | Callable[..., "str | None"]


def extract_account(extractor: Extractor | None, get: HeaderGetter | None, *native: Any) -> str | None:
    """The account ``extractor`` finds, or None. A callable that raises gives no account and
    is logged once: an extractor's bug must not fail the request it meters."""
    if extractor is None:
        return None
    try:
        if isinstance(extractor, str):
            extractor = header(extractor)
        if isinstance(extractor, FromHeaders):
            return extractor.from_headers(get) if get is not None else None
        found = extractor(*native)
    except Exception as exc:
        _guard.log_once(
            ("account_extractor", type(exc)),
            logging.WARNING,
            "meterkit: the account extractor raised %s; requests it fails on have no account",
            type(exc).__name__,
        )
        return None
    return found if isinstance(found, str) and found else None


def outcome_of_status(status: int) -> str:
    """``ok`` below 400, ``limited`` for 429, ``client_error`` for other 4xx, else ``server_error``."""
    if status < 400:
        return OK
    if status == 429:
        return LIMITED
    return CLIENT_ERROR if status < 500 else SERVER_ERROR


def outcome_of_exception(exc: BaseException | None) -> str:
    """``limited`` for :class:`LimitExceeded`, ``error`` for any other exception."""
    return LIMITED if isinstance(exc, LimitExceeded) else ERROR


def retry_after_seconds(exc: LimitExceeded) -> int | None:
    """``Retry-After`` in whole seconds, rounded up and at least 1 (RFC 9110 §10.2.3 allows
    only a non-negative integer; 0 would invite an immediate retry that is refused too).
    None when waiting cannot help (``retry_after`` is infinite): then no header is sent."""
    seconds = exc.retry_after
    if not math.isfinite(seconds):
        return None
    return max(1, math.ceil(seconds))


def too_many_requests(exc: LimitExceeded) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and JSON body of the 429 response a refused limit becomes."""
    seconds = retry_after_seconds(exc)
    headers = [("Content-Type", "application/json")]
    body: dict[str, Any] = {"detail": "limit exceeded"}
    if seconds is not None:
        headers.append(("Retry-After", str(seconds)))
        body["retry_after"] = seconds
    return headers, orjson.dumps(body)


def _string_field(name: str | None, what: str) -> tuple[str, str] | None:
    if name is None:
        return None
    category, _, code = name.rpartition(".")
    category = category or "other"
    if category not in STRING_CATEGORIES:
        raise ValueError(f"{what}={name!r}: the category must be a string one ({', '.join(STRING_CATEGORIES)})")
    return category, code


class Metered:
    """What an integration records for each request or task: one measurement of ``meter``.

    ``account`` finds the billed account (see :data:`Extractor`); ``measure`` holds fixed
    amounts (``{"calls": 1}``); ``duration`` names a Measure field for the seconds taken;
    ``outcome`` and ``status`` name string fields (``other`` unless prefixed, as
    ``meterkit.meter``'s ``outcome``) for the outcome and the HTTP status code; ``limit``
    asks :func:`meterkit.allow` for one unit first and answers 429 when refused.
    """

    def __init__(
        self,
        meter_code: str,
        *,
        account: Extractor | None = None,
        measure: Mapping[str, Any] | None = None,
        duration: str | None = None,
        outcome: str | None = None,
        status: str | None = None,
        limit: bool = False,
        **fields: Any,
    ) -> None:
        self.account = account
        self.outcome = _string_field(outcome, "outcome")
        self.status = _string_field(status, "status")
        self.spec = meter(meter_code, measure=measure, duration=duration, limit=limit, **fields)

    def start(self, account: str | None) -> Call:
        """Start one request's measurement; end it with ``with call:`` around the handler.
        Raises :class:`LimitExceeded` (nothing started) when ``limit`` refuses."""
        return Call(self, account)._start()


class Call:
    """One request or task being metered: inside a ``meterkit.context(account=...)`` and a
    ``meterkit.meter`` block, so everything the handler records gets the account and
    ``meterkit.active_meter()`` is this request's measurement.

    Started by :meth:`Metered.start` (which raises :class:`LimitExceeded`, having left
    both, when the integration's ``limit`` refuses: nothing is recorded then) and ended by
    the ``with`` block around the handler. The outcome is that of an exception (noted by
    :meth:`failed`, or leaving the block), else that of the status (:meth:`finish`), else
    ``ok``.
    """

    __slots__ = ("_block", "_scope", "_token", "failure", "metered", "status")

    def __init__(self, metered: Metered, account: str | None) -> None:
        self.metered = metered
        self._scope = context(account) if account is not None else None
        self._block: Metering | None = None
        self.failure: str | None = None
        self.status: int | None = None
        self._token: Token[Call | None] | None = None

    def _start(self) -> Call:
        if self._scope is not None:
            self._scope.__enter__()
        try:
            self._block = self.metered.spec.__enter__()
        except BaseException:
            if self._scope is not None:
                self._scope.__exit__(None, None, None)
            raise
        self._token = current_call.set(self)
        return self

    def __enter__(self) -> Call:
        return self

    def finish(self, status: int) -> None:
        """Note the response's status code."""
        self.status = status

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self._token is not None:
                current_call.reset(self._token)
            self._fill(ev)
            self.metered.spec.__exit__(et, ev, tb)
        finally:
            if self._scope is not None:
                self._scope.__exit__(et, ev, tb)

    def failed(self, exc: BaseException) -> None:
        """Note an exception a framework turned into a response (Flask, Django): the
        outcome is the exception's (``error``, ``limited``), not the 500's."""
        self.failure = outcome_of_exception(exc)

    def _fill(self, exc: BaseException | None) -> None:
        block, metered = self._block, self.metered
        if block is None:
            return
        if exc is not None and self.failure is None:
            self.failure = outcome_of_exception(exc)
        outcome = self.failure or (outcome_of_status(self.status) if self.status is not None else OK)
        if metered.outcome is not None:
            getattr(block, metered.outcome[0])[metered.outcome[1]] = outcome
        if metered.status is not None and self.status is not None:
            getattr(block, metered.status[0])[metered.status[1]] = str(self.status)


#: The request or task being metered on this thread or task, for framework hooks (an
#: exception signal) that are not given it.
current_call: ContextVar[Call | None] = ContextVar("meterkit_integration_call", default=None)
