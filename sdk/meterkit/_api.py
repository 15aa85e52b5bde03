"""The module-level API: one process-wide client, made by :func:`configure`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import _allow, _guard
from ._catalog import Catalog
from ._client import Client
from ._errors import MeterkitError
from ._settings import LIMIT_SETTINGS
from ._sinks import SinkUnavailable

_client: Client | None = None
_lock = threading.Lock()


#: Run by :func:`configure` on the new client before it is installed; a check that raises
#: (strict mode: a misspelled meter) fails ``configure``. ``_meter`` registers its check here,
#: as it may not be imported by this module (``_meter`` imports ``_api``).
configure_checks: list[Callable[[Client], None]] = []


def configure(
    catalog: str | Path | Catalog | None = None,
    spool_dir: str | Path | None = None,
    plans: str | Path | None = None,
    **settings: Any,
) -> Client:
    """Set up metering for this process and return the client.

    Every setting may also come from a ``METERKIT_*`` environment variable; an argument
    beats the environment, which beats the default. ``plans`` (or ``METERKIT_PLANS``) is
    the plans file whose limits :func:`allow` decides; the limit settings
    (``limits_fallback``, ``balances_path``, ``balances_max_age_seconds``,
    ``limits_state_dir``, ``redis_url``, ``redis_timeout_millis``) go with it. Raises
    :class:`ConfigError`, :class:`CatalogError` or :class:`PlansFileError` for bad
    arguments: this is the one call that may raise in production mode. Calling it again
    replaces the client (the old one is flushed).
    """
    global _client
    limit_settings = {name: settings.pop(name) for name in list(settings) if name in LIMIT_SETTINGS}
    client = Client(catalog, spool_dir, **settings)
    try:
        engine = _allow.make_engine(client.settings, client.catalog, plans=plans, **limit_settings)
        for check in configure_checks:  # meters made at import, before there was a client to check them
            check(client)
    except BaseException:
        client.shutdown(0)
        raise
    with _lock:
        old, _client = _client, client
        _allow.install(engine)
    if old is not None:
        old.shutdown()
    return client


class _Unwritable:
    """The sink of a client whose configuration from the environment failed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def write(self, records: list[dict[str, Any]], controls: list[dict[str, Any]]) -> None:
        raise SinkUnavailable("not_configured", self.reason)

    def reject(self, entry: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


def get_client() -> Client:
    """The process-wide client; configured from the environment on first use if needed."""
    global _client
    client = _client
    if client is not None:
        return client
    with _lock:
        if _client is None:
            try:
                _client = Client()
                _guard.log_once(
                    "autoconfig",
                    logging.INFO,
                    "meterkit: not configured; using the environment and defaults (spool %s)",
                    _client.settings.spool_dir,
                )
            except MeterkitError as exc:
                # Never raise into the application: count every measurement as lost instead.
                _guard.logger.error(
                    "meterkit: cannot configure from the environment: %s; measurements are counted as lost",
                    exc,
                )
                _client = Client(
                    spool_dir="/nonexistent",
                    sink=_Unwritable(str(exc)),
                    queue_full_timeout_millis=0,
                    mode="production",
                )
        return _client


def record(
    meter: str,
    *,
    account: str | None = None,
    measure: Mapping[str, Any] | None = None,
    who: Mapping[str, Any] | None = None,
    what: Mapping[str, Any] | None = None,
    where: Mapping[str, Any] | None = None,
    other: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    income: Mapping[str, Any] | None = None,
    cost: Mapping[str, Any] | None = None,
    ts: Any = None,
    ets: Any = None,
    uid: str | None = None,
) -> None:
    """Record one measurement of ``meter``.

    ``account`` is the billed account (or comes from :func:`meterkit.context`). Category
    arguments map field codes to values: strings for who/what/where/other/metadata,
    numbers for measure/income/cost. ``ts``/``ets`` default to now; pass a timezone-aware
    ``datetime`` or ISO 8601 string to set them. ``uid`` defaults to a fresh unique id.

    Production mode: never raises; a bad measurement is logged once, counted and written
    to the spool's ``rejected/`` folder. Strict mode: raises :class:`MeasurementError`.
    """
    # Positional: passing thirteen keyword arguments on costs more than the rest of the call.
    (_client or get_client())._record(
        meter, account, measure, who, what, where, other, metadata, income, cost, ts, ets, uid
    )


def flush(timeout: float | None = 5.0) -> bool:
    """Write everything recorded so far to the spool. True if done within ``timeout`` seconds."""
    return _client.flush(timeout) if _client is not None else True


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop the process-wide client (also done at interpreter exit), and forget
    the limits configured with it."""
    global _client
    with _lock:
        client, _client = _client, None
        _allow.install(None)  # limits go with the client that configured them
    return client.shutdown(timeout) if client is not None else True


def stats() -> dict[str, Any]:
    """Counts of the process-wide client: written, queued, and lost by reason; and, when
    limits are configured, ``limits``: fallback decisions by cause."""
    counts = get_client().stats()
    engine = _allow.engine
    if engine is not None:
        counts["limits"] = dict(engine.counts)
    return counts


#: ``meterkit.allow(meter, account=None, quantity=1, amounts=None) -> Decision``: bound
#: straight to the engine's entry point, one Python call fewer on a 1.5 µs budget.
allow = _allow.allow
