"""Corrections in the audit trail, with a real SDK, agent and ledger: a measurement is
delivered, then cancelled or amended (a reversal, and a replacement, written through the
SDK client, and the control record saying who, when and why). Reconciliation stays clean
(the corrected measurement is not "missing", its reversal and replacement are neither
"unrecorded" nor "extra"), the journal keeps the correction with its author and reason,
and reconcile and ``meterkit audit corrections`` show who corrected what."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import meterkit
from meterkit._client import write_with_control
from meterkit._corrections import control_record, replacement, reversal
from meterkit._spool import KIND_CONTROL, SegmentWriter, encode_frame
from meterkit._timefmt import iso_ms
from meterkit_agent.audit.journal import expand_uids
from tests.agent.audit.conftest import ORG, PERIOD, Scenario, kinds
from tests.agent.conftest import TOKEN, token_file, wait_for

ACCOUNT = "acme"


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    """The audit scenario, delivering through the ``http`` exporter, which passes the
    ``correction`` mark to the ledger as the contract says (the ``m3ter`` exporter strips
    it, m3ter having no such key), and reconciled against the ledger's API."""
    s = Scenario(tmp_path)
    s.config.write_text(
        f"""
receivers: {{spool: {{directory: {s.spool}, poll_interval_millis: 50}}}}
processors: {{validate: {{}}, batch: {{max_measurements: 100, timeout_millis: 50}}}}
exporters:
  http:
    url: "{s.ledger.url}/organizations/{ORG}/measurements"
    headers: {{Authorization: "Bearer {TOKEN}"}}
    retry: {{initial_interval_millis: 20, max_interval_millis: 200}}
service: {{state_dir: {s.state}, retain_segments_hours: 1, pipelines: {{usage: {{receivers: [spool], processors: [validate, batch], exporters: [http]}}}}}}
"""
    )
    yield s
    s.close()


def reconcile(scenario: Scenario, *extra: str) -> tuple[int, dict[str, Any], str]:
    done = scenario.cli(*reconcile_args(scenario), "--json", *extra)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, (json.loads(done.stdout) if done.stdout.strip() else {}), done.stderr


def reconcile_args(scenario: Scenario) -> list[str]:
    tokens = str(token_file(scenario.tmp))
    where = ["--backend", scenario.ledger.url, "--org", ORG, "--token-file", tokens, "--state-dir", str(scenario.state)]
    return ["reconcile", *where, *PERIOD]


def record_originals(scenario: Scenario, n: int) -> None:
    client = meterkit.Client(spool_dir=scenario.spool, flush_interval_millis=20)
    for i in range(n):
        client.record("data_downloaded", account=ACCOUNT, measure={"bytes": 100 + i}, who={"user": f"u{i}"})
    assert client.shutdown(10)


def delivered_total(scenario: Scenario) -> int:
    return sum(e["count"] for e in scenario.deliveries())


def deliver(scenario: Scenario, total: int) -> None:
    """Run the agent until the journal shows ``total`` measurements delivered and every
    segment (control records included) is retired."""
    scenario.start_agent()
    wait_for(lambda: scenario.journal.exists() and delivered_total(scenario) >= total, timeout=60, what="delivery")
    wait_for(lambda: not list(scenario.spool.glob("*.mks")), timeout=30, what="retirement")
    scenario.stop_agent()


def correct(
    scenario: Scenario, action: str, originals: list[dict[str, Any]], reason: str, changes: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What ``meterkit correct`` does: the reversals (and replacements) and the control
    record saying who, when and why, in one write of an SDK client (tallied like any)."""
    written = []
    for original in originals:
        written.append(reversal(original))
        if changes is not None:
            written.append(replacement(original, changes))
    at = iso_ms(time.time_ns())
    of = [m["uid"] for m in originals]
    control = control_record(action, reason, "alice@billing-host", at, of, sorted(m["uid"] for m in written))
    client = meterkit.Client(spool_dir=scenario.spool, flush_interval_millis=20)
    write_with_control(client, written, control)
    assert client.shutdown(10)
    return control


def corrections_of(scenario: Scenario) -> list[dict[str, Any]]:
    return [e for e in scenario.entries() if e["type"] == "correction"]


def test_a_cancel_and_an_amend_reconcile_and_say_who_corrected_what(scenario: Scenario) -> None:
    record_originals(scenario, 10)
    deliver(scenario, 10)
    stored = sorted(scenario.stored(ACCOUNT).values(), key=lambda m: m["uid"])
    assert len(stored) == 10
    cancelled, amended = stored[2], stored[5]

    cancel = correct(scenario, "cancel", [cancelled], "a retried request was recorded twice")
    amend = correct(scenario, "amend", [amended], "customer dispute #4411", {"measure.bytes": 3})
    deliver(scenario, 13)

    # The ledger keeps every row: the originals, the two reversals, the replacement.
    held = scenario.stored(ACCOUNT)
    assert len(held) == 13 and {cancelled["uid"], amended["uid"], *cancel["uids"], *amend["uids"]} <= held.keys()

    code, report, _ = reconcile(scenario)
    assert code == 0 and report["reconciled"] is True, json.dumps(report["differences"])
    assert kinds(report) == set()  # nothing missing, unrecorded, extra or altered
    (row,) = [r for r in report["rows"] if r["account"] == ACCOUNT]
    assert (row["recorded"], row["delivered"], row["backend"], row["resent"], row["corrections"]) == (13, 13, 13, 0, 3)

    # The journal: who corrected what, when and why, with the uids written.
    entries = {e["action"]: e for e in corrections_of(scenario)}
    assert set(entries) == {"cancel", "amend"}
    assert entries["amend"]["by"] == "alice@billing-host" and entries["amend"]["reason"] == "customer dispute #4411"
    assert entries["amend"]["made_at"] == amend["at"]
    assert expand_uids(entries["amend"]["of"]) == [amended["uid"]]
    assert sorted(expand_uids(entries["amend"]["uids"])) == amend["uids"]
    corrected = [e for e in scenario.deliveries() if "corrections" in e]
    assert sorted(u for e in corrected for r in e["corrections"] for u in r["uids"]) == sorted(
        cancel["uids"] + amend["uids"]
    )

    # The reconciliation's corrections section.
    listed = {c["action"]: c for c in report["corrections"]}
    assert listed["cancel"] | {"journaled_at": None, "journal_entry": None} == {
        "id": cancel["id"],
        "action": "cancel",
        "by": "alice@billing-host",
        "at": cancel["at"],
        "journaled_at": None,
        "journal_entry": None,
        "reason": "a retried request was recorded twice",
        "corrected": 1,
        "written": 1,
        "delivered": 1,
        "status": "delivered",
        "where": [{"meter": "data_downloaded", "account": ACCOUNT, "count": 1}],
        "hours": [cancelled["ts"][:13] + ":00:00Z"],
        "of": [cancelled["uid"]],
        "undelivered": [],
    }
    assert (listed["amend"]["corrected"], listed["amend"]["written"], listed["amend"]["delivered"]) == (1, 2, 2)

    text = scenario.cli(*reconcile_args(scenario))
    assert text.returncode == 0 and "corrections (2):" in text.stdout
    assert "amend by alice@billing-host: 1 measurement(s)  reason: customer dispute #4411" in text.stdout
    assert "delivered: 2 of 2 written (data_downloaded/acme: 2)" in text.stdout

    page = scenario.tmp / "report.html"
    reconcile(scenario, "--html", str(page))
    html = page.read_text()
    assert "<h2>Corrections</h2>" in html and "customer dispute #4411" in html and "amend of 1 measurement(s)" in html

    # `meterkit audit corrections`, and the trace of one corrected measurement.
    listing = scenario.cli("audit", "corrections", "--state-dir", str(scenario.state), "--json")
    assert listing.returncode == 0, listing.stderr
    assert [c["id"] for c in json.loads(listing.stdout)["corrections"]] == [cancel["id"], amend["id"]]
    later = scenario.cli("audit", "corrections", "--state-dir", str(scenario.state), "--since", "2100-01-01T00:00Z")
    assert later.returncode == 0 and "no corrections since" in later.stdout
    shown = scenario.cli("audit", "show", "--state-dir", str(scenario.state), "--uid", amended["uid"])
    assert shown.returncode == 0 and "corrected     amend by alice@billing-host" in shown.stdout


def test_a_correction_run_twice_is_a_resend_not_a_difference(scenario: Scenario) -> None:
    record_originals(scenario, 4)
    deliver(scenario, 4)
    original = sorted(scenario.stored(ACCOUNT).values(), key=lambda m: m["uid"])[1]
    first = correct(scenario, "amend", [original], "wrong unit", {"measure.bytes": 1})
    deliver(scenario, 6)
    again = correct(scenario, "amend", [original], "wrong unit", {"measure.bytes": 1})
    deliver(scenario, 8)
    assert again["uids"] == first["uids"] and again["id"] == first["id"]  # the same measurements again
    assert len(scenario.stored(ACCOUNT)) == 6

    code, report, _ = reconcile(scenario)
    assert code == 0 and report["reconciled"] is True, json.dumps(report["differences"])
    (row,) = [r for r in report["rows"] if r["account"] == ACCOUNT]
    assert (row["recorded"], row["delivered"], row["resent"], row["backend"]) == (8, 8, 2, 6)
    assert kinds(report) == {("resent", ACCOUNT, 2, True)}
    assert [(c["status"], c["delivered"]) for c in report["corrections"]] == [("delivered", 2), ("delivered", 2)]


def test_an_undelivered_correction_is_shown_as_such(scenario: Scenario) -> None:
    """The control record arrives, the reversal it announces does not (it is in a spool
    this agent does not read): the corrections section names it as not delivered."""
    record_originals(scenario, 3)
    deliver(scenario, 3)
    original = next(iter(scenario.stored(ACCOUNT).values()))
    other_spool = scenario.tmp / "elsewhere"
    client = meterkit.Client(spool_dir=other_spool, flush_interval_millis=20)
    client._write_now([reversal(original)])
    assert client.shutdown(10)
    control = {
        "type": "correction",
        "id": "c-1",
        "action": "cancel",
        "reason": "test traffic",
        "by": "bob@host",
        "at": iso_ms(time.time_ns()),
        "of": [original["uid"]],
        "uids": [reversal(original)["uid"]],
    }
    writer = SegmentWriter(scenario.spool, "ctl", fsync=True)
    writer.write(encode_frame(KIND_CONTROL, orjson.dumps(control)), 1)
    writer.seal()
    scenario.start_agent()
    wait_for(lambda: bool(corrections_of(scenario)), timeout=30, what="the correction entry")
    scenario.stop_agent()
    code, report, _ = reconcile(scenario)
    (listed,) = report["corrections"]
    assert (listed["status"], listed["delivered"], listed["undelivered"]) == ("not delivered", 0, control["uids"])
    assert code == 0  # nothing recorded in the agent's spool is undelivered: the other spool is not its own
    text = scenario.cli("audit", "corrections", "--state-dir", str(scenario.state))
    assert f"not delivered: {control['uids'][0]}" in text.stdout
