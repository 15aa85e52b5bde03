"""Retention passes at the ledger, on SQLite and PostgreSQL: per-person detail of whole
months before the cutoff is aged (who values and pseudonyms anywhere), every total and
UNIQUE within a month stays exactly as it was, reconciliation's digests are unchanged,
newer months are untouched, and a second pass changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

from meterkit._pseudonyms import Key, Keyring
from meterkit_agent.instants import parse_instant
from meterkit_agent.ledger import Ledger, UsageQuery
from meterkit_agent.ledger.digests import Digests
from meterkit_agent.ledger.retention import cutoff_ms, retain
from tests.agent.ledger.conftest import fresh_org, measurement

KEYS = Keyring([Key("k1", b"c" * 40)])
NOW = parse_instant("2025-03-20T12:00:00Z", None) // 1_000_000


def rows() -> list[dict[str, Any]]:
    out = []
    for day, hour, user, n in [
        (5, 10, "ann", 1), (5, 10, "bob", 2), (5, 11, "ann", 3), (20, 9, "cy", 4),  # January
        (3, 8, "ann", 5), (3, 8, "dee", 6.5),  # February
        (18, 7, "ann", 7),  # March: newer than the cutoff
    ]:  # fmt: skip
        month = "01" if n <= 4 else "02" if n <= 6.5 else "03"
        ts = f"2025-{month}-{day:02d}T{hour:02d}:15:00.000Z"
        p = KEYS.pseudonyms_of(user)[0]
        out.append(
            measurement(
                str(uuid.uuid4()), ts, measure={"bytes": n}, who={"user": p}, what={"endpoint": "/x"}, other={"ref": p}
            )
        )
    return out


def answers(ledger: Ledger, org: str) -> list[Any]:
    out = []
    for agg, target, bucket in [("SUM", "bytes", "hour"), ("UNIQUE", "user", "month"), ("UNIQUE", "user", "day"),
                                ("COUNT", None, "day"), ("MAX", "bytes", None), ("UNIQUE", "endpoint", "month")]:  # fmt: skip
        out.append(ledger.usage(org, UsageQuery(meter="downloads", aggregation=agg, target=target, bucket=bucket)))
    return out


def test_a_pass_ages_whole_months_and_keeps_every_total(shared_ledger: Ledger) -> None:
    ledger, org = shared_ledger, fresh_org()
    ledger.ingest(org, rows())
    digests = Digests(ledger)
    span = (0, 2_000_000_000_000)
    before, buckets = answers(ledger, org), digests.buckets(org, *span)
    assert cutoff_ms(NOW, 30) == parse_instant("2025-02-01T00:00:00Z", None) // 1_000_000

    dry = retain(ledger, org, 30, 7, "p0", dry_run=True, now_ms=NOW)
    assert dry["rows"] == 4 and dry["cutoff"].startswith("2025-02-01")

    first = retain(ledger, org, 30, 7, "p1", now_ms=NOW)
    assert first["rows"] == 4 and first["hoursLeftDirty"] == 0 and first["deleted"] == 0
    stored = {m["ts"][:7]: m for m in ledger.rows(org)}
    assert stored["2025-01"]["who"]["user"].startswith("aged:p1:2025-01:") and stored["2025-01"]["what"] == {
        "endpoint": "/x"
    }
    assert stored["2025-01"]["other"]["ref"].startswith("aged:p1:2025-01:")
    assert stored["2025-02"]["who"]["user"].startswith("k1:")  # February is newer than the cutoff
    assert answers(ledger, org) == before and digests.buckets(org, *span) == buckets

    later = NOW + 40 * 86_400_000  # a month on: February ages too
    second = retain(ledger, org, 30, 7, "p2", now_ms=later)
    assert second["rows"] == 2 and answers(ledger, org) == before and digests.buckets(org, *span) == buckets
    again = retain(ledger, org, 30, 7, "p3", now_ms=later)
    assert again["rows"] == 0 and again["hours"] == 0  # idempotent
    assert retain(ledger, org, 30, 1, "p4", now_ms=later + 365 * 86_400_000)["beyondBillingYears"] == 7
    assert "k1:" not in repr(list(ledger.rows(org)))  # a year on, every month has aged
