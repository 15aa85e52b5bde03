"""Closed bill periods against a real ledger process (SQLite and PostgreSQL): closing
freezes a bill, later usage in a closed period (a late measurement, a reversal) lands as an
adjustment line on the first open period after it, and closing that period freezes the
adjustment. The rules themselves (credits, minimum spend, order of closing, a plan change)
are checked on the billing functions with usage in memory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from meterkit._corrections import reversal
from meterkit_agent.billing import BillingError, MeasurementsUsage, plans_from_text
from meterkit_agent.billing.adjustments import ClosedBill, account_bills, bill_to_close, period_start_ms
from meterkit_agent.billing.periods import instant_ms, iso, period_start
from tests.agent.billing.conftest import JAN, calls, plans_yaml
from tests.agent.conftest import TOKEN, LedgerServer, cli_cmd, start_ledger, token_file

AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: 0.10 a call up to 100, 0.05 above, and 5.00 a month
TIERED = '[{lower_limit: 0, unit_price: "0.10"}, {lower_limit: 100, unit_price: "0.05"}]'
PLANS = plans_yaml(standing='"5.00"', bands=TIERED)
Q1 = {"from": "2026-01-01", "to": "2026-04-01"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerServer]:
    tmp = tmp_path_factory.mktemp("closing")
    (tmp / "plans.yaml").write_text(PLANS)
    db = None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    ledger = start_ledger(tmp, db=db, extra=("--plans", str(tmp / "plans.yaml")))
    yield ledger
    ledger.proc.kill(signal.SIGTERM)


def ingest(server: LedgerServer, org: str, *records: dict[str, Any]) -> None:
    r = requests.post(
        f"{server.url}/organizations/{org}/measurements", json={"measurements": list(records)}, headers=AUTH, timeout=60
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(records), r.text


def bills(server: LedgerServer, org: str, **params: str) -> list[dict[str, Any]]:
    r = requests.get(
        f"{server.url}/organizations/{org}/bills", params={"account": "acme", **params}, headers=AUTH, timeout=60
    )
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["bills"]
    return found


def close(server: LedgerServer, org: str, period: str, account: str = "acme") -> requests.Response:
    return requests.post(
        f"{server.url}/organizations/{org}/bills/close",
        json={"account": account, "period": period},
        headers=AUTH,
        timeout=60,
    )


def adjustments(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(adjusted period's start, amount, recomputed, billed) of each adjustment line."""
    return [(a["from"], a["amount"], a["recomputed"], a["billed"]) for a in doc["lines"] if a["kind"] == "adjustment"]


def test_a_closed_period_stays_frozen_and_each_later_change_adjusts_the_first_open_period(
    server: LedgerServer, tmp_path: Path
) -> None:
    org = f"closing-{os.getpid()}-{time.monotonic_ns()}"
    jan_b = calls("acme", "2026-01-20T00:00:00Z", 7, uid="jan-b")
    jan_a = calls("acme", "2026-01-10T00:00:00Z", 150, uid="jan-a")
    ingest(
        server, org, jan_a, jan_b, calls("acme", "2026-02-10T00:00:00Z", 20), calls("acme", "2026-03-10T00:00:00Z", 10)
    )
    before = bills(server, org, **Q1)
    # January: 100 x 0.10 + 57 x 0.05 = 12.85, plus 5.00; February 7.00; March 6.00
    assert [(b["status"], b["total"], adjustments(b)) for b in before] == [
        ("open", "17.85", []),
        ("open", "7.00", []),
        ("open", "6.00", []),
    ]

    asked = int(time.time() * 1000)
    first = close(server, org, "2026-01")
    assert first.status_code == 201, first.text
    frozen = first.json()["bill"]
    assert asked <= instant_ms(frozen["closed_at"]) <= int(time.time() * 1000)
    assert frozen == {**before[0], "status": "closed", "closed_at": frozen["closed_at"]}
    again = close(server, org, "2026-01-01T01:00:00+01:00")  # the same instant, spelled otherwise
    assert again.status_code == 200 and again.json()["bill"] == frozen

    # a late measurement at January's last millisecond, and a reversal of jan-b (SUM nets it out)
    ingest(server, org, calls("acme", "2026-01-31T23:59:59.999Z", 30, uid="jan-late"), reversal(jan_b))
    january, february, march = bills(server, org, **Q1)
    assert january == frozen
    # January is now 180 calls: 10.00 + 4.00 + 5.00 = 19.00, of which 17.85 was billed
    assert adjustments(february) == [("2026-01-01T00:00:00.000Z", "1.15", "19.00", "17.85")]
    assert (february["subtotal"], february["total"], february["period_total"]) == ("8.15", "8.15", "7.00")
    assert (
        "closed bill period 2026-01-01T00:00:00.000Z to 2026-02-01T00:00:00.000Z"
        in february["lines"][-1]["description"]
    )
    assert adjustments(march) == [] and march["total"] == "6.00"

    closing = subprocess.run(
        cli_cmd(
            "bill", "close", "--account", "acme", "--period", "2026-02", "--ledger", server.url, "--org", org, "--json"
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "METERKIT_LEDGER_TOKEN": TOKEN},
    )
    assert closing.returncode == 0, closing.stderr
    frozen_february = json.loads(closing.stdout)
    assert frozen_february == {**february, "status": "closed", "closed_at": frozen_february["closed_at"]}
    assert adjustments(bills(server, org, **Q1)[2]) == []  # nothing changed since: nothing to adjust

    # reverse jan-a (150 calls) and add 5 to February: both land on March, the first open period
    ingest(server, org, reversal(jan_a), calls("acme", "2026-02-27T00:00:00Z", 5, uid="feb-late"))
    january, february, march = bills(server, org, **Q1)
    assert (january, february) == (frozen, frozen_february)
    # January: 30 calls, 8.00 now; 17.85 + 1.15 billed. February: 25 calls, 7.50 now; 7.00 billed.
    assert adjustments(march) == [
        ("2026-01-01T00:00:00.000Z", "-11.00", "8.00", "19.00"),
        ("2026-02-01T00:00:00.000Z", "0.50", "7.50", "7.00"),
    ]
    assert (march["period_total"], march["subtotal"], march["total"]) == ("6.00", "-4.50", "-4.50")

    shown = ("--account", "acme", "--from", "2026-02-01", "--to", "2026-04-01", "--url", server.url, "--org", org)
    table = subprocess.run(
        cli_cmd("bill", *shown, "--token-file", str(token_file(tmp_path))),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert table.returncode == 0, table.stderr
    out = table.stdout.splitlines()
    assert out[0].endswith(f"(USD), closed at {frozen_february['closed_at']}")
    assert any(line.startswith("adjustment ") and line.endswith(" 1.15") for line in out)
    march_at = out.index("acme: month from 2026-03-01T00:00:00.000Z to 2026-04-01T00:00:00.000Z (USD), open")
    assert [line.split()[-1] for line in out[march_at:] if line.startswith("adjustment ")] == ["-11.00", "0.50"]


def test_closing_a_running_period_or_a_time_inside_one_is_refused_naming_why(server: LedgerServer) -> None:
    now = int(time.time() * 1000)
    running = close(server, "closing-refused", iso(period_start(now, "month")))
    assert running.status_code == 409, running.text
    assert running.json()["errors"] == [{"reason": "period_not_ended"}]
    assert "has not ended" in running.json()["message"]
    inside = close(server, "closing-refused", "2026-01-15")
    assert inside.status_code == 400 and inside.json()["errors"] == [{"reason": "not_a_period_start"}]
    assert "inside 2026-01-01T00:00:00.000Z to 2026-02-01T00:00:00.000Z (month)" in inside.json()["message"]
    before = close(server, "closing-refused", "2025-12")
    assert before.status_code == 400 and "on no plan then" in before.json()["message"]
    unknown = close(server, "closing-refused", "2026-01", account="globex")
    assert unknown.status_code == 404 and "'globex' is not in the plans file" in unknown.json()["message"]
    bad = close(server, "closing-refused", "2026-13")
    assert bad.status_code == 400 and bad.json()["errors"] == [{"reason": "bad_period"}]
    for far in (  # December 9999 ends in year 10000: a refusal naming it, never a 500
        close(server, "closing-refused", "9999-12"),
        requests.get(
            f"{server.url}/organizations/closing-refused/bills",
            params={"account": "acme", "from": "9999-12-01", "to": "9999-12-31"},
            headers=AUTH,
            timeout=60,
        ),
    ):
        assert far.status_code == 400, far.text
        assert far.json()["errors"] == [{"reason": "period_out_of_range"}]
        assert "9999-12-01T00:00:00.000Z to 10000-01-01T00:00:00.000Z" in far.json()["message"]
    assert bills(server, "closing-refused", **Q1)[0]["status"] == "open"  # nothing was closed


def test_meterkit_bill_close_names_the_refusal(server: LedgerServer, tmp_path: Path) -> None:
    tokens = str(token_file(tmp_path))
    common = ("--account", "acme", "--ledger", server.url, "--org", "closing-cli", "--token-file", tokens)
    now = int(time.time() * 1000)
    running = subprocess.run(
        cli_cmd("bill", "close", "--period", iso(period_start(now, "month")), *common),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert running.returncode == 2 and "has not ended" in running.stderr
    bad = subprocess.run(
        cli_cmd("bill", "close", "--period", "2026-1", *common),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "--period: '2026-1' is not" in bad.stderr
    assert "Traceback" not in running.stderr + bad.stderr


# -- the rules, on the billing functions -----------------------------------------------------


def closed_now(plans: Any, usage: MeasurementsUsage, closed: list[ClosedBill], month: str) -> list[ClosedBill]:
    """``closed`` with the month closed as it stands now."""
    key, doc = bill_to_close(plans, "acme", period_start_ms(month), usage, closed, JAN + 400 * 86_400_000)
    return [*closed, ClosedBill(key[0], key[1], instant_ms(doc["closed_at"]), doc)]


def test_credits_apply_to_the_periods_own_charges_never_to_adjustments_nor_the_minimum_spend() -> None:
    plans = plans_from_text(
        plans_yaml(
            minimum='"3.00"',
            bands='[{lower_limit: 0, unit_price: "1"}]',
            credits='\n  acme: [{amount: "4.00", period: "2026-02-01"}]',
        )
    )
    records = [calls("acme", "2026-01-05T00:00:00Z", 4), calls("acme", "2026-02-05T00:00:00Z", 1)]
    closed = closed_now(plans, MeasurementsUsage(records), [], "2026-01")
    records.append(calls("acme", "2026-01-06T00:00:00Z", 2))  # January: 6.00 now, 4.00 billed
    _, february = account_bills(plans, "acme", JAN, instant_ms("2026-03-01"), MeasurementsUsage(records), closed)
    assert [(line["kind"], line["amount"]) for line in february["lines"]] == [
        ("usage", "1.00"),
        ("minimum_spend", "2.00"),  # the minimum compares February's own 1.00, not the adjustment
        ("credit", "-3.00"),  # 4.00 given: it takes February's own 3.00 to zero, not the adjustment
        ("adjustment", "2.00"),
    ]
    assert (february["subtotal"], february["credits"], february["total"]) == ("5.00", "3.00", "2.00")
    assert (february["period_total"], february["unapplied_credit"]) == ("0.00", "1.00")


def _credit_and_adjustment(january_change: int) -> tuple[list[dict[str, Any]], list[ClosedBill]]:
    """The review's case: 1.00 a call, a 15.00 credit on February. January (30 calls) is
    closed; January changes by ``january_change`` calls; February (10 calls) is closed,
    carrying that adjustment; then 20 more calls land in February. March stays open."""
    plans = plans_from_text(plans_yaml(credits='\n  acme: [{amount: "15.00", period: "2026-02-01"}]'))
    records = [calls("acme", "2026-01-05T00:00:00Z", 30, uid="j0"), calls("acme", "2026-02-05T00:00:00Z", 10)]
    closed = closed_now(plans, MeasurementsUsage(records), [], "2026-01")
    records[0] = calls("acme", "2026-01-05T00:00:00Z", 30 + january_change, uid="j0b")  # j0 replaced
    closed = closed_now(plans, MeasurementsUsage(records), closed, "2026-02")
    records.append(calls("acme", "2026-02-06T00:00:00Z", 20))
    usage = MeasurementsUsage(records)
    return account_bills(plans, "acme", JAN, instant_ms("2026-04-01"), usage, closed), closed


def test_a_credit_on_a_period_carrying_a_positive_adjustment_counts_once_when_that_period_changes() -> None:
    (january, february, march), closed = _credit_and_adjustment(+20)
    assert (january, february) == (closed[0].doc, closed[1].doc)
    assert [(line["kind"], line["amount"]) for line in february["lines"]] == [
        ("usage", "10.00"),
        ("credit", "-10.00"),  # 15.00 given, 10.00 of February's own charges to take it off
        ("adjustment", "20.00"),  # January: 50.00 now, 30.00 billed; no credit touches it
    ]
    assert (february["total"], february["period_total"]) == ("20.00", "0.00")
    # February is now 30 calls less its 15.00 credit: 15.00, of which 0.00 was billed
    assert adjustments(march) == [("2026-02-01T00:00:00.000Z", "15.00", "15.00", "0.00")]
    paid = sum(Decimal(b["total"]) for b in (january, february, march))
    assert paid == Decimal("65.00")  # January 50 + February 30 - the credit 15, once


def test_a_credit_on_a_period_carrying_a_negative_adjustment_counts_once_when_that_period_changes() -> None:
    (january, february, march), _ = _credit_and_adjustment(-20)
    assert [(line["kind"], line["amount"]) for line in february["lines"]] == [
        ("usage", "10.00"),
        ("credit", "-10.00"),  # applied to February's own 10.00 whatever the adjustment
        ("adjustment", "-20.00"),  # January: 10.00 now, 30.00 billed
    ]
    assert (february["subtotal"], february["total"], february["period_total"]) == ("-10.00", "-20.00", "0.00")
    assert adjustments(march) == [("2026-02-01T00:00:00.000Z", "15.00", "15.00", "0.00")]
    paid = sum(Decimal(b["total"]) for b in (january, february, march))
    assert paid == Decimal("25.00")  # January 10 + February 30 - the credit 15, once


def test_a_period_ending_in_year_10000_is_refused_naming_it() -> None:
    plans = plans_from_text(plans_yaml())
    usage = MeasurementsUsage([])
    with pytest.raises(BillingError) as closing:
        bill_to_close(plans, "acme", period_start_ms("9999-12"), usage, [], JAN)
    assert closing.value.reason == "period_out_of_range"
    assert "bill period 9999-12-01T00:00:00.000Z to 10000-01-01T00:00:00.000Z" in str(closing.value)
    with pytest.raises(BillingError) as listing:
        account_bills(plans, "acme", instant_ms("9999-11-01"), instant_ms("9999-12-02"), usage, [])
    assert listing.value.reason == "period_out_of_range"
    last = account_bills(plans, "acme", instant_ms("9999-11-01"), instant_ms("9999-12-01"), usage, [])
    assert [(b["from"], b["to"]) for b in last] == [("9999-11-01T00:00:00.000Z", "9999-12-01T00:00:00.000Z")]
    yearly = plans_from_text(plans_yaml(bill_period="year"))
    with pytest.raises(BillingError, match=re.escape("year bill period 9999-01-01T00:00:00.000Z to 10000")):
        account_bills(yearly, "acme", instant_ms("9999-06-01"), instant_ms("9999-06-02"), usage, [])


def test_a_zero_adjustment_is_not_shown() -> None:
    plans = plans_from_text(plans_yaml(minimum='"10.00"', bands='[{lower_limit: 0, unit_price: "1"}]'))
    records = [calls("acme", "2026-01-05T00:00:00Z", 4)]
    closed = closed_now(plans, MeasurementsUsage(records), [], "2026-01")
    records.append(calls("acme", "2026-01-06T00:00:00Z", 2))  # 6 < 10: January still bills its minimum
    _, february = account_bills(plans, "acme", JAN, instant_ms("2026-03-01"), MeasurementsUsage(records), closed)
    assert [line["kind"] for line in february["lines"]] == ["usage", "minimum_spend"]


def test_periods_close_in_any_order_and_a_change_lands_on_the_next_open_period_after_its_own() -> None:
    plans = plans_from_text(plans_yaml(bands='[{lower_limit: 0, unit_price: "1"}]'))
    records = [calls("acme", f"2026-0{m}-05T00:00:00Z", m) for m in (1, 2, 3)]
    closed = closed_now(plans, MeasurementsUsage(records), [], "2026-02")  # January stays open
    records += [calls("acme", "2026-01-09T00:00:00Z", 10), calls("acme", "2026-02-09T00:00:00Z", 20)]
    january, february, march = account_bills(
        plans, "acme", JAN, instant_ms("2026-04-01"), MeasurementsUsage(records), closed
    )
    assert (january["status"], january["total"], adjustments(january)) == ("open", "11.00", [])
    assert february == closed[0].doc and february["total"] == "2.00"
    assert adjustments(march) == [("2026-02-01T00:00:00.000Z", "20.00", "22.00", "2.00")]
    closed = closed_now(plans, MeasurementsUsage(records), closed, "2026-01")  # January after February
    _, _, march = account_bills(plans, "acme", JAN, instant_ms("2026-04-01"), MeasurementsUsage(records), closed)
    assert adjustments(march) == [("2026-02-01T00:00:00.000Z", "20.00", "22.00", "2.00")]  # January is billed whole


def test_a_closed_period_the_plans_no_longer_have_is_given_back_where_its_usage_is_billed_again() -> None:
    monthly = plans_from_text(plans_yaml(bands='[{lower_limit: 0, unit_price: "1"}]'))
    records = [calls("acme", "2026-01-05T00:00:00Z", 3), calls("acme", "2026-02-05T00:00:00Z", 4)]
    closed = closed_now(monthly, MeasurementsUsage(records), [], "2026-01")
    quarterly = plans_from_text(plans_yaml(bill_period="quarter", bands='[{lower_limit: 0, unit_price: "1"}]'))
    january, quarter = account_bills(
        quarterly, "acme", JAN, instant_ms("2026-04-01"), MeasurementsUsage(records), closed
    )
    assert january == closed[0].doc
    assert adjustments(quarter) == [("2026-01-01T00:00:00.000Z", "-3.00", "0.00", "3.00")]
    assert (quarter["period_total"], quarter["total"]) == ("7.00", "4.00")  # January's 3 calls are billed once
