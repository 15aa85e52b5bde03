"""The ledger's answers equal a naive exact reference over random data: random times
around hour, day and month boundaries, periods spelled with random offsets, values from
tenths to the edges of float's range, every aggregation, bucket, quantityPerUnit and
rounding; on SQLite and PostgreSQL, through the HTTP API."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterkit_agent.instants import iso
from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.exact import QUOTIENT_DIGITS
from tests.agent.ledger.conftest import AUTH, fresh_org, measurement

HOUR = 3_600_000
#: 2026-01-31T22:00:00Z: the window below crosses hours, a day and a month
BASE = 1_769_896_800_000
EDGES = [BASE + h * HOUR for h in range(0, 30)]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

instants = st.one_of(
    st.integers(min_value=BASE - 3 * HOUR, max_value=BASE + 30 * HOUR),
    st.builds(lambda edge, d: edge + d, st.sampled_from(EDGES), st.sampled_from([-1, 0, 1])),
)
floats = st.floats(min_value=-1e18, max_value=1e18, allow_nan=False, exclude_max=True, exclude_min=True)
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-1000, max_value=1000),
    floats.filter(lambda x: x == 0 or abs(x) >= 1e-18),
    st.sampled_from([0.1, 0.2, 0.3, 1e17, 5e-324, 1e308, -1e308, 1.7976931348623157e308, 2.5, -2.5]),
)
records = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), instants, numbers, st.sampled_from(["eu", "us"])), max_size=25
)
#: a bound: an instant (maybe between milliseconds), a UTC offset in minutes, a spelling
bounds = st.none() | st.tuples(
    instants, st.integers(0, 999_999), st.sampled_from([0, 60, -300, 330, -(23 * 60 + 59), 14 * 60]), st.booleans()
)


def spell(bound: tuple[int, int, int, bool]) -> str:
    ms, sub_ns, offset, colon = bound
    local = datetime(1970, 1, 1) + timedelta(milliseconds=ms, minutes=offset)
    fraction = f"{ms % 1000:03d}{sub_ns:06d}".rstrip("0")
    sign, (hours, minutes) = ("-" if offset < 0 else "+"), divmod(abs(offset), 60)
    zone = "Z" if offset == 0 and colon else f"{sign}{hours:02d}{':' if colon else ''}{minutes:02d}"
    return f"{local:%Y-%m-%dT%H:%M:%S}{'.' + fraction if fraction else ''}{zone}"


def ceil_ms(bound: tuple[int, int, int, bool] | None) -> int | None:
    return None if bound is None else bound[0] + (1 if bound[1] else 0)


def exact(value: int | float) -> Fraction:
    return Fraction(value) if isinstance(value, int) else Fraction(Decimal(repr(value)))


def bucket_of(ms: int, bucket: str | None) -> str | None:
    if bucket is None:
        return None
    when = datetime(1970, 1, 1) + timedelta(milliseconds=ms)
    cut = {
        "hour": when.replace(minute=0, second=0, microsecond=0),
        "day": when.replace(hour=0, minute=0, second=0, microsecond=0),
    }
    start = cut.get(bucket) or when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return f"{start:%Y-%m-%dT%H:%M:%S}.000Z"


def reference(
    rows: list[tuple[str, int, int | float, str]], aggregation: str, bucket: str | None, lo: int | None, hi: int | None
) -> dict[tuple[str, str | None], Fraction]:
    """The answer, computed the obvious way with exact rationals."""
    groups: dict[tuple[str, str | None], list[tuple[int, int, int | float, str]]] = {}
    for i, (account, ms, value, region) in enumerate(rows):
        if (lo is None or ms >= lo) and (hi is None or ms < hi):
            groups.setdefault((account, bucket_of(ms, bucket)), []).append((ms, i, value, region))
    return {key: fold(aggregation, members) for key, members in groups.items()}


def fold(aggregation: str, members: list[tuple[int, int, int | float, str]]) -> Fraction:
    numbers = [exact(v) for _, _, v, _ in members]
    if aggregation == "SUM":
        return sum(numbers, Fraction(0))
    if aggregation == "MEAN":
        return sum(numbers, Fraction(0)) / len(numbers)
    if aggregation in ("MIN", "MAX"):
        return min(numbers) if aggregation == "MIN" else max(numbers)
    if aggregation == "LATEST":
        return exact(max(members)[2])  # by time, then uid (u0001 < u0002 ...)
    if aggregation == "UNIQUE":
        return Fraction(len({r for _, _, _, r in members}))
    return Fraction(len(numbers))


def units(value: Fraction, unit: Fraction, rounding: str) -> Fraction:
    q = value / unit
    if rounding == "UP":
        return Fraction(math.ceil(q))
    if rounding == "DOWN":
        return Fraction(math.floor(q))
    if rounding == "NEAREST":
        n = math.floor(abs(q) + Fraction(1, 2))
        return Fraction(n if q >= 0 else -n)
    return q


def terminates(q: Fraction) -> bool:
    den = q.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


@SETTINGS
@given(
    rows=records,
    aggregation=st.sampled_from(["SUM", "MEAN", "MIN", "MAX", "COUNT", "LATEST", "UNIQUE"]),
    bucket=st.sampled_from([None, "hour", "day", "month"]),
    start=bounds,
    end=bounds,
    unit=st.sampled_from(["1", "1000", "0.001", "3", "1e-9", "7.5", "1e18"]),
    rounding=st.sampled_from(["NONE", "UP", "DOWN", "NEAREST"]),
)
def test_usage_equals_the_exact_reference(
    shared_ledger: Ledger,
    shared_api: TestClient,
    rows: list[tuple[str, int, int | float, str]],
    aggregation: str,
    bucket: str | None,
    start: tuple[int, int, int, bool] | None,
    end: tuple[int, int, int, bool] | None,
    unit: str,
    rounding: str,
) -> None:
    org = fresh_org()
    shared_ledger.ingest(
        org,
        [
            measurement(f"u{i:04d}", iso(ms), account, measure={"x": value}, where={"region": region})
            for i, (account, ms, value, region) in enumerate(rows)
        ],
    )
    params: dict[str, Any] = {"meter": "downloads", "aggregation": aggregation, "quantityPerUnit": unit}
    params |= {"rounding": rounding, **({"bucket": bucket} if bucket else {})}
    params["field"] = "region" if aggregation == "UNIQUE" else "x"
    if start is not None:
        params["from"] = spell(start)
    if end is not None:
        params["to"] = spell(end)
    r = shared_api.get(f"/organizations/{org}/usage", params=params, headers=AUTH)
    uids = shared_api.get(
        f"/organizations/{org}/uids", params={k: params[k] for k in ("from", "to") if k in params}, headers=AUTH
    )
    lo, hi = ceil_ms(start), ceil_ms(end)
    exact_lo = None if start is None else start[0] * 10**6 + start[1]
    exact_hi = None if end is None else end[0] * 10**6 + end[1]
    if exact_lo is not None and exact_hi is not None and exact_lo >= exact_hi:
        assert r.status_code == 400 and "empty period" in r.json()["message"]
        assert uids.status_code == 400
        return
    assert r.status_code == 200, r.text
    answer = json.loads(r.text, parse_float=Decimal)
    expected = reference(rows, aggregation, bucket, lo, hi)
    got = {(row["account"], row.get("bucket")): row["value"] for row in answer["data"]}
    assert set(got) == set(expected)
    for key, want in expected.items():
        want = units(want, Fraction(Decimal(unit)), rounding)
        have = Fraction(got[key])
        if terminates(want):
            assert have == want, (key, got[key], want)
        else:  # a quotient with no finite decimal: QUOTIENT_DIGITS significant digits
            assert abs(have - want) <= abs(want) / 10 ** (QUOTIENT_DIGITS - 1), (key, got[key])
    # The uids of the period: what reconciliation reads, over HTTP or from the database.
    selected = {
        f"u{i:04d}" for i, (_, ms, _, _) in enumerate(rows) if (lo is None or ms >= lo) and (hi is None or ms < hi)
    }
    assert set(uids.json()["uids"]) == selected
    assert {m["uid"] for m in shared_ledger.rows(org, start=params.get("from"), end=params.get("to"))} == selected
