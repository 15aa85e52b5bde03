"""The part of ``plans.yaml`` an application needs to decide limits: each plan's
``limits`` and ``thresholds``, and which plan each account is on when (``accounts``).

Pricing, currency and credits are the agent's (``meterkit_agent.billing.plans``, which
checks the whole file and calls :func:`._planlimits.check_plan_limits` for the limits, so
both read a limit the same way); this reader passes over them. It reads the file with the
catalog's YAML loader (no anchors or aliases, no repeated keys, bounded nesting), numbers
as their text (``0.1`` is one tenth), and names every problem at once with its file, line,
plan or account, field and reason (:class:`PlansFileError`).
"""

from __future__ import annotations

import bisect
import calendar
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import CatalogError, PlansFileError, PlansProblem
from ._planlimits import PlanLimits, check_plan_limits
from ._yaml import LINE_KEY, LOADERS, load_yaml

if TYPE_CHECKING:
    from ._catalog import Catalog

#: The largest plans file read (the agent's limit too).
MAX_PLANS_BYTES = 4 * 1024 * 1024
DAY_MS = 86_400_000
_MONTHS = {"month": 1, "quarter": 3, "year": 12}
_EPOCH = date(1970, 1, 1).toordinal()


def _text(loader: Any, node: Any) -> str:
    return str(node.value)


_LOADER: Any = type("LimitsLoader", (LOADERS[0],), {})
_LOADER.add_constructor("tag:yaml.org,2002:float", _text)
_LOADER.add_constructor("tag:yaml.org,2002:timestamp", _text)


@dataclass(frozen=True)
class LimitPlans:
    """Each plan's limits, and each account's attachments ``(start_ms, end_ms | None, plan)``
    in time order."""

    plans: dict[str, PlanLimits]
    accounts: dict[str, tuple[tuple[int, int | None, str], ...]]
    source: str = "<memory>"
    _starts: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)

    def plan_at(self, account: str, ms: int) -> tuple[str | None, int, int | None]:
        """The plan ``account`` is on at ``ms`` (None: none) and the span ``[lo, hi)`` over
        which that answer holds, so a caller can keep it until ``hi``."""
        attachments = self.accounts.get(account)
        if not attachments:
            return None, 0, None
        starts = self._starts.get(account)
        if starts is None:
            starts = self._starts[account] = [a[0] for a in attachments]
        i = bisect.bisect_right(starts, ms) - 1
        if i < 0:
            return None, 0, starts[0]
        start, end, plan = attachments[i]
        if end is not None and ms >= end:
            return None, end, starts[i + 1] if i + 1 < len(starts) else None
        return plan, start, end


def instant_ms(value: Any) -> int:
    """An attachment bound: an ISO 8601 date-time with an offset, or a date (midnight UTC),
    as UTC milliseconds (the first whole one at or after it). Raises ValueError."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"{value!r:.60} is not a date or a date-time with an offset")
    text = value.strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        return (day.toordinal() - _EPOCH) * DAY_MS
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    if moment.utcoffset() is None:
        raise ValueError(f"{text!r:.60} has no offset; give Z (UTC) or one like +01:00")
    micros = (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // _MICROSECOND
    return -(-micros // 1000)


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1) - datetime(1970, 1, 1)


def period_bounds(ms: int, period: str) -> tuple[int, int]:
    """The calendar ``period`` (day, month, quarter, year; UTC) holding ``ms``: [start, end)."""
    if period == "day":
        start = ms - ms % DAY_MS
        return start, start + DAY_MS
    day = date.fromordinal(ms // DAY_MS + _EPOCH)
    size = _MONTHS[period]
    first = (day.month - 1) // size * size
    months = day.year * 12 + first + size
    start = calendar.timegm((day.year, first + 1, 1, 0, 0, 0)) * 1000
    return start, calendar.timegm((months // 12, months % 12 + 1, 1, 0, 0, 0)) * 1000


def load_limit_plans(path: str | Path, catalog: Catalog | None = None) -> LimitPlans:
    """Read the limits of a plans file. Raises :class:`PlansFileError` naming every problem."""
    file = str(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_PLANS_BYTES + 1)
    except OSError as exc:
        raise PlansFileError(
            [PlansProblem("unreadable", f"cannot read the plans file: {exc.strerror}", file)]
        ) from None
    if len(data) > MAX_PLANS_BYTES:
        raise PlansFileError([PlansProblem("too_large", f"larger than {MAX_PLANS_BYTES:,} bytes", file)])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlansFileError([PlansProblem("unreadable", f"not UTF-8 text (byte {exc.start:,})", file)]) from None
    return limit_plans_from_text(text, file, catalog)


def limit_plans_from_text(text: str, source: str = "<memory>", catalog: Catalog | None = None) -> LimitPlans:
    """:func:`load_limit_plans` for text already read."""
    try:
        doc, yaml_problems = load_yaml(text, source, _LOADER)
    except CatalogError as exc:
        raise PlansFileError([_from_yaml(p.reason, p.message, source, p.line) for p in exc.problems]) from None
    problems = [_from_yaml(p.reason, p.message, source, p.line) for p in yaml_problems]
    if not isinstance(doc, dict):
        problems.append(
            PlansProblem("bad_shape", "the plans file must be a mapping with plans and accounts", source, 1)
        )
        raise PlansFileError(problems)
    plans = _plans(doc.get("plans"), source, problems, catalog)
    accounts = _accounts(doc.get("accounts"), source, problems, _line(doc, 1))
    if problems:
        raise PlansFileError(problems)
    return LimitPlans(plans, accounts, source)


def _from_yaml(reason: str, message: str, source: str, line: int | None) -> PlansProblem:
    return PlansProblem(reason, message.replace("catalog", "plans file"), source, line)


def _line(value: Any, default: int | None = None) -> int | None:
    return value.get(LINE_KEY, default) if isinstance(value, dict) else default


def _plans(raw: Any, source: str, problems: list[PlansProblem], catalog: Catalog | None) -> dict[str, PlanLimits]:
    if not isinstance(raw, list):
        problems.append(PlansProblem("bad_shape", "'plans' must be a list of plans", source, _line(raw), field="plans"))
        return {}
    out: dict[str, PlanLimits] = {}
    for index, item in enumerate(raw):
        code = item.get("code") if isinstance(item, dict) else None
        if not isinstance(code, str) or not code:
            problems.append(PlansProblem("bad_code", "a plan needs a code", source, _line(item), f"#{index + 1}"))
            continue
        if code in out:
            problems.append(
                PlansProblem("duplicate_plan", f"plan {code!r} is defined twice", source, _line(item), code)
            )
            continue

        def report(reason: str, message: str, line: int | None, fld: str, code: str = code) -> None:
            problems.append(PlansProblem(reason, message, source, line, code, None, fld))

        out[code] = check_plan_limits(item, code, report, catalog)
    return out


def _accounts(
    raw: Any, source: str, problems: list[PlansProblem], top: int | None
) -> dict[str, tuple[tuple[int, int | None, str], ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(PlansProblem("bad_shape", "'accounts' must map account codes to lists", source, top))
        return {}
    out: dict[str, tuple[tuple[int, int | None, str], ...]] = {}
    line = _line(raw, top)
    for account, items in raw.items():
        if account == LINE_KEY:
            continue
        if not isinstance(account, str) or not isinstance(items, list):
            problems.append(
                PlansProblem("bad_shape", "an account code (text) maps to a list of attachments", source, line, None)
            )
            continue
        found: list[tuple[int, int | None, str]] = []
        for n, item in enumerate(items):
            at = _line(item, line)
            attachment = _attachment(item)
            if isinstance(attachment, str):
                problems.append(PlansProblem("bad_attachment", attachment, source, at, None, account, f"accounts[{n}]"))
            else:
                found.append(attachment)
        found.sort()
        for (_, end, plan), (start, _, _) in pairwise(found):
            if end is None or end > start:
                problems.append(
                    PlansProblem(
                        "overlapping_attachments",
                        f"the attachment to {plan!r} overlaps the next",
                        source,
                        line,
                        None,
                        account,
                        "accounts",
                    )
                )
        out[account] = tuple(found)
    return out


def _attachment(item: Any) -> tuple[int, int | None, str] | str:
    """``(start_ms, end_ms, plan)`` of ``{plan, from, to?}``, or what is wrong with it."""
    if not isinstance(item, dict) or not isinstance(item.get("plan"), str):
        return "an attachment is a mapping {plan, from, to?}"
    try:
        start = instant_ms(item.get("from"))
        end = instant_ms(item["to"]) if item.get("to") is not None else None
    except ValueError as exc:
        return str(exc)
    if end is not None and end <= start:
        return "'to' must be after 'from'"
    return start, end, str(item["plan"])
