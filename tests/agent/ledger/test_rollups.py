"""The rollups answer what a naive exact fold over the raw measurements answers: several
fields per measurement (some present in only some measurements), ingests split into random
batches, re-sends with the same content (duplicates) and with other content (conflicts:
the first stands), times out of order and on hour, day and month boundaries, every
aggregation and bucket; on SQLite and PostgreSQL. The reference is a plain Decimal fold
over the measurements that stand, written without the ledger's code."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterkit._model import content_hash
from meterkit_agent.instants import iso
from meterkit_agent.ledger import Ledger, UsageQuery
from tests.agent.ledger.conftest import fresh_org

HOUR = 3_600_000
BASE = 1_769_896_800_000  # 2026-01-31T22:00:00Z: hours, a day and a month within reach
EDGES = [BASE + h * HOUR for h in range(0, 28)]

instants = st.one_of(
    st.integers(min_value=BASE - 2 * HOUR, max_value=BASE + 28 * HOUR),
    st.builds(lambda edge, d: edge + d, st.sampled_from(EDGES), st.sampled_from([-1, 0, 1])),
)
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-5, max_value=5),
    st.floats(min_value=-1e15, max_value=1e15, allow_nan=False).filter(lambda x: x == 0 or abs(x) >= 1e-12),
    st.sampled_from([0.1, 0.2, 0.3, 2.5, 5e-324, 1e308, -1e308]),
)
measurement = st.fixed_dictionaries(
    {
        "account": st.sampled_from(["a", "b"]),
        "ms": instants,
        "x": numbers,
        "y": st.none() | numbers,  # in some measurements only
        "region": st.sampled_from(["eu", "us", "ap"]),
        "plan": st.none() | st.sampled_from(["free", "pro"]),
    }
)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def wire(i: int, m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": f"u{i:04d}", "meter": "m", "account": m["account"], "ts": iso(m["ms"])}
    out["measure"] = {"x": m["x"], **({"y": m["y"]} if m["y"] is not None else {})}
    out["where"] = {"region": m["region"]}
    if m["plan"] is not None:
        out["who"] = {"plan": m["plan"]}
    return out


def bucket_of(ms: int, bucket: str | None) -> int:
    when = datetime(1970, 1, 1) + timedelta(milliseconds=ms)
    if bucket == "hour":
        when = when.replace(minute=0, second=0, microsecond=0)
    elif bucket == "day":
        when = when.replace(hour=0, minute=0, second=0, microsecond=0)
    elif bucket == "month":
        when = when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        return 0
    return int((when - datetime(1970, 1, 1)).total_seconds() * 1000)


def naive(stood: list[dict[str, Any]], aggregation: str, target: str | None, bucket: str | None) -> dict[Any, Any]:
    """Per (account, bucket): the answer, by a plain fold with Decimal arithmetic."""
    groups: dict[tuple[str, int], list[tuple[int, str, Any]]] = {}
    for m in stood:
        value: Any = 1
        if target is not None:
            value = m.get("measure", {}).get(target)
            if value is None:
                value = m.get("where", {}).get(target, m.get("who", {}).get(target))
            if value is None:
                continue
        ms = int((datetime.strptime(m["ts"], "%Y-%m-%dT%H:%M:%S.%fZ") - datetime(1970, 1, 1)).total_seconds() * 1000)
        groups.setdefault((m["account"], bucket_of(ms, bucket)), []).append((ms, m["uid"], value))
    out = {}
    with localcontext() as ctx:
        ctx.prec = 2000  # far more digits than any sum here holds: exact
        for key, members in groups.items():
            decimals = [Decimal(v) if type(v) is int else Decimal(repr(v)) for _, _, v in members if type(v) is not str]
            if aggregation == "COUNT":
                out[key] = Fraction(len(members))
            elif aggregation == "SUM":
                out[key] = Fraction(sum(decimals, Decimal(0)))
            elif aggregation == "MEAN":
                out[key] = Fraction(sum(decimals, Decimal(0))) / len(decimals)
            elif aggregation == "MIN":
                out[key] = Fraction(min(decimals))
            elif aggregation == "MAX":
                out[key] = Fraction(max(decimals))
            elif aggregation == "UNIQUE":
                out[key] = Fraction(len({v for _, _, v in members}))
            else:  # LATEST: the greatest time, then the greatest uid
                latest = max(members)[2]
                out[key] = (
                    latest
                    if type(latest) is str
                    else Fraction(Decimal(repr(latest)) if type(latest) is float else latest)
                )
    return out


@SETTINGS
@given(
    data=st.lists(measurement, max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=4),
    resend=st.lists(st.tuples(st.integers(0, 39), st.booleans()), max_size=8),
    order=st.randoms(use_true_random=False),
    query=st.sampled_from(
        [
            ("COUNT", None),
            ("COUNT", "y"),
            ("COUNT", "plan"),
            ("SUM", "x"),
            ("SUM", "y"),
            ("MEAN", "x"),
            ("MIN", "x"),
            ("MAX", "y"),
            ("LATEST", "x"),
            ("LATEST", "plan"),
            ("UNIQUE", "region"),
            ("UNIQUE", "plan"),
        ]
    ),
    bucket=st.sampled_from([None, "hour", "day", "month"]),
    period=st.sampled_from([(None, None), (EDGES[2], EDGES[20]), (EDGES[2] + 1, EDGES[20] - 1), (BASE, None)]),
)
def test_rollups_equal_a_naive_fold(
    shared_ledger: Ledger,
    data: list[dict[str, Any]],
    cuts: list[int],
    resend: list[tuple[int, bool]],
    order: Any,
    query: tuple[str, str | None],
    bucket: str | None,
    period: tuple[int | None, int | None],
) -> None:
    org = fresh_org()
    sent = [wire(i, m) for i, m in enumerate(data)]
    order.shuffle(sent)  # out of time order
    for i, changed in resend:  # re-sends: the same content, or other content (a conflict)
        if i < len(sent):
            again = dict(sent[i])
            if changed:
                again["measure"] = {"x": 12345}
            sent.append(again)
    stood: dict[str, dict[str, Any]] = {}
    for m in sent:
        stood.setdefault(m["uid"], m)
    bounds = sorted({0, len(sent), *(c for c in cuts if c <= len(sent))})
    for a, b in itertools.pairwise(bounds):
        shared_ledger.ingest(org, sent[a:b])
    for uid, m in stood.items():  # stored exactly: the first content for each uid
        assert content_hash(shared_ledger.get(org, uid) or {}) == content_hash(m)
    aggregation, target = query
    lo, hi = period
    q = UsageQuery(
        meter="m",
        aggregation=aggregation,
        target=target,
        bucket=bucket,
        start=None if lo is None else iso(lo),
        end=None if hi is None else iso(hi),
    )
    kept = [m for m in stood.values() if (lo is None or iso(lo) <= m["ts"]) and (hi is None or m["ts"] < iso(hi))]
    expected = naive(kept, aggregation, target, bucket)
    got = {}
    for row in shared_ledger.usage(org, q):
        key = (row["account"], 0 if bucket is None else _ms(row["bucket"]))
        got[key] = row["value"] if type(row["value"]) is str else Fraction(row["value"])
    assert set(got) == set(expected)
    for key, want in expected.items():
        if not isinstance(want, str) and not _terminates(want):  # a MEAN with no finite decimal: 60 digits
            assert abs(got[key] - want) <= abs(want) / 10**59
        else:
            assert got[key] == want, (key, got[key], want)


def _terminates(q: Fraction) -> bool:
    den = q.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def _ms(text: str) -> int:
    return int((datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ") - datetime(1970, 1, 1)).total_seconds() * 1000)
