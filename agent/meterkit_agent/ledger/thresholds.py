"""Thresholds evaluated as usage arrives: a percent of a cap (``thresholds: [80, 100]``)
and a new price band, per account and plan, each recorded once per threshold per period
in the notifications outbox (:mod:`..signals`).

**When: right after the ingest transaction commits**, in the thread that ingested, before
the ingest is answered. Not inside it: on PostgreSQL two ledger processes ingesting for
one account at once each see only their own uncommitted rows, so evaluated inside their
transactions, 700 stored + 50 in one + 60 in the other would each look like 750 and 760,
and the 80 % of 1,000 that 810 reached would be missed by both. Evaluated after its own
commit, the last of them to evaluate sees both, so a threshold is never missed; both may
see it reached, and the outbox's unique (org, event id) keeps one event
(``INSERT ... ON CONFLICT DO NOTHING``). SQLite has one writer at a time, so there it is
exact either way.

**How: usage after only, with before = 0.** Each evaluation asks which thresholds the
usage to date has reached, not which the batch crossed; the outbox makes asking again
harmless, and the figure before the batch would cost a second query per account. A
process remembers the event ids it has recorded, so a threshold already notified costs no
write. A process that dies between the commit and the evaluation misses nothing for long:
the periodic sweep (:mod:`.signalsrun`) evaluates every account on a plan.

**What it costs.** A ledger with no plans has no :class:`Thresholds`: ingest pays one
``is None`` test. A batch whose meters no plan caps or prices pays one pass over its rows
(a set membership test each). A batch that touches watched meters pays one usage query
per (account, cap or pricing line, period) touched, or one for all accounts when many
are touched (:data:`MANY`).

Bands: a pricing line whose tiers span the plan (``tiers_span_plan``) is not announced
(its period is the attachment's, which may have no end). Spend levels
(``spend_thresholds``) are :mod:`.spendwatch`'s: they need a whole bill, so they are
evaluated at most once per interval per account, not after every batch.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from meterkit._guard import background_error
from meterkit._planlimits import Cap

from ..billing import Plans, PricingLine
from ..billing.periods import next_start, period_start
from ..instants import DAY_MS
from ..signals import Event, Where, band_events, cap_events, record
from ..signals.outbox import Endpoint
from .balances import cap_function, cap_period, plan_at, signal_cap, values
from .ingest import Row
from .store import Ledger

logger = logging.getLogger("meterkit.ledger")

#: touched accounts of one (meter, aggregation, period) above which one query answers all
MANY = 8
#: event ids a process remembers having recorded (then it forgets them and asks the outbox)
KNOWN_IDS = 100_000

Span = tuple[int, int]


@dataclass(frozen=True)
class Ask:
    """One threshold question: ``account`` on ``plan``, a cap or a pricing line, whose
    events count once per ``period``, over usage in ``span``."""

    account: str
    plan: str
    subject: Cap | PricingLine
    period: Span
    span: Span

    @property
    def aggregation(self) -> tuple[str, str, str | None]:
        if isinstance(self.subject, PricingLine):
            agg = self.subject.aggregation
            return agg.meter, agg.function, agg.field
        return (self.subject.meter, *cap_function(self.subject))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Thresholds:
    """The plans' thresholds over one ledger, recorded with a delivery to ``endpoints``."""

    def __init__(self, ledger: Ledger, plans: Plans, endpoints: Sequence[Endpoint] = ()) -> None:
        self.ledger = ledger
        self.plans = plans
        self.endpoints = endpoints
        #: meters some plan caps (with thresholds) or prices: only these are evaluated
        self.meters = frozenset(
            [cap.meter for p in plans.plans.values() if p.thresholds for cap in p.caps]
            + [line.aggregation.meter for p in plans.plans.values() for line in _banded(p.pricing)]
        )
        self._record = Recorder(ledger, endpoints)

    # -- what to ask ------------------------------------------------------------------------

    def asks(self, account: str, ms: int, meters: Iterable[str] | None = None) -> list[Ask]:
        """The questions about ``account`` for usage at ``ms`` of ``meters`` (all: None)."""
        code = plan_at(self.plans, account, ms)
        if code is None:
            return []
        plan = self.plans.plans[code]
        wanted = None if meters is None else set(meters)
        out = []
        if plan.thresholds:
            for cap in plan.caps:
                if wanted is None or cap.meter in wanted:
                    period = cap_period(ms, cap.period)
                    out.append(Ask(account, code, cap, period, period))
        lines = [line for line in _banded(plan.pricing) if wanted is None or line.aggregation.meter in wanted]
        if lines:
            start = period_start(ms, plan.bill_period)
            bill = (start, next_start(start, plan.bill_period))
            span = self._attached(account, code, ms, bill)
            out.extend(Ask(account, code, line, bill, span) for line in lines)
        return out

    def _edges(self, account: str) -> set[int]:
        """The days on which ``account`` joins or leaves a plan."""
        edges = set()
        for a in self.plans.accounts.get(account, ()):
            edges.add(a.start_ms // DAY_MS)
            if a.end_ms is not None:
                edges.add(a.end_ms // DAY_MS)
        return edges

    def _attached(self, account: str, code: str, ms: int, bill: Span) -> Span:
        """The part of the bill period the account spends on the plan it is on at ``ms``."""
        for a in self.plans.accounts.get(account, ()):
            if a.plan == code and a.start_ms <= ms and (a.end_ms is None or ms < a.end_ms):
                return max(bill[0], a.start_ms), min(bill[1], a.end_ms if a.end_ms is not None else bill[1])
        return bill

    # -- evaluating -------------------------------------------------------------------------

    def after_ingest(self, org: str, rows: list[Row]) -> None:
        """Evaluate what a stored batch touched (:meth:`.store.Ledger.ingest` calls this
        after its commit). The batch is stored whatever happens here: an error is
        reported to the background-error guard, and the next sweep evaluates again."""
        try:
            self._after_ingest(org, rows)
        except Exception as exc:
            background_error("ledger thresholds", exc)

    def _after_ingest(self, org: str, rows: list[Row]) -> None:
        meters = self.meters
        touched: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)  # -> day -> a ts in it
        for row in rows:
            if row[1] in meters:
                touched[(row[2], row[1])].setdefault(row[3] // DAY_MS, row[3])
        if not touched:
            return
        asks: set[Ask] = set()
        for (account, meter), days in touched.items():
            edges = self._edges(account)
            for day, ms in days.items():
                if day in edges:  # the account changes plans that day: ask for each instant
                    for row in rows:
                        if row[1] == meter and row[2] == account and row[3] // DAY_MS == day:
                            asks.update(self.asks(account, row[3], (meter,)))
                else:
                    asks.update(self.asks(account, ms, (meter,)))
        self.evaluate(org, list(asks))

    def sweep(self, org: str, now_ms: int | None = None) -> int:
        """Evaluate every account on a plan for the periods holding now; the events new."""
        now = _now_ms() if now_ms is None else now_ms
        asks = [ask for account in self.plans.accounts for ask in self.asks(account, now)]
        return self.evaluate(org, asks, now)

    def evaluate(self, org: str, asks: list[Ask], now_ms: int | None = None) -> int:
        """Record the events the asks' usage to date has reached; how many were new."""
        if not asks:
            return 0
        now = _now_ms() if now_ms is None else now_ms
        found = self._usage(org, asks)
        events: list[Event] = []
        for ask in asks:
            value = found.get((*ask.aggregation, ask.span, ask.account))
            if value is None:
                continue
            where = Where(org, ask.account, ask.period, now, {"plan": ask.plan})
            if isinstance(ask.subject, PricingLine):
                events += band_events(where, ask.subject, 0, value)
            else:
                plan = self.plans.plans[ask.plan]
                events += cap_events(where, signal_cap(ask.subject, plan.thresholds), 0, value)
        return self._record(org, events)

    @property
    def recorded(self) -> int:
        """Events recorded by this process."""
        return self._record.recorded

    def _usage(self, org: str, asks: list[Ask]) -> dict[tuple[str, str, str | None, Span, str], Decimal | int]:
        """(meter, function, field, span, account) -> the exact aggregate: one query per
        account, or one for all when many accounts ask the same."""
        grouped: dict[tuple[str, str, str | None, Span], set[str]] = defaultdict(set)
        for ask in asks:
            grouped[(*ask.aggregation, ask.span)].add(ask.account)
        out: dict[tuple[str, str, str | None, Span, str], Decimal | int] = {}
        for (meter, function, field, span), accounts in grouped.items():
            if len(accounts) > MANY:
                answered = values(self.ledger, org, meter, function, field, span)
            else:
                answered = {}
                for account in accounts:
                    answered.update(values(self.ledger, org, meter, function, field, span, account))
            for account in accounts:
                value = answered.get(account, 0 if function in ("SUM", "COUNT") else None)
                if value is not None:
                    out[(meter, function, field, span, account)] = value
        return out


class Recorder:
    """Records events in the outbox with a delivery to ``endpoints``, remembering the ids
    it recorded so a threshold already notified costs no write (shared by the cap, band
    and spend evaluations)."""

    def __init__(self, ledger: Ledger, endpoints: Sequence[Endpoint] = ()) -> None:
        self.ledger = ledger
        self.endpoints = endpoints
        self._known: set[tuple[str, str]] = set()
        #: events recorded by this process
        self.recorded = 0

    def __call__(self, org: str, events: list[Event]) -> int:
        """Record ``events``; how many were new to the outbox."""
        fresh = [e for e in events if (org, e.id) not in self._known]
        if not fresh:
            return 0
        with self.ledger.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            new = record(conn, fresh, self.endpoints)
        if len(self._known) > KNOWN_IDS:
            self._known.clear()
        self._known.update((org, e.id) for e in fresh)
        for event in new:
            logger.info(
                "meterkit ledger: %s %s %s of %s for %s (%s)",
                org,
                event.kind,
                event.threshold,
                event.meter,
                event.account,
                event.id,
            )
        self.recorded += len(new)
        return len(new)


def _banded(pricing: tuple[PricingLine, ...]) -> list[PricingLine]:
    """The pricing lines whose bands are announced: more than one band, period-bound."""
    return [line for line in pricing if len(line.bands) > 1 and not line.tiers_span_plan]
