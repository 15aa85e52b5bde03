"""``meterkit.meter(...)``: one object that is a decorator and a context manager.

Each call of a decorated function, and each ``with`` block, records one measurement when
it ends: its fields, the elapsed time if ``duration=`` names a Measure field, and whether
it raised if ``outcome=`` names a field. The user's exception always propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _api
from ._guard import background_error
from ._model import CATEGORIES, STRING_CATEGORIES
from ._scope import decorate

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
    """One measurement being built by a ``meter`` block. Its dicts may be changed freely."""

    __slots__ = (
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
        f = spec.fields
        self.spec = spec
        self.account: str | None = spec.account
        self.who: dict[str, Any] = {**f["who"]}
        self.what: dict[str, Any] = {**f["what"]}
        self.where: dict[str, Any] = {**f["where"]}
        self.other: dict[str, Any] = {**f["other"]}
        self.metadata: dict[str, Any] = {**f["metadata"]}
        self.measure: dict[str, Any] = {**f["measure"]}
        self.income: dict[str, Any] = {**f["income"]}
        self.cost: dict[str, Any] = {**f["cost"]}
        self._token: Token[Metering | None] | None = None
        self._started = perf_counter()

    def set(self, *, account: str | None = None, **categories: Mapping[str, Any]) -> None:
        """Add or replace fields: ``m.set(measure={"bytes": n}, who={"user": u})``."""
        if account is not None:
            self.account = account
        for category, values in categories.items():
            if category not in CATEGORIES:
                raise TypeError(f"unknown category {category!r}; one of {', '.join(CATEGORIES)}")
            getattr(self, category).update(values)

    def _finish(self, failed: bool) -> None:
        spec = self.spec
        try:
            if spec.duration is not None:
                self.measure[spec.duration] = perf_counter() - self._started
            if spec.outcome is not None:
                category, _, code = spec.outcome.rpartition(".")
                getattr(self, category or "other")[code] = "error" if failed else "ok"
            client = spec.client or _api._client or _api.get_client()
        except Exception as exc:  # never let bookkeeping hide the user's own result
            background_error("meter block", exc)
            return
        client.record(
            spec.code,
            account=self.account,
            who=self.who,
            what=self.what,
            where=self.where,
            other=self.other,
            metadata=self.metadata,
            measure=self.measure,
            income=self.income,
            cost=self.cost,
        )


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
        self.fields: dict[str, Mapping[str, Any]] = {c: v or {} for c, v in given.items()}

    # -- context manager (sync and async) --------------------------------------------------

    def __enter__(self) -> Metering:
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
        # A meter's with-state lives in a contextvar, not on self, so self can be reused.
        return decorate(fn, lambda: self)
