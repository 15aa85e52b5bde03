"""The process-wide decision engine behind :func:`meterkit.allow`.

:func:`meterkit.configure` makes it (``plans=`` or ``METERKIT_PLANS``); without that, the
first ``allow`` makes it from the environment. A plans file named only by the environment
that cannot be read does not raise into the application: it is logged, and every decision
is the fallback policy's, reason ``"plans file unusable"``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _guard
from ._decide import NO_ACCOUNT, NO_LIMIT, Decision, Engine
from ._errors import MeterkitError
from ._plans import LimitPlans, load_limit_plans
from ._scope import current_scope
from ._settings import Settings, resolve, resolve_limits

if TYPE_CHECKING:
    from ._catalog import Catalog

engine: Engine | None = None
_lock = threading.Lock()
_EMPTY = LimitPlans({}, {})


def make_engine(settings: Settings, catalog: Catalog | None, plans: str | Path | None = None, **given: Any) -> Engine:
    """An engine for these settings; raises :class:`PlansFileError` for a bad plans file."""
    limit_settings = resolve_limits(settings.spool_dir, settings.mode, plans=plans, **given)
    loaded = load_limit_plans(limit_settings.plans, catalog) if limit_settings.plans else _EMPTY
    return Engine(loaded, limit_settings)


def install(new: Engine | None) -> None:
    global engine
    engine = new


def _from_environment() -> Engine:
    global engine
    with _lock:
        if engine is not None:
            return engine
        settings = resolve()
        try:
            engine = make_engine(settings, None)
        except MeterkitError as exc:
            _guard.logger.error("meterkit: limits: %s; every decision follows the fallback policy", exc)
            engine = Engine(_EMPTY, resolve_limits(settings.spool_dir, settings.mode))
            engine.broken = "plans file unusable"
        return engine


def allow(
    meter: str, account: str | None = None, quantity: int = 1, amounts: Mapping[str, Any] | None = None
) -> Decision:
    """Whether ``account`` may use ``quantity`` more of ``meter`` now: a
    :class:`meterkit.Decision` (allowed, remaining, retry_after, reason, fallback, limit).

    ``account`` defaults to the one of :func:`meterkit.context`. ``quantity`` counts
    toward rate limits and toward caps on the meter itself (a count); ``amounts`` gives
    the fields' values (``{"bytes": 4096}``) for caps on a field. No plan or no limit:
    allowed, reason ``"no limit"``. Production mode never raises: an error inside
    meterkit is decided by the fallback policy and counted. Strict mode raises
    ``TypeError`` or ``ValueError`` for a bad argument.
    """
    current = engine or _from_environment()
    if account is None:
        account = current_scope.get().account
        if account is None:
            return NO_ACCOUNT
    strict = current.strict
    if strict:
        _check(meter, account, quantity, amounts)
    if current.broken:
        return current.fallback(current.broken, None)
    if not current.plans.accounts:
        return NO_LIMIT
    try:
        return current.allow(meter, account, quantity, dict(amounts) if amounts else None)
    except Exception as exc:  # never raise into the application after setup
        if strict:
            raise
        _guard.log_once(("allow", type(exc)), logging.ERROR, "meterkit: error deciding a limit", exc_info=exc)
        return current.fallback(f"internal error ({type(exc).__name__})", None)


def _check(meter: Any, account: Any, quantity: Any, amounts: Any) -> None:
    if not isinstance(meter, str) or not isinstance(account, str):
        raise TypeError("allow(meter, account=...): meter and account must be text")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        raise ValueError(f"allow(quantity={quantity!r}): quantity must be a whole number of at least 1")
    if amounts is not None and not isinstance(amounts, Mapping):
        raise TypeError("allow(amounts=...) maps field codes to numbers")


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    if engine is not None:
        engine.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
