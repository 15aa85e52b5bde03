"""Billing: pricing plans (``plans.yaml``), rating, and bill previews.

``load_plans`` reads and checks a plans file; ``bill`` computes an account's bills for a
range from any :class:`Usage` source (the ledger answers it from SQL aggregates;
:class:`MeasurementsUsage` answers it from measurements in memory). docs/billing.md is the
reference for the file, the rounding rule and the plan-change rule.
"""

from __future__ import annotations

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
    "bill",
    "instant_ms",
    "iso",
    "load_plans",
    "plans_from_text",
    "rate",
    "to_units",
]
