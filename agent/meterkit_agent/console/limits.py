"""The console's limits view: for some accounts, each cap of the plan each is on, its use
to date (the ledger's own cap balances, :func:`..ledger.balances.balances`, which the
agent's balance keeper reads too) and that use as a percentage of the cap.

``GET .../balances`` answers the use but not the caps, which live in the plans file the
ledger was started with; this joins the two, so the page never computes a percentage from
binary floats: it is computed here, exactly (:class:`decimal.Decimal`), to one decimal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_DOWN, Decimal
from typing import Any

from ..billing import Plans

#: (org, as_of_ms, accounts) -> (the balances answer, each (account, plan, cap) held): the
#: ledger's :func:`..ledger.balances.balances` and :func:`..ledger.balances.caps_held`, handed
#: over by :func:`..ledger.api.create_app` (the ledger serves the console, so the console
#: never imports the ledger)
CapBalances = Callable[[str, int, Sequence[str]], tuple[dict[str, Any], Iterable[Any]]]

TENTH = Decimal("0.1")


def limits_state(caps: CapBalances, plans: Plans, org: str, accounts: Sequence[str], at_ms: int) -> dict[str, Any]:
    """``{"as_of", "limits": {account: [{"plan", "meter", "field", "cap", "mode", "period",
    "period_start", "used", "percent", "state"}]}, "billed": [accounts]}``; an account on no
    plan at ``at_ms`` has an empty list; ``billed`` are those the plans file names (the
    others have no bill: ``GET .../bills`` answers them 404). ``state``: ``over`` (past a
    hard cap's grace or a soft cap), ``near`` (past the plan's first threshold), ``ok``."""
    answer, held_caps = caps(org, at_ms, accounts)
    used = {(b["account"], b["plan"], b["meter"], b["field"]): b for b in answer["balances"]}
    out: dict[str, list[dict[str, Any]]] = {a: [] for a in accounts}
    for held in held_caps:
        cap = held.cap
        found = used.get((held.account, held.plan, cap.meter, cap.field))
        value = Decimal(found["value"]) if found else Decimal(0)
        share = (value * 100 / cap.cap).quantize(TENTH, ROUND_DOWN) if cap.cap else None
        first = min(plans.plans[held.plan].thresholds, default=None)
        near = first is not None and share is not None and share >= first
        state = "over" if value >= cap.limit else "near" if near else "ok"
        out[held.account].append(
            {
                "plan": held.plan,
                "meter": cap.meter,
                "field": cap.field,
                "cap": str(cap.cap),
                "mode": cap.mode,
                "period": cap.period,
                "period_start": found["period_start"] if found else None,
                "used": str(value),
                "percent": None if share is None else str(share),
                "state": state,
            }
        )
    return {"as_of": answer["as_of"], "limits": out, "billed": [a for a in accounts if a in plans.accounts]}
