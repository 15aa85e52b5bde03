"""Privacy in the agent (docs/privacy.md): the HTTP and OTLP receivers apply the catalog's
rules before they spool, enrich cannot add what the catalog does not let leave, ``meters
validate`` asks WHO fields to say what leaves, and a whole SDK → agent → ledger run leaves
no raw value of a protected field in any file: spool, rejected file, journal, dead
letters, state, ledger database or log."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from fastapi.testclient import TestClient
from pydantic import ValidationError

import meterkit
from meterkit import ConfigError
from meterkit._sinks import SpoolSink
from meterkit_agent.processors.enrich import EnrichConfig, enrich_processor
from meterkit_agent.receivers.http import HttpReceiverConfig, create_receiver_app
from meterkit_agent.receivers.otlp import OtlpReceiverConfig, create_otlp_app
from tests.agent.conftest import cli_cmd, free_port, start_agent, start_ledger, wait_for, write_agent_config
from tests.sdk.helpers import spooled
from tests.sdk.test_privacy import (
    CARD,
    EMAIL,
    IP,
    KEY_1,
    PHONE,
    RAW,
    SECRET_2,
    USER,
    expected_pseudonym,
    leaks,
    period_boundary,
    rotating,
    write_catalog,
)


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    return write_catalog(tmp_path / "catalog")


@pytest.fixture
def receiver_spool(tmp_path: Path) -> Iterator[tuple[SpoolSink, Path]]:
    spool = tmp_path / "receiver-spool"
    sink = SpoolSink(
        spool, "t", max_segment_bytes=1 << 20, max_segment_age_seconds=60, max_spool_bytes=1 << 30, fsync=False
    )
    yield sink, spool
    sink.close()


def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_the_http_receiver_applies_the_rules_before_it_spools(
    catalog_file: Path, receiver_spool: tuple[SpoolSink, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERKIT_PSEUDONYMIZATION_KEY", KEY_1)
    sink, spool = receiver_spool
    client = TestClient(create_receiver_app(HttpReceiverConfig(), sink, meterkit.load_catalog(catalog_file)))
    ts = now_text()
    good = [
        {"uid": "h1", "meter": "logins", "account": "acme", "ts": ts, "who": {"user": USER, "email": EMAIL}},
        {"uid": "h2", "meter": "hidden", "account": "acme", "ts": ts, "other": {"note": IP}, "measure": {"n": 1}},
        {"uid": "h3", "meter": "logins", "account": "acme", "ts": ts, "other": {"note": PHONE}},
    ]
    refused = {"uid": "h4", "meter": "guarded", "account": "acme", "ts": ts, "other": {"note": CARD}}
    r = client.post("/v1/measurements", json={"measurements": [good[0], refused, {"uid": "h5"}]})
    assert r.status_code == 400
    assert [(e["index"], e["reason"]) for e in r.json()["errors"]] == [(1, "pii_detected"), (2, "missing_ts")]
    assert CARD not in r.text
    r = client.post("/v1/measurements", json={"measurements": good})
    assert r.status_code == 200, r.text
    got = {m["uid"]: m for m in spooled(spool)}
    assert got["h1"]["who"] == {"user": expected_pseudonym(USER)}  # email: privacy drop
    assert got["h2"]["other"] == {"note": expected_pseudonym(IP)}
    assert got["h3"]["other"] == {"note": "[redacted:phone]"}
    assert leaks(RAW, spool) == []


def test_the_otlp_receiver_applies_the_rules_before_it_spools(
    catalog_file: Path, receiver_spool: tuple[SpoolSink, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERKIT_PSEUDONYMIZATION_KEY", KEY_1)
    sink, spool = receiver_spool
    client = TestClient(create_otlp_app(OtlpReceiverConfig(), sink, meterkit.load_catalog(catalog_file)))
    nanos = str(int(datetime.now(timezone.utc).timestamp() * 1e9))

    def record(meter: str, **attrs: str) -> dict[str, Any]:
        kvs = [{"key": "meterkit.meter", "value": {"stringValue": meter}}]
        kvs += [{"key": "meterkit.account", "value": {"stringValue": "acme"}}]
        kvs += [{"key": f"meterkit.{k.replace('__', '.')}", "value": {"stringValue": v}} for k, v in attrs.items()]
        kvs += [{"key": "meterkit.measure.n", "value": {"intValue": "1"}}]
        return {"timeUnixNano": nanos, "attributes": kvs}

    body = {
        "resourceLogs": [
            {
                "scopeLogs": [
                    {
                        "logRecords": [
                            record("logins", who__user=USER, who__email=EMAIL),
                            record("guarded", other__note=CARD),
                            record("logins", other__note=PHONE),
                        ]
                    }
                ]
            }
        ]
    }
    r = client.post("/v1/logs", content=orjson.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 200
    answer = r.json()["partialSuccess"]
    assert int(answer["rejectedLogRecords"]) == 1 and "'pii: reject' refuses it" in answer["errorMessage"]
    assert CARD not in answer["errorMessage"]
    written = spooled(spool)
    assert [m.get("who") for m in written] == [{"user": expected_pseudonym(USER)}, None]
    assert written[1]["other"] == {"note": "[redacted:phone]"}
    assert leaks(RAW, spool) == []


def test_a_receiver_whose_catalog_asks_for_pseudonyms_needs_a_key(
    catalog_file: Path, receiver_spool: tuple[SpoolSink, Path]
) -> None:
    sink, _ = receiver_spool
    with pytest.raises(ConfigError, match="METERKIT_PSEUDONYMIZATION_KEY"):
        create_receiver_app(HttpReceiverConfig(), sink, meterkit.load_catalog(catalog_file))


# -- enrich ----------------------------------------------------------------------------------


def test_enrich_refuses_to_add_what_the_catalog_does_not_let_leave(catalog_file: Path) -> None:
    with pytest.raises(ValidationError) as info:
        EnrichConfig.model_validate(
            {"catalog": str(catalog_file), "set": {"other": {"deployment": "eu"}, "who": {"user": "x", "team": "t"}}}
        )
    text = str(info.value)
    assert "other.deployment is declared by no meter" in text and "who.user is privacy" in text
    assert "who.team" not in text  # declared by logins, kept


def test_enrich_adds_a_value_only_to_the_meters_that_declare_it(catalog_file: Path) -> None:
    process = enrich_processor(
        EnrichConfig.model_validate({"catalog": str(catalog_file), "set": {"who": {"team": "t9"}}})
    )
    kept, refused = process([{"meter": "logins", "uid": "a"}, {"meter": "open", "uid": "b"}])
    assert refused == [] and kept[0]["who"] == {"team": "t9"} and "who" not in kept[1]


# -- meters validate ---------------------------------------------------------------------------


def test_meters_validate_warns_about_who_fields_that_say_nothing(tmp_path: Path) -> None:
    catalog = tmp_path / "meters.yaml"
    catalog.write_text(
        "meters:\n  - code: m\n    name: M\n    data_fields:\n"
        "      - {code: user, name: U, category: WHO}\n"
        "      - {code: team, name: T, category: WHO, privacy: keep}\n"
        "      - {code: n, name: N, category: MEASURE}\n"
    )
    done = subprocess.run(cli_cmd("meters", "validate", str(catalog)), capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert "field 'user': a WHO field should say privacy" in done.stderr and "'team'" not in done.stderr
    assert "1 warning(s)" in done.stdout


# -- a whole run ---------------------------------------------------------------------------


def test_no_raw_value_anywhere_after_a_real_run_and_unique_counts_survive_rotation(
    tmp_path: Path, catalog_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK (production mode) and the agent's HTTP receiver both write; the agent
    delivers to a real ledger; an unknown meter is dead-lettered. Key k2 applies from this
    month's first instant: UNIQUE over each month counts each user once."""
    boundary, before = period_boundary()
    monkeypatch.setenv("METERKIT_PSEUDONYMIZATION_KEY", rotating(boundary))
    spool = tmp_path / "spool"
    ledger = start_ledger(tmp_path / "ledger", extra=("--catalog", str(catalog_file)))
    port = free_port()
    config = write_agent_config(
        tmp_path, spool, ledger.url, catalog=catalog_file, extra_receivers=f"  http: {{endpoint: 127.0.0.1:{port}}}"
    )
    client = meterkit.Client(catalog_file, spool, flush_interval_millis=20)
    users = [USER, "bob", "carol"]
    for ts in (before, boundary):
        for user in users * 2:
            client.record("logins", account="acme", measure={"n": 1}, who={"user": user, "email": EMAIL}, ts=ts)
    client.record("logins", account="acme", measure={"n": 1}, other={"note": PHONE})
    client.record("guarded", account="acme", measure={"n": 1}, other={"note": CARD})  # refused in the SDK
    client.record("no_such_meter", account="acme", measure={"n": 1}, other={"note": IP})  # dead-lettered
    assert client.shutdown(5)
    agent = start_agent(tmp_path, config)
    try:
        sent = [{"uid": "via-http", "meter": "logins", "account": "acme", "ts": now_text(), "who": {"user": USER}}]
        wait_for(lambda: _post(port, sent), what="the http receiver")
        wait_for(lambda: ledger.count() == 14, what="delivery to the ledger")
        for start, end, month in (
            (_month_before(boundary), boundary, "last"),
            (boundary, "2100-01-01T00:00:00Z", "this"),
        ):
            data = ledger.get(
                "/organizations/test-org/usage",
                meter="logins",
                account="acme",
                aggregation="UNIQUE",
                field="user",
                **{"from": start, "to": end},
            )["data"]
            assert [row["value"] for row in data] == [3], month  # three users, whichever key
        wait_for(lambda: _dead_letters(tmp_path) == [("no_such_meter", "[redacted:ip]")], what="the dead letter")
        stored = ledger.get("/organizations/test-org/measurements/via-http")
        assert stored["who"] == {"user": expected_pseudonym(USER, "k2", SECRET_2)}  # this month: k2
    finally:
        agent.kill(signal.SIGTERM)
        ledger.proc.kill(signal.SIGTERM)
    assert leaks([*RAW, "bob", "carol"], tmp_path) == []  # spool, agent state, ledger db, logs
    # the search would have found them: the pseudonyms are there, in the same files
    assert leaks([expected_pseudonym("bob")], tmp_path / "ledger") != []


def _post(port: int, measurements: list[dict[str, Any]]) -> bool:
    try:
        r = requests.post(f"http://127.0.0.1:{port}/v1/measurements", json={"measurements": measurements}, timeout=5)
    except requests.RequestException:
        return False
    return r.status_code == 200


def _month_before(boundary: str) -> str:
    first = datetime.fromisoformat(boundary.replace("Z", "+00:00")) - timedelta(days=1)
    return first.replace(day=1).strftime("%Y-%m-%dT00:00:00Z")


def _dead_letters(tmp_path: Path) -> list[tuple[str, str]]:
    path = tmp_path / "agent-state" / "deadletter.db"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT meter, body FROM dead_letters").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return [(meter, orjson.loads(record).get("other", {}).get("note")) for meter, record in rows]
