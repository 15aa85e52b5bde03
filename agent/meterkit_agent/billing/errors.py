"""What billing raises: :class:`PlansError` for a plans file that cannot be used (every
problem at once, each with file, line, plan or account, field and reason), and
:class:`BillingError` for a bill that cannot be computed from what the usage source says."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanProblem:
    """One thing wrong with a plans file. ``reason`` is a stable code (``bad_band``,
    ``overlapping_attachments``, ...); ``field`` is a path inside the plan or account
    (``pricing[0].bands[1].unit_price``)."""

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


class PlansError(ValueError):
    """A plans file that cannot be used. ``problems`` lists every problem, not the first."""

    def __init__(self, problems: list[PlanProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}  [{p.reason}]" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the plans file:\n{lines}")


class BillingError(ValueError):
    """A bill that cannot be computed: an unknown account, or usage that cannot be priced
    (a negative quantity, or a LATEST that is not a number: ``not_a_number``). ``reason``
    is a stable code; the message names the account, the period and the pricing line."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)
