"""The background sender: delivers the outbox's due webhooks, a bounded batch per tick.

Each tick lists up to ``batch_size`` due deliveries (:mod:`.deliveries`) and, one at a
time, claims each, POSTs it (:mod:`.webhooks`) and records the outcome, each step in a
short transaction of its own: no transaction is open while a request is in flight. An
endpoint that fails is not tried again in the same tick, so a receiver that is down costs
one request per tick, not a batch of them. When a tick finds a full batch it starts the
next at once; otherwise it waits ``poll_interval_millis``.

Any number of senders (ledger processes, ``--workers N``) may share one outbox: claims
keep them from sending one delivery at once. Stopping a sender loses nothing: a delivery
it did not finish stays pending and is due again (at once if it was never claimed, when
its claim runs out otherwise). Errors of the sender itself (the database is away, say)
go to the one background-error guard and the next tick tries again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter

import requests
import sqlalchemy as sa

from meterkit._guard import background_error

from . import deliveries
from .deliveries import Due
from .settings import WebhookConfig, WebhooksSettings
from .webhooks import attempt, next_delay_ms

logger = logging.getLogger("meterkit.signals")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class WebhookSender:
    """Sends due webhooks from the outbox in ``engine`` until :meth:`shutdown`. Reads
    every endpoint's secret when built: a missing one fails here, naming the variable."""

    def __init__(self, engine: sa.Engine, settings: WebhooksSettings, owner: str | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.owner = owner or f"sender-{uuid.uuid4().hex[:16]}"
        self.endpoints: dict[str, WebhookConfig] = {e.name: e for e in settings.endpoints}
        self._secrets = {e.name: e.secret() for e in settings.endpoints}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()  # endpoints whose last attempt failed (logged once per episode)
        #: attempts by outcome: ``delivered``, ``failed``, ``lost_claim`` (another sender took it)
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:  # never the secrets
        return f"WebhookSender(owner={self.owner!r}, endpoints={sorted(self.endpoints)})"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="meterkit-webhooks", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop after the attempt in flight (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        session = requests.Session()
        session.trust_env = False  # a proxy from the environment would see the signed bodies
        try:
            while not self._stop.is_set():
                try:
                    full = self.tick(session) >= self.settings.batch_size
                except Exception as exc:
                    background_error("webhook sender", exc)
                    full = False
                if not full:
                    self._stop.wait(self.settings.poll_interval_millis / 1000)
        finally:
            session.close()

    def tick(self, session: requests.Session) -> int:
        """One pass over the due deliveries; how many were listed."""
        with self.engine.connect() as conn, conn.begin():
            batch = deliveries.due(conn, list(self.endpoints), _now_ms(), self.settings.batch_size)
        failed: set[str] = set()
        for delivery in batch:
            if self._stop.is_set():
                break
            if delivery.endpoint not in failed and not self._send(session, delivery):
                failed.add(delivery.endpoint)
        return len(batch)

    def _write(self) -> sa.Connection:
        return self.engine.connect().execution_options(immediate=True)

    def _send(self, session: requests.Session, delivery: Due) -> bool:
        """Claim, attempt, record; False if the attempt failed."""
        endpoint = self.endpoints[delivery.endpoint]
        with self._write() as conn, conn.begin():
            claimed = deliveries.claim(conn, delivery, self.owner, _now_ms(), self.settings.lease_millis)
        if not claimed:
            return True
        outcome = attempt(session, endpoint, self._secrets[endpoint.name], delivery.event_id, delivery.body)
        now = _now_ms()
        with self._write() as conn, conn.begin():
            if outcome.ok:
                kept = deliveries.acknowledged(conn, delivery, self.owner, now)
            else:
                delay = next_delay_ms(delivery.attempts + 1, self.settings.retry, outcome.retry_after_ms)
                kept = deliveries.reschedule(conn, delivery, self.owner, now + delay, outcome.error)
        self.counts["delivered" if outcome.ok else "failed"] += 1
        if not kept:
            self.counts["lost_claim"] += 1
        self._episode(endpoint.name, outcome.ok, outcome.error)
        return outcome.ok

    def _episode(self, name: str, ok: bool, error: str) -> None:
        """One warning when an endpoint starts failing, one line when it recovers."""
        if not ok and name not in self._failing:
            self._failing.add(name)
            logger.warning("meterkit signals: webhook %s failed (%s); events are kept and retried", name, error)
        elif ok and name in self._failing:
            self._failing.discard(name)
            logger.warning("meterkit signals: webhook %s is delivering again", name)
