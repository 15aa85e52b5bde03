"""Several ledger processes behind one address (``meterkit ledger serve --workers``) and
several agents, all into one real PostgreSQL server (issue 11, target 6). The agents'
spools overlap, and clients re-send one range of uids from several connections at once, so
the same uid reaches different ledger processes concurrently. Every uid is stored once:
the count, the exact decimal sums per account and the list of uids are exactly what was
recorded, and no re-send is taken for a conflict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests

import meterkit
from meterkit._model import validation_token
from meterkit_agent.ledger.api import VALIDATED_HEADER
from tests.agent.conftest import (
    TOKEN,
    LedgerServer,
    Proc,
    cli_cmd,
    start_agent,
    start_ledger,
    wait_for,
    write_agent_config,
)
from tests.agent.ledger.conftest import fresh_org

WORKERS = 3
AGENTS = 3
PER_AGENT = 1200
STEP = 800  # agent k records uids [k * STEP, k * STEP + PER_AGENT): 400 shared with the next
ACCOUNTS = 4
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def measurement(i: int) -> dict[str, Any]:
    """Measurement ``i``, the same content whoever sends it."""
    return {
        "uid": f"many-{i:05d}",
        "meter": "jobs",
        "account": f"acct{i % ACCOUNTS}",
        "ts": f"2026-10-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00.000Z",
        "measure": {"n": i, "amount": (i % 1000) / 100},
    }


def record(spool: Path, first: int) -> None:
    """Record an agent's range with a real SDK client, uids and times given."""
    client = meterkit.Client(spool_dir=spool, flush_interval_millis=20)
    for i in range(first, first + PER_AGENT):
        m = measurement(i)
        client.record(m["meter"], account=m["account"], uid=m["uid"], ts=m["ts"], measure=m["measure"])
    assert client.shutdown(30)


def resend(url: str, org: str, uids: range, trusted: bool) -> list[int]:
    """Post a range in requests of 250, each on a new connection (so the ledger's processes
    share them); the statuses answered."""
    headers = {**AUTH, "Connection": "close"}
    if trusted:
        headers[VALIDATED_HEADER] = validation_token(None)  # the ledger runs without a catalog
    statuses = []
    for start in range(uids.start, uids.stop, 250):
        body = json.dumps({"measurements": [measurement(i) for i in range(start, min(start + 250, uids.stop))]})
        r = requests.post(f"{url}/organizations/{org}/measurements", data=body, headers=headers, timeout=30)
        statuses.append(r.status_code)
    return statuses


def worker_processes(ledger: LedgerServer) -> list[int]:
    """The ledger command's child processes that serve (uvicorn's workers)."""
    assert ledger.proc.popen is not None
    parent = ledger.proc.popen.pid
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def exact(ledger: LedgerServer, org: str, **params: str) -> list[dict[str, Any]]:
    r = requests.get(f"{ledger.url}/organizations/{org}/usage", params=params, headers=AUTH, timeout=30)
    r.raise_for_status()
    data: list[dict[str, Any]] = json.loads(r.text, parse_float=Decimal)["data"]
    return data


def test_several_ledger_processes_and_agents_store_every_uid_once(tmp_path: Path, postgres_url: str) -> None:
    org = fresh_org()
    ledger = start_ledger(tmp_path / "ledger", db=postgres_url, extra=("--workers", str(WORKERS)))
    agents: list[Proc] = []
    try:
        wait_for(lambda: len(worker_processes(ledger)) == WORKERS, what=f"{WORKERS} ledger processes")
        for k in range(AGENTS):
            work = tmp_path / f"host{k}"
            work.mkdir()
            record(work / "spool", k * STEP)
        # Four clients re-send the first 1,000 uids at once, on fresh connections, while
        # the agents deliver the same uids through the same address.
        answers: list[list[int]] = []
        clients = [
            threading.Thread(target=lambda t=t: answers.append(resend(ledger.url, org, range(1000), t % 2 == 0)))
            for t in range(4)
        ]
        for k in range(AGENTS):
            work = tmp_path / f"host{k}"
            agents.append(start_agent(work, write_agent_config(work, work / "spool", ledger.url, org=org)))
        for client in clients:
            client.start()
        for client in clients:
            client.join(60)
        assert answers == [[200] * 4] * 4

        recorded = sorted(set(range(0, (AGENTS - 1) * STEP + PER_AGENT)))
        count = len(recorded)

        def stored() -> int:
            rows = exact(ledger, org, meter="jobs", aggregation="COUNT")
            return sum(int(row["value"]) for row in rows)

        wait_for(lambda: stored() == count, timeout=60, what=f"{count} measurements in the ledger")
        for agent in agents:
            assert agent.kill(signal.SIGTERM) == 0
        agents.clear()

        uids = requests.get(f"{ledger.url}/organizations/{org}/uids", headers=AUTH, timeout=30).json()["uids"]
        assert sorted(uids) == [measurement(i)["uid"] for i in recorded]  # each once, none missing
        for a in range(ACCOUNTS):
            mine = [measurement(i) for i in recorded if i % ACCOUNTS == a]
            account = f"acct{a}"
            [n] = exact(ledger, org, meter="jobs", account=account, aggregation="COUNT")
            [amount] = exact(ledger, org, meter="jobs", account=account, aggregation="SUM", field="amount")
            [total] = exact(ledger, org, meter="jobs", account=account, aggregation="SUM", field="n")
            assert n["value"] == len(mine)
            assert amount["value"] == sum(Decimal(repr(m["measure"]["amount"])) for m in mine)
            assert total["value"] == sum(m["measure"]["n"] for m in mine)
        conflicts = requests.get(f"{ledger.url}/organizations/{org}/conflicts", headers=AUTH, timeout=30).json()
        assert conflicts["conflicts"] == []  # every re-send was the same content
        assert ledger.proc.alive() and len(worker_processes(ledger)) == WORKERS

        # A worker that dies is replaced; the address keeps answering meanwhile.
        lost = worker_processes(ledger)[0]
        os.kill(lost, signal.SIGKILL)
        wait_for(lambda: lost not in worker_processes(ledger) and len(worker_processes(ledger)) == WORKERS)
        wait_for(ledger.healthy, what="the ledger after losing a worker")
        assert stored() == count
    finally:
        for agent in agents:
            agent.kill(signal.SIGTERM)
        ledger.proc.kill(signal.SIGTERM)  # the command stops its workers


def test_the_workers_stop_with_the_command_however_it_ends(tmp_path: Path) -> None:
    """SIGTERM stops the workers with the command; so does SIGKILL, which the command
    cannot catch: each worker sees its parent gone and stops itself."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        ledger = start_ledger(tmp_path / sig.name, extra=("--workers", "2"))
        try:
            wait_for(lambda ledger=ledger: len(worker_processes(ledger)) == 2, what="2 ledger processes")
            workers = worker_processes(ledger)
            ledger.proc.kill(sig)
            wait_for(
                lambda workers=workers: not any(_running(pid) for pid in workers), what=f"workers gone ({sig.name})"
            )
            assert not ledger.healthy()
        finally:
            if ledger.proc.alive():
                ledger.proc.kill(signal.SIGTERM)


def _running(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_database_that_cannot_be_opened_fails_the_command_before_any_worker(tmp_path: Path) -> None:
    done = subprocess.run(
        cli_cmd("ledger", "serve", "--db", "postgresql://nobody@127.0.0.1:1/none", "--workers", "2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot open ledger database" in done.stderr and "Traceback" not in done.stderr
