"""Bill previews from a real ledger process: ``ledger serve --plans``, usage ingested over
HTTP in m3ter's shape, ``GET .../bills`` and ``meterkit bill`` reading it back."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from meterkit_agent.billing import MeasurementsUsage, bill, instant_ms, plans_from_text
from meterkit_agent.instants import iso
from tests.agent.billing.conftest import ISSUE_EXAMPLE, JAN
from tests.agent.conftest import TOKEN, LedgerServer, cli_cmd, start_ledger, token_file

AUTH = {"Authorization": f"Bearer {TOKEN}"}
VOLUME = ISSUE_EXAMPLE.replace("cumulative: true", "cumulative: false")
FEB = "2026-02-01T00:00:00Z"


def measurements() -> list[dict[str, Any]]:
    """1,500 calls for acme spread over January (one every 29 minutes, at odd
    milliseconds), 7 at the first instant of February, and 50 for an account with no plan."""
    month = [
        {
            "uid": f"acme-jan-{i}",
            "meter": "api_calls",
            "account": "acme",
            "ts": iso(JAN + i * 29 * 60_000 + i % 997),
            "measure": {"calls": 1},
        }
        for i in range(1500)
    ]
    february = [
        {"uid": "acme-feb", "meter": "api_calls", "account": "acme", "ts": FEB, "measure": {"calls": 7}},
    ]
    other = [
        {"uid": f"globex-{i}", "meter": "api_calls", "account": "globex", "ts": iso(JAN + i), "measure": {"calls": 1}}
        for i in range(50)
    ]
    return month + february + other


def ingest(server: LedgerServer, records: list[dict[str, Any]]) -> None:
    for i in range(0, len(records), 1000):
        r = requests.post(
            f"{server.url}/organizations/o/measurements",
            json={"measurements": records[i : i + 1000]},
            headers=AUTH,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == len(records[i : i + 1000])


def bills(server: LedgerServer, **params: str) -> requests.Response:
    return requests.get(f"{server.url}/organizations/o/bills", params=params, headers=AUTH, timeout=60)


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LedgerServer, LedgerServer]]:
    """The issue's plans (graduated) and the same bands as volume, served from one database
    by two ledgers; the second runs two worker processes, which get --plans through the
    command's worker options."""
    tmp = tmp_path_factory.mktemp("bills")
    (tmp / "graduated.yaml").write_text(ISSUE_EXAMPLE)
    (tmp / "volume.yaml").write_text(VOLUME)
    graduated = start_ledger(tmp, extra=("--plans", str(tmp / "graduated.yaml")))
    volume: LedgerServer | None = None
    try:
        ingest(graduated, measurements())
        volume = start_ledger(tmp, db=graduated.db, extra=("--plans", str(tmp / "volume.yaml"), "--workers", "2"))
        yield graduated, volume
    finally:
        for server in (graduated, volume):
            if server is not None:
                server.proc.kill(signal.SIGTERM)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=120, check=False)


def test_the_issues_example_bills_135_from_the_ledger(ledgers: tuple[LedgerServer, LedgerServer]) -> None:
    graduated, _ = ledgers
    r = bills(graduated, account="acme", **{"from": "2026-01-01", "to": "2026-02-01"})
    assert r.status_code == 200, r.text
    (only,) = r.json()["bills"]
    assert (only["total"], only["subtotal"], only["credits"]) == ("135.00", "135.00", "0.00")
    assert (only["from"], only["to"], only["currency"]) == (
        "2026-01-01T00:00:00.000Z",
        "2026-02-01T00:00:00.000Z",
        "USD",
    )
    assert [(line["kind"], line["amount"]) for line in only["lines"]] == [
        ("standing_charge", "20.00"),
        ("usage", "115.00"),
    ]
    usage = only["lines"][1]
    assert (usage["quantity"], usage["units"], usage["aggregation"]) == ("1500", "1500", "SUM(api_calls.calls)")
    assert [(b["units"], b["unit_price"], b["amount"]) for b in usage["bands"]] == [
        ("100", "0", "0"),
        ("900", "0.10", "90"),
        ("500", "0.05", "25"),
    ]


def test_the_ledgers_bills_are_the_reference_bills_of_the_same_measurements(
    ledgers: tuple[LedgerServer, LedgerServer],
) -> None:
    """The ledger's SQL-side aggregates price exactly as the in-memory reference does, over
    a range that cuts January and February (one bill each, each for its whole period)."""
    graduated, _ = ledgers
    start, end = "2026-01-15T10:00:00+01:00", "2026-02-15"
    r = bills(graduated, account="acme", **{"from": start, "to": end})
    assert r.status_code == 200, r.text
    plans = plans_from_text(ISSUE_EXAMPLE)
    reference = bill(plans, "acme", instant_ms(start), instant_ms(end), MeasurementsUsage(measurements()))
    assert r.json()["bills"] == [b.to_json() for b in reference]
    january, february = r.json()["bills"]
    assert (january["total"], february["total"]) == ("135.00", "100.00")  # February: 7 calls, trued up
    assert february["lines"][1]["quantity"] == "7"


def test_the_same_bands_as_volume_bill_100_with_a_minimum_spend_true_up(
    ledgers: tuple[LedgerServer, LedgerServer],
) -> None:
    _, volume = ledgers
    r = bills(volume, account="acme", **{"from": "2026-01-01", "to": "2026-02-01"})
    assert r.status_code == 200, r.text
    (only,) = r.json()["bills"]
    assert [(line["kind"], line["amount"]) for line in only["lines"]] == [
        ("standing_charge", "20.00"),
        ("usage", "75.00"),
        ("minimum_spend", "5.00"),
    ]
    assert "true-up from 95.00" in only["lines"][2]["description"]
    assert only["total"] == "100.00"


def test_meterkit_bill_prints_the_ledgers_json_and_a_table(
    ledgers: tuple[LedgerServer, LedgerServer], tmp_path: Path
) -> None:
    graduated, _ = ledgers
    common = ["--account", "acme", "--from", "2026-01-01", "--to", "2026-02-01", "--url", graduated.url]
    common += ["--token-file", str(token_file(tmp_path)), "--org", "o"]
    as_json = run("bill", *common, "--json")
    assert as_json.returncode == 0, as_json.stderr
    expected = bills(graduated, account="acme", **{"from": "2026-01-01", "to": "2026-02-01"}).json()["bills"]
    assert json.loads(as_json.stdout) == expected
    table = run("bill", *common)
    assert table.returncode == 0, table.stderr
    out = table.stdout.splitlines()
    assert out[0] == "acme: month from 2026-01-01T00:00:00.000Z to 2026-02-01T00:00:00.000Z (USD), open"
    assert out[1].split() == ["kind", "description", "quantity", "units", "amount"]
    assert any(line.split()[-1] == "20.00" and line.startswith("standing_charge") for line in out)
    usage = next(line for line in out if line.startswith("usage "))
    assert usage.split()[-3:] == ["1500", "1500", "115.00"]
    assert any("100 to 1000: 900 x 0.10" in line and line.endswith(" 90") for line in out)
    assert any("above 1000: 500 x 0.05" in line and line.endswith(" 25") for line in out)
    assert [line.split()[-2:] for line in out[-3:]] == [
        ["subtotal", "135.00"],
        ["credits", "0.00"],
        ["total", "135.00"],
    ]


def test_bad_requests_name_what_is_wrong(ledgers: tuple[LedgerServer, LedgerServer]) -> None:
    graduated, _ = ledgers
    unknown = bills(graduated, account="globex", **{"from": "2026-01-01", "to": "2026-02-01"})
    assert unknown.status_code == 404 and "'globex' is not in the plans file" in unknown.json()["message"]
    bad_from = bills(graduated, account="acme", **{"from": "2026-01-01T00:00:00", "to": "2026-02-01"})
    assert bad_from.status_code == 400 and bad_from.json()["message"].startswith("from: ")
    empty = bills(graduated, account="acme", **{"from": "2026-02-01", "to": "2026-01-01"})
    assert empty.status_code == 400 and "empty period: from" in empty.json()["message"]
    missing = bills(graduated, account="acme", **{"from": "2026-01-01"})
    assert missing.status_code == 400 and missing.json()["message"] == "to is required"
    unauthenticated = requests.get(
        f"{graduated.url}/organizations/o/bills",
        params={"account": "acme", "from": "2026-01-01", "to": FEB},
        timeout=30,
    )
    assert unauthenticated.status_code == 401


def test_meterkit_bill_fails_with_the_reason(ledgers: tuple[LedgerServer, LedgerServer], tmp_path: Path) -> None:
    graduated, _ = ledgers
    common = ("--url", graduated.url, "--token-file", str(token_file(tmp_path)), "--org", "o", "--to", "2026-02-01")
    unknown = run("bill", "--account", "globex", "--from", "2026-01-01", *common)
    assert unknown.returncode == 2 and "account 'globex' is not in the plans file" in unknown.stderr
    bad_from = run("bill", "--account", "acme", "--from", "January", *common)
    assert bad_from.returncode == 2 and "--from: 'January' is not" in bad_from.stderr
    assert "Traceback" not in unknown.stderr + bad_from.stderr


def test_a_ledger_without_plans_says_so(ledger: LedgerServer) -> None:
    r = bills(ledger, account="acme", **{"from": "2026-01-01", "to": "2026-02-01"})
    assert r.status_code == 404 and "--plans" in r.json()["message"]


def test_serve_refuses_a_plans_file_with_problems_naming_each(tmp_path: Path) -> None:
    bad = tmp_path / "plans.yaml"
    bad.write_text(
        ISSUE_EXAMPLE.replace('unit_price: "0.10"', 'unit_price: "ten"').replace("plan: growth,", "plan: grow,")
    )
    done = subprocess.run(
        cli_cmd("ledger", "serve", "--db", f"sqlite:///{tmp_path / 'l.db'}", "--port", "1", "--plans", str(bad)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert f"{bad}:14, plan 'growth', field 'pricing[0].bands[1].unit_price'" in done.stderr
    assert f"{bad}:17, account 'acme'" in done.stderr and "[unknown_plan]" in done.stderr
    assert "2 problem(s)" in done.stderr and "Traceback" not in done.stderr
