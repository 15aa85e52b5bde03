"""The direct sink: the process posts its validated measurements itself, for runtimes with
no agent beside them (AWS Lambda, a job on a machine without one).

Each write becomes ``POST direct_url`` with ``{"measurements": [...]}`` (m3ter's ingest
shape, which the agent's HTTP receiver and the ledger take), at most :data:`MAX_PER_REQUEST`
at a time, carrying the uids the spool path would have written and an ``Idempotency-Key``
made from them, so a retry after a lost answer is recognised as the same request.

A 429, a 408, a 5xx or a failed connection is retried with exponential backoff, or after
``Retry-After`` when the server says, within ``direct_timeout_seconds`` per write (every
try included): the flusher's ``flush()`` returns once the server has acknowledged the
batch, or the budget is spent. What cannot be delivered is never raised into the
application: it is counted as lost under a reason (``direct_unreachable`` after the
budget, ``direct_refused`` for a 4xx that names no measurement), and a measurement the
server names as bad is counted under ``rejected:<reason>`` and the rest sent again. Every
one of them is kept in ``<spool_dir>/rejected/``, as refused measurements are.

The standard library's ``urllib.request`` does the HTTP: the SDK depends on neither
``requests`` nor ``urllib3`` (DESIGN.md §10), and one short retry loop needs neither.
The bearer token (``METERKIT_DIRECT_TOKEN``, or the first line of ``direct_token_file``)
is never logged and never in an error message.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from . import _guard
from ._errors import safe_repr
from ._losses import meter_name
from ._sinks import Sink
from ._timefmt import iso_ms

if TYPE_CHECKING:
    from ._settings import Settings

ENV_DIRECT_TOKEN = "METERKIT_DIRECT_TOKEN"  # noqa: S105 - a variable name
#: m3ter's ingest API takes at most 1,000 measurements per request.
MAX_PER_REQUEST = 1_000
#: One try never waits longer than this for an answer, whatever is left of the budget.
MAX_TRY_SECONDS = 5.0
_RETRIED = frozenset({408, 429, 500, 502, 503, 504})
#: Counts one lost measurement: (reason, meter, account).
Lose = Callable[[str, Any, Any], None]


class DirectSink:
    """Posts each write's measurements; keeps what it could not deliver in ``spool``'s
    ``rejected/`` file and counts it through ``lose``. ``write`` never raises."""

    def __init__(self, url: str, token: str | None, timeout_seconds: float, spool: Sink | None, lose: Lose) -> None:
        self.url = url
        self._token = token
        self.timeout_seconds = timeout_seconds
        self.spool = spool
        self._lose = lose
        self.undelivered = 0  # of the write under way

    # -- the Sink protocol -----------------------------------------------------------------

    def write(self, records: list[dict[str, Any]], controls: list[dict[str, Any]]) -> int:
        """Deliver ``records``; returns how many were counted as lost instead (``stats()``
        counts the rest as written). The tally is the server's to make; loss counts go to
        the spool, where an agent that reads it reports them (they are in ``stats()`` anyway)."""
        self.undelivered = 0
        deadline = time.monotonic() + self.timeout_seconds
        for start in range(0, len(records), MAX_PER_REQUEST):
            self._deliver(records[start : start + MAX_PER_REQUEST], deadline)
        losses = [c for c in controls if c.get("type") == "losses"]
        if losses and self.spool is not None:
            try:
                self.spool.write([], losses)
            except Exception as exc:  # counted in stats(); the spool is a courtesy here
                _guard.background_error("direct sink's loss records", exc)
        return self.undelivered

    def reject(self, entry: dict[str, Any]) -> None:
        if self.spool is not None:
            self.spool.reject(entry)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()

    def after_fork(self) -> None:
        if self.spool is not None:
            self.spool.after_fork()

    # -- delivery --------------------------------------------------------------------------

    def _deliver(self, records: list[dict[str, Any]], deadline: float) -> None:
        try:
            self._post_until_done(records, deadline)
        except Exception as exc:  # ours: counted, never raised into the application
            _guard.background_error("direct sink", exc)
            self._lost(records, "sdk_error", f"could not be sent: {safe_repr(exc)}")

    def _post_until_done(self, records: list[dict[str, Any]], deadline: float) -> None:
        attempt = 0
        while records:
            status, answer, wait = self._post(records, deadline)
            if status is not None and 200 <= status < 300:
                return
            if status is not None and status not in _RETRIED:
                named = _named(answer, len(records))
                if not named:
                    self._lost(records, "direct_refused", f"refused with HTTP {status}")
                    return
                for index, error in named.items():
                    self._lost([records[index]], f"rejected:{error.get('reason') or 'refused'}", _message(error))
                records = [r for i, r in enumerate(records) if i not in named]
                continue  # the rest, at once: the server refused the request for those alone
            attempt += 1
            wait = wait if wait is not None else min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
            if time.monotonic() + wait >= deadline:
                why = f"HTTP {status}" if status is not None else "no connection"
                _guard.logger.error(
                    "meterkit: %d measurement(s) not delivered to %s within %.1f s (%s); counted as lost",
                    len(records),
                    self.url,
                    self.timeout_seconds,
                    why,
                )
                self._lost(records, "direct_unreachable", f"not delivered within the retry budget ({why})")
                return
            time.sleep(wait)

    def _post(self, records: list[dict[str, Any]], deadline: float) -> tuple[int | None, Any, float | None]:
        """One try: (status or None for no answer, the answer's JSON, Retry-After seconds)."""
        body = orjson.dumps({"measurements": records})
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key(records)}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")  # noqa: S310
        seconds = max(0.05, min(MAX_TRY_SECONDS, deadline - time.monotonic()))
        try:
            with urllib.request.urlopen(request, timeout=seconds) as response:  # noqa: S310 - http(s) only
                return response.status, _json(response.read()), None
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _json(exc.read()), retry_after(exc.headers.get("Retry-After"))
        except (OSError, ValueError) as exc:  # refused, reset, timed out, a bad answer
            _guard.log_once(
                ("direct", type(exc).__name__),
                logging.WARNING,
                "meterkit: %s unreachable (%s)",
                self.url,
                type(exc).__name__,
            )
            return None, None, None

    def _lost(self, records: list[dict[str, Any]], reason: str, message: str) -> None:
        self.undelivered += len(records)
        at = iso_ms(time.time_ns())
        for record in records:
            self._lose(reason, meter_name(record.get("meter")), record.get("account"))
            entry = {"at": at, "reason": reason, "message": message, "meter": record.get("meter"), "field": None}
            try:
                self.reject({**entry, "record": record})
            except Exception as exc:  # a full disk: counted above
                _guard.background_error("rejected-measurements file", exc)


def chosen_sink(settings: Settings, spool: Sink, lose: Lose) -> Sink:
    """The flusher's sink: ``spool``, or with ``sink="direct"`` a :class:`DirectSink` that
    keeps what it cannot deliver in ``spool``'s ``rejected/`` file."""
    if settings.sink != "direct" or not settings.direct_url:
        return spool
    token = read_token(settings.direct_token_file)
    return DirectSink(settings.direct_url, token, settings.direct_timeout_seconds, spool, lose)


def idempotency_key(records: list[dict[str, Any]]) -> str:
    """The same measurements (by uid, in order) give the same key, on every retry."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(str(record.get("uid")).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:40]


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (RFC 9110: delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def read_token(token_file: Path | None) -> str | None:
    """``METERKIT_DIRECT_TOKEN``, else the first line of ``token_file``. A file that cannot
    be read is a ConfigError naming the file, never its content."""
    token = os.environ.get(ENV_DIRECT_TOKEN)
    if token:
        return token.strip()
    if token_file is None:
        return None
    from ._errors import ConfigError

    try:
        lines = token_file.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read direct_token_file {token_file}: {exc.strerror}") from None
    return lines[0].strip() if lines and lines[0].strip() else None


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _named(answer: Any, n: int) -> dict[int, dict[str, Any]]:
    """The measurements a 4xx answer names as bad (``errors``: index, uid, reason), by index."""
    errors = answer.get("errors") if isinstance(answer, dict) else None
    named: dict[int, dict[str, Any]] = {}
    for error in errors if isinstance(errors, list) else []:
        index = error.get("index") if isinstance(error, dict) else None
        if isinstance(index, int) and 0 <= index < n:
            named[index] = error
    return named


def _message(error: dict[str, Any]) -> str:
    return str(error.get("message") or error.get("reason") or "refused by the server")
