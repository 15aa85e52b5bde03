"""Billing: pricing plans (``plans.yaml``), rating, bill previews, and closed periods.

``load_plans`` reads and checks a plans file; ``bill`` computes an account's bills for a
range from any :class:`Usage` source (the ledger answers it from SQL aggregates;
:class:`MeasurementsUsage` answers it from measurements in memory). ``account_bills`` and
``bill_to_close`` add closed bill periods: frozen bills, and adjustment lines for what
changed in them since (:mod:`.adjustments`). docs/billing.md is the reference for the
file, the rounding rule, the plan-change rule and the adjustment rule.
"""

from __future__ import annotations

from .adjustments import ClosedBill, account_bills, bill_to_close, period_start_ms
from .bills import Bill, Line, bill
from .errors import BillingError, PlanProblem, PlansError
from .model import Aggregation, Attachment, Band, Credit, Plan, Plans, PricingLine
from .periods import instant_ms, iso
from .plans import load_plans, plans_from_text
from .rating import BandCharge, Rating, rate, to_units
from .usage import MeasurementsUsage, Usage

__all__ = [
    "Aggregation",
    "Attachment",
    "Band",
    "BandCharge",
    "Bill",
    "BillingError",
    "ClosedBill",
    "Credit",
    "Line",
    "MeasurementsUsage",
    "Plan",
    "PlanProblem",
    "Plans",
    "PlansError",
    "PricingLine",
    "Rating",
    "Usage",
    "account_bills",
    "bill",
    "bill_to_close",
    "instant_ms",
    "iso",
    "load_plans",
    "period_start_ms",
    "plans_from_text",
    "rate",
    "to_units",
]
