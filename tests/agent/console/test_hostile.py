"""The console against what a customer's users can put in a ledger: account ids, field
values, uids and an organisation name written as HTML, quotes, URL syntax and SQL
wildcards. Every page shows them as text (nothing they say runs or becomes an element),
the account list pages and searches them exactly, and the pages' own answers carry the
headers that keep a slip harmless. The ledger has no catalog, plans nor signals: each page
says what it cannot show instead of failing."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
import requests

from meterkit._corrections import reversal
from tests.agent.conftest import TOKEN, LedgerServer, start_ledger
from tests.agent.console.browser import Browser
from tests.agent.console.workload import iso

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORG = "o?x#1%"  # URL syntax: the console must spell it as one path segment
PAYLOAD = '<img src=x onerror="window.pwned=1">'
ACCOUNTS = [PAYLOAD, "a\"b'c", "acc_1", "accX1", "acc%2", "acc\\x", "javascript:window.pwned=2", "zz"]
READY = "document.getElementById('page').dataset.state === 'ready'"


def measurement(i: int, account: str, ts: str) -> dict[str, object]:
    return {"uid": f"h-{i}", "meter": "api_calls", "account": account, "ts": ts, "measure": {"calls": 1},
            "what": {"endpoint": f"<script>window.pwned=3</script>{PAYLOAD}"}}  # fmt: skip


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerServer]:
    server = start_ledger(tmp_path_factory.mktemp("hostile"))
    try:
        ts = iso(time.time_ns() // 1_000_000 - 60_000)
        sent = [measurement(i, account, ts) for i, account in enumerate(ACCOUNTS)]
        for body in (sent, [reversal(sent[0])]):
            r = requests.post(f"{server.url}/organizations/{quote(ORG, safe='')}/measurements",
                              json={"measurements": body}, headers=AUTH, timeout=30)  # fmt: skip
            assert r.status_code == 200 and r.json()["accepted"] == len(body), r.text
        yield server
    finally:
        server.proc.kill(signal.SIGTERM)


def period() -> dict[str, str]:
    year, mon = time.gmtime()[:2]
    following = f"{year + 1}-01" if mon == 12 else f"{year}-{mon + 1:02d}"
    return {"from": f"{year}-{mon:02d}-01T00:00:00Z", "to": f"{following}-01T00:00:00Z"}


def accounts(server: LedgerServer, **params: str | int) -> requests.Response:
    return requests.get(f"{server.url}/organizations/{quote(ORG, safe='')}/console/accounts",
                        params={**period(), **params}, headers=AUTH, timeout=30)  # fmt: skip


def test_every_page_shows_hostile_values_as_text(ledger: LedgerServer, tmp_path: Path) -> None:
    tab = Browser(tmp_path / "chrome")
    try:
        tab.goto(f"{ledger.url}/console/")
        tab.wait("document.getElementById('login').open")
        tab.evaluate(f"document.getElementById('token').value = {orjson.dumps(TOKEN).decode()};"
                     "document.getElementById('login-form').requestSubmit(); true")  # fmt: skip
        tab.wait(READY + " && !document.getElementById('login').open")
        grouped = f"account/{quote(ACCOUNTS[1], safe='')}?groupBy=endpoint&bucket=hour"
        for fragment in ("accounts", f"account/{quote(PAYLOAD, safe='')}", grouped, "meters", "signals", "trust",
                         "privacy"):  # fmt: skip
            tab.errors.clear()
            tab.evaluate("document.getElementById('page').dataset.state = 'stale'")  # ready means rendered anew
            tab.goto(f"{ledger.url}/console/#/{fragment}")
            tab.wait(f"location.hash === {orjson.dumps('#/' + fragment).decode()} && " + READY)
            text = tab.evaluate("document.getElementById('page').textContent")
            assert "Could not load" not in text, (fragment, text)
            assert tab.evaluate("document.querySelectorAll('#page img, #page script').length") == 0, fragment
            assert tab.evaluate("window.pwned === undefined"), fragment
            # A ledger without --plans or --catalog: the pages do not ask for bills, caps or
            # the privacy view, so the browser logs no failed request at all.
            assert not tab.errors, (fragment, tab.errors)
            if fragment == "accounts":
                shown = tab.evaluate(
                    "[...document.querySelectorAll('#accounts tbody tr')].map((tr) => tr.dataset.account)"
                )
                assert sorted(shown) == sorted(ACCOUNTS)
                hrefs = tab.evaluate("[...document.querySelectorAll('#page a')].map((a) => a.getAttribute('href'))")
                assert all(h.startswith("#/") for h in hrefs), hrefs
            if fragment == grouped:  # the title, the group-by value in the chart's legend and the table
                assert ACCOUNTS[1] in text and f"<script>window.pwned=3</script>{PAYLOAD}" in text, text
                legend = tab.evaluate("document.querySelector('.u-legend').textContent")
                assert f"<script>window.pwned=3</script>{PAYLOAD}" in legend, legend
            elif fragment.startswith("account/"):  # reversed: no usage, one correction
                assert PAYLOAD in text and "reversal" in tab.evaluate(
                    "document.getElementById('corrections').textContent"
                )
        # a number that is not one (an exponent, a word) is shown as the ledger wrote it, as text
        formatted = tab.evaluate(
            "import('/console/js/format.js').then((f) => [f.dec('1234567.5'), f.dec('<b>1e3</b>')])"
        )
        assert formatted == ["1,234,567.5", "&lt;b&gt;1e3&lt;/b&gt;"]
    finally:
        tab.close()


def test_pages_and_data_carry_protective_headers(ledger: LedgerServer) -> None:
    for path in ("/console/", "/console/js/main.js", "/console/vendor/uPlot.iife.min.js"):
        r = requests.get(f"{ledger.url}{path}", timeout=10)
        assert r.status_code == 200, path
        policy = r.headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy, policy
        assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Referrer-Policy"] == "no-referrer"
        assert "Access-Control-Allow-Origin" not in r.headers
    r = accounts(ledger)
    assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert (
        "Access-Control-Allow-Origin"
        not in requests.get(
            f"{ledger.url}/console/api/orgs", headers={**AUTH, "Origin": "http://elsewhere.example"}, timeout=10
        ).headers
    )
    for path in ("/console/../pyproject.toml", "/console/%2e%2e/routes.py", "/console/js/%2e%2e/%2e%2e/routes.py",
                 "/console/..%2froutes.py", "/console//etc/passwd", "/console/%2Fetc%2Fpasswd"):  # fmt: skip
        r = requests.Session().send(requests.Request("GET", f"{ledger.url}{path}").prepare(), timeout=10)
        assert r.status_code == 404, (path, r.text[:80])


def test_search_is_literal_and_paging_with_ties_covers_every_account_once(ledger: LedgerServer) -> None:
    assert [a["account"] for a in accounts(ledger, q="acc_").json()["accounts"]] == ["acc_1"]
    assert [a["account"] for a in accounts(ledger, q="%").json()["accounts"]] == ["acc%2"]
    assert [a["account"] for a in accounts(ledger, q="\\").json()["accounts"]] == ["acc\\x"]
    for sort, order in [(s, o) for s in ("api_calls", "api_calls.calls") for o in ("asc", "desc")]:
        # every count and sum ties (one call each), but the first's, reversed: zero
        whole = [a["account"] for a in accounts(ledger, sort=sort, order=order, limit=200).json()["accounts"]]
        paged = []
        for offset in range(0, len(ACCOUNTS) + 3, 3):
            page = accounts(ledger, sort=sort, order=order, limit=3, offset=offset).json()
            assert page["total"] == len(ACCOUNTS)
            paged += [a["account"] for a in page["accounts"]]
        assert paged == whole and sorted(paged) == sorted(ACCOUNTS), (sort, order, paged)
        assert (whole[0] if order == "asc" else whole[-1]) == PAYLOAD  # the reversed one counts 0


def test_a_sort_or_page_the_ledger_cannot_answer_is_refused_clearly(ledger: LedgerServer) -> None:
    for params, status, said in (
        ({"sort": "nosuch"}, 400, "no meter 'nosuch'"),
        ({"sort": "api_calls.nosuch"}, 400, "no number field 'nosuch'"),
        ({"sort": "api_calls.endpoint"}, 400, "no number field 'endpoint'"),
        ({"sort": ""}, 400, "sort must be"),
        ({"order": "sideways"}, 422, "pattern"),
        ({"offset": 10**20}, 422, "less than or equal"),
        ({"limit": 201}, 422, "less than or equal"),
        ({"q": "x" * 201}, 422, "at most 200"),
    ):
        r = accounts(ledger, **params)
        assert r.status_code == status and said in r.text, (params, r.status_code, r.text)
