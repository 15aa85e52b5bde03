"""Drops and spikes from the ledger's own usage (SQLite and PostgreSQL): closed hourly
buckets judged against the trailing median, an account that stops is a drop, history
starts at an account's first usage, and corrections count."""

from __future__ import annotations

import uuid
from typing import Any

from meterkit._corrections import reversal
from meterkit_agent.instants import HOUR_MS, iso, parse_instant
from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.trendwatch import TrendWatch
from meterkit_agent.signals import TrendSettings
from tests.agent.ledger.conftest import fresh_org, wipe

T0 = parse_instant("2026-03-02T00:00:00Z", None) // 1_000_000


def calls(account: str, hour: int, n: int) -> list[dict[str, Any]]:
    return [
        {"uid": str(uuid.uuid4()), "meter": "api_calls", "account": account, "ts": iso(T0 + hour * HOUR_MS + i)}
        for i in range(n)
    ]


def test_drops_and_spikes_of_closed_hours(shared_ledger: Ledger) -> None:
    org = fresh_org()
    try:
        rows = []
        for hour in range(4):  # hours 0-3: 10 each for everyone
            rows += calls("steady", hour, 10) + calls("quits", hour, 10) + calls("grows", hour, 10)
        rows += calls("steady", 4, 12) + calls("grows", 4, 31) + calls("new", 3, 1) + calls("new", 4, 50)
        rows += calls("steady", 5, 1)  # hour 5 is still under way at "now"
        shared_ledger.ingest(org, rows)
        watch = TrendWatch(shared_ledger, TrendSettings(bucket="hour", window=3, factor=3))
        now = T0 + 5 * HOUR_MS + 1
        found = {(e.account, e.kind, e.period[0]) for e in watch.events(org, T0 + 5 * HOUR_MS, 1, now)}
        # hour 4: quits used nothing (a drop), grows 31 > 3 x 10 (a spike); new has too
        # little history; steady is within the factor; hour 5 is not whole
        assert found == {("quits", "usage_drop", T0 + 4 * HOUR_MS), ("grows", "usage_spike", T0 + 4 * HOUR_MS)}
        [spike] = [e for e in watch.events(org, T0 + 5 * HOUR_MS, 1, now) if e.kind == "usage_spike"]
        assert (spike.data["value"], spike.data["median"], spike.threshold) == ("31", "10", "3")
        # a correction takes the spike away: 30 is exactly 3 x 10, neither
        grown = [r for r in rows if r["account"] == "grows" and r["ts"] >= iso(T0 + 4 * HOUR_MS)]
        shared_ledger.ingest(org, [reversal(grown[0])])
        assert {e.account for e in watch.events(org, T0 + 5 * HOUR_MS, 1, now)} == {"quits"}
    finally:
        wipe(shared_ledger, org)
