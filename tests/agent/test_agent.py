"""Delivery guarantees, proven against real processes: the agent and the ledger run as
processes on 127.0.0.1; faults come from a proxy between them, from SIGKILL and from
restarting the ledger. After each: every good measurement is in the ledger exactly once,
every bad one is in the dead-letter store with its reason, nothing else is missing."""

from __future__ import annotations

import logging
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

import meterkit
from meterkit._spool import segments
from tests.agent.conftest import (
    TOKEN,
    FaultProxy,
    LedgerServer,
    cli_cmd,
    spawn_producer,
    start_agent,
    start_ledger,
    wait_for,
    write_agent_config,
)
from tests.conftest import CATALOG


def produce(spool: Path, n: int, bad_every: int = 0, account: str = "acme") -> int:
    """Record n measurements (every ``bad_every``-th one for a meter the ledger's catalog
    does not know, so only the backend can refuse it). Returns how many are good."""
    client = meterkit.Client(spool_dir=spool, flush_interval_millis=20)
    good = 0
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            client.record("unknown_meter", account=account, measure={"n": 1})
        else:
            client.record("data_downloaded", account=account, measure={"bytes": i}, who={"user": f"u{i % 5}"})
            good += 1
    assert client.shutdown(30)
    return good


def total(ledger: LedgerServer, account: str = "acme") -> tuple[int, int]:
    """(count, sum of bytes) in the ledger for an account."""
    rows = ledger.get("/organizations/test-org/usage", meter="data_downloaded", account=account, field="bytes")["data"]
    count = ledger.get("/organizations/test-org/usage", meter="data_downloaded", account=account, aggregation="COUNT")[
        "data"
    ]
    return (count[0]["value"] if count else 0), (int(rows[0]["value"]) if rows else 0)


def dead_letters(tmp_path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(tmp_path / "agent-state" / "deadletter.db")
    try:
        return [(r[0], r[1]) for r in db.execute("SELECT reason, meter FROM dead_letters")]
    finally:
        db.close()


def ledger_with_catalog(tmp_path: Path) -> LedgerServer:
    return start_ledger(tmp_path / "ledger", extra=("--catalog", str(CATALOG)))


def test_delivers_everything_once_through_503_429_timeouts_resets_and_bad_records(tmp_path: Path) -> None:
    ledger = ledger_with_catalog(tmp_path)
    proxy = FaultProxy(ledger.url)
    spool = tmp_path / "spool"
    try:
        proxy.plan = [503, 503, 503, 429, ("delay", 1.5), "reset", 503, 500, "reset", 429]
        good = produce(spool, 3000, bad_every=250)
        agent = start_agent(tmp_path, write_agent_config(tmp_path, spool, proxy.url))
        wait_for(lambda: total(ledger)[0] >= good, timeout=60, what="delivery")
        wait_for(lambda: len(dead_letters(tmp_path)) == 12, timeout=30, what="dead letters")
        assert total(ledger) == (good, sum(i for i in range(3000) if i % 250 != 249))
        assert set(dead_letters(tmp_path)) == {("rejected_by_backend:unknown_meter", "unknown_meter")}
        assert not proxy.plan  # every fault was served
        keys = [h.get("idempotency-key") for h in proxy.seen]
        assert all(keys) and len(set(keys)) < len(keys)  # retries repeated their keys
        wait_for(lambda: not segments(spool), timeout=20, what="segment retirement")
        assert agent.kill(signal.SIGTERM) == 0
    finally:
        proxy.close()
        ledger.proc.kill()


def test_sigkill_repeatedly_mid_stream_loses_and_doubles_nothing(tmp_path: Path) -> None:
    ledger = start_ledger(tmp_path / "ledger")
    spool = tmp_path / "spool"
    config = write_agent_config(tmp_path, spool, ledger.url)
    # A producer process writes while the agent is killed again and again.
    producer = spawn_producer(spool, 20_000, pause_every=1000)
    rng = random.Random(3)
    try:
        for _ in range(6):
            agent = start_agent(tmp_path, config)
            time.sleep(rng.uniform(0.3, 1.2))
            agent.kill(signal.SIGKILL)
        assert producer.wait(120) == 0
        agent = start_agent(tmp_path, config)
        expected = (20_000, sum(range(20_000)))
        wait_for(lambda: total(ledger) == expected, timeout=90, what="all 20,000 measurements")
        wait_for(lambda: not segments(spool), timeout=30, what="segment retirement")
        assert total(ledger) == expected  # exactly once: count and sum both match
        assert agent.kill(signal.SIGTERM) == 0
    finally:
        producer.kill()
        ledger.proc.kill()


def test_ledger_restart_mid_stream(tmp_path: Path) -> None:
    ledger = start_ledger(tmp_path / "ledger")
    spool = tmp_path / "spool"
    agent = start_agent(tmp_path, write_agent_config(tmp_path, spool, ledger.url))
    try:
        produce(spool, 2000)
        wait_for(lambda: total(ledger)[0] > 0, timeout=30, what="first delivery")
        ledger.restart()
        produce(spool, 2000)
        ledger.proc.kill()  # down while measurements keep arriving
        produce(spool, 1000)
        time.sleep(1.0)  # the agent is now retrying against a dead port
        ledger.restart()
        wait_for(lambda: total(ledger)[0] == 5000, timeout=60, what="delivery after restarts")
        assert total(ledger) == (5000, 2 * sum(range(2000)) + sum(range(1000)))
    finally:
        agent.kill(signal.SIGTERM)
        ledger.proc.kill()


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    ledger = start_ledger(tmp_path / "ledger")
    spool = tmp_path / "spool"
    produce(spool, 5000)
    agent = start_agent(tmp_path, write_agent_config(tmp_path, spool, ledger.url))
    try:
        wait_for(lambda: total(ledger)[0] > 0, timeout=30, what="delivery to begin")
        started = time.monotonic()
        assert agent.kill(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
        # whatever was not delivered is still in the spool and goes out on the next start
        agent = start_agent(tmp_path, write_agent_config(tmp_path, spool, ledger.url))
        wait_for(lambda: total(ledger)[0] == 5000, timeout=30, what="the rest")
        assert agent.kill(signal.SIGTERM) == 0
    finally:
        ledger.proc.kill()


def test_http_receiver_accepts_json_and_ndjson_and_names_bad_records(tmp_path: Path) -> None:
    from tests.agent.conftest import free_port

    ledger = start_ledger(tmp_path / "ledger")
    port = free_port()
    receiver = f"  http: {{endpoint: '127.0.0.1:{port}', token: receiver-secret}}"
    agent = start_agent(
        tmp_path, write_agent_config(tmp_path, tmp_path / "spool", ledger.url, CATALOG, extra_receivers=receiver)
    )
    url = f"http://127.0.0.1:{port}/v1/measurements"
    auth = {"Authorization": "Bearer receiver-secret"}
    try:
        wait_for(lambda: _up(url.replace("/v1/measurements", "/health")), what="receiver")
        ok = [
            {
                "uid": f"h{i}",
                "meter": "data_downloaded",
                "account": "acme",
                "ts": "2026-01-01T00:00:00Z",
                "measure": {"bytes": 10},
            }
            for i in range(3)
        ]
        assert requests.post(url, json={"measurements": ok}, headers=auth, timeout=10).json() == {"accepted": 3}
        nd = "\n".join(__import__("json").dumps({**ok[0], "uid": f"n{i}"}) for i in range(2))
        r = requests.post(url, data=nd, headers={**auth, "Content-Type": "application/x-ndjson"}, timeout=10)
        assert r.json() == {"accepted": 2}
        bad = [ok[0], {**ok[1], "measure": {"nope": 1}}, {**ok[2], "account": ""}]
        r = requests.post(url, json=bad, headers=auth, timeout=10)
        assert r.status_code == 400
        assert [(e["index"], e["reason"]) for e in r.json()["errors"]] == [(1, "unknown_field"), (2, "missing_account")]
        assert requests.post(url, json=ok, timeout=10).status_code == 401
        wait_for(lambda: total(ledger)[0] == 5, timeout=30, what="HTTP-received delivery")
        assert total(ledger) == (5, 50)
    finally:
        agent.kill(signal.SIGTERM)
        ledger.proc.kill()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_embedded_default_agent_status_and_validate_config(tmp_path: Path) -> None:
    """No config file: spool in, local SQLite ledger out; then `agent status`."""
    spool, state, db = tmp_path / "spool", tmp_path / "state", tmp_path / "embedded.db"
    produce(spool, 500)
    from tests.agent.conftest import Proc

    agent = Proc(
        cli_cmd(
            "agent",
            "run",
            "--spool-dir",
            str(spool),
            "--catalog",
            str(CATALOG),
            "--state-dir",
            str(state),
            "--ledger-db",
            f"sqlite:///{db}",
        ),
        tmp_path / "agent.log",
    ).start()
    try:
        from meterkit_agent.ledger import Ledger

        ledger = Ledger(f"sqlite:///{db}")
        wait_for(lambda: ledger.count("default") == 500, timeout=30, what="embedded delivery")
        row = next(iter(ledger.rows("default", "data_downloaded")))
        assert "mib" in row["measure"]  # the derived field was computed (catalog given)
        wait_for(lambda: b"meterkit.agent.delivered" in _read(state / "status.json"), what="status file")
        status = subprocess.run(
            cli_cmd("agent", "status", "--state-dir", str(state)), capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0 and "delivered" in status.stdout
    finally:
        assert agent.kill(signal.SIGTERM) == 0

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "receivers: {spool: {}, kafka: {}}\n"
        "exporters: {m3ter: {base_url: x}}\n"
        "service: {pipelines: {a: {receivers: [spool], exporters: [m3ter]}}}\n"
    )
    done = subprocess.run(cli_cmd("agent", "validate-config", str(bad)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "receivers.kafka: unknown type 'kafka'" in done.stderr
    assert "exporters.m3ter.org_id: Field required" in done.stderr
    secret = tmp_path / "secret.yaml"
    secret.write_text("exporters: {m3ter: {org_id: o, token: '${NOT_SET_ANYWHERE}'}}\n")
    done = subprocess.run(cli_cmd("agent", "validate-config", str(secret)), capture_output=True, text=True, timeout=60)
    assert "environment variable NOT_SET_ANYWHERE is not set" in done.stderr
    assert TOKEN not in done.stderr


def test_many_agents_deliver_into_one_postgresql_ledger(tmp_path: Path, postgres_url: str) -> None:
    """Several hosts, each with its own spool and agent, one PostgreSQL-backed ledger."""
    reset_org(postgres_url)
    ledger = start_ledger(tmp_path / "ledger", db=postgres_url)
    agents = []
    try:
        for host in range(3):
            work = tmp_path / f"host{host}"
            work.mkdir()
            produce(work / "spool", 3000, account=f"acct{host}")
            agents.append(start_agent(work, write_agent_config(work, work / "spool", ledger.url)))
        wait_for(lambda: all(total(ledger, f"acct{h}")[0] == 3000 for h in range(3)), timeout=90, what="three agents")
        for h in range(3):
            assert total(ledger, f"acct{h}") == (3000, sum(range(3000)))
    finally:
        for agent in agents:
            agent.kill(signal.SIGTERM)
        ledger.proc.kill()


def reset_org(url: str) -> None:
    """Empty the test organisation in the shared PostgreSQL ledger: the server lives for the session."""
    from meterkit_agent.ledger import Ledger
    from tests.agent.ledger.conftest import wipe

    ledger = Ledger(url)
    try:
        wipe(ledger, "test-org")
    finally:
        ledger.close()


def test_frames_validated_by_their_writer_under_the_same_catalog_are_not_validated_again(tmp_path: Path) -> None:
    """An SDK that validates (strict mode) names, in each segment's header, the rules and
    catalog it validated against; the agent skips a second check only when both match its
    own. (In production mode the SDK validates nothing and the agent checks every record.)"""
    from meterkit._spool import KIND_BATCH, KIND_MEASUREMENT, read_segment, segments
    from meterkit_agent.agent import Agent
    from meterkit_agent.config import simple_config

    spool = tmp_path / "spool"
    client = meterkit.Client(CATALOG, spool, mode="strict")
    client.record("data_downloaded", account="acme", measure={"bytes": 1})
    client.shutdown(5)
    [segment] = segments(spool)
    header = read_segment(segment).header
    assert header is not None and header["validated"] == f"rules2:{meterkit.load_catalog(CATALOG).digest}"

    same = Agent(
        simple_config(
            spool_dir=spool, catalog=CATALOG, state_dir=tmp_path / "a", ledger_db=f"sqlite:///{tmp_path / 'l.db'}"
        )
    )
    other = Agent(simple_config(spool_dir=spool, state_dir=tmp_path / "b", ledger_db=f"sqlite:///{tmp_path / 'l.db'}"))
    try:
        for agent, trusted in ((same, True), (other, False)):
            received: list[Any] = []
            receiver = agent.receivers[0]

            def keep(env: Any, sink: list[Any] = received) -> bool:
                sink.append(env)
                return True

            receiver.emit = keep
            receiver.poll()
            prepared = agent.prepare([e for e in received if e.kind in (KIND_MEASUREMENT, KIND_BATCH)])
            assert prepared.trusted == [trusted]
            assert [m["meter"] for m in prepared.records] == ["data_downloaded"]
    finally:
        for agent in (same, other):
            agent.dead_letters.close()
            agent.metrics.shutdown()


def test_segments_left_in_the_old_shared_default_spool_are_named_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An SDK from before per-project state spooled to one user-wide directory; an agent
    that reads only the new one says what waits there instead of leaving it undelivered."""
    from meterkit_agent.agent import Agent
    from meterkit_agent.config import simple_config

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))
    old = tmp_path / "state-home" / "meterkit" / "spool"
    produce(old, 3)
    spool = tmp_path / "spool"
    agent = Agent(simple_config(spool_dir=spool, state_dir=tmp_path / "a", ledger_db=f"sqlite:///{tmp_path / 'l.db'}"))
    with caplog.at_level(logging.WARNING, logger="meterkit.agent"):
        agent.start()
        agent.stop(5)
    assert f"1 segment(s) wait in {old}" in caplog.text

    caplog.clear()
    reads_it = Agent(simple_config(spool_dir=old, state_dir=tmp_path / "b", ledger_db=f"sqlite:///{tmp_path / 'l.db'}"))
    with caplog.at_level(logging.WARNING, logger="meterkit.agent"):
        reads_it.start()
        reads_it.stop(5)
    assert "wait in" not in caplog.text
