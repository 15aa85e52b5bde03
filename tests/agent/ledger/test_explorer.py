"""m3ter's usage query, asked by the official m3ter client of a ledger process."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import requests

from tests.agent.conftest import TOKEN, LedgerServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _store(ledger: LedgerServer, org: str, measurements: list[dict[str, Any]]) -> None:
    r = requests.post(
        f"{ledger.url}/organizations/{org}/measurements", json={"measurements": measurements}, headers=AUTH, timeout=30
    )
    assert r.status_code == 200, r.text


def _client(ledger: LedgerServer, org: str) -> Any:
    import m3ter

    return m3ter.M3ter(base_url=ledger.url, token=TOKEN, org_id=org, api_key="unused", api_secret="unused")


SAMPLE = [
    {"uid": "q1", "meter": "api_calls", "account": "acme", "ts": "2026-03-01T10:00:00Z", "measure": {"calls": 5}},
    {"uid": "q2", "meter": "api_calls", "account": "acme", "ts": "2026-03-02T11:00:00Z", "measure": {"calls": 0.1}},
    {"uid": "q3", "meter": "api_calls", "account": "globex", "ts": "2026-03-01T12:00:00Z", "measure": {"calls": 7}},
    {"uid": "q4", "meter": "api_calls", "account": "acme", "ts": "2026-04-01T00:00:00Z", "measure": {"calls": 100}},
]


def test_the_official_client_reads_aggregated_usage(ledger: LedgerServer) -> None:
    _store(ledger, "explore", SAMPLE)
    client = _client(ledger, "explore")
    answer = client.usage.query(
        aggregations=[{"meter_id": "api_calls", "field_code": "calls", "field_type": "MEASURE", "function": "SUM"}],
        start_date="2026-03-01T00:00:00Z",
        end_date="2026-04-01T00:00:00Z",
    )
    values = {item["accountId"]: Decimal(str(item["value"])) for item in answer.data}
    assert values == {"acme": Decimal("5.1"), "globex": Decimal(7)}
    assert answer.has_more_data is False
    assert {item["function"] for item in answer.data} == {"SUM"}

    by_day = client.usage.query(
        account_ids=["acme"],
        aggregations=[{"meter_id": "api_calls", "field_code": "calls", "field_type": "MEASURE", "function": "COUNT"}],
        groups=[{"group_type": "TIME", "frequency": "DAY"}],
        start_date="2026-03-01T00:00:00Z",
        end_date="2026-04-01T00:00:00Z",
    )
    assert sorted((item["timeGroup"], item["value"]) for item in by_day.data) == [
        ("2026-03-01T00:00:00.000Z", 1),
        ("2026-03-02T00:00:00.000Z", 1),
    ]


def test_without_aggregations_the_items_are_the_measurements_newest_first(ledger: LedgerServer) -> None:
    _store(ledger, "raw", SAMPLE)
    answer = _client(ledger, "raw").usage.query(meter_ids=["api_calls"], account_ids=["acme"], limit=2)
    assert [item["uid"] for item in answer.data] == ["q4", "q2"]
    assert answer.has_more_data is True


def test_what_the_ledger_cannot_answer_is_named(ledger: LedgerServer) -> None:
    import m3ter

    client = _client(ledger, "refused")
    with pytest.raises(m3ter.BadRequestError) as caught:
        client.usage.query(
            aggregations=[{"meter_id": "api_calls", "field_code": "calls", "field_type": "MEASURE", "function": "SUM"}],
            dimension_filters=[{"meter_id": "api_calls", "field_code": "region", "values": ["eu"]}],
            groups=[{"group_type": "TIME", "frequency": "WEEK"}],
        )
    message = str(caught.value)
    assert "dimensionFilters" in message and "WEEK" in message
