"""What a ledger process runs for thresholds and signals, started and stopped with its
app (the ASGI lifespan: each ``--workers`` process runs its own).

- With a plans file whose plans have cap thresholds or banded prices: :class:`.thresholds.Thresholds`
  evaluates each stored batch right after its commit (set as the ledger's ``watch``).
- With plans that have ``spend_thresholds``: :class:`.spendwatch.SpendWatch` marks the
  accounts each batch touched and evaluates their bills at most once per
  ``every_millis`` each; this process's loop wakes that often to evaluate the accounts
  left pending.
- A sweep thread: every ``sweep_interval_millis`` it evaluates every account's cap
  thresholds and spend levels again (so a process that died between storing and evaluating loses no
  notification), and, with ``--signals``, judges the trend buckets closed since it last
  looked (:mod:`.trendwatch`).
- With ``--signals`` and webhook endpoints: a :class:`~..signals.WebhookSender`.

Several processes on one database each run all of this; the outbox keeps one event per
id and one sender at a time per delivery.

The notifications are recorded in the ledger's outbox, durable and listable
(``GET .../notifications``, ``meterkit notifications list``): the audit journal is the
agent's file, which the ledger never writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from meterkit._guard import background_error

from ..billing import Plans
from ..signals import SignalsSettings, WebhookSender
from .ingest import Row
from .spendwatch import SpendWatch
from .store import Ledger
from .thresholds import Thresholds
from .trendwatch import TrendWatch

#: the sweep's interval without --signals
DEFAULT_SWEEP_MILLIS = 60_000


class SignalsRuntime:
    """One ledger process's thresholds, trends and webhook sender."""

    def __init__(self, ledger: Ledger, plans: Plans | None, settings: SignalsSettings | None) -> None:
        self.ledger = ledger
        self.settings = settings
        endpoints = settings.webhooks.endpoints if settings is not None else []
        thresholds = Thresholds(ledger, plans, endpoints) if plans is not None else None
        self.thresholds = thresholds if thresholds is not None and thresholds.meters else None
        spend = SpendWatch(ledger, plans, endpoints) if plans is not None else None
        self.spend = spend if spend is not None and spend.codes else None
        self.trends = TrendWatch(ledger, settings.trends, endpoints) if settings is not None else None
        self.interval_millis = settings.sweep_interval_millis if settings is not None else DEFAULT_SWEEP_MILLIS
        self.sender: WebhookSender | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watches = [w.after_ingest for w in (self.thresholds, self.spend) if w is not None]
        if len(self._watches) == 1:
            ledger.watch = self._watches[0]
        elif self._watches:
            ledger.watch = self._watch_all

    def _watch_all(self, org: str, rows: list[Row]) -> None:
        for watch in self._watches:
            watch(org, rows)  # each reports its own errors: one cannot stop the other

    @property
    def active(self) -> bool:
        return self.thresholds is not None or self.spend is not None or self.settings is not None

    def start(self) -> None:
        """Start the sender and the sweep (idempotent; nothing to start: nothing runs)."""
        if self._thread is not None or not self.active:
            return
        if self.settings is not None and self.settings.webhooks.endpoints:
            self.sender = WebhookSender(self.ledger.engine, self.settings.webhooks)
            self.sender.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="meterkit-ledger-signals", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the sweep and the sender; what is pending stays in the outbox."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.sender is not None:
            self.sender.shutdown(timeout)
            self.sender = None

    def _run(self) -> None:
        """A sweep every ``interval_millis``; between sweeps, with spend levels, the
        pending accounts every ``spend.every_millis``."""
        nap = self.interval_millis if self.spend is None else min(self.interval_millis, self.spend.every_millis)
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.interval_millis / 1000
                    self.tick()
                elif self.spend is not None:
                    self.spend.run_due()
            except Exception as exc:  # the database away, say: the next tick tries again
                background_error("ledger signals sweep", exc)
            self._stop.wait(nap / 1000)

    def tick(self) -> int:
        """One sweep: every organisation's cap thresholds and spend levels, and trends if
        a bucket closed. How many events were new."""
        new = 0
        if self.thresholds is not None or self.spend is not None:
            for org in self.ledger.orgs():
                if self._stop.is_set():
                    return new
                if self.thresholds is not None:
                    new += self.thresholds.sweep(org)
                if self.spend is not None:
                    new += self.spend.sweep(org)
        if self.trends is not None and self.trends.due():
            new += self.trends.run()
        return new

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        """The app's lifespan: start with the worker, stop at its shutdown."""
        self.start()
        try:
            yield
        finally:
            self.shutdown()
