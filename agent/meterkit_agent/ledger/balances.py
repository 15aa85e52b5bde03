"""Cap balances: each account's usage to date of each cap of the plan it is on, the
snapshot the agent keeps for ``meterkit.allow()`` (docs/limits.md).

A balance is the cap's aggregate (SUM of its field, or COUNT when it has none) over
``[start of the cap's calendar period holding as_of, as_of)``, in UTC, answered by the
ledger's own usage query (:meth:`.store.Ledger.usage`: the same rollups and folding as
``/usage``, corrections applied). The cap counts the whole calendar period whatever plan
the account was on earlier in it, as the SDK reads the snapshot.

Cost: one usage query per distinct (meter, field, period start) with no account filter,
which answers every account at once, whatever the number of accounts on the plans; a
plan's accounts are then picked from the answer. So hundreds of accounts cost a few
queries, not hundreds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from meterkit._planlimits import Cap

from ..billing import Plans
from ..billing.periods import next_start, period_start
from ..instants import DAY_MS, iso
from ..signals import Cap as SignalCap
from ..signals.events import decimal_text
from ..signals.outbox import events_table
from .queries import UsageQuery
from .store import Ledger

CAP_KIND = "cap_threshold"


def cap_period(ms: int, period: str) -> tuple[int, int]:
    """The calendar period (``day``, ``month``, ``quarter``, ``year``, UTC) holding ``ms``."""
    if period == "day":
        start = ms - ms % DAY_MS
        return start, start + DAY_MS
    start = period_start(ms, period)
    return start, next_start(start, period)


def signal_cap(cap: Cap, thresholds: tuple[Decimal, ...]) -> SignalCap:
    """The signals' description of a plan's cap and the plan's threshold percents."""
    if cap.mode == "soft":
        return SignalCap(cap.meter, cap.cap, cap.field, "soft", cap.grace_percent, thresholds)
    return SignalCap(cap.meter, cap.cap, cap.field, "hard", cap.grace_percent, thresholds)


def cap_function(cap: Cap) -> tuple[str, str | None]:
    """The aggregation a cap counts by: SUM of its field, or COUNT."""
    return ("SUM", cap.field) if cap.field else ("COUNT", None)


@dataclass(frozen=True)
class Held:
    """An account on a plan with a cap, at some instant."""

    account: str
    plan: str
    cap: Cap


def plan_at(plans: Plans, account: str, ms: int) -> str | None:
    """The plan ``account`` is on at ``ms``, if any."""
    for attachment in plans.accounts.get(account, ()):
        if attachment.start_ms <= ms and (attachment.end_ms is None or ms < attachment.end_ms):
            return attachment.plan
    return None


def caps_held(plans: Plans, ms: int, accounts: Iterable[str] | None = None) -> Iterator[Held]:
    """Every (account, cap) of the plan each account is on at ``ms``."""
    for account in plans.accounts if accounts is None else accounts:
        code = plan_at(plans, account, ms)
        if code is None:
            continue
        for cap in plans.plans[code].caps:
            yield Held(account, code, cap)


def values(
    ledger: Ledger,
    org: str,
    meter: str,
    function: str,
    field: str | None,
    span: tuple[int, int],
    account: str | None = None,
) -> dict[str, Decimal | int]:
    """account -> the aggregate over ``[start, end)`` (exact), for one account or all;
    an account with nothing in the span is absent (its usage is 0)."""
    start, end = span
    if end <= start:
        return {}
    query = UsageQuery(meter=meter, account=account, start=iso(start), end=iso(end), aggregation=function, target=field)
    out: dict[str, Decimal | int] = {}
    for row in ledger.usage(org, query):
        value = row["value"]
        if isinstance(value, int | Decimal):
            out[row["account"]] = value
    return out


def balances(ledger: Ledger, plans: Plans, org: str, as_of_ms: int) -> dict[str, Any]:
    """The balances answer for ``org`` at ``as_of_ms``: ``as_of``, ``balances`` (one per
    account on a plan and cap of that plan) and ``notified`` (the cap thresholds recorded
    in the outbox for those periods)."""
    held = list(caps_held(plans, as_of_ms))
    answered: dict[tuple[str, str, str | None, int], dict[str, Decimal | int]] = {}
    out = []
    starts: set[int] = set()
    for h in held:
        function, field = cap_function(h.cap)
        start, _ = cap_period(as_of_ms, h.cap.period)
        starts.add(start)
        key = (h.cap.meter, function, field, start)
        if key not in answered:
            answered[key] = values(ledger, org, h.cap.meter, function, field, (start, as_of_ms))
        value = answered[key].get(h.account, 0)
        out.append(
            {
                "plan": h.plan,
                "meter": h.cap.meter,
                "field": h.cap.field,
                "account": h.account,
                "period_start": iso(start),
                "value": decimal_text(value),
            }
        )
    return {"as_of": iso(as_of_ms), "balances": out, "notified": notified(ledger, org, out, starts)}


def notified(ledger: Ledger, org: str, rows: list[dict[str, Any]], starts: set[int]) -> list[dict[str, Any]]:
    """The cap thresholds recorded for the accounts, caps and periods of ``rows`` (whose
    periods start at ``starts``), oldest first."""
    if not rows:
        return []
    wanted = {(r["account"], r["meter"], r["field"] or "", r["period_start"]): r for r in rows}
    e = events_table
    query = (
        sa.select(e.c.account, e.c.meter, e.c.measure, e.c.threshold, e.c.period_start_ms, e.c.created_ms)
        .where(e.c.org == org, e.c.kind == CAP_KIND, e.c.period_start_ms.in_(sorted(starts)))
        .order_by(e.c.created_ms, e.c.event_id)
    )
    out = []
    with ledger.engine.connect() as conn:
        for r in conn.execute(query):
            row = wanted.get((r.account, r.meter, r.measure, iso(r.period_start_ms)))
            if row is None:
                continue
            out.append(
                {
                    "plan": row["plan"],
                    "meter": r.meter,
                    "field": row["field"],
                    "account": r.account,
                    "period_start": row["period_start"],
                    "threshold": r.threshold,
                    "at": iso(r.created_ms),
                }
            )
    return out
