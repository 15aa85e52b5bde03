"""Cap balances and threshold notifications on the ledger (SQLite and PostgreSQL): the
balances answer is exact, bounded by the cap's calendar period and ``as_of``, with
corrections applied; thresholds are recorded once per threshold per period as usage
arrives in several batches, again in the next period, and listed by the API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meterkit._corrections import reversal
from meterkit_agent.billing import plans_from_text
from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.api import create_app
from tests.agent.conftest import TOKEN
from tests.agent.ledger.conftest import AUTH, fresh_org, wipe

PLANS = """
currency: USD
plans:
  - code: growth
    bill_period: month
    pricing:
      - aggregation: {meter: api_calls, function: COUNT}
        bands: [{lower_limit: 0, unit_price: "0"}, {lower_limit: 4, unit_price: "0.10"}]
    limits:
      - {meter: api_calls, rate: 100, per: second, burst: 200}
      - {meter: api_calls, cap: 10, period: month, mode: hard, grace_percent: 5}
      - {meter: downloads, field: bytes, cap: "1000.5", period: day, mode: soft}
    thresholds: [80, 100]
  - code: free
    bill_period: month
    limits:
      - {meter: api_calls, cap: 3, period: month}
accounts:
  acme: [{plan: growth, from: "2026-01-01T00:00:00Z"}]
  globex: [{plan: growth, from: "2026-01-01T00:00:00Z", to: "2026-03-10T00:00:00Z"},
           {plan: free, from: "2026-03-10T00:00:00Z"}]
"""


@pytest.fixture(scope="module")
def api(shared_ledger: Ledger) -> Iterator[TestClient]:
    client = TestClient(create_app(shared_ledger, token=TOKEN, plans=plans_from_text(PLANS)))
    yield client
    shared_ledger.watch = None  # the module's ledger goes back to having no plans


def call(ts: str, account: str = "acme", meter: str = "api_calls", **fields: Any) -> dict[str, Any]:
    return {"uid": str(uuid.uuid4()), "meter": meter, "account": account, "ts": ts, **fields}


def dl(ts: str, amount: Any, account: str = "acme") -> dict[str, Any]:
    return call(ts, account, "downloads", measure={"bytes": amount})


def balances(api: TestClient, org: str, as_of: str) -> dict[tuple[str, str], str]:
    r = api.get(f"/organizations/{org}/balances", params={"as_of": as_of}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    return {(b["account"], b["meter"]): (b["plan"], b["period_start"], b["value"]) for b in body["balances"]}


def notified(api: TestClient, org: str, **params: str) -> list[dict[str, Any]]:
    r = api.get(f"/organizations/{org}/notifications", params=params, headers=AUTH)
    assert r.status_code == 200, r.text
    return list(r.json()["notifications"])


def test_balances_are_exact_period_bound_and_corrected(api: TestClient, shared_ledger: Ledger) -> None:
    org = fresh_org()
    try:
        before = dl("2026-03-01T23:59:59.999Z", 999.25)  # the day before: another period
        inside = [dl("2026-03-02T00:00:00.000Z", 0.1), dl("2026-03-02T08:00:00.000Z", 0.2)]
        late = dl("2026-03-02T09:00:00.000Z", 7)  # at as_of: not before it
        calls = [call(f"2026-03-0{d}T10:00:00.000Z") for d in (1, 2, 3)] + [call("2026-02-28T10:00:00.000Z")]
        shared_ledger.ingest(org, [before, *inside, late, *calls])
        at = balances(api, org, "2026-03-02T09:00:00Z")
        assert at[("acme", "downloads")] == ("growth", "2026-03-02T00:00:00.000Z", "0.3")
        assert at[("acme", "api_calls")] == ("growth", "2026-03-01T00:00:00.000Z", "1")  # 2 March 10:00 is later
        # globex is on growth at as_of: its caps, with nothing used
        assert at[("globex", "api_calls")] == ("growth", "2026-03-01T00:00:00.000Z", "0")
        assert len(at) == 4
        # a reversal takes its original out of the balance
        shared_ledger.ingest(org, [reversal(inside[1])])
        assert balances(api, org, "2026-03-02T09:00:00Z")[("acme", "downloads")][2] == "0.1"
        assert balances(api, org, "2026-03-02T09:00:00.001Z")[("acme", "downloads")][2] == "7.1"
        # after 10 March globex is on free: one cap, counting the whole calendar month
        shared_ledger.ingest(org, [call("2026-03-05T00:00:00.000Z", "globex"), call("2026-03-11T00:00:00Z", "globex")])
        later = balances(api, org, "2026-03-12")
        assert later[("globex", "api_calls")] == ("free", "2026-03-01T00:00:00.000Z", "2")
        assert ("globex", "downloads") not in later
    finally:
        wipe(shared_ledger, org)


def test_a_bad_as_of_is_a_400(api: TestClient) -> None:
    r = api.get("/organizations/x/balances", params={"as_of": "2026-13-01"}, headers=AUTH)
    assert r.status_code == 400 and "as_of" in r.json()["message"]


def test_thresholds_fire_once_per_period_as_usage_arrives(api: TestClient, shared_ledger: Ledger) -> None:
    org = fresh_org()
    try:
        batches = [
            [call(f"2026-03-02T10:0{i}:00.000Z") for i in range(3)],  # 3 of 10
            [call(f"2026-03-03T10:0{i}:00.000Z") for i in range(5)],  # 8: 80 %, and band 4
            [call("2026-03-04T10:00:00.000Z")],  # 9: nothing new
            [call(f"2026-03-05T10:0{i}:00.000Z") for i in range(4)],  # 13: 100 %, past the grace
            [call(f"2026-04-01T00:0{i}:00.000Z") for i in range(9)],  # April: 80 % and band again
        ]
        seen = []
        for batch in batches:
            r = api.post(f"/organizations/{org}/measurements", json={"measurements": batch}, headers=AUTH)
            assert r.status_code == 200, r.text
            seen.append([(n["type"], n["threshold"], n["period"]["start"][:7]) for n in notified(api, org)])
        assert seen[0] == []
        assert sorted(seen[1]) == [("band_entered", "4", "2026-03"), ("cap_threshold", "80", "2026-03")]
        assert seen[2] == seen[1]
        assert sorted(seen[3]) == sorted([*seen[1], ("cap_threshold", "100", "2026-03")])
        assert sorted(seen[4][3:]) == [("band_entered", "4", "2026-04"), ("cap_threshold", "80", "2026-04")]
        full = next(n for n in notified(api, org) if n["threshold"] == "100")
        assert full["data"] == {
            "cap": "10",
            "percent": "100",
            "level": "10",
            "usage": "13",
            "mode": "hard",
            "grace_percent": "5",
            "limit": "10.5",
            "exhausted": True,
            "plan": "growth",
        }
        # re-sending everything, and a sweep, record nothing more
        for batch in batches:
            api.post(f"/organizations/{org}/measurements", json={"measurements": batch}, headers=AUTH)
        runtime = api.app.state.signals  # type: ignore[attr-defined]
        assert runtime.thresholds.sweep(org) == 0
        assert len(notified(api, org)) == 5
        # the balances answer names the thresholds notified in the period it answers for
        r = api.get(f"/organizations/{org}/balances", params={"as_of": "2026-03-31"}, headers=AUTH).json()
        assert [(n["account"], n["meter"], n["field"], n["threshold"]) for n in r["notified"]] == [
            ("acme", "api_calls", None, "80"),
            ("acme", "api_calls", None, "100"),
        ]
        assert notified(api, org, account="globex") == []
        assert len(notified(api, org, since="2000-01-01")) == 5 and notified(api, org, since="2999-01-01") == []
    finally:
        wipe(shared_ledger, org)


def test_a_threshold_on_a_field_is_exact(api: TestClient, shared_ledger: Ledger) -> None:
    """80 % of 1000.5 is 800.4: reached at 800.4, not at 800.39999."""
    org = fresh_org()
    try:
        shared_ledger.ingest(org, [dl("2026-03-02T01:00:00.000Z", 800.39999)])
        assert notified(api, org) == []
        shared_ledger.ingest(org, [dl("2026-03-02T02:00:00.000Z", 0.00001)])
        [event] = notified(api, org)
        assert (event["measure"], event["threshold"], event["data"]["level"], event["data"]["usage"]) == (
            "bytes",
            "80",
            "800.4",
            "800.4",
        )
    finally:
        wipe(shared_ledger, org)


def test_without_plans_there_are_no_balances(shared_api: TestClient) -> None:
    r = shared_api.get("/organizations/o/balances", headers=AUTH)
    assert r.status_code == 404 and "started without --plans" in r.json()["message"]
    assert shared_api.get("/organizations/o/notifications", headers=AUTH).json() == {"notifications": []}
    assert not shared_api.app.state.signals.active  # type: ignore[attr-defined]
