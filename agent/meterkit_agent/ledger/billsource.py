"""The ledger as a bill's source of usage: :class:`LedgerUsage` answers billing's
:class:`~meterkit_agent.billing.Usage` questions with the ledger's own usage query.

A bill asks for one aggregation over one account and one range at a time. Each question is
a :class:`~.queries.UsageQuery` with no bucket and no grouping, ``quantityPerUnit`` 1 and
no rounding (billing applies the pricing line's own), so the answer is the exact value the
``/usage`` API would give for the same range: the same rollups, the same folding, the same
instants. The range's millisecond bounds travel as ISO instants, which the ledger parses
back to the same whole milliseconds. A bill preview and a usage query can therefore never
disagree about a quantity.
"""

from __future__ import annotations

from decimal import Decimal

from ..billing import BillingError
from ..instants import iso
from .queries import UsageQuery
from .store import Ledger

#: aggregations that count, and so answer 0 (not "nothing") for a range with no measurement
_COUNTING = ("SUM", "COUNT", "UNIQUE")


class LedgerUsage:
    """:class:`~meterkit_agent.billing.Usage` over one organisation of a ledger."""

    def __init__(self, ledger: Ledger, org: str) -> None:
        self._ledger = ledger
        self._org = org

    def quantity(
        self, meter: str, field: str | None, function: str, account: str, start_ms: int, end_ms: int
    ) -> Decimal | int | None:
        query = UsageQuery(
            meter=meter,
            account=account,
            start=iso(start_ms),
            end=iso(end_ms),
            aggregation=function,
            target=field,
            quantity_per_unit=1,
            rounding="NONE",
        )
        rows = [row for row in self._ledger.usage(self._org, query) if row["account"] == account]
        if not rows:  # a group exists only where a value was folded into it
            return 0 if function in _COUNTING else None
        value = rows[0]["value"]
        if isinstance(value, str):  # LATEST of a text field: nothing a price can multiply
            raise BillingError(
                "not_a_number",
                f"account {account!r}: {function}({meter}.{field}) from {iso(start_ms)} to {iso(end_ms)}"
                f" is the text {value!r:.80}, not a number",
            )
        assert isinstance(value, int | Decimal)
        return value
