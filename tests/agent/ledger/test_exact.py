"""Sums are exact: decimal arithmetic over the numbers as they were written, exact JSON
literals in the answer, ``quantityPerUnit`` read as a decimal, and no input that makes a
usage query answer null or a 500, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.exact import QUOTIENT_DIGITS, from_fraction, json_value, per_unit, to_units
from tests.agent.ledger.conftest import AUTH, fresh_org, measurement

TS = "2026-03-01T10:00:00.000Z"


def query(api: TestClient, org: str, **params: Any) -> Any:
    """The answer's JSON, every number read exactly; asserts a 200."""
    r = api.get(f"/organizations/{org}/usage", params={"meter": "downloads", **params}, headers=AUTH)
    assert r.status_code == 200, r.text
    return json.loads(r.text, parse_float=Decimal)


def values(api: TestClient, org: str, **params: Any) -> list[Any]:
    return [row["value"] for row in query(api, org, **params)["data"]]


def test_five_thousand_tenths_and_fifths_sum_to_1500(shared_api: TestClient) -> None:
    """Through the ingest API, as an application sends them."""
    org = fresh_org()
    records = [measurement(f"a{i}", TS, measure={"x": 0.1}) for i in range(5000)]
    records += [measurement(f"b{i}", TS, measure={"x": 0.2}) for i in range(5000)]
    for i in range(0, len(records), 1000):
        r = shared_api.post(
            f"/organizations/{org}/measurements", json={"measurements": records[i : i + 1000]}, headers=AUTH
        )
        assert r.status_code == 200 and r.json()["accepted"] == 1000
    r = shared_api.get(f"/organizations/{org}/usage", params={"meter": "downloads", "field": "x"}, headers=AUTH)
    assert r.text == '{"data":[{"meter":"downloads","account":"acme","value":1500}]}'
    assert values(shared_api, org, field="x", aggregation="MEAN") == [Decimal("0.15")]


def test_values_stored_before_the_numeric_range_existed_still_answer_exactly(
    shared_ledger: Ledger, shared_api: TestClient
) -> None:
    """Today's ingest refuses them (the SDK's validate_wire); a database written by an
    older ledger may hold them, and no query over them answers null or a 500."""
    org = fresh_org()
    shared_ledger.ingest(
        org,
        [
            measurement("big", TS, account="ints", measure={"x": 10**19}),
            measurement("five", TS, account="ints", measure={"x": 5}),
            measurement("h1", TS, account="huge", measure={"x": 1e308}),
            measurement("h2", TS, account="huge", measure={"x": 1e308}),
            measurement("t1", TS, account="tiny", measure={"x": 5e-324}),
            measurement("t2", TS, account="tiny", measure={"x": 1e17}),
        ],
    )
    sums = {row["account"]: row["value"] for row in query(shared_api, org, field="x")["data"]}
    assert sums == {"ints": 10**19 + 5, "huge": 2 * 10**308, "tiny": sums["tiny"]}
    assert Fraction(sums["tiny"]) == 10**17 + Fraction(Decimal("5e-324"))  # all 342 digits
    for aggregation in ("MIN", "MAX", "MEAN", "LATEST", "COUNT", "UNIQUE"):
        for row in query(shared_api, org, field="x", aggregation=aggregation)["data"]:
            assert row["value"] is not None, (aggregation, row)
    assert values(shared_api, org, field="x", aggregation="MAX", account="huge") == [10**308]
    assert values(shared_api, org, field="x", aggregation="MEAN", account="huge") == [10**308]
    assert values(shared_api, org, field="x", aggregation="MIN", account="tiny") == [Decimal("5e-324")]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("1", True),
        ("1024", True),
        ("0.001", True),
        ("1e-9", True),
        ("1e18", True),
        ("1e-300", False),
        ("1e19", False),
        ("0", False),
        ("-5", False),
        ("NaN", False),
        ("Infinity", False),
        ("lots", False),
        ("1" * 70, False),
    ],
)
def test_quantity_per_unit_is_a_decimal_in_a_stated_range(
    shared_ledger: Ledger, shared_api: TestClient, text: str, ok: bool
) -> None:
    org = fresh_org()
    shared_ledger.ingest(org, [measurement("u", TS, measure={"x": 3})])
    r = shared_api.get(
        f"/organizations/{org}/usage",
        params={"meter": "downloads", "field": "x", "quantityPerUnit": text},
        headers=AUTH,
    )
    if ok:
        assert r.status_code == 200
        assert Fraction(json.loads(r.text, parse_float=Decimal)["data"][0]["value"]) == 3 / Fraction(Decimal(text))
    else:
        assert r.status_code == 400 and "quantityPerUnit" in r.json()["message"], r.text


@pytest.mark.parametrize(
    ("value", "unit", "rounding", "expected"),
    [
        (Fraction(1450), "1000", "NONE", Decimal("1.45")),
        (Fraction(1450), "1000", "UP", 2),
        (Fraction(1450), "1000", "DOWN", 1),
        (Fraction(1450), "1000", "NEAREST", 1),
        (Fraction(1500), "1000", "NEAREST", 2),  # half away from zero
        (Fraction(-1500), "1000", "NEAREST", -2),
        (Fraction(-1500), "1000", "UP", -1),  # toward +infinity
        (Fraction(-1500), "1000", "DOWN", -2),
        (Fraction(1), "3", "NONE", Decimal("0." + "3" * QUOTIENT_DIGITS)),
        (Fraction(2), "3", "NONE", Decimal("0." + "6" * (QUOTIENT_DIGITS - 1) + "7")),
        # a quotient just above 3: rounded UP on the exact value, not on 60 digits of it
        (Fraction(3 * 10**70 + 1, 10**70), "1", "UP", 4),
        (Fraction(1, 10**70), "1", "NONE", Decimal("1e-70")),
        (Fraction(Decimal("0.3")), "0.1", "NONE", 3),
    ],
)
def test_units_and_rounding_are_decided_on_the_exact_quotient(
    value: Fraction, unit: str, rounding: str, expected: Any
) -> None:
    got = to_units(value, per_unit(unit), rounding)
    assert got == expected and type(got) is type(expected)


def test_exact_values_become_exact_json_literals() -> None:
    doc = {"a": json_value(Decimal("1500.000")), "b": json_value(Decimal("0.1")), "c": json_value(2**70)}
    doc |= {
        "d": json_value(Decimal("2E+308")),
        "e": json_value(Decimal("5E-324")),
        "f": json_value(7),
        "g": json_value("x"),
    }
    text = orjson.dumps(doc).decode()
    assert text == ('{"a":1500,"b":0.1,"c":1180591620717411303424,"d":2' + "0" * 308 + ',"e":5E-324,"f":7,"g":"x"}')
    assert json.loads(text, parse_float=Decimal)["e"] == Decimal("5e-324")
    assert from_fraction(Fraction(3, 8)) == Decimal("0.375")
    assert from_fraction(Fraction(10**40 + 1, 2)) == Decimal("5" + "0" * 39 + ".5")  # past 28 digits


def test_no_aggregation_answers_for_nothing(shared_ledger: Ledger, shared_api: TestClient) -> None:
    """MEAN, MIN and MAX over rows without the field answer no row, never null."""
    org = fresh_org()
    shared_ledger.ingest(org, [measurement("u", TS, who={"user": "ann"})])
    for aggregation in ("SUM", "MEAN", "MIN", "MAX", "LATEST"):
        assert query(shared_api, org, field="x", aggregation=aggregation)["data"] == []
    assert values(shared_api, org, aggregation="COUNT") == [1]
    assert values(shared_api, org, field="user", aggregation="UNIQUE") == [1]
    assert values(shared_api, org, field="user", aggregation="LATEST") == ["ann"]
