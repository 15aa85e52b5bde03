"""``meterkit.context(...)``: values that fill every measurement recorded inside a scope.

A scope lives in a :class:`contextvars.ContextVar`, so it follows ``await`` and tasks, and
threads started with a copied context (``contextvars.copy_context().run``, or executors
that copy it). Nested scopes merge; the inner value wins; an explicit argument to
``record`` wins over any scope.

A scope's fields behave like Baggage's: with a catalog, a field fills only the meters that
declare it and is left out of the others, so ``context(who={"user": u})`` around a request
is safe whatever meters run inside it. A field passed to ``record`` or ``meter`` itself is
still checked: one the meter lacks is an error (strict) or a counted rejection
(production). The hot path captures the scope object in its tuple; the filtering is the
flusher's work (``_flusher._inherit``).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from . import _guard
from ._model import STRING_CATEGORIES

#: The string categories: what a scope (and baggage) may fill.
SCOPED_CATEGORIES = STRING_CATEGORIES

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Scope:
    account: str | None
    who: Mapping[str, Any] | None = None
    what: Mapping[str, Any] | None = None
    where: Mapping[str, Any] | None = None
    other: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None

    def merged(self, account: str | None, values: Mapping[str, Mapping[str, Any] | None]) -> Scope:
        def merge(category: str) -> Mapping[str, Any] | None:
            mine: Mapping[str, Any] | None = getattr(self, category)
            theirs = values.get(category)
            if not theirs:
                return mine
            return {**mine, **theirs} if mine else dict(theirs)

        return Scope(account if account is not None else self.account, *(merge(c) for c in SCOPED_CATEGORIES))


EMPTY = Scope(None)
current_scope: ContextVar[Scope] = ContextVar("meterkit_scope", default=EMPTY)


class context:
    # lower-case on purpose: it reads like a function, `with meterkit.context(account="acme"):`
    """Fill ``account`` and Who/What/Where/Other/Metadata values of measurements in a scope.

    Usable as ``with``, ``async with`` and as a decorator of sync or async functions.
    """

    def __init__(
        self,
        account: str | None = None,
        *,
        who: Mapping[str, Any] | None = None,
        what: Mapping[str, Any] | None = None,
        where: Mapping[str, Any] | None = None,
        other: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self._account = account
        self._values = {
            "who": who,
            "what": what,
            "where": where,
            "other": other,
            "metadata": metadata,
        }
        self._tokens: list[tuple[Token[Scope], Scope]] = []

    def _copy(self) -> context:
        return context(self._account, **self._values)

    def __enter__(self) -> Scope:
        scope = current_scope.get().merged(self._account, self._values)
        self._tokens.append((current_scope.set(scope), scope))
        return scope

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        token, scope = self._tokens.pop()
        try:
            current_scope.reset(token)
        except ValueError:
            _exit_elsewhere(token, scope)

    async def __aenter__(self) -> Scope:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, ev, tb)

    def __call__(self, fn: F) -> F:
        return decorate(fn, self._copy)


def _exit_elsewhere(token: Token[Scope], scope: Scope) -> None:
    """Leave a scope from a ``contextvars.Context`` other than the one it was entered in.

    A framework that runs ``__enter__`` and ``__exit__`` in two worker threads, each in a
    fresh copy of the caller's context (FastAPI's sync ``yield`` dependencies), makes
    ``ContextVar.reset`` raise ``ValueError``; raising it into the application would break
    the request for a bookkeeping detail. The scope was set in a context that is gone, so
    the only thing left to undo is this context's value, if it is still ours.
    ``meterkit.integrations.fastapi`` keeps such dependencies in one context instead.
    """
    if current_scope.get() is scope:
        old = token.old_value
        current_scope.set(EMPTY if old is Token.MISSING else old)
    _guard.log_once(
        "context_exited_elsewhere",
        logging.WARNING,
        "meterkit: a meterkit.context(...) was left in another thread's context than it was entered in; "
        "measurements between the two did not see it (docs/integrations.md)",
    )


def decorate(fn: F, manager: Callable[[], Any]) -> F:
    """Run each call of ``fn`` (sync or async) inside a fresh ``with manager():`` block.

    A fresh manager per call: one decorated function may run in many threads and tasks
    at once, so the ``with`` state cannot live on a shared object.
    """
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            with manager():
                return await fn(*args, **kwargs)

        return awrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with manager():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
