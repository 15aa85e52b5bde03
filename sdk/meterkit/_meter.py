"""``meterkit.meter(...)``: one object that is a decorator and a context manager.

Each call of a decorated function, and each ``with`` block, records one measurement when
it ends: its fields, the elapsed time if ``duration=`` names a Measure field, and whether
it raised if ``outcome=`` names a field. The user's exception always propagates.

With ``limit=True`` each call (or block) first asks :func:`meterkit.allow` for one unit of
the meter for its account; when refused it raises :class:`meterkit.LimitExceeded` instead
of running, and records nothing. When it runs, the amounts it recorded in fields that
have caps count toward them.

In strict mode a ``meter`` checks its names when it is made (at decoration, or where
``meterkit.meter(...)`` is called): the meter code, every field it is given, and the fields
``duration=`` and ``outcome=`` name, against the catalog of the client it will record to.
A misspelling then fails where it is written, not when the function first runs. It needs
that client to exist: one made before ``meterkit.configure`` is checked at record time,
as before. Production mode checks nothing here and never raises.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _allow, _api
from ._client import record_owned
from ._errors import LimitExceeded
from ._guard import background_error
from ._model import CATEGORIES, STRING_CATEGORIES, _misplaced, problem
from ._scope import current_scope

if TYPE_CHECKING:
    from ._client import Client

F = TypeVar("F", bound=Callable[..., Any])
_active: ContextVar[Metering | None] = ContextVar("meterkit_metering", default=None)


def active_meter() -> Metering | None:
    """The innermost ``meterkit.meter`` block or decorated call running now, if any.

    A decorated function uses it to add fields: ``meterkit.active_meter().measure["bytes"] = n``.
    """
    return _active.get()


class Metering:
    """One measurement being built by a ``meter`` block. Its dicts may be changed freely.

    Each category's dict is made the first time it is read (a copy of the ``meter``'s own
    fields): most calls read none, and copying eight dicts per call cost a microsecond.
    """

    __slots__ = (
        "_own",
        "_started",
        "_token",
        "account",
        "cost",
        "income",
        "measure",
        "metadata",
        "other",
        "spec",
        "what",
        "where",
        "who",
    )

    def __init__(self, spec: meter) -> None:
        self.spec = spec
        self.account: str | None = spec.account
        self._token: Token[Metering | None] | None = None
        self._own = False  # some category dict was made: the spec's shared ones will not do
        self._started = perf_counter() if spec.duration is not None else 0.0

    # Declared for type checkers; made by __getattr__ on first read (a slot not yet set).
    who: dict[str, Any]
    what: dict[str, Any]
    where: dict[str, Any]
    other: dict[str, Any]
    metadata: dict[str, Any]
    measure: dict[str, Any]
    income: dict[str, Any]
    cost: dict[str, Any]

    def __getattr__(self, name: str) -> dict[str, Any]:
        if name not in _CATEGORY_SET:
            raise AttributeError(name)
        fields = self.spec.fields[name]
        made: dict[str, Any] = dict(fields) if fields else {}
        setattr(self, name, made)
        self._own = True
        return made

    def set(self, *, account: str | None = None, **categories: Mapping[str, Any]) -> None:
        """Add or replace fields: ``m.set(measure={"bytes": n}, who={"user": u})``."""
        if account is not None:
            self.account = account
        for category, values in categories.items():
            if category not in CATEGORIES:
                raise TypeError(f"unknown category {category!r}; one of {', '.join(CATEGORIES)}")
            getattr(self, category).update(values)

    def _fields(self) -> tuple[Any, ...]:
        """The eight categories in row order: the block's own dict where one was made (it
        is the block's to give away), else the ``meter``'s, which nothing changes."""
        out = []
        for category, given in zip(CATEGORIES, self.spec.row_fields, strict=True):
            try:
                mine = object.__getattribute__(self, category)
            except AttributeError:
                out.append(given)
                continue
            out.append(mine or None)
        return tuple(out)

    def _finish(self, failed: bool) -> None:
        spec = self.spec
        try:
            if spec.duration is not None:
                self.measure[spec.duration] = perf_counter() - self._started
            if spec.outcome is not None:
                category, _, code = spec.outcome.rpartition(".")
                getattr(self, category or "other")[code] = "error" if failed else "ok"
            fields = self._fields() if self._own else spec.row_fields
            client = spec.client or _api._client or _api.get_client()
            if spec.limit and not failed:
                _count_amounts(spec.code, self.account, fields[CATEGORIES.index("measure")])
        except Exception as exc:  # never let bookkeeping hide the user's own result
            background_error("meter block", exc)
            return
        record_owned(client, spec.code, self.account, fields)


def _count_amounts(code: str, account: str | None, measure: Mapping[str, Any] | None) -> None:
    """Count what a ``limit=True`` call recorded toward the caps on its fields."""
    engine = _allow.engine
    account = account if account is not None else current_scope.get().account
    if engine is not None and measure and account is not None:
        engine.record_amounts(code, account, dict(measure))


def _check_limit(spec: meter) -> None:
    """Raise :class:`LimitExceeded` when the account may not make one more call."""
    decision = _allow.allow(spec.code, spec.account, 1, None)
    if not decision.allowed:
        raise LimitExceeded(decision)


def _check_names(spec: meter, client: Client | None = None) -> None:
    """Strict mode: raise :class:`MeasurementError` naming the meter, or the field, that the
    catalog does not know or files under another category. Only the names a ``meter`` is
    made with: fields a block adds later are checked when it records, as ``record``'s are.
    A ``meter`` made before any client (a decorator run at import) is checked by
    :func:`meterkit.configure` instead (:func:`_check_unchecked`)."""
    client = client or spec.client or _api._client
    if client is None:
        _unchecked.add(spec)
        return
    if not client.strict or client.catalog is None or not isinstance(spec.code, str):
        return
    catalog = client.catalog
    known = catalog.meters.get(spec.code)
    if known is None:
        raise problem("unknown_meter", f"meter {spec.code!r} is not in the catalog {catalog.source}", spec.code)
    named = [(category, code) for category, fields in spec.fields.items() for code in fields]
    if spec.duration is not None:
        named.append(("measure", spec.duration))
    if spec.outcome is not None:
        category, _, code = spec.outcome.rpartition(".")
        named.append((category or "other", code))
    for category, code in named:
        expected = known.field_categories.get(code)
        if expected != category:
            raise _misplaced(spec.code, category, code, expected)


#: meters made while there was no client to check their names against
_unchecked: weakref.WeakSet[meter] = weakref.WeakSet()


def _check_unchecked(client: Client) -> None:
    for spec in list(_unchecked):
        _check_names(spec, client)  # raises in strict mode for a name the catalog lacks
        _unchecked.discard(spec)


_api.configure_checks.append(_check_unchecked)
_CATEGORY_SET = frozenset(CATEGORIES)


class meter:
    # lower-case on purpose: it reads like a function, `@meterkit.meter("api_calls")`
    """Record one measurement per decorated call or ``with`` block. See the README."""

    def __init__(
        self,
        code: str,
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
        duration: str | None = None,
        outcome: str | None = None,
        client: Client | None = None,
        limit: bool = False,
    ) -> None:
        if outcome is not None:
            category = outcome.rpartition(".")[0]
            if category and category not in STRING_CATEGORIES:
                raise ValueError(
                    f"outcome={outcome!r}: the category must be a string one (who, what, where, other, metadata)"
                )
        self.code = code
        self.account = account
        self.duration = duration
        self.outcome = outcome
        self.client = client
        self.limit = limit
        given = {
            "who": who,
            "what": what,
            "where": where,
            "other": other,
            "metadata": metadata,
            "measure": measure,
            "income": income,
            "cost": cost,
        }
        # Copied once: a caller's dict changed later does not change what is recorded.
        self.fields: dict[str, dict[str, Any]] = {c: dict(v) if v else {} for c, v in given.items()}
        #: As rows hold them (``_rows``): shared by every call that adds nothing, never changed.
        self.row_fields = tuple(self.fields[c] or None for c in CATEGORIES)
        _check_names(self)

    # -- context manager (sync and async) --------------------------------------------------

    def __enter__(self) -> Metering:
        if self.limit:
            _check_limit(self)
        block = Metering(self)
        block._token = _active.set(block)
        return block

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        block = _active.get()
        if block is None or block.spec is not self:
            background_error("meter block", RuntimeError("meter blocks exited out of order"))
            return
        if block._token is not None:
            _active.reset(block._token)
        block._finish(failed=et is not None)

    async def __aenter__(self) -> Metering:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, ev, tb)

    # -- decorator (sync and async) --------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate ``fn``: one measurement per call. A wrapper of its own rather than the
        ``with`` statement: no context manager protocol per call."""
        spec = self
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def ametered(*args: Any, **kwargs: Any) -> Any:
                if spec.limit:
                    _check_limit(spec)
                block = Metering(spec)
                token = block._token = _active.set(block)
                failed = True
                try:
                    result = await fn(*args, **kwargs)
                    failed = False
                    return result
                finally:
                    _active.reset(token)
                    block._finish(failed)

            return ametered  # type: ignore[return-value]

        @functools.wraps(fn)
        def metered(*args: Any, **kwargs: Any) -> Any:
            if spec.limit:
                _check_limit(spec)
            block = Metering(spec)
            token = block._token = _active.set(block)
            failed = True
            try:
                result = fn(*args, **kwargs)
                failed = False
                return result
            finally:
                _active.reset(token)
                block._finish(failed)

        return metered  # type: ignore[return-value]
