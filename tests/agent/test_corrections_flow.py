"""Issue 12's "Done when" for corrections, end to end with real processes: a ledger started
with a plans file, an agent delivering the spool to it with the ``m3ter`` exporter, the SDK
recording the originals, and the real CLI (``meterkit correct``, ``backfill``, ``backfill
revert``, ``bill``, ``bill close``, ``reconcile``) in subprocesses.

One module-scoped story, then checks of what it left behind. Last month (a bill period
that has ended, so it can be closed) gets eight originals and a backfill of four; one
original is cancelled, one amended (and the same amendment run again, which changes
nothing), the backfill is reverted, all delivered by the agent. Then:

1. the ledger's SUM and COUNT are the corrected ones (voided rows count for neither);
2. the official m3ter client reads the same corrected usage back (``usage.query``);
3. ``meterkit bill --json`` totals what a hand computation gives; the period is closed,
   the amended measurement amended again (a chain: the replacement is what is corrected),
   and the closed bill stays as frozen while this month's bill carries the adjustment;
4. ``meterkit reconcile --json`` is clean and lists each correction with who and why;
5. the audit journal has a ``correction`` entry per correction.

The numbers (plan: 5.00 a month, 0.10 a call up to 100 and 0.05 above, 0.25 a
measurement):

- last month, originals ``calls`` 10..17 (sum 108, 8 measurements); cancel 11, amend 12
  to 3, backfill 50+60+70+80 then revert it: SUM 88, COUNT 7; bill 5.00 + 8.80 + 1.75 =
  15.55, closed.
- after closing, amend that 3 to 30: SUM 115, COUNT 7; recomputed 5.00 + (10.00 + 0.75) +
  1.75 = 17.50; adjustment 17.50 - 15.55 = 1.95.
- this month, originals 5 and 7: 5.00 + 1.20 + 0.50 = 6.70, plus the adjustment: 8.65.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

import meterkit
from meterkit._corrections import replacement_uid, reversal_uid
from meterkit_agent.audit.journal import expand_uids
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
from tests.conftest import CATALOG

ORG = "flow-org"
ACCOUNT = "acme"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLANS = """\
currency: USD
plans:
  - code: metered
    bill_period: month
    standing_charge: "5.00"
    pricing:
      - aggregation: {meter: api_calls, field: calls, function: SUM}
        cumulative: true
        bands:
          - {lower_limit: 0, unit_price: "0.10"}
          - {lower_limit: 100, unit_price: "0.05"}
      - aggregation: {meter: api_calls, function: COUNT}
        bands:
          - {lower_limit: 0, unit_price: "0.25"}
accounts:
  acme: [{plan: metered, from: "2020-01-01T00:00:00Z"}]
"""
#: the reconciliation's period: everything
EVER = ("--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")
CANCEL_REASON = "a retried request was recorded twice (INC-7)"
AMEND_REASON = "customer dispute #4411: 3 calls, not 12"
REVERT_REASON = "the export file was from the wrong tenant"
CHAIN_REASON = "dispute #4411 reopened: 30 calls after all"


def month_start(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Flow:
    """What the story left behind, for the checks."""

    tmp: Path
    ledger: LedgerServer
    agent: Proc
    spool: Path
    state: Path
    last_month: datetime  # the bill period that is closed
    this_month: datetime  # the open one after it
    next_month: datetime
    originals: list[str] = field(default_factory=list)  # last month's, calls 10..17
    batch: str = ""
    backfilled: list[str] = field(default_factory=list)
    before_closing: dict[str, dict[str, Any]] = field(default_factory=dict)  # `meterkit bill --json`
    frozen: dict[str, Any] = field(default_factory=dict)  # the closed bill, as `bill close` printed it
    outputs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    # -- the real CLI -------------------------------------------------------------------

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``meterkit`` as a user would, the ledger's token in its variable; it must succeed."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
        env["METERKIT_LEDGER_TOKEN"] = TOKEN
        env["XDG_STATE_HOME"] = str(self.tmp / "xdg")
        done = subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=120, env=env, check=False)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
        return done

    def correct(self, uid: str, *how: str, reason: str) -> subprocess.CompletedProcess[str]:
        where = ("--ledger", self.ledger.url, "--org", ORG, "--spool-dir", str(self.spool), "--catalog", str(CATALOG))
        return self.cli("correct", "--uid", uid, *how, "--reason", reason, *where)

    # -- the ledger's side --------------------------------------------------------------

    def stored(self, uid: str) -> dict[str, Any] | None:
        r = requests.get(f"{self.ledger.url}/organizations/{ORG}/measurements/{uid}", headers=AUTH, timeout=30)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        found: dict[str, Any] = r.json()
        return found

    def arrived(self, *uids: str) -> None:
        """Wait until the agent has delivered every one of ``uids`` to the ledger."""
        wait_for(lambda: all(self.stored(u) is not None for u in uids), timeout=30, what=f"delivery of {uids}")

    def usage(self, aggregation: str, start: datetime, end: datetime) -> Decimal:
        params = {"meter": "api_calls", "account": ACCOUNT, "from": iso(start), "to": iso(end)}
        params |= {"aggregation": aggregation, "field": "calls"}
        data = self.ledger.get(f"/organizations/{ORG}/usage", **params)["data"]
        return sum((Decimal(str(row["value"])) for row in data), Decimal(0))

    def bills(self) -> dict[str, dict[str, Any]]:
        """``meterkit bill --json`` for last month and this one, by period start."""
        done = self.cli(
            "bill",
            *("--account", ACCOUNT, "--from", iso(self.last_month), "--to", iso(self.next_month)),
            *("--ledger", self.ledger.url, "--org", ORG, "--json"),
        )
        return {b["from"]: b for b in json.loads(done.stdout)}

    def journal(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in (self.state / "journal.jsonl").read_bytes().splitlines()]


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    tmp = tmp_path_factory.mktemp("corrections-flow")
    (tmp / "plans.yaml").write_text(PLANS)
    ledger = start_ledger(tmp / "ledger", extra=("--plans", str(tmp / "plans.yaml"), "--catalog", str(CATALOG)))
    spool = tmp / "spool"
    config = write_agent_config(tmp, spool, ledger.url, catalog=CATALOG, org=ORG)
    agent = start_agent(tmp, config)
    this_month = month_start(datetime.now(UTC))
    last_month = month_start(this_month - timedelta(days=1))
    next_month = month_start(this_month + timedelta(days=32))
    f = Flow(tmp, ledger, agent, spool, tmp / "agent-state", last_month, this_month, next_month)
    try:
        run_story(f)
        yield f
    finally:
        agent.kill(signal.SIGTERM)
        ledger.proc.kill(signal.SIGTERM)


def run_story(f: Flow) -> None:
    # The originals, recorded by the SDK: eight last month, two this month.
    client = meterkit.Client(CATALOG, f.spool, flush_interval_millis=20)
    f.originals = [f"flow-u{i}" for i in range(8)]
    for i, uid in enumerate(f.originals):
        at = iso(f.last_month + timedelta(days=3, hours=i))
        client.record("api_calls", account=ACCOUNT, measure={"calls": 10 + i}, ts=at, uid=uid)
    client.record("api_calls", account=ACCOUNT, measure={"calls": 5}, uid="flow-q0")
    client.record("api_calls", account=ACCOUNT, measure={"calls": 7}, uid="flow-q1")
    assert client.shutdown(10)

    # A backfill of last month, with its batch id.
    rows = [
        {"account": ACCOUNT, "ts": iso(f.last_month + timedelta(days=9, hours=i)), "measure": {"calls": n}}
        for i, n in enumerate((50, 60, 70, 80))
    ]
    history = f.tmp / "history.jsonl"
    history.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    done = f.cli(
        "backfill", str(history), "--meter", "api_calls", "--spool-dir", str(f.spool), "--catalog", str(CATALOG)
    )
    f.batch = done.stdout.strip().rsplit("batch ", 1)[1]
    f.arrived(*f.originals, "flow-q0", "flow-q1")
    wait_for(lambda: len(batch_listing(f)) == 4, timeout=30, what="the backfill's delivery")
    f.backfilled = [m["uid"] for m in batch_listing(f)]

    # Cancel one original; amend another, then run the very same amendment again.
    cancelled, amended = f.originals[1], f.originals[2]
    f.outputs["cancel"] = f.correct(cancelled, "--cancel", reason=CANCEL_REASON)
    f.outputs["amend"] = f.correct(amended, "--set", "measure.calls=3", reason=AMEND_REASON)
    f.arrived(reversal_uid(cancelled), reversal_uid(amended), replacement_uid(amended))
    f.outputs["amend again"] = f.correct(amended, "--set", "measure.calls=3", reason=AMEND_REASON)
    f.outputs["cancel again"] = f.correct(cancelled, "--cancel", reason=CANCEL_REASON)

    # Revert the whole backfill.
    where = ("--ledger", f.ledger.url, "--org", ORG, "--spool-dir", str(f.spool), "--catalog", str(CATALOG))
    f.outputs["revert"] = f.cli("backfill", "revert", f.batch, "--reason", REVERT_REASON, *where, "--json")
    f.arrived(*(reversal_uid(u) for u in f.backfilled))

    # Bill last month by hand (below), then close it.
    f.before_closing = f.bills()
    period = f.last_month.strftime("%Y-%m")
    close = ("--account", ACCOUNT, "--period", period, "--ledger", f.ledger.url, "--org", ORG, "--json")
    f.frozen = json.loads(f.cli("bill", "close", *close).stdout)

    # A correction in the closed period: the amended measurement amended again (its live
    # version is the replacement, which is what this corrects).
    live = replacement_uid(amended)
    f.outputs["chain"] = f.correct(amended, "--set", "measure.calls=30", reason=CHAIN_REASON)
    f.arrived(reversal_uid(live), replacement_uid(live))


def batch_listing(f: Flow) -> list[dict[str, Any]]:
    page = f.ledger.get(f"/organizations/{ORG}/measurements", batch=f.batch, limit=100)
    found: list[dict[str, Any]] = page["measurements"]
    return found


def test_the_ledger_and_the_official_m3ter_client_read_the_corrected_usage(flow: Flow) -> None:
    last, this = flow.last_month, flow.this_month
    # originals 10..17 without 11, with 12 amended to 3 then 30; the backfill reverted
    assert flow.usage("SUM", last, this) == 108 - 11 - 12 + 30
    assert flow.usage("COUNT", last, this) == 7
    assert flow.usage("SUM", this, flow.next_month) == 12
    assert flow.usage("COUNT", this, flow.next_month) == 2

    # Nothing was overwritten: every original, reversal and replacement is stored, each
    # correction names what it corrects, and the re-runs wrote nothing.
    amended = flow.originals[2]
    first = replacement_uid(amended)
    assert flow.stored(flow.originals[1])["corrected"] == {  # type: ignore[index]
        "reversed_by": reversal_uid(flow.originals[1]),
        "replaced_by": None,
    }
    assert flow.stored(amended)["corrected"] == {"reversed_by": reversal_uid(amended), "replaced_by": first}  # type: ignore[index]
    second = flow.stored(replacement_uid(first))
    assert second is not None and second["measure"] == {"calls": 30}
    assert second["correction"] == {"of": first, "kind": "replacement"}
    # 10 originals + 4 backfilled + cancel 1 + amend 2 + revert 4 + chained amend 2
    assert flow.ledger.count() == 23
    assert "nothing to do" in flow.outputs["amend again"].stdout
    assert "already cancelled" in flow.outputs["cancel again"].stdout
    revert = json.loads(flow.outputs["revert"].stdout)
    assert (revert["listed"], revert["reversed"], revert["already_reversed"]) == (4, 4, 0)
    for uid in flow.backfilled:
        assert flow.stored(uid)["corrected"]["reversed_by"] == reversal_uid(uid)  # type: ignore[index]

    import m3ter

    client = m3ter.M3ter(base_url=flow.ledger.url, token=TOKEN, org_id=ORG, api_key="unused", api_secret="unused")
    read = {}
    for function in ("SUM", "COUNT"):
        answer = client.usage.query(
            account_ids=[ACCOUNT],
            aggregations=[
                {"meter_id": "api_calls", "field_code": "calls", "field_type": "MEASURE", "function": function}
            ],
            start_date=iso(last),
            end_date=iso(this),
        )
        assert answer.has_more_data is False and answer.data
        read[function] = sum((Decimal(str(item["value"])) for item in answer.data), Decimal(0))
    assert read == {"SUM": Decimal(115), "COUNT": Decimal(7)}


def test_bills_match_the_hand_computation_and_a_closed_bill_never_changes(flow: Flow) -> None:
    last, this = iso(flow.last_month), iso(flow.this_month)
    before = flow.before_closing
    # 5.00 + 88 calls x 0.10 + 7 measurements x 0.25
    assert Decimal(before[last]["total"]) == Decimal("15.55") and before[last]["status"] == "open"
    assert [Decimal(line["amount"]) for line in before[last]["lines"]] == [
        Decimal("5.00"),
        Decimal("8.80"),
        Decimal("1.75"),
    ]

    # closing froze the bill as it stood
    assert flow.frozen == before[last] | {"status": "closed", "closed_at": flow.frozen["closed_at"]}

    now = flow.bills()
    assert now[last] == flow.frozen  # the closed period is the frozen bill, to the byte

    current = now[this]
    assert current["status"] == "open"
    (adjustment,) = [line for line in current["lines"] if line["kind"] == "adjustment"]
    # last month now: 5.00 + (100 x 0.10 + 15 x 0.05) + 7 x 0.25 = 17.50, billed 15.55
    assert (adjustment["amount"], adjustment["recomputed"], adjustment["billed"]) == ("1.95", "17.50", "15.55")
    assert (adjustment["from"], adjustment["to"]) == (last, this)
    # this month: 5.00 + 12 x 0.10 + 2 x 0.25, plus the adjustment
    own = [Decimal(line["amount"]) for line in current["lines"] if line["kind"] != "adjustment"]
    assert own == [Decimal("5.00"), Decimal("1.20"), Decimal("0.50")]
    assert Decimal(current["total"]) == Decimal("8.65")


def test_reconcile_is_clean_and_the_journal_says_who_corrected_what_and_why(flow: Flow) -> None:
    where = ("--backend", flow.ledger.url, "--org", ORG, "--state-dir", str(flow.state))
    done = flow.cli("reconcile", *where, *EVER, "--json")
    report = json.loads(done.stdout)
    assert report["reconciled"] is True and report["differences"] == [], report["differences"]
    (row,) = report["rows"]
    # every stored row reconciles: the 10 originals, 4 backfilled, and 9 corrections
    assert (row["recorded"], row["delivered"], row["backend"], row["corrections"]) == (23, 23, 23, 9)

    me = f"{getpass.getuser()}@{socket.gethostname()}"
    amended = flow.originals[2]
    expected = {
        ("cancel", CANCEL_REASON): ([flow.originals[1]], [reversal_uid(flow.originals[1])]),
        ("amend", AMEND_REASON): ([amended], [reversal_uid(amended), replacement_uid(amended)]),
        ("revert", REVERT_REASON): (flow.backfilled, [reversal_uid(u) for u in flow.backfilled]),
        ("amend", CHAIN_REASON): (
            [replacement_uid(amended)],
            [reversal_uid(replacement_uid(amended)), replacement_uid(replacement_uid(amended))],
        ),
    }
    listed = {(c["action"], c["reason"]): c for c in report["corrections"]}
    assert listed.keys() == expected.keys()
    for (action, _), c in listed.items():
        assert c["by"] == me and c["status"] == "delivered" and c["undelivered"] == []
        assert c.get("batch") == (flow.batch if action == "revert" else None)
    for key, (of, _) in expected.items():
        assert sorted(listed[key]["of"]) == sorted(of)

    entries = [e for e in flow.journal() if e["type"] == "correction"]
    journaled = {(e["action"], e["reason"]): e for e in entries}
    assert len(entries) == 4 and journaled.keys() == expected.keys()  # the re-runs journaled nothing
    for key, (of, uids) in expected.items():
        e = journaled[key]
        assert e["by"] == me and e["made_at"] <= e["at"]
        assert sorted(expand_uids(e["of"])) == sorted(of)
        assert sorted(expand_uids(e["uids"])) == sorted(uids)
