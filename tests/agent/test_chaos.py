"""Everything at once, against real processes: the agent SIGKILLed twice, poison records in
the spool, the backend answering 401 for a while, and the spool's disk full. At the end the
ledger holds exactly what was recorded less what the SDK counted as lost, to the unit;
every poison record is in the dead-letter store with its reason; and reconciliation sees
the losses."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import meterkit
from meterkit._spool import KIND_CONTROL, KIND_MEASUREMENT, SegmentWriter, encode_frame
from tests.agent.conftest import (
    POISON_CATALOG,
    FaultProxy,
    LedgerServer,
    Proc,
    cli_cmd,
    start_agent,
    start_ledger,
    token_file,
    wait_for,
    write_agent_config,
)
from tests.conftest import small_tmpfs

PERIOD = ("--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs for the spool: the disk the SDK fills."""
    with small_tmpfs(tmp_path / "disk", "2m", "tests/sdk/test_full_disk.py simulates a full disk instead") as mount:
        yield mount


def in_ledger(ledger: LedgerServer, account: str) -> tuple[int, int]:
    """(count, exact sum of n) stored for an account."""

    def value(aggregation: str, **extra: str) -> int:
        params = {"meter": "jobs", "account": account, "aggregation": aggregation, **extra}
        data = ledger.get("/organizations/test-org/usage", **params)["data"]
        return int(data[0]["value"]) if data else 0

    return value("COUNT"), value("SUM", field="n")


def record(spool: Path, account: str, values: list[int], catalog: Path) -> dict[str, Any]:
    """Record with a real SDK client; its stats when it has shut down."""
    client = meterkit.Client(catalog, spool, flush_interval_millis=20, queue_full_timeout_millis=0)
    for n in values:
        client.record("jobs", account=account, measure={"n": n})
    client.shutdown(10)
    return client.stats()


def dead_letters(state: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(state / "deadletter.db")
    try:
        return sorted((r[0], r[1]) for r in db.execute("SELECT stage, reason FROM dead_letters"))
    finally:
        db.close()


def test_sigkills_poison_401_and_a_full_disk_together(tmp_path: Path, small_disk: Path) -> None:
    catalog = tmp_path / "meters.yaml"
    catalog.write_text(POISON_CATALOG)
    spool = small_disk / "spool"
    state = tmp_path / "agent-state"
    ledger = start_ledger(tmp_path / "ledger", extra=("--catalog", str(catalog)))
    proxy = FaultProxy(ledger.url)
    proxy.plan = [401] * 100_000  # a wrong token, until "fixed" below
    config = write_agent_config(tmp_path, spool, proxy.url, catalog, derive=True)
    agent: Proc | None = start_agent(tmp_path, config)
    try:
        # 1. While delivery is paused: steady usage, then poison.
        steady = [1 + i % 4 for i in range(2_000)]
        assert record(spool, "steady", steady, catalog)["lost"] == {}
        poison = record(spool, "poison", [7, 8, 10**9], catalog)  # 7^30, 8^30: past 64 bits; 1e309: infinite
        assert poison["written"] == 3
        writer = SegmentWriter(spool, "raw0", fsync=True)
        frames = [
            encode_frame(KIND_CONTROL, orjson.dumps({"type": "tally", "entries": [{"count": "lots"}]})),
            encode_frame(KIND_MEASUREMENT, b'{"uid":"raw-1","meter":"jobs","account":"poison","n":"\\ud800"}'),
        ]
        writer.write(b"".join(frames), len(frames))
        writer.seal()
        wait_for(lambda: "PAUSED" in cli("agent", "status", "--state-dir", str(state)), what="the pause")

        # 2. The agent is killed while paused; its successor is paused too.
        agent.kill(signal.SIGKILL)
        agent = start_agent(tmp_path, config)

        # 3. Nothing is delivered, so nothing is retired: the flood fills the disk.
        flood = record(spool, "flood", [1] * 30_000, catalog)
        lost_in_flood = sum(flood["lost"].values())
        assert lost_in_flood > 0 and flood["lost_unreported"] == 0, flood  # counted, and the count is spooled

        # 4. The token is fixed: everything waiting arrives, and the disk empties.
        proxy.plan = []
        wait_for(lambda: in_ledger(ledger, "steady") == (2_000, sum(steady)), timeout=120, what="steady usage")

        # 5. More usage, and the agent killed again in the middle of delivering it.
        after = [1 + (i * 7) % 4 for i in range(3_000)]
        assert record(spool, "after", after, catalog)["lost"] == {}
        wait_for(lambda: in_ledger(ledger, "after")[0] > 0, timeout=60, what="delivery to start")
        agent.kill(signal.SIGKILL)
        agent = start_agent(tmp_path, config)

        wait_for(lambda: in_ledger(ledger, "after") == (3_000, sum(after)), timeout=120, what="after")
        delivered_flood = 30_000 - lost_in_flood
        wait_for(lambda: in_ledger(ledger, "flood") == (delivered_flood, delivered_flood), timeout=120, what="flood")
        assert in_ledger(ledger, "steady") == (2_000, sum(steady))  # none doubled by either SIGKILL
        assert in_ledger(ledger, "poison") == (0, 0)
        wait_for(lambda: len(dead_letters(state)) == 5, what="dead letters")
        assert dead_letters(state) == [
            ("control", "invalid:control_record"),
            ("derive", "invalid:derived_out_of_range"),
            ("derive", "invalid:derived_out_of_range"),
            ("derive", "invalid:derived_out_of_range"),
            ("parse", "invalid:not_json"),
        ]
        # Reconciliation sees the flood's losses, by reason, on the account they belong to.
        done = subprocess.run(
            cli_cmd(
                "reconcile",
                "--backend",
                ledger.url,
                "--org",
                "test-org",
                "--token-file",
                str(token_file(tmp_path)),
                "--state-dir",
                str(state),
                *PERIOD,
                "--json",
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.stdout, done.stderr
        report = json.loads(done.stdout)
        rows = {r["account"]: r for r in report["rows"]}
        assert rows["flood"]["sdk_lost"] == flood["lost"]
        assert rows["flood"]["backend"] == delivered_flood and rows["steady"]["backend"] == 2_000
        assert rows["poison"]["dead_lettered"] == 3
        assert report["reconciled"] is True, report["differences"]
    finally:
        if agent is not None:
            agent.kill(signal.SIGTERM)
        proxy.close()
        ledger.proc.kill(signal.SIGTERM)
    log = (tmp_path / "agent.log").read_text()
    assert log.count("is PAUSED") == 2  # one ERROR per episode: one for each agent that met the 401s
    assert "Traceback" not in log


def cli(*args: str) -> str:
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=60).stdout
