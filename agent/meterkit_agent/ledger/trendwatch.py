"""Drops and spikes of each account's usage of each meter, judged once a bucket has closed
(:mod:`..signals.trends` decides; this module asks the ledger for the series).

Usage here is the meter's COUNT of measurements per UTC bucket (``hour`` or ``day``, the
signals settings' ``trends``), from the ledger's usage query (corrections applied): one
query per meter, bucketed, with no account filter, so every account comes at once. The
series of an account starts at its first stored hour of the meter (from the ``hours``
rollup, one grouped query), so the zeros before it are not history, and zeros after it
are (an account that stopped is the drop that matters most).

:class:`TrendWatch` judges the buckets that closed since it last looked; when it starts,
the last closed one. A bucket that closed while no ledger process was running is not
judged later (say so: a ledger down over a bucket's end says nothing about that bucket).
Judging a bucket again is harmless: the event's period is its bucket, and the outbox
keeps one event per id.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ..instants import HOUR_MS, boundary_ms, iso
from ..signals import Event, TrendSettings, dense, record, trend_events
from ..signals.outbox import Endpoint
from ..signals.trends import BUCKET_MS
from .queries import UsageQuery
from .store import Ledger

#: the most closed buckets judged at once (a process that slept through more judges these)
MAX_JUDGED = 24


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TrendWatch:
    """Judges closed buckets of every organisation's usage in ``ledger``."""

    def __init__(self, ledger: Ledger, settings: TrendSettings, endpoints: Sequence[Endpoint] = ()) -> None:
        self.ledger = ledger
        self.settings = settings
        self.endpoints = endpoints
        self.size = BUCKET_MS[settings.bucket]
        self.judged_to: int | None = None  # the end of the last bucket judged
        #: events recorded by this watcher
        self.recorded = 0

    def due(self, now_ms: int | None = None) -> bool:
        """Whether a bucket has closed since the last look."""
        now = _now_ms() if now_ms is None else now_ms
        return self.judged_to is None or now - now % self.size > self.judged_to

    def run(self, now_ms: int | None = None) -> int:
        """Judge the buckets closed since the last look, in every organisation; how many
        events were new."""
        now = _now_ms() if now_ms is None else now_ms
        end = now - now % self.size
        count = 1 if self.judged_to is None else (end - self.judged_to) // self.size
        count = max(1, min(count, MAX_JUDGED))
        new = 0
        for org in self.ledger.orgs():
            events = self.events(org, end, count, now)
            if events:
                with self.ledger.engine.connect().execution_options(immediate=True) as conn, conn.begin():
                    new += len(record(conn, events, self.endpoints))
        self.judged_to = end
        self.recorded += new
        return new

    def events(self, org: str, end: int, count: int, now_ms: int) -> list[Event]:
        """The drops and spikes of ``org`` in the ``count`` buckets before ``end``."""
        settings, size = self.settings, self.size
        start = end - (settings.window + count) * size
        first = self._first_hours(org)
        out: list[Event] = []
        for meter in sorted({m for m, _ in first}):
            query = UsageQuery(meter=meter, start=iso(start), end=iso(end), aggregation="COUNT", bucket=settings.bucket)
            by_account: dict[str, dict[int, Any]] = defaultdict(dict)
            for row in self.ledger.usage(org, query):
                by_account[row["account"]][boundary_ms(row["bucket"], "bucket")] = row["value"]
            for account, buckets in sorted(by_account.items()):
                since = max(start, first[(meter, account)] * HOUR_MS)
                series = dense(buckets, since, end, settings.bucket)
                judged_from = max(0, len(series) - count)
                out += trend_events(org, account, meter, "", series, settings, now_ms, judged_from)
        return out

    def _first_hours(self, org: str) -> dict[tuple[str, str], int]:
        """(meter, account) -> the first hour anything was stored for it."""
        mark = self.ledger.mark
        conn = self.ledger.connection()
        try:
            cur = conn.cursor()
            cur.execute(
                "SELECT s.meter, s.account, min(h.hour) FROM hours h JOIN series s ON s.id = h.series"  # noqa: S608
                f" WHERE s.org = {mark} GROUP BY s.meter, s.account",
                (org,),
            )
            return {(m, a): int(h) for m, a, h in cur.fetchall()}
        finally:
            conn.close()
