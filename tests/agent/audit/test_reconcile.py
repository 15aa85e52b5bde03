"""Audit journal and reconciliation: each kind of discrepancy is injected on purpose and
must be found and named; a clean run must report none, and bad input never yields a
false "reconciled"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

import meterkit
from tests.agent.audit.conftest import PERIOD, Scenario, kinds, named
from tests.agent.conftest import TOKEN, wait_for


def test_clean_run_reconciles_with_only_explained_differences(scenario: Scenario) -> None:
    expected = scenario.record()
    scenario.deliver()
    code, report, _ = scenario.reconcile()
    assert code == 0 and report["reconciled"] is True
    rows = {(r["meter"], r["account"]): r for r in report["rows"]}
    assert rows[("data_downloaded", "acme")]["recorded"] == expected["acme"]
    assert rows[("data_downloaded", "acme")]["backend"] == expected["acme"]
    assert rows[("data_downloaded", "globex")]["delivered"] == expected["globex"]
    assert rows[("data_downloaded", "acme")]["resent"] == 0
    assert kinds(report) == {
        ("dropped_in_sdk", "acme", 1, True),  # NaN, refused by the SDK
        ("dead_lettered", "acme", 2, True),  # unknown meter, refused by the ledger
    }
    table = scenario.cli("reconcile", "--config", str(scenario.config), *PERIOD)
    assert table.returncode == 0 and "reconciled: every difference is explained" in table.stdout


def test_injected_discrepancies_are_found_and_named(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    acme = sorted(scenario.stored("acme"))[:5]
    scenario.delete(*acme[:3])  # missing at backend
    body = next(iter(scenario.stored("globex").values()))
    scenario.edit_value(body["uid"], +1000)  # a value altered after delivery
    code, report, _ = scenario.reconcile()
    assert code == 1 and report["reconciled"] is False
    found = kinds(report)
    assert ("missing_at_backend", "acme", 3, False) in found
    assert set(named(report, "missing_at_backend")) == set(acme[:3])
    assert "measure.bytes" in named(report, "altered")[body["uid"]]

    scenario.forge(body, "intruder-1", account="acme")  # a measurement the agent never delivered
    _, report, _ = scenario.reconcile()
    # Named each, not netted: 3 missing and 1 intruder are not "2 missing".
    assert ("missing_at_backend", "acme", 3, False) in kinds(report)
    assert set(named(report, "extra_at_backend")) == {"intruder-1"}

    scenario.delete("intruder-1")
    scenario.edit_value(body["uid"], -1000)
    scenario.forge(body, "dup-1")
    _, report, _ = scenario.reconcile()
    assert ("extra_at_backend", "globex", 1, False) in kinds(report)
    assert named(report, "altered") == {}  # restored to what was delivered

    # --repair re-sends the missing ones from retained segments, with their original uids.
    scenario.delete("dup-1")
    code, report, err = scenario.reconcile("--repair")
    assert "re-sent 3" in err
    assert code == 0 and report["reconciled"] is True
    assert set(acme[:3]) <= set(scenario.stored("acme"))


def test_repair_says_when_segments_are_gone(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    shutil.rmtree(scenario.state / "retained")
    scenario.delete(*sorted(scenario.stored("acme"))[:2])
    code, report, err = scenario.reconcile("--repair")
    assert code == 1 and "cannot be re-sent: their spool segments are gone" in err
    assert ("missing_at_backend", "acme", 2, False) in kinds(report) and len(named(report, "missing_at_backend")) == 2


def test_journal_tampering_is_detected_and_never_reconciles(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    journal = scenario.state / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 4
    ok = scenario.cli("audit", "verify", "--state-dir", str(scenario.state))
    assert ok.returncode == 0 and f"{len(lines):,} entries" in ok.stdout
    head = json.loads(scenario.cli("audit", "head", "--state-dir", str(scenario.state)).stdout)["head"]

    def broken(content: list[bytes]) -> str:
        journal.write_bytes(b"".join(content))
        done = scenario.cli("audit", "verify", "--state-dir", str(scenario.state), "--head", head)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        return done.stderr

    edited = orjson.loads(lines[1])
    edited["count"] = edited.get("count", 0) + 1
    assert "line 2" in broken([lines[0], orjson.dumps(edited) + b"\n", *lines[2:]]) and "edited" in broken(
        [lines[0], orjson.dumps(edited) + b"\n", *lines[2:]]
    )
    assert "removed" in broken([lines[0], *lines[2:]])
    assert "line 2" in broken([lines[0], lines[2], lines[1], *lines[3:]])
    assert "removed from the end" in broken(lines[:-1])
    assert "truncated" in broken([*lines[:-1], lines[-1][:20]])
    # A broken journal is itself an unexplained difference; what it no longer proves is
    # reconciled as never written.
    code, report, _ = scenario.reconcile()
    assert code == 1 and any(d["kind"] == "journal_broken" for d in report["differences"])


def test_trace_one_measurement(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    uid = sorted(scenario.stored("acme"))[0]
    done = scenario.cli("audit", "show", "--uid", uid, "--state-dir", str(scenario.state))
    assert done.returncode == 0, done.stderr
    assert "recorded by   pid" in done.stdout and "spooled in" in done.stdout and "Idempotency-Key" in done.stdout
    assert "acknowledged  by m3ter" in done.stdout
    missing = scenario.cli("audit", "show", "--uid", "nope", "--state-dir", str(scenario.state))
    assert missing.returncode == 1 and "not in the journal" in missing.stderr


def test_dead_letters_listed_shown_corrected_and_replayed_with_their_uids(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    listing = scenario.cli("dlq", "list", "--state-dir", str(scenario.state))
    assert listing.stdout.count("rejected_by_backend:unknown_meter") == 2
    rows = [line.split() for line in listing.stdout.splitlines()[1:]]
    first_id = rows[0][0]
    shown = scenario.cli("dlq", "show", first_id, "--state-dir", str(scenario.state))
    assert "unknown_meter" in shown.stdout and "HTTP 400" in shown.stdout
    uid = json.loads(shown.stdout.split("measurement ", 1)[1])["uid"]
    fix = scenario.tmp / "fix.jsonl"
    fix.write_text(
        json.dumps(
            {
                "uid": uid,
                "meter": "logins",
                "account": "acme",
                "ts": "2026-01-01T00:00:00Z",
                "measure": {"logins": 1},
                "who": {"user": "u1"},
            }
        )
        + "\n"
    )
    replayed = scenario.cli("dlq", "replay", "--state-dir", str(scenario.state), "--fix-file", str(fix))
    assert replayed.returncode == 0 and "2 dead letter(s) handed to the agent (1 corrected)" in replayed.stdout
    scenario.start_agent()
    wait_for(lambda: _exists(scenario, uid), timeout=30, what="the corrected measurement")
    assert scenario.ledger.get(f"/organizations/test-org/measurements/{uid}")["meter"] == "logins"  # original uid kept
    back = "rejected_by_backend:unknown_meter"
    wait_for(
        lambda: scenario.cli("dlq", "list", "--state-dir", str(scenario.state)).stdout.count(back) == 1,
        timeout=30,
        what="the uncorrected one back",
    )
    _, report, _ = scenario.reconcile()
    assert ("dead_lettered", "acme", 1, True) in kinds(report)  # one replayed and delivered, one still dead
    scenario.stop_agent()


def _exists(scenario: Scenario, uid: str) -> bool:
    import requests

    r = requests.get(
        f"{scenario.ledger.url}/organizations/test-org/measurements/{uid}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    return r.status_code == 200


def test_bad_input_gets_clear_messages_never_a_false_reconciled(scenario: Scenario, tmp_path: Path) -> None:
    scenario.record()
    scenario.deliver()
    empty = scenario.cli(
        "reconcile", "--config", str(scenario.config), "--from", "2001-01-01T00:00:00Z", "--to", "2001-01-02T00:00:00Z"
    )
    assert empty.returncode == 0 and "nothing to reconcile" in empty.stdout and "reconciled:" not in empty.stdout
    bad = scenario.cli(
        "reconcile", "--config", str(scenario.config), "--from", "yesterday", "--to", "2001-01-02T00:00:00Z"
    )
    assert bad.returncode == 2 and "bad period" in bad.stderr
    # A client whose clock runs a day ahead: its tally is dated in the future.
    from meterkit_agent.audit.journal import Journal

    Journal(scenario.state).append(
        [
            {
                "type": "sdk_tally",
                "entries": [
                    {
                        "meter": "data_downloaded",
                        "account": "skewed",
                        "hour": "2099-01-01T00:00:00Z",
                        "count": 1,
                        "sums": {},
                    }
                ],
            }
        ]
    )
    code, report, _ = scenario.reconcile()
    assert any("dated in the future" in n and "2099-01-01" in n for n in report["notes"])
    assert ("undelivered", "skewed", 1, False) in kinds(report) and code == 1  # never a silent "reconciled"
    scenario.ledger.proc.kill()
    down = scenario.cli("reconcile", "--config", str(scenario.config), *PERIOD)
    assert down.returncode == 2 and "cannot reach the backend" in down.stderr and "Traceback" not in down.stderr
    nothing = scenario.cli(
        "reconcile", "--state-dir", str(tmp_path / "nowhere"), "--ledger-db", f"sqlite:///{tmp_path / 'x.db'}", *PERIOD
    )
    assert nothing.returncode == 2 and "does not exist" in nothing.stderr


def test_html_report_renders_in_a_real_browser(scenario: Scenario) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    # Two days of hourly history: acme steady, globex collapsing (churn risk), initech spiking (upsell).
    from datetime import datetime, timedelta, timezone

    start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    rows = []
    for hour in range(48):
        per = {"acme": 20, "globex": 20 if hour < 30 else 3, "initech": 10 if hour != 40 else 60}
        for account, n in per.items():
            for k in range(n):
                ts = (start + timedelta(hours=hour, minutes=k % 60)).isoformat()
                rows.append(
                    {
                        "meter": "data_downloaded",
                        "account": account,
                        "ts": ts,
                        "uid": f"{account}-{hour}-{k}",
                        "measure": {"bytes": 1000},
                    }
                )
    client = meterkit.Client(spool_dir=scenario.spool)
    assert client.submit_batch(rows).accepted == len(rows)
    client.shutdown(10)
    scenario.start_agent()
    wait_for(lambda: scenario.ledger.count() >= len(rows), timeout=60, what="backfill delivery")
    scenario.stop_agent()
    report = scenario.tmp / "report.html"
    scenario.reconcile("--html", str(report))
    page = report.read_text()
    assert (
        "<svg" in page and "data_downloaded" in page and "<script" not in page and "http" not in page.split("<body>")[1]
    )
    assert "globex 2026-03-02T06:00:00Z: sudden drop: churn risk" in page
    assert "initech 2026-03-02T16:00:00Z: spike: upsell signal" in page
    shot = Path(__file__).resolve().parents[2] / "docs" / "reconcile-report.png"
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={scenario.tmp / 'chrome'}", f"--screenshot={scenario.tmp / 'shot.png'}",
         "--window-size=1000,1100", report.as_uri()],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    png = (scenario.tmp / "shot.png").read_bytes()
    assert done.returncode == 0 and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    if os.environ.get("UPDATE_SCREENSHOTS"):
        shot.write_bytes(png)  # docs/reconcile-report.png, shown in the README


def test_signals_mark_drops_and_spikes() -> None:
    from meterkit_agent.audit.report import signals

    series = [(f"h{i}", v) for i, v in enumerate([10, 10, 10, 10, 4, 10, 10, 10, 25, 10])]
    assert signals(series) == [("h4", "drop"), ("h8", "spike")]
    assert signals([("h0", 0), ("h1", 0), ("h2", 0), ("h3", 5)]) == []  # no baseline, no signal
