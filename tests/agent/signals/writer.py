"""A ledger-like writer for the concurrency tests, run in a process of its own: it sees
usage arrive in its own order and records the crossings, one transaction per change."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

from meterkit_agent.ledger.schema import make_engine
from meterkit_agent.signals import Cap, Where, cap_events, record

CAP = Cap("api_calls", Decimal(100), thresholds=(Decimal(50), Decimal(80), Decimal(100)))
PERIOD = (1767225600000, 1769904000000)
ENDPOINTS_SEEN = ("crm", "slack")


class _Hook:
    def __init__(self, name: str) -> None:
        self.name = name

    def wants(self, kind: str) -> bool:
        return True


def run(url: str, org: str, accounts: int, seed: int, start: Any, results: Any) -> None:
    """Record every account's crossings as its usage climbs 0 → 120 in steps of a random
    size; with the other writer doing the same at the same time."""
    rng = random.Random(seed)
    engine = make_engine(url)
    hooks = [_Hook(n) for n in ENDPOINTS_SEEN]
    steps = []
    for account in range(accounts):
        usage = 0
        while usage < 120:
            step = rng.randint(1, 30)
            steps.append((f"acct{account}", usage, usage + step))
            usage += step
    rng.shuffle(steps)  # accounts interleaved; each account's steps stay... in any order
    new: list[str] = []
    start.wait()
    for account, before, after in steps:
        events = cap_events(Where(org, account, PERIOD, 1767300000000), CAP, before, after)
        with engine.connect() as conn, conn.execution_options(immediate=True).begin():
            new += [e.id for e in record(conn, events, hooks)]
    engine.dispose()
    results.put(new)
