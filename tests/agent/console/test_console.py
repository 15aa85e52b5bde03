"""The usage console in headless Chromium, against a ledger process holding the demo's
workload: each page loads without a console error, shows the numbers the API answers, and
is photographed (into docs/ with METERKIT_UPDATE_SCREENSHOTS=1, for the README; otherwise
into the test's temporary folder). Data calls without the ledger's token are refused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.agent.conftest import TOKEN, LedgerServer
from tests.agent.console.browser import Browser
from tests.agent.console.conftest import JOURNAL, ORG, ROOT
from tests.agent.console.workload import ACCOUNTS

READY = "document.getElementById('page').dataset.state === 'ready'"


def month(server: LedgerServer) -> tuple[str, str]:
    """This UTC month, as the console's default period."""
    as_of = server.get(f"/organizations/{ORG}/console/limits", account="acme")["as_of"]
    year, mon = int(as_of[:4]), int(as_of[5:7])
    following = f"{year + 1}-01" if mon == 12 else f"{year}-{mon + 1:02d}"
    return f"{as_of[:7]}-01T00:00:00Z", f"{following}-01T00:00:00Z"


def exact(server: LedgerServer, path: str, **params: Any) -> Any:
    """An API answer with its numbers as Decimals (the ledger writes them exactly)."""
    r = requests.get(f"{server.url}{path}", params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    r.raise_for_status()
    import json

    return json.loads(r.text, parse_float=Decimal)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ROOT / "docs" if os.environ.get("METERKIT_UPDATE_SCREENSHOTS") else tmp_path_factory.mktemp("shots")


@pytest.fixture(scope="module")
def browser(ledger: LedgerServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """A tab that has signed in once through the console's token dialog."""
    tab = Browser(tmp_path_factory.mktemp("chrome"))
    try:
        tab.goto(f"{ledger.url}/console/")
        tab.wait("document.getElementById('login').open")
        assert "401" in " ".join(tab.errors)  # the first data call, refused without the token
        tab.evaluate(f"document.getElementById('token').value = {orjson.dumps(TOKEN).decode()};"
                     "document.getElementById('login-form').requestSubmit(); true")  # fmt: skip
        tab.wait(READY + " && !document.getElementById('login').open")
        assert TOKEN not in tab.evaluate("location.href")
        tab.errors.clear()
        yield tab
    finally:
        tab.close()


def show(tab: Browser, server: LedgerServer, fragment: str, shots: Path, name: str) -> None:
    # the hash changes at once, the page renders on its hashchange event: "ready" must be the new page's
    tab.evaluate("document.getElementById('page').dataset.state = 'stale'")
    tab.goto(f"{server.url}/console/#/{fragment}")
    tab.wait(f"location.hash === {orjson.dumps('#/' + fragment).decode()} && " + READY)
    tab.wait("[...document.querySelectorAll('.chart')].every((c) => c.querySelector('canvas') || c.textContent)")
    assert tab.errors == [], tab.errors
    assert "Could not load" not in tab.evaluate("document.getElementById('page').textContent")
    tab.screenshot(shots / f"console-{name}.png")


def test_data_needs_the_token_and_pages_carry_none(ledger: LedgerServer) -> None:
    month_from, month_to = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"
    calls = [
        ("/console/api/orgs", {}),
        (f"/organizations/{ORG}/console/accounts", {"from": month_from, "to": month_to}),
        (f"/organizations/{ORG}/console/meters", {"from": month_from, "to": month_to}),
        (f"/organizations/{ORG}/console/limits", {"account": "acme"}),
        (f"/organizations/{ORG}/console/privacy", {}),
    ]
    for path, params in calls:
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            r = requests.get(f"{ledger.url}{path}", params=params, headers=headers, timeout=10)
            assert r.status_code == 401, (path, headers, r.text)
    page = requests.get(f"{ledger.url}/console/", timeout=10)
    assert page.status_code == 200 and "<title>meterkit console</title>" in page.text
    assert not any(a in page.text for a in ACCOUNTS)
    bad = requests.get(f"{ledger.url}/organizations/{ORG}/console/accounts", params={"from": "2026-01-01T00:30:00Z",
                       "to": month_to}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)  # fmt: skip
    assert bad.status_code == 400 and "whole UTC hours" in bad.json()["message"]
    unused = requests.get(f"{ledger.url}/organizations/{ORG}/console/accounts", params={"from": month_from,
                          "to": month_to, "sort": "exports"}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)  # fmt: skip
    assert unused.status_code == 200, unused.text  # a catalog's meter nothing used yet: sortable (all zero)


def test_accounts_page_equals_the_ledgers_usage_and_bills(ledger: LedgerServer, browser: Browser, shots: Path) -> None:
    start, end = month(ledger)
    show(browser, ledger, "accounts?sort=api_calls&order=desc", shots, "accounts")
    rows = browser.evaluate("""[...document.querySelectorAll('#accounts tbody tr')].map((tr) => ({
        account: tr.dataset.account, bill: tr.querySelector('[data-bill]').textContent.trim(),
        counts: Object.fromEntries([...tr.querySelectorAll('[data-count]')].map((e) => [e.dataset.count, e.textContent])),
        sums: Object.fromEntries([...tr.querySelectorAll('[data-sum]')].map((e) => [e.dataset.sum, e.textContent]))}))""")
    listing = ledger.get(
        f"/organizations/{ORG}/console/accounts", **{"from": start, "to": end, "sort": "api_calls", "order": "desc"}
    )
    assert [r["account"] for r in rows] == [a["account"] for a in listing["accounts"]]
    calls = [int(r["counts"]["api_calls"]) for r in rows]
    assert calls == sorted(calls, reverse=True) and len(rows) == 6
    for row in rows:
        for meter, shown in row["counts"].items():  # the ledger's own usage endpoint says the same
            answer = exact(ledger, f"/organizations/{ORG}/usage", meter=meter, account=row["account"],
                           aggregation="COUNT", **{"from": start, "to": end})["data"]  # fmt: skip
            assert Decimal(shown.replace(",", "")) == sum(d["value"] for d in answer), (row, meter)
        for key, shown in row["sums"].items():
            meter, field = key.split(".")
            answer = exact(ledger, f"/organizations/{ORG}/usage", meter=meter, account=row["account"], field=field,
                           aggregation="SUM", **{"from": start, "to": end})["data"]  # fmt: skip
            assert Decimal(shown.split(" ")[1].replace(",", "")) == sum(d["value"] for d in answer), (row, key)
        if row["account"] in ACCOUNTS:  # on a plan: the bill to date is the ledger's
            bills = ledger.get(f"/organizations/{ORG}/bills", account=row["account"], **{"from": start, "to": end})
            assert row["bill"] == f"{bills['bills'][0]['total']} USD"
        else:
            assert row["bill"] == "no plan"
    assert rows[0]["counts"]["api_calls"] != "0"


def test_account_page_shows_usage_bill_limits_notifications_and_corrections(
    ledger: LedgerServer, browser: Browser, shots: Path
) -> None:
    start, end = month(ledger)
    show(browser, ledger, "account/acme?meter=api_calls&bucket=hour&groupBy=endpoint", shots, "account")
    shown = browser.evaluate(
        "[...document.querySelectorAll('#usage-rows tr')].slice(1).map((tr) => [...tr.cells].map((c) => c.textContent))"
    )
    answer = ledger.get(f"/organizations/{ORG}/usage", meter="api_calls", account="acme", aggregation="COUNT",
                        bucket="hour", groupBy="endpoint", **{"from": start, "to": end})["data"]  # fmt: skip
    assert [(row[1], row[2]) for row in shown] == [(d["endpoint"], str(d["value"])) for d in answer]
    bill = ledger.get(f"/organizations/{ORG}/bills", account="acme", **{"from": start, "to": end})["bills"][0]
    assert browser.evaluate("document.querySelector('[data-total]').textContent") == f"{bill['total']} USD"
    caps = ledger.get(f"/organizations/{ORG}/console/limits", account="acme")["limits"]["acme"]
    percents = browser.evaluate("[...document.querySelectorAll('#limits [data-percent]')].map((e) => e.textContent)")
    assert percents == [f"{c['percent']}%" for c in caps]
    text = browser.evaluate("document.getElementById('page').textContent")
    assert "band entered" in text  # the notification of the band acme's calls entered
    assert "reversal" in text and "ac-1" in text  # the workload reversed acme's first call


def test_meters_page_shows_usage_per_meter_and_value_and_the_unused_meter(
    ledger: LedgerServer, browser: Browser, shots: Path
) -> None:
    start, end = month(ledger)
    show(browser, ledger, "meters", shots, "meters")
    counts = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#meters tr[data-meter]')].map((tr) => [tr.dataset.meter, tr.querySelector('[data-count]').textContent]))"
    )
    for meter in ("api_calls", "data_downloaded", "logins", "session_duration"):
        answer = exact(
            ledger, f"/organizations/{ORG}/usage", meter=meter, aggregation="COUNT", **{"from": start, "to": end}
        )
        assert Decimal(counts[meter].replace(",", "")) == sum(d["value"] for d in answer["data"]), meter
    assert counts["exports"] == "0"
    assert browser.evaluate("document.querySelector('tr[data-meter=exports]').classList.contains('unused')")
    assert "exports" in browser.evaluate("document.getElementById('unused-note').textContent")
    assert "pseudonym k1:" in browser.evaluate("document.getElementById('page').textContent")


def test_signals_page_shows_each_drop_and_spike_with_its_chart(
    ledger: LedgerServer, browser: Browser, shots: Path
) -> None:
    show(browser, ledger, "signals", shots, "signals")
    cards = browser.evaluate(
        "[...document.querySelectorAll('.signal')].map((c) => [c.dataset.account, c.dataset.kind, c.querySelector('[data-value]').textContent, !!c.querySelector('canvas')])"
    )
    events = [
        n
        for n in ledger.get(f"/organizations/{ORG}/notifications")["notifications"]
        if n["type"] in ("usage_drop", "usage_spike")
    ]
    assert sorted(tuple(c) for c in cards) == sorted(
        (n["account"], n["type"], n["data"]["value"], True) for n in events
    )
    assert {("hooli", "usage_spike"), ("stark", "usage_drop")} <= {(c[0], c[1]) for c in cards}


def test_trust_page_shows_the_anchor_and_says_what_the_ledger_cannot_know(
    ledger: LedgerServer, browser: Browser, shots: Path
) -> None:
    show(browser, ledger, "trust", shots, "trust")
    text = browser.evaluate("document.getElementById('page').textContent")
    assert JOURNAL in text and "42" in text
    assert "Dead letters" in text and "Reconciliation results" in text


def test_privacy_page_shows_pseudonymized_values_as_such(ledger: LedgerServer, browser: Browser, shots: Path) -> None:
    show(browser, ledger, "privacy", shots, "privacy")
    cell = browser.evaluate("document.querySelector('tr[data-field=\"data_downloaded.user\"]').textContent")
    assert "pseudonymized" in cell and "pseudonym k1:" in cell
    users = {
        u
        for u in browser.evaluate(
            "[...document.querySelectorAll('tr[data-field=\"data_downloaded.user\"] [data-distinct]')].map((e) => e.textContent)"
        )
    }
    report = ledger.get(f"/organizations/{ORG}/console/privacy")
    stored = next(
        f["stored"]
        for m in report["meters"]
        for f in m["fields"]
        if (m["code"], f["code"]) == ("data_downloaded", "user")
    )
    assert users == {str(stored["distinct"])} and stored["distinct"] > 1
    assert not any(e.startswith("acme-user") for e in stored["examples"])
