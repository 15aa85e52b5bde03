"""FastAPI's sync ``yield`` dependencies, made to keep the meterkit scope they enter.

FastAPI runs a sync generator dependency's ``__enter__`` and ``__exit__`` in two worker
threads, each in its own fresh copy of the request's ``contextvars`` context. A
dependency that yields inside ``with meterkit.context(account=...)`` therefore sets the
scope in a copy that is thrown away (the endpoint sees no account: every measurement is
refused as ``missing_account``), and leaves it from another copy (``ValueError: <Token>
was created in a different Context``). :func:`keep_scope_in_sync_dependencies` (called
by the middleware) runs both halves in one context kept for the dependency, and carries
meterkit's scope from it into the request, so a sync dependency behaves as an async one
does. Only meterkit's own context variables are carried: other libraries' are left as
FastAPI leaves them.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

from .._meter import _active
from .._scope import current_scope
from ._common import require

_utils: Any = require("fastapi.dependencies.utils", "fastapi", "fastapi")

T = TypeVar("T")
#: meterkit's context variables: the scope and the active ``meterkit.meter`` block.
_CARRIED: tuple[contextvars.ContextVar[Any], ...] = (current_scope, _active)
_lock = threading.Lock()


class _OneContext(AbstractContextManager[T]):
    """A sync context manager whose ``__enter__`` and ``__exit__`` both run in ``context``,
    whichever thread calls them (never two at once: FastAPI calls them in turn)."""

    def __init__(self, cm: AbstractContextManager[T]) -> None:
        self.cm = cm
        self.context = contextvars.copy_context()

    def __enter__(self) -> T:
        return self.context.run(self.cm.__enter__)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return self.context.run(self.cm.__exit__, et, ev, tb)


def _carrying_scope(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @asynccontextmanager
    async def contextmanager_in_threadpool(cm: AbstractContextManager[T]) -> AsyncIterator[T]:
        kept = _OneContext(cm)
        async with original(kept) as value:
            tokens = [
                (var, var.set(kept.context[var]))
                for var in _CARRIED
                if var in kept.context and kept.context[var] is not var.get(None)
            ]
            try:
                yield value
            finally:
                for var, token in reversed(tokens):
                    # ValueError: the request's cleanup ran in another context; nothing here to undo
                    with contextlib.suppress(ValueError):
                        var.reset(token)

    contextmanager_in_threadpool.meterkit_original = original  # type: ignore[attr-defined]
    return contextmanager_in_threadpool


def keep_scope_in_sync_dependencies() -> None:
    """Make FastAPI's sync ``yield`` dependencies keep the meterkit scope they enter, for
    every FastAPI app in the process. Idempotent; wraps FastAPI's own threadpool runner
    (all its thread, limiter and cancellation handling stays FastAPI's)."""
    with _lock:
        current = getattr(_utils, "contextmanager_in_threadpool", None)
        if current is None or hasattr(current, "meterkit_original"):
            return
        _utils.contextmanager_in_threadpool = _carrying_scope(current)


__all__ = ["keep_scope_in_sync_dependencies"]
