"""The ledger as a backend: m3ter's ingest shape (the official client works against it),
de-duplication by uid, clear 400s, limits, and usage queries on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from meterkit_agent.ledger import Ingested, Ledger, UsageQuery
from meterkit_agent.ledger.api import create_app
from tests.agent.conftest import TOKEN, LedgerServer, start_ledger, token_file
from tests.agent.ledger.conftest import wipe

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def m(uid: str, account: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"uid": uid, "meter": "downloads", "account": account, "ts": ts, **fields}


SAMPLE = [
    m("u1", "acme", "2026-01-01T10:15:00.000Z", measure={"bytes": 100}, who={"user": "ann"}, where={"region": "eu"}),
    m("u2", "acme", "2026-01-01T10:45:00.000Z", measure={"bytes": 300}, who={"user": "bob"}, where={"region": "eu"}),
    m("u3", "acme", "2026-01-01T11:05:00.000Z", measure={"bytes": 50}, who={"user": "ann"}, where={"region": "us"}),
    m("u4", "acme", "2026-01-02T09:00:00.000Z", measure={"bytes": 1000}, who={"user": "ann"}, where={"region": "us"}),
    m("u5", "globex", "2026-02-01T00:00:00.000Z", measure={"bytes": 7}, who={"user": "cy"}, metadata={"req": "r1"}),
    m("u6", "globex", "2026-02-01T00:00:01.000Z", measure={"bytes": 7}, who={"user": "cy"}, metadata={"req": "r2"}),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    url = f"sqlite:///{tmp_path / 'l.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    ledger = Ledger(url)
    wipe(ledger, "org", "other-org")
    ledger.ingest("org", SAMPLE)
    return ledger


def usage(store: Ledger, **kw: Any) -> list[dict[str, Any]]:
    return store.usage("org", UsageQuery(meter="downloads", **kw))


def test_resending_never_changes_a_total(store: Ledger) -> None:
    assert store.ingest("org", SAMPLE) == Ingested(0, len(SAMPLE))
    assert store.ingest("org", [SAMPLE[0], SAMPLE[0]]) == Ingested(0, 2)
    assert [r["value"] for r in usage(store, target="bytes")] == [1450, 14]
    assert store.count("org") == 6
    assert store.ingest("other-org", SAMPLE[:1]) == Ingested(1, 0)  # uids are per organisation


@pytest.mark.parametrize(
    ("aggregation", "target", "expected"),
    [
        ("SUM", "bytes", {"acme": 1450, "globex": 14}),
        ("MIN", "bytes", {"acme": 50, "globex": 7}),
        ("MAX", "bytes", {"acme": 1000, "globex": 7}),
        ("COUNT", None, {"acme": 4, "globex": 2}),
        ("LATEST", "bytes", {"acme": 1000, "globex": 7}),
        ("MEAN", "bytes", {"acme": Decimal("362.5"), "globex": 7}),
        ("UNIQUE", "user", {"acme": 2, "globex": 1}),
        ("UNIQUE", "req", {"acme": 0, "globex": 2}),
    ],
)
def test_aggregations(store: Ledger, aggregation: str, target: str | None, expected: dict[str, Any]) -> None:
    got = {r["account"]: r["value"] for r in usage(store, aggregation=aggregation, target=target)}
    assert {k: v for k, v in got.items()} == {k: v for k, v in expected.items() if v or k in got}


def test_buckets_groups_and_time_range(store: Ledger) -> None:
    hourly = usage(store, account="acme", target="bytes", bucket="hour")
    assert [(r["bucket"], r["value"]) for r in hourly] == [
        ("2026-01-01T10:00:00.000Z", 400),
        ("2026-01-01T11:00:00.000Z", 50),
        ("2026-01-02T09:00:00.000Z", 1000),
    ]
    daily = usage(store, account="acme", target="bytes", bucket="day", group_by=("region",))
    assert [(r["bucket"], r["region"], r["value"]) for r in daily] == [
        ("2026-01-01T00:00:00.000Z", "eu", 400),
        ("2026-01-01T00:00:00.000Z", "us", 50),
        ("2026-01-02T00:00:00.000Z", "us", 1000),
    ]
    monthly = usage(store, target="bytes", bucket="month")
    assert [(r["account"], r["bucket"], r["value"]) for r in monthly] == [
        ("acme", "2026-01-01T00:00:00.000Z", 1450),
        ("globex", "2026-02-01T00:00:00.000Z", 14),
    ]
    ranged = usage(store, target="bytes", start="2026-01-01T11:00:00Z", end="2026-01-02T00:00:00Z")
    assert [(r["account"], r["value"]) for r in ranged] == [("acme", 50)]


@pytest.mark.parametrize(
    ("per_unit", "rounding", "expected"),
    [
        (1, "NONE", 1450),
        (1000, "NONE", Decimal("1.45")),
        (1000, "UP", 2),
        (1000, "DOWN", 1),
        (1000, "NEAREST", 1),
        (100, "NEAREST", 15),
    ],
)
def test_quantity_per_unit_and_rounding(store: Ledger, per_unit: int, rounding: str, expected: Decimal) -> None:
    [row] = usage(store, account="acme", target="bytes", quantity_per_unit=per_unit, rounding=rounding)
    assert row["value"] == expected


def test_bad_queries_are_refused(store: Ledger) -> None:
    with pytest.raises(ValueError, match="aggregation"):
        usage(store, aggregation="MEDIAN", target="bytes")
    with pytest.raises(ValueError, match="needs a target"):
        usage(store, aggregation="SUM")
    with pytest.raises(ValueError, match="quantityPerUnit"):
        usage(store, target="bytes", quantity_per_unit=0)


# -- the HTTP API ---------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Ledger(f"sqlite:///{tmp_path / 'api.db'}"), token=TOKEN))


def post(api: TestClient, measurements: list[Any], **kw: Any) -> Any:
    return api.post("/organizations/o/measurements", json={"measurements": measurements}, headers=AUTH, **kw)


def test_ingest_answers_like_m3ter_and_names_bad_records(api: TestClient) -> None:
    r = post(api, SAMPLE[:2])
    assert r.status_code == 200 and r.json()["result"] == "accepted"
    r = post(api, [SAMPLE[2], {**SAMPLE[3], "measure": {"bytes": "lots"}}, {**SAMPLE[4], "account": ""}, {"uid": "x"}])
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert [(e["index"], e["uid"], e["reason"]) for e in errors] == [
        (1, "u4", "wrong_type"),
        (2, "u5", "missing_account"),
        (3, "x", "missing_ts"),
    ]
    assert errors[0]["field"] == "measure.bytes"
    assert api.get("/organizations/o/uids", headers=AUTH).json()["uids"] == [
        "u1",
        "u2",
    ]  # nothing of the bad request was stored


def test_auth_and_limits(api: TestClient) -> None:
    assert api.post("/organizations/o/measurements", json={"measurements": []}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert api.post("/organizations/o/measurements", json={"measurements": []}, headers=wrong).status_code == 401
    many = [m(f"n{i}", "a", "2026-01-01T00:00:00Z", measure={"bytes": 1}) for i in range(1001)]
    r = post(api, many)
    assert r.status_code == 400 and "at most 1000" in r.json()["message"]
    big = [m(f"b{i}", "a", "2026-01-01T00:00:00Z", metadata={"pad": "x" * 250, "pad2": "y" * 250}) for i in range(1000)]
    assert len(orjson.dumps({"measurements": big})) > 512_000
    assert post(api, big).status_code == 413
    r = api.post("/organizations/o/measurements", content=b"{nope", headers=AUTH)
    assert r.status_code == 400 and "not JSON" in r.json()["message"]


def test_gzip_bodies_are_accepted_and_bombs_refused(api: TestClient) -> None:
    body = gzip.compress(orjson.dumps({"measurements": SAMPLE}))
    r = api.post("/organizations/o/measurements", content=body, headers={**AUTH, "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 6
    bomb = gzip.compress(b'{"measurements": [' + b" " * 5_000_000 + b"]}")
    r = api.post("/organizations/o/measurements", content=bomb, headers={**AUTH, "Content-Encoding": "gzip"})
    assert r.status_code == 413


def test_usage_endpoint_and_openapi(api: TestClient) -> None:
    post(api, SAMPLE)
    r = api.get(
        "/organizations/o/usage",
        params={"meter": "downloads", "field": "bytes", "groupBy": "region", "account": "acme"},
        headers=AUTH,
    )
    assert r.json() == {
        "data": [
            {"meter": "downloads", "account": "acme", "region": "eu", "value": 400},
            {"meter": "downloads", "account": "acme", "region": "us", "value": 1050},
        ]
    }
    assert (
        api.get(
            "/organizations/o/usage", params={"meter": "downloads", "aggregation": "nope"}, headers=AUTH
        ).status_code
        == 400
    )
    assert "/organizations/{org_id}/measurements" in api.get("/openapi.json", headers=AUTH).json()["paths"]


# -- real processes -------------------------------------------------------------------------


def test_the_official_m3ter_client_submits_to_the_ledger(ledger: LedgerServer) -> None:
    import m3ter

    client = m3ter.M3ter(base_url=ledger.url, token=TOKEN, org_id="acme-org", api_key="unused", api_secret="unused")
    response = client.usage.submit(
        measurements=[
            {
                "uid": "m3-1",
                "meter": "downloads",
                "account": "acme",
                "ts": "2026-03-01T10:00:00Z",
                "measure": {"bytes": 5},
            },
            {
                "uid": "m3-2",
                "meter": "downloads",
                "account": "acme",
                "ts": "2026-03-01T11:00:00Z",
                "measure": {"bytes": 6},
            },
        ]
    )
    assert response.result == "accepted"
    client.usage.submit(
        measurements=[
            {
                "uid": "m3-1",
                "meter": "downloads",
                "account": "acme",
                "ts": "2026-03-01T10:00:00Z",
                "measure": {"bytes": 5},
            }
        ]
    )
    data = ledger.get("/organizations/acme-org/usage", meter="downloads", field="bytes")["data"]
    assert data == [{"meter": "downloads", "account": "acme", "value": 11}]
    with pytest.raises(m3ter.BadRequestError):
        client.usage.submit(measurements=[{"uid": "m3-3", "meter": "downloads", "account": "acme", "ts": "not a time"}])


def test_ledger_serves_postgresql(tmp_path: Path, postgres_url: str) -> None:
    server = start_ledger(tmp_path, db=postgres_url)
    try:
        import requests

        r = requests.post(
            f"{server.url}/organizations/pg/measurements", json={"measurements": SAMPLE}, headers=AUTH, timeout=30
        )
        assert r.status_code == 200
        assert server.get("/organizations/pg/usage", meter="downloads", field="bytes")["data"][0]["value"] == 1450
    finally:
        server.proc.kill()


def test_client_credentials_exchange_with_the_official_client_and_the_agent(tmp_path: Path) -> None:
    """m3ter's /oauth/token flow against the ledger: the official client, then the agent's exporter."""
    import signal

    import m3ter

    from tests.agent.conftest import start_agent, wait_for, write_agent_config

    secret = str(token_file(tmp_path / "client-secret", "s3cret"))
    server = start_ledger(tmp_path / "ledger", extra=("--client-id", "svc-1", "--client-secret-file", secret))
    try:
        client = m3ter.M3ter(base_url=server.url, api_key="svc-1", api_secret="s3cret", org_id="test-org")
        ok = client.usage.submit(
            measurements=[
                {
                    "uid": "cc-1",
                    "meter": "downloads",
                    "account": "acme",
                    "ts": "2026-03-01T10:00:00Z",
                    "measure": {"bytes": 1},
                }
            ]
        )
        assert ok.result == "accepted"
        wrong = m3ter.M3ter(base_url=server.url, api_key="svc-1", api_secret="nope", org_id="test-org")
        with pytest.raises(m3ter.AuthenticationError):
            wrong.usage.submit(measurements=[])

        config = write_agent_config(tmp_path, tmp_path / "spool", server.url)
        config.write_text(
            config.read_text().replace("token: ${LEDGER_TOKEN}", "client_id: svc-1\n    client_secret: s3cret")
        )
        import meterkit

        producer = meterkit.Client(spool_dir=tmp_path / "spool")
        for i in range(20):
            producer.record("downloads", account="acme", measure={"bytes": i})
        producer.shutdown(5)
        agent = start_agent(tmp_path, config)
        try:
            wait_for(lambda: server.count() == 21, timeout=30, what="delivery with exchanged tokens")
        finally:
            assert agent.kill(signal.SIGTERM) == 0
        assert "s3cret" not in (tmp_path / "agent.log").read_text()  # secrets never in logs
    finally:
        server.proc.kill()
