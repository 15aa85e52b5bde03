"""``plans.yaml``: pricing plans, which plan each account is on when, and credits.

::

    currency: USD
    plans:
      - code: growth
        bill_period: month            # month | quarter | year (calendar, UTC)
        standing_charge: "20.00"      # per bill period, in advance
        minimum_spend: "100.00"       # a true-up line when the period's total falls short
        pricing:
          - aggregation: {meter: api_calls, field: calls, function: SUM}
            quantity_per_unit: 1
            rounding: NONE            # UP | DOWN | NEAREST | NONE
            cumulative: true          # true: tiered (graduated); false: volume
            bands:
              - {lower_limit: 0, unit_price: "0"}
              - {lower_limit: 100, unit_price: "0.10"}
              - {lower_limit: 1000, unit_price: "0.05", fixed_price: "0"}
    accounts:
      acme: [{plan: growth, from: "2026-01-01T00:00:00Z"}]
    credits:
      acme: [{amount: "15.00", period: "2026-02-01", reason: "outage on 3 February"}]

It is checked like the meter catalog: the YAML by the catalog's loader (no anchors or
aliases, no repeated keys, bounded nesting; ``meterkit._yaml``), then every plan, pricing
line, band, attachment and credit on its own, so one pass names every problem with its
file, line, plan (or account), field and reason. Numbers are read from their text: the
loader hands an unquoted ``0.1`` over as the text ``0.1``, never as a binary float, and
instants (``from``, ``to``, ``period``) as text for :func:`.periods.instant_ms`, never as
YAML's own timestamps. With a meter catalog, each aggregation is also checked against it:
the meter and field exist, and numeric aggregations name a numeric field.
docs/billing.md is the reference for every key.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterkit._errors import CatalogError
from meterkit._yaml import LINE_KEY, LOADERS, load_yaml

from .errors import PlanProblem, PlansError
from .model import Attachment, Credit, Plan, Plans
from .money import MINOR_UNITS
from .periods import instant_ms, iso, period_start
from .planfields import Checker, check_plan

if TYPE_CHECKING:
    from meterkit import Catalog

#: The largest plans file read: far more plans and accounts than a person maintains by hand.
MAX_PLANS_BYTES = 4 * 1024 * 1024
_TOP_KEYS = ("currency", "minor_units", "plans", "accounts", "credits")


def _text(loader: Any, node: Any) -> str:
    return str(node.value)


def _exact_loader(base: type[Any]) -> Any:
    """``base`` (one of the catalog's loaders) reading floats and timestamps as their text."""
    loader: Any = type(f"Plans{base.__name__}", (base,), {})
    loader.add_constructor("tag:yaml.org,2002:float", _text)
    loader.add_constructor("tag:yaml.org,2002:timestamp", _text)
    return loader


_LOADER = _exact_loader(LOADERS[0])


def load_plans(path: str | Path, catalog: Catalog | None = None) -> Plans:
    """Load and check a ``plans.yaml`` (against ``catalog`` when given). Raises
    :class:`PlansError` listing every problem."""
    file = str(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_PLANS_BYTES + 1)
    except OSError as exc:
        raise PlansError([PlanProblem("unreadable", f"cannot read the plans file: {exc.strerror}", file)]) from None
    if len(data) > MAX_PLANS_BYTES:
        raise PlansError([PlanProblem("too_large", f"the plans file is larger than {MAX_PLANS_BYTES:,} bytes", file)])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlansError([PlanProblem("unreadable", f"not UTF-8 text (byte {exc.start:,})", file)]) from None
    return plans_from_text(text, file, catalog)


def plans_from_text(text: str, source: str = "<memory>", catalog: Catalog | None = None) -> Plans:
    """:func:`load_plans` for text already read; ``source`` names it in problems."""
    try:
        doc, yaml_problems = load_yaml(text, source, _LOADER)
    except CatalogError as exc:
        raise PlansError(
            [PlanProblem(p.reason, p.message.replace("catalog", "plans file"), source, p.line) for p in exc.problems]
        ) from None
    checker = Checker(source, catalog)
    for p in yaml_problems:
        checker.report(p.reason, p.message.replace("catalog", "plans file"), p.line)
    plans = _build(doc, checker)
    if checker.problems:
        raise PlansError(checker.problems)
    assert plans is not None
    return plans


def _line(value: Any, default: int | None = None) -> int | None:
    return value.get(LINE_KEY, default) if isinstance(value, dict) else default


def _build(doc: Any, c: Checker) -> Plans | None:
    if not isinstance(doc, dict):
        c.report("bad_shape", "the plans file must be a mapping with 'currency', 'plans' and 'accounts'", 1)
        return None
    top = _line(doc, 1)
    for key in sorted((k for k in doc if k not in (*_TOP_KEYS, LINE_KEY)), key=repr):
        c.report("unknown_key", f"unknown top-level key {key!r:.60}; expected one of {', '.join(_TOP_KEYS)}", top)
    currency, minor = _currency(doc, c, top)
    c.minor_units = minor
    plans: dict[str, Plan] = {}
    raw_plans = doc.get("plans")
    if not isinstance(raw_plans, list) or not raw_plans:
        c.report("bad_shape", "'plans' must be a list of at least one plan", _line(raw_plans, top), field="plans")
        raw_plans = []
    first: dict[str, int | None] = {}
    for index, raw in enumerate(raw_plans):
        code = raw.get("code") if isinstance(raw, dict) else None
        if isinstance(code, str) and code in first:
            c.report(
                "duplicate_plan",
                f"plan code {code!r} is defined twice (first on line {first[code]})",
                _line(raw),
                plan=code,
                field="code",
            )
            continue
        if isinstance(code, str):
            first[code] = _line(raw)
        plan = check_plan(raw, index, c)
        if plan is not None:
            plans[plan.code] = plan
    accounts = _accounts(doc.get("accounts"), set(first), c, top)
    credits = _credits(doc.get("credits"), accounts, plans, c, top)
    if currency is None or minor is None:
        return None
    return Plans(currency, minor, plans, accounts, credits, c.file or "<memory>")


def _currency(doc: dict[str, Any], c: Checker, top: int | None) -> tuple[str | None, int | None]:
    currency, minor = doc.get("currency"), doc.get("minor_units")
    if minor is not None and (isinstance(minor, bool) or not isinstance(minor, int) or not 0 <= minor <= 6):
        c.report(
            "bad_currency",
            f"minor_units must be a whole number from 0 to 6, got {minor!r:.40}",
            top,
            field="minor_units",
        )
        return None, None
    if not isinstance(currency, str) or not currency.strip():
        c.report("bad_currency", "'currency' is required: an ISO 4217 code such as USD", top, field="currency")
        return None, None
    if minor is None:
        if currency not in MINOR_UNITS:
            c.report(
                "bad_currency",
                f"{currency!r:.40} is not an ISO 4217 currency code; for a currency of your"
                " own (credits, tokens) also give minor_units",
                top,
                field="currency",
            )
            return None, None
        minor = MINOR_UNITS[currency]
    return currency, minor


def _mapping_of_lists(raw: Any, key: str, c: Checker, top: int | None) -> list[tuple[str, list[Any], int | None]]:
    """``raw`` as (account, items, line) triples, reporting what is not an account code
    mapped to a list."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        c.report("bad_shape", f"'{key}' must map account codes to lists", _line(raw, top), field=key)
        return []
    out = []
    line = _line(raw, top)
    for account, items in raw.items():
        if account == LINE_KEY:
            continue
        if not isinstance(account, str) or not 0 < len(account) <= 200:
            c.report(
                "bad_account",
                f"account code {account!r:.60} must be text of 1-200 characters (quote it)",
                line,
                field=key,
            )
        elif not isinstance(items, list):
            c.report("bad_shape", f"{key} of an account must be a list", line, account=account, field=key)
        else:
            out.append((account, items, line))
    return out


def _account_error(c: Checker, at: int | None, account: str) -> Callable[[str, str, str], None]:
    """``error(field, reason, message)`` for a problem with ``account`` on line ``at``."""

    def error(field: str, reason: str, message: str) -> None:
        c.report(reason, message, at, account=account, field=field)

    return error


def _accounts(raw: Any, known: set[str], c: Checker, top: int | None) -> dict[str, tuple[Attachment, ...]]:
    """Each account's attachments, in time order. ``known``: every plan code defined, valid
    or not, so an attachment to a plan with problems of its own is not reported again."""
    if raw is None:
        c.report("bad_shape", "'accounts' is required: which plan each account is on, from when", top, field="accounts")
    out: dict[str, tuple[Attachment, ...]] = {}
    for account, items, line in _mapping_of_lists(raw, "accounts", c, top):
        found = []
        for n, item in enumerate(items):
            at, name = _line(item, line), f"accounts[{n}]"
            attachment = _attachment(item, known, _account_error(c, at, account), name)
            if attachment is not None:
                found.append((attachment, at))
        found.sort(key=lambda a: a[0].start_ms)
        for (first, _), (second, at) in pairwise(found):
            if first.end_ms is None or first.end_ms > second.start_ms:
                c.report(
                    "overlapping_attachments",
                    f"the attachment to {second.plan!r} from {iso(second.start_ms)}"
                    f" overlaps the one to {first.plan!r} from {iso(first.start_ms)}; an account is on one"
                    " plan at a time (end the first with 'to' at or before the second's 'from')",
                    at,
                    account=account,
                    field="accounts",
                )
        out[account] = tuple(a for a, _ in found)
    return out


def _attachment(item: Any, known: set[str], error: Callable[[str, str, str], None], name: str) -> Attachment | None:
    """One attachment ``{plan, from, to?}``, or None after reporting (``error(field,
    reason, message)``) each of its problems."""
    if not isinstance(item, dict):
        error(name, "bad_shape", "an attachment is a mapping {plan, from, to?}")
        return None
    for key in sorted((k for k in item if k not in ("plan", "from", "to", LINE_KEY)), key=repr):
        error(name, "unknown_key", f"unknown key {key!r:.60}; an attachment has plan, from and to")
    plan, ok = item.get("plan"), True
    if not isinstance(plan, str) or plan not in known:
        error(f"{name}.plan", "unknown_plan", f"plan {plan!r:.60} is not defined under 'plans'")
        ok = False
    bounds: dict[str, int | None] = {"from": None, "to": None}
    for key in bounds:
        value = item.get(key)
        if value is None:
            if key == "from":
                error(f"{name}.from", "bad_instant", "'from' is required")
                ok = False
            continue
        try:
            bounds[key] = instant_ms(value)
        except ValueError as exc:
            error(f"{name}.{key}", "bad_instant", str(exc))
            ok = False
    start, end = bounds["from"], bounds["to"]
    if start is not None and end is not None and end <= start:
        error(f"{name}.to", "bad_instant", "'to' must be after 'from'")
        ok = False
    if not ok:
        return None
    assert isinstance(plan, str) and start is not None
    return Attachment(plan, start, end)


def _credits(
    raw: Any, accounts: dict[str, tuple[Attachment, ...]], plans: dict[str, Plan], c: Checker, top: int | None
) -> dict[str, tuple[Credit, ...]]:
    out: dict[str, tuple[Credit, ...]] = {}
    for account, items, line in _mapping_of_lists(raw, "credits", c, top):
        credits = []
        if account not in accounts:
            c.report(
                "unknown_account",
                "credits for an account that has no plan under 'accounts'",
                line,
                account=account,
                field="credits",
            )
        for n, item in enumerate(items):
            at = _line(item, line)
            credit = _credit(item, accounts.get(account, ()), plans, c, _account_error(c, at, account), f"credits[{n}]")
            if credit is not None:
                credits.append(credit)
        out[account] = tuple(credits)
    return out


def _credit(
    item: Any,
    attachments: tuple[Attachment, ...],
    plans: dict[str, Plan],
    c: Checker,
    error: Callable[[str, str, str], None],
    name: str,
) -> Credit | None:
    """One credit ``{amount, period, reason?}``, or None after reporting its problems."""
    if not isinstance(item, dict):
        error(name, "bad_shape", "a credit is a mapping {amount, period, reason?}")
        return None
    for key in sorted((k for k in item if k not in ("amount", "period", "reason", LINE_KEY)), key=repr):
        error(name, "unknown_key", f"unknown key {key!r:.60}; a credit has amount, period and reason")
    amount = c.money(item.get("amount"), partial(error, f"{name}.amount"), positive=True)
    reason = item.get("reason")
    if reason is not None and not isinstance(reason, str):
        error(f"{name}.reason", "bad_value", "reason must be text")
    period = _credit_period(item.get("period"), attachments, plans, partial(error, f"{name}.period"))
    if amount is None or period is None or not isinstance(reason, str | None):
        return None
    return Credit(amount, period, reason)


def _credit_period(
    value: Any, attachments: tuple[Attachment, ...], plans: dict[str, Plan], error: Callable[[str, str], None]
) -> int | None:
    """The start of the bill period a credit names: an instant at which the account is on
    a plan, and the start of that plan's bill period."""
    if value is None:
        error("bad_instant", "'period' is required: the start of the bill period the credit applies to")
        return None
    try:
        ms = instant_ms(value)
    except ValueError as exc:
        error("bad_instant", str(exc))
        return None
    on = [a for a in attachments if a.overlaps(ms, ms + 1)]
    if not on:
        error("no_plan_then", f"{value!s:.40}: the account is on no plan at that time")
        return None
    if on[0].plan not in plans:
        return None  # a plan with problems of its own, reported where it is defined
    bill_period = plans[on[0].plan].bill_period
    if period_start(ms, bill_period) != ms:
        error(
            "not_a_period_start",
            f"{value!s:.40} is not the start of a bill period ({bill_period}, UTC) of plan {on[0].plan!r}",
        )
        return None
    return ms
