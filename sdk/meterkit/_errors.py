"""Exceptions meterkit raises. In production mode none of them reach the caller after setup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class MeterkitError(Exception):
    """Base class of every error meterkit raises."""


class ConfigError(MeterkitError):
    """Bad configuration given to :func:`meterkit.configure` or a :class:`meterkit.Client`."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a catalog file, a measurement or a backfill row.

    ``reason`` is a stable, machine-readable code (``unknown_meter``, ``wrong_type``, ...);
    ``message`` says it for people.
    """

    reason: str
    message: str
    meter: str | None = None
    field: str | None = None
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(f"{self.file}:{self.line}" if self.line else self.file)
        elif self.line:
            where.append(f"line {self.line}")
        if self.meter:
            where.append(f"meter {self.meter!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class CatalogError(MeterkitError):
    """A meters.yaml file that cannot be used. ``problems`` lists every error, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the meter catalog:\n{lines}")


class MeasurementError(MeterkitError, ValueError):
    """A measurement that cannot be recorded: names the meter, the field and the reason."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(str(problem))

    @property
    def reason(self) -> str:
        return self.problem.reason

    @property
    def meter(self) -> str | None:
        return self.problem.meter

    @property
    def field(self) -> str | None:
        return self.problem.field


@dataclass(frozen=True)
class PlansProblem:
    """One thing wrong with the limits of a ``plans.yaml``: ``field`` is a path inside the
    plan or account (``limits[1].burst``), ``reason`` a stable code (``bad_value``, ...)."""

    reason: str
    message: str
    file: str | None = None
    line: int | None = None
    plan: str | None = None
    account: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = [f"{self.file}:{self.line}" if self.line else (self.file or "")]
        where += [f"plan {self.plan!r}"] if self.plan else []
        where += [f"account {self.account!r}"] if self.account else []
        where += [f"field {self.field!r}"] if self.field else []
        prefix = ", ".join(w for w in where if w)
        return f"{prefix}: {self.message}" if prefix else self.message


class PlansFileError(MeterkitError):
    """A plans file whose limits cannot be used. ``problems`` lists every problem at once."""

    def __init__(self, problems: list[PlansProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}  [{p.reason}]" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the plans file:\n{lines}")


class LimitExceeded(MeterkitError):
    """Raised by ``@meterkit.meter(..., limit=True)`` instead of calling the function when
    the account is over a limit. ``retry_after`` is in seconds (``inf`` when waiting will
    not help); ``decision`` is the whole :class:`meterkit.Decision`. A web framework turns
    it into a 429 with a ``Retry-After`` header."""

    def __init__(self, decision: Any) -> None:
        self.decision = decision
        self.retry_after: float = decision.retry_after
        super().__init__(f"limit exceeded: {decision.reason} ({decision.limit}); retry after {self.retry_after:.3f} s")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # rebuilt from its decision, so a task queue (Celery) that pickles it keeps the type
        return (type(self), (self.decision,))


def safe_repr(value: object) -> str:
    """``repr(value)``, or its type's name when its ``__repr__`` raises: a message about a
    bad argument must never raise itself (production mode never raises into the caller)."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"


class ExpressionError(MeterkitError):
    """An expression that does not parse, or that cannot be evaluated on given values."""

    reason = "bad_calculation"  # of the catalog problem that reports it


class NumberOutOfRange(ExpressionError):
    """A calculation whose result (or a step of it) no backend can hold exactly: an
    integer past 64 bits, an infinite or undefined float. The measurement it belongs to is
    an error, never silently changed."""

    reason = "number_out_of_range"


class CalculationTooBig(ExpressionError):
    """A calculation past a bound: ``calculation_too_long``, ``_too_deep`` or ``_too_large``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
