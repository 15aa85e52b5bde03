"""Spend levels (a plan's ``spend_thresholds``): one ``spend_threshold`` event per level
per bill period, when the account's bill for the period holding now reaches it.

**What is compared: the bill's ``period_total``**, computed exactly as ``GET /bills``
computes the open period's bill (:func:`..billing.bills.price` over the period's
segments, usage from the ledger's own usage query): standing charge, usage lines,
minimum-spend true-up, less the period's credits, without adjustment lines for closed
periods (those are other periods' money). The plans file refuses a level at or below the
plan's standing charge or minimum spend, so a level is only ever reached by usage: above
the minimum the true-up is zero, and the figure is standing charge plus usage less
credits, the number the customer's bill shows for the period.

**When: at most once per ``every_millis`` per account, not after every batch.** A bill is
one usage query per pricing line (two for ``tiers_span_plan``) plus pricing, several
times what one cap threshold costs, and an account sending a batch a second would pay it
every second. So a stored batch only marks the accounts it touched (meters a spend plan
prices, in the current bill period); an account not evaluated for ``every_millis`` is
evaluated right after the commit, as cap thresholds are, and one evaluated more recently
waits in ``pending`` until the runtime's loop (:mod:`.signalsrun`, which wakes every
``every_millis``) evaluates it. A level is therefore announced within ``every_millis``
(default 5 s) of the usage that reached it being stored, and the periodic sweep
evaluates every account on a spend plan again, so a process that died holding pending
accounts loses nothing for longer than ``sweep_interval_millis``.

**Exactly once:** each evaluation asks which levels the period total has reached
(``before=0``); the event id is (org, account, level, bill period) and the outbox keeps
one event per id, so evaluating again, or in two processes, records nothing twice. A
total going down (a correction) reaches nothing, and a level notified stays notified for
the period. Which plan's levels: the plan the account is on now; a plan change within the
period is priced as the bill prices it (one segment per plan), with the new plan's levels.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal

from meterkit._guard import background_error

from ..billing import BillingError, Plans
from ..billing.bills import bill_periods, price
from ..instants import iso
from ..signals import Event, SpendLevels, Where, spend_events
from ..signals.outbox import Endpoint
from .balances import plan_at
from .billsource import LedgerUsage
from .ingest import Row
from .queries import UsageQuery
from .store import Ledger
from .thresholds import MANY, Recorder

logger = logging.getLogger("meterkit.ledger")

#: the least time between two evaluations of one account's spend after ingest
SPEND_EVERY_MILLIS = 5_000
#: aggregations that count, and so answer 0 (not "nothing") for a range with no measurement
_COUNTING = ("SUM", "COUNT", "UNIQUE")

Key = tuple[str, str]  # (org, account)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class AllAccounts:
    """:class:`~..billing.Usage` answering many accounts' bills from one usage query per
    (aggregation, range) with no account filter: the ledger's usage query groups by
    account, so each account's value is the one :class:`.billsource.LedgerUsage` would get
    asking for it alone (a sweep's hundred bills cost a few queries, not hundreds)."""

    def __init__(self, ledger: Ledger, org: str) -> None:
        self._ledger, self._org = ledger, org
        self._answers: dict[tuple[str, str | None, str, int, int], dict[str, object]] = {}

    def quantity(
        self, meter: str, field: str | None, function: str, account: str, start_ms: int, end_ms: int
    ) -> Decimal | int | None:
        key = (meter, field, function, start_ms, end_ms)
        if key not in self._answers:
            query = UsageQuery(meter=meter, start=iso(start_ms), end=iso(end_ms), aggregation=function, target=field)
            self._answers[key] = {row["account"]: row["value"] for row in self._ledger.usage(self._org, query)}
        value = self._answers[key].get(account)
        if value is None:
            return 0 if function in _COUNTING else None
        if not isinstance(value, int | Decimal):  # LATEST of a text field: as LedgerUsage refuses it
            raise BillingError(
                "not_a_number",
                f"account {account!r}: {function}({meter}.{field}) from {iso(start_ms)} to {iso(end_ms)}"
                f" is not a number",
            )
        return value


class SpendWatch:
    """The plans' spend levels over one ledger, recorded with a delivery to ``endpoints``."""

    def __init__(
        self,
        ledger: Ledger,
        plans: Plans,
        endpoints: Sequence[Endpoint] = (),
        every_millis: int = SPEND_EVERY_MILLIS,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.ledger = ledger
        self.plans = plans
        self.every_millis = every_millis
        #: UTC ms now: which bill period is current (a test moves it to the next period)
        self.clock = clock
        self.codes = frozenset(code for code, plan in plans.plans.items() if plan.spend_thresholds)
        #: meters a plan with spend levels prices: a batch of others marks nothing
        self.meters = frozenset(line.aggregation.meter for code in self.codes for line in plans.plans[code].pricing)
        self._record = Recorder(ledger, endpoints)
        self._lock = threading.Lock()
        self._last: dict[Key, int] = {}  # when each account was last evaluated (monotonic ms)
        self.pending: set[Key] = set()
        #: bills computed by this process (how much spend evaluation has cost)
        self.bills = 0

    @property
    def recorded(self) -> int:
        return self._record.recorded

    # -- after a batch ----------------------------------------------------------------------

    def after_ingest(self, org: str, rows: list[Row]) -> None:
        """Mark the accounts a stored batch touched, and evaluate those not evaluated for
        ``every_millis``. The batch is stored whatever happens here."""
        try:
            touched = self._touched(rows)
            if touched:
                self._evaluate_due(org, touched)
        except Exception as exc:
            background_error("ledger spend levels", exc)

    def _touched(self, rows: list[Row]) -> set[str]:
        """Accounts on a spend plan now with a row of a priced meter in the current period."""
        meters, now = self.meters, self.clock()
        starts: dict[str, int | None] = {}
        out = set()
        for row in rows:
            if row[1] not in meters:
                continue
            account = row[2]
            if account not in starts:
                starts[account] = self._period_start(account, now)
            start = starts[account]
            if start is not None and row[3] >= start:
                out.add(account)
        return out

    def _period_start(self, account: str, now: int) -> int | None:
        code = plan_at(self.plans, account, now)
        if code not in self.codes:
            return None
        periods = bill_periods(self.plans, account, now, now + 1)
        return periods[0][0][0] if periods else None

    def _evaluate_due(self, org: str, accounts: Iterable[str]) -> None:
        now = time.monotonic_ns() // 1_000_000
        due = []
        with self._lock:
            for account in accounts:
                key = (org, account)
                last = self._last.get(key)
                if last is None or now - last >= self.every_millis:
                    self._last[key] = now
                    self.pending.discard(key)
                    due.append(account)
                else:
                    self.pending.add(key)
        self.evaluate(org, due)

    def run_due(self) -> int:
        """Evaluate the pending accounts whose interval has passed (the runtime's loop
        calls this every ``every_millis``); the events new."""
        with self._lock:
            by_org: dict[str, list[str]] = {}
            for org, account in self.pending:
                by_org.setdefault(org, []).append(account)
        new = 0
        for org, accounts in by_org.items():
            before = self.recorded
            self._evaluate_due(org, accounts)
            new += self.recorded - before
        return new

    # -- evaluating -------------------------------------------------------------------------

    def sweep(self, org: str, now_ms: int | None = None) -> int:
        """Evaluate every account on a spend plan now; the events new."""
        now = self.clock() if now_ms is None else now_ms
        accounts = [a for a in self.plans.accounts if plan_at(self.plans, a, now) in self.codes]
        stamp = time.monotonic_ns() // 1_000_000
        with self._lock:
            for account in accounts:
                self._last[(org, account)] = stamp
                self.pending.discard((org, account))
        return self.evaluate(org, accounts, now)

    def evaluate(self, org: str, accounts: Sequence[str], now_ms: int | None = None) -> int:
        """Record the spend levels each account's current bill has reached; how many new."""
        if not accounts:
            return 0
        now = self.clock() if now_ms is None else now_ms
        usage = AllAccounts(self.ledger, org) if len(accounts) > MANY else LedgerUsage(self.ledger, org)
        events: list[Event] = []
        for account in accounts:
            try:
                events += self._account_events(org, account, now, usage)
            except BillingError as exc:  # this account's bill cannot be priced: the others can
                logger.warning("meterkit ledger: %s spend of %s not evaluated: %s", org, account, exc)
        return self._record(org, events)

    def _account_events(self, org: str, account: str, now: int, usage: AllAccounts | LedgerUsage) -> list[Event]:
        code = plan_at(self.plans, account, now)
        if code not in self.codes:
            return []
        plan = self.plans.plans[code]
        holding = [key for key, _ in bill_periods(self.plans, account, now, now + 1) if key[2] == plan.bill_period]
        if not holding:
            return []
        start, end, _ = key = holding[0]
        segments = next(s for k, s in bill_periods(self.plans, account, start, end) if k == key)
        self.bills += 1
        total = price(self.plans, account, key, segments, usage).period_total
        where = Where(org, account, (start, end), now, {"plan": code})
        return spend_events(where, SpendLevels(plan.spend_thresholds, self.plans.currency), 0, total)
