"""One bad record costs only itself; a wrong URL or credential pauses delivery and loses
nothing. Proven on the pipeline's parts and against real processes: an SDK writing a
spool, the agent and the ledger on 127.0.0.1, a proxy answering 401 and 404."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

import meterkit
from meterkit._spool import KIND_CONTROL, KIND_MEASUREMENT, SegmentWriter, encode_frame
from meterkit_agent.component import Rejected
from meterkit_agent.pipeline.control import control_problem
from meterkit_agent.pipeline.prepare import Preparer
from meterkit_agent.pipeline.telemetry import AgentMetrics
from meterkit_agent.processors.derive import DeriveConfig, derive_processor
from meterkit_agent.receivers.spool import Envelope
from tests.agent.conftest import (
    POISON_CATALOG,
    FaultProxy,
    LedgerServer,
    cli_cmd,
    start_agent,
    start_ledger,
    wait_for,
    write_agent_config,
)


def envelope(payload: Any, kind: int = KIND_MEASUREMENT, end: int = 1) -> Envelope:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return Envelope("spool/seg-1.mks", "1@host", None, end, kind, data, 0)


def job(uid: str, n: int) -> dict[str, Any]:
    return {"uid": uid, "meter": "jobs", "account": "acme", "ts": "2026-11-01T10:00:00.000Z", "measure": {"n": n}}


@pytest.fixture
def metrics(tmp_path: Path) -> Any:
    m = AgentMetrics(tmp_path, lambda: 0)
    yield m
    m.shutdown()


def test_each_kind_of_poison_is_set_aside_alone_with_its_stage(tmp_path: Path, metrics: AgentMetrics) -> None:
    (tmp_path / "meters.yaml").write_text(POISON_CATALOG)
    derive = derive_processor(DeriveConfig(catalog=tmp_path / "meters.yaml"))

    def fails_on_seven(batch: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Rejected]]:
        if any(m["uid"] == "7" for m in batch):
            raise RuntimeError("a processor bug that only one record triggers")
        return batch, []

    batch = [envelope(job(str(i), 1)) for i in range(10)]
    batch[3] = envelope(job("3", 5))  # 5^30 is past 64 bits
    batch[4] = envelope(job("4", 10**9))  # 1e9 * 1e300 is infinite
    batch.append(envelope(b"{not json", end=20))
    batch.append(envelope({"type": "losses", "entries": [{"reason": "x", "meter": "m", "count": "two"}]}, KIND_CONTROL))
    batch.append(envelope({"type": "tally", "entries": []}, KIND_CONTROL, end=30))

    p = Preparer([("derive", derive), ("flaky", fails_on_seven)], metrics)(batch)

    assert sorted(m["uid"] for m in p.records) == ["0", "1", "2", "5", "6", "8", "9"]
    assert all(m["measure"] == {"n": 1, "big": 1, "huge": 1e300} for m in p.records)
    assert {(r.measurement["uid"], r.reason, r.stage) for r in p.rejected} == {
        ("3", "invalid:derived_out_of_range", "derive"),
        ("4", "invalid:derived_out_of_range", "derive"),
        ("7", "flaky_failed:RuntimeError", "flaky"),
    }
    assert "jobs.big" in next(r.detail for r in p.rejected if r.measurement["uid"] == "3")
    assert [(reason, stage) for _, reason, _, stage in p.broken] == [
        ("invalid:not_json", "parse"),
        ("invalid:control_record", "control"),
    ]
    assert "count" in p.broken[1][2]
    assert [e["type"] for e in p.journal] == ["sdk_tally"]  # the good control record is believed
    assert p.positions == {"spool/seg-1.mks": 30}  # every frame is accounted for, none skipped


def test_derived_values_are_kept_exact_when_in_range(tmp_path: Path) -> None:
    (tmp_path / "meters.yaml").write_text(POISON_CATALOG)
    kept, rejected = derive_processor(DeriveConfig(catalog=tmp_path / "meters.yaml"))([job("1", 4)])
    assert rejected == [] and kept[0]["measure"] == {"n": 4, "big": 4**30, "huge": 4e300}


def test_an_unserialisable_record_is_set_aside_alone(metrics: AgentMetrics) -> None:
    class Odd:
        pass

    def enrich_badly(batch: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Rejected]]:
        batch[1]["other"] = {"thing": Odd()}
        batch[2]["measure"] = {"n": 2**64}
        return batch, []

    p = Preparer([("enrich", enrich_badly)], metrics)([envelope(job(str(i), 1)) for i in range(4)])
    assert [m["uid"] for m in p.records] == ["0", "3"]
    assert {(r.measurement["uid"], r.reason, r.stage) for r in p.rejected} == {
        ("1", "invalid:unserialisable", "serialise"),
        ("2", "invalid:unserialisable", "serialise"),
    }


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"type": "tally", "entries": [{"meter": "m", "account": "a", "hour": "h", "count": 1.5}]}, "count"),
        ({"type": "tally", "entries": "all of them"}, "entries"),
        ({"type": "losses", "entries": [{"reason": 3, "meter": "m", "count": 1}]}, "reason"),
        ({"type": "what"}, "type"),
        (["not", "a", "mapping"], "dictionary"),
    ],
)
def test_malformed_control_records_are_named(body: Any, named: str) -> None:
    problem = control_problem(body)
    assert problem is not None and named in problem


# -- real processes -----------------------------------------------------------------------


def usage(ledger: LedgerServer, aggregation: str, field: str | None = None) -> Any:
    params = {"meter": "jobs", "aggregation": aggregation, **({"field": field} if field else {})}
    data = ledger.get("/organizations/test-org/usage", **params)["data"]
    return data[0]["value"] if data else 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=60)


def test_poison_in_a_live_spool_costs_only_itself(tmp_path: Path) -> None:
    catalog = tmp_path / "meters.yaml"
    catalog.write_text(POISON_CATALOG)
    spool = tmp_path / "spool"
    ledger = start_ledger(tmp_path / "ledger", extra=("--catalog", str(catalog)))
    client = meterkit.Client(catalog, spool, flush_interval_millis=20)
    for i in range(300):
        client.record("jobs", account="acme", measure={"n": 1 + i % 3})
        if i in (100, 200):
            client.record("jobs", account="acme", measure={"n": 7})  # 7 ^ 30: past 64 bits
        if i == 150:
            client.record("jobs", account="acme", measure={"n": 3 * 10**8})  # n * 1e300: infinite
    assert client.shutdown(30)
    # A dead writer's segment with a control record of the wrong type between good frames.
    writer = SegmentWriter(spool, "raw0", fsync=True)
    frames = [
        encode_frame(KIND_MEASUREMENT, orjson.dumps(job("raw-1", 1))),
        encode_frame(KIND_CONTROL, orjson.dumps({"type": "losses", "entries": [{"count": "many"}]})),
        encode_frame(KIND_MEASUREMENT, b"{truncated"),
        encode_frame(KIND_MEASUREMENT, orjson.dumps(job("raw-2", 2))),
    ]
    writer.write(b"".join(frames), len(frames))
    writer.seal()

    agent = start_agent(tmp_path, write_agent_config(tmp_path, spool, ledger.url, catalog, derive=True))
    try:
        wait_for(lambda: usage(ledger, "COUNT") == 302, timeout=60, what="every good measurement")
        state = str(tmp_path / "agent-state")
        wait_for(lambda: "isolated" in cli("agent", "status", "--state-dir", state).stdout, what="status")
        status = cli("agent", "status", "--state-dir", state).stdout
        assert "invalid:derived_out_of_range at derive" in status
        assert "invalid:control_record at control" in status and "invalid:not_json at parse" in status
        listing = cli("dlq", "list", "--state-dir", state).stdout
        assert listing.count("invalid:derived_out_of_range") == 3
        assert listing.count("invalid:control_record") == 1 and listing.count("invalid:not_json") == 1
        # exact: the 300 SDK records sum to 100 * (1 + 2 + 3), the raw ones to 3
        assert usage(ledger, "SUM", "n") == 603
        assert agent.alive()
    finally:
        agent.kill(15)
    log = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in log and "dead-lettered" in log
    # A restart delivers nothing twice and finds nothing left behind.
    agent = start_agent(tmp_path, write_agent_config(tmp_path, spool, ledger.url, catalog, derive=True))
    try:
        assert usage(ledger, "COUNT") == 302
    finally:
        agent.kill(15)
        ledger.proc.kill(15)


@pytest.mark.parametrize("status", [401, 404])
def test_a_wrong_credential_or_url_pauses_delivery_and_loses_nothing(tmp_path: Path, status: int) -> None:
    catalog = tmp_path / "meters.yaml"
    catalog.write_text(POISON_CATALOG)
    spool = tmp_path / "spool"
    ledger = start_ledger(tmp_path / "ledger", extra=("--catalog", str(catalog)))
    proxy = FaultProxy(ledger.url)
    proxy.plan = [status] * 14  # about five seconds of a misconfigured destination
    client = meterkit.Client(catalog, spool, flush_interval_millis=20)
    for _ in range(200):
        client.record("jobs", account="acme", measure={"n": 2})
    assert client.shutdown(30)
    agent = start_agent(tmp_path, write_agent_config(tmp_path, spool, proxy.url, catalog, derive=True))
    state = str(tmp_path / "agent-state")
    try:
        wait_for(
            lambda: f"answered HTTP {status}" in cli("agent", "status", "--state-dir", state).stdout,
            timeout=30,
            what="status to show the pause",
        )
        assert "PAUSED" in cli("agent", "status", "--state-dir", state).stdout
        wait_for(lambda: usage(ledger, "COUNT") == 200, timeout=60, what="delivery once fixed")
        assert usage(ledger, "SUM", "n") == 400
        assert cli("dlq", "list", "--state-dir", state).stdout.strip() == "no dead letters"
        wait_for(lambda: "PAUSED" not in cli("agent", "status", "--state-dir", state).stdout, what="resume")
    finally:
        agent.kill(15)
        proxy.close()
        ledger.proc.kill(15)
    log = (tmp_path / "agent.log").read_text()
    assert log.count("is PAUSED") == 1 and f"HTTP {status}" in log  # one ERROR per episode
    assert "resumed" in log
